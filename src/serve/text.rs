//! The server's pure text helpers: the answer a row's generated ids make so far, and the part of
//! it a stream has not sent yet. No I/O; unit-tested below.

use crate::model::Tokenizer;

/// The answer in `generated` so far: cut at the first end token (or a mask: the row stopped
/// there), after `max_tokens` tokens (`None`: no cap), and at the first stop string. Returns the
/// text, its token count and why it ended (`"stop"`, `"length"`; None: not yet).
pub fn answer(
    tok: &Tokenizer,
    generated: &[u32],
    max_tokens: Option<usize>,
    stop: &[String],
) -> (String, usize, Option<&'static str>) {
    let mask = tok.special.mask;
    let end = generated.iter().position(|t| tok.special.stop.contains(t) || *t == mask);
    let mut ids = &generated[..end.unwrap_or(generated.len())];
    let mut why = end.filter(|&i| generated[i] != mask).map(|_| "stop");
    if let Some(max) = max_tokens.filter(|&m| ids.len() >= m) {
        if ids.len() > max || why.is_none() {
            why = Some("length");
        }
        ids = &ids[..max];
    }
    let mut text = tok.decode(ids);
    let mut n = ids.len();
    if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(cut);
        n = tok.encode_text(&text).map(|v| v.len()).unwrap_or(n);
        why = Some("stop");
    }
    (text, n, why)
}

/// The part of `now` that extends what was `sent`. Until the answer is `done`, hold back
/// trailing replacement characters (a block can end inside a multi-byte character) and the last
/// `hold` characters (a stop string may be completed by the next block), so the streamed pieces
/// always add up to the final answer.
pub fn delta<'a>(sent: &str, now: &'a str, done: bool, hold: usize) -> Option<&'a str> {
    let now = if done {
        now
    } else {
        let t = now.trim_end_matches('\u{fffd}');
        let keep = t.chars().count().saturating_sub(hold);
        &t[..t.char_indices().nth(keep).map_or(t.len(), |(i, _)| i)]
    };
    now.strip_prefix(sent).filter(|d| !d.is_empty())
}

/// How many leading ids of `ids` (at least `from`) the first `sent` bytes of their text cover:
/// a stream attaches a token's logprob to the chunk that completes its text. A bisection (the
/// decoded length grows with the ids, up to a split character's replacement mark), so a few
/// decodes per block, not one per token.
pub fn covered(tok: &Tokenizer, ids: &[u32], sent: usize, from: usize) -> usize {
    let (mut lo, mut hi) = (from.min(ids.len()), ids.len());
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if tok.decode(&ids[..mid]).len() <= sent {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelFiles;

    fn tok() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mha/checkpoint");
        ModelFiles::open(&dir).unwrap().tokenizer
    }

    #[test]
    fn answers_end_at_an_end_token_a_cap_or_a_stop_string() {
        let tok = tok();
        let ids: Vec<u32> = "hello world".bytes().map(u32::from).collect();
        let with_eos = [&ids[..], &[tok.special.eos, 104]].concat();
        assert_eq!(answer(&tok, &with_eos, None, &[]), ("hello world".into(), 11, Some("stop")));
        assert_eq!(answer(&tok, &ids, None, &[]), ("hello world".into(), 11, None));
        assert_eq!(answer(&tok, &with_eos, Some(5), &[]), ("hello".into(), 5, Some("length")));
        assert_eq!(answer(&tok, &with_eos, Some(11), &[]), ("hello world".into(), 11, Some("stop")));
        assert_eq!(answer(&tok, &ids, Some(11), &[]), ("hello world".into(), 11, Some("length")));
        assert_eq!(answer(&tok, &ids, None, &["o w".into()]), ("hell".into(), 4, Some("stop")));
        let masked = [&ids[..3], &[tok.special.mask]].concat();
        assert_eq!(answer(&tok, &masked, None, &[]), ("hel".into(), 3, None));
    }

    /// Dream's end of turn ends the answer (it is one of the checkpoint's end tokens, declared by
    /// its chat template), as its EOS does.
    #[test]
    fn dreams_end_of_turn_ends_the_answer() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-dream/checkpoint");
        let tok = ModelFiles::open(&dir).unwrap().tokenizer;
        let im_end = tok.encode("<|im_end|>").unwrap()[0];
        let ids = [104, 105, im_end, 106, tok.special.eos, 107];
        assert_eq!(answer(&tok, &ids, None, &[]), ("hi".into(), 2, Some("stop")));
    }

    #[test]
    fn a_token_is_covered_once_its_whole_text_is_sent() {
        let tok = tok();
        let ids: Vec<u32> = "hello".bytes().map(u32::from).collect();
        assert_eq!(covered(&tok, &ids, 0, 0), 0);
        assert_eq!(covered(&tok, &ids, 3, 0), 3);
        assert_eq!(covered(&tok, &ids, 3, 4), 4, "never below `from`");
        assert_eq!(covered(&tok, &ids, 99, 2), 5);
    }

    #[test]
    fn deltas_hold_back_what_may_still_change() {
        assert_eq!(delta("", "hello", false, 0), Some("hello"));
        assert_eq!(delta("he", "hello", false, 2), Some("l"));
        assert_eq!(delta("hel", "hello", false, 2), None);
        assert_eq!(delta("hel", "hello", true, 2), Some("lo"));
        assert_eq!(delta("", "ab\u{fffd}", false, 0), Some("ab"));
    }
}
