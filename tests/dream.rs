//! Dream (spec §3) on the CPU backend: golden parity with the NumPy reference
//! (tools/reference.py, `generate_dream`) on the tiny Dream fixture of tools/make_tiny.py — every
//! cache mode × {entropy schedule, threshold} — batches equal to their rows alone, the
//! checkpoint's own chat template, and the refusals that keep a wrong checkpoint from running.

mod common;
use common::*;

use std::process::Command;

use dllm::cache::CacheMode;
use dllm::decode::DecodeOptions;
use dllm::decode::Rule;
use dllm::model::{Arch, ModelFiles};

fn dir() -> std::path::PathBuf {
    fixture("tiny-dream").join("checkpoint")
}

fn golden_cases() -> Vec<Case> {
    cases(&fixture("tiny-dream").join("goldens.json"), "nfe")
}

#[test]
fn tiny_dream_goldens_token_for_token() {
    let cases = golden_cases();
    assert!(cases.len() >= 12, "{} cases", cases.len());
    for cache in [CacheMode::None, CacheMode::Prefix, CacheMode::Dual] {
        for entropy in [true, false] {
            let n = cases
                .iter()
                .filter(|c| c.opts.cache == cache && (c.opts.rule == Rule::Quota) == entropy)
                .count();
            assert!(n >= 3, "{cache:?} entropy={entropy}: {n} cases");
        }
    }
    let (files, engine) = cpu_engine(&dir());
    assert_eq!(files.config.arch, Arch::Dream);
    let bad = mismatches(&engine, &cases);
    assert!(bad.is_empty(), "{} of {} cases differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
}

/// spec §3: a cached block starts with its first token alone; with 32 steps per block the entropy
/// schedule then commits [0, 1, …, 1, 2]; uncached with steps = G it commits 0 first, 2 last.
#[test]
fn dream_commit_schedules_of_spec_3() {
    let cases = golden_cases();
    let mut seen = 0;
    for c in &cases {
        let blocks = c.opts.gen_length / c.opts.block_length;
        if c.opts.cache != CacheMode::None {
            for block in c.commits.chunks(c.commits.len() / blocks).filter(|_| c.opts.rule == Rule::Quota) {
                assert_eq!(block[0], 1, "{}", c.name);
                if c.opts.steps / blocks == 32 {
                    assert_eq!(block, [vec![1, 0], vec![1; 29], vec![2]].concat().as_slice(), "{}", c.name);
                    seen += 1;
                }
            }
            assert!(c.kinds.starts_with('F'), "{}", c.name);
        } else if c.opts.rule == Rule::Quota {
            assert_eq!(c.nfe, c.opts.steps, "{}: exactly `steps` forwards", c.name);
            if c.opts.steps == c.opts.gen_length {
                assert_eq!((c.commits[0], *c.commits.last().unwrap()), (0, 2), "{}", c.name);
            }
            assert!(c.kinds.chars().all(|k| k == 'F'), "{}", c.name);
        }
    }
    assert!(seen >= 3, "{seen}");
}

#[test]
fn dream_prompts_use_the_checkpoints_chat_template_and_ids() {
    let doc = read_json(&fixture("tiny-dream").join("goldens.json"));
    assert_eq!(doc["family"], "dream");
    let files = ModelFiles::open(&dir()).unwrap();
    let tok = &files.tokenizer;
    assert!(tok.has_chat_template());
    let sp = &doc["special_ids"];
    assert_eq!(Some(tok.special.mask as u64), sp["<|mask|>"].as_u64());
    assert_eq!(Some(tok.special.eos as u64), sp["<|endoftext|>"].as_u64());
    assert_prompts_tokenize(&doc, tok, "tiny-dream");
}

/// Three prompts of different lengths in one batch: each row equals its golden (= alone).
#[test]
fn dream_batch_of_three_equals_each_row_alone() {
    let (_, engine) = cpu_engine(&dir());
    let groups = assert_batches_equal_alone(&engine, &golden_cases(), "tiny-dream");
    assert!(groups >= 6, "{groups}");
}

#[test]
fn dream_without_qkv_biases_is_refused_by_name() {
    let d = temp_copy(&dir(), "dream-nobias");
    let f = d.join("model.safetensors");
    let mut t = read_tensors(&f);
    t.remove("model.layers.0.self_attn.q_proj.bias");
    write_tensors(&f, &t);
    let e = ModelFiles::open(&d).err().expect("refused").to_string();
    assert!(e.contains("model.layers.0.self_attn.q_proj.bias") && e.contains("missing"), "{e}");
}

#[test]
fn a_config_mixing_the_families_is_refused_by_name() {
    for (field, value) in [("d_model", 96), ("n_layers", 3)] {
        let d = temp_copy(&dir(), &format!("dream-mixed-{field}"));
        let cfg = d.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v[field] = value.into();
        std::fs::write(&cfg, v.to_string()).unwrap();
        let e = ModelFiles::open(&d).err().expect("refused").to_string();
        assert!(e.contains(&format!("`{field}`")) && e.contains("mixes the two families"), "{e}");
    }
    // LLaDA weights under a Dream config: the first Dream tensor is named as missing
    let d = temp_copy(&fixture("tiny-gqa").join("checkpoint"), "llada-weights-dream-config");
    std::fs::copy(dir().join("config.json"), d.join("config.json")).unwrap();
    let e = ModelFiles::open(&d).err().expect("refused").to_string();
    assert!(e.contains("model.embed_tokens.weight") || e.contains("model.layers.0"), "{e}");
}

#[test]
fn dream_refuses_what_it_does_not_define() {
    let (files, engine) = cpu_engine(&dir());
    let p = vec![files.tokenizer.encode("Hi").unwrap()];
    let base = DecodeOptions { gen_length: 64, steps: 64, ..DecodeOptions::default() };
    let err = |o: DecodeOptions| engine.generate(&p, &o).expect_err("refused").to_string();
    assert!(err(DecodeOptions { rule: Rule::Factor(1.0), ..base.clone() }).contains("factor"));
    assert!(err(DecodeOptions { temperature: 0.5, ..base.clone() }).contains("temperature"));
    let e = err(DecodeOptions { rule: Rule::Quota, steps: 2, ..base.clone() });
    assert!(e.contains("at least 2 steps per block"), "{e}");
    let e =
        err(DecodeOptions { cache: CacheMode::None, rule: Rule::Threshold(0.9), steps: 48, ..base.clone() });
    assert!(e.contains("multiple of steps"), "{e}");
}

/// `dllm generate` on the tiny Dream checkpoint, as a user runs it from a fresh clone.
#[test]
fn cli_generates_with_the_tiny_dream_checkpoint() {
    let doc = read_json(&fixture("tiny-dream").join("goldens.json"));
    let case = doc["cases"].as_array().unwrap().iter().find(|c| c["name"] == "p2/dual/thr0.9").unwrap();
    let prompt = doc["prompts"].as_array().unwrap().iter().find(|p| p["id"] == "p2").unwrap();
    let bin = std::env::var("DLLM_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dllm").to_string());
    let d = dir().display().to_string();
    let o = Command::new(bin)
        .args(["generate", "--model", &d, "--prompt", prompt["text"].as_str().unwrap()])
        .args(["--gen-length", "96", "--cache", "dual", "--threshold", "0.9", "--json", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["rows"][0]["prompt_ids"], prompt["ids"]);
    assert_eq!(out["rows"][0]["generated_ids"], case["tokens"]);
}
