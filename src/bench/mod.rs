//! `dllm bench --synthetic PRESET`: the S1 workload on seeded random weights of a real model's
//! shape, every number beside its floor.
//!
//! - Ceilings are measured once per run on the backend itself: a large device copy (bandwidth)
//!   and a large GEMM (FLOP rate).
//! - Floors: a forward must read every weight once (bytes ÷ bandwidth) and do its FLOPs
//!   (FLOPs ÷ GEMM rate); the floor is the larger. In-block steps are weight-bound, block-start
//!   forwards compute-bound (docs/perf.md).
//! - Workload S1 (fixed so any system can run the same work): prompt 512, gen 256, block 32,
//!   steps 80 with the quota rule (no threshold: every system does the same NFE), batch 1;
//!   variants base / prefix / dual, and dual at batch 4 and 16. `--workload-scale N` divides
//!   prompt, gen and steps by N (the CPU default), `--scale N` the model's width, depth and
//!   vocabulary.

pub mod ceilings;
pub mod presets;
pub mod s2;

use std::time::Instant;

use serde_json::{json, Value};

pub use ceilings::{measure_ceilings, Ceilings};
pub use presets::{preset, s1, synthetic_prompt, synthetic_special, Variant, PRESETS, VARIANTS};

use crate::backend::{Backend, GraphUse};
use crate::cache::CacheMode;
use crate::decode::{DecodeOptions, Engine, Output, Quiet, Rule, RunOptions};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::quant::Fp8Scheme;
use crate::model::{ModelConfig, SpecialIds};
use crate::profile::{floor_ms, forward_cost, OpStat};
use crate::transformer::{WeightFormat, Weights};

pub struct BenchArgs {
    pub preset: String,
    pub scale: usize,
    pub workload_scale: usize,
    pub variants: Vec<String>,
    pub profile: bool,
    pub cuda_graphs: bool,
    pub seed: u64,
    /// The linears' format: FP8 quantizes the synthetic weights on the device (issue 17).
    pub weights: WeightFormat,
}

/// S1's sizes of a run: prompt, gen, steps.
type Workload = (usize, usize, usize);

/// Run the bench on `be`; print the table; return everything as JSON.
pub fn run<B: Backend>(be: B, args: &BenchArgs, big: bool) -> Result<Value> {
    let mut cfg = preset(&args.preset, args.scale)?;
    if args.weights == WeightFormat::Fp8 {
        cfg.quantization = Some(Fp8Scheme { ignore: vec![] });
    }
    let work = s1(args.workload_scale);
    let t0 = Instant::now();
    let weights = Weights::synthetic(&be, &cfg, args.seed)?;
    be.synchronize()?;
    let load_s = t0.elapsed().as_secs_f64();
    let ceil = measure_ceilings(&be, big, cfg.quantization.is_some())?;
    let dtype = be.dtype();
    let engine = Engine::from_parts(be, cfg.clone(), synthetic_special(&cfg), weights);
    let s1_runs = args.variants.iter().any(|n| VARIANTS.iter().any(|v| v.name == n));
    print_header(args, &cfg, dtype, &engine.backend.name(), &ceil, load_s, s1_runs.then_some(work));
    let run = RunOptions { cuda_graphs: args.cuda_graphs, profile: args.profile, ..RunOptions::default() };
    // One quiet run first: one-time costs (module loading, GEMM heuristics) stay out of the table.
    let warm = DecodeOptions {
        gen_length: 32,
        block_length: 32,
        steps: 8,
        cache: CacheMode::Dual,
        rule: Rule::Quota,
        ..DecodeOptions::default()
    };
    let quiet = RunOptions { profile: false, ..run };
    engine.generate_with(&[synthetic_prompt(work.0, cfg.n_logits, args.seed)], &warm, quiet, &mut Quiet)?;
    let mut results = vec![];
    let mut s2_names = vec![];
    for name in &args.variants {
        if let Some(v) = VARIANTS.iter().find(|v| v.name == name) {
            results.push(run_variant(&engine, args, v, &ceil, work, run)?);
        } else if let Some(v) = s2::S2_VARIANTS.iter().find(|v| v.0 == name) {
            s2_names.push(v.0);
        } else {
            let all: Vec<&str> =
                VARIANTS.iter().map(|v| v.name).chain(s2::S2_VARIANTS.iter().map(|v| v.0)).collect();
            return Err(Error::options(format!("unknown variant `{name}` (variants: {})", all.join(", "))));
        }
    }
    let s2 = if s2_names.is_empty() { vec![] } else { s2::run(&engine, args, &ceil, &s2_names)? };
    if args.profile {
        for r in &results {
            print_profile(r, &ceil);
        }
    }
    print_tuning(&engine.backend);
    let mut json = to_json(args, &cfg, dtype, engine.backend.name(), &ceil, work, &results);
    if !s2.is_empty() {
        json["s2"] = Value::Array(s2);
    }
    Ok(json)
}

/// What runs, the measured ceilings, then (when S1 variants run) its workload and columns.
fn print_header(
    args: &BenchArgs,
    cfg: &ModelConfig,
    dtype: DType,
    device: &str,
    ceil: &Ceilings,
    load_s: f64,
    s1: Option<Workload>,
) {
    let (wbytes, _) = forward_cost(cfg, dtype.size(), 1, 0, 0, 0);
    println!(
        "dllm bench: synthetic {} (scale 1/{}: d {}, {} layers, {} heads × {}, mlp {}, vocab {}), {:.1} MB of {} weights, on {device}",
        args.preset,
        args.scale,
        cfg.d_model,
        cfg.n_layers,
        cfg.n_heads,
        cfg.head_dim,
        cfg.mlp_hidden,
        cfg.n_logits,
        wbytes / 1e6,
        if cfg.quantization.is_some() { format!("FP8 e4m3 (activations {})", dtype.name()) } else { dtype.name().to_string() },
    );
    let fp8 = ceil.gemm_fp8.map_or(String::new(), |r| format!(", FP8 GEMM {:.2} TFLOP/s", r / 1e12));
    println!(
        "ceilings (measured now): copy {:.1} GB/s ({} MiB), GEMM {:.2} TFLOP/s ({}×{}×{}){fp8}; weights generated in {:.2} s",
        ceil.bandwidth / 1e9,
        ceil.copy_bytes >> 20,
        ceil.gemm / 1e12,
        ceil.gemm_mnk.0,
        ceil.gemm_mnk.1,
        ceil.gemm_mnk.2,
        load_s
    );
    let Some((p, g, steps)) = s1 else { return };
    println!(
        "workload S1{}: prompt {p}, gen {g}, block 32, steps {steps} (quota, {:.1} tokens per step), greedy{}",
        if args.workload_scale > 1 { format!("/{}", args.workload_scale) } else { String::new() },
        g as f64 / steps as f64,
        if args.cuda_graphs { "" } else { ", CUDA graphs off" }
    );
    println!();
    println!("| variant | batch | NFE | wall s | tok/s (all G) | strict tok/s | block-start ms (floor, ×) | in-block ms (floor, ×) |");
    println!("|---|---|---|---|---|---|---|---|");
}

/// One variant: run twice, report the second run (one-time work of new shapes, GEMM algorithm
/// tuning and CUDA graph capture, stays out of the table, as in a server); print its row.
fn run_variant<B: Backend>(
    engine: &Engine<B>,
    args: &BenchArgs,
    v: &Variant,
    ceil: &Ceilings,
    (p, g, steps): Workload,
    run: RunOptions,
) -> Result<VariantResult> {
    let vocab = engine.config.n_logits;
    let prompts: Vec<Vec<u32>> =
        (0..v.batch).map(|b| synthetic_prompt(p, vocab, args.seed + 100 + b as u64)).collect();
    let opts = DecodeOptions {
        gen_length: g,
        block_length: 32,
        steps,
        cache: v.cache,
        rule: Rule::Quota,
        temperature: 0.0,
        seed: args.seed,
        ..DecodeOptions::default()
    };
    engine.generate_with(&prompts, &opts, run, &mut Quiet)?;
    let out = engine.generate_with(&prompts, &opts, run, &mut Quiet)?;
    let elem = engine.backend.stored_size();
    let r = summarize(&engine.config, elem, ceil, v, p, g, &out, &engine.special);
    println!(
        "| {} | {} | {} | {:.3} | {:.1} | {:.1} | {} | {} |",
        r.name,
        r.batch,
        r.nfe,
        r.wall_s,
        r.generated as f64 / r.wall_s,
        r.strict as f64 / r.wall_s,
        cell(r.block_start_ms, r.block_start_floor_ms),
        cell(r.in_block_ms, r.in_block_floor_ms),
    );
    Ok(r)
}

/// The backend's one-time tuning decisions (the CUDA backend's GEMM algorithms).
fn print_tuning<B: Backend>(be: &B) {
    let tuned = be.tuning_report();
    if !tuned.is_empty() {
        println!();
        println!("GEMM algorithms, timed once per shape (rows × n × k):");
        for t in tuned {
            println!("  {t}");
        }
    }
}

/// One variant's measurements.
#[derive(Clone, Debug)]
pub struct VariantResult {
    pub name: &'static str,
    pub batch: usize,
    pub wall_s: f64,
    pub nfe: usize,
    pub generated: usize,
    pub strict: usize,
    pub block_start_ms: Option<f64>,
    pub in_block_ms: Option<f64>,
    pub block_start_floor_ms: f64,
    pub in_block_floor_ms: f64,
    pub profile: Vec<(&'static str, OpStat)>,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, s) = v.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| s / n as f64)
}

fn cell(ms: Option<f64>, floor: f64) -> String {
    match ms {
        Some(ms) => format!("{ms:.2} ({floor:.2}, {:.1}×)", ms / floor),
        None => format!("— ({floor:.2})"),
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    cfg: &ModelConfig,
    elem: usize,
    ceil: &Ceilings,
    v: &Variant,
    p: usize,
    g: usize,
    out: &Output,
    special: &SpecialIds,
) -> VariantResult {
    let canvas = p + g;
    let (fb, ff) = forward_cost(cfg, elem, v.batch, canvas, canvas, 32);
    // an in-block step's window: the block (dual) or the block and the rest (prefix; its mean
    // over the blocks is about half the generated part)
    let win = match v.cache {
        CacheMode::Dual => 32,
        CacheMode::Prefix => g / 2 + 16,
        CacheMode::None => canvas,
    };
    let (ib, iff) = forward_cost(cfg, elem, v.batch, win, canvas, 32);
    let strict: usize = out.rows.iter().map(|r| special.strict_len(&r.tokens)).sum();
    VariantResult {
        name: v.name,
        batch: v.batch,
        wall_s: out.elapsed.as_secs_f64(),
        nfe: out.forwards,
        generated: out.rows.iter().map(|r| r.tokens.len()).sum(),
        strict,
        // a step that captured a CUDA graph carries the capture's one-time cost: left out
        block_start_ms: mean(
            out.forward_ms.iter().filter(|f| f.block_start && f.graph != GraphUse::Captured).map(|f| f.ms),
        ),
        in_block_ms: mean(
            out.forward_ms.iter().filter(|f| !f.block_start && f.graph != GraphUse::Captured).map(|f| f.ms),
        ),
        block_start_floor_ms: floor_ms(ceil.bandwidth, ceil.gemm_rate(), fb, ff),
        in_block_floor_ms: floor_ms(ceil.bandwidth, ceil.gemm_rate(), ib, iff),
        profile: out.profile.clone(),
    }
}

fn print_profile(r: &VariantResult, ceil: &Ceilings) {
    let total: f64 = r.profile.iter().map(|(_, s)| s.ms).sum();
    println!();
    println!("profile of {} (all forwards, eager; time between device marks around each op, so small ops include launch gaps):", r.name);
    println!("| op | calls | total ms | % | GB/s | TFLOP/s | floor ms | × floor |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, s) in &r.profile {
        let floor = floor_ms(ceil.bandwidth, ceil.gemm_rate(), s.bytes, s.flops);
        let (gbs, tfs) = (s.bytes / (s.ms * 1e-3) / 1e9, s.flops / (s.ms * 1e-3) / 1e12);
        let vs_floor =
            if floor > 0.0 { format!("{:.2} | {:.1}", floor, s.ms / floor) } else { "— | —".into() };
        println!(
            "| {name} | {} | {:.2} | {:.1} | {gbs:.1} | {tfs:.3} | {vs_floor} |",
            s.calls,
            s.ms,
            100.0 * s.ms / total.max(1e-9)
        );
    }
}

fn to_json(
    args: &BenchArgs,
    cfg: &ModelConfig,
    dtype: DType,
    device: String,
    ceil: &Ceilings,
    (p, g, steps): (usize, usize, usize),
    results: &[VariantResult],
) -> Value {
    json!({
        "preset": args.preset, "scale": args.scale, "device": device, "dtype": dtype.name(),
        "model": {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                  "head_dim": cfg.head_dim, "mlp": cfg.mlp_hidden, "vocab": cfg.n_logits},
        "weights": if cfg.quantization.is_some() { "fp8" } else { "checkpoint" },
        "ceilings": {"copy_bytes_per_s": ceil.bandwidth, "gemm_flop_per_s": ceil.gemm, "gemm_fp8_flop_per_s": ceil.gemm_fp8,
                     "copy_bytes": ceil.copy_bytes, "gemm_mnk": [ceil.gemm_mnk.0, ceil.gemm_mnk.1, ceil.gemm_mnk.2]},
        "workload": {"prompt": p, "gen": g, "block": 32, "steps": steps, "rule": "quota",
                     "cuda_graphs": args.cuda_graphs},
        "variants": results.iter().map(|r| json!({
            "name": r.name, "batch": r.batch, "nfe": r.nfe, "wall_s": r.wall_s,
            "generated": r.generated, "strict_tokens": r.strict,
            "tok_per_s": r.generated as f64 / r.wall_s, "strict_tok_per_s": r.strict as f64 / r.wall_s,
            "block_start_ms": r.block_start_ms, "block_start_floor_ms": r.block_start_floor_ms,
            "in_block_ms": r.in_block_ms, "in_block_floor_ms": r.in_block_floor_ms,
            "profile": r.profile.iter().map(|(n, s)| json!({"op": n, "calls": s.calls, "ms": s.ms,
                "bytes": s.bytes, "flops": s.flops})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
