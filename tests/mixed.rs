//! Rows that choose their own rule and draw in one batch (issue 19 part 5), and top-k / nucleus
//! sampling (part 4), on the CPU backend: every row equals its golden or its run alone; a top-k of
//! 1 or a vanishing nucleus is greedy decoding; draws stay inside their allowed set.

mod common;
use common::*;

use dllm::backend::cpu::{Cpu, CpuTensor};
use dllm::backend::{Backend, DType, Draw, Sampling, Score, Window};
use dllm::cache::CacheMode;
use dllm::decode::{DecodeOptions, RowRule, RowStart, Rule};

fn own(c: &Case) -> RowStart {
    RowStart { rule: Some(c.opts.row_rule()), ..c.row() }
}

/// One batch per cache mode whose rows each bring their golden case's rule (LLaDA: threshold
/// 0.9, factor 1.0, threshold 0.7, the quota schedule; Dream: its entropy schedule and
/// threshold): every row equals its golden — tokens, NFE, commits.
#[test]
fn rows_with_their_own_rules_equal_their_goldens() {
    for (name, picks) in [
        ("tiny-gqa", ["p0/{}/thr0.9", "p1/{}/factor1.0", "p2/{}/thr0.7", "p1/{}/quota"]),
        ("tiny-dream", ["p0/{}/entropy", "p1/{}/thr0.9", "p2/{}/entropy", "p2/{}/thr0.7"]),
    ] {
        let cases = cases(&fixture(name).join("goldens.json"), "nfe");
        let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
        for cache in ["prefix", "dual", "none"] {
            let group: Vec<&Case> = picks
                .iter()
                .filter_map(|p| cases.iter().find(|c| c.name == p.replace("{}", cache)))
                .collect();
            if name == "tiny-dream" && cache == "none" {
                // uncached Dream: the entropy schedule and the threshold share steps = G/2
                let g: Vec<&Case> = ["p0/none/entropy48", "p1/none/thr0.9"]
                    .iter()
                    .map(|n| cases.iter().find(|c| &c.name == n).unwrap())
                    .collect();
                check_group(&engine, &g, name);
                continue;
            }
            assert!(group.len() >= 3, "{name} {cache}: {} cases", group.len());
            check_group(&engine, &group, name);
        }
    }
}

/// Decode `group` as one batch with the options of its quota case (its steps), each row with its
/// own rule; compare each row with its case.
fn check_group(engine: &dllm::decode::Engine<Cpu>, group: &[&Case], label: &str) {
    let base = group.iter().find(|c| c.opts.uses_steps(engine.config.arch)).unwrap_or(&group[0]);
    let rows: Vec<RowStart> = group.iter().map(|c| own(c)).collect();
    let rules: std::collections::BTreeSet<String> = group.iter().map(|c| c.opts.rule.to_string()).collect();
    assert!(rules.len() >= 2, "{label}: one rule only: {rules:?}");
    for (o, c) in run_rows(engine, &rows, &base.opts).iter().zip(group) {
        assert_eq!((&o.tokens, o.nfe, &o.commits), (&c.tokens, c.nfe, &c.commits), "{label} {}", c.name);
    }
}

fn sampled(rule: Rule, temperature: f64, top_k: u32, top_p: f64) -> RowRule {
    RowRule { rule, temperature, top_k, top_p }
}

/// Rows differing in temperature, top-k, top-p, seed, rule and length decoded together: each
/// equals its run alone (tokens, NFE, commits), in every cache mode.
#[test]
fn sampled_rows_with_their_own_draws_equal_each_alone() {
    let (_, engine) = cpu_engine(&fixture("tiny-gqa").join("checkpoint"));
    let prompts = [vec![72u32, 101, 108, 108, 111], vec![67, 111, 117, 110, 116, 58, 32, 49], vec![87, 104]];
    let rules = [
        sampled(Rule::Threshold(0.7), 0.8, 0, 1.0),
        sampled(Rule::Threshold(0.9), 1.2, 5, 1.0),
        sampled(Rule::Factor(1.0), 1.0, 0, 0.8),
        sampled(Rule::Quota, 0.6, 20, 0.9),
        sampled(Rule::Threshold(0.5), 0.0, 0, 1.0),
    ];
    for cache in [CacheMode::None, CacheMode::Prefix, CacheMode::Dual] {
        let opts = DecodeOptions { gen_length: 96, steps: 48, cache, ..DecodeOptions::default() };
        let rows: Vec<RowStart> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| RowStart {
                prompt: prompts[i % 3].clone(),
                seed: Some(100 + i as u64),
                gen_length: Some(if i == 2 { 64 } else { 96 }),
                rule: Some(*r),
                ..RowStart::default()
            })
            .collect();
        let together = run_rows(&engine, &rows, &opts);
        for (i, row) in rows.iter().enumerate() {
            let alone = &run_rows(&engine, std::slice::from_ref(row), &opts)[0];
            let t = &together[i];
            assert_eq!(
                (&t.tokens, t.nfe, &t.commits),
                (&alone.tokens, alone.nfe, &alone.commits),
                "{cache:?} row {i}"
            );
        }
    }
}

/// With a top-k of 1 or a nucleus smaller than any token's mass only the argmax may be drawn:
/// sampling at any temperature then decodes the greedy golden exactly.
#[test]
fn top_k_1_and_a_vanishing_nucleus_decode_the_greedy_golden() {
    let cases = cases(&fixture("tiny-gqa").join("goldens.json"), "nfe");
    let (_, engine) = cpu_engine(&fixture("tiny-gqa").join("checkpoint"));
    let mut checked = 0;
    for c in cases.iter().filter(|c| c.name.starts_with("p1/")) {
        for (top_k, top_p) in [(1, 1.0), (0, 1e-9)] {
            let opts = DecodeOptions { temperature: 1.7, top_k, top_p, seed: 5, ..c.opts.clone() };
            let out = &run_rows(&engine, &[c.row()], &opts)[0];
            assert_eq!((&out.tokens, out.nfe), (&c.tokens, c.nfe), "{} top_k {top_k} top_p {top_p}", c.name);
            checked += 1;
        }
        // unrestricted sampling at that temperature is not greedy (the check above can fail)
        let free = DecodeOptions { temperature: 1.7, seed: 5, ..c.opts.clone() };
        assert_ne!(run_rows(&engine, &[c.row()], &free)[0].tokens, c.tokens, "{}", c.name);
    }
    assert_eq!(checked, 24);
}

/// The draws of many seeds: top-k draws only among the k highest logits (and reaches each of
/// them), the nucleus only among the smallest top set holding the mass; the mask never.
#[test]
fn draws_stay_inside_the_top_k_and_the_nucleus() {
    let cpu = Cpu::new(DType::F32, Some(1));
    let vocab = 40;
    let logits: Vec<f32> = (0..vocab).map(|v| ((v * 37 % vocab) as f32) * 0.15).collect();
    let mask = (0..vocab).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap() as u32;
    let t = CpuTensor::new(1, vocab, logits.clone());
    let mut order: Vec<usize> = (0..vocab).filter(|&v| v != mask as usize).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    // the nucleus of mass 0.6 at temperature 1, computed here from the sorted probabilities
    let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
    let mut above = 0.0;
    let nucleus: Vec<usize> = order
        .iter()
        .copied()
        .take_while(|&v| {
            let keep = above < 0.6 * z;
            above += (logits[v] as f64).exp();
            keep
        })
        .collect();
    assert!(nucleus.len() >= 3 && nucleus.len() < 20, "{nucleus:?}");
    for (top_k, top_p, allowed) in [(3, 1.0, order[..3].to_vec()), (0, 0.6, nucleus)] {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..400u64 {
            let draws = [Draw { temperature: 1.0, top_k, top_p, score: Score::Confidence }];
            let s =
                Sampling { draws: &draws, seeds: &[seed], counters: &[0], mask_id: mask, bf16_probs: false };
            let mut out = cpu.cands(1).unwrap();
            cpu.argmax_confidence(&t, &vec![0], Window { start: 0, len: 1 }, 1, s, &mut out).unwrap();
            let tok = out.tokens[0] as usize;
            assert!(allowed.contains(&tok), "top_k {top_k} top_p {top_p}: drew {tok} outside {allowed:?}");
            seen.insert(tok);
        }
        assert_eq!(seen.len(), allowed.len(), "top_k {top_k} top_p {top_p}: drew {seen:?} of {allowed:?}");
    }
}

#[test]
fn bad_row_rules_are_refused_naming_the_row() {
    let (_, engine) = cpu_engine(&fixture("tiny-gqa").join("checkpoint"));
    let opts = DecodeOptions { gen_length: 64, steps: 64, ..DecodeOptions::default() };
    let row = |r: RowRule| RowStart { prompt: vec![72, 101], rule: Some(r), ..RowStart::default() };
    let ok = sampled(Rule::Threshold(0.9), 0.0, 0, 1.0);
    for (bad, what) in [
        (RowRule { top_p: 0.0, ..ok }, "top_p"),
        (RowRule { top_p: 1.5, ..ok }, "top_p"),
        (RowRule { temperature: -1.0, ..ok }, "temperature"),
        (RowRule { rule: Rule::Threshold(1.5), ..ok }, "threshold"),
    ] {
        let e = run_rows_err(&engine, &[row(ok), row(bad)], &opts);
        assert!(e.contains("row 1") && e.contains(what), "{e}");
    }
}

fn run_rows_err(engine: &dllm::decode::Engine<Cpu>, rows: &[RowStart], opts: &DecodeOptions) -> String {
    let run = dllm::decode::RunOptions::default();
    engine.generate_rows(rows, opts, run, usize::MAX, &mut dllm::decode::Quiet).unwrap_err().to_string()
}
