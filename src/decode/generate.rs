//! The Fast-dLLM block loop (spec §5) over any backend: baseline, PrefixCache and DualCache; the
//! quota, threshold and factor rules (spec §4); batches whose rows each decode exactly as they
//! would alone (spec §6).

use std::time::{Duration, Instant};

use crate::backend::{Backend, GraphUse, Rule, Sampling, Select, Step, Window};
use crate::cache::{CacheMode, KvCache};
use crate::decode::select::quota_schedule;
use crate::error::{Error, Result};
use crate::graph::{self, Profiler, Weights, Workspace};
use crate::model::{ModelConfig, ModelFiles, SpecialIds};

#[derive(Clone, Debug, PartialEq)]
pub struct DecodeOptions {
    /// G: generated positions, a multiple of `block_length`.
    pub gen_length: usize,
    pub block_length: usize,
    /// Total steps; only the quota rule uses them (steps / blocks per block), but they must
    /// divide evenly in every mode (spec §4.4).
    pub steps: usize,
    pub cache: CacheMode,
    pub rule: Rule,
    /// 0 = greedy. Above 0: Gumbel-max sampling with a counter-based RNG keyed by `seed`.
    pub temperature: f64,
    pub seed: u64,
    /// Stop a row once a whole block of it is end-of-sequence tokens (spec §5 EOS). Off by
    /// default: the reference decodes every block.
    pub early_exit: bool,
    /// Record what every forward committed (reads the canvas back after each step).
    pub trace: bool,
    /// Replay in-block steps from captured CUDA graphs (backends without graphs ignore it).
    pub cuda_graphs: bool,
    /// Time every op (marks around each, resolved per step; disables graphs).
    pub profile: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            gen_length: 128,
            block_length: 32,
            steps: 128,
            cache: CacheMode::Dual,
            rule: Rule::Threshold(0.9),
            temperature: 0.0,
            seed: 0,
            early_exit: false,
            trace: false,
            cuda_graphs: true,
            profile: false,
        }
    }
}

impl DecodeOptions {
    /// Reject options that cannot decode, naming the problem (spec §4.4, §5).
    pub fn validate(&self, cfg: &ModelConfig, prompts: &[Vec<u32>]) -> Result<()> {
        let fail = |m: String| Err(Error::options(m));
        if self.gen_length == 0 {
            return fail("gen_length must be at least 1".into());
        }
        if self.block_length == 0 {
            return fail("block_length must be at least 1".into());
        }
        if self.gen_length % self.block_length != 0 {
            return fail(format!(
                "gen_length {} is not a multiple of block_length {}",
                self.gen_length, self.block_length
            ));
        }
        let blocks = self.gen_length / self.block_length;
        if self.steps == 0 || self.steps % blocks != 0 {
            return fail(format!(
                "steps {} is not a positive multiple of the number of blocks {blocks} (gen_length / block_length)",
                self.steps
            ));
        }
        match self.rule {
            Rule::Threshold(t) if !(t > 0.0 && t <= 1.0) => {
                return fail(format!("threshold {t} is outside (0, 1]"));
            }
            Rule::Factor(f) if !(f > 0.0 && f.is_finite()) => {
                return fail(format!("factor {f} must be a positive number"));
            }
            _ => {}
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return fail(format!("temperature {} must be a finite number ≥ 0", self.temperature));
        }
        if prompts.is_empty() {
            return fail("no prompt given".into());
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return fail(format!("prompt {i} is empty"));
            }
            if p.len() + self.gen_length > cfg.max_seq_len {
                return fail(format!(
                    "prompt {i} ({} tokens) + gen_length {} = {} exceeds the model's max_sequence_length {}",
                    p.len(),
                    self.gen_length,
                    p.len() + self.gen_length,
                    cfg.max_seq_len
                ));
            }
            if let Some(t) = p.iter().find(|&&t| t as usize >= cfg.n_logits) {
                return fail(format!(
                    "prompt {i} holds token id {t}, outside the vocabulary ({})",
                    cfg.n_logits
                ));
            }
        }
        Ok(())
    }
}

/// What one batch row produced.
#[derive(Clone, Debug, PartialEq)]
pub struct RowOutput {
    pub prompt: Vec<u32>,
    /// The G generated ids (every block decoded unless early exit filled the rest with EOS).
    pub tokens: Vec<u32>,
    /// Forwards this row took part in: what it costs when run alone.
    pub nfe: usize,
    /// Per forward: F (full canvas), P (prefix step) or D (dual step).
    pub kinds: String,
    /// Per forward: how many tokens it committed.
    pub commits: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardTime {
    /// F (full canvas), P (prefix step) or D (dual step).
    pub kind: char,
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
    pub kind: char,
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
    pub profile: Vec<(&'static str, crate::graph::OpStat)>,
}

/// A model on a backend, ready to decode.
pub struct Engine<B: Backend> {
    pub backend: B,
    pub config: ModelConfig,
    pub special: SpecialIds,
    pub weights: Weights<B::Tensor>,
}

impl<B: Backend> Engine<B> {
    /// Upload the (already validated) checkpoint's weights to `backend`.
    pub fn new(backend: B, files: &ModelFiles) -> Result<Self> {
        Self::with_progress(backend, files, &mut |_, _| {})
    }

    /// An engine over weights made elsewhere (synthetic weights of `dllm bench`).
    pub fn from_parts(
        backend: B,
        config: ModelConfig,
        special: SpecialIds,
        weights: Weights<B::Tensor>,
    ) -> Self {
        Engine { backend, config, special, weights }
    }

    /// As [`Engine::new`], reporting `(layers uploaded, layers)` as the weights go to the device.
    pub fn with_progress(
        backend: B,
        files: &ModelFiles,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let weights = Weights::load(&backend, &files.checkpoint, &files.config, progress)?;
        Ok(Engine {
            backend,
            config: files.config.clone(),
            special: files.tokenizer.special.clone(),
            weights,
        })
    }

    /// Decode a batch of prompts (token ids, already templated) with Fast-dLLM.
    pub fn generate(&self, prompts: &[Vec<u32>], opts: &DecodeOptions) -> Result<Output> {
        opts.validate(&self.config, prompts)?;
        let t0 = Instant::now();
        let be = &self.backend;
        be.reset_graphs(); // this call's buffers are new
        let cfg = &self.config;
        let sp = &self.special;
        let batch = prompts.len();
        let p_max = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let canvas_len = p_max + opts.gen_length;
        let bl = opts.block_length;
        let blocks = opts.gen_length / bl;
        let steps_per_block = opts.steps / blocks;

        // Canvas: each row left-padded to the longest prompt, then G masks (spec §1, §6).
        let pads: Vec<u32> = prompts.iter().map(|p| (p_max - p.len()) as u32).collect();
        let mut host = Vec::with_capacity(batch * canvas_len);
        for p in prompts {
            host.extend(std::iter::repeat_n(sp.pad, p_max - p.len()));
            host.extend_from_slice(p);
            host.extend(std::iter::repeat_n(sp.mask, opts.gen_length));
        }

        // Everything a step touches is allocated here, once.
        let mut canvas = be.ids(batch * canvas_len)?;
        let mut pad_ids = be.ids(batch)?;
        be.write_ids(&mut canvas, &host)?;
        be.write_ids(&mut pad_ids, &pads)?;
        let mut ws = Workspace::new(be, cfg, batch, canvas_len, bl)?;
        let mut cache = KvCache::new(be, cfg, batch, canvas_len)?;
        let mut cands = be.cands(batch * bl)?;

        let seeds: Vec<u64> = vec![opts.seed; batch];
        let mut rows: Vec<RowOutput> = prompts
            .iter()
            .map(|p| RowOutput {
                prompt: p.clone(),
                tokens: vec![],
                nfe: 0,
                kinds: String::new(),
                commits: vec![],
            })
            .collect();
        let mut finished = vec![false; batch];
        let mut forwards = 0usize;
        let mut trace = Vec::new();
        let mut forward_ms = Vec::new();
        let mut prof = Profiler::default();
        let mut before = host.clone();

        for k in 0..blocks {
            let s = p_max + k * bl;
            let e = s + bl;
            let block = Window { start: s, len: bl };
            // Every generated position of this block is still masked at its start.
            let mut masks_left: Vec<usize> = finished.iter().map(|&f| if f { 0 } else { bl }).collect();
            let schedule = quota_schedule(bl, steps_per_block);
            be.reset_graphs(); // the previous block's graphs are never replayed again
            let mut step_in_block = vec![0usize; batch];
            let mut block_start = true;
            // Check first (spec §8): no forward once the block is done.
            while masks_left.iter().any(|&m| m > 0) {
                let win = opts.cache.window(block_start, s, e, canvas_len);
                let step = Step { batch, canvas: canvas_len, win };
                let kind = opts.cache.kind(block_start);
                let t_step = Instant::now();
                be.range_push(match kind {
                    'F' => "forward: full canvas",
                    'P' => "forward: prefix step",
                    _ => "forward: dual step",
                });
                // A cached mode's block-start forward runs once per block: nothing to replay.
                let replayable = !(block_start && opts.cache != CacheMode::None);
                let mut graph_use = GraphUse::Eager;
                if opts.cuda_graphs && !opts.profile && replayable {
                    let key = ((k as u64) << 42) ^ ((win.start as u64) << 21) ^ win.len as u64;
                    graph_use = be.graph_step(key, &mut || {
                        graph::forward(
                            be,
                            cfg,
                            &self.weights,
                            &mut ws,
                            &mut cache,
                            &canvas,
                            &pad_ids,
                            step,
                            None,
                        )?;
                        graph::block_logits(be, cfg, &self.weights, &mut ws, step, block, None)
                    })?;
                } else {
                    let p = opts.profile.then_some(&mut prof);
                    graph::forward(be, cfg, &self.weights, &mut ws, &mut cache, &canvas, &pad_ids, step, p)?;
                    let p = opts.profile.then_some(&mut prof);
                    graph::block_logits(be, cfg, &self.weights, &mut ws, step, block, p)?;
                }
                let active: Vec<bool> = masks_left.iter().map(|&m| m > 0).collect();
                let counters: Vec<u64> = rows.iter().map(|r| r.nfe as u64).collect();
                let sampling = Sampling {
                    temperature: opts.temperature,
                    seeds: &seeds,
                    counters: &counters,
                    mask_id: sp.mask,
                };
                let vocab_bytes = (batch * bl * cfg.n_logits * be.dtype().size()) as f64;
                let mut p = opts.profile.then_some(&mut prof);
                graph::op(be, &mut p, "argmax + confidence", vocab_bytes, 0.0, || {
                    be.argmax_confidence(&ws.logits, &pad_ids, block, batch, sampling, &mut cands)
                })?;
                let quota: Vec<u32> =
                    step_in_block.iter().map(|&i| schedule.get(i).copied().unwrap_or(1)).collect();
                let sel = Select { rule: opts.rule, active: &active, quota: &quota, mask_id: sp.mask, block };
                let mut counts = vec![];
                graph::op(be, &mut p, "select", 0.0, 0.0, || {
                    counts = be.select(&mut cands, &mut canvas, canvas_len, sel)?;
                    Ok(())
                })?;
                be.range_pop();
                if opts.profile {
                    prof.resolve(be)?;
                }
                let ms = t_step.elapsed().as_secs_f64() * 1e3;
                forward_ms.push(ForwardTime { kind, block_start, graph: graph_use, ms });
                for b in (0..batch).filter(|&b| active[b]) {
                    let c = counts[b] as usize;
                    if c > masks_left[b] {
                        return Err(Error::Device(format!(
                            "select committed {c} tokens with {} masks left",
                            masks_left[b]
                        )));
                    }
                    masks_left[b] -= c;
                    step_in_block[b] += 1;
                    rows[b].nfe += 1;
                    rows[b].kinds.push(kind);
                    rows[b].commits.push(c as u32);
                }
                forwards += 1;
                block_start = false;
                if opts.trace {
                    let mut now = vec![0u32; host.len()];
                    be.read_ids(&canvas, &mut now)?;
                    let committed = (0..batch)
                        .map(|b| {
                            (s..e)
                                .filter(|&p| now[b * canvas_len + p] != before[b * canvas_len + p])
                                .map(|p| (p - p_max, now[b * canvas_len + p]))
                                .collect()
                        })
                        .collect();
                    trace.push(TraceStep { block: k, kind, window: win, committed });
                    before = now;
                }
            }
            if opts.early_exit {
                be.read_ids(&canvas, &mut host)?;
                for (b, done) in finished.iter_mut().enumerate() {
                    let row = &host[b * canvas_len + s..b * canvas_len + e];
                    *done = *done || row.iter().all(|t| sp.stop.contains(t));
                }
                if finished.iter().all(|&f| f) {
                    break;
                }
            }
        }
        be.read_ids(&canvas, &mut host)?;
        for (b, row) in rows.iter_mut().enumerate() {
            row.tokens = host[b * canvas_len + p_max..(b + 1) * canvas_len]
                .iter()
                .map(|&t| if t == sp.mask { sp.eos } else { t })
                .collect();
        }
        Ok(Output { rows, forwards, trace, elapsed: t0.elapsed(), forward_ms, profile: prof.ops })
    }
}
