//! The activation buffers of a forward, allocated once per decode call.

use crate::backend::Backend;
use crate::error::Result;
use crate::model::config::ModelConfig;

/// Activation buffers, sized once for the largest window (the whole canvas) of a batch.
pub struct Workspace<T> {
    pub h: T,
    pub a: T,
    pub qkv: T,
    pub attn: T,
    pub proj: T,
    pub gate_up: T,
    pub act: T,
    /// The current block's rows, `[batch × block_length, d]`, and their final norm.
    pub block_h: T,
    pub block_norm: T,
    /// `[batch × block_length, n_logits]`.
    pub logits: T,
    /// An FP8 model's (`cfg.quantization`) linear inputs, quantized per row (issue 17).
    pub fp8: Option<Fp8Inputs<T>>,
}

/// FP8 buffers (codes and per-row scales) of the linears' inputs, one per input width.
pub struct Fp8Inputs<T> {
    /// The normed hidden state, `[rows, d]`: input of q|k|v, gate|up and the LM head.
    pub a: T,
    /// The attention output, `[rows, n_heads · head_dim]`: input of o.
    pub attn: T,
    /// The SwiGLU output, `[rows, mlp]`: input of down.
    pub act: T,
}

impl<T> Workspace<T> {
    pub fn new<B: Backend<Tensor = T>>(
        be: &B,
        cfg: &ModelConfig,
        batch: usize,
        canvas: usize,
        block: usize,
    ) -> Result<Self> {
        let rows = batch * canvas;
        let brows = batch * block;
        Ok(Workspace {
            h: be.tensor(rows, cfg.d_model)?,
            a: be.tensor(rows, cfg.d_model)?,
            qkv: be.tensor(rows, cfg.qkv_dim())?,
            attn: be.tensor(rows, cfg.d_model)?,
            proj: be.tensor(rows, cfg.d_model)?,
            gate_up: be.tensor(rows, 2 * cfg.mlp_hidden)?,
            act: be.tensor(rows, cfg.mlp_hidden)?,
            block_h: be.tensor(brows, cfg.d_model)?,
            block_norm: be.tensor(brows, cfg.d_model)?,
            logits: be.tensor(brows, cfg.n_logits)?,
            fp8: match cfg.quantization {
                None => None,
                Some(_) => Some(Fp8Inputs {
                    a: be.tensor_fp8(rows, cfg.d_model)?,
                    attn: be.tensor_fp8(rows, cfg.n_heads * cfg.head_dim)?,
                    act: be.tensor_fp8(rows, cfg.mlp_hidden)?,
                }),
            },
        })
    }
}
