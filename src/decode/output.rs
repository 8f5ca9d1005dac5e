//! What a decode call takes per row and gives back: row starts, row outputs, traces, timings,
//! and the observer a caller steers a running batch with.

use std::time::Duration;

use crate::backend::{GraphUse, Window};
use crate::cache::ForwardKind;
use crate::profile::OpStat;

/// Where a batch row starts (see [`Engine::generate_rows`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowStart {
    pub prompt: Vec<u32>,
    /// Generated ids of the blocks this row has already decoded (a whole number of blocks).
    pub done: Vec<u32>,
    /// Forwards the row has already taken part in: its sampling noise continues from there.
    pub forwards: u64,
    /// The row's sampling seed (default: the options' seed).
    pub seed: Option<u64>,
    /// The row's generation length (default: the options'; at most the options', a whole number
    /// of blocks). The quota schedule's steps per block are the options' for every row.
    pub gen_length: Option<usize>,
    /// Infilling: fixed ids after the masked middle (issue 19). Every forward attends to them
    /// like the prompt (PrefixCache runs them in each window, DualCache keeps their block-start
    /// K/V); no block covers them, so they never change. Empty: plain generation.
    pub suffix: Vec<u32>,
    /// The row's own rule and draw (default: the options'): rows of one batch may differ in
    /// them and each still decodes as it would alone (issue 19).
    pub rule: Option<super::options::RowRule>,
}

/// What one batch row produced.
#[derive(Clone, Debug, PartialEq)]
pub struct RowOutput {
    pub prompt: Vec<u32>,
    /// The G generated ids (every block decoded unless early exit filled the rest with EOS).
    pub tokens: Vec<u32>,
    /// The row's suffix as the canvas holds it after the call (infilling; empty without one).
    pub suffix: Vec<u32>,
    /// With [`super::RunOptions::logprobs`]: per generated position (as `tokens`), what the
    /// forward that committed it gave (None: committed by an earlier call, or never); empty
    /// otherwise.
    pub logprobs: Vec<Option<TokenLogprobs>>,
    /// Forwards this row took part in: what it costs when run alone.
    pub nfe: usize,
    /// Per forward: F (full canvas), P (prefix step) or D (dual step).
    pub kinds: String,
    /// Per forward: how many tokens it committed.
    pub commits: Vec<u32>,
    /// Why the row stopped without an answer: its logits were not finite (NaN or ±inf) at a
    /// forward; its tokens are then not an answer.
    pub error: Option<String>,
}

impl RowOutput {
    /// A row of `prompt` that has produced nothing yet.
    pub fn empty(prompt: Vec<u32>) -> Self {
        RowOutput {
            prompt,
            tokens: vec![],
            suffix: vec![],
            logprobs: vec![],
            nfe: 0,
            kinds: String::new(),
            commits: vec![],
            error: None,
        }
    }
}

/// A committed token's log-probability and the most likely alternatives, from the logits of the
/// forward that committed it (issue 19): conditional on every token committed before that
/// forward, as a diffusion model's probabilities are. Log-softmax over the whole vocabulary, f64.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f64,
    /// The most likely non-mask tokens at that forward, most likely first (lower id on ties).
    pub top: Vec<(u32, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardTime {
    pub kind: ForwardKind,
    /// The first forward of its block (the cache refresh, in cached modes).
    pub block_start: bool,
    /// Eager, or captured into a CUDA graph (its time includes the capture), or replayed.
    pub graph: GraphUse,
    pub ms: f64,
}

/// One forward of the batch, when tracing.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceStep {
    pub block: usize,
    pub kind: ForwardKind,
    pub window: Window,
    /// Per row: (generated-position index, token) committed by this forward.
    pub committed: Vec<Vec<(usize, u32)>>,
}

#[derive(Clone, Debug)]
pub struct Output {
    pub rows: Vec<RowOutput>,
    /// Forwards of the batch.
    pub forwards: usize,
    pub trace: Vec<TraceStep>,
    /// Wall time of the generate call (allocation, all forwards, the final read-back).
    pub elapsed: Duration,
    /// Per forward of the batch, its wall time (from the start of the forward to the end of its
    /// selection, which waits for the device).
    pub forward_ms: Vec<ForwardTime>,
    /// Per-op times with `profile`, in first-seen order.
    pub profile: Vec<(&'static str, OpStat)>,
}

/// What a caller can observe and steer while a batch decodes (`dllm serve`: streaming text block
/// by block, freeing the row of a client that went away). Every method has a do-nothing default.
pub trait DecodeObserver {
    /// Whether [`DecodeObserver::block_done`] wants the canvas: one read-back per block.
    fn wants_blocks(&self) -> bool {
        false
    }
    /// After block `block`: each row's generated ids so far (blocks `0..=block`; a finished or
    /// cancelled row's later positions may still be masks).
    fn block_done(&mut self, _block: usize, _generated: &[&[u32]]) {}
    /// Whether batch row `row` should stop now. Checked before every forward; a stopped row is
    /// not changed any more and its answer ends where it stopped.
    fn cancelled(&mut self, _row: usize) -> bool {
        false
    }
    /// Whether [`DecodeObserver::forward_done`] is wanted: every forward is then traced (one
    /// canvas read-back per forward, as `RunOptions::trace`).
    fn wants_forwards(&self) -> bool {
        false
    }
    /// After each forward: what it committed per batch row (the trace's record of it). The
    /// multi-block decoder, which decodes rows one after another, reports a row's forwards when
    /// that row is done.
    fn forward_done(&mut self, _step: &TraceStep) {}
}

/// No observer.
pub struct Quiet;
impl DecodeObserver for Quiet {}
