//! d3LLM's decoders (d3llm spec §3–§8) against the outputs of d3LLM's own code on the official
//! tiny checkpoint: the entropy rule in the block loop (`generate`), multi-block decoding
//! (`generate_multi_block`) and with the delayed prefix cache (`generate_multi_block_kv_cache`),
//! early stop included — 76 cases, every generated id, NFE as d3LLM counts it, the kind of every
//! forward and what each committed.

mod common;
use common::*;

use dllm::cache::CacheMode;
use dllm::decode::{DecodeOptions, Decoder, DelayedCache, MultiBlock, Rule};

/// Every case: tokens, NFE, forward kinds, commits per forward and what every forward fed,
/// exactly as d3LLM's own code.
#[test]
fn d3llm_reference_cases_reproduce_exactly() {
    let (_, engine) = cpu_engine(&fixture("official/checkpoint"));
    let cases = d3llm_cases();
    assert_eq!(cases.len(), 76);
    let bad = d3llm_mismatches(&engine, &cases);
    assert!(bad.is_empty(), "{} of 76 cases differ:\n{}", bad.len(), bad.join("\n"));
}

/// Knobs out of range, a generation that is not whole blocks (d3LLM spins forever there), the
/// wrong rule or cache, and Dream are refused by name.
#[test]
fn bad_multi_block_knobs_are_refused() {
    let (_, engine) = cpu_engine(&fixture("official/checkpoint"));
    let mb = MultiBlock { add: 0.1, activate: 0.95, cache: None, early_stop: None, max_per_forward: None };
    let base = DecodeOptions {
        gen_length: 96,
        steps: 96,
        cache: CacheMode::None,
        rule: Rule::Entropy(0.5),
        decoder: Decoder::MultiBlock(mb),
        ..DecodeOptions::default()
    };
    let err = |o: DecodeOptions| engine.generate(&[vec![72, 105]], &o).unwrap_err().to_string();
    let with = |mb: MultiBlock| DecodeOptions { decoder: Decoder::MultiBlock(mb), ..base.clone() };
    assert!(err(with(MultiBlock { add: 1.5, ..mb })).contains("block-add threshold 1.5 is outside [0, 1]"));
    assert!(err(with(MultiBlock { activate: -0.1, ..mb })).contains("activation threshold -0.1"));
    let no_refresh = MultiBlock { cache: Some(DelayedCache { delay: 2, refresh: 0 }), ..mb };
    assert!(err(with(no_refresh)).contains("refresh interval"));
    assert!(err(DecodeOptions { gen_length: 100, ..base.clone() })
        .contains("gen_length 100 is not a multiple of block_length 32"));
    assert!(err(DecodeOptions { rule: Rule::Threshold(0.9), ..base.clone() }).contains("entropy rule"));
    assert!(err(DecodeOptions { cache: CacheMode::Dual, ..base.clone() }).contains("--cache none"));
    assert!(
        err(DecodeOptions { rule: Rule::Entropy(f64::NAN), ..base.clone() }).contains("entropy threshold")
    );
    let (_, dream) = cpu_engine(&fixture("tiny-dream/checkpoint"));
    let e = dream.generate(&[vec![72, 105]], &base).unwrap_err().to_string();
    assert!(e.contains("not defined for Dream"), "{e}");
}

/// Rows of a batch decode one at a time under the multi-block decoder: each answers exactly as
/// alone, the published settings included.
#[test]
fn multi_block_batches_answer_as_alone() {
    let (files, engine) = cpu_engine(&fixture("tiny-gqa/checkpoint"));
    let prompts = vec![vec![72, 105], vec![87, 104, 97, 116, 32, 105, 115], vec![65]];
    for preset in ["d3llm", "d3llm-cache", "dparallel"] {
        let o = DecodeOptions { gen_length: 96, steps: 96, ..DecodeOptions::default() };
        let o = o.with_preset(preset, files.tokenizer.special.eos).unwrap();
        let together = engine.generate(&prompts, &o).unwrap();
        for (p, row) in prompts.iter().zip(&together.rows) {
            let alone = engine.generate(std::slice::from_ref(p), &o).unwrap();
            assert_eq!(&alone.rows[0], row, "{preset}");
        }
    }
}

/// `max_per_forward` (how `dllm bench`'s workload S2 fixes its tokens per forward) bounds what
/// the rule commits; forced progress may add one more.
#[test]
fn a_commit_cap_bounds_every_forward() {
    let (_, engine) = cpu_engine(&fixture("official/checkpoint"));
    let mb =
        MultiBlock { add: 0.1, activate: 0.95, cache: None, early_stop: None, max_per_forward: Some(10) };
    let o = DecodeOptions {
        gen_length: 96,
        steps: 96,
        cache: CacheMode::None,
        rule: Rule::Entropy(f64::MAX),
        decoder: Decoder::MultiBlock(mb),
        ..DecodeOptions::default()
    };
    let out = engine.generate(&[vec![72, 105]], &o).unwrap();
    let commits = &out.rows[0].commits;
    assert!(commits.iter().all(|&c| (1..=11).contains(&c)), "{commits:?}");
    assert_eq!(commits.iter().sum::<u32>(), 96);
    assert!(out.rows[0].nfe >= 9, "{}", out.rows[0].nfe);
}
