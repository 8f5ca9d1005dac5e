//! A decode session (issue 19): the device buffers of a batch — canvas, bounds, activations, KV
//! cache, candidates, logprobs — allocated once for a [`Capacity`] and reused by every call, with
//! the CUDA graphs captured over them. `dllm serve` keeps one session for its whole life: rows
//! join and leave at block boundaries and every block is a call on the same buffers, so nothing
//! is allocated per block, device memory stays flat, and a step shape seen before (in a later
//! block or a later batch of the same shape) replays its graph. A one-shot call
//! ([`Engine::generate_rows`]) is a session sized to its batch.
//!
//! Nothing is carried between calls but the allocation: every block starts with a forward over
//! the whole canvas (spec §5), which rewrites the KV cache of every row and column the block
//! attends to, so a call never reads what an earlier call left.

use std::time::Instant;

use super::batch::{BatchPlan, RowState};
use super::engine::Engine;
use super::multiblock;
use super::options::{DecodeOptions, Decoder, RunOptions};
use super::output::{DecodeObserver, Output, RowStart};
use super::policy::StepPolicy;
use super::step::Call;
use crate::backend::{Backend, DType, GraphKey};
use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::model::{Arch, ModelConfig};
use crate::profile::Profiler;
use crate::transformer::Workspace;

/// The largest batch a session's buffers hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Batch rows.
    pub batch: usize,
    /// Canvas columns (tokens) per row: the widest batch's left pad + prompt + generation +
    /// suffix, as [`BatchPlan`] lays it out.
    pub canvas: usize,
    /// Positions of one block window ([`DecodeOptions::window_len`]).
    pub window: usize,
    /// Reveal-time logprob alternatives per position (None: logprobs are not recorded).
    pub logprobs: Option<usize>,
}

impl Capacity {
    /// Exactly what `plan` needs.
    pub fn of(plan: &BatchPlan, logprobs: Option<usize>) -> Self {
        Capacity { batch: plan.batch, canvas: plan.canvas_len, window: plan.window, logprobs }
    }

    /// Bytes of the buffers a session of this capacity allocates, for a model `cfg` whose
    /// activations take `elem` bytes per value ([`Backend::stored_size`]) and candidates `cand`
    /// bytes per entry ([`Backend::cand_bytes`]). With `R = batch × canvas` and
    /// `W = batch × window`:
    ///
    /// - KV cache: `2 · n_layers · R · kv_dim · elem`;
    /// - canvas activations: `R · (4 · d_model + qkv_dim + 3 · mlp_hidden) · elem`;
    /// - FP8 inputs (FP8 models): `R · (d_model + n_heads · head_dim + mlp_hidden + 12)`;
    /// - block rows and logits: `W · (2 · d_model + n_logits) · elem`;
    /// - canvas ids and bounds: `4 · (R + 2 · batch)`;
    /// - candidates (and logprobs, `n + 1` per position): `W · cand · (1 + (n + 1))`.
    pub fn bytes(&self, cfg: &ModelConfig, elem: usize, cand: usize) -> u64 {
        let r = (self.batch * self.canvas) as u64;
        let w = (self.batch * self.window) as u64;
        let (elem, cand) = (elem as u64, cand as u64);
        let (d, mlp) = (cfg.d_model as u64, cfg.mlp_hidden as u64);
        let kv = 2 * cfg.n_layers as u64 * r * cfg.kv_dim() as u64 * elem;
        let acts = r * (4 * d + cfg.qkv_dim() as u64 + 3 * mlp) * elem;
        let fp8 = match cfg.quantization {
            Some(_) => r * (d + (cfg.n_heads * cfg.head_dim) as u64 + mlp + 3 * 4),
            None => 0,
        };
        let block = w * (2 * d + cfg.n_logits as u64) * elem;
        let ids = 4 * (r + 2 * self.batch as u64);
        let cands = w * cand * (1 + self.logprobs.map_or(0, |n| n as u64 + 1));
        kv + acts + fp8 + block + ids + cands
    }

    /// Whether a batch needing `need` fits; else the error names the first dimension it exceeds.
    fn fits(&self, need: Capacity) -> Result<()> {
        let alts = |c: &Capacity| c.logprobs.map_or(0, |n| n + 1);
        let needs = [
            ("batch rows", need.batch, self.batch),
            ("canvas columns", need.canvas, self.canvas),
            ("block window", need.window, self.window),
            ("logprob alternatives", alts(&need), alts(self)),
        ];
        match needs.iter().find(|(_, need, have)| need > have) {
            Some((what, need, have)) => {
                Err(Error::options(format!("the batch needs {need} {what}; the decode session holds {have}")))
            }
            None => Ok(()),
        }
    }
}

/// Everything a step touches on the device, allocated once per session.
pub struct Buffers<B: Backend> {
    /// What its captured graphs are keyed by ([`GraphKey::owner`]).
    pub owner: u64,
    pub canvas: B::Ids,
    /// The kernels' `pads`: left pads, then row ends ([`BatchPlan::bounds`]).
    pub bounds: B::Ids,
    pub ws: Workspace<B::Tensor>,
    pub cache: KvCache<B::Tensor>,
    pub cands: B::Cands,
    /// Reveal-time logprobs: `[batch × block × (1 + n)]` (ids, log-probabilities).
    pub logprobs: Option<B::Cands>,
}

impl<B: Backend> Buffers<B> {
    pub(super) fn new(be: &B, cfg: &ModelConfig, cap: Capacity) -> Result<Self> {
        let (rows, brows) = (cap.batch * cap.canvas, cap.batch * cap.window);
        Ok(Buffers {
            owner: GraphKey::new_owner(),
            canvas: be.ids(rows)?,
            bounds: be.ids(2 * cap.batch)?,
            ws: Workspace::new(be, cfg, cap.batch, cap.canvas, cap.window)?,
            cache: KvCache::new(be, cfg, cap.batch, cap.canvas)?,
            cands: be.cands(brows)?,
            logprobs: cap.logprobs.map(|n| be.cands(brows * (n + 1))).transpose()?,
        })
    }
}

/// A model's decode buffers for batches up to a [`Capacity`], reused call after call.
pub struct Session<'e, B: Backend> {
    engine: &'e Engine<B>,
    cap: Capacity,
    bufs: Buffers<B>,
}

impl<'e, B: Backend> Session<'e, B> {
    /// Allocate the buffers of `cap` on the engine's backend (errors: out of device memory,
    /// named by the backend).
    pub fn new(engine: &'e Engine<B>, cap: Capacity) -> Result<Self> {
        let bufs = Buffers::new(&engine.backend, &engine.config, cap)?;
        Ok(Session { engine, cap, bufs })
    }

    /// Bytes its buffers take ([`Capacity::bytes`]).
    pub fn bytes(&self) -> u64 {
        let be = &self.engine.backend;
        self.cap.bytes(&self.engine.config, be.stored_size(), be.cand_bytes())
    }

    /// [`Engine::generate_rows`] on this session's buffers: at most `max_blocks` more blocks of
    /// each row. Errors as it does, and with [`Error::Options`] naming the dimension (batch rows,
    /// canvas columns, block window, logprob alternatives) a batch needs beyond the capacity.
    /// The multi-block decoder runs its rows one at a time, each a batch of one whose window is
    /// its whole generation.
    pub fn decode(
        &mut self,
        starts: &[RowStart],
        opts: &DecodeOptions,
        run: RunOptions,
        max_blocks: usize,
        observer: &mut dyn DecodeObserver,
    ) -> Result<Output> {
        let t0 = Instant::now();
        let run = run.for_observer(observer);
        let plan = self.engine.plan(starts, opts, max_blocks)?;
        if let Decoder::MultiBlock(mb) = opts.decoder {
            if run.logprobs.is_some() {
                return Err(Error::options("logprobs need the block loop, not multi-block decoding"));
            }
            let longest = starts.iter().map(|s| s.prompt.len()).max().unwrap_or(0);
            self.cap.fits(multiblock::capacity(longest, opts))?;
            return multiblock::generate_rows(self.engine, &mut self.bufs, starts, opts, mb, run, observer);
        }
        self.cap.fits(Capacity::of(&plan, run.logprobs))?;
        self.run(plan, starts, opts, run, observer, t0)
    }

    /// The block loop of a checked plan: write its canvas and bounds, then each block's steps.
    fn run(
        &mut self,
        plan: BatchPlan,
        starts: &[RowStart],
        opts: &DecodeOptions,
        run: RunOptions,
        observer: &mut dyn DecodeObserver,
        t0: Instant,
    ) -> Result<Output> {
        let (e, be) = (self.engine, &self.engine.backend);
        be.write_ids(&mut self.bufs.canvas, &plan.canvas)?;
        be.write_ids(&mut self.bufs.bounds, &plan.bounds)?;
        let bf16_probs = e.config.arch == Arch::Dream && be.dtype() == DType::Bf16;
        let policy = StepPolicy::new(opts, e.config.arch, plan.window, plan.steps_per_block, bf16_probs);
        let mut call = Call {
            engine: e,
            opts,
            run,
            policy,
            bufs: &mut self.bufs,
            rows: starts.iter().map(|r| RowState::new(r, opts)).collect(),
            bf16_probs,
            before: plan.canvas.clone(),
            plan,
            prof: Profiler::default(),
            forwards: 0,
            trace: vec![],
            forward_ms: vec![],
        };
        for k in 0..call.plan.blocks {
            call.run_block(k, observer)?;
            if call.rows.iter().all(|r| r.finished) {
                break;
            }
        }
        call.finish(t0)
    }
}

impl<B: Backend> Drop for Session<'_, B> {
    /// Its graphs replay over its buffers only: dropped with them.
    fn drop(&mut self) {
        self.engine.backend.reset_graphs();
    }
}
