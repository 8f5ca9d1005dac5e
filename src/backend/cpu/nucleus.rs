//! The CPU twin of argmax_conf's allowed set (`kernels/argmax_conf.cu`, issue 19): top-k and
//! nucleus (top-p) sampling as one cut on the logits. A token may be drawn iff it is not the mask
//! and `order_key(l_v) ≥ cut`. The kernel finds the same cut by bisection over the keys; here the
//! non-mask logits are sorted. The nucleus's masses are f64 sums, sequential here and
//! tree-reduced on the GPU: the two agree unless a mass lands within rounding of `top_p · Z`.

use crate::backend::Draw;

/// A u32 key with the order of the f32 values (−0 just below +0; NaNs above +inf or below −inf
/// by sign, never reached: a row holding one has no cut).
pub fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The lowest key a row's draw allows (0: every token). `max` is the row's largest logit (mask
/// included); a row holding a non-finite logit gets no cut (its score is NaN and it commits
/// nothing anyway).
pub fn cut(logits: &[f32], mask_id: u32, draw: &Draw) -> u32 {
    if !draw.restricted() || !logits.iter().all(|x| x.is_finite()) {
        return 0;
    }
    let mut keys: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|&(v, _)| v != mask_id as usize)
        .map(|(_, &x)| (order_key(x), x))
        .collect();
    keys.sort_unstable_by_key(|k| std::cmp::Reverse(k.0));
    let k = draw.top_k as usize;
    let cut_k = if k > 0 && k < keys.len() { keys[k - 1].0 } else { 0 };
    let cut_p = if draw.top_p < 1.0 { nucleus_cut(logits, &keys, draw) } else { 0 };
    cut_k.max(cut_p)
}

/// The lowest key whose non-mask tokens strictly above it carry mass below `top_p · Z`, with
/// `e_v = exp((l_v − max) / T)` and `Z = Σ_v e_v` over the whole vocabulary (f64). `keys`: the
/// non-mask (key, logit) pairs, descending.
fn nucleus_cut(logits: &[f32], keys: &[(u32, f32)], draw: &Draw) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let t = draw.temperature;
    let e = |x: f32| ((x as f64 - max) / t).exp();
    let z: f64 = logits.iter().map(|&x| e(x)).sum();
    let bound = draw.top_p * z;
    let mut above = 0.0;
    let mut cut = 0;
    let mut i = 0;
    while i < keys.len() {
        if above >= bound {
            break;
        }
        let key = keys[i].0;
        cut = key;
        // every token of this key is kept; their mass counts for the keys below
        while i < keys.len() && keys[i].0 == key {
            above += e(keys[i].1);
            i += 1;
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Score;

    fn draw(top_k: u32, top_p: f64) -> Draw {
        Draw { temperature: 1.0, top_k, top_p, score: Score::Confidence }
    }

    fn allowed(l: &[f32], mask: u32, d: &Draw) -> Vec<usize> {
        let c = cut(l, mask, d);
        (0..l.len()).filter(|&v| v != mask as usize && order_key(l[v]) >= c).collect()
    }

    #[test]
    fn keys_keep_the_order_of_floats() {
        let xs = [f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) <= order_key(w[1]), "{} {}", w[0], w[1]);
        }
        assert!(order_key(-0.0) < order_key(0.0));
    }

    #[test]
    fn top_k_keeps_the_k_highest_non_mask_logits_and_ties_at_the_cut() {
        let l = [0.5, 3.0, 2.0, 9.0, 2.0, -1.0];
        assert_eq!(allowed(&l, 3, &draw(1, 1.0)), [1]); // 9.0 is the mask
        assert_eq!(allowed(&l, 3, &draw(2, 1.0)), [1, 2, 4]); // the tie at 2.0 stays
        assert_eq!(allowed(&l, 3, &draw(5, 1.0)), [0, 1, 2, 4, 5]);
        assert_eq!(allowed(&l, 3, &draw(9, 1.0)), [0, 1, 2, 4, 5]);
    }

    #[test]
    fn nucleus_keeps_tokens_while_the_mass_above_is_below_p() {
        // probabilities 0.5, 0.25, 0.125, 0.125 (ln 2 steps); no mask among them (id 9)
        let ln2 = std::f32::consts::LN_2;
        let l = [3.0 * ln2, 2.0 * ln2, ln2, ln2];
        assert_eq!(allowed(&l, 9, &draw(0, 0.49)), [0]); // mass above token 1 is 0.5, not < 0.49
        assert_eq!(allowed(&l, 9, &draw(0, 0.51)), [0, 1]);
        assert_eq!(allowed(&l, 9, &draw(0, 0.8)), [0, 1, 2, 3]); // tie at the cut
        assert_eq!(allowed(&l, 9, &draw(0, 0.7)), [0, 1]);
        assert_eq!(allowed(&l, 9, &draw(1, 0.8)), [0]); // top-k and nucleus intersect
                                                        // the mask's mass counts in Z but never in the mass above: with e^9 of a total ≈ e^9 + 14,
                                                        // token 0 carries ≈ 8 / e^9 ≈ 0.00099 of it
        let with_mask = [3.0 * ln2, 2.0 * ln2, 9.0, ln2];
        assert_eq!(allowed(&with_mask, 2, &draw(0, 0.0009)), [0]);
        assert_eq!(allowed(&with_mask, 2, &draw(0, 0.0011)), [0, 1]);
        // greedy or unrestricted draws have no cut; a non-finite row neither
        assert_eq!(cut(&l, 9, &Draw { temperature: 0.0, ..draw(1, 0.5) }), 0);
        assert_eq!(cut(&[1.0, f32::NAN], 9, &draw(1, 1.0)), 0);
    }
}
