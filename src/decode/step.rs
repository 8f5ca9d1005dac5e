//! One decode call's steps: a block runs forwards until no row has a mask left in it; each
//! step is the forward (eager, or replayed from a captured CUDA graph), the block's logits,
//! argmax + confidence and selection on the device, then per-row bookkeeping (and, when
//! tracing, what the step committed).

use std::time::Instant;

use super::batch::{BatchPlan, RowState};
use super::engine::Engine;
use super::options::{DecodeOptions, RunOptions};
use super::output::{DecodeObserver, ForwardTime, Output, TokenLogprobs, TraceStep};
use super::policy::StepPolicy;
use super::session::Buffers;
use crate::backend::{Backend, GraphKey, GraphUse, Sampling, Select, Step, Window, NON_FINITE};
use crate::cache::ForwardKind;
use crate::error::{Error, Result};
use crate::profile::{self, Profiler};
use crate::transformer;

/// One decode call in progress.
pub struct Call<'a, B: Backend> {
    pub engine: &'a Engine<B>,
    pub opts: &'a DecodeOptions,
    pub run: RunOptions,
    pub plan: BatchPlan,
    pub policy: StepPolicy,
    /// The session's buffers: the plan's canvas and bounds are written, the rest is scratch.
    pub bufs: &'a mut Buffers<B>,
    pub rows: Vec<RowState>,
    pub bf16_probs: bool,
    /// The host canvas as the last trace saw it.
    pub before: Vec<u32>,
    pub prof: Profiler<B::Mark>,
    pub forwards: usize,
    pub trace: Vec<TraceStep>,
    pub forward_ms: Vec<ForwardTime>,
}

impl<B: Backend> Call<'_, B> {
    /// Decode block `k`: steps until no row has a mask left in it (checked before every forward,
    /// spec §8), then the observer's block and early exit.
    pub fn run_block(&mut self, k: usize, observer: &mut dyn DecodeObserver) -> Result<()> {
        let block = Window { start: self.plan.s0 + k * self.plan.window, len: self.plan.window };
        let window = self.plan.window;
        for (b, row) in self.rows.iter_mut().enumerate() {
            // a row whose generation ended before this block is done
            row.finished = row.finished || block.start >= self.plan.gen_ends[b];
            row.masks_left = if row.finished { 0 } else { window };
            row.step_in_block = 0;
        }
        let mut block_start = true;
        loop {
            for (b, row) in self.rows.iter_mut().enumerate() {
                if !row.finished && observer.cancelled(b) {
                    row.finished = true;
                    row.masks_left = 0;
                }
            }
            if !self.rows.iter().any(RowState::active) {
                break;
            }
            self.step(k, block, block_start)?;
            block_start = false;
            if let Some(t) = self.trace.last().filter(|_| observer.wants_forwards()) {
                observer.forward_done(t);
            }
        }
        self.after_block(k, block, observer)
    }

    /// One forward of the batch and its selection.
    fn step(&mut self, k: usize, block: Window, block_start: bool) -> Result<()> {
        let be = &self.engine.backend;
        let t_step = Instant::now();
        let kind = self.opts.cache.kind(block_start);
        be.range_push(kind.range_name());
        let (win, graph) = self.forward(block, block_start)?;
        let counts = self.select(block, block_start)?;
        be.range_pop();
        if self.run.profile {
            self.prof.resolve(be)?;
        }
        let ms = t_step.elapsed().as_secs_f64() * 1e3;
        self.forward_ms.push(ForwardTime { kind, block_start, graph, ms });
        self.account(k, &counts, kind)?;
        self.forwards += 1;
        if self.run.trace {
            self.trace_step(k, kind, win, block)?;
        }
        if let Some(n) = self.run.logprobs {
            self.record_logprobs(n, block)?;
        }
        Ok(())
    }

    /// What this forward's logits gave each token it committed (the trace's last step).
    fn record_logprobs(&mut self, n: usize, block: Window) -> Result<()> {
        let (Some(lp), Some(step)) = (&self.bufs.logprobs, self.trace.last()) else { return Ok(()) };
        let (ids, lps) = self.engine.backend.read_cands(lp, self.plan.batch * block.len * (n + 1))?;
        for (b, committed) in step.committed.iter().enumerate() {
            for &(pos, token) in committed {
                let o = (b * block.len + pos + self.plan.gen_start[b] - block.start) * (n + 1);
                let top = (1..=n).map(|j| (ids[o + j], lps[o + j])).filter(|t| t.0 != u32::MAX).collect();
                let rec = TokenLogprobs { token, logprob: lps[o], top };
                debug_assert_eq!(ids[o], token, "the committed token is the drawn one");
                self.rows[b].logprobs.push((pos, rec));
            }
        }
        Ok(())
    }

    /// The forward and the block's logits, through the backend's graphs: a step shape seen
    /// before over these buffers (the in-block steps of a cached mode; in a session, a block of
    /// an earlier batch of the same shape) is replayed from a captured graph.
    fn forward(&mut self, block: Window, block_start: bool) -> Result<(Window, GraphUse)> {
        let (e, cfg, be) = (self.engine, &self.engine.config, &self.engine.backend);
        let win =
            self.opts.cache.window(block_start, block.start, block.start + block.len, self.plan.canvas_len);
        let step = Step { batch: self.plan.batch, canvas: self.plan.canvas_len, win };
        let bufs = &mut *self.bufs;
        if self.run.cuda_graphs && !self.run.profile {
            let graph = be.graph_step(GraphKey::new(bufs.owner, step, block), &mut || {
                let (ws, cache) = (&mut bufs.ws, &mut bufs.cache);
                transformer::forward(be, cfg, &e.weights, ws, cache, &bufs.canvas, &bufs.bounds, step, None)?;
                transformer::block_logits(be, cfg, &e.weights, ws, step, block, None)
            })?;
            return Ok((win, graph));
        }
        let p = self.run.profile.then_some(&mut self.prof);
        transformer::forward(
            be,
            cfg,
            &e.weights,
            &mut bufs.ws,
            &mut bufs.cache,
            &bufs.canvas,
            &bufs.bounds,
            step,
            p,
        )?;
        let p = self.run.profile.then_some(&mut self.prof);
        transformer::block_logits(be, cfg, &e.weights, &mut bufs.ws, step, block, p)?;
        Ok((win, GraphUse::Eager))
    }

    /// Argmax + confidence of the block's logits, then the step's selection into the canvas;
    /// returns each row's count (the step's one read-back).
    fn select(&mut self, block: Window, block_start: bool) -> Result<Vec<u32>> {
        let (be, cfg, sp) = (&self.engine.backend, &self.engine.config, &self.engine.special);
        let active: Vec<bool> = self.rows.iter().map(RowState::active).collect();
        let counters: Vec<u64> = self.rows.iter().map(RowState::counter).collect();
        let seeds: Vec<u64> = self.rows.iter().map(|r| r.seed).collect();
        let mut rules = Vec::with_capacity(self.rows.len());
        let mut draws = Vec::with_capacity(self.rows.len());
        for r in &self.rows {
            let (rule, score) = self.policy.rule(block_start, r)?;
            rules.push(rule);
            draws.push(r.rule.draw(score));
        }
        let quota: Vec<u32> = self.rows.iter().map(|r| self.policy.quota(block_start, r)).collect();
        let sampling = Sampling {
            draws: &draws,
            seeds: &seeds,
            counters: &counters,
            mask_id: sp.mask,
            bf16_probs: self.bf16_probs,
        };
        let batch = self.plan.batch;
        let vocab_bytes = (batch * block.len * cfg.n_logits * be.dtype().size()) as f64;
        let bufs = &mut *self.bufs;
        let mut p = self.run.profile.then_some(&mut self.prof);
        profile::op(be, &mut p, "argmax + confidence", vocab_bytes, 0.0, || {
            be.argmax_confidence(&bufs.ws.logits, &bufs.bounds, block, batch, sampling, &mut bufs.cands)
        })?;
        if let (Some(n), Some(lp)) = (self.run.logprobs, bufs.logprobs.as_mut()) {
            profile::op(be, &mut p, "top logprobs", vocab_bytes, 0.0, || {
                be.top_logprobs(&bufs.ws.logits, &bufs.cands, batch * block.len, n, sp.mask, lp)
            })?;
        }
        let sel = Select { rules: &rules, active: &active, quota: &quota, mask_id: sp.mask, block };
        let mut counts = vec![];
        profile::op(be, &mut p, "select", 0.0, 0.0, || {
            counts = be.select(&mut bufs.cands, &mut bufs.canvas, self.plan.canvas_len, sel)?;
            Ok(())
        })?;
        Ok(counts)
    }

    /// Per active row: what the step committed (a row with non-finite logits ends with an error).
    fn account(&mut self, k: usize, counts: &[u32], kind: ForwardKind) -> Result<()> {
        for (row, &count) in self.rows.iter_mut().zip(counts).filter(|(r, _)| r.active()) {
            if count == NON_FINITE {
                row.out.error = Some(format!(
                    "non-finite logits (NaN or infinity) at forward {} of block {k}: the checkpoint's \
                     weights or the activations are not finite numbers",
                    row.step_in_block + 1
                ));
                row.finished = true;
                row.masks_left = 0;
                continue;
            }
            let c = count as usize;
            if c > row.masks_left {
                return Err(Error::Device(format!(
                    "select committed {c} tokens with {} masks left",
                    row.masks_left
                )));
            }
            row.masks_left -= c;
            row.committed += c;
            row.step_in_block += 1;
            row.out.nfe += 1;
            row.out.kinds.push_str(&kind.to_string());
            row.out.commits.push(count);
        }
        Ok(())
    }

    /// Record what this forward committed: the canvas read back and compared with the last.
    fn trace_step(&mut self, k: usize, kind: ForwardKind, window: Window, block: Window) -> Result<()> {
        let mut now = vec![0u32; self.before.len()];
        self.engine.backend.read_ids(&self.bufs.canvas, &mut now)?;
        let (len, before) = (self.plan.canvas_len, &self.before);
        let committed = (0..self.plan.batch)
            .map(|b| {
                (block.start..block.start + block.len)
                    .filter(|&p| now[b * len + p] != before[b * len + p])
                    .map(|p| (p - self.plan.gen_start[b], now[b * len + p]))
                    .collect()
            })
            .collect();
        self.trace.push(TraceStep { block: k, kind, window, committed });
        self.before = now;
        Ok(())
    }

    /// After a block: the observer gets each row's text so far; with early exit, a row whose
    /// block is all end tokens is done.
    fn after_block(&mut self, k: usize, block: Window, observer: &mut dyn DecodeObserver) -> Result<()> {
        let (early, wants) = (self.opts.early_exit, observer.wants_blocks());
        if !(early || wants) {
            return Ok(());
        }
        let mut host = vec![0u32; self.plan.batch * self.plan.canvas_len];
        self.engine.backend.read_ids(&self.bufs.canvas, &mut host)?;
        let end = block.start + block.len;
        if wants {
            let generated: Vec<&[u32]> =
                (0..self.plan.batch).map(|b| self.plan.generated(&host, b, end)).collect();
            observer.block_done(k, &generated);
        }
        if early {
            let stop = &self.engine.special.stop;
            for (b, row) in self.rows.iter_mut().enumerate() {
                let from = b * self.plan.canvas_len;
                let cells = &host[from + block.start..from + end.min(self.plan.gen_ends[b]).max(block.start)];
                row.finished = row.finished || cells.iter().all(|t| stop.contains(t));
            }
        }
        Ok(())
    }

    /// Read the canvas back into each row's tokens (a mask left, after early exit, reads as EOS).
    pub fn finish(mut self, t0: Instant) -> Result<Output> {
        let mut host = vec![0u32; self.plan.batch * self.plan.canvas_len];
        self.engine.backend.read_ids(&self.bufs.canvas, &mut host)?;
        let sp = &self.engine.special;
        for (b, row) in self.rows.iter_mut().enumerate() {
            let end = self.plan.gen_ends[b];
            row.out.tokens = self
                .plan
                .generated(&host, b, end)
                .iter()
                .map(|&t| if t == sp.mask { sp.eos } else { t })
                .collect();
            row.out.suffix = self.plan.suffix(&host, b).to_vec();
            if self.run.logprobs.is_some() {
                row.out.logprobs = vec![None; row.out.tokens.len()];
                for (pos, rec) in row.logprobs.drain(..) {
                    if let Some(slot) = row.out.logprobs.get_mut(pos) {
                        *slot = Some(rec);
                    }
                }
            }
        }
        Ok(Output {
            rows: self.rows.into_iter().map(|r| r.out).collect(),
            forwards: self.forwards,
            trace: self.trace,
            elapsed: t0.elapsed(),
            forward_ms: self.forward_ms,
            profile: self.prof.ops,
        })
    }
}
