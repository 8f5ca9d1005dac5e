//! Token selection for one decoding step (spec §4.4): which masked positions of the current block
//! to commit. Shared by every backend on the host side, and the CPU twin of a device selection.
//!
//! Every rule commits a prefix of the candidates ranked by confidence (descending; lower position
//! first on equal confidence, dllm's choice where the reference's `torch.topk` order is
//! unspecified, spec §4.4), so a rule reduces to "how many".

use crate::backend::Rule;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Canvas position.
    pub pos: usize,
    /// The drawn token (argmax).
    pub token: u32,
    /// softmax probability of `token` (float64, spec §4.2).
    pub conf: f64,
}

/// Order candidates by confidence, descending; equal confidences by lower position.
pub fn rank(cands: &mut [Candidate]) {
    cands.sort_by(|a, b| b.conf.total_cmp(&a.conf).then(a.pos.cmp(&b.pos)));
}

/// How many of the ranked candidates (`confs` descending) `rule` commits.
pub fn commit_count(rule: Rule, confs: &[f64], quota: u32) -> usize {
    let n = confs.len();
    if n == 0 {
        return 0;
    }
    match rule {
        Rule::Quota => (quota as usize).min(n),
        Rule::Threshold(tau) => select_threshold(confs, tau),
        Rule::Factor(f) => select_factor(confs, f),
        Rule::CappedThreshold(tau) => select_threshold(confs, tau).min((quota as usize).max(1)),
        // Not a prefix of the ranking: backends take the block's first mask themselves.
        Rule::First => 1,
    }
}

/// Every candidate with c ≥ τ, and always the top-1 even if none reaches τ.
pub fn select_threshold(confs: &[f64], tau: f64) -> usize {
    confs.iter().take_while(|&&c| c >= tau).count().max(1).min(confs.len())
}

/// Factor rule (upstream commit cb3a757): with c(1) ≥ c(2) ≥ … and thr(n) = 1 − f/(n+1), thr(1)
/// forced to pass, walk n = 1, 2, … and stop at the first failure c(n) < thr(n); commit the
/// passed prefix. Reference quirk, copied: when the first failure is the last candidate (or
/// nothing failed), all N are committed, so with 2 masks left both always go together.
pub fn select_factor(confs: &[f64], f: f64) -> usize {
    let n = confs.len();
    let first_fail = (1..n).find(|&i| confs[i] < 1.0 - f / (i as f64 + 2.0));
    match first_fail {
        None => n,
        Some(i) if i == n - 1 => n,
        Some(i) => i,
    }
}

/// The LLaDA quota schedule of one block: `n` masks over `steps_per_block` steps, the remainder
/// going to the **first** steps (spec §4.4).
pub fn quota_schedule(n: usize, steps_per_block: usize) -> Vec<u32> {
    (0..steps_per_block)
        .map(|i| (n / steps_per_block + usize::from(i < n % steps_per_block)) as u32)
        .collect()
}

/// Counter-based uniform draw in (0, 1) for the Gumbel noise of temperature sampling (spec §4.3):
/// a pure function of (row seed, row's forward counter, position in the row, token id), so the
/// noise is independent of batch composition, thread count and backend. SplitMix64 finalisers.
pub fn uniform(seed: u64, counter: u64, pos: u64, token: u64) -> f64 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    const G: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut z = mix(seed.wrapping_add(G));
    z = mix(z ^ counter.wrapping_add(G.wrapping_mul(2)));
    z = mix(z ^ pos.wrapping_add(G.wrapping_mul(3)));
    z = mix(z ^ token.wrapping_add(G.wrapping_mul(4)));
    // 53 random bits, shifted off zero: u in (0, 1)
    ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Element `i` of a synthetic weight tensor: uniform in `[offset − scale, offset + scale]` from a
/// 24-bit hash of (seed, i), computed in f32 exactly as `kernels/fill.cu` does.
pub fn synthetic_value(seed: u64, i: u64, offset: f32, scale: f32) -> f32 {
    let mut z = seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let u = (z >> 40) as f32 * (1.0 / 16_777_216.0); // [0, 1), exact in f32
    offset + scale * (2.0 * u - 1.0)
}

/// Gumbel(0, 1) noise from [`uniform`]: `-ln(-ln u)`.
pub fn gumbel(seed: u64, counter: u64, pos: u64, token: u64) -> f64 {
    -(-uniform(seed, counter, pos, token).ln()).ln()
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
    fn threshold_always_commits_the_top_one() {
        assert_eq!(select_threshold(&[0.5, 0.4], 0.9), 1);
        assert_eq!(select_threshold(&[0.95, 0.9, 0.899], 0.9), 2);
        assert_eq!(select_threshold(&[0.99, 0.98], 0.9), 2);
        assert_eq!(select_threshold(&[1.0], 1.0), 1);
    }

    #[test]
    fn factor_quirk_single_and_pair() {
        // N = 1: the one candidate.
        assert_eq!(select_factor(&[0.01], 1.0), 1);
        // N = 2: both, whatever the second confidence (its failure is the last candidate).
        assert_eq!(select_factor(&[0.3, 0.01], 1.0), 2);
        assert_eq!(select_factor(&[0.9, 0.8], 1.0), 2);
        // N = 3: thr(2) = 1 - 1/3; failing at rank 2 (not last) commits 1.
        assert_eq!(select_factor(&[0.9, 0.6, 0.5], 1.0), 1);
        // rank 2 passes, rank 3 (last) fails: all 3.
        assert_eq!(select_factor(&[0.9, 0.7, 0.1], 1.0), 3);
        // N = 4, failure at rank 3 of 4 (thr(3) = 0.75): commit 2.
        assert_eq!(select_factor(&[0.9, 0.8, 0.7, 0.1], 1.0), 2);
        // nothing fails: all.
        assert_eq!(select_factor(&[0.99, 0.98, 0.97, 0.96], 1.0), 4);
        // a larger factor lowers every threshold (thr(2) = 1 - 2/3).
        assert_eq!(select_factor(&[0.9, 0.4, 0.3, 0.1], 2.0), 2);
    }

    #[test]
    fn capped_threshold_keeps_the_top_one_and_the_budget() {
        let c = [0.99, 0.95, 0.93, 0.5];
        assert_eq!(commit_count(Rule::CappedThreshold(0.9), &c, 2), 2);
        assert_eq!(commit_count(Rule::CappedThreshold(0.9), &c, 5), 3);
        assert_eq!(commit_count(Rule::CappedThreshold(0.9), &[0.3, 0.2], 2), 1);
        assert_eq!(commit_count(Rule::CappedThreshold(0.9), &[0.3], 0), 1);
    }

    #[test]
    fn ranking_breaks_ties_by_lower_position() {
        let mut c = vec![
            Candidate { pos: 9, token: 1, conf: 0.5 },
            Candidate { pos: 3, token: 2, conf: 0.5 },
            Candidate { pos: 5, token: 3, conf: 0.7 },
        ];
        rank(&mut c);
        assert_eq!(c.iter().map(|x| x.pos).collect::<Vec<_>>(), vec![5, 3, 9]);
        assert_eq!(commit_count(Rule::Quota, &[0.7, 0.5, 0.5], 2), 2);
        assert_eq!(commit_count(Rule::Quota, &[], 2), 0);
    }

    #[test]
    fn noise_is_uniform_and_keyed() {
        let n = 20000;
        let mean: f64 = (0..n).map(|t| uniform(7, 1, 2, t)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!((0..n).all(|t| {
            let u = uniform(1, 2, 3, t);
            u > 0.0 && u < 1.0
        }));
        assert_ne!(uniform(1, 2, 3, 4), uniform(2, 2, 3, 4));
        assert_ne!(uniform(1, 2, 3, 4), uniform(1, 3, 3, 4));
        assert_ne!(uniform(1, 2, 3, 4), uniform(1, 2, 4, 4));
        assert_eq!(uniform(1, 2, 3, 4), uniform(1, 2, 3, 4));
    }
}
