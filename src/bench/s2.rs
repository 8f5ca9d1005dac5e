//! Workload S2: d3LLM's multi-block decoder on a real model's shape (d3llm spec §5, §6) — prompt
//! 256, gen 256, block 32, blocks added at 10 % and activated at 95 %, without and with the
//! published delayed cache (delay 2, refresh every 3 forwards), batch 1. Random weights have
//! meaningless entropies, so every forward commits its [`S2_COMMITS`] lowest-entropy candidates
//! (d3LLM-LLaDA averages ≈ 9.9 tokens a forward on GSM8K-CoT, its published 545 tok/s anchor);
//! the work is then fixed for any system. Each forward is timed beside its own floor (what it
//! feeds: the whole canvas, or the canvas after the cache).

use serde_json::{json, Value};

use super::{floor_ms, forward_cost, synthetic_prompt, BenchArgs, Ceilings};
use crate::backend::Backend;
use crate::cache::{CacheMode, ForwardKind};
use crate::decode::{DecodeOptions, Decoder, DelayedCache, Engine, MultiBlock, Quiet, Rule, RunOptions};
use crate::error::Result;

/// Tokens each S2 forward commits.
pub const S2_COMMITS: usize = 10;

/// The S2 variants: multi-block without a cache, and with d3LLM's published delayed cache.
pub const S2_VARIANTS: &[(&str, Option<DelayedCache>)] =
    &[("s2-mb", None), ("s2-kv", Some(DelayedCache { delay: 2, refresh: 3 }))];

/// S2's sizes divided by `scale`: prompt 256, gen 256 (whole blocks of 32).
pub fn s2(scale: usize) -> (usize, usize) {
    let scale = scale.max(1);
    ((256 / scale).max(1), (256 / scale).max(32) / 32 * 32)
}

/// Run the named S2 variants; print their table; return their JSON.
pub fn run<B: Backend>(
    engine: &Engine<B>,
    args: &BenchArgs,
    ceil: &Ceilings,
    names: &[&str],
) -> Result<Vec<Value>> {
    let (p, g) = s2(args.workload_scale);
    println!();
    println!(
        "workload S2{}: prompt {p}, gen {g}, block 32, multi-block (add 0.1, activate 0.95), {S2_COMMITS} commits a forward, greedy",
        if args.workload_scale > 1 { format!("/{}", args.workload_scale) } else { String::new() },
    );
    println!();
    println!("| variant | NFE | forwards (kinds) | TPF | wall s | tok/s | forward ms, total (floor, ×) |");
    println!("|---|---|---|---|---|---|---|");
    let run = RunOptions { trace: true, cuda_graphs: args.cuda_graphs, ..RunOptions::default() };
    let prompt = vec![synthetic_prompt(p, engine.config.n_logits, args.seed + 200)];
    let mut out = vec![];
    for &name in names {
        let cache = S2_VARIANTS.iter().find(|v| v.0 == name).map(|v| v.1).unwrap_or(None);
        let mb = MultiBlock {
            add: 0.1,
            activate: 0.95,
            cache,
            early_stop: None,
            max_per_forward: Some(S2_COMMITS),
        };
        let opts = DecodeOptions {
            gen_length: g,
            block_length: 32,
            steps: g,
            cache: CacheMode::None,
            rule: Rule::Entropy(f64::MAX),
            decoder: Decoder::MultiBlock(mb),
            seed: args.seed,
            ..DecodeOptions::default()
        };
        // twice, the second reported: one-time work (GEMM tuning, graph capture) stays out
        engine.generate_with(&prompt, &opts, run, &mut Quiet)?;
        let r = engine.generate_with(&prompt, &opts, run, &mut Quiet)?;
        let elem = engine.backend.stored_size();
        let canvas = p + g;
        // each forward's floor: its fed rows against the whole canvas's keys, logits for the window
        let floor: f64 = r
            .trace
            .iter()
            .map(|t| {
                let (b, f) = forward_cost(&engine.config, elem, 1, t.window.len, canvas, g);
                floor_ms(ceil.bandwidth, ceil.gemm_rate(), b, f)
            })
            .sum();
        let ms: f64 = r.forward_ms.iter().map(|f| f.ms).sum();
        let kinds: String = r.forward_ms.iter().map(|f| f.kind.to_string()).collect();
        let wall = r.elapsed.as_secs_f64();
        let row = &r.rows[0];
        println!(
            "| {name} | {} | {} ({kinds}) | {:.2} | {wall:.3} | {:.1} | {ms:.1} ({floor:.1}, {:.1}×) |",
            row.nfe,
            r.forwards,
            g as f64 / row.nfe.max(1) as f64,
            g as f64 / wall,
            ms / floor
        );
        let per_kind = |k: ForwardKind| {
            let v: Vec<f64> = r.forward_ms.iter().filter(|f| f.kind == k).map(|f| f.ms).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        out.push(json!({
            "name": name, "nfe": row.nfe, "forwards": r.forwards, "kinds": kinds, "generated": g,
            "wall_s": wall, "tok_per_s": g as f64 / wall, "forward_ms": ms, "floor_ms": floor,
            "mean_ms": {"F": per_kind(ForwardKind::Full), "U": per_kind(ForwardKind::Update),
                        "C": per_kind(ForwardKind::Cached), "R": per_kind(ForwardKind::Refresh)},
        }));
    }
    Ok(out)
}
