//! d3LLM's decoders (d3llm spec §3–§8) against the outputs of d3LLM's own code on the official
//! tiny checkpoint: the entropy rule in the block loop (`generate`), multi-block decoding
//! (`generate_multi_block`) and with the delayed prefix cache (`generate_multi_block_kv_cache`),
//! early stop included — 76 cases, every generated id, NFE as d3LLM counts it, the kind of every
//! forward and what each committed.

mod common;
use common::*;

use serde_json::Value;

use dllm::cache::CacheMode;
use dllm::decode::{DecodeOptions, Decoder, DelayedCache, MultiBlock, Quiet, Rule, RunOptions};

fn reference() -> Value {
    read_json(&fixture("official/d3llm_reference.json"))
}

/// The decoding options of a reference case (its function and knobs).
fn options(c: &Value) -> DecodeOptions {
    let f = |k: &str| c[k].as_f64();
    let u = |k: &str| c[k].as_u64().map(|x| x as usize);
    let multi = |cache| MultiBlock {
        add: f("block_add_threshold").unwrap(),
        activate: f("decoded_token_threshold").unwrap(),
        cache,
        early_stop: if c["early_stop"].as_bool().unwrap() {
            c["eos_token_id"].as_u64().map(|x| x as u32)
        } else {
            None
        },
        max_per_forward: None,
    };
    let decoder = match c["function"].as_str().unwrap() {
        "generate" => Decoder::Blocks,
        "generate_multi_block" => Decoder::MultiBlock(multi(None)),
        "generate_multi_block_kv_cache" => Decoder::MultiBlock(multi(Some(DelayedCache {
            delay: u("cache_delay_iter").unwrap(),
            refresh: u("refresh_interval").unwrap(),
        }))),
        other => panic!("unknown function {other}"),
    };
    DecodeOptions {
        gen_length: u("gen_length").unwrap(),
        block_length: u("block_length").unwrap(),
        steps: u("steps").unwrap(),
        cache: CacheMode::None,
        rule: Rule::Entropy(f("threshold").unwrap_or(999.0)),
        decoder,
        ..DecodeOptions::default()
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Every case: tokens, NFE, forward kinds, commits per forward and what every forward fed,
/// exactly as d3LLM's own code.
#[test]
fn d3llm_reference_cases_reproduce_exactly() {
    let doc = reference();
    let (_, engine) = cpu_engine(&fixture("official/checkpoint"));
    let prompt =
        |id: &str| ids(&doc["prompts"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap()["ids"]);
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 76);
    let mut bad = vec![];
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let run = RunOptions { trace: true, ..RunOptions::default() };
        let p = [prompt(c["prompt"].as_str().unwrap())];
        let out = engine.generate_with(&p, &options(c), run, &mut Quiet).unwrap();
        let r = &out.rows[0];
        let fed: Vec<[usize; 2]> =
            out.trace.iter().map(|t| [t.window.start, t.window.start + t.window.len]).collect();
        let want_fed: Vec<[usize; 2]> = c["fed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| [f[0].as_u64().unwrap() as usize, f[1].as_u64().unwrap() as usize])
            .collect();
        assert_eq!(fed, want_fed, "{name}: the fed window of every forward");
        let want =
            (ids(&c["tokens"]), c["nfe"].as_u64().unwrap() as usize, c["forward_kinds"].as_str().unwrap());
        let commits = ids(&c["commits_per_forward"]);
        if (r.tokens.clone(), r.nfe, r.kinds.as_str()) != want || r.commits != commits {
            bad.push(format!(
                "{name}: nfe {} (want {}), kinds {} (want {}), commits {:?} (want {commits:?}), tokens {}",
                r.nfe,
                want.1,
                r.kinds,
                want.2,
                r.commits,
                if r.tokens == want.0 { "equal" } else { "differ" }
            ));
        }
        assert_eq!(out.forwards, c["model_calls"].as_u64().unwrap() as usize, "{name}: model calls");
    }
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
