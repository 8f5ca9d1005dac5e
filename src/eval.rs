//! `dllm eval`: exact-match accuracy on a GSM8K-format JSONL file (`question`, `answer` whose
//! last line is `#### N`), with the decoding speed beside it. Works on any checkpoint: with
//! LLaDA-8B-Instruct and the real GSM8K test file it measures what the Fast-dLLM paper's table
//! measures (spec §7).

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::backend::{Backend, Rule};
use crate::cache::CacheMode;
use crate::decode::{DecodeOptions, Engine};
use crate::error::{Error, Result};
use crate::model::Tokenizer;

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

/// A decoding configuration of the paper's table (spec §7).
#[derive(Clone, Debug)]
pub struct Mode {
    pub name: &'static str,
    pub cache: CacheMode,
    pub rule: Rule,
}

/// The four configurations of the Fast-dLLM table, plus DualCache and the factor rule.
pub const TABLE_MODES: &[Mode] = &[
    Mode { name: "baseline (no cache, 1 token/step)", cache: CacheMode::None, rule: Rule::Quota },
    Mode { name: "+ PrefixCache", cache: CacheMode::Prefix, rule: Rule::Quota },
    Mode { name: "+ parallel (threshold 0.9)", cache: CacheMode::None, rule: Rule::Threshold(0.9) },
    Mode {
        name: "Fast-dLLM (PrefixCache + threshold 0.9)",
        cache: CacheMode::Prefix,
        rule: Rule::Threshold(0.9),
    },
    Mode { name: "DualCache + threshold 0.9", cache: CacheMode::Dual, rule: Rule::Threshold(0.9) },
    Mode { name: "DualCache + factor 1.0", cache: CacheMode::Dual, rule: Rule::Factor(1.0) },
];

/// One sample's outcome.
#[derive(Clone, Debug)]
pub struct Sample {
    pub index: usize,
    pub target: Option<String>,
    pub prediction: Option<String>,
    pub text: String,
    pub nfe: usize,
    pub generated: usize,
    pub strict: usize,
}

impl Sample {
    pub fn correct(&self) -> bool {
        self.prediction.is_some() && self.prediction == self.target
    }
}

/// A whole run of one mode.
#[derive(Clone, Debug)]
pub struct Report {
    pub samples: Vec<Sample>,
    pub wall_s: f64,
}

impl Report {
    pub fn accuracy(&self) -> f64 {
        self.samples.iter().filter(|s| s.correct()).count() as f64 / self.samples.len().max(1) as f64
    }
    pub fn nfe(&self) -> f64 {
        self.samples.iter().map(|s| s.nfe).sum::<usize>() as f64 / self.samples.len().max(1) as f64
    }
    pub fn generated(&self) -> usize {
        self.samples.iter().map(|s| s.generated).sum()
    }
    /// Tokens per forward: generated tokens over forwards (spec §1).
    pub fn tpf(&self) -> f64 {
        self.generated() as f64 / self.samples.iter().map(|s| s.nfe).sum::<usize>().max(1) as f64
    }
    /// Strict tok/s: tokens up to and including the first end token, over the wall time (spec §1).
    pub fn strict_tok_per_s(&self) -> f64 {
        self.samples.iter().map(|s| s.strict).sum::<usize>() as f64 / self.wall_s.max(1e-9)
    }
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

/// How problems become prompts and batches.
#[derive(Clone, Copy, Debug)]
pub struct Prompting<'a> {
    /// Worked examples put before each question.
    pub shots: &'a [Problem],
    /// Render with the checkpoint's chat template (else the text as is).
    pub chat: bool,
    /// Problems decoded together as one batch.
    pub batch_size: usize,
}

/// Decode every problem (in batches) with `opts` and score it.
pub fn run<B: Backend>(
    engine: &Engine<B>,
    tok: &Tokenizer,
    problems: &[Problem],
    how: Prompting<'_>,
    opts: &DecodeOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report> {
    let Prompting { shots, chat, batch_size } = how;
    let t0 = Instant::now();
    let mut samples = Vec::with_capacity(problems.len());
    for (c, chunk) in problems.chunks(batch_size.max(1)).enumerate() {
        let prompts = chunk
            .iter()
            .map(|p| {
                let msg = user_message(p, shots);
                if chat {
                    tok.encode_chat(&msg)
                } else {
                    tok.encode_prompt(&msg)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let out = engine.generate(&prompts, opts)?;
        for (i, (p, r)) in chunk.iter().zip(&out.rows).enumerate() {
            let answer = tok.cut_at_stop(&r.tokens);
            let text = tok.decode(answer);
            samples.push(Sample {
                index: c * batch_size + i,
                target: extract_answer(&p.answer),
                prediction: extract_answer(&text),
                text,
                nfe: r.nfe,
                generated: r.tokens.len(),
                strict: (answer.len() + 1).min(r.tokens.len()),
            });
        }
        progress(samples.len(), problems.len());
    }
    Ok(Report { samples, wall_s: t0.elapsed().as_secs_f64() })
}

/// Every sample as one JSON object per line, for inspection.
pub fn samples_jsonl(problems: &[Problem], mode: &str, r: &Report) -> String {
    let mut s = String::new();
    for x in &r.samples {
        let p = &problems[x.index];
        let v = json!({
            "mode": mode, "index": x.index, "question": p.question, "target": x.target,
            "prediction": x.prediction, "correct": x.correct(), "output": x.text,
            "nfe": x.nfe, "generated_tokens": x.generated,
        });
        s.push_str(&v.to_string());
        s.push('\n');
    }
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
