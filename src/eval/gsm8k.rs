//! GSM8K-format problems (`question`, `answer` whose last line is `#### N`): reading them, the
//! prompt a problem becomes, and the final number of an answer.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub question: String,
    pub answer: String,
}

/// Read a GSM8K-format JSONL file; errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Problem>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_jsonl(path, &text)
}

pub fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Problem>> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| Error::options(format!("{}:{}: {m}", path.display(), i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| bad(&format!("not valid JSON: {e}")))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(question), Some(answer)) = (field("question"), field("answer")) else {
            return Err(bad("expected string fields `question` and `answer`"));
        };
        out.push(Problem { question, answer });
    }
    if out.is_empty() {
        return Err(Error::options(format!("{}: no problems in the file", path.display())));
    }
    Ok(out)
}

/// The final answer of a GSM8K-style text: the number after the last `####`, else the last
/// number in the text. Commas and a leading `+` are dropped, and `12.0`/`12.50` become `12`/`12.5`,
/// so equal numbers compare equal as strings.
pub fn extract_answer(text: &str) -> Option<String> {
    let tail = match text.rfind("####") {
        Some(i) => first_number(&text[i + 4..]),
        None => None,
    };
    tail.or_else(|| last_number(text)).map(normalize)
}

fn is_num_char(c: char) -> bool {
    c.is_ascii_digit() || c == ',' || c == '.'
}

/// Numbers in the text as (start, end) byte ranges: an optional `-`, digits with `,` and `.`.
fn numbers(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = if i > 0 && b[i - 1] == b'-' { i - 1 } else { i };
            let mut j = i;
            while j < b.len() && is_num_char(b[j] as char) {
                j += 1;
            }
            // a trailing separator belongs to the sentence ("is 42." / "42, then")
            let mut end = j;
            while end > i && !b[end - 1].is_ascii_digit() {
                end -= 1;
            }
            out.push(&text[start..end]);
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn first_number(text: &str) -> Option<&str> {
    numbers(text).into_iter().next()
}

fn last_number(text: &str) -> Option<&str> {
    numbers(text).into_iter().last()
}

fn normalize(n: &str) -> String {
    let mut s: String = n.chars().filter(|&c| c != ',').collect();
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    if s == "-0" {
        s = "0".into();
    }
    s
}

/// The user message of a problem: the question, after `shots` worked examples if any.
pub fn user_message(p: &Problem, shots: &[Problem]) -> String {
    if shots.is_empty() {
        return p.question.clone();
    }
    let mut s = String::new();
    for e in shots {
        s.push_str(&format!("Question: {}\nAnswer: {}\n\n", e.question.trim(), e.answer.trim()));
    }
    s.push_str(&format!("Question: {}\nAnswer:", p.question.trim()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_gsm8k_answers() {
        let gsm = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72";
        assert_eq!(extract_answer(gsm).as_deref(), Some("72"));
        assert_eq!(extract_answer("so the total is 1,234.\n#### 1,234").as_deref(), Some("1234"));
        assert_eq!(extract_answer("#### -5").as_deref(), Some("-5"));
        assert_eq!(extract_answer("####12.50").as_deref(), Some("12.5"));
        assert_eq!(extract_answer("#### 18.0 dollars").as_deref(), Some("18"));
        // no marker: the last number
        assert_eq!(extract_answer("7 + 8 = 15, so she has 15 apples.").as_deref(), Some("15"));
        assert_eq!(extract_answer("The answer is 42.").as_deref(), Some("42"));
        // the last marker wins (few-shot prefixes repeat the format)
        assert_eq!(extract_answer("#### 3\nQuestion: ...\n#### 9").as_deref(), Some("9"));
        // a marker without a number falls back to the last number before it
        assert_eq!(extract_answer("it is 6\n#### ").as_deref(), Some("6"));
        assert_eq!(extract_answer("no numbers here"), None);
        assert_eq!(extract_answer(""), None);
    }

    #[test]
    fn reads_jsonl_and_names_bad_lines() {
        let p = Path::new("x.jsonl");
        let ok = parse_jsonl(p, "{\"question\": \"q\", \"answer\": \"a\\n#### 1\"}\n\n").unwrap();
        assert_eq!(ok.len(), 1);
        let e =
            parse_jsonl(p, "{\"question\": \"q\", \"answer\": \"#### 1\"}\n{\"question\": 3}\n").unwrap_err();
        assert!(e.to_string().contains("x.jsonl:2"), "{e}");
        let e = parse_jsonl(p, "{oops\n").unwrap_err();
        assert!(e.to_string().contains("x.jsonl:1") && e.to_string().contains("not valid JSON"), "{e}");
        assert!(parse_jsonl(p, "\n").unwrap_err().to_string().contains("no problems"));
    }

    #[test]
    fn few_shot_prefix_format() {
        let shots = vec![Problem { question: "What is 1 + 1?".into(), answer: "1 + 1 = 2\n#### 2".into() }];
        let p = Problem { question: "What is 2 + 2?".into(), answer: String::new() };
        assert_eq!(user_message(&p, &[]), "What is 2 + 2?");
        assert_eq!(
            user_message(&p, &shots),
            "Question: What is 1 + 1?\nAnswer: 1 + 1 = 2\n#### 2\n\nQuestion: What is 2 + 2?\nAnswer:"
        );
    }
}
