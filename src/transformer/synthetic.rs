//! Seeded random weights of a real model's shape, generated on the device (`dllm bench`).

use super::rope::rope_tables_for;
use super::{LayerWeights, Weights};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::config::{Arch, ModelConfig};

impl<T> Weights<T> {
    /// Seeded random weights of `cfg`'s shape, generated on the device (`dllm bench
    /// --synthetic`: no file, no host copy). Scales keep activations in a sane range: uniform
    /// with the standard deviation of a 1/sqrt(fan-in) init, norms around 1. With
    /// `cfg.quantization` the linears are quantized to FP8 on the device (per-row scales).
    pub fn synthetic<B: Backend<Tensor = T>>(be: &B, cfg: &ModelConfig, seed: u64) -> Result<Self> {
        let (d, v, m) = (cfg.d_model, cfg.n_logits, cfg.mlp_hidden);
        let n = std::cell::Cell::new(0u64);
        let rand = |rows: usize, cols: usize, offset: f32, scale: f32| -> Result<T> {
            let mut t = be.tensor(rows, cols)?;
            n.set(n.get() + 1);
            be.fill_random(
                &mut t,
                seed.wrapping_add(n.get().wrapping_mul(0x2545_f491_4f6c_dd1d)),
                offset,
                scale,
            )?;
            Ok(t)
        };
        let lin = |fan_in: usize| (3.0 / fan_in as f32).sqrt(); // uniform [-a, a] with std 1/sqrt(fan_in)
        let fp8 = cfg.quantization.is_some();
        // a linear weight: random in the activation dtype, then (FP8 models) quantized per row
        let weight = |rows: usize, cols: usize, fan_in: usize| -> Result<T> {
            let dense = rand(rows, cols, 0.0, lin(fan_in))?;
            if !fp8 {
                return Ok(dense);
            }
            let mut q = be.tensor_fp8(rows, cols)?;
            be.quantize_fp8(&dense, rows, &mut q)?;
            Ok(q)
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            layers.push(LayerWeights {
                attn_norm: rand(1, d, 1.0, 0.1)?,
                qkv: weight(cfg.qkv_dim(), d, d)?,
                qkv_bias: match cfg.arch {
                    Arch::Dream => Some(rand(1, cfg.qkv_dim(), 0.0, 0.1)?),
                    Arch::Llada => None,
                },
                attn_out: weight(d, d, d)?,
                ff_norm: rand(1, d, 1.0, 0.1)?,
                gate_up: weight(2 * m, d, d)?,
                down: weight(d, m, m)?,
            });
        }
        let (cos, sin) = rope_tables_for(cfg, be.dtype());
        Ok(Weights {
            wte: rand(v, d, 0.0, 1.7)?,
            layers,
            ln_f: rand(1, d, 1.0, 0.1)?,
            lm_head: weight(v, d, d)?,
            rope_cos: be.upload_f32(&cos, cfg.max_seq_len, cfg.head_dim)?,
            rope_sin: be.upload_f32(&sin, cfg.max_seq_len, cfg.head_dim)?,
        })
    }
}
