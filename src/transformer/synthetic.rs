//! Seeded random weights of a real model's shape, generated on the device (`dllm bench`).

use super::rope::rope_tables_for;
use super::{LayerWeights, Weights};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::config::{Arch, ModelConfig};

impl<T> Weights<T> {
    /// Seeded random weights of `cfg`'s shape, generated on the device (`dllm bench
    /// --synthetic`: no file, no host copy). Scales keep activations in a sane range: uniform
    /// with the standard deviation of a 1/sqrt(fan-in) init, norms around 1.
    pub fn synthetic<B: Backend<Tensor = T>>(be: &B, cfg: &ModelConfig, seed: u64) -> Result<Self> {
        let (d, v, m) = (cfg.d_model, cfg.n_logits, cfg.mlp_hidden);
        let mut n = 0u64;
        let mut rand = |rows: usize, cols: usize, offset: f32, scale: f32| -> Result<T> {
            let mut t = be.tensor(rows, cols)?;
            n += 1;
            be.fill_random(&mut t, seed.wrapping_add(n.wrapping_mul(0x2545_f491_4f6c_dd1d)), offset, scale)?;
            Ok(t)
        };
        let lin = |fan_in: usize| (3.0 / fan_in as f32).sqrt(); // uniform [-a, a] with std 1/sqrt(fan_in)
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            layers.push(LayerWeights {
                attn_norm: rand(1, d, 1.0, 0.1)?,
                qkv: rand(cfg.qkv_dim(), d, 0.0, lin(d))?,
                qkv_bias: match cfg.arch {
                    Arch::Dream => Some(rand(1, cfg.qkv_dim(), 0.0, 0.1)?),
                    Arch::Llada => None,
                },
                attn_out: rand(d, d, 0.0, lin(d))?,
                ff_norm: rand(1, d, 1.0, 0.1)?,
                gate_up: rand(2 * m, d, 0.0, lin(d))?,
                down: rand(d, m, 0.0, lin(m))?,
            });
        }
        let (cos, sin) = rope_tables_for(cfg, be.dtype());
        Ok(Weights {
            wte: rand(v, d, 0.0, 1.7)?,
            layers,
            ln_f: rand(1, d, 1.0, 0.1)?,
            lm_head: rand(v, d, 0.0, lin(d))?,
            rope_cos: be.upload_f32(&cos, cfg.max_seq_len, cfg.head_dim)?,
            rope_sin: be.upload_f32(&sin, cfg.max_seq_len, cfg.head_dim)?,
        })
    }
}
