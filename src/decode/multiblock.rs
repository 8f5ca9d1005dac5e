//! d3LLM's multi-block decoding (d3llm spec §5–§8), token for token as its own code decodes:
//! blocks are added when the last one's progress passes `add`, fully activated when their
//! predecessor's passes `activate`; every forward's candidates are the masks of every block up to
//! the window's end; the entropy rule commits (d3llm spec §3), and the first fully activated block
//! with masks is forced to progress. With the delayed prefix cache (§6) a decoded block enters
//! the cache `delay` iterations after it is first seen complete, strictly in order; cached
//! forwards feed everything from the cache's end to the canvas's end (the existing window
//! forward: its keys before the window are the cache), and a refresh forward rebuilds it.
//!
//! The loop is the host's: the candidates' tokens and entropies come back each forward (a few
//! KB) and the rule, forced progress and block table run here, exactly in the order of §5.3.
//! Rows decode one at a time (each exactly as alone; a batch of them shares no forward).

use std::time::Instant;

use super::engine::Engine;
use super::options::{DecodeOptions, DelayedCache, MultiBlock, Rule, RunOptions};
use super::output::{DecodeObserver, ForwardTime, Output, RowOutput, RowStart, TraceStep};
use super::session::{Buffers, Capacity};
use crate::backend::{Backend, Draw, GraphKey, GraphUse, Sampling, Score, Step, Window};
use crate::cache::ForwardKind;
use crate::error::{Error, Result};
use crate::transformer;

/// d3LLM's guard: a run stops after this many iterations (reached only when the generation is
/// not whole blocks, which dllm refuses).
const MAX_ITERATIONS: usize = 10_000;

/// One block of the table (block 0 is the prompt).
#[derive(Clone, Debug)]
struct Block {
    start: usize,
    end: usize,
    /// Masks left, as d3LLM counts them: decremented by what is written, not recounted.
    mask_count: i64,
    /// "Fully activated": forced progress applies (d3LLM's `is_complete`).
    active: bool,
    /// The iteration at which the caching scan first saw it decoded.
    completed_at: Option<usize>,
    cached: bool,
}

impl Block {
    fn progress(&self) -> f64 {
        1.0 - self.mask_count as f64 / (self.end - self.start) as f64
    }
    fn holds(&self, p: usize) -> bool {
        (self.start..self.end).contains(&p)
    }
}

/// What one row of `prompt` tokens needs of a session's buffers.
pub fn capacity(prompt: usize, opts: &DecodeOptions) -> Capacity {
    Capacity { batch: 1, canvas: prompt + opts.gen_length, window: opts.gen_length, logprobs: None }
}

/// Decode every row alone with the multi-block decoder, one after another on a session's
/// buffers (which must hold [`capacity`] of the longest prompt).
pub fn generate_rows<B: Backend>(
    engine: &Engine<B>,
    bufs: &mut Buffers<B>,
    starts: &[RowStart],
    opts: &DecodeOptions,
    mb: MultiBlock,
    run: RunOptions,
    observer: &mut dyn DecodeObserver,
) -> Result<Output> {
    let t0 = Instant::now();
    let Rule::Entropy(threshold) = opts.rule else {
        return Err(Error::options(format!(
            "multi-block decoding needs the entropy rule, not {}",
            opts.rule
        )));
    };
    let mut out = Output {
        rows: vec![],
        forwards: 0,
        trace: vec![],
        elapsed: Default::default(),
        forward_ms: vec![],
        profile: vec![],
    };
    if starts.iter().any(|s| !s.done.is_empty() || s.gen_length.is_some_and(|g| g != opts.gen_length)) {
        return Err(Error::options("multi-block decoding runs whole generations (no resumed rows)"));
    }
    for (b, start) in starts.iter().enumerate() {
        let mut row = Row::new(engine, &mut *bufs, &start.prompt, opts, mb, threshold, run)?;
        row.seed = start.seed.unwrap_or(opts.seed);
        row.decode()?;
        out.forwards += row.calls;
        out.forward_ms.append(&mut row.forward_ms);
        let first = out.trace.len();
        out.trace.extend(row.trace.drain(..).map(|mut t| {
            let mine = std::mem::take(&mut t.committed[0]);
            t.committed = (0..starts.len()).map(|i| if i == b { mine.clone() } else { vec![] }).collect();
            t
        }));
        if observer.wants_forwards() {
            out.trace[first..].iter().for_each(|t| observer.forward_done(t));
        }
        out.rows.push(row.finish());
    }
    out.elapsed = t0.elapsed();
    Ok(out)
}

/// One row's decode in progress.
struct Row<'a, 'b, B: Backend> {
    engine: &'a Engine<B>,
    mb: MultiBlock,
    threshold: f64,
    /// The draw (temperature, top-k, nucleus), scored by d3LLM's f64 entropy.
    draw: Draw,
    seed: u64,
    run: RunOptions,
    prompt_len: usize,
    block_len: usize,
    /// Blocks of the generation (`G div B`).
    n_blocks: usize,
    canvas: Vec<u32>,
    blocks: Vec<Block>,
    /// d3LLM's iteration counter (NFE as it reports it, phantom iterations included).
    nfe: usize,
    /// Positions `[0, cache_len)` whose K/V the cache holds (d3LLM's `manual_cache_length`).
    cache_len: usize,
    /// Canvas, bounds, activations, KV cache and candidates (one row of them).
    dev: &'b mut Buffers<B>,
    calls: usize,
    out: RowOutput,
    trace: Vec<TraceStep>,
    forward_ms: Vec<ForwardTime>,
}

impl<'a, 'b, B: Backend> Row<'a, 'b, B> {
    fn new(
        engine: &'a Engine<B>,
        dev: &'b mut Buffers<B>,
        prompt: &[u32],
        opts: &DecodeOptions,
        mb: MultiBlock,
        threshold: f64,
        run: RunOptions,
    ) -> Result<Self> {
        let (be, sp) = (&engine.backend, &engine.special);
        let (p, g, bl) = (prompt.len(), opts.gen_length, opts.block_length);
        let l = p + g;
        let mut canvas = prompt.to_vec();
        canvas.extend(std::iter::repeat_n(sp.mask, g));
        be.write_ids(&mut dev.bounds, &[0, l as u32])?;
        let prompt_block =
            Block { start: 0, end: p, mask_count: 0, active: true, completed_at: Some(0), cached: false };
        let first = Block {
            start: p,
            end: (p + bl).min(l),
            mask_count: ((p + bl).min(l) - p) as i64,
            active: 1.0 >= mb.activate,
            completed_at: None,
            cached: false,
        };
        let out = RowOutput::empty(prompt.to_vec());
        Ok(Row {
            engine,
            mb,
            threshold,
            draw: opts.row_rule().draw(Score::NegEntropyF64),
            seed: opts.seed,
            run,
            prompt_len: p,
            block_len: bl,
            n_blocks: g / bl,
            canvas,
            blocks: vec![prompt_block, first],
            nfe: 0,
            cache_len: 0,
            dev,
            calls: 0,
            out,
            trace: vec![],
            forward_ms: vec![],
        })
    }

    fn masks_left(&self) -> bool {
        self.canvas[self.prompt_len..].contains(&self.engine.special.mask)
    }

    /// The loop of d3llm spec §5.3 (and §6 with the cache), iteration by iteration.
    fn decode(&mut self) -> Result<()> {
        loop {
            let mask = self.engine.special.mask;
            let snapshot: Vec<bool> = self.canvas.iter().map(|&t| t == mask).collect();
            if !self.masks_left() && self.blocks.len() == self.n_blocks + 1 {
                return Ok(());
            }
            self.nfe += 1;
            let eos_found = match self.mb.early_stop {
                Some(eos) => self.early_stop(eos),
                None => false,
            };
            if eos_found && !self.masks_left() {
                return Ok(()); // a phantom iteration: counted, no forward (d3llm spec §8)
            }
            self.activate();
            if !eos_found {
                self.add_block();
            }
            let window_end = self.window_end();
            let (kind, fed) = match self.mb.cache {
                None => (ForwardKind::Full, 0),
                Some(c) => match self.cache_step(c, window_end) {
                    Some(k) => k,
                    None => return Ok(()),
                },
            };
            self.iterate(kind, fed, window_end, &snapshot)?;
            if self.out.error.is_some() || self.nfe > MAX_ITERATIONS {
                return Ok(());
            }
        }
    }

    /// Early stop (d3llm spec §7): everything after the first `eos` at or after the prompt
    /// becomes `eos` (decoded tokens too), and the block table follows. Returns whether an
    /// `eos` was found.
    fn early_stop(&mut self, eos: u32) -> bool {
        let p = self.prompt_len;
        let Some(e) = self.canvas[p..].iter().position(|&t| t == eos).map(|i| p + i) else {
            return false;
        };
        for t in &mut self.canvas[e + 1..] {
            *t = eos;
        }
        let mask = self.engine.special.mask;
        for blk in self.blocks.iter_mut().skip(1) {
            let count = if blk.start > e {
                0
            } else if blk.holds(e) {
                self.canvas[blk.start..=e].iter().filter(|&&t| t == mask).count() as i64
            } else {
                continue;
            };
            if count != blk.mask_count {
                blk.mask_count = count;
                blk.active |= count == 0;
            }
        }
        while self.blocks.len() <= self.n_blocks {
            let (start, end) = self.block_range(self.blocks.len());
            let nfe = Some(self.nfe);
            self.blocks.push(Block {
                start,
                end,
                mask_count: 0,
                active: true,
                completed_at: nfe,
                cached: true,
            });
        }
        true
    }

    /// Canvas range of generation block `j ≥ 1`.
    fn block_range(&self, j: usize) -> (usize, usize) {
        let l = self.canvas.len();
        let start = self.prompt_len + (j - 1) * self.block_len;
        (start, (start + self.block_len).min(l))
    }

    /// One pass over the created blocks in order: a block is fully activated once its
    /// predecessor's progress reaches `activate` (d3llm spec §5.2).
    fn activate(&mut self) {
        for j in 1..self.blocks.len() {
            if !self.blocks[j].active && self.blocks[j - 1].progress() >= self.mb.activate {
                self.blocks[j].active = true;
            }
        }
    }

    /// At most one block is added per iteration: when the last one's progress reaches `add` or
    /// it has no mask left (d3llm spec §5.2).
    fn add_block(&mut self) {
        let last = &self.blocks[self.blocks.len() - 1];
        if self.blocks.len() > self.n_blocks || !(last.progress() >= self.mb.add || last.mask_count == 0) {
            return;
        }
        let active = last.progress() >= self.mb.activate;
        let (start, end) = self.block_range(self.blocks.len());
        let mask = self.engine.special.mask;
        let mask_count = self.canvas[start..end].iter().filter(|&&t| t == mask).count() as i64;
        self.blocks.push(Block { start, end, mask_count, active, completed_at: None, cached: false });
    }

    /// The window's end: the end of the last block that is fully activated or has masks.
    fn window_end(&self) -> usize {
        self.blocks.iter().rev().find(|b| b.active || b.mask_count > 0).map_or(self.prompt_len, |b| b.end)
    }

    /// The cache decisions of d3llm spec §6.2 (after the window, before the forward): which
    /// blocks enter the cache, and the forward's kind and first fed position. None: stop (the
    /// first position to feed is at or past the window's end).
    fn cache_step(&mut self, c: DelayedCache, window_end: usize) -> Option<(ForwardKind, usize)> {
        let (mut to_cache_end, cache_len, nfe) = (None, self.cache_len, self.nfe);
        for blk in self.blocks.iter_mut().filter(|b| b.end > cache_len) {
            if blk.mask_count != 0 {
                break;
            }
            let delay = nfe - *blk.completed_at.get_or_insert(nfe);
            if delay >= c.delay && !blk.cached {
                blk.cached = true;
                to_cache_end = Some(blk.end);
            } else if delay < c.delay {
                break;
            }
        }
        let update = to_cache_end.map_or(0, |e| e - self.cache_len);
        let stabilizing =
            self.blocks.iter().any(|b| b.mask_count == 0 && b.completed_at.is_some() && !b.cached);
        let s = self
            .blocks
            .iter()
            .filter(|b| (b.mask_count == 0 && b.completed_at.is_some() && !b.cached) || b.mask_count > 0)
            .map(|b| b.start)
            .fold(self.cache_len, usize::min);
        if s >= window_end {
            return None;
        }
        Some(if update > 0 {
            let fed = self.cache_len;
            self.cache_len += update;
            (ForwardKind::Update, fed)
        } else if self.cache_len > 0 && !stabilizing && self.nfe % c.refresh != 0 {
            (ForwardKind::Cached, s)
        } else if self.cache_len > 0 {
            (ForwardKind::Refresh, 0)
        } else {
            (ForwardKind::Full, 0)
        })
    }

    /// The forward of one iteration and what it commits (d3llm spec §5.3 steps 8–11).
    fn iterate(&mut self, kind: ForwardKind, fed: usize, window_end: usize, snapshot: &[bool]) -> Result<()> {
        let t = Instant::now();
        let lo = self.prompt_len.max(fed);
        let cands: Vec<usize> = (self.prompt_len..window_end).filter(|&p| snapshot[p]).collect();
        if let Some(&p) = cands.iter().find(|&&p| p < lo) {
            return Err(Error::Device(format!(
                "candidate position {p} lies before the fed window [{fed}, …)"
            )));
        }
        let (tokens, scores) = self.forward(kind, fed, Window { start: lo, len: window_end - lo })?;
        if cands.iter().any(|&p| scores[p - lo].is_nan()) {
            self.out.error = Some(format!(
                "non-finite logits (NaN or infinity) at forward {}: the checkpoint's weights or the \
                 activations are not finite numbers",
                self.calls + 1
            ));
            return Ok(());
        }
        let chosen = self.choose(&cands, &scores, lo);
        let mask = self.engine.special.mask;
        let real = chosen.iter().filter(|&&p| self.canvas[p] == mask).count();
        for &p in &chosen {
            self.canvas[p] = tokens[p - lo];
        }
        self.count_written(&chosen);
        self.calls += 1;
        self.out.kinds.push_str(&kind.to_string());
        self.out.commits.push(real as u32);
        let graph = GraphUse::Eager;
        self.forward_ms.push(ForwardTime {
            kind,
            block_start: false,
            graph,
            ms: t.elapsed().as_secs_f64() * 1e3,
        });
        if self.run.trace {
            let p = self.prompt_len;
            let committed = vec![chosen.iter().map(|&q| (q - p, self.canvas[q])).collect()];
            let window = Window { start: fed, len: self.canvas.len() - fed };
            self.trace.push(TraceStep { block: self.blocks.len() - 1, kind, window, committed });
        }
        Ok(())
    }

    /// The entropy rule over the candidates, then forced progress in the first fully activated
    /// block with masks (d3llm spec §3, §5.3 step 9). Scores are −H.
    fn choose(&self, cands: &[usize], scores: &[f64], lo: usize) -> Vec<usize> {
        let h = |p: usize| -scores[p - lo];
        let mut ranked = cands.to_vec();
        ranked.sort_by(|&a, &b| h(a).total_cmp(&h(b)).then(a.cmp(&b)));
        let cap = self.mb.max_per_forward.unwrap_or(usize::MAX);
        let mut chosen: Vec<usize> = ranked
            .iter()
            .enumerate()
            .filter(|&(i, &p)| i == 0 || h(p) <= self.threshold)
            .map(|(_, &p)| p)
            .take(cap)
            .collect();
        if let Some(f) = self.blocks.iter().skip(1).find(|b| b.active && b.mask_count > 0) {
            if !chosen.iter().any(|&p| f.holds(p)) {
                // the lowest entropy in the block, the first position on ties
                let forced =
                    cands.iter().copied().filter(|&p| f.holds(p)).min_by(|&a, &b| h(a).total_cmp(&h(b)));
                chosen.extend(forced);
            }
        }
        chosen
    }

    /// Block counters after a write (d3llm spec §5.3 step 11; §6 clamps at 0 and counts every
    /// block, the no-cache loop only blocks with masks left, unclamped).
    fn count_written(&mut self, written: &[usize]) {
        let clamp = self.mb.cache.is_some();
        for blk in self.blocks.iter_mut().skip(1) {
            let n = written.iter().filter(|&&p| blk.holds(p)).count() as i64;
            if clamp {
                blk.mask_count = (blk.mask_count - n).max(0);
            } else if blk.mask_count > 0 {
                blk.mask_count -= n;
            }
        }
    }

    /// Forward `[fed, L)` against the cache's `[0, fed)` (the whole canvas when `fed` is 0) and
    /// return the argmax tokens and −H scores of the canvas rows `rows`.
    fn forward(&mut self, kind: ForwardKind, fed: usize, rows: Window) -> Result<(Vec<u32>, Vec<f64>)> {
        let (e, be, cfg) = (self.engine, &self.engine.backend, &self.engine.config);
        let l = self.canvas.len();
        be.write_ids(&mut self.dev.canvas, &self.canvas)?;
        let step = Step { batch: 1, canvas: l, win: Window { start: fed, len: l - fed } };
        be.range_push(kind.range_name());
        let d = &mut self.dev;
        let graphs = self.run.cuda_graphs && !self.run.profile;
        let key = GraphKey::new(d.owner, step, rows);
        let mut fwd = || {
            transformer::forward(
                be,
                cfg,
                &e.weights,
                &mut d.ws,
                &mut d.cache,
                &d.canvas,
                &d.bounds,
                step,
                None,
            )?;
            transformer::block_logits(be, cfg, &e.weights, &mut d.ws, step, rows, None)
        };
        if graphs {
            be.graph_step(key, &mut fwd)?;
        } else {
            fwd()?;
        }
        let sampling = Sampling {
            draws: &[self.draw],
            seeds: &[self.seed],
            counters: &[self.calls as u64],
            mask_id: e.special.mask,
            bf16_probs: false,
        };
        be.argmax_confidence(&d.ws.logits, &d.bounds, rows, 1, sampling, &mut d.cands)?;
        let got = be.read_cands(&d.cands, rows.len);
        be.range_pop();
        got
    }

    /// The row's output: the generated ids (a mask left reads as EOS), d3LLM's NFE.
    fn finish(mut self) -> RowOutput {
        let sp = &self.engine.special;
        self.out.tokens =
            self.canvas[self.prompt_len..].iter().map(|&t| if t == sp.mask { sp.eos } else { t }).collect();
        self.out.nfe = self.nfe;
        self.out
    }
}
