//! Decoding policy: what each step of a block runs for each row — the device rule, what its
//! candidates are ranked by, its quota — from the row's rule, the family and the cache mode
//! (spec §3, §4.4).

use super::batch::RowState;
use super::options::{DecodeOptions, Rule};
use crate::backend::{Score, SelectRule};
use crate::cache::CacheMode;
use crate::error::{Error, Result};
use crate::model::Arch;

/// The policy of one decode call (each row brings its own rule).
pub struct StepPolicy {
    dream: bool,
    cached: bool,
    steps: usize,
    gen_length: usize,
    steps_per_block: usize,
    /// LLaDA's quota per step of a block.
    schedule: Vec<u32>,
    /// Dream with bf16 activations compares bf16 confidences with bf16(τ) (spec §3).
    bf16_probs: bool,
}

impl StepPolicy {
    pub fn new(
        opts: &DecodeOptions,
        arch: Arch,
        window: usize,
        steps_per_block: usize,
        bf16_probs: bool,
    ) -> Self {
        StepPolicy {
            dream: arch == Arch::Dream,
            cached: opts.cache != CacheMode::None,
            steps: opts.steps,
            gen_length: opts.gen_length,
            steps_per_block,
            schedule: quota_schedule(window, steps_per_block),
            bf16_probs,
        }
    }

    /// τ as the step compares it: bf16(τ) for Dream's bf16 confidences (spec §3).
    fn tau(&self, t: f64) -> f64 {
        if self.bf16_probs {
            half::bf16::from_f32(t as f32).to_f64()
        } else {
            t
        }
    }

    /// A row's rule and score at this step: LLaDA's rule as chosen; Dream's own (spec §3): the
    /// block's first mask at a cached block start, the entropy schedule for the quota rule, a
    /// threshold within the step's budget when uncached.
    pub fn rule(&self, block_start: bool, row: &RowState) -> Result<(SelectRule, Score)> {
        let rule = row.rule.rule;
        if !self.dream {
            let score = if let Rule::Entropy(_) = rule { Score::NegEntropyF64 } else { Score::Confidence };
            return Ok((rule.into(), score));
        }
        Ok(match rule {
            _ if block_start && self.cached => (SelectRule::First, Score::Confidence),
            Rule::Quota => (SelectRule::Quota, Score::NegEntropy),
            Rule::Threshold(t) if !self.cached => {
                (SelectRule::CappedThreshold(self.tau(t)), Score::Confidence)
            }
            Rule::Threshold(t) => (SelectRule::Threshold(self.tau(t)), Score::Confidence),
            rule => return Err(Error::options(format!("rule {rule} is not defined for Dream"))),
        })
    }

    /// A row's quota at this step (what the quota and capped-threshold rules commit).
    pub fn quota(&self, block_start: bool, row: &RowState) -> u32 {
        let step = row.step_in_block;
        match row.rule.rule {
            _ if !self.dream => self.schedule.get(step).copied().unwrap_or(1),
            _ if block_start && self.cached => 1,
            Rule::Quota => dream_step_count(row.masks_left, step, self.steps_per_block),
            Rule::Threshold(_) if !self.cached => {
                let per_step = self.gen_length / self.steps;
                ((step + 1).min(self.steps) * per_step).saturating_sub(row.committed) as u32
            }
            _ => 0,
        }
    }
}

/// The LLaDA quota schedule of one block: `n` masks over `steps_per_block` steps, the remainder
/// going to the **first** steps (spec §4.4).
pub fn quota_schedule(n: usize, steps_per_block: usize) -> Vec<u32> {
    (0..steps_per_block)
        .map(|i| (n / steps_per_block + usize::from(i < n % steps_per_block)) as u32)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_remainder_goes_to_the_first_steps() {
        assert_eq!(quota_schedule(32, 12), vec![3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2]);
        assert_eq!(quota_schedule(32, 32), vec![1; 32]);
        assert_eq!(quota_schedule(32, 20), [vec![2; 12], vec![1; 8]].concat());
        assert_eq!(quota_schedule(5, 8), vec![1, 1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(quota_schedule(32, 12).iter().sum::<u32>(), 32);
    }

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
