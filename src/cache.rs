//! The block-wise approximate KV cache of Fast-dLLM (spec §5), reduced to one mechanism: a
//! canvas-sized cache of post-RoPE K/V per layer that every forward writes its window's rows
//! into and every query attends over in full.
//!
//! - block start (all modes): the window is the whole canvas, so the cache is refreshed;
//! - PrefixCache step: the window is `x[s:]`; keys `< s` are the block start's, the rest fresh
//!   (the reference's "[cached prefix | fresh x[s:]]");
//! - DualCache step: the window is the block `[s, e)`; its rows are overwritten in place, prefix
//!   and suffix stay as the block start left them;
//! - no cache (baseline): every step is a block-start forward.

use crate::backend::{Backend, Window};
use crate::error::Result;
use crate::model::config::ModelConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Baseline: every step forwards the whole canvas.
    None,
    /// PrefixCache: after the block start, forward `x[s:]` against the cached prefix.
    Prefix,
    /// DualCache: after the block start, forward only the block against cached prefix + suffix.
    Dual,
}

impl CacheMode {
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Prefix => "prefix",
            CacheMode::Dual => "dual",
        }
    }

    /// The query window of a forward for the block `[s, e)` of a `canvas`-token canvas:
    /// the whole canvas at the block start (or always, without a cache), else the mode's window.
    pub fn window(self, block_start: bool, s: usize, e: usize, canvas: usize) -> Window {
        match (self, block_start) {
            (CacheMode::None, _) | (_, true) => Window { start: 0, len: canvas },
            (CacheMode::Prefix, false) => Window { start: s, len: canvas - s },
            (CacheMode::Dual, false) => Window { start: s, len: e - s },
        }
    }

    /// The kind of a forward of this mode.
    pub fn kind(self, block_start: bool) -> ForwardKind {
        match (self, block_start) {
            (CacheMode::None, _) | (_, true) => ForwardKind::Full,
            (CacheMode::Prefix, false) => ForwardKind::Prefix,
            (CacheMode::Dual, false) => ForwardKind::Dual,
        }
    }
}

/// What a forward computes: the whole canvas (a block start, or every step without a cache), a
/// PrefixCache step over `x[s:]`, or a DualCache step over the block; with d3LLM's delayed
/// prefix cache (d3llm spec §6): a cached forward that appends to the cache, a cached forward, a
/// refresh. Displayed as the letter the references' outputs use: F, P, D; U, C, R.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardKind {
    Full,
    Prefix,
    Dual,
    Update,
    Cached,
    Refresh,
}

impl ForwardKind {
    /// Its timeline range name (NVTX).
    pub fn range_name(self) -> &'static str {
        match self {
            ForwardKind::Full => "forward: full canvas",
            ForwardKind::Prefix => "forward: prefix step",
            ForwardKind::Dual => "forward: dual step",
            ForwardKind::Update => "forward: cached, appending",
            ForwardKind::Cached => "forward: cached",
            ForwardKind::Refresh => "forward: refresh",
        }
    }
}

impl std::fmt::Display for ForwardKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ForwardKind::Full => "F",
            ForwardKind::Prefix => "P",
            ForwardKind::Dual => "D",
            ForwardKind::Update => "U",
            ForwardKind::Cached => "C",
            ForwardKind::Refresh => "R",
        })
    }
}

/// Post-RoPE keys and values of every layer, `[batch × canvas, kv_dim]` each.
pub struct KvCache<T> {
    pub k: Vec<T>,
    pub v: Vec<T>,
}

impl<T> KvCache<T> {
    pub fn new<B: Backend<Tensor = T>>(
        be: &B,
        cfg: &ModelConfig,
        batch: usize,
        canvas: usize,
    ) -> Result<Self> {
        let rows = batch * canvas;
        let mut k = Vec::with_capacity(cfg.n_layers);
        let mut v = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            k.push(be.tensor(rows, cfg.kv_dim())?);
            v.push(be.tensor(rows, cfg.kv_dim())?);
        }
        Ok(KvCache { k, v })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_spec_5() {
        let (s, e, l) = (40, 72, 136);
        for m in [CacheMode::None, CacheMode::Prefix, CacheMode::Dual] {
            assert_eq!(m.window(true, s, e, l), Window { start: 0, len: l });
        }
        assert_eq!(CacheMode::None.window(false, s, e, l), Window { start: 0, len: l });
        assert_eq!(CacheMode::Prefix.window(false, s, e, l), Window { start: s, len: l - s });
        assert_eq!(CacheMode::Dual.window(false, s, e, l), Window { start: s, len: 32 });
        assert_eq!(CacheMode::Dual.kind(false).to_string(), "D");
        assert_eq!(CacheMode::Prefix.kind(true).to_string(), "F");
        assert_eq!(CacheMode::Prefix.kind(false).to_string(), "P");
    }
}
