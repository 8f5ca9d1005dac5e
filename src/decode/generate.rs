//! The Fast-dLLM block loop (spec §5) over any backend: baseline, PrefixCache and DualCache; the
//! quota, threshold and factor rules (spec §4); batches whose rows each decode exactly as they
//! would alone (spec §6). Dream runs the same loop with its own rules (spec §3): the block's first
//! token committed unconditionally at a cached block start, the entropy schedule where LLaDA has
//! its quota, and an uncached baseline over the whole generation as one window.

use std::time::{Duration, Instant};

use crate::backend::{Backend, DType, GraphUse, Rule, Sampling, Score, Select, Step, Window, NON_FINITE};
use crate::cache::{CacheMode, KvCache};
use crate::decode::select::quota_schedule;
use crate::error::{Error, Result};
use crate::graph::{self, Profiler, Weights, Workspace};
use crate::model::{Arch, ModelConfig, ModelFiles, SpecialIds};

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

/// A seed nobody chose, for a sampling run that gives none: OS randomness (the keys of std's
/// hasher) mixed with the clock, 53 bits so that it survives a JSON number in any client. Report
/// it, so the run can be reproduced.
pub fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    h.finish() >> 11
}

impl DecodeOptions {
    /// Positions one block window covers: `block_length`, or the whole generation for Dream's
    /// uncached baseline, which has no blocks (spec §3).
    pub fn window_len(&self, arch: Arch) -> usize {
        if self.blockless(arch) {
            self.gen_length
        } else {
            self.block_length
        }
    }

    /// Whether `steps` changes anything: the quota rule (LLaDA's schedule, Dream's entropy
    /// schedule) and Dream's uncached threshold (its per-step budget, spec §3).
    pub fn uses_steps(&self, arch: Arch) -> bool {
        self.rule == Rule::Quota || self.blockless(arch)
    }

    /// Dream's uncached baseline: the whole generation is one window, `block_length` does not
    /// apply (spec §3).
    pub fn blockless(&self, arch: Arch) -> bool {
        arch == Arch::Dream && self.cache == CacheMode::None
    }

    /// Reject options or prompts that cannot decode, naming the problem (spec §4.4, §5).
    pub fn validate(&self, cfg: &ModelConfig, prompts: &[Vec<u32>]) -> Result<()> {
        self.validate_options(cfg)?;
        if prompts.is_empty() {
            return Err(Error::options("no prompt given"));
        }
        let gens = vec![self.gen_length; prompts.len()];
        self.validate_prompts(cfg, prompts, &gens)
    }

    /// The options alone, for `cfg`'s family.
    fn validate_options(&self, cfg: &ModelConfig) -> Result<()> {
        let fail = |m: String| Err(Error::options(m));
        if self.gen_length == 0 {
            return fail("gen_length must be at least 1".into());
        }
        if self.block_length == 0 {
            return fail("block_length must be at least 1".into());
        }
        if self.blockless(cfg.arch) {
            if self.steps == 0 {
                return fail("steps must be at least 1".into());
            }
        } else {
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
        if cfg.arch == Arch::Dream {
            self.validate_dream()?;
        }
        Ok(())
    }

    /// Each prompt against the model and its own generation length.
    fn validate_prompts(&self, cfg: &ModelConfig, prompts: &[Vec<u32>], gens: &[usize]) -> Result<()> {
        let fail = |m: String| Err(Error::options(m));
        for (i, (p, &g)) in prompts.iter().zip(gens).enumerate() {
            if p.is_empty() {
                return fail(format!("prompt {i} is empty"));
            }
            if p.len() + g > cfg.max_seq_len {
                return fail(format!(
                    "prompt {i} ({} tokens) + gen_length {g} = {} exceeds the model's max_sequence_length {}",
                    p.len(),
                    p.len() + g,
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

impl DecodeOptions {
    /// Dream's own constraints, on top of the common ones (spec §3): the factor rule and sampling
    /// are LLaDA-only in dllm.
    fn validate_dream(&self) -> Result<()> {
        let fail = |m: String| Err(Error::options(m));
        match self.rule {
            Rule::Factor(_) => {
                return fail(
                    "the factor rule is not defined for Dream (spec §3): use --threshold or --quota".into(),
                )
            }
            Rule::First | Rule::CappedThreshold(_) => {
                return fail(format!("rule {} is internal to the decoder", self.rule))
            }
            _ => {}
        }
        if self.temperature != 0.0 {
            return fail("temperature > 0 is not supported for Dream yet: greedy decoding only".into());
        }
        if self.cache == CacheMode::None {
            if matches!(self.rule, Rule::Threshold(_)) && self.gen_length % self.steps != 0 {
                return fail(format!(
                    "Dream's uncached threshold mode needs gen_length {} to be a multiple of steps {} (spec §3)",
                    self.gen_length, self.steps
                ));
            }
        } else if self.rule == Rule::Quota && self.steps / (self.gen_length / self.block_length) < 2 {
            return fail(format!(
                "Dream's entropy schedule needs at least 2 steps per block (got {}): with 1 the reference leaves masks behind (spec §3)",
                self.steps / (self.gen_length / self.block_length)
            ));
        }
        Ok(())
    }
}

/// `torch.linspace(start, end, n)` in f32, bit for bit as PyTorch computes it (its vectorised CPU
/// kernel and its CUDA kernel): `step = (end − start) / (n − 1)`, then from both ends towards the
/// middle, each element **one** fused multiply-add, `fma(step, i, start)` for `i < n / 2` and
/// `fma(−step, n − 1 − i, end)` after. Two roundings (`start + step · i`) differ by an ulp at some
/// `i`, enough to move Dream's step counts (pinned in the tests with PyTorch's own values).
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(
            |i| {
                if i < half {
                    step.mul_add(i as f32, start)
                } else {
                    (-step).mul_add((n - i - 1) as f32, end)
                }
            },
        )
        .collect()
}

/// Dream's timestep rule (spec §3): at step `i` of `steps`, with `masks` left, commit
/// `int(masks · (1 − ts[i+1]/ts[i]))` for `ts = linspace(1, 1e-3, steps + 1)` in f32, and every
/// remaining mask at the last step.
pub fn dream_step_count(masks: usize, i: usize, steps: usize) -> u32 {
    if i + 1 >= steps {
        return masks as u32;
    }
    let ts = linspace_f32(1.0, 1e-3, steps + 1);
    (masks as f32 * (1.0 - ts[i + 1] / ts[i])) as u32
}

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
    /// Why the row stopped without an answer: its logits were not finite (NaN or ±inf) at a
    /// forward; its tokens are then not an answer.
    pub error: Option<String>,
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

/// What a caller can observe and steer while a batch decodes (`dllm serve`: streaming text block
/// by block, freeing the row of a client that went away). Every method has a do-nothing default.
pub trait Progress {
    /// Whether [`Progress::block_done`] wants the canvas: one read-back per block.
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
}

/// No observer.
pub struct Quiet;
impl Progress for Quiet {}

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
        self.generate_with(prompts, opts, &mut Quiet)
    }

    /// [`Engine::generate`] with an observer of each block and of cancellations. Errors with
    /// [`Error::NonFinite`] when a row's logits were not finite.
    pub fn generate_with(
        &self,
        prompts: &[Vec<u32>],
        opts: &DecodeOptions,
        progress: &mut dyn Progress,
    ) -> Result<Output> {
        let rows: Vec<RowStart> =
            prompts.iter().map(|p| RowStart { prompt: p.clone(), ..RowStart::default() }).collect();
        let out = self.generate_rows(&rows, opts, usize::MAX, progress)?;
        match out.rows.iter().enumerate().find_map(|(i, r)| r.error.as_ref().map(|e| (i, e))) {
            Some((i, e)) => Err(Error::NonFinite(format!("prompt {i}: {e}"))),
            None => Ok(out),
        }
    }

    /// Decode rows that may already have finished some blocks, at most `max_blocks` more blocks
    /// each: the continuous batch of `dllm serve` resumes its rows between blocks, adding and
    /// removing rows at block boundaries. Each row's current block is aligned at one canvas
    /// column by left padding; a row with fewer blocks left ends before the canvas does (its
    /// later keys are masked), so every row decodes exactly as it would alone.
    pub fn generate_rows(
        &self,
        starts: &[RowStart],
        opts: &DecodeOptions,
        max_blocks: usize,
        progress: &mut dyn Progress,
    ) -> Result<Output> {
        let prompts: Vec<Vec<u32>> = starts.iter().map(|r| r.prompt.clone()).collect();
        opts.validate_options(&self.config)?;
        if starts.is_empty() {
            return Err(Error::options("no prompt given"));
        }
        let gens: Vec<usize> = starts.iter().map(|r| r.gen_length.unwrap_or(opts.gen_length)).collect();
        opts.validate_prompts(&self.config, &prompts, &gens)?;
        let t0 = Instant::now();
        let be = &self.backend;
        let cfg = &self.config;
        let sp = &self.special;
        let batch = starts.len();
        let dream = cfg.arch == Arch::Dream;
        let bl = opts.window_len(cfg.arch);
        let blocks = opts.gen_length / bl;
        let steps_per_block = opts.steps / blocks;
        for (i, (r, &g)) in starts.iter().zip(&gens).enumerate() {
            if g % bl != 0 || g > opts.gen_length || (bl == opts.gen_length && g != bl) {
                return Err(Error::options(format!(
                    "row {i}: gen_length {g} must be a multiple of the block ({bl}) and at most the batch's {}",
                    opts.gen_length
                )));
            }
            if r.done.len() % bl != 0 || r.done.len() >= g {
                return Err(Error::options(format!(
                    "row {i}: {} generated ids already done is not a whole number of blocks below gen_length {g}",
                    r.done.len(),
                )));
            }
        }
        // Each row: [left pad | prompt | done blocks | current block … its end | right pad].
        let prefix = |r: &RowStart| r.prompt.len() + r.done.len();
        let s0 = starts.iter().map(prefix).max().unwrap_or(0);
        let remaining: Vec<usize> = starts.iter().zip(&gens).map(|(r, &g)| g - r.done.len()).collect();
        let canvas_len = s0 + remaining.iter().copied().max().unwrap_or(0);
        let ends: Vec<usize> = remaining.iter().map(|&n| s0 + n).collect();
        // Column of each row's first generated position.
        let gen_start: Vec<usize> = starts.iter().map(|r| s0 - r.done.len()).collect();
        let blocks_to_run = (remaining.iter().copied().max().unwrap_or(0) / bl).min(max_blocks);
        // Dream compares its bf16 confidences with bf16(τ) (spec §3).
        let bf16_probs = dream && be.dtype() == DType::Bf16;
        let tau = |t: f64| if bf16_probs { half::bf16::from_f32(t as f32).to_f64() } else { t };
        if bl > be.max_block_length() {
            return Err(Error::options(format!(
                "{} {bl} is above the {} backend's longest block ({}){}",
                if bl == opts.gen_length && dream {
                    "gen_length (Dream's uncached window)"
                } else {
                    "block_length"
                },
                be.name(),
                be.max_block_length(),
                if dream { ": use --cache prefix or dual, or a shorter generation" } else { "" }
            )));
        }

        // Canvas: each row left-padded so that its current block starts at s0, then its remaining
        // masks, then right padding up to the longest row (spec §1, §6).
        let mut pads: Vec<u32> = starts.iter().map(|r| (s0 - prefix(r)) as u32).collect();
        pads.extend(ends.iter().map(|&e| e as u32));
        let mut host = Vec::with_capacity(batch * canvas_len);
        for (r, &n) in starts.iter().zip(&remaining) {
            host.extend(std::iter::repeat_n(sp.pad, s0 - prefix(r)));
            host.extend_from_slice(&r.prompt);
            host.extend_from_slice(&r.done);
            host.extend(std::iter::repeat_n(sp.mask, n));
            host.extend(std::iter::repeat_n(sp.pad, canvas_len - s0 - n));
        }

        // Everything a step touches is allocated here, once.
        let mut canvas = be.ids(batch * canvas_len)?;
        let mut pad_ids = be.ids(2 * batch)?;
        be.write_ids(&mut canvas, &host)?;
        be.write_ids(&mut pad_ids, &pads)?;
        let mut ws = Workspace::new(be, cfg, batch, canvas_len, bl)?;
        let mut cache = KvCache::new(be, cfg, batch, canvas_len)?;
        let mut cands = be.cands(batch * bl)?;

        let seeds: Vec<u64> = starts.iter().map(|r| r.seed.unwrap_or(opts.seed)).collect();
        let mut rows: Vec<RowOutput> = starts
            .iter()
            .map(|r| RowOutput {
                prompt: r.prompt.clone(),
                tokens: vec![],
                nfe: 0,
                kinds: String::new(),
                commits: vec![],
                error: None,
            })
            .collect();
        let mut finished = vec![false; batch];
        // Dream's uncached threshold budget: tokens committed so far per row (spec §3).
        let mut committed = vec![0usize; batch];
        let mut forwards = 0usize;
        let mut trace = Vec::new();
        let mut forward_ms = Vec::new();
        let mut prof = Profiler::default();
        let mut before = host.clone();

        for k in 0..blocks_to_run {
            let s = s0 + k * bl;
            let e = s + bl;
            let block = Window { start: s, len: bl };
            // A row whose generation ended before this block is done.
            for (b, f) in finished.iter_mut().enumerate() {
                *f = *f || s >= ends[b];
            }
            // Every generated position of this block is still masked at its start.
            let mut masks_left: Vec<usize> = finished.iter().map(|&f| if f { 0 } else { bl }).collect();
            let schedule = quota_schedule(bl, steps_per_block);
            // Graphs bake in this call's buffers and this block's window: none is reused later.
            be.reset_graphs();
            let mut step_in_block = vec![0usize; batch];
            let mut block_start = true;
            // Check first (spec §8): no forward once the block is done.
            loop {
                for b in 0..batch {
                    if !finished[b] && progress.cancelled(b) {
                        finished[b] = true;
                        masks_left[b] = 0;
                    }
                }
                if masks_left.iter().all(|&m| m == 0) {
                    break;
                }
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
                let counters: Vec<u64> =
                    rows.iter().zip(starts).map(|(r, st)| st.forwards + r.nfe as u64).collect();
                // The step's rule, what it ranks by, and each row's quota.
                let (rule, score, quota): (Rule, Score, Vec<u32>) = match (dream, opts.rule) {
                    (false, rule) => {
                        let q =
                            step_in_block.iter().map(|&i| schedule.get(i).copied().unwrap_or(1)).collect();
                        (rule, Score::Confidence, q)
                    }
                    (true, _) if block_start && opts.cache != CacheMode::None => {
                        (Rule::First, Score::Confidence, vec![1; batch])
                    }
                    (true, Rule::Quota) => {
                        let q = (0..batch)
                            .map(|b| dream_step_count(masks_left[b], step_in_block[b], steps_per_block))
                            .collect();
                        (Rule::Quota, Score::NegEntropy, q)
                    }
                    (true, Rule::Threshold(t)) if opts.cache == CacheMode::None => {
                        let per_step = opts.gen_length / opts.steps;
                        let q = (0..batch)
                            .map(|b| {
                                ((step_in_block[b] + 1).min(opts.steps) * per_step - committed[b]) as u32
                            })
                            .collect();
                        (Rule::CappedThreshold(tau(t)), Score::Confidence, q)
                    }
                    (true, Rule::Threshold(t)) => {
                        (Rule::Threshold(tau(t)), Score::Confidence, vec![0; batch])
                    }
                    (true, rule) => {
                        return Err(Error::options(format!("rule {rule} is not defined for Dream")))
                    }
                };
                let sampling = Sampling {
                    temperature: opts.temperature,
                    seeds: &seeds,
                    counters: &counters,
                    mask_id: sp.mask,
                    score,
                    bf16_probs,
                };
                let vocab_bytes = (batch * bl * cfg.n_logits * be.dtype().size()) as f64;
                let mut p = opts.profile.then_some(&mut prof);
                graph::op(be, &mut p, "argmax + confidence", vocab_bytes, 0.0, || {
                    be.argmax_confidence(&ws.logits, &pad_ids, block, batch, sampling, &mut cands)
                })?;
                let sel = Select { rule, active: &active, quota: &quota, mask_id: sp.mask, block };
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
                    if counts[b] == NON_FINITE {
                        rows[b].error = Some(format!(
                            "non-finite logits (NaN or infinity) at forward {} of block {k}: the \
                             checkpoint's weights or the activations are not finite numbers",
                            step_in_block[b] + 1
                        ));
                        finished[b] = true;
                        masks_left[b] = 0;
                        continue;
                    }
                    let c = counts[b] as usize;
                    if c > masks_left[b] {
                        return Err(Error::Device(format!(
                            "select committed {c} tokens with {} masks left",
                            masks_left[b]
                        )));
                    }
                    masks_left[b] -= c;
                    committed[b] += c;
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
                                .map(|p| (p - gen_start[b], now[b * canvas_len + p]))
                                .collect()
                        })
                        .collect();
                    trace.push(TraceStep { block: k, kind, window: win, committed });
                    before = now;
                }
            }
            if opts.early_exit || progress.wants_blocks() {
                be.read_ids(&canvas, &mut host)?;
            }
            if progress.wants_blocks() {
                let generated: Vec<&[u32]> = (0..batch)
                    .map(|b| &host[b * canvas_len + gen_start[b]..b * canvas_len + e.min(ends[b])])
                    .collect();
                progress.block_done(k, &generated);
            }
            if opts.early_exit {
                for (b, done) in finished.iter_mut().enumerate() {
                    let row = &host[b * canvas_len + s..b * canvas_len + e.min(ends[b]).max(s)];
                    *done = *done || row.iter().all(|t| sp.stop.contains(t));
                }
            }
            if finished.iter().all(|&f| f) {
                break;
            }
        }
        be.read_ids(&canvas, &mut host)?;
        for (b, row) in rows.iter_mut().enumerate() {
            row.tokens = host[b * canvas_len + gen_start[b]..b * canvas_len + ends[b]]
                .iter()
                .map(|&t| if t == sp.mask { sp.eos } else { t })
                .collect();
        }
        Ok(Output { rows, forwards, trace, elapsed: t0.elapsed(), forward_ms, profile: prof.ops })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_torch_from_both_ends() {
        let ts = linspace_f32(1.0, 1e-3, 33);
        assert_eq!(ts.len(), 33);
        assert_eq!((ts[0], ts[32]), (1.0, 1e-3));
        // PyTorch's bits (torch.linspace(1.0, 1e-3, 938), float32, CPU and CUDA): one rounding per
        // element; `start + step · i` rounds twice and gives 0x3f3fdbfa and 0x3f3f961c here.
        let ts = linspace_f32(1.0, 1e-3, 938);
        assert_eq!(ts[235].to_bits(), 0x3f3f_dbfb);
        assert_eq!(ts[236].to_bits(), 0x3f3f_961b);
    }

    /// The ulp of the linspace above decides a step count of Dream's uncached entropy schedule
    /// (G = steps = 937): PyTorch commits 1 token at step 235 with 703 masks left, not 0.
    #[test]
    fn dream_step_count_follows_torch_bits() {
        assert_eq!(dream_step_count(703, 235, 937), 1);
    }

    /// spec §3: with 32 steps per block, after the unconditional first token the entropy
    /// schedule commits [0, 1, …, 1, 2]; uncached with steps = G it commits 0 first, 2 last.
    #[test]
    fn dream_schedule_of_spec_3() {
        let mut masks = 31;
        let mut got = vec![];
        for i in 1..32 {
            let n = dream_step_count(masks, i, 32);
            masks -= n as usize;
            got.push(n);
        }
        assert_eq!(got, [vec![0], vec![1; 29], vec![2]].concat());
        let (mut masks, mut got) = (96, vec![]);
        for i in 0..96 {
            let n = dream_step_count(masks, i, 96);
            masks -= n as usize;
            got.push(n);
        }
        assert_eq!((got[0], got[95], masks), (0, 2, 0));
    }
}
