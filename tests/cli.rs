//! The `dllm` binary: flags, output, and errors (clear message, non-zero exit, no panic).

mod common;
use common::*;

use std::process::{Command, Output};

/// The binary under test; `DLLM_BIN` overrides the build path (staged runs on the GPU machine).
fn dllm(args: &[&str]) -> Output {
    let bin = std::env::var("DLLM_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dllm").to_string());
    Command::new(bin).args(args).output().expect("run dllm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn gpu_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        dllm::backend::cuda::Cuda::new(0, dllm::backend::DType::F32).is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

fn model() -> String {
    fixture("tiny-mha").join("checkpoint").display().to_string()
}

/// The chat prompt of the goldens through the whole CLI path (template, tokenizer, decoder).
#[test]
fn generate_json_matches_the_golden_and_reports_speed() {
    let doc = read_json(&fixture("tiny-mha").join("goldens.json"));
    let case = doc["cases"].as_array().unwrap().iter().find(|c| c["name"] == "p2/dual/thr0.9").unwrap();
    let prompt = doc["prompts"].as_array().unwrap().iter().find(|p| p["id"] == "p2").unwrap();
    assert!(prompt["chat"].as_bool().unwrap());
    let m = model();
    let o = dllm(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        prompt["text"].as_str().unwrap(),
        "--gen-length",
        "96",
        "--cache",
        "dual",
        "--threshold",
        "0.9",
        "--json",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &out["rows"][0];
    assert_eq!(row["prompt_ids"], prompt["ids"]);
    assert_eq!(row["generated_ids"], case["tokens"]);
    assert_eq!(row["nfe"], case["nfe"]);
    assert_eq!(row["commits_per_forward"], case["commits_per_forward"]);
    let err = stderr(&o);
    for want in ["NFE ", "TPF ", "generated 96 tokens", "wall ", "tok/s", "ms/forward", "device: cpu"] {
        assert!(err.contains(want), "stderr lacks {want:?}: {err}");
    }
}

/// `--suffix` (infilling, issue 19): the chat prompt of the infill goldens, the middle and NFE of
/// the NumPy reference with that suffix, the suffix unchanged; a suffix holding the mask refused.
#[test]
fn generate_with_a_suffix_matches_the_infill_golden() {
    let dir = fixture("tiny-gqa");
    let doc = read_json(&dir.join("goldens_infill.json"));
    let case = doc["cases"].as_array().unwrap().iter().find(|c| c["name"] == "p2/prefix/thr0.7").unwrap();
    let prompt = doc["prompts"].as_array().unwrap().iter().find(|p| p["id"] == "p2").unwrap();
    let m = dir.join("checkpoint").display().to_string();
    let args = |suffix: &str| -> Vec<String> {
        let text = prompt["text"].as_str().unwrap();
        ["generate", "--model", &m, "--prompt", text, "--gen-length", "128", "--cache", "prefix"]
            .into_iter()
            .chain(["--threshold", "0.7", "--json", "--device", "cpu", "--suffix", suffix])
            .map(String::from)
            .collect()
    };
    let a = args(prompt["suffix_text"].as_str().unwrap());
    let o = dllm(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &out["rows"][0];
    assert_eq!(row["prompt_ids"], prompt["ids"]);
    assert_eq!(row["suffix_ids"], case["suffix"]);
    assert_eq!(row["generated_ids"], case["tokens"]);
    assert_eq!(row["nfe"], case["nfe"]);
    let a = args("a <|mdm_mask|>");
    let o = dllm(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--suffix") && stderr(&o).contains("mask token"), "{}", stderr(&o));
}

#[test]
fn generate_prints_the_answer_cut_at_the_first_end_token() {
    let m = model();
    let o = dllm(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "Hello world",
        "--no-chat",
        "--gen-length",
        "96",
        "--json",
    ]);
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<u64> =
        out["rows"][0]["generated_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    let text = out["rows"][0]["text"].as_str().unwrap().to_string();
    let o = dllm(&["generate", "--model", &m, "--prompt", "Hello world", "--no-chat", "--gen-length", "96"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'), text);
    // the stop ids of tiny-mha: EOS 257 and <|eot_id|> 283; the text holds only what precedes them
    let cut = ids.iter().position(|&t| t == 257 || t == 283).unwrap_or(ids.len());
    let bytes: Vec<u8> = ids[..cut].iter().filter(|&&t| t < 256).map(|&t| t as u8).collect();
    assert!(cut < ids.len(), "this prompt's answer contains an end token");
    assert_eq!(text, String::from_utf8_lossy(&bytes));
}

#[test]
fn trace_and_batch_flags() {
    let m = model();
    let o = dllm(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "a",
        "--prompt",
        "bcdef",
        "--gen-length",
        "64",
        "--cache",
        "prefix",
        "--factor",
        "1.0",
        "--trace",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["rows"].as_array().unwrap().len(), 2);
    let trace = out["trace"].as_array().unwrap();
    assert_eq!(trace.len() as u64, out["forwards"].as_u64().unwrap());
    let committed: usize = trace.iter().map(|t| t["committed"][0].as_array().unwrap().len()).sum();
    assert_eq!(committed, 64, "the trace accounts for every generated token of row 0");
    assert!(stderr(&o).contains("forward   0 block 0 F"));
}

fn assert_usage_error(args: &[&str], mention: &str) {
    let o = dllm(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    assert!(stderr(&o).contains(mention), "{args:?}: stderr lacks {mention:?}: {}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}

fn assert_run_error(args: &[&str], mention: &str) {
    let o = dllm(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    assert!(stderr(&o).contains(mention), "{args:?}: stderr lacks {mention:?}: {}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn bad_flags_are_usage_errors_naming_the_flag() {
    let m = model();
    assert_usage_error(&["generate", "--model", &m], "--prompt");
    assert_usage_error(&["generate", "--model", &m, "--prompt", "x", "--cache", "triple"], "--cache");
    assert_usage_error(
        &["generate", "--model", &m, "--prompt", "x", "--threshold", "0.9", "--factor", "1"],
        "cannot be used with",
    );
    assert_usage_error(
        &["generate", "--model", &m, "--prompt", "x", "--quota", "--factor", "1"],
        "cannot be used with",
    );
    assert_usage_error(&["generate", "--model", &m, "--prompt", "x", "--gen-length=-5"], "--gen-length");
    assert_usage_error(&["generate", "--model", &m, "--prompt", "x", "--threshold", "high"], "--threshold");
    assert_usage_error(&["generate", "--model", &m, "--prompt", "x", "--bogus"], "--bogus");
    assert_usage_error(&["generate", "--model", &m, "--prompt", "x", "--device", "tpu"], "--device");
    assert_usage_error(&["frobnicate"], "frobnicate");
}

#[test]
fn impossible_runs_exit_1_naming_the_problem() {
    let m = model();
    let base = ["generate", "--model", m.as_str(), "--prompt", "x"];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    assert_run_error(&with(&["--threshold", "1.5"]), "threshold 1.5 is outside (0, 1]");
    assert_run_error(&with(&["--factor", "0"]), "factor 0");
    assert_run_error(&with(&["--gen-length", "100"]), "gen_length 100 is not a multiple of block_length 32");
    assert_run_error(&with(&["--steps", "7", "--quota"]), "steps 7");
    assert_run_error(&with(&["--gen-length", "512"]), "max_sequence_length 512");
    if !gpu_available() {
        // without a usable GPU (or without the `cuda` feature) --device cuda says why
        let o = dllm(&with(&["--device", "cuda"]));
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("error: device:") && !e.contains("panicked"), "{e}");
        // and auto falls back to the CPU, saying so
        let o = dllm(&with(&["--device", "auto", "--gen-length", "32"]));
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("device: cpu"), "{}", stderr(&o));
    }
    assert_run_error(&with(&["--threads", "0"]), "--threads");
    assert_run_error(&["generate", "--model", "/nonexistent/model", "--prompt", "x"], "/nonexistent/model");
}

/// `dllm bench --synthetic` scaled down on the CPU: the S1 table with its floors, a profile, and
/// the JSON; the quota rule makes NFE = steps exactly, on every system.
#[test]
fn bench_synthetic_runs_scaled_down_with_floors() {
    let json = std::env::temp_dir().join(format!("dllm-bench-{}.json", std::process::id()));
    let j = json.display().to_string();
    let o = dllm(&[
        "bench",
        "--synthetic",
        "tiny",
        "--device",
        "cpu",
        "--scale",
        "4",
        "--workload-scale",
        "8",
        "--variants",
        "s1-base,s1-prefix,s1-dual,s1-dual-b4",
        "--profile",
        "--json",
        &j,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "ceilings (measured now): copy",
        "GB/s",
        "TFLOP/s",
        "workload S1/8: prompt 64, gen 32",
        "| s1-dual-b4 | 4 |",
        "profile of s1-dual",
        "| linear gate|up |",
        "| attention |",
    ] {
        assert!(out.contains(want), "bench output lacks {want:?}:\n{out}");
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let variants = v["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 4);
    for r in variants {
        assert_eq!(r["nfe"], v["workload"]["steps"], "{}", r["name"]);
        assert!(r["wall_s"].as_f64().unwrap() > 0.0);
        assert!(r["block_start_floor_ms"].as_f64().unwrap() > 0.0);
        assert!(r["block_start_ms"].as_f64().unwrap() >= r["block_start_floor_ms"].as_f64().unwrap() * 0.5);
        assert!(!r["profile"].as_array().unwrap().is_empty());
    }
    assert!(v["ceilings"]["copy_bytes_per_s"].as_f64().unwrap() > 1e8);
    let _ = std::fs::remove_file(&json);
    assert_run_error(&["bench", "--synthetic", "gpt-9", "--device", "cpu"], "unknown preset `gpt-9`");
    assert_run_error(&["bench", "--synthetic", "tiny", "--device", "cpu", "--scale", "3"], "--scale 3");
    assert_run_error(
        &["bench", "--synthetic", "tiny", "--device", "cpu", "--variants", "s2"],
        "unknown variant `s2`",
    );
    assert_usage_error(&["bench", "--device", "cpu"], "--synthetic");
}

/// A broken checkpoint (NaN weights) exits 1 naming the non-finite logits; no garbage text.
#[test]
fn non_finite_logits_exit_1() {
    let dir = nan_checkpoint("nan-cli");
    let m = dir.display().to_string();
    let o = dllm(&["generate", "--model", &m, "--prompt", "Hi", "--gen-length", "32", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("non-finite logits"), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "no answer is printed: {:?}", String::from_utf8_lossy(&o.stdout));
}

/// `--max-tokens` cuts the answer; the canvas (--gen-length) decodes the same tokens; without
/// --seed a sampling run draws a seed and says which, and that seed reproduces it.
#[test]
fn max_tokens_cuts_and_seeds_are_reported() {
    let m = model();
    let run = |extra: &[&str]| {
        let args = [
            &["generate", "--model", m.as_str(), "--prompt", "Hello world", "--gen-length", "64", "--json"],
            extra,
        ]
        .concat();
        let o = dllm(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        (serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(), stderr(&o))
    };
    let (full, _) = run(&[]);
    let (cut, _) = run(&["--max-tokens", "3"]);
    assert_eq!(full["rows"][0]["generated_ids"], cut["rows"][0]["generated_ids"]);
    assert_eq!(cut["rows"][0]["answer_tokens"], 3);
    assert_eq!(cut["rows"][0]["finish_reason"], "length");
    let text = full["rows"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(cut["rows"][0]["text"].as_str().unwrap()), "{text}");
    let (a, err) = run(&["--temperature", "1.0"]);
    let seed = a["options"]["seed"].as_u64().unwrap();
    assert!(err.contains(&format!("--seed {seed} reproduces")), "{err}");
    let (b, _) = run(&["--temperature", "1.0"]);
    assert_ne!(b["options"]["seed"], a["options"]["seed"], "a fresh seed per run");
    let (c, _) = run(&["--temperature", "1.0", "--seed", &seed.to_string()]);
    assert_eq!(c["rows"][0]["generated_ids"], a["rows"][0]["generated_ids"]);
    assert_usage_error(&["generate", "--model", &m, "--prompt", "x", "--max-tokens", "0"], "--max-tokens");
    assert_run_error(&["generate", "--model", &m, "--prompt", "x", "--steps", "64"], "--steps has no effect");
}
