//! RoPE cos/sin tables, built on the host in fp32 in the reference's order (spec §2, §3).

use crate::dtype::DType;
use crate::model::config::{Arch, ModelConfig};

/// RoPE cos/sin tables exactly as spec §2 orders the fp32 operations:
/// `inv_freq = 1 / θ^(arange(0, hd, 2) / hd)`, `angle = f32(pos) · inv_freq`, duplicated halves.
/// Dream casts cos/sin to the activation dtype before rotating (spec §3): for a bf16 Dream model
/// the tables are rounded to bf16 (the rotation itself stays fp32 with one rounding, a difference
/// within the bf16 tolerance of spec §8).
pub fn rope_tables_for(cfg: &ModelConfig, dtype: DType) -> (Vec<f32>, Vec<f32>) {
    let (mut cos, mut sin) = rope_tables(cfg);
    if cfg.arch == Arch::Dream && dtype == DType::Bf16 {
        for x in cos.iter_mut().chain(sin.iter_mut()) {
            *x = half::bf16::from_f32(*x).to_f32();
        }
    }
    (cos, sin)
}

/// The fp32 tables of [`rope_tables_for`], before any cast.
pub fn rope_tables(cfg: &ModelConfig) -> (Vec<f32>, Vec<f32>) {
    let hd = cfg.head_dim;
    let inv_freq: Vec<f32> =
        (0..hd / 2).map(|i| 1.0f32 / cfg.rope_theta.powf((2 * i) as f32 / hd as f32)).collect();
    let mut cos = Vec::with_capacity(cfg.max_seq_len * hd);
    let mut sin = Vec::with_capacity(cfg.max_seq_len * hd);
    for pos in 0..cfg.max_seq_len {
        for _half in 0..2 {
            for f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
}
