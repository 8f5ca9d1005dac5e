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
