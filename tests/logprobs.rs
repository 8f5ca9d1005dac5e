//! Reveal-time logprobs (issue 19 part 2) on the CPU backend: each committed token's
//! log-probability and top alternatives from the logits of the forward that committed it.

mod common;
use common::*;

use dllm::decode::{DecodeOptions, RowStart, Rule, RunOptions, TokenLogprobs};

fn with_logprobs(n: usize) -> RunOptions {
    RunOptions { logprobs: Some(n), ..RunOptions::default() }
}

/// Greedy goldens of LLaDA and Dream in every cache mode, with logprobs on: the tokens, NFE and
/// commits are the goldens' (logprobs change nothing); every generated position has a record of
/// its own token; greedy draws are the top alternative; alternatives are in descending order.
/// Under threshold 0.9, every token of a forward that committed several has probability ≥ 0.9
/// (they passed the threshold at that forward), and some forced top-1 commits have less.
#[test]
fn logprobs_are_those_of_the_committing_forward() {
    for name in ["tiny-gqa", "tiny-dream"] {
        let cases = cases(&fixture(name).join("goldens.json"), "nfe");
        let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
        let (mut forced_below, mut parallel) = (0, 0);
        for c in &cases {
            let out =
                engine.decode_rows(&[c.row()], &c.opts, with_logprobs(3), &mut dllm::decode::Quiet).unwrap();
            let r = &out.rows[0];
            assert_eq!((&r.tokens, r.nfe, &r.commits), (&c.tokens, c.nfe, &c.commits), "{name} {}", c.name);
            assert_eq!(r.logprobs.len(), r.tokens.len());
            for (i, rec) in r.logprobs.iter().enumerate() {
                let rec = rec.as_ref().unwrap_or_else(|| panic!("{name} {} position {i}: no record", c.name));
                assert_eq!(rec.token, r.tokens[i]);
                assert!(rec.logprob <= 0.0 && rec.logprob.is_finite(), "{}", rec.logprob);
                assert_eq!(rec.top.len(), 3);
                assert_eq!(rec.top[0], (rec.token, rec.logprob), "{name} {}: greedy draws the top", c.name);
                assert!(rec.top.windows(2).all(|w| w[0].1 >= w[1].1), "{:?}", rec.top);
            }
            if c.opts.rule != Rule::Threshold(0.9) || name != "tiny-gqa" {
                continue;
            }
            for step in &out.trace {
                let committed = &step.committed[0];
                for &(pos, _) in committed {
                    let p = r.logprobs[pos].as_ref().unwrap().logprob.exp();
                    if committed.len() > 1 {
                        assert!(p >= 0.9 - 1e-12, "{}: a parallel commit at p {p}", c.name);
                        parallel += 1;
                    } else if p < 0.9 {
                        forced_below += 1;
                    }
                }
            }
        }
        if name == "tiny-gqa" {
            assert!(parallel > 0 && forced_below > 0, "parallel {parallel}, forced below τ {forced_below}");
        }
    }
}

/// A batch's logprobs are each row's alone, bit for bit; a sampled row's record is of the token
/// it drew.
#[test]
fn logprobs_are_batch_independent_and_follow_sampled_draws() {
    let (_, engine) = cpu_engine(&fixture("tiny-gqa").join("checkpoint"));
    let opts = DecodeOptions {
        gen_length: 64,
        steps: 64,
        temperature: 0.9,
        top_k: 8,
        seed: 3,
        ..DecodeOptions::default()
    };
    let rows: Vec<RowStart> = [vec![72u32, 105], vec![67, 111, 117, 110, 116], vec![87]]
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| RowStart { prompt, seed: Some(10 + i as u64), ..RowStart::default() })
        .collect();
    let run = |rows: &[RowStart]| {
        engine.decode_rows(rows, &opts, with_logprobs(2), &mut dllm::decode::Quiet).unwrap()
    };
    let together = run(&rows);
    for (i, row) in rows.iter().enumerate() {
        let alone = run(std::slice::from_ref(row));
        assert_eq!(together.rows[i].logprobs, alone.rows[0].logprobs, "row {i}");
        for (t, rec) in together.rows[i].tokens.iter().zip(&together.rows[i].logprobs) {
            let TokenLogprobs { token, logprob, top } = rec.as_ref().unwrap();
            assert_eq!(token, t);
            if let Some(&(_, lp)) = top.iter().find(|(id, _)| id == t) {
                assert_eq!(lp, *logprob);
            } else {
                assert!(*logprob <= top[1].1, "a token outside the top 2 is less likely than both");
            }
        }
    }
}
