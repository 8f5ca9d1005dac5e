//! Golden parity with the independent NumPy reference (tools/reference.py) on the two tiny
//! fixtures of tools/make_tiny.py: every cache mode × {quota, threshold 0.9, threshold 0.7,
//! factor 1.0} × 3 prompts, ≥ 3 blocks each; and batches equal to their rows run alone (spec §6).

mod common;
use common::*;

use dllm::cache::CacheMode;
use dllm::decode::DecodeOptions;
use dllm::decode::Rule;

fn golden_cases(name: &str) -> Vec<Case> {
    cases(&fixture(name).join("goldens.json"), "nfe")
}

fn check_fixture(name: &str) {
    let cases = golden_cases(name);
    assert_eq!(cases.len(), 36, "{name}");
    let blocks: Vec<usize> = cases.iter().map(|c| c.opts.gen_length / c.opts.block_length).collect();
    assert!(blocks.iter().all(|&k| k >= 3));
    let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
    let bad = mismatches(&engine, &cases);
    assert!(bad.is_empty(), "{name}: {} of {} cases differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
}

#[test]
fn tiny_mha_goldens_token_for_token() {
    check_fixture("tiny-mha");
}

#[test]
fn tiny_gqa_goldens_token_for_token() {
    check_fixture("tiny-gqa");
}

#[test]
fn golden_prompts_tokenize_with_the_fixtures_own_special_ids() {
    for name in ["tiny-mha", "tiny-gqa"] {
        let doc = read_json(&fixture(name).join("goldens.json"));
        let (files, _) = cpu_engine(&fixture(name).join("checkpoint"));
        let tok = &files.tokenizer;
        let sp = &doc["special_ids"];
        assert_eq!(tok.special.mask as u64, sp["<|mdm_mask|>"].as_u64().unwrap(), "{name}");
        assert_eq!(tok.special.eos as u64, sp["<|endoftext|>"].as_u64().unwrap(), "{name}");
        assert_eq!(tok.special.bos.map(u64::from), sp["<|startoftext|>"].as_u64(), "{name}");
        assert_prompts_tokenize(&doc, tok, name);
    }
}

/// The quota cases of both fixtures have remainders (32 masks over 20 and 12 steps per block):
/// the larger quotas come first (spec §4.4).
#[test]
fn quota_remainder_order_in_goldens() {
    for (name, want) in [
        ("tiny-mha", [vec![2u32; 12], vec![1; 8]].concat()),
        ("tiny-gqa", [vec![3u32; 8], vec![2; 4]].concat()),
    ] {
        let c = golden_cases(name).into_iter().find(|c| c.opts.rule == Rule::Quota).unwrap();
        let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
        let out = engine.generate(std::slice::from_ref(&c.prompt), &c.opts).unwrap();
        let per_block = want.len();
        for block in out.rows[0].commits.chunks(per_block) {
            assert_eq!(block, want.as_slice(), "{name}");
        }
        assert_eq!(out.rows[0].tokens, c.tokens, "{name}");
    }
}

/// Three prompts of different lengths (11, 18 and 41 tokens) in one batch: each row equals its
/// golden (= the row run alone) in tokens, NFE and commits, in every mode.
#[test]
fn batch_of_three_prompts_equals_each_row_alone() {
    for name in ["tiny-gqa", "tiny-mha"] {
        let cases = golden_cases(name);
        let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
        let groups = assert_batches_equal_alone(&engine, &cases, name);
        assert_eq!(groups, 12);
    }
}

fn sampled(temperature: f64, seed: u64, cache: CacheMode) -> DecodeOptions {
    DecodeOptions {
        gen_length: 64,
        block_length: 32,
        steps: 64,
        cache,
        rule: Rule::Threshold(0.7),
        temperature,
        seed,
        ..DecodeOptions::default()
    }
}

#[test]
fn temperature_sampling_is_seeded_and_batch_independent() {
    let (files, engine) = cpu_engine(&fixture("tiny-mha").join("checkpoint"));
    let tok = &files.tokenizer;
    let prompts: Vec<Vec<u32>> =
        ["Hi", "Once upon a time", "What is 2+2?"].iter().map(|p| tok.encode_chat(p).unwrap()).collect();
    for cache in [CacheMode::None, CacheMode::Prefix, CacheMode::Dual] {
        let a = engine.generate(&prompts[..1], &sampled(1.0, 7, cache)).unwrap();
        let b = engine.generate(&prompts[..1], &sampled(1.0, 7, cache)).unwrap();
        let c = engine.generate(&prompts[..1], &sampled(1.0, 8, cache)).unwrap();
        let greedy = engine.generate(&prompts[..1], &sampled(0.0, 7, cache)).unwrap();
        assert_eq!(a.rows[0].tokens, b.rows[0].tokens, "same seed, same tokens");
        assert_ne!(a.rows[0].tokens, c.rows[0].tokens, "another seed, other tokens");
        assert_ne!(a.rows[0].tokens, greedy.rows[0].tokens, "sampling differs from greedy");
        let batch = engine.generate(&prompts, &sampled(1.0, 7, cache)).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = engine.generate(std::slice::from_ref(p), &sampled(1.0, 7, cache)).unwrap();
            assert_eq!(batch.rows[i], alone.rows[0], "{cache:?} row {i}");
        }
    }
}

/// Early exit (spec §5 EOS) on a model that only ever says EOS: a copy of tiny-mha whose LM head
/// is zero (every logit 0, so the argmax is the lowest id, 0) and whose config names id 0 as EOS.
/// The first block is all EOS, so decoding stops there; without early exit every block runs.
#[test]
fn early_exit_stops_after_a_block_of_eos() {
    let dir = temp_copy(&fixture("tiny-mha").join("checkpoint"), "eos-only");
    let f = dir.join("model.safetensors");
    let mut t = read_tensors(&f);
    let head = "model.transformer.ff_out.weight";
    let shape = t[head].shape.clone();
    t.insert(head.into(), from_f32s(&shape, &vec![0.0; shape[0] * shape[1]]));
    write_tensors(&f, &t);
    let cfg = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["eos_token_id"] = 0.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    let (files, engine) = cpu_engine(&dir);
    assert_eq!(files.tokenizer.special.eos, 0);
    let prompts = vec![vec![72u32, 105], vec![65u32, 66, 67, 68, 69]];
    for cache in [CacheMode::None, CacheMode::Prefix, CacheMode::Dual] {
        let opts = DecodeOptions {
            gen_length: 128,
            steps: 128,
            cache,
            rule: Rule::Threshold(0.9),
            ..DecodeOptions::default()
        };
        let full = engine.generate(&prompts, &opts).unwrap();
        let early = engine.generate(&prompts, &DecodeOptions { early_exit: true, ..opts.clone() }).unwrap();
        for (f, e) in full.rows.iter().zip(&early.rows) {
            assert!(f.tokens.iter().all(|&t| t == 0), "the model only says EOS");
            assert_eq!(e.tokens, f.tokens, "{cache:?}: same answer");
            // every logit ties, so nothing passes 0.9: one token per forward, 32 per block
            assert_eq!(f.nfe, 128, "{cache:?}");
            assert_eq!(e.nfe, 32, "{cache:?}: early exit after the first block");
        }
        assert_eq!(early.forwards, 32);
    }
}

/// A continuous batch (how `dllm serve` runs): rows join at block boundaries and are resumed one
/// block at a time next to rows at other blocks (their current blocks aligned by left padding,
/// shorter rows ending before the canvas). Every row still equals its golden — tokens, NFE and
/// commits — in every mode.
#[test]
fn rows_joining_at_block_boundaries_equal_each_row_alone() {
    for name in ["tiny-gqa", "tiny-mha", "tiny-dream"] {
        let cases = cases(&fixture(name).join("goldens.json"), "nfe");
        let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
        assert!(assert_joining_equals_alone(&engine, &cases, name) >= 6, "{name}");
    }
}
