//! Golden cases (the official outputs and the NumPy reference's), run and compared.

use std::path::Path;

use serde_json::Value;

use dllm::backend::cpu::Cpu;
use dllm::cache::CacheMode;
use dllm::decode::{DecodeOptions, Engine, Rule};

use super::fixtures::read_json;

/// One golden case (the official file and ours share these fields).
pub struct Case {
    pub name: String,
    pub prompt: Vec<u32>,
    pub opts: DecodeOptions,
    pub tokens: Vec<u32>,
    pub nfe: usize,
    pub kinds: String,
    pub commits: Vec<u32>,
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Cases of a goldens file; `nfe_field` names the NFE to expect.
pub fn cases(file: &Path, nfe_field: &str) -> Vec<Case> {
    let doc = read_json(file);
    let prompts: std::collections::HashMap<String, Vec<u32>> = doc["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), ids(&p["ids"])))
        .collect();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let rule = if let Some(t) = c["threshold"].as_f64() {
                Rule::Threshold(t)
            } else if let Some(f) = c["factor"].as_f64() {
                Rule::Factor(f)
            } else {
                Rule::Quota
            };
            let cache = match c["cache"].as_str().unwrap() {
                "none" => CacheMode::None,
                "prefix" => CacheMode::Prefix,
                "dual" => CacheMode::Dual,
                other => panic!("unknown cache {other}"),
            };
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                prompt: prompts[c["prompt"].as_str().unwrap()].clone(),
                opts: DecodeOptions {
                    gen_length: c["gen_length"].as_u64().unwrap() as usize,
                    block_length: c["block_length"].as_u64().unwrap() as usize,
                    steps: c["steps"].as_u64().unwrap() as usize,
                    cache,
                    rule,
                    temperature: 0.0,
                    seed: 0,
                    early_exit: false,
                    ..DecodeOptions::default()
                },
                tokens: ids(&c["tokens"]),
                nfe: c[nfe_field].as_u64().unwrap() as usize,
                kinds: c["forward_kinds"].as_str().unwrap().to_string(),
                commits: ids(&c["commits_per_forward"])
                    .into_iter()
                    // The official prefix/dual loops spend one forward (committing nothing) on
                    // a block their block-start forward finished; an engine that checks first
                    // (spec §8) does not, so those zero entries are not expected.
                    .filter(|&n| n > 0 || c["nfe"] == c[nfe_field])
                    .collect(),
            }
        })
        .collect()
}

/// Run every case on `engine`; return the names of those that differ, with what differed.
pub fn mismatches(engine: &Engine<Cpu>, cases: &[Case]) -> Vec<String> {
    let mut bad = vec![];
    for c in cases {
        let out = engine.generate(std::slice::from_ref(&c.prompt), &c.opts).unwrap();
        let r = &out.rows[0];
        if r.tokens != c.tokens {
            let first = r.tokens.iter().zip(&c.tokens).position(|(a, b)| a != b);
            bad.push(format!("{}: tokens differ (first at generated position {first:?})", c.name));
        } else if r.nfe != c.nfe {
            bad.push(format!("{}: nfe {} expected {}", c.name, r.nfe, c.nfe));
        } else if r.commits != c.commits {
            bad.push(format!("{}: commits {:?} expected {:?}", c.name, r.commits, c.commits));
        }
    }
    bad
}

/// Decode the three prompts of every mode (cases named `p0/…`, `p1/…`, `p2/…`) as one batch and
/// check each row against its case (= the row alone): tokens, NFE, commits. Returns the number
/// of modes checked.
pub fn assert_batches_equal_alone(engine: &Engine<Cpu>, cases: &[Case], label: &str) -> usize {
    let mut groups = 0;
    for p0 in cases.iter().filter(|c| c.name.starts_with("p0/")) {
        let mode = &p0.name[3..];
        let group: Vec<&Case> = cases.iter().filter(|c| &c.name[3..] == mode).collect();
        assert_eq!(group.len(), 3, "{label} {mode}");
        let lens: Vec<usize> = group.iter().map(|c| c.prompt.len()).collect();
        assert!(lens[0] != lens[1] && lens[1] != lens[2], "{label}: prompt lengths {lens:?}");
        let prompts: Vec<Vec<u32>> = group.iter().map(|c| c.prompt.clone()).collect();
        let out = engine.generate(&prompts, &p0.opts).unwrap();
        for (row, c) in out.rows.iter().zip(&group) {
            assert_eq!(row.tokens, c.tokens, "{label} batch row {}", c.name);
            assert_eq!(row.nfe, c.nfe, "{label} batch row {}", c.name);
            assert_eq!(row.commits, c.commits, "{label} batch row {}", c.name);
        }
        groups += 1;
    }
    groups
}

/// Every prompt of a goldens document (`prompts`: id, text, chat, ids) tokenizes to its ids.
pub fn assert_prompts_tokenize(doc: &Value, tok: &dllm::model::Tokenizer, label: &str) {
    for p in doc["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> =
            p["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got =
            if p["chat"].as_bool().unwrap() { tok.encode_chat(text) } else { tok.encode(text) }.unwrap();
        assert_eq!(got, want, "{label} prompt {}", p["id"]);
    }
}
