//! The CPU twin of `kernels/select.cu` (spec §4.4): which masked positions of the current block
//! a step commits. Every rule commits a prefix of the candidates ranked by confidence
//! (descending; lower position first on equal confidence, dllm's choice where the reference's
//! `torch.topk` order is unspecified, spec §4.4), so a rule reduces to "how many".

use crate::backend::SelectRule;

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
pub fn commit_count(rule: SelectRule, confs: &[f64], quota: u32) -> usize {
    let n = confs.len();
    if n == 0 {
        return 0;
    }
    match rule {
        SelectRule::Quota => (quota as usize).min(n),
        SelectRule::Threshold(tau) => select_threshold(confs, tau),
        SelectRule::Factor(f) => select_factor(confs, f),
        SelectRule::CappedThreshold(tau) => select_threshold(confs, tau).min((quota as usize).max(1)),
        // Not a prefix of the ranking: backends take the block's first mask themselves.
        SelectRule::First => 1,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(commit_count(SelectRule::CappedThreshold(0.9), &c, 2), 2);
        assert_eq!(commit_count(SelectRule::CappedThreshold(0.9), &c, 5), 3);
        assert_eq!(commit_count(SelectRule::CappedThreshold(0.9), &[0.3, 0.2], 2), 1);
        assert_eq!(commit_count(SelectRule::CappedThreshold(0.9), &[0.3], 0), 1);
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
        assert_eq!(commit_count(SelectRule::Quota, &[0.7, 0.5, 0.5], 2), 2);
        assert_eq!(commit_count(SelectRule::Quota, &[], 2), 0);
    }
}
