//! The CUDA backend against its CPU twin. Each kernel: random inputs of awkward sizes (rows not a
//! multiple of 32, batch 3 with padded rows, GQA), outputs poisoned with NaN before the launch,
//! compared by relative error (f32 ≤ 1e-5, bf16 ≤ 1e-2; tokens and selections exactly). End to
//! end: the f32 fixtures decode token for token as on the CPU (= the goldens), in every mode.
//!
//! Each op has one case function, run by `kernel_tests!` as one test per variant, so a failure
//! names the op and the variant: `<op>::kernels_match_cpu_twins_f32` and `..._bf16` for every op,
//! `<op>::dream_kernels_match_cpu_twins_in_f32` and `..._in_bf16` for the ops Dream changes.
//! (tools/gpu_check.sh runs the `kernels_match_cpu_twins_f32` tests under compute-sanitizer.)
//!
//! Without a GPU every test prints why and passes; with `DLLM_REQUIRE_GPU=1` it fails instead.
#![cfg(feature = "cuda")]

mod common;
use common::*;

use dllm::backend::cpu::Cpu;
use dllm::backend::cuda::Cuda;
use dllm::backend::{
    Backend, DType, Draw, Heads, Sampling, Score, Select, SelectRule, Step, Window, NON_FINITE,
};
use dllm::decode::Engine;
use dllm::model::{ModelConfig, ModelFiles};
use dllm::transformer::rope_tables;

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

// ---- the op tests: one case function per op, one test per variant (kernel_tests!)

/// One variant of the op tests.
#[derive(Clone, Copy)]
struct Variant {
    dtype: DType,
    /// Dream's variants of the same ops (q/k/v bias, shifted gather, bf16 probabilities on a
    /// bf16 backend, the entropy score under the quota rule).
    dream: bool,
    /// The (temperature, rule) passes of argmax and select.
    passes: &'static [(f64, SelectRule)],
}

const F32: Variant = Variant {
    dtype: DType::F32,
    dream: false,
    passes: &[
        (0.0, SelectRule::Quota),
        (0.0, SelectRule::Threshold(0.5)),
        (0.0, SelectRule::Factor(1.0)),
        (1.0, SelectRule::Threshold(0.9)),
    ],
};
const BF16: Variant = Variant {
    dtype: DType::Bf16,
    dream: false,
    passes: &[
        (0.0, SelectRule::Quota),
        (0.0, SelectRule::Threshold(0.5)),
        (0.0, SelectRule::Factor(1.0)),
        (0.7, SelectRule::Threshold(0.9)),
    ],
};
/// Dream's op variants (spec §3): bias add, shifted gather, entropy scores, bf16 probabilities,
/// the block-start "first" rule and the budgeted threshold.
const DREAM_PASSES: &[(f64, SelectRule)] = &[
    (0.0, SelectRule::Quota),
    (0.0, SelectRule::Threshold(0.5)),
    (0.0, SelectRule::First),
    (0.0, SelectRule::CappedThreshold(0.5)),
];
const DREAM_F32: Variant = Variant { dtype: DType::F32, dream: true, passes: DREAM_PASSES };
const DREAM_BF16: Variant = Variant { dtype: DType::Bf16, dream: true, passes: DREAM_PASSES };

/// The tests of one op's case function: `base` its variants in f32 and bf16, `dream` Dream's
/// variants in both dtypes (for the ops Dream changes).
macro_rules! kernel_tests {
    ($op:ident: $($family:ident),+) => {
        mod $op {
            $(kernel_tests!(@$family $op);)+
        }
    };
    (@base $op:ident) => {
        #[test]
        fn kernels_match_cpu_twins_f32() {
            super::$op(super::F32)
        }
        #[test]
        fn kernels_match_cpu_twins_bf16() {
            super::$op(super::BF16)
        }
    };
    (@dream $op:ident) => {
        #[test]
        fn dream_kernels_match_cpu_twins_in_f32() {
            super::$op(super::DREAM_F32)
        }
        #[test]
        fn dream_kernels_match_cpu_twins_in_bf16() {
            super::$op(super::DREAM_BF16)
        }
    };
}

kernel_tests!(rmsnorm: base);
kernel_tests!(linear: base);
kernel_tests!(swiglu: base);
kernel_tests!(add: base);
kernel_tests!(add_rmsnorm: base);
kernel_tests!(embed: base);
kernel_tests!(add_bias: dream);
kernel_tests!(rope_store_kv: base, dream);
kernel_tests!(attention: base, dream);
kernel_tests!(gather_block: base, dream);
kernel_tests!(argmax_confidence: base, dream);
kernel_tests!(select: base, dream);
kernel_tests!(quantize_fp8: base);
kernel_tests!(linear_fp8: base);

/// `$body` run twice, `$be` bound first to the GPU, then to its CPU twin (two backend types):
/// (the GPU's result, the CPU's).
macro_rules! on_both {
    ($twins:expr, |$be:ident| $body:expr) => {{
        let (gpu, cpu) = &$twins;
        let on_gpu = {
            let $be = gpu;
            $body
        };
        let on_cpu = {
            let $be = cpu;
            $body
        };
        (on_gpu, on_cpu)
    }};
}

/// The GPU and the CPU twin in `dtype`; None (the reason printed) without a GPU.
fn twins(dtype: DType) -> Option<(Cuda, Cpu)> {
    Some((gpu(dtype)?, Cpu::new(dtype, None)))
}

/// The GPU's output `got` of op `name` against the CPU's `want`: every element written (the
/// poison gone), relative error within the dtype's tolerance.
fn assert_close(dtype: DType, name: &str, got: &[f32], want: &[f32]) {
    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
    assert!(got.iter().all(|v| !v.is_nan()), "{name} ({dtype:?}): poisoned output left unwritten");
    let e = rel_err(got, want);
    eprintln!("{name:12} {dtype:?}: relative error {e:.2e}");
    assert!(e <= tol, "{name} ({dtype:?}): relative error {e:.3e} > {tol:e}");
}

fn upload<B: Backend>(be: &B, data: &[f32], rows: usize, cols: usize) -> B::Tensor {
    be.tensor_from_host(data, rows, cols).unwrap()
}

fn poison<B: Backend>(be: &B, rows: usize, cols: usize) -> B::Tensor {
    upload(be, &vec![POISON; rows * cols], rows, cols)
}

// rmsnorm, linear, swiglu, add on 37 rows
const ROWS: usize = 37;
const D: usize = 72;
const N: usize = 53;

fn x_in<B: Backend>(be: &B) -> B::Tensor {
    upload(be, &rand_uniform(ROWS * D, 1, 2.0), ROWS, D)
}

fn norm_weight<B: Backend>(be: &B) -> B::Tensor {
    upload(be, &rand_uniform(D, 2, 1.0).iter().map(|v| 1.0 + v * 0.2).collect::<Vec<_>>(), 1, D)
}

/// The residual stream of the add tests.
fn h_in<B: Backend>(be: &B) -> B::Tensor {
    upload(be, &rand_uniform(ROWS * D, 5, 1.0), ROWS, D)
}

fn rmsnorm(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let (got, want) = on_both!(twins, |be| {
        let mut y = poison(be, ROWS, D);
        be.rmsnorm(&x_in(be), &norm_weight(be), 1e-5, ROWS, &mut y).unwrap();
        be.to_host(&y, ROWS).unwrap()
    });
    assert_close(v.dtype, "rmsnorm", &got, &want);
}

fn linear(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let (got, want) = on_both!(twins, |be| {
        let w = upload(be, &rand_uniform(N * D, 3, 0.3), N, D);
        let mut z = poison(be, ROWS, N);
        be.linear(&x_in(be), &w, ROWS, &mut z).unwrap();
        be.to_host(&z, ROWS).unwrap()
    });
    assert_close(v.dtype, "linear", &got, &want);
}

fn swiglu(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let (got, want) = on_both!(twins, |be| {
        let gate_up = upload(be, &rand_uniform(ROWS * 2 * N, 4, 3.0), ROWS, 2 * N);
        let mut s = poison(be, ROWS, N);
        be.swiglu(&gate_up, ROWS, &mut s).unwrap();
        be.to_host(&s, ROWS).unwrap()
    });
    assert_close(v.dtype, "swiglu", &got, &want);
}

fn add(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let (got, want) = on_both!(twins, |be| {
        let mut h = h_in(be);
        be.add(&mut h, &x_in(be), ROWS).unwrap();
        be.to_host(&h, ROWS).unwrap()
    });
    assert_close(v.dtype, "add", &got, &want);
}

/// The fused residual add + norm, on the stream after an add: both its outputs.
fn add_rmsnorm(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let (got, want) = on_both!(twins, |be| {
        let (x, mut h) = (x_in(be), h_in(be));
        be.add(&mut h, &x, ROWS).unwrap();
        let mut y = poison(be, ROWS, D);
        be.add_rmsnorm(&mut h, &x, &norm_weight(be), 1e-5, ROWS, &mut y).unwrap();
        (be.to_host(&h, ROWS).unwrap(), be.to_host(&y, ROWS).unwrap())
    });
    assert_close(v.dtype, "add_rmsnorm h", &got.0, &want.0);
    assert_close(v.dtype, "add_rmsnorm out", &got.1, &want.1);
}

// embed, rope + cache write, attention, gather: batch 3, canvas 45, window [7, 45), pads 0/5/11
// (row 1 ending at 40), GQA 6 query heads over 2 KV heads, head_dim 24
const HEADS: Heads = Heads { n_heads: 6, n_kv_heads: 2, head_dim: 24 };
const BATCH: usize = 3;
const CANVAS: usize = 45;
const STEP: Step = Step { batch: BATCH, canvas: CANVAS, win: Window { start: 7, len: 38 } };
const VOCAB: usize = 300;
/// The block gathered, argmaxed and selected.
const BLOCK: Window = Window { start: 13, len: 27 };

/// Left pads, then row ends: row 1 ends 5 columns before the canvas (a continuous batch).
fn pads<B: Backend>(be: &B) -> B::Ids {
    let mut pads = be.ids(2 * BATCH).unwrap();
    be.write_ids(&mut pads, &[0, 5, 11, 45, 40, 45]).unwrap();
    pads
}

fn embed(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let (got, want) = on_both!(twins, |be| {
        let canvas: Vec<u32> = (0..BATCH * CANVAS).map(|i| ((i * 37 + 11) % VOCAB) as u32).collect();
        let mut ids = be.ids(BATCH * CANVAS).unwrap();
        be.write_ids(&mut ids, &canvas).unwrap();
        let table = upload(be, &rand_uniform(VOCAB * 40, 6, 1.0), VOCAB, 40);
        let mut e = poison(be, STEP.rows(), 40);
        be.embed(&table, &ids, STEP, &mut e).unwrap();
        be.to_host(&e, STEP.rows()).unwrap()
    });
    assert_close(v.dtype, "embed", &got, &want);
}

fn qkv_cols() -> usize {
    HEADS.q_dim() + 2 * HEADS.kv_dim()
}

/// The window's q|k|v rows; Dream's q/k/v bias added.
fn qkv_in<B: Backend>(be: &B, dream: bool) -> B::Tensor {
    let cols = qkv_cols();
    let mut qkv = upload(be, &rand_uniform(STEP.rows() * cols, 7, 2.0), STEP.rows(), cols);
    if dream {
        let bias = upload(be, &rand_uniform(cols, 12, 1.0), 1, cols);
        be.add_bias(&mut qkv, &bias, STEP.rows()).unwrap();
    }
    qkv
}

/// The model's RoPE tables (transformer::rope_tables) for head_dim 24, θ = 10000, 64 positions.
fn rope<B: Backend>(be: &B) -> (B::Tensor, B::Tensor) {
    let mut cfg = ModelConfig::load(&fixture("tiny-mha/checkpoint")).unwrap();
    (cfg.head_dim, cfg.rope_theta, cfg.max_seq_len) = (HEADS.head_dim, 10000.0, 64);
    let (cos, sin) = rope_tables(&cfg);
    (be.upload_f32(&cos, 64, HEADS.head_dim).unwrap(), be.upload_f32(&sin, 64, HEADS.head_dim).unwrap())
}

/// The window after rope_store_kv, with the pads and the caches it wrote into.
struct Rotated<B: Backend> {
    qkv: B::Tensor,
    k_cache: B::Tensor,
    v_cache: B::Tensor,
    pads: B::Ids,
}

fn rotated<B: Backend>(be: &B, dream: bool) -> Rotated<B> {
    let mut qkv = qkv_in(be, dream);
    let (cos, sin) = rope(be);
    let pads = pads(be);
    // the cache rows outside the window hold earlier (stale) keys: PrefixCache / DualCache
    let (rows, kv) = (BATCH * CANVAS, HEADS.kv_dim());
    let mut k_cache = upload(be, &rand_uniform(rows * kv, 8, 2.0), rows, kv);
    let mut v_cache = upload(be, &rand_uniform(rows * kv, 9, 2.0), rows, kv);
    be.rope_store_kv(&mut qkv, &cos, &sin, &pads, STEP, HEADS, &mut k_cache, &mut v_cache).unwrap();
    Rotated { qkv, k_cache, v_cache, pads }
}

/// Attention over the rotated window: [B·W, q_dim].
fn attended<B: Backend>(be: &B, dream: bool) -> B::Tensor {
    let r = rotated(be, dream);
    let mut att = poison(be, STEP.rows(), HEADS.q_dim());
    be.attention(&r.qkv, &r.k_cache, &r.v_cache, &r.pads, STEP, HEADS, &mut att).unwrap();
    att
}

fn add_bias(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let (got, want) = on_both!(twins, |be| be.to_host(&qkv_in(be, v.dream), STEP.rows()).unwrap());
    assert_close(v.dtype, "q|k|v bias", &got, &want);
}

fn rope_store_kv(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let (got, want) = on_both!(twins, |be| {
        let r = rotated(be, v.dream);
        let cache_rows = BATCH * CANVAS;
        let host = |t| be.to_host(t, cache_rows).unwrap();
        (be.to_host(&r.qkv, STEP.rows()).unwrap(), host(&r.k_cache), host(&r.v_cache))
    });
    assert_close(v.dtype, "rope q|k|v", &got.0, &want.0);
    assert_close(v.dtype, "k cache", &got.1, &want.1);
    assert_close(v.dtype, "v cache", &got.2, &want.2);
}

fn attention(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let (got, want) = on_both!(twins, |be| be.to_host(&attended(be, v.dream), STEP.rows()).unwrap());
    assert_close(v.dtype, "attention", &got, &want);
}

/// The block's rows of the attention output (Dream: shifted by one), and a block at the window's
/// start (with Dream's shift its first row reads itself).
fn gather_block(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let first = Window { start: STEP.win.start, len: 9 };
    let (got, want) = on_both!(twins, |be| {
        let att = attended(be, v.dream);
        [BLOCK, first].map(|block| {
            let mut g = poison(be, BATCH * block.len, HEADS.q_dim());
            be.gather_block(&att, STEP, block, v.dream, &mut g).unwrap();
            be.to_host(&g, BATCH * block.len).unwrap()
        })
    });
    assert_close(v.dtype, "gather", &got[0], &want[0]);
    assert_close(v.dtype, "gather at window start", &got[1], &want[1]);
}

// argmax + confidence over logits with clear winners, then selection into the canvas

/// The block's logits rows (batch 3 × 27): a distinct winner per row, clear of the runner-up;
/// row 4's winner is the mask id. Row 5: all NaN (a broken model): both backends draw the lowest
/// non-mask id with a NaN score; row 6: one -inf logit among finite ones, also a NaN score.
/// Selection commits nothing of batch row 0 (rows 0..27) and reports it as non-finite.
fn logits_in<B: Backend>(be: &B) -> B::Tensor {
    let lrows = BATCH * BLOCK.len;
    let mut logits = rand_uniform(lrows * VOCAB, 10, 4.0);
    for r in 0..lrows {
        let win = (r * 7 + 3) % VOCAB;
        logits[r * VOCAB + win] = 9.0 + (r as f32) * 0.37;
    }
    for v in 0..VOCAB {
        logits[5 * VOCAB + v] = f32::NAN;
    }
    logits[6 * VOCAB + 1] = f32::NEG_INFINITY;
    assert_eq!((4 * 7 + 3) % VOCAB, MASK_ID as usize, "row 4's winner is the mask id");
    upload(be, &logits, lrows, VOCAB)
}

/// argmax_confidence over the block's logits with one draw per batch row (seeds 11–13, forward
/// counters 3, 0, 7): the candidates.
fn drawn_by<B: Backend>(be: &B, draws: &[Draw], bf16_probs: bool) -> B::Cands {
    let mut cands = be.cands(BATCH * BLOCK.len).unwrap();
    let sampling =
        Sampling { draws, seeds: &[11, 12, 13], counters: &[3, 0, 7], mask_id: MASK_ID, bf16_probs };
    be.argmax_confidence(&logits_in(be), &pads(be), BLOCK, BATCH, sampling, &mut cands).unwrap();
    cands
}

/// argmax_confidence of a variant's pass: every row with the pass's temperature and score.
fn drawn<B: Backend>(be: &B, v: Variant, temperature: f64, rule: SelectRule) -> B::Cands {
    let score = if v.dream && rule == SelectRule::Quota { Score::NegEntropy } else { Score::Confidence };
    drawn_by(be, &[Draw { temperature, score, ..Draw::GREEDY }; BATCH], v.dream && be.dtype() == DType::Bf16)
}

fn argmax_confidence(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let dtype = v.dtype;
    for &(temperature, rule) in v.passes {
        let ((a_tokens, a_conf), (b_tokens, b_conf)) =
            on_both!(twins, |be| be.read_cands(&drawn(be, v, temperature, rule), BATCH * BLOCK.len).unwrap());
        // With clear winners the drawn tokens are exact; with Gumbel noise they may differ only
        // where the device's f64 log differs from the host's in the last bit.
        let same = a_tokens.iter().zip(&b_tokens).filter(|(x, y)| x == y).count();
        if temperature == 0.0 {
            assert_eq!(a_tokens, b_tokens, "argmax ({dtype:?})");
            assert!(!a_tokens.contains(&MASK_ID), "the mask id is never drawn");
        } else {
            assert!(
                same * 100 >= a_tokens.len() * 95,
                "sampled tokens: only {same} of {} agree",
                a_tokens.len()
            );
        }
        // bf16-rounded scores (Dream) may land one bf16 step apart where the sums differ in the
        // last bit; an f64 entropy near 0 is a sum of cancelling terms whose order differs (device
        // vs host), so it gets an absolute slack far below any gap that could reorder a selection
        let rtol = if v.dream && dtype == DType::Bf16 { 8e-3 } else { 1e-9 };
        let atol = if v.dream { 1e-12 } else { 1e-15 };
        for (x, y) in a_conf.iter().zip(&b_conf) {
            let same = (x.is_nan() && y.is_nan()) || (x - y).abs() <= rtol * y.abs().max(1e-300) + atol;
            assert!(same, "confidence {x} vs {y}");
        }
        assert!(a_conf[5].is_nan() && a_tokens[5] == 0, "an all-NaN row draws id 0 with a NaN confidence");
        assert!(a_conf[6].is_nan(), "a row with an infinite logit gets a NaN score");
        assert!(a_conf[7].is_finite(), "a finite row keeps its score");
    }
}

/// Each backend's own candidates committed into a canvas whose block is masked but for every
/// fifth position, rows 0 and 2 active: (counts, canvas).
fn selected<B: Backend>(be: &B, v: Variant, temperature: f64, rule: SelectRule) -> (Vec<u32>, Vec<u32>) {
    let mut cands = drawn(be, v, temperature, rule);
    let mut canvas_ids = be.ids(BATCH * CANVAS).unwrap();
    let mut c0: Vec<u32> = vec![7; BATCH * CANVAS];
    for b in 0..BATCH {
        for i in 0..BLOCK.len {
            if i % 5 != 2 {
                c0[b * CANVAS + BLOCK.start + i] = MASK_ID;
            }
        }
    }
    be.write_ids(&mut canvas_ids, &c0).unwrap();
    let sel = Select {
        rules: &[rule; BATCH],
        active: &[true, false, true],
        quota: &[4, 4, 30],
        mask_id: MASK_ID,
        block: BLOCK,
    };
    let counts = be.select(&mut cands, &mut canvas_ids, CANVAS, sel).unwrap();
    let mut canvas = vec![0; BATCH * CANVAS];
    be.read_ids(&canvas_ids, &mut canvas).unwrap();
    (counts, canvas)
}

fn select(v: Variant) {
    let Some(twins) = twins(v.dtype) else { return };
    let dtype = v.dtype;
    for &(temperature, rule) in v.passes {
        let (a, b) = on_both!(twins, |be| selected(be, v, temperature, rule));
        assert_eq!(a.0[0], NON_FINITE, "a row with non-finite candidates is reported, not committed");
        if temperature == 0.0 {
            assert_eq!(a.0, b.0, "select counts ({dtype:?}, {rule:?})");
            assert_eq!(a.1, b.1, "select canvas ({dtype:?}, {rule:?})");
            assert_eq!(a.0[1], 0, "an inactive row is not touched");
        }
    }
}

// ---- ops beyond the shared inputs, and end to end

/// top_logprobs (issue 19) against its CPU twin on the awkward logits, f32 and bf16: the same ids
/// (the drawn token, then the 6 most likely non-mask ones), log-probabilities by relative error,
/// NaN for the rows with non-finite logits.
#[test]
fn top_logprobs_match_the_cpu() {
    for dtype in [DType::F32, DType::Bf16] {
        let Some(twins) = twins(dtype) else { return };
        let rows = BATCH * BLOCK.len;
        let ((a_ids, a_lp), (b_ids, b_lp)) = on_both!(twins, |be| {
            let drawn = drawn_by(be, &[Draw::GREEDY; BATCH], false);
            let mut out = be.cands(rows * 7).unwrap();
            be.top_logprobs(&logits_in(be), &drawn, rows, 6, MASK_ID, &mut out).unwrap();
            be.read_cands(&out, rows * 7).unwrap()
        });
        assert_eq!(a_ids, b_ids, "{dtype:?}");
        assert!(a_ids.chunks(7).all(|c| !c[1..].contains(&MASK_ID)), "the mask is never listed");
        for (x, y) in a_lp.iter().zip(&b_lp) {
            assert!(
                (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-9 * y.abs() + 1e-12,
                "{dtype:?}: {x} vs {y}"
            );
        }
        assert!(a_lp[5 * 7].is_nan() && a_lp[6 * 7].is_nan(), "non-finite rows");
    }
}

/// Rows with their own draws (greedy; top-k 5 at T 0.8; nucleus 0.6 at T 1.3) and rules
/// (threshold, quota, factor) in one argmax_conf + select_commit (issue 19): the greedy row's
/// tokens and every score as the CPU twin; every sampled token inside the twin's allowed set
/// (the cut is exact for top-k, the nucleus up to the f64 sums' last bits); each row's count by
/// its own rule.
#[test]
fn mixed_draws_and_rules_match_the_cpu() {
    let Some(twins) = twins(DType::F32) else { return };
    let draws = [
        Draw::GREEDY,
        Draw { temperature: 0.8, top_k: 5, ..Draw::GREEDY },
        Draw { temperature: 1.3, top_p: 0.6, ..Draw::GREEDY },
    ];
    let rules = [SelectRule::Threshold(0.5), SelectRule::Quota, SelectRule::Factor(1.0)];
    let ((a_tok, a_conf, a_counts), (b_tok, b_conf, b_counts)) = on_both!(twins, |be| {
        let mut cands = drawn_by(be, &draws, false);
        let (tok, conf) = be.read_cands(&cands, BATCH * BLOCK.len).unwrap();
        let mut canvas = be.ids(BATCH * CANVAS).unwrap();
        be.write_ids(&mut canvas, &vec![MASK_ID; BATCH * CANVAS]).unwrap();
        let sel = Select {
            rules: &rules,
            active: &[true; BATCH],
            quota: &[4; BATCH],
            mask_id: MASK_ID,
            block: BLOCK,
        };
        let counts = be.select(&mut cands, &mut canvas, CANVAS, sel).unwrap();
        (tok, conf, counts)
    });
    let bl = BLOCK.len;
    assert_eq!(a_tok[..bl], b_tok[..bl], "the greedy row");
    for (x, y) in a_conf.iter().zip(&b_conf) {
        assert!((x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-9 * y.abs() + 1e-15, "score {x} vs {y}");
    }
    let host: Vec<f32> = {
        let cpu = Cpu::new(DType::F32, Some(1));
        cpu.to_host(&logits_in(&cpu), BATCH * bl).unwrap()
    };
    for r in bl..BATCH * bl {
        let row = &host[r * VOCAB..(r + 1) * VOCAB];
        let cut = dllm::backend::cpu::nucleus::cut(row, MASK_ID, &draws[r / bl]);
        if !b_conf[r].is_nan() {
            let tok = a_tok[r] as usize;
            assert!(
                dllm::backend::cpu::nucleus::order_key(row[tok]) >= cut,
                "row {r}: GPU drew {tok} outside the set"
            );
        }
    }
    // batch row 0 holds the non-finite logit rows: reported, not committed; row 1's quota of 4
    // commits 4; row 2's factor rule commits at least one (its sampled tokens may differ)
    assert_eq!((a_counts[0], a_counts[1]), (NON_FINITE, 4), "{a_counts:?}");
    assert_eq!((b_counts[0], b_counts[1]), (NON_FINITE, 4), "{b_counts:?}");
    assert!(a_counts[2] >= 1 && a_counts[2] as usize <= bl, "{a_counts:?}");
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
/// official outputs and the NumPy goldens (plain and infilling), in every mode (spec §8).
#[test]
fn official_and_golden_cases_token_for_token_on_gpu() {
    let sets = [
        (fixture("official/checkpoint"), fixture("official/official_tokens.json"), "nfe_checkfirst"),
        (fixture("tiny-mha/checkpoint"), fixture("tiny-mha/goldens.json"), "nfe"),
        (fixture("tiny-gqa/checkpoint"), fixture("tiny-gqa/goldens.json"), "nfe"),
        (fixture("tiny-dream/checkpoint"), fixture("tiny-dream/goldens.json"), "nfe"),
        // infilling (issue 19): a fixed suffix after the middle
        (fixture("tiny-gqa/checkpoint"), fixture("tiny-gqa/goldens_infill.json"), "nfe"),
        (fixture("tiny-dream/checkpoint"), fixture("tiny-dream/goldens_infill.json"), "nfe"),
    ];
    for (ck, goldens, nfe_field) in sets {
        let Some((_, engine)) = gpu_engine(&ck) else { return };
        let cases = cases(&goldens, nfe_field);
        // with in-block steps replayed from captured CUDA graphs (the default) and without
        for graphs in [true, false] {
            let mut bad = vec![];
            for c in &cases {
                let run = dllm::decode::RunOptions { cuda_graphs: graphs, ..Default::default() };
                let out = engine.decode_rows(&[c.row()], &c.opts, run, &mut dllm::decode::Quiet).unwrap();
                let r = &out.rows[0];
                if r.tokens != c.tokens || r.nfe != c.nfe || r.commits != c.commits || r.suffix != c.suffix {
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

/// The decode session on the GPU (issue 19): the infilling and plain goldens of tiny-gqa in every
/// mode, three passes in turn on one session's buffers (every batch of one row, canvases of
/// different lengths laid over the same allocation), token for token each pass; graphs keyed by
/// the session's buffers and the step's shape live across calls, so the third pass captures
/// nothing new and replays every step it ran before.
#[test]
fn one_session_reuses_its_buffers_and_graphs_across_calls_on_gpu() {
    let Some((_, engine)) = gpu_engine(&fixture("tiny-gqa/checkpoint")) else { return };
    let mut cases = cases(&fixture("tiny-gqa/goldens.json"), "nfe");
    cases.extend(common::cases(&fixture("tiny-gqa/goldens_infill.json"), "nfe"));
    // a handful, so that their step shapes stay under the graph cache's bound
    let cases: Vec<Case> = cases.into_iter().step_by(6).collect();
    let cap = dllm::decode::Capacity {
        batch: 1,
        canvas: cases.iter().map(|c| c.prompt.len() + c.opts.gen_length + c.suffix.len()).max().unwrap(),
        window: cases.iter().map(|c| c.opts.block_length).max().unwrap(),
        logprobs: None,
    };
    let mut session = dllm::decode::Session::new(&engine, cap).unwrap();
    let mut counts = vec![];
    for pass in 0..3 {
        for c in &cases {
            let run = dllm::decode::RunOptions::default();
            let out = session.decode(&[c.row()], &c.opts, run, usize::MAX, &mut dllm::decode::Quiet).unwrap();
            let r = &out.rows[0];
            assert_eq!(
                (&r.tokens, r.nfe, &r.suffix),
                (&c.tokens, c.nfe, &c.suffix),
                "pass {pass}: {}",
                c.name
            );
        }
        counts.push(engine.backend.graph_counts());
    }
    let ((c1, _), (c2, r2)) = (counts[1], counts[2]);
    assert_eq!(c2, c1, "the third pass captured new graphs: {counts:?}");
    assert!(r2 > counts[1].1, "the third pass replayed nothing: {counts:?}");
    drop(session);
}

/// d3LLM's decoders on the GPU in f32 (the entropy score in argmax_conf, the multi-block loop,
/// the delayed cache as windows over the canvas cache): all 76 cases of d3LLM's own code, as on
/// the CPU.
#[test]
fn d3llm_reference_cases_on_gpu() {
    let Some((_, engine)) = gpu_engine(&fixture("official/checkpoint")) else { return };
    let bad = d3llm_mismatches(&engine, &d3llm_cases());
    assert!(bad.is_empty(), "{} of 76 d3LLM cases differ on the GPU:\n{}", bad.len(), bad.join("\n"));
}

/// d3LLM's entropy score (−H with ε 1e-12 in f64) against its CPU twin on the awkward logits.
#[test]
fn d3llm_entropy_score_matches_the_cpu() {
    let Some(twins) = twins(DType::F32) else { return };
    let ((a_tokens, a_score), (b_tokens, b_score)) = on_both!(twins, |be| {
        let cands = drawn_by(be, &[Draw { score: Score::NegEntropyF64, ..Draw::GREEDY }; BATCH], false);
        be.read_cands(&cands, BATCH * BLOCK.len).unwrap()
    });
    assert_eq!(a_tokens, b_tokens);
    for (x, y) in a_score.iter().zip(&b_score) {
        let same = (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-9 * y.abs() + 1e-12;
        assert!(same, "score {x} vs {y}");
    }
    assert!(a_score[7] < 0.0 && a_score[7].is_finite(), "−H of a finite row is negative");
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

// ---- FP8 e4m3 W8A8 linears (issue 17): quantize_fp8 bit for bit, linear on both GEMM paths

/// The GPU in `dtype` if it has FP8 (compute capability 8.9 or newer), else None with the reason
/// printed (also under DLLM_REQUIRE_GPU=1: an A100 has no FP8).
fn fp8_gpu(dtype: DType) -> Option<Cuda> {
    let g = gpu(dtype)?;
    match g.tensor_fp8(1, 1) {
        Ok(_) => Some(g),
        Err(e) => {
            eprintln!("skipping the FP8 test: {e}");
            None
        }
    }
}

/// Rows of a quantize case of width `cols`: random, all zero, NaNs among random values, all zero
/// but one NaN (s = 0, the NaN still 0x7F), and values spread over 20 binades (e4m3 subnormals).
fn quantize_input(cols: usize) -> Vec<f32> {
    let mut x = rand_uniform(5 * cols, 40 + cols as u64, 3.0);
    x[cols..2 * cols].fill(0.0);
    x[2 * cols] = f32::NAN;
    if cols > 2 {
        x[2 * cols + 2] = -f32::NAN;
    }
    x[3 * cols..4 * cols].fill(0.0);
    x[3 * cols + cols / 2] = f32::NAN;
    for (i, v) in x[4 * cols..].iter_mut().enumerate() {
        *v *= 2f32.powi(-((i % 20) as i32));
    }
    x
}

/// quantize_fp8 against `fp8::quantize_rows` (what the CPU twin runs) on the same values in the
/// activation dtype: every code and every scale bit for bit, outputs poisoned first.
fn quantize_fp8(v: Variant) {
    let Some(g) = fp8_gpu(v.dtype) else { return };
    const ROWS: usize = 5;
    for cols in [1, 33, 4096 + 8] {
        let x = upload(&g, &quantize_input(cols), ROWS, cols);
        let (want_codes, want_scales) = dllm::fp8::quantize_rows(&g.to_host(&x, ROWS).unwrap(), ROWS, cols);
        let mut q = g.upload_fp8(&vec![0xAA; ROWS * cols], &[f32::NAN; ROWS], ROWS, cols).unwrap();
        g.quantize_fp8(&x, ROWS, &mut q).unwrap();
        let (codes, scales) = g.fp8_to_host(&q, ROWS).unwrap();
        let bad: Vec<String> = (0..ROWS * cols)
            .filter(|&i| codes[i] != want_codes[i])
            .map(|i| format!("[{}, {}]: {:#04x} vs {:#04x}", i / cols, i % cols, codes[i], want_codes[i]))
            .collect();
        assert!(
            bad.is_empty(),
            "{:?} cols {cols}: {} codes differ, first: {:?}",
            v.dtype,
            bad.len(),
            &bad[..bad.len().min(8)]
        );
        for r in 0..ROWS {
            assert_eq!(
                scales[r].to_bits(),
                want_scales[r].to_bits(),
                "{:?} cols {cols} row {r}: scale",
                v.dtype
            );
        }
        assert_eq!(want_scales[1], 0.0);
        assert_eq!(codes[3 * cols + cols / 2], dllm::fp8::E4M3_NAN, "the NaN of a zero-scale row");
    }
}

/// (rows, n, k) of the FP8 linear tests: LLaDA-8B's FFN shapes at an in-block step's 32 rows,
/// then awkward ones: 1, 31 and 33 rows, k = 80 (a multiple of 16, not of 64), k = 200 (not a
/// multiple of 16: the SIMT kernel, also on the automatic path), n = 53 (likewise).
const FP8_SHAPES: &[(usize, usize, usize)] =
    &[(32, 12288, 4096), (32, 4096, 12288), (1, 128, 80), (31, 96, 200), (33, 48, 80), (33, 53, 80)];

/// One FP8 linear: x random in the activation dtype, quantized by the backend; the weight
/// quantized on the host (fp8::quantize_rows) and uploaded; the output poisoned first.
fn fp8_linear_on<B: Backend>(be: &B, (rows, n, k): (usize, usize, usize)) -> Vec<f32> {
    let x = upload(be, &rand_uniform(rows * k, 60 + k as u64, 2.0), rows, k);
    let (codes, scales) = dllm::fp8::quantize_rows(&rand_uniform(n * k, 61 + n as u64, 0.3), n, k);
    let w = be.upload_fp8(&codes, &scales, n, k).unwrap();
    let mut xq = be.tensor_fp8(rows, k).unwrap();
    be.quantize_fp8(&x, rows, &mut xq).unwrap();
    let mut y = poison(be, rows, n);
    be.linear(&xq, &w, rows, &mut y).unwrap();
    be.to_host(&y, rows).unwrap()
}

/// The FP8 linear against the CPU twin on the automatic path (cuBLASLt where the shape and GPU
/// allow) and on the SIMT kernel (DLLM_FP8_GEMM=simt's path); the report names each shape's path.
fn linear_fp8(v: Variant) {
    let Some(g) = fp8_gpu(v.dtype) else { return };
    let cpu = Cpu::new(v.dtype, None);
    // f32: the SIMT kernel sums the same exact products as the CPU in another order; cuBLASLt's
    // FP8 tensor cores may accumulate in steps of reduced precision, hence its looser bound
    let (tol_auto, tol_simt) = if v.dtype == DType::F32 { (1e-4, 1e-5) } else { (1e-2, 1e-2) };
    for &shape in FP8_SHAPES {
        let want = fp8_linear_on(&cpu, shape);
        for (simt, tol) in [(false, tol_auto), (true, tol_simt)] {
            g.force_simt_fp8_gemm(simt);
            let got = fp8_linear_on(&g, shape);
            assert!(
                got.iter().all(|x| !x.is_nan()),
                "FP8 linear {shape:?} (simt {simt}): poisoned output left"
            );
            let e = rel_err(&got, &want);
            eprintln!("FP8 linear {shape:?} {:?} simt {simt}: relative error {e:.2e}", v.dtype);
            assert!(
                e <= tol,
                "FP8 linear {shape:?} {:?} (simt {simt}): relative error {e:.3e} > {tol:e}",
                v.dtype
            );
        }
    }
    g.force_simt_fp8_gemm(false);
    let report = g.tuning_report();
    for line in report.iter().filter(|l| l.starts_with("FP8")) {
        eprintln!("{line}");
    }
    for (rows, n, k) in [(31, 96, 200), (33, 53, 80)] {
        let head = format!("FP8 {rows}×{n}×{k}: ");
        let auto = report.iter().find(|l| l.starts_with(&head) && !l.contains("DLLM_FP8_GEMM"));
        assert!(auto.is_some_and(|l| l.contains("SIMT")), "{head}not on the SIMT kernel: {report:?}");
    }
}

/// FP8 end to end (issue 17): the llm-compressor-style tiny fixture (tests/fixtures/tiny-gqa-fp8,
/// f32 activations) decodes on the GPU exactly as on the CPU in every golden mode. The codes and
/// scales are bit-identical on both; the FP8 GEMM's sums differ only in order (≈ 1e-7 relative),
/// so a token can differ only at a decision within ≈ 1e-6 of a tie: the message says which case
/// and the first differing position, to check against the CPU's confidences.
#[test]
fn fp8_fixture_decodes_on_gpu_as_on_cpu() {
    let dir = fixture("tiny-gqa-fp8");
    let files = ModelFiles::open(&dir).unwrap();
    let Some(g) = fp8_gpu(files.dtype) else { return };
    let gpu = Engine::new(g, &files).unwrap();
    let cpu = Engine::new(Cpu::new(files.dtype, None), &files).unwrap();
    let mut bad = vec![];
    for c in cases(&fixture("tiny-gqa/goldens.json"), "nfe") {
        let prompt = std::slice::from_ref(&c.prompt);
        let (a, b) = (cpu.generate(prompt, &c.opts).unwrap(), gpu.generate(prompt, &c.opts).unwrap());
        let (a, b) = (&a.rows[0], &b.rows[0]);
        if a.tokens != b.tokens || a.nfe != b.nfe {
            let first = a.tokens.iter().zip(&b.tokens).position(|(x, y)| x != y);
            bad.push(format!("{} (first differing position {first:?})", c.name));
        }
    }
    assert!(bad.is_empty(), "FP8 decodes differ between CPU and GPU: {bad:?}");
    eprintln!("FP8 end to end: tokens equal on CPU and GPU in every golden mode");
}
