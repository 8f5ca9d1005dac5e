//! The batch plan of a decode call: where every row sits on one shared canvas, and each row's
//! decoding state. Rows are left-padded so that their current blocks start at one column `s0`;
//! a row with fewer positions left ends before the canvas does (spec §1, §6). An infilling row's
//! fixed suffix follows its masked middle: a key of every forward, never a block position.

use super::options::{DecodeOptions, RowRule};
use super::output::{RowOutput, RowStart, TokenLogprobs};
use crate::error::{Error, Result};
use crate::model::SpecialIds;

/// The geometry and host canvas of a batch of rows.
pub struct BatchPlan {
    pub batch: usize,
    /// Positions one block window covers ([`DecodeOptions::window_len`]).
    pub window: usize,
    pub steps_per_block: usize,
    /// Canvas column where every row's current block starts.
    pub s0: usize,
    pub canvas_len: usize,
    /// Per row: the column after its last key (generated positions, then its suffix); keys from
    /// there on are masked.
    pub ends: Vec<usize>,
    /// Per row: the column after its last generated position (where its suffix starts).
    pub gen_ends: Vec<usize>,
    /// Per row: the column of its first generated position (earlier blocks included).
    pub gen_start: Vec<usize>,
    /// Blocks this call decodes (at most the caller's `max_blocks`).
    pub blocks: usize,
    /// `[batch, canvas_len]`: left pad | prompt | done blocks | masks | suffix | right pad, per row.
    pub canvas: Vec<u32>,
    /// What the kernels read as `pads`: `[batch]` left pads, then `[batch]` row ends.
    pub bounds: Vec<u32>,
}

impl BatchPlan {
    /// Check every row against the options (`max_block` is the backend's longest block) and lay
    /// the canvas out. Errors name the row and the problem.
    pub fn new(
        starts: &[RowStart],
        opts: &DecodeOptions,
        window: usize,
        special: &SpecialIds,
        max_blocks: usize,
    ) -> Result<Self> {
        let gens: Vec<usize> = starts.iter().map(|r| r.gen_length.unwrap_or(opts.gen_length)).collect();
        for (i, (r, &g)) in starts.iter().zip(&gens).enumerate() {
            check_row(i, r, g, opts.gen_length, window)?;
        }
        let prefix = |r: &RowStart| r.prompt.len() + r.done.len();
        let s0 = starts.iter().map(prefix).max().unwrap_or(0);
        let remaining: Vec<usize> = starts.iter().zip(&gens).map(|(r, &g)| g - r.done.len()).collect();
        let longest = remaining.iter().copied().max().unwrap_or(0);
        let gen_ends: Vec<usize> = remaining.iter().map(|&n| s0 + n).collect();
        let ends: Vec<usize> = starts.iter().zip(&gen_ends).map(|(r, &g)| g + r.suffix.len()).collect();
        let canvas_len = canvas_len(starts.iter().zip(gens.iter().copied()));
        let mut bounds: Vec<u32> = starts.iter().map(|r| (s0 - prefix(r)) as u32).collect();
        bounds.extend(ends.iter().map(|&e| e as u32));
        let mut canvas = Vec::with_capacity(starts.len() * canvas_len);
        for ((r, &n), &end) in starts.iter().zip(&remaining).zip(&ends) {
            canvas.extend(std::iter::repeat_n(special.pad, s0 - prefix(r)));
            canvas.extend_from_slice(&r.prompt);
            canvas.extend_from_slice(&r.done);
            canvas.extend(std::iter::repeat_n(special.mask, n));
            canvas.extend_from_slice(&r.suffix);
            canvas.extend(std::iter::repeat_n(special.pad, canvas_len - end));
        }
        Ok(BatchPlan {
            batch: starts.len(),
            window,
            steps_per_block: opts.steps / (opts.gen_length / window),
            s0,
            canvas_len,
            ends,
            gen_ends,
            gen_start: starts.iter().map(|r| s0 - r.done.len()).collect(),
            blocks: (longest / window).min(max_blocks),
            canvas,
            bounds,
        })
    }

    /// Row `b`'s generated ids in a `[batch, canvas_len]` canvas, up to column `upto`.
    pub fn generated<'a>(&self, canvas: &'a [u32], b: usize, upto: usize) -> &'a [u32] {
        &canvas[b * self.canvas_len + self.gen_start[b]..b * self.canvas_len + upto.min(self.gen_ends[b])]
    }

    /// Row `b`'s suffix in a `[batch, canvas_len]` canvas.
    pub fn suffix<'a>(&self, canvas: &'a [u32], b: usize) -> &'a [u32] {
        &canvas[b * self.canvas_len + self.gen_ends[b]..b * self.canvas_len + self.ends[b]]
    }
}

/// The canvas columns of a batch of `(row, its generation length)`: its current blocks aligned at
/// one column, the longest prompt and done blocks, then the longest rest of a generation and
/// suffix ([`BatchPlan`]'s layout; `dllm serve` admits a row only while this fits its session).
pub fn canvas_len<'a>(rows: impl IntoIterator<Item = (&'a RowStart, usize)>) -> usize {
    let (head, tail) = rows.into_iter().fold((0, 0), |(h, t), (r, g)| {
        (h.max(r.prompt.len() + r.done.len()), t.max(g - r.done.len() + r.suffix.len()))
    });
    head + tail
}

/// A row's generation length must be whole windows, at most the batch's (all of it when the
/// generation is one window), and what it has done whole windows below it.
fn check_row(i: usize, r: &RowStart, g: usize, batch_gen: usize, window: usize) -> Result<()> {
    if g % window != 0 || g > batch_gen || (window == batch_gen && g != window) {
        return Err(Error::options(format!(
            "row {i}: gen_length {g} must be a multiple of the block ({window}) and at most the batch's {batch_gen}"
        )));
    }
    if r.done.len() % window != 0 || r.done.len() >= g {
        return Err(Error::options(format!(
            "row {i}: {} generated ids already done is not a whole number of blocks below gen_length {g}",
            r.done.len(),
        )));
    }
    Ok(())
}

/// One row's state while its blocks decode.
pub struct RowState {
    /// Done: its generation ended, its client left, its logits were not finite, or (early exit)
    /// a whole block of end tokens.
    pub finished: bool,
    /// Masks left in the current block.
    pub masks_left: usize,
    /// Tokens committed so far in this call (Dream's uncached threshold budget, spec §3).
    pub committed: usize,
    /// Steps taken in the current block.
    pub step_in_block: usize,
    /// The row's rule and draw (its own, or the options').
    pub rule: RowRule,
    /// The sampling seed and the forwards the row took part in before this call.
    pub seed: u64,
    pub forwards_before: u64,
    /// Reveal-time log-probabilities recorded this call: (generated position, record).
    pub logprobs: Vec<(usize, TokenLogprobs)>,
    pub out: RowOutput,
}

impl RowState {
    pub fn new(start: &RowStart, opts: &DecodeOptions) -> Self {
        RowState {
            rule: start.rule.unwrap_or_else(|| opts.row_rule()),
            finished: false,
            masks_left: 0,
            committed: 0,
            step_in_block: 0,
            seed: start.seed.unwrap_or(opts.seed),
            forwards_before: start.forwards,
            logprobs: vec![],
            out: RowOutput::empty(start.prompt.clone()),
        }
    }

    /// The row's forward counter: it keys its sampling noise (spec §4.3).
    pub fn counter(&self) -> u64 {
        self.forwards_before + self.out.nfe as u64
    }

    /// Whether it takes part in this step.
    pub fn active(&self) -> bool {
        self.masks_left > 0
    }
}
