//! The counter-based random numbers every backend draws identically: the Gumbel noise of
//! temperature sampling (twin of `kernels/common.cuh`) and synthetic weights (twin of
//! `kernels/fill.cu`). Pure functions of their keys, so a row's noise is the same in any batch,
//! thread count and backend.

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
