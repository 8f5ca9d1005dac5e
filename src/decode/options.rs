//! What to decode: the options of a decode call (spec §4, §5), checked before any forward, with
//! their defaults (the one source of them: the CLI and the server start from
//! [`DecodeOptions::default`]).

use crate::backend::SelectRule;
use crate::cache::CacheMode;
use crate::error::{Error, Result};
use crate::model::{Arch, ModelConfig};

/// Which masked positions of the current block a step commits (spec §4.4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// A fixed number per step: LLaDA's low-confidence schedule over `steps`; Dream's entropy
    /// schedule (spec §3).
    Quota,
    /// Every candidate with confidence ≥ τ, and always the most confident one.
    Threshold(f64),
    /// Fast-dLLM's factor rule, reference quirk included (LLaDA only).
    Factor(f64),
    /// d3LLM's (and dParallel's) entropy rule (d3llm spec §3): the lowest-entropy candidate
    /// always, every other one iff its entropy `H ≤ t` (nats; LLaDA only).
    Entropy(f64),
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Quota => write!(f, "quota"),
            Rule::Threshold(t) => write!(f, "threshold {t}"),
            Rule::Factor(x) => write!(f, "factor {x}"),
            Rule::Entropy(t) => write!(f, "entropy {t}"),
        }
    }
}

impl From<Rule> for SelectRule {
    fn from(r: Rule) -> Self {
        match r {
            Rule::Quota => SelectRule::Quota,
            Rule::Threshold(t) => SelectRule::Threshold(t),
            Rule::Factor(f) => SelectRule::Factor(f),
            // ranked by −H (Score::NegEntropyF64): H ≤ t is −H ≥ −t
            Rule::Entropy(t) => SelectRule::Threshold(-t),
        }
    }
}

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
    /// With temperature > 0: draw among the k highest logits only (0: no limit; issue 19).
    pub top_k: u32,
    /// With temperature > 0: draw within the nucleus of this mass only, in (0, 1] (1: no limit).
    pub top_p: f64,
    pub seed: u64,
    /// Stop a row once a whole block of it is end-of-sequence tokens (spec §5 EOS). Off by
    /// default: the reference decodes every block.
    pub early_exit: bool,
    /// Which blocks a forward decodes: one at a time (Fast-dLLM), or several (d3LLM).
    pub decoder: Decoder,
}

/// How the generation's blocks are scheduled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decoder {
    /// Fast-dLLM's block loop (spec §5): one block at a time, left to right.
    Blocks,
    /// d3LLM's multi-block decoding (d3llm spec §5–§7): blocks added and activated by their
    /// predecessors' progress, candidates over every active block, the entropy rule.
    MultiBlock(MultiBlock),
}

/// The knobs of d3LLM's multi-block decoder (d3llm spec §5.2, §6, §7), with its names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MultiBlock {
    /// `block_add_threshold`: a block is added when the last one's progress reaches this.
    pub add: f64,
    /// `decoded_token_threshold`: a block is fully activated (forced progress) when its
    /// predecessor's progress reaches this.
    pub activate: f64,
    /// The delayed prefix cache (`generate_multi_block_kv_cache`); None: every forward sees the
    /// whole canvas (`generate_multi_block`).
    pub cache: Option<DelayedCache>,
    /// Early stop on this one end-token id (d3llm spec §7); None: off.
    pub early_stop: Option<u32>,
    /// Commit at most this many per forward, lowest entropy first (dllm's, not d3LLM's: `dllm
    /// bench` forces a tokens-per-forward on random weights, whose entropies mean nothing).
    pub max_per_forward: Option<usize>,
}

impl std::fmt::Display for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Decoder::MultiBlock(mb) = self else { return f.write_str("block loop") };
        write!(f, "multi-block (add {}, activate {}", mb.add, mb.activate)?;
        if let Some(c) = mb.cache {
            write!(f, ", cache delay {} refresh {}", c.delay, c.refresh)?;
        }
        if let Some(id) = mb.early_stop {
            write!(f, ", early stop on {id}")?;
        }
        if let Some(n) = mb.max_per_forward {
            write!(f, ", at most {n} a forward")?;
        }
        f.write_str(")")
    }
}

/// d3LLM's delayed prefix cache (d3llm spec §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayedCache {
    /// `cache_delay_iter`: a decoded block enters the cache this many iterations after it is
    /// first seen complete.
    pub delay: usize,
    /// `refresh_interval`: every iteration whose number is a multiple of this is a refresh.
    pub refresh: usize,
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
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            early_exit: false,
            decoder: Decoder::Blocks,
        }
    }
}

/// What the rows of one batch may choose each for themselves (issue 19): the commit rule and the
/// draw. The rest of [`DecodeOptions`] (cache, block, steps per block, decoder) shapes the
/// forward and is the batch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowRule {
    pub rule: Rule,
    pub temperature: f64,
    pub top_k: u32,
    pub top_p: f64,
}

impl DecodeOptions {
    /// The options' own rule and draw.
    pub fn row_rule(&self) -> RowRule {
        RowRule { rule: self.rule, temperature: self.temperature, top_k: self.top_k, top_p: self.top_p }
    }

    /// These options with a row's rule and draw (what that row decodes as when alone).
    pub fn with_row(&self, r: &RowRule) -> DecodeOptions {
        DecodeOptions {
            rule: r.rule,
            temperature: r.temperature,
            top_k: r.top_k,
            top_p: r.top_p,
            ..self.clone()
        }
    }
}

impl RowRule {
    /// The device draw of this rule's row, its candidates scored by `score`.
    pub fn draw(&self, score: crate::backend::Score) -> crate::backend::Draw {
        crate::backend::Draw { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, score }
    }
}

/// How a decode call runs, apart from what it decodes: instrumentation and execution choices
/// that never change a token (so never part of a server batch's key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// Record what every forward committed (reads the canvas back after each step).
    pub trace: bool,
    /// Replay in-block steps from captured CUDA graphs (backends without graphs ignore it).
    pub cuda_graphs: bool,
    /// Time every op (marks around each, resolved per step; disables graphs).
    pub profile: bool,
    /// Reveal-time log-probabilities (issue 19): for every committed token, its log-probability
    /// and this many alternatives at the forward that committed it ([`super::RowOutput::logprobs`];
    /// traces every forward). None: off.
    pub logprobs: Option<usize>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { trace: false, cuda_graphs: true, profile: false, logprobs: None }
    }
}

impl RunOptions {
    /// With the trace on where it is read: by an observer of every forward (what each forward
    /// committed) and by reveal-time logprobs (each forward's commits).
    pub fn for_observer(self, observer: &dyn super::DecodeObserver) -> Self {
        RunOptions { trace: self.trace || observer.wants_forwards() || self.logprobs.is_some(), ..self }
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
    /// uncached baseline, which has no blocks (spec §3), and for multi-block decoding, whose
    /// blocks are scheduled inside one call.
    pub fn window_len(&self, arch: Arch) -> usize {
        if self.blockless(arch) || self.decoder != Decoder::Blocks {
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

    /// The options alone, for `cfg`'s family. Errors: [`Error::Options`] naming what cannot work
    /// (e.g. the factor rule on Dream, steps that do not divide into the blocks).
    pub fn validate_options(&self, cfg: &ModelConfig) -> Result<()> {
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
            Rule::Entropy(t) if !(t >= 0.0 && t.is_finite()) => {
                return fail(format!("entropy threshold {t} must be a finite number ≥ 0 (nats)"));
            }
            Rule::Factor(f) if !(f > 0.0 && f.is_finite()) => {
                return fail(format!("factor {f} must be a positive number"));
            }
            _ => {}
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return fail(format!("temperature {} must be a finite number ≥ 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return fail(format!("top_p {} is outside (0, 1]", self.top_p));
        }
        if let Decoder::MultiBlock(mb) = self.decoder {
            self.validate_multi_block(&mb)?;
        }
        if cfg.arch == Arch::Dream {
            self.validate_dream()?;
        }
        Ok(())
    }

    /// Each prompt against the model and its own generation length.
    pub(crate) fn validate_prompts(
        &self,
        cfg: &ModelConfig,
        prompts: &[Vec<u32>],
        gens: &[usize],
    ) -> Result<()> {
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
    /// The multi-block decoder's constraints (d3llm spec §5, §6): its own rule and cache, knobs
    /// in range, whole blocks (checked with the common options: d3LLM spins forever otherwise).
    fn validate_multi_block(&self, mb: &MultiBlock) -> Result<()> {
        let fail = |m: String| Err(Error::options(m));
        if !matches!(self.rule, Rule::Entropy(_)) {
            return fail(format!(
                "multi-block decoding commits by the entropy rule (--entropy), not {}",
                self.rule
            ));
        }
        if self.cache != CacheMode::None {
            return fail(
                "multi-block decoding has its own cache (--cache-delay, --refresh): use --cache none".into(),
            );
        }
        for (name, x) in [("block-add threshold", mb.add), ("activation threshold", mb.activate)] {
            if !(0.0..=1.0).contains(&x) {
                return fail(format!("{name} {x} is outside [0, 1]"));
            }
        }
        if mb.max_per_forward == Some(0) {
            return fail("at most 0 commits per forward would never finish".into());
        }
        if mb.cache.is_some_and(|c| c.refresh == 0) {
            return fail("the refresh interval must be at least 1 forward".into());
        }
        Ok(())
    }

    /// Dream's own constraints, on top of the common ones (spec §3): the factor rule and sampling
    /// are LLaDA-only in dllm.
    fn validate_dream(&self) -> Result<()> {
        let fail = |m: String| Err(Error::options(m));
        if let Rule::Factor(_) | Rule::Entropy(_) = self.rule {
            return fail(format!(
                "the {} rule is not defined for Dream (spec §3): use --threshold or --quota",
                self.rule
            ));
        }
        if self.decoder != Decoder::Blocks {
            return fail(
                "multi-block decoding is defined for LLaDA checkpoints (d3LLM), not for Dream".into(),
            );
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

/// The published decoding settings dllm knows by name (d3llm spec §1.2): `d3llm` (d3LLM's
/// GSM8K setting: multi-block, entropy 0.5, add at 0.1, activate at 0.95, early stop),
/// `d3llm-cache` (the same with the delayed prefix cache, delay 2, refresh every 3 forwards) and
/// `dparallel` (the block loop with the entropy rule at 0.5, no cache).
pub const PRESETS: &[&str] = &["d3llm", "d3llm-cache", "dparallel"];

impl DecodeOptions {
    /// `self` with the named preset's rule, cache and decoder (its lengths, steps, temperature
    /// and seed kept); `eos` is the id d3LLM stops early on (the checkpoint's EOS).
    pub fn with_preset(&self, name: &str, eos: u32) -> Result<Self> {
        let multi = |cache| MultiBlock {
            add: 0.1,
            activate: 0.95,
            cache,
            early_stop: Some(eos),
            max_per_forward: None,
        };
        let decoder = match name {
            "d3llm" => Decoder::MultiBlock(multi(None)),
            "d3llm-cache" => Decoder::MultiBlock(multi(Some(DelayedCache { delay: 2, refresh: 3 }))),
            "dparallel" => Decoder::Blocks,
            other => {
                return Err(Error::options(format!(
                    "unknown preset `{other}` (presets: {})",
                    PRESETS.join(", ")
                )))
            }
        };
        Ok(DecodeOptions { rule: Rule::Entropy(0.5), cache: CacheMode::None, decoder, ..self.clone() })
    }
}

/// The multi-block decoder's knobs as a user gives them (CLI flags, request fields); None: not
/// given. One place turns them into a [`Decoder`] for both.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MultiBlockKnobs {
    /// Decode several blocks at once (else only a multi-block preset does).
    pub enable: bool,
    pub add: Option<f64>,
    pub activate: Option<f64>,
    pub cache_delay: Option<usize>,
    pub refresh: Option<usize>,
    /// Stop early on the checkpoint's EOS.
    pub early_stop: Option<bool>,
    /// Stop early on this id instead.
    pub early_stop_id: Option<u32>,
    pub max_per_forward: Option<usize>,
}

/// d3LLM's default refresh interval: never (d3llm spec §1.2).
pub const NEVER_REFRESH: usize = 10_000;

impl MultiBlockKnobs {
    /// Apply the knobs to `opts` (whose decoder a preset may already have set); `eos` is the
    /// checkpoint's end token. Err: a knob given without multi-block decoding, named.
    pub fn apply(&self, opts: &mut DecodeOptions, eos: u32) -> std::result::Result<(), String> {
        let base = match opts.decoder {
            Decoder::MultiBlock(mb) => mb,
            Decoder::Blocks if self.enable => {
                MultiBlock { add: 0.1, activate: 0.95, cache: None, early_stop: None, max_per_forward: None }
            }
            Decoder::Blocks => {
                return match self.given() {
                    Some(knob) => Err(format!(
                        "{knob} applies to multi-block decoding (enable it, or use a d3llm preset)"
                    )),
                    None => Ok(()),
                }
            }
        };
        let cache = match (self.cache_delay, base.cache) {
            (Some(delay), c) => Some(DelayedCache {
                delay,
                refresh: self.refresh.or(c.map(|c| c.refresh)).unwrap_or(NEVER_REFRESH),
            }),
            (None, Some(c)) => Some(DelayedCache { refresh: self.refresh.unwrap_or(c.refresh), ..c }),
            (None, None) if self.refresh.is_some() => {
                return Err("refresh applies to the delayed cache (give cache_delay)".into())
            }
            (None, None) => None,
        };
        let early_stop = match (self.early_stop_id, self.early_stop) {
            (Some(id), _) => Some(id),
            (None, Some(true)) => Some(eos),
            (None, Some(false)) => None,
            (None, None) => base.early_stop,
        };
        opts.decoder = Decoder::MultiBlock(MultiBlock {
            add: self.add.unwrap_or(base.add),
            activate: self.activate.unwrap_or(base.activate),
            cache,
            early_stop,
            max_per_forward: self.max_per_forward.or(base.max_per_forward),
        });
        Ok(())
    }

    /// The first knob given, by its name (for errors).
    fn given(&self) -> Option<&'static str> {
        [
            (self.add.is_some(), "block_add"),
            (self.activate.is_some(), "activate"),
            (self.cache_delay.is_some(), "cache_delay"),
            (self.refresh.is_some(), "refresh"),
            (self.early_stop.is_some() || self.early_stop_id.is_some(), "early_stop"),
            (self.max_per_forward.is_some(), "max_per_forward"),
        ]
        .into_iter()
        .find(|(given, _)| *given)
        .map(|(_, name)| name)
    }
}
