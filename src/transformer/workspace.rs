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
        })
    }
}
