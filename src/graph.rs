//! The LLaDA transformer (spec §2), written once over the [`Backend`] ops: the only place the
//! architecture lives. Weights are laid out for the ops at load: q|k|v stacked into one matrix and
//! gate|up into another, so each is one GEMM on any backend.

use crate::backend::{Backend, Heads, Step, Window};
use crate::cache::KvCache;
use crate::error::Result;
use crate::model::checkpoint::{Checkpoint, DType};
use crate::model::config::ModelConfig;

pub struct LayerWeights<T> {
    pub attn_norm: T,
    /// `[q_proj; k_proj; v_proj]`: `[(n_heads + 2·n_kv_heads)·head_dim, d]`.
    pub qkv: T,
    pub attn_out: T,
    pub ff_norm: T,
    /// `[ff_proj (gate, gets SiLU); up_proj]`: `[2·mlp, d]`.
    pub gate_up: T,
    /// `ff_out`, the down projection: `[d, mlp]`.
    pub down: T,
}

pub struct Weights<T> {
    pub wte: T,
    pub layers: Vec<LayerWeights<T>>,
    pub ln_f: T,
    pub lm_head: T,
    /// RoPE tables `[max_sequence_length, head_dim]`, built on the host in fp32 (spec §2).
    pub rope_cos: T,
    pub rope_sin: T,
}

/// Every tensor a LLaDA checkpoint must hold, with its shape (spec §2 table).
pub fn llada_layout(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, v, m, kv) = (cfg.d_model, cfg.n_logits, cfg.mlp_hidden, cfg.kv_dim());
    let p = "model.transformer.";
    let mut out = vec![(format!("{p}wte.weight"), vec![v, d])];
    for i in 0..cfg.n_layers {
        let b = format!("{p}blocks.{i}.");
        out.extend([
            (format!("{b}attn_norm.weight"), vec![d]),
            (format!("{b}q_proj.weight"), vec![d, d]),
            (format!("{b}k_proj.weight"), vec![kv, d]),
            (format!("{b}v_proj.weight"), vec![kv, d]),
            (format!("{b}attn_out.weight"), vec![d, d]),
            (format!("{b}ff_norm.weight"), vec![d]),
            (format!("{b}ff_proj.weight"), vec![m, d]),
            (format!("{b}up_proj.weight"), vec![m, d]),
            (format!("{b}ff_out.weight"), vec![d, m]),
        ]);
    }
    out.push((format!("{p}ln_f.weight"), vec![d]));
    out.push((format!("{p}ff_out.weight"), vec![v, d]));
    out
}

/// RoPE cos/sin tables exactly as spec §2 orders the fp32 operations:
/// `inv_freq = 1 / θ^(arange(0, hd, 2) / hd)`, `angle = f32(pos) · inv_freq`, duplicated halves.
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

impl<T> Weights<T> {
    /// Validate the checkpoint against the config (every name, shape, one dtype) and upload.
    /// Returns the weights and the checkpoint's dtype, which is the activation dtype (spec §8).
    /// `progress(layers_done, n_layers)` is called after each layer's upload.
    pub fn load<B: Backend<Tensor = T>>(
        be: &B,
        ck: &Checkpoint,
        cfg: &ModelConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let (d, v, m) = (cfg.d_model, cfg.n_logits, cfg.mlp_hidden);
        let p = "model.transformer.";
        let one = |name: &str, rows: usize, cols: usize| be.upload(&[ck.get(name)?], rows, cols);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let b = format!("{p}blocks.{i}.");
            let t = |n: &str| ck.get(&format!("{b}{n}.weight"));
            layers.push(LayerWeights {
                attn_norm: be.upload(&[t("attn_norm")?], 1, d)?,
                qkv: be.upload(&[t("q_proj")?, t("k_proj")?, t("v_proj")?], cfg.qkv_dim(), d)?,
                attn_out: be.upload(&[t("attn_out")?], d, d)?,
                ff_norm: be.upload(&[t("ff_norm")?], 1, d)?,
                gate_up: be.upload(&[t("ff_proj")?, t("up_proj")?], 2 * m, d)?,
                down: be.upload(&[t("ff_out")?], d, m)?,
            });
            progress(i + 1, cfg.n_layers);
        }
        let (cos, sin) = rope_tables(cfg);
        Ok(Weights {
            wte: one(&format!("{p}wte.weight"), v, d)?,
            layers,
            ln_f: one(&format!("{p}ln_f.weight"), 1, d)?,
            lm_head: one(&format!("{p}ff_out.weight"), v, d)?,
            rope_cos: be.upload_f32(&cos, cfg.max_seq_len, cfg.head_dim)?,
            rope_sin: be.upload_f32(&sin, cfg.max_seq_len, cfg.head_dim)?,
        })
    }
}

/// Check a checkpoint against the LLaDA layout of `cfg`; returns its dtype.
pub fn validate(ck: &Checkpoint, cfg: &ModelConfig) -> Result<DType> {
    ck.validate(&llada_layout(cfg))
}

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

pub fn heads(cfg: &ModelConfig) -> Heads {
    Heads { n_heads: cfg.n_heads, n_kv_heads: cfg.n_kv_heads, head_dim: cfg.head_dim }
}

/// One forward of the window's rows (spec §2). Fresh post-RoPE K/V of the window land in the
/// cache; queries attend over every cached key of their row. Leaves the last hidden state of the
/// window in `ws.h`.
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Tensor>,
    ws: &mut Workspace<B::Tensor>,
    cache: &mut KvCache<B::Tensor>,
    canvas: &B::Ids,
    pads: &B::Ids,
    step: Step,
) -> Result<()> {
    let rows = step.rows();
    let hs = heads(cfg);
    be.embed(&w.wte, canvas, step, &mut ws.h)?;
    for (l, lw) in w.layers.iter().enumerate() {
        be.rmsnorm(&ws.h, &lw.attn_norm, cfg.rms_eps, rows, &mut ws.a)?;
        be.linear(&ws.a, &lw.qkv, rows, &mut ws.qkv)?;
        be.rope_store_kv(
            &mut ws.qkv,
            &w.rope_cos,
            &w.rope_sin,
            pads,
            step,
            hs,
            &mut cache.k[l],
            &mut cache.v[l],
        )?;
        be.attention(&ws.qkv, &cache.k[l], &cache.v[l], pads, step, hs, &mut ws.attn)?;
        be.linear(&ws.attn, &lw.attn_out, rows, &mut ws.proj)?;
        be.add(&mut ws.h, &ws.proj, rows)?;
        be.rmsnorm(&ws.h, &lw.ff_norm, cfg.rms_eps, rows, &mut ws.a)?;
        be.linear(&ws.a, &lw.gate_up, rows, &mut ws.gate_up)?;
        be.swiglu(&ws.gate_up, rows, &mut ws.act)?;
        be.linear(&ws.act, &lw.down, rows, &mut ws.proj)?;
        be.add(&mut ws.h, &ws.proj, rows)?;
    }
    Ok(())
}

/// Logits of the current block's rows only (the final norm and the LM head never touch the rest
/// of the window), into `ws.logits` as `[batch × block.len, n_logits]`.
pub fn block_logits<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Tensor>,
    ws: &mut Workspace<B::Tensor>,
    step: Step,
    block: Window,
) -> Result<()> {
    let rows = step.batch * block.len;
    be.gather_block(&ws.h, step, block, &mut ws.block_h)?;
    be.rmsnorm(&ws.block_h, &w.ln_f, cfg.rms_eps, rows, &mut ws.block_norm)?;
    be.linear(&ws.block_norm, &w.lm_head, rows, &mut ws.logits)
}
