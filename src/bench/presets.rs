//! What `dllm bench` runs: the model shapes (presets of the real models, scaled down on a CPU),
//! workload S1 and its variants, and the synthetic prompts and special ids.

use crate::backend::rng::synthetic_value;
use crate::cache::CacheMode;
use crate::error::{Error, Result};
use crate::model::{Arch, ModelConfig, SpecialIds};

pub const PRESETS: &[&str] = &["llada-8b", "dream-7b", "tiny"];

/// A preset's config, divided by `scale` (a power of two) in width, depth, MLP and vocabulary;
/// head_dim stays that of the real model.
pub fn preset(name: &str, scale: usize) -> Result<ModelConfig> {
    let (arch, kv_heads, eps) = match name {
        "dream-7b" => (Arch::Dream, 4, 1e-6),
        _ => (Arch::Llada, 0, 1e-5),
    };
    let base = match name {
        // spec §2: LLaDA-8B-Instruct
        "llada-8b" => (4096, 32, 32, 12288, 126464, 500000.0),
        // spec §3: Dream-v0-7B (GQA: 28 query heads over 4 KV heads)
        "dream-7b" => (3584, 28, 28, 18944, 152064, 1000000.0),
        // a small shape for quick runs
        "tiny" => (512, 4, 4, 1536, 8192, 10000.0),
        other => {
            return Err(Error::options(format!("unknown preset `{other}` (presets: {})", PRESETS.join(", "))))
        }
    };
    if scale == 0 || !scale.is_power_of_two() {
        return Err(Error::options(format!("--scale {scale} must be a power of two")));
    }
    let (d, layers, heads, mlp, vocab, theta) = base;
    let head_dim = d / heads;
    let heads = (heads / scale).max(1);
    let d = heads * head_dim;
    let kv = if kv_heads == 0 { heads } else { (kv_heads / scale).max(1) };
    let kv = if heads % kv == 0 { kv } else { 1 };
    Ok(ModelConfig {
        arch,
        d_model: d,
        n_layers: (layers / scale).max(1),
        n_heads: heads,
        n_kv_heads: kv,
        head_dim,
        mlp_hidden: (mlp / scale).max(1),
        n_logits: (vocab / scale).max(64),
        vocab_size: (vocab / scale).max(64),
        rms_eps: eps,
        rope_theta: theta,
        max_seq_len: 4096,
        mask_token_id: None,
        eos_token_ids: vec![],
        pad_token_id: None,
        quantization: None,
    })
}

/// One S1 variant.
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: &'static str,
    pub cache: CacheMode,
    pub batch: usize,
}

pub const VARIANTS: &[Variant] = &[
    Variant { name: "s1-base", cache: CacheMode::None, batch: 1 },
    Variant { name: "s1-prefix", cache: CacheMode::Prefix, batch: 1 },
    Variant { name: "s1-dual", cache: CacheMode::Dual, batch: 1 },
    Variant { name: "s1-dual-b4", cache: CacheMode::Dual, batch: 4 },
    Variant { name: "s1-dual-b16", cache: CacheMode::Dual, batch: 16 },
];

/// S1's sizes divided by `scale`: prompt 512, gen 256 (kept a multiple of the block), steps 80.
pub fn s1(scale: usize) -> (usize, usize, usize) {
    let scale = scale.max(1);
    let gen = (256 / scale).max(32) / 32 * 32;
    let steps = (80 / scale).max(gen / 32);
    let steps = steps / (gen / 32) * (gen / 32);
    ((512 / scale).max(1), gen, steps)
}

/// Seeded prompt ids below the specials (which sit at the top of the synthetic vocabulary).
pub fn synthetic_prompt(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    (0..len)
        .map(|i| {
            let u = synthetic_value(seed, i as u64, 0.5, 0.5); // [0, 1)
            ((u * (vocab - 8) as f32) as u32).min(vocab as u32 - 9)
        })
        .collect()
}

/// The special ids of a synthetic model: mask and EOS at the top of the vocabulary.
pub fn synthetic_special(cfg: &ModelConfig) -> SpecialIds {
    let v = cfg.n_logits as u32;
    SpecialIds { mask: v - 1, eos: v - 2, pad: v - 2, bos: None, stop: vec![v - 2] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::forward_cost;

    #[test]
    fn presets_keep_the_real_head_dim_and_scale_down() {
        let full = preset("llada-8b", 1).unwrap();
        assert_eq!((full.d_model, full.n_layers, full.mlp_hidden, full.n_logits), (4096, 32, 12288, 126464));
        let (bytes, _) = forward_cost(&full, 2, 1, 0, 0, 0);
        // spec §2: 8.0 G params, of which the 1.04 G embedding is only gathered
        assert!((bytes / 1e9 - 15.0).abs() < 0.1, "{bytes}");
        let small = preset("llada-8b", 16).unwrap();
        assert_eq!((small.head_dim, small.n_heads, small.d_model, small.n_layers), (128, 2, 256, 2));
        assert!(preset("gpt-9", 1).is_err());
        let dream = preset("dream-7b", 1).unwrap();
        assert_eq!((dream.arch, dream.d_model, dream.n_layers, dream.n_kv_heads), (Arch::Dream, 3584, 28, 4));
        assert_eq!((dream.head_dim, dream.mlp_hidden, dream.n_logits), (128, 18944, 152064));
        let d4 = preset("dream-7b", 4).unwrap();
        assert_eq!((d4.n_heads, d4.n_kv_heads, d4.head_dim), (7, 1, 128));
        assert!(preset("llada-8b", 3).is_err());
    }

    #[test]
    fn s1_sizes() {
        assert_eq!(s1(1), (512, 256, 80));
        assert_eq!(s1(4), (128, 64, 20));
        let (_, g, steps) = s1(64);
        assert_eq!(g % 32, 0);
        assert_eq!(steps % (g / 32), 0);
    }
}
