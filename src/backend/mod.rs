//! The op set the transformer graph and the decoder are written over. The CPU backend
//! ([`cpu::Cpu`]) is the reference every other backend is checked against.
//!
//! Conventions, shared by every backend:
//! - A [`Backend::Tensor`] is a row-major matrix. Activations are `[batch × window, cols]`: row
//!   `b * win.len + t` is canvas position `win.start + t` of batch row `b`. Ops take the number of
//!   rows they touch; buffers are allocated once for the largest window and reused.
//! - The KV cache of a layer is `[batch × canvas, kv_dim]`, post-RoPE keys (spec §2).
//! - A batch row `b` is left-padded by `pads[b]` tokens: its keys `< pads[b]` are masked and its
//!   positions count from its first real token (spec §6), so every row decodes exactly as it
//!   would alone. The pads buffer holds `2 × batch` ids: the left pads, then each row's end (an
//!   exclusive canvas column; the canvas length unless the row is shorter than the others, as in
//!   a continuous batch): keys from the end on are masked too.
//! - Set-up calls allocate; the ops never do (so a device step can be captured as a graph).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod rng;

pub use crate::dtype::DType;
use crate::error::Result;
use crate::model::checkpoint::TensorView;

/// The canvas rows a forward computes: queries at positions `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub start: usize,
    pub len: usize,
}

/// Shape of one forward: `batch` rows of a `canvas`-token canvas, queries in `win`.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub batch: usize,
    pub canvas: usize,
    pub win: Window,
}

impl Step {
    /// Activation rows of this step.
    pub fn rows(&self) -> usize {
        self.batch * self.win.len
    }
}

/// What identifies a captured decode step ([`Backend::graph_step`]): the buffers it runs over
/// (`owner`, unique per allocation of a decode's buffers: [`GraphKey::new_owner`]) and its
/// shape: batch rows, canvas length, query window and the rows whose logits it computes. Two
/// steps with equal keys queue the same work, so a graph captured for one replays the other,
/// in a later block or a later batch of the same shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphKey {
    pub owner: u64,
    pub batch: usize,
    pub canvas: usize,
    pub win: Window,
    pub logits: Window,
}

impl GraphKey {
    /// The key of `step` over `owner`'s buffers, computing the logits of the canvas rows
    /// `logits`.
    pub fn new(owner: u64, step: Step, logits: Window) -> Self {
        GraphKey { owner, batch: step.batch, canvas: step.canvas, win: step.win, logits }
    }

    /// A fresh owner id: graphs keyed by it never replay over another allocation's buffers.
    pub fn new_owner() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Attention geometry (GQA: query head `h` reads KV head `h / (n_heads / n_kv_heads)`, spec §2).
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// How the argmax token of a masked position is drawn (spec §4.1, §4.3), per batch row.
#[derive(Clone, Copy, Debug)]
pub struct Sampling<'a> {
    /// `[batch]`: each row's temperature, top-k / nucleus and score (rows of one batch may
    /// differ: issue 19).
    pub draws: &'a [Draw],
    /// Per batch row: the row's seed and how many forwards the row has taken part in. With the
    /// token's position inside the row and its id they key a counter-based RNG, so a row's
    /// noise is the same in any batch and on any backend.
    pub seeds: &'a [u64],
    pub counters: &'a [u64],
    /// Never drawn: committing the mask token would leave its position masked
    /// (docs/spec-notes.md).
    pub mask_id: u32,
    /// Dream with bf16 activations (spec §3): the softmax is taken in bf16, so the token is the
    /// argmax of the bf16-rounded probabilities (lowest id among equal ones) and the score is
    /// rounded to bf16.
    pub bf16_probs: bool,
}

/// One batch row's draw: greedy or Gumbel-max at a temperature, restricted to the top-k and the
/// nucleus (issue 19), and what its candidates are scored by.
///
/// The allowed set (only with temperature > 0; the greedy argmax is always in it) is every
/// non-mask token whose logit is at least a cut: the k-th highest non-mask logit (ties at the cut
/// all stay), and the lowest logit whose non-mask tokens strictly above it carry softmax mass
/// (at the temperature, over the whole vocabulary) below `top_p`. The sample is the argmax of
/// `l / T + Gumbel` over the allowed set; the score stays that of the unperturbed softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// 0 = greedy (no random numbers drawn).
    pub temperature: f64,
    /// Draw among the k highest logits only (0: no limit).
    pub top_k: u32,
    /// Draw among the nucleus of this mass only, in (0, 1] (1: no limit).
    pub top_p: f64,
    /// What the candidate's score (the value ranked and compared with a threshold) is.
    pub score: Score,
}

impl Draw {
    /// Greedy, scored by confidence.
    pub const GREEDY: Draw = Draw { temperature: 0.0, top_k: 0, top_p: 1.0, score: Score::Confidence };

    /// Whether the sample is restricted (sampling with a top-k or a nucleus).
    pub fn restricted(&self) -> bool {
        self.temperature > 0.0 && (self.top_k > 0 || self.top_p < 1.0)
    }
}

/// The per-candidate score a step ranks by (spec §4.2; Dream's entropy rule, spec §3; d3LLM's
/// entropy rule, d3llm spec §3). Every score is "higher is more certain".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Score {
    /// softmax probability of the drawn token.
    Confidence,
    /// Dream's negative entropy `Σ_v p_v · ln(p_v + 1e-10)` of the position's distribution
    /// (in bf16 op by op with `bf16_probs`).
    NegEntropy,
    /// d3LLM's negative entropy `−H = Σ_v p_v · ln(p_v + 1e-12)` of the float64 softmax, never
    /// rounded (so `H ≤ t` is `score ≥ −t`).
    NegEntropyF64,
}

/// How [`Backend::graph_step`] ran a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphUse {
    Eager,
    /// Captured into a new graph (and launched): carries the capture cost once.
    Captured,
    Replayed,
}

/// Which masked positions of the current block [`Backend::select`] commits (spec §4.4): the
/// user's rules (`decode::Rule`) and the two Dream's decoder adds (spec §3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SelectRule {
    /// The `quota[b]` most confident (the LLaDA low-confidence schedule).
    Quota,
    /// Every candidate with confidence ≥ τ, and always the most confident one.
    Threshold(f64),
    /// Fast-dLLM's factor rule, reference quirk included.
    Factor(f64),
    /// Dream's block start in cached modes (spec §3): the block's first masked position,
    /// unconditionally.
    First,
    /// Dream's uncached "+parallel" (spec §3): the top-1 always, then the next candidates while
    /// they pass τ, at most `quota[b]` in all (the step's budget).
    CappedThreshold(f64),
}

impl std::fmt::Display for SelectRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelectRule::Quota => write!(f, "quota"),
            SelectRule::Threshold(t) => write!(f, "threshold {t}"),
            SelectRule::Factor(x) => write!(f, "factor {x}"),
            SelectRule::First => write!(f, "first position"),
            SelectRule::CappedThreshold(t) => write!(f, "threshold {t} within the step budget"),
        }
    }
}

/// [`Backend::select`]'s count for a row whose candidates had non-finite logits (NaN or ±inf in a
/// row of the block's logits: [`Backend::argmax_confidence`] scores such a row NaN). Nothing of
/// that row is committed; the decoder ends it with an error. `DLLM_NONFINITE` in params.h.
pub const NON_FINITE: u32 = u32::MAX;

/// Per-step arguments of [`Backend::select`].
#[derive(Clone, Copy, Debug)]
pub struct Select<'a> {
    /// `[batch]`: each row's rule (rows of one batch may differ: issue 19).
    pub rules: &'a [SelectRule],
    /// Per batch row: false for rows that must not change (their block is done).
    pub active: &'a [bool],
    /// Per batch row: how many to commit under [`SelectRule::Quota`].
    pub quota: &'a [u32],
    pub mask_id: u32,
    /// The current block, canvas positions `[start, start + len)`.
    pub block: Window,
}

pub trait Backend {
    /// A row-major matrix in device memory.
    type Tensor;
    /// A device array of u32 (the canvas, the pads).
    type Ids;
    /// Per block position of every batch row: the drawn token and its confidence.
    type Cands;
    /// A point on the backend's timeline, for timing ops (`--profile`).
    type Mark;

    fn name(&self) -> String;
    /// The longest block (candidate window) [`Backend::select`] handles.
    fn max_block_length(&self) -> usize {
        usize::MAX
    }
    /// The activation dtype (spec §8): every op's output is rounded to it.
    fn dtype(&self) -> DType;

    // ---- set-up: the only calls that allocate
    fn tensor(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// A weight matrix from checkpoint tensors stacked along rows (e.g. q|k|v), in the
    /// activation dtype.
    fn upload(&self, parts: &[TensorView<'_>], rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// An FP8 weight matrix (issue 17, `crate::fp8`): e4m3 codes `[rows, cols]` row-major and
    /// one f32 scale per row (output channel). Errors where the device has no FP8 (CUDA: compute
    /// capability below 8.9, named in the error).
    fn upload_fp8(&self, codes: &[u8], scales: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// An FP8 activation buffer `[rows, cols]` (codes and one scale per row) for
    /// [`Backend::quantize_fp8`] to fill.
    fn tensor_fp8(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// The element type a tensor is stored in: [`DType::E4m3`] for FP8 weights and activation
    /// buffers, else the activation dtype (or, for [`Backend::upload_f32`] tables, f32).
    fn stored_dtype(&self, t: &Self::Tensor) -> DType;
    /// A matrix kept in f32 whatever the activation dtype (the RoPE tables, spec §2).
    fn upload_f32(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    fn ids(&self, len: usize) -> Result<Self::Ids>;
    fn cands(&self, len: usize) -> Result<Self::Cands>;

    // ---- transfers of small host arrays (between steps)
    fn write_ids(&self, dst: &mut Self::Ids, src: &[u32]) -> Result<()>;
    fn read_ids(&self, src: &Self::Ids, dst: &mut [u32]) -> Result<()>;

    // ---- ops of the forward (spec §2)
    /// `out[row] = table[canvas[b, p]]` for the window's rows.
    fn embed(
        &self,
        table: &Self::Tensor,
        canvas: &Self::Ids,
        step: Step,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out = round(round(x · rsqrt(mean(x²) + eps)) · w)`, the statistics in fp32.
    fn rmsnorm(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        eps: f32,
        rows: usize,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out = x · wᵀ` (`w` is `[out, in]`), fp32 accumulation, one rounding. With an FP8 `w`
    /// ([`Backend::upload_fp8`]), `x` is an FP8 buffer filled by [`Backend::quantize_fp8`] and
    /// `out[m, n] = round(Σ_k e(x[m, k]) · e(w[n, k]) · sx[m] · sw[n])` (`crate::fp8`).
    fn linear(&self, x: &Self::Tensor, w: &Self::Tensor, rows: usize, out: &mut Self::Tensor) -> Result<()>;
    /// Rotate the q and k parts of `qkv` (`[q | k | v]` per row) in fp32 by each row's position
    /// (rotate-half layout), q in place; write rotated k and v into the caches at the window's
    /// canvas rows.
    #[allow(clippy::too_many_arguments)]
    fn rope_store_kv(
        &self,
        qkv: &mut Self::Tensor,
        cos: &Self::Tensor,
        sin: &Self::Tensor,
        pads: &Self::Ids,
        step: Step,
        heads: Heads,
        k_cache: &mut Self::Tensor,
        v_cache: &mut Self::Tensor,
    ) -> Result<()>;
    /// Bidirectional attention of the window's queries (the q part of `qkv`) over the canvas keys
    /// `[pads[b], pads[batch + b])` of their batch row; scale 1/sqrt(head_dim).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        qkv: &Self::Tensor,
        k_cache: &Self::Tensor,
        v_cache: &Self::Tensor,
        pads: &Self::Ids,
        step: Step,
        heads: Heads,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// Per row `r < rows` of `x` (activation dtype, `[rows, k]`): `sx[r] = absmax / 448` and the
    /// e4m3 codes of `x[r] / sx[r]` into the FP8 buffer `out` (`crate::fp8::quantize_row`,
    /// bit-exact on every backend).
    fn quantize_fp8(&self, x: &Self::Tensor, rows: usize, out: &mut Self::Tensor) -> Result<()>;
    /// `out = silu(gate) · up` with `gate_up = [gate | up]` per row.
    fn swiglu(&self, gate_up: &Self::Tensor, rows: usize, out: &mut Self::Tensor) -> Result<()>;
    /// `h += x` (the residual).
    fn add(&self, h: &mut Self::Tensor, x: &Self::Tensor, rows: usize) -> Result<()>;
    /// `h += x`, then `out = rmsnorm(h)`: every residual add but the last is followed by the
    /// next norm. Defined as exactly those two ops (the CPU twin); a backend may fuse them into one
    /// pass as long as the results stay bit-identical (the CUDA kernel does: one launch fewer).
    #[allow(clippy::too_many_arguments)]
    fn add_rmsnorm(
        &self,
        h: &mut Self::Tensor,
        x: &Self::Tensor,
        w: &Self::Tensor,
        eps: f32,
        rows: usize,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.add(h, x, rows)?;
        self.rmsnorm(h, w, eps, rows, out)
    }
    /// `x[r] += bias` for every row `r < rows` (`bias` is `[1, cols]`): Dream's q/k/v biases.
    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Tensor, rows: usize) -> Result<()>;
    /// Copy the rows that predict the block's positions out of the window's activations: `out`
    /// is `[batch × block.len, cols]`. Unshifted (LLaDA), position p reads its own row; shifted
    /// (Dream, spec §3), it reads row p − 1, except the window's first position, which reads
    /// itself.
    fn gather_block(
        &self,
        h: &Self::Tensor,
        step: Step,
        block: Window,
        shift: bool,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    // ---- decoding (spec §4)
    /// Per logits row: the token (argmax, lowest id on ties; with temperature, argmax of the
    /// Gumbel-perturbed logits over the row's allowed set, [`Draw`]) and its score (the row's
    /// [`Draw::score`] of the unperturbed softmax, wide; NaN when the row holds any non-finite
    /// logit).
    /// Rows are `[batch × block.len]`; `pads` give each row's positions for the noise keys.
    fn argmax_confidence(
        &self,
        logits: &Self::Tensor,
        pads: &Self::Ids,
        block: Window,
        batch: usize,
        sampling: Sampling<'_>,
        out: &mut Self::Cands,
    ) -> Result<()>;
    /// Reveal-time log-probabilities (issue 19): per logits row `r` of `rows`, the drawn token
    /// (`drawn`'s token r) and the `n` most likely non-mask tokens (logit descending, lower id
    /// first on ties), each with its log-softmax over the whole vocabulary in f64. `out` holds
    /// `[rows × (1 + n)]` (ids, log-probabilities), the drawn token first; read it with
    /// [`Backend::read_cands`]. Fewer than n non-mask tokens: the rest is (u32::MAX, −inf). A
    /// row holding a non-finite logit gets NaN. Errors: shapes.
    fn top_logprobs(
        &self,
        logits: &Self::Tensor,
        drawn: &Self::Cands,
        rows: usize,
        n: usize,
        mask_id: u32,
        out: &mut Self::Cands,
    ) -> Result<()>;
    /// Commit tokens into the canvas by each row's `sel.rules[b]` among its masked block
    /// positions; returns how many each row committed (the one small read-back of a step), or
    /// [`NON_FINITE`] for a row with a NaN score among its candidates (nothing committed).
    fn select(
        &self,
        cands: &mut Self::Cands,
        canvas: &mut Self::Ids,
        canvas_len: usize,
        sel: Select<'_>,
    ) -> Result<Vec<u32>>;

    // ---- measurement (bench, profile) and synthetic weights
    /// Record a point on the timeline after the work queued so far.
    fn mark(&self) -> Result<Self::Mark>;
    /// Milliseconds between two marks (waits for the second).
    fn elapsed_ms(&self, from: &Self::Mark, to: &Self::Mark) -> Result<f64>;
    /// Wait for all queued work.
    fn synchronize(&self) -> Result<()>;
    /// `dst = src` (same shape and dtype): the bandwidth probe of `dllm bench`.
    fn copy(&self, src: &Self::Tensor, dst: &mut Self::Tensor) -> Result<()>;
    /// Bytes one element of a tensor occupies (the CPU keeps every dtype widened to f32).
    fn stored_size(&self) -> usize {
        self.dtype().size()
    }
    /// Bytes one entry of [`Backend::cands`] occupies (the drawn token, its score, and the
    /// per-row arguments the selection kernels read).
    fn cand_bytes(&self) -> usize;
    /// Fill with seeded uniform values in `[offset − scale, offset + scale]`, generated on the
    /// device (synthetic weights without a file). Element i is a pure function of (seed, i),
    /// identical on every backend.
    fn fill_random(&self, t: &mut Self::Tensor, seed: u64, offset: f32, scale: f32) -> Result<()>;
    /// One line per one-time tuning decision taken so far (the CUDA backend's GEMM algorithms).
    fn tuning_report(&self) -> Vec<String> {
        vec![]
    }
    /// Open / close a named range for timeline profilers (NVTX on CUDA); no-op by default.
    /// Device memory in use, bytes (CUDA: the whole GPU's, as the driver reports it; None where
    /// the backend has no device memory of its own).
    fn memory_used(&self) -> Option<u64> {
        None
    }
    fn range_push(&self, _name: &str) {}
    fn range_pop(&self) {}
    /// Run `step`, which queues the same work every time it is called with the same `key`
    /// (same buffers, same shapes), through a captured CUDA graph on backends that have them:
    /// captured on first use, replayed after. The default just runs it.
    fn graph_step(&self, _key: GraphKey, step: &mut dyn FnMut() -> Result<()>) -> Result<GraphUse> {
        step()?;
        Ok(GraphUse::Eager)
    }
    /// Forget captured graphs (an owner's buffers are about to be freed).
    fn reset_graphs(&self) {}

    // ---- host views, for tests and debugging (they synchronise)
    /// A matrix in the activation dtype from f32 host values (rounded to it).
    fn tensor_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// The first `rows` rows of a matrix, widened to f32.
    fn to_host(&self, t: &Self::Tensor, rows: usize) -> Result<Vec<f32>>;
    /// The first `len` drawn tokens and confidences.
    fn read_cands(&self, c: &Self::Cands, len: usize) -> Result<(Vec<u32>, Vec<f64>)>;
}
