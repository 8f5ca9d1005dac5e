//! The CUDA backend against its CPU twin. Each kernel: random inputs of awkward sizes (rows not a
//! multiple of 32, batch 3 with padded rows, GQA), outputs poisoned with NaN before the launch,
//! compared by relative error (f32 ≤ 1e-5, bf16 ≤ 1e-2; tokens and selections exactly). End to
//! end: the f32 fixtures decode token for token as on the CPU (= the goldens), in every mode.
//!
//! Without a GPU every test prints why and passes; with `DLLM_REQUIRE_GPU=1` it fails instead.
#![cfg(feature = "cuda")]

mod common;
use common::*;

use dllm::backend::cpu::Cpu;
use dllm::backend::cuda::Cuda;
use dllm::backend::{Backend, DType, Heads, Sampling, Score, Select, SelectRule, Step, Window, NON_FINITE};
use dllm::decode::Engine;
use dllm::model::ModelFiles;

fn gpu(dtype: DType) -> Option<Cuda> {
    match Cuda::new(0, dtype) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("DLLM_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("DLLM_REQUIRE_GPU=1 but the CUDA backend is unavailable: {e}");
            }
            eprintln!("skipping: no usable GPU ({e})");
            None
        }
    }
}

const POISON: f32 = f32::NAN;
/// The mask id of the op tests: the clear winner of logits row 4, so never drawn.
const MASK_ID: u32 = 31;

/// Everything one pass of the ops produces, in host memory.
#[derive(Default)]
struct Outs {
    named: Vec<(&'static str, Vec<f32>)>,
    tokens: Vec<u32>,
    conf: Vec<f64>,
    canvas: Vec<u32>,
    counts: Vec<u32>,
}

/// Run every op once on `be` with the same host inputs; return the host copies of the outputs.
/// `dream`: Dream's variants of the same ops (q/k/v bias, shifted gather, bf16 probabilities on a
/// bf16 backend, the entropy score under the quota rule).
fn run_ops<B: Backend>(be: &B, temperature: f64, rule: SelectRule, dream: bool) -> Outs {
    let mut o = Outs::default();
    let t = |data: Vec<f32>, rows: usize, cols: usize| be.tensor_from_host(&data, rows, cols).unwrap();
    let poison =
        |rows: usize, cols: usize| be.tensor_from_host(&vec![POISON; rows * cols], rows, cols).unwrap();

    // rmsnorm, linear, swiglu, add on 37 rows
    let (rows, d, n) = (37usize, 72usize, 53usize);
    let x = t(rand_uniform(rows * d, 1, 2.0), rows, d);
    let w = t(rand_uniform(d, 2, 1.0).iter().map(|v| 1.0 + v * 0.2).collect(), 1, d);
    let mut y = poison(rows, d);
    be.rmsnorm(&x, &w, 1e-5, rows, &mut y).unwrap();
    o.named.push(("rmsnorm", be.to_host(&y, rows).unwrap()));
    let wl = t(rand_uniform(n * d, 3, 0.3), n, d);
    let mut z = poison(rows, n);
    be.linear(&x, &wl, rows, &mut z).unwrap();
    o.named.push(("linear", be.to_host(&z, rows).unwrap()));
    let gu = t(rand_uniform(rows * 2 * n, 4, 3.0), rows, 2 * n);
    let mut s = poison(rows, n);
    be.swiglu(&gu, rows, &mut s).unwrap();
    o.named.push(("swiglu", be.to_host(&s, rows).unwrap()));
    let mut h = t(rand_uniform(rows * d, 5, 1.0), rows, d);
    be.add(&mut h, &x, rows).unwrap();
    o.named.push(("add", be.to_host(&h, rows).unwrap()));
    // the fused residual add + norm: both its outputs
    let mut y2 = poison(rows, d);
    be.add_rmsnorm(&mut h, &x, &w, 1e-5, rows, &mut y2).unwrap();
    o.named.push(("add_rmsnorm h", be.to_host(&h, rows).unwrap()));
    o.named.push(("add_rmsnorm out", be.to_host(&y2, rows).unwrap()));

    // embed, rope + cache write, attention, gather: batch 3, canvas 45, window [7, 45), pads 0/5/11
    // (row 1 ending at 40),
    // GQA 6 query heads over 2 KV heads, head_dim 24
    let heads = Heads { n_heads: 6, n_kv_heads: 2, head_dim: 24 };
    let (batch, canvas) = (3usize, 45usize);
    let step = Step { batch, canvas, win: Window { start: 7, len: 38 } };
    // left pads, then row ends: row 1 ends 5 columns before the canvas (a continuous batch)
    let pads_host = vec![0u32, 5, 11, 45, 40, 45];
    let mut pads = be.ids(2 * batch).unwrap();
    be.write_ids(&mut pads, &pads_host).unwrap();
    let vocab = 300usize;
    let canvas_host: Vec<u32> = (0..batch * canvas).map(|i| ((i * 37 + 11) % vocab) as u32).collect();
    let mut ids = be.ids(batch * canvas).unwrap();
    be.write_ids(&mut ids, &canvas_host).unwrap();
    let table = t(rand_uniform(vocab * 40, 6, 1.0), vocab, 40);
    let mut e = poison(step.rows(), 40);
    be.embed(&table, &ids, step, &mut e).unwrap();
    o.named.push(("embed", be.to_host(&e, step.rows()).unwrap()));

    let hd = heads.head_dim;
    let (mut cos, mut sin) = (vec![], vec![]);
    for p in 0..64 {
        for _ in 0..2 {
            for i in 0..hd / 2 {
                let a = p as f32 / 10000f32.powf((2 * i) as f32 / hd as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let cos = be.upload_f32(&cos, 64, hd).unwrap();
    let sin = be.upload_f32(&sin, 64, hd).unwrap();
    let cols = heads.q_dim() + 2 * heads.kv_dim();
    let mut qkv = t(rand_uniform(step.rows() * cols, 7, 2.0), step.rows(), cols);
    if dream {
        let bias = t(rand_uniform(cols, 12, 1.0), 1, cols);
        be.add_bias(&mut qkv, &bias, step.rows()).unwrap();
        o.named.push(("q|k|v bias", be.to_host(&qkv, step.rows()).unwrap()));
    }
    // the cache rows outside the window hold earlier (stale) keys: PrefixCache / DualCache
    let mut kc = t(rand_uniform(batch * canvas * heads.kv_dim(), 8, 2.0), batch * canvas, heads.kv_dim());
    let mut vc = t(rand_uniform(batch * canvas * heads.kv_dim(), 9, 2.0), batch * canvas, heads.kv_dim());
    be.rope_store_kv(&mut qkv, &cos, &sin, &pads, step, heads, &mut kc, &mut vc).unwrap();
    o.named.push(("rope q|k|v", be.to_host(&qkv, step.rows()).unwrap()));
    o.named.push(("k cache", be.to_host(&kc, batch * canvas).unwrap()));
    o.named.push(("v cache", be.to_host(&vc, batch * canvas).unwrap()));
    let mut att = poison(step.rows(), heads.q_dim());
    be.attention(&qkv, &kc, &vc, &pads, step, heads, &mut att).unwrap();
    o.named.push(("attention", be.to_host(&att, step.rows()).unwrap()));
    let block = Window { start: 13, len: 27 };
    let mut g = poison(batch * block.len, heads.q_dim());
    be.gather_block(&att, step, block, dream, &mut g).unwrap();
    o.named.push(("gather", be.to_host(&g, batch * block.len).unwrap()));
    // a block at the window's start: with Dream's shift its first row reads itself
    let first = Window { start: step.win.start, len: 9 };
    let mut g0 = poison(batch * first.len, heads.q_dim());
    be.gather_block(&att, step, first, dream, &mut g0).unwrap();
    o.named.push(("gather at window start", be.to_host(&g0, batch * first.len).unwrap()));

    // argmax + confidence over logits with clear winners, then selection into the canvas
    let lrows = batch * block.len;
    let mut logits = rand_uniform(lrows * vocab, 10, 4.0);
    for r in 0..lrows {
        // a distinct winner per row, clear of the runner-up; row 4's winner is the mask id
        let win = (r * 7 + 3) % vocab;
        logits[r * vocab + win] = 9.0 + (r as f32) * 0.37;
    }
    // row 5: all NaN (a broken model): both backends draw the lowest non-mask id with a NaN
    // score; row 6: one -inf logit among finite ones, also a NaN score. Selection commits nothing
    // of batch row 0 (rows 0..27) and reports it as non-finite.
    for v in 0..vocab {
        logits[5 * vocab + v] = f32::NAN;
    }
    logits[6 * vocab + 1] = f32::NEG_INFINITY;
    let mask_id = MASK_ID;
    assert_eq!((4 * 7 + 3) % vocab, MASK_ID as usize, "row 4's winner is the mask id");
    let logits = t(logits, lrows, vocab);
    let mut cands = be.cands(lrows).unwrap();
    let seeds = vec![11u64, 12, 13];
    let counters = vec![3u64, 0, 7];
    let sampling = Sampling {
        temperature,
        seeds: &seeds,
        counters: &counters,
        mask_id,
        score: if dream && rule == SelectRule::Quota { Score::NegEntropy } else { Score::Confidence },
        bf16_probs: dream && be.dtype() == DType::Bf16,
    };
    be.argmax_confidence(&logits, &pads, block, batch, sampling, &mut cands).unwrap();
    let (tokens, conf) = be.read_cands(&cands, lrows).unwrap();
    o.tokens = tokens;
    o.conf = conf;
    let mut canvas_ids = be.ids(batch * canvas).unwrap();
    let mut c0: Vec<u32> = vec![7; batch * canvas];
    for b in 0..batch {
        for i in 0..block.len {
            if i % 5 != 2 {
                c0[b * canvas + block.start + i] = mask_id;
            }
        }
    }
    be.write_ids(&mut canvas_ids, &c0).unwrap();
    let sel = Select { rule, active: &[true, false, true], quota: &[4, 4, 30], mask_id, block };
    o.counts = be.select(&mut cands, &mut canvas_ids, canvas, sel).unwrap();
    o.canvas = vec![0; batch * canvas];
    be.read_ids(&canvas_ids, &mut o.canvas).unwrap();
    o
}

fn compare(dtype: DType, temperature: f64, rule: SelectRule) {
    compare_ops(dtype, temperature, rule, false)
}

fn compare_ops(dtype: DType, temperature: f64, rule: SelectRule, dream: bool) {
    let Some(g) = gpu(dtype) else { return };
    let cpu = Cpu::new(dtype, None);
    let a = run_ops(&g, temperature, rule, dream);
    let b = run_ops(&cpu, temperature, rule, dream);
    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
    for ((name, x), (_, y)) in a.named.iter().zip(&b.named) {
        assert!(x.iter().all(|v| !v.is_nan()), "{name} ({dtype:?}): poisoned output left unwritten");
        let e = rel_err(x, y);
        eprintln!("{name:12} {dtype:?}: relative error {e:.2e}");
        assert!(e <= tol, "{name} ({dtype:?}): relative error {e:.3e} > {tol:e}");
    }
    // With clear winners the drawn tokens are exact; with Gumbel noise they may differ only where
    // the device's f64 log differs from the host's in the last bit.
    let same = a.tokens.iter().zip(&b.tokens).filter(|(x, y)| x == y).count();
    if temperature == 0.0 {
        assert_eq!(a.tokens, b.tokens, "argmax ({dtype:?})");
        assert!(!a.tokens.contains(&MASK_ID), "the mask id is never drawn");
    } else {
        assert!(same * 100 >= a.tokens.len() * 95, "sampled tokens: only {same} of {} agree", a.tokens.len());
    }
    // bf16-rounded scores (Dream) may land one bf16 step apart where the sums differ in the last bit;
    // an f64 entropy near 0 is a sum of cancelling terms whose order differs (device vs host),
    // so it gets an absolute slack far below any gap that could reorder a selection
    let rtol = if dream && dtype == DType::Bf16 { 8e-3 } else { 1e-9 };
    let atol = if dream { 1e-12 } else { 1e-15 };
    for (x, y) in a.conf.iter().zip(&b.conf) {
        let same = (x.is_nan() && y.is_nan()) || (x - y).abs() <= rtol * y.abs().max(1e-300) + atol;
        assert!(same, "confidence {x} vs {y}");
    }
    assert!(a.conf[5].is_nan() && a.tokens[5] == 0, "an all-NaN row draws id 0 with a NaN confidence");
    assert!(a.conf[6].is_nan(), "a row with an infinite logit gets a NaN score");
    assert!(a.conf[7].is_finite(), "a finite row keeps its score");
    assert_eq!(a.counts[0], NON_FINITE, "a row with non-finite candidates is reported, not committed");
    if temperature == 0.0 {
        assert_eq!(a.counts, b.counts, "select counts ({dtype:?}, {rule:?})");
        assert_eq!(a.canvas, b.canvas, "select canvas ({dtype:?}, {rule:?})");
        assert_eq!(a.counts[1], 0, "an inactive row is not touched");
    }
}

#[test]
fn kernels_match_cpu_twins_f32() {
    for rule in [SelectRule::Quota, SelectRule::Threshold(0.5), SelectRule::Factor(1.0)] {
        compare(DType::F32, 0.0, rule);
    }
    compare(DType::F32, 1.0, SelectRule::Threshold(0.9));
}

/// Dream's op variants (spec §3): bias add, shifted gather, entropy scores, bf16 probabilities,
/// the block-start "first" rule and the budgeted threshold.
#[test]
fn dream_kernels_match_cpu_twins() {
    for dtype in [DType::F32, DType::Bf16] {
        for rule in [
            SelectRule::Quota,
            SelectRule::Threshold(0.5),
            SelectRule::First,
            SelectRule::CappedThreshold(0.5),
        ] {
            compare_ops(dtype, 0.0, rule, true);
        }
    }
}

#[test]
fn kernels_match_cpu_twins_bf16() {
    for rule in [SelectRule::Quota, SelectRule::Threshold(0.5), SelectRule::Factor(1.0)] {
        compare(DType::Bf16, 0.0, rule);
    }
    compare(DType::Bf16, 0.7, SelectRule::Threshold(0.9));
}

/// One attention op on `be` from host q|k|v rows, K/V caches and pads; the output is poisoned
/// before the launch.
fn attention_on<B: Backend>(
    be: &B,
    host: (&[f32], &[f32], &[f32], &[u32]),
    step: Step,
    heads: Heads,
) -> Vec<f32> {
    let (qkv_h, kc_h, vc_h, pads_host) = host;
    let t = |d: &[f32], r, c| be.tensor_from_host(d, r, c).unwrap();
    let mut pads = be.ids(pads_host.len()).unwrap();
    be.write_ids(&mut pads, pads_host).unwrap();
    let cache_rows = step.batch * step.canvas;
    let qkv = t(qkv_h, step.rows(), heads.q_dim() + 2 * heads.kv_dim());
    let (kc, vc) = (t(kc_h, cache_rows, heads.kv_dim()), t(vc_h, cache_rows, heads.kv_dim()));
    let mut att = t(&vec![POISON; step.rows() * heads.q_dim()], step.rows(), heads.q_dim());
    be.attention(&qkv, &kc, &vc, &pads, step, heads, &mut att).unwrap();
    be.to_host(&att, step.rows()).unwrap()
}

/// Attention alone, over a canvas long enough to split: every head dim path (16-byte K/V chunks,
/// and scalar loads when hd is not a multiple of a chunk), one and several key splits (empty
/// splits included: a row with left pads and a short row), decode-shaped and full windows.
#[test]
fn attention_splits_and_head_dims_match_the_cpu() {
    for dtype in [DType::F32, DType::Bf16] {
        let Some(g) = gpu(dtype) else { return };
        let cpu = Cpu::new(dtype, None);
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        let (batch, canvas) = (2usize, 203usize);
        // row 0: 11 left pads; row 1: ends 30 columns early (continuous batching)
        let pads_host = [11u32, 0, canvas as u32, (canvas - 30) as u32];
        for (hd, n_heads, n_kv) in [(128usize, 4usize, 2usize), (24, 3, 3), (20, 2, 1), (18, 2, 2)] {
            let heads = Heads { n_heads, n_kv_heads: n_kv, head_dim: hd };
            for win in [Window { start: 64, len: 32 }, Window { start: 0, len: canvas }] {
                let step = Step { batch, canvas, win };
                let cols = heads.q_dim() + 2 * heads.kv_dim();
                let seed = (hd * 1000 + win.len) as u64;
                let qkv_h = rand_uniform(step.rows() * cols, seed, 2.0);
                let kc_h = rand_uniform(batch * canvas * heads.kv_dim(), seed + 1, 2.0);
                let vc_h = rand_uniform(batch * canvas * heads.kv_dim(), seed + 2, 2.0);
                let host = (&qkv_h[..], &kc_h[..], &vc_h[..], &pads_host[..]);
                let want = attention_on(&cpu, host, step, heads);
                // bf16: the tensor-core kernel (hd 128, either window) and the CUDA-core one
                let paths: &[bool] = if dtype == DType::Bf16 { &[false, true] } else { &[false] };
                for (&simt, forced) in
                    paths.iter().flat_map(|p| [Some(1), Some(3), Some(7), None].map(|f| (p, f)))
                {
                    g.disable_tensor_core_attention(simt);
                    g.force_attention_splits(forced);
                    let got = attention_on(&g, host, step, heads);
                    let what = format!(
                        "{dtype:?} hd {hd} heads {n_heads}/{n_kv} window {win:?} splits {forced:?}{}",
                        if simt { " (CUDA cores)" } else { "" }
                    );
                    assert!(
                        got.iter().all(|v| !v.is_nan()),
                        "attention {what}: poisoned output left unwritten"
                    );
                    let e = rel_err(&got, &want);
                    eprintln!("attention {what}: relative error {e:.2e}");
                    assert!(e <= tol, "attention {what}: relative error {e:.3e} > {tol:e}");
                }
                g.force_attention_splits(None);
                g.disable_tensor_core_attention(false);
            }
        }
    }
}

/// bf16 GEMMs at weight-streaming shapes go through cuBLASLt with a timed algorithm choice
/// (src/backend/cuda/gemm.rs): the first call tunes, later calls reuse the choice; both match the
/// CPU twin.
#[test]
fn bf16_linear_with_tuned_algorithms_matches_the_cpu() {
    let Some(g) = gpu(DType::Bf16) else { return };
    let cpu = Cpu::new(DType::Bf16, None);
    for (rows, n, k) in [(32usize, 4096usize, 4096usize), (32, 1000, 4096), (7, 333, 264)] {
        let x = rand_uniform(rows * k, (rows * n) as u64, 1.0);
        let w = rand_uniform(n * k, (n + k) as u64, 0.05);
        let want = {
            let (xt, wt) =
                (cpu.tensor_from_host(&x, rows, k).unwrap(), cpu.tensor_from_host(&w, n, k).unwrap());
            let mut o = cpu.tensor(rows, n).unwrap();
            cpu.linear(&xt, &wt, rows, &mut o).unwrap();
            cpu.to_host(&o, rows).unwrap()
        };
        let (xt, wt) = (g.tensor_from_host(&x, rows, k).unwrap(), g.tensor_from_host(&w, n, k).unwrap());
        for call in ["tuning", "tuned"] {
            let mut o = g.tensor_from_host(&vec![POISON; rows * n], rows, n).unwrap();
            g.linear(&xt, &wt, rows, &mut o).unwrap();
            let got = g.to_host(&o, rows).unwrap();
            assert!(
                got.iter().all(|v| !v.is_nan()),
                "{rows}×{n}×{k} ({call}): poisoned output left unwritten"
            );
            let e = rel_err(&got, &want);
            eprintln!("linear bf16 {rows}×{n}×{k} ({call}): relative error {e:.2e}");
            assert!(e <= 1e-2, "{rows}×{n}×{k} ({call}): relative error {e:.3e}");
        }
    }
    let report = g.tuning_report();
    for line in &report {
        eprintln!("tuned: {line}");
    }
    assert!(report.len() >= 3, "every shape was tuned once: {report:?}");
}

/// The fused residual add + norm is bit-identical to the add then the norm on the same GPU (in
/// both dtypes, rows wider than one pass of the block), so fusing changes no decoded token.
#[test]
fn fused_add_rmsnorm_is_bit_identical_to_add_then_rmsnorm() {
    for dtype in [DType::F32, DType::Bf16] {
        let Some(g) = gpu(dtype) else { return };
        let (rows, d) = (37usize, 4100usize);
        let h0 = rand_uniform(rows * d, 11, 2.0);
        let x = g.tensor_from_host(&rand_uniform(rows * d, 12, 1.0), rows, d).unwrap();
        let w = g.tensor_from_host(&rand_uniform(d, 13, 1.0), 1, d).unwrap();
        let (mut h1, mut h2) =
            (g.tensor_from_host(&h0, rows, d).unwrap(), g.tensor_from_host(&h0, rows, d).unwrap());
        let mut y1 = g.tensor_from_host(&vec![POISON; rows * d], rows, d).unwrap();
        let mut y2 = g.tensor_from_host(&vec![POISON; rows * d], rows, d).unwrap();
        g.add(&mut h1, &x, rows).unwrap();
        g.rmsnorm(&h1, &w, 1e-5, rows, &mut y1).unwrap();
        g.add_rmsnorm(&mut h2, &x, &w, 1e-5, rows, &mut y2).unwrap();
        let bits = |t: &dllm::backend::cuda::CudaTensor| -> Vec<u32> {
            g.to_host(t, rows).unwrap().iter().map(|v| v.to_bits()).collect()
        };
        assert!(bits(&h1) == bits(&h2), "{dtype:?}: h differs");
        assert!(bits(&y1) == bits(&y2), "{dtype:?}: normalised output differs");
        assert!(g.to_host(&y2, rows).unwrap().iter().all(|v| v.is_finite()), "{dtype:?}: poison left");
    }
}

fn gpu_engine(dir: &std::path::Path) -> Option<(ModelFiles, Engine<Cuda>)> {
    let files = ModelFiles::open(dir).unwrap();
    let g = gpu(files.dtype)?;
    let engine = Engine::new(g, &files).unwrap();
    Some((files, engine))
}

/// f32 fixtures run in pure f32 on the GPU (no TF32): token-identical to the CPU, i.e. to the
/// official outputs and the NumPy goldens, in every mode (spec §8).
#[test]
fn official_and_golden_cases_token_for_token_on_gpu() {
    let sets = [
        (fixture("official/checkpoint"), fixture("official/official_tokens.json"), "nfe_checkfirst"),
        (fixture("tiny-mha/checkpoint"), fixture("tiny-mha/goldens.json"), "nfe"),
        (fixture("tiny-gqa/checkpoint"), fixture("tiny-gqa/goldens.json"), "nfe"),
        (fixture("tiny-dream/checkpoint"), fixture("tiny-dream/goldens.json"), "nfe"),
    ];
    for (ck, goldens, nfe_field) in sets {
        let Some((_, engine)) = gpu_engine(&ck) else { return };
        let cases = cases(&goldens, nfe_field);
        // with in-block steps replayed from captured CUDA graphs (the default) and without
        for graphs in [true, false] {
            let mut bad = vec![];
            for c in &cases {
                let run = dllm::decode::RunOptions { cuda_graphs: graphs, ..Default::default() };
                let prompt = std::slice::from_ref(&c.prompt);
                let out = engine.generate_with(prompt, &c.opts, run, &mut dllm::decode::Quiet).unwrap();
                let r = &out.rows[0];
                if r.tokens != c.tokens || r.nfe != c.nfe || r.commits != c.commits {
                    bad.push(c.name.clone());
                }
            }
            if graphs {
                let (captures, replays) = engine.backend.graph_counts();
                assert!(captures > 0 && replays > 0, "graphs on but {captures} captures, {replays} replays");
            }
            assert!(
                bad.is_empty(),
                "{} (graphs {graphs}): {} of {} cases differ on the GPU: {bad:?}",
                ck.display(),
                bad.len(),
                cases.len()
            );
        }
    }
}

#[test]
fn batches_on_gpu_equal_each_row_alone() {
    let Some((_, engine)) = gpu_engine(&fixture("tiny-gqa/checkpoint")) else { return };
    let cases = cases(&fixture("tiny-gqa/goldens.json"), "nfe");
    for p0 in cases.iter().filter(|c| c.name.starts_with("p0/")) {
        let group: Vec<&Case> = cases.iter().filter(|c| c.name[3..] == p0.name[3..]).collect();
        let prompts: Vec<Vec<u32>> = group.iter().map(|c| c.prompt.clone()).collect();
        let out = engine.generate(&prompts, &p0.opts).unwrap();
        for (row, c) in out.rows.iter().zip(&group) {
            assert_eq!(row.tokens, c.tokens, "GPU batch row {}", c.name);
            assert_eq!(row.nfe, c.nfe, "GPU batch row {}", c.name);
        }
    }
}

/// A bf16 checkpoint runs in bf16 on the GPU; one decode matches the CPU bf16 twin's logits by
/// tolerance (exact tokens are not expected from two bf16 engines, spec §8).
#[test]
fn bf16_checkpoint_on_gpu_decodes_and_tracks_the_cpu() {
    let dir = temp_copy(&fixture("tiny-gqa/checkpoint"), "gpu-bf16");
    to_bf16(&dir.join("model.safetensors"));
    let files = ModelFiles::open(&dir).unwrap();
    let Some(g) = gpu(DType::Bf16) else { return };
    let gpu_engine = Engine::new(g, &files).unwrap();
    let cpu_engine = Engine::new(Cpu::new(DType::Bf16, None), &files).unwrap();
    let prompts =
        vec![vec![72u32, 101, 108, 108, 111], vec![87u32, 104, 97, 116, 32, 105, 115, 32, 49, 43, 49]];
    let opts = dllm::decode::DecodeOptions { gen_length: 64, steps: 64, ..Default::default() };
    let lg = block_logits(&gpu_engine, &prompts);
    let lc = block_logits(&cpu_engine, &prompts);
    assert!(lg.iter().all(|&x| half::bf16::from_f32(x).to_f32() == x), "GPU logits are not bf16 values");
    let e = rel_err(&lg, &lc);
    eprintln!("bf16 logits, GPU vs CPU twin: relative error {e:.2e}");
    // the same end-to-end bound as bf16 vs f32 on the CPU (tests/precision.rs)
    assert!(e <= 3e-2, "bf16 logits GPU vs CPU relative error {e}");
    let a = gpu_engine.generate(&prompts, &opts).unwrap();
    let b = cpu_engine.generate(&prompts, &opts).unwrap();
    for (x, y) in a.rows.iter().zip(&b.rows) {
        assert!(!x.tokens.contains(&files.tokenizer.special.mask));
        assert_eq!(x.tokens.len(), 64);
        let same = x.tokens.iter().zip(&y.tokens).filter(|(p, q)| p == q).count();
        eprintln!("bf16 GPU vs CPU: {same} of {} tokens equal (not required, spec §8)", x.tokens.len());
    }
}

/// Synthetic weights are generated on the device: bit-identical to the CPU twin (the same
/// 24-bit hash, the same f32 operations, the same rounding).
#[test]
fn fill_random_is_bit_identical_to_the_cpu() {
    for dtype in [DType::F32, DType::Bf16] {
        let Some(g) = gpu(dtype) else { return };
        let cpu = Cpu::new(dtype, None);
        let (rows, cols) = (37, 1001);
        let mut a = g.tensor(rows, cols).unwrap();
        let mut b = cpu.tensor(rows, cols).unwrap();
        g.fill_random(&mut a, 1234, 0.5, 2.0).unwrap();
        cpu.fill_random(&mut b, 1234, 0.5, 2.0).unwrap();
        let (a, b) = (g.to_host(&a, rows).unwrap(), cpu.to_host(&b, rows).unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{dtype:?}: fill_random differs");
        assert!(b.iter().all(|&x| (-1.5..=2.5).contains(&x)));
    }
}
