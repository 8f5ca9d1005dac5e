//! The transformer of both families (LLaDA, spec §2; Dream, spec §3), written once over the
//! [`Backend`] ops: the only place the architecture lives. The two differ only in tensor names
//! (`model::layout`), Dream's q/k/v biases, its bf16 RoPE tables and its shifted logits. Weights
//! are laid out for the ops at load: q|k|v stacked into one matrix (and their biases into one row)
//! and gate|up into another, so each is one GEMM on any backend.

pub mod rope;
pub mod synthetic;
pub mod workspace;

pub use rope::{rope_tables, rope_tables_for};
pub use workspace::Workspace;

use crate::backend::{Backend, Heads, Step, Window};
use crate::cache::KvCache;
use crate::dtype::DType;
use crate::error::Result;
use crate::fp8;
use crate::model::checkpoint::{Checkpoint, TensorView};
use crate::model::config::{Arch, ModelConfig};
use crate::model::layout::{tensor_name, Part};
use crate::profile::{attention_cost, gemm_cost, layer_gemms, op, Profiler};

pub struct LayerWeights<T> {
    pub attn_norm: T,
    /// `[q_proj; k_proj; v_proj]`: `[(n_heads + 2·n_kv_heads)·head_dim, d]`.
    pub qkv: T,
    /// Dream: `[q_bias | k_bias | v_bias]`, `[1, qkv_dim]`.
    pub qkv_bias: Option<T>,
    pub attn_out: T,
    pub ff_norm: T,
    /// `[ff_proj (gate, gets SiLU); up_proj]`: `[2·mlp, d]`.
    pub gate_up: T,
    /// `ff_out`, the down projection: `[d, mlp]`.
    pub down: T,
}

/// How linear weights are held on the device (issue 17).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// As the checkpoint stores them: the activation dtype, or FP8 where a quantized
    /// checkpoint's linears are F8_E4M3.
    #[default]
    AsStored,
    /// Every linear in FP8 e4m3 with per-row scales (`crate::fp8`), quantized at load from
    /// the checkpoint's dtype: half the bytes of bf16.
    Fp8,
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

impl<T> Weights<T> {
    /// Upload a validated checkpoint (`model::layout::validate`): linears in `format`, the rest
    /// in the activation dtype (spec §8). `progress(layers_done, n_layers)` is called after each
    /// layer's upload. Errors: a backend without FP8 when a linear is FP8, out of memory.
    pub fn load<B: Backend<Tensor = T>>(
        be: &B,
        ck: &Checkpoint,
        cfg: &ModelConfig,
        format: WeightFormat,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        use Part::*;
        let (d, v, m) = (cfg.d_model, cfg.n_logits, cfg.mlp_hidden);
        let t = |p: Part, i: usize| ck.get(&tensor_name(cfg.arch, p, i));
        let fp8 = format == WeightFormat::Fp8;
        let lin = |parts: &[Part], i: usize, rows: usize, cols: usize| {
            let views = parts.iter().map(|&p| t(p, i)).collect::<Result<Vec<_>>>()?;
            upload_linear(be, ck, &views, rows, cols, fp8)
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let qkv_bias = match cfg.arch {
                Arch::Dream => {
                    Some(be.upload(&[t(QBias, i)?, t(KBias, i)?, t(VBias, i)?], 1, cfg.qkv_dim())?)
                }
                Arch::Llada => None,
            };
            layers.push(LayerWeights {
                attn_norm: be.upload(&[t(AttnNorm, i)?], 1, d)?,
                qkv: lin(&[Q, K, V], i, cfg.qkv_dim(), d)?,
                qkv_bias,
                attn_out: lin(&[O], i, d, cfg.n_heads * cfg.head_dim)?,
                ff_norm: be.upload(&[t(FfNorm, i)?], 1, d)?,
                gate_up: lin(&[Gate, Up], i, 2 * m, d)?,
                down: lin(&[Down], i, d, m)?,
            });
            progress(i + 1, cfg.n_layers);
        }
        let (cos, sin) = rope_tables_for(cfg, be.dtype());
        Ok(Weights {
            wte: be.upload(&[t(Embed, 0)?], v, d)?,
            layers,
            ln_f: be.upload(&[t(FinalNorm, 0)?], 1, d)?,
            lm_head: lin(&[LmHead], 0, v, d)?,
            rope_cos: be.upload_f32(&cos, cfg.max_seq_len, cfg.head_dim)?,
            rope_sin: be.upload_f32(&sin, cfg.max_seq_len, cfg.head_dim)?,
        })
    }
}

/// One linear weight from checkpoint tensors stacked along rows (q|k|v, gate|up): FP8 when any
/// part is stored F8_E4M3 (its codes and `<name>_scale` as stored; dense parts quantized per row
/// beside them) or when `fp8` asks for it; else in the activation dtype.
fn upload_linear<B: Backend>(
    be: &B,
    ck: &Checkpoint,
    parts: &[TensorView<'_>],
    rows: usize,
    cols: usize,
    fp8: bool,
) -> Result<B::Tensor> {
    if !fp8 && parts.iter().all(|p| p.dtype != DType::E4m3) {
        return be.upload(parts, rows, cols);
    }
    let (mut codes, mut scales) = (Vec::with_capacity(rows * cols), Vec::with_capacity(rows));
    for p in parts {
        let r = p.shape[0];
        if p.dtype == DType::E4m3 {
            codes.extend_from_slice(p.bytes);
            scales.extend(ck.fp8_scales(p.name, r)?);
        } else {
            let (c, s) = fp8::quantize_rows(&p.to_f32(), r, cols);
            codes.extend(c);
            scales.extend(s);
        }
    }
    be.upload_fp8(&codes, &scales, rows, cols)
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
    mut prof: Option<&mut Profiler<B::Mark>>,
) -> Result<()> {
    let rows = step.rows();
    let hs = heads(cfg);
    let s = be.dtype().size() as f64;
    let (d, m, r) = (cfg.d_model, cfg.mlp_hidden, rows as f64);
    let act = |cols: usize| r * cols as f64 * s;
    let p = &mut prof;
    let ws_elem = w.layers.first().map_or(s, |lw| weight_elem(be, &lw.qkv));
    op(be, p, "embed", 2.0 * act(d), 0.0, || be.embed(&w.wte, canvas, step, &mut ws.h))?;
    for (l, lw) in w.layers.iter().enumerate() {
        be.range_push("layer");
        let [(qb, qf), (ob, of), (gb, gf), (db, df)] =
            layer_gemms(cfg).map(|(n, k)| gemm_cost(rows, n, k, ws_elem, s));
        let (att_bytes, att_flops) = attention_cost(cfg, rows, step.batch, step.canvas, s);
        // the first layer's input norm; every later one comes fused with the residual add before it
        if l == 0 {
            op(be, p, "rmsnorm", 2.0 * act(d), 4.0 * r * d as f64, || {
                be.rmsnorm(&ws.h, &lw.attn_norm, cfg.rms_eps, rows, &mut ws.a)
            })?;
        }
        let x8 = ws.fp8.as_mut().map(|f| &mut f.a);
        op(be, p, "linear qkv", qb, qf, || linear(be, &ws.a, x8, &lw.qkv, rows, &mut ws.qkv))?;
        if let Some(bias) = &lw.qkv_bias {
            op(be, p, "qkv bias", 2.0 * act(cfg.qkv_dim()), r * cfg.qkv_dim() as f64, || {
                be.add_bias(&mut ws.qkv, bias, rows)
            })?;
        }
        op(be, p, "rope + kv write", 2.0 * act(cfg.qkv_dim()), 6.0 * act(cfg.qkv_dim()) / s, || {
            be.rope_store_kv(
                &mut ws.qkv,
                &w.rope_cos,
                &w.rope_sin,
                pads,
                step,
                hs,
                &mut cache.k[l],
                &mut cache.v[l],
            )
        })?;
        op(be, p, "attention", att_bytes, att_flops, || {
            be.attention(&ws.qkv, &cache.k[l], &cache.v[l], pads, step, hs, &mut ws.attn)
        })?;
        let x8 = ws.fp8.as_mut().map(|f| &mut f.attn);
        op(be, p, "linear o", ob, of, || linear(be, &ws.attn, x8, &lw.attn_out, rows, &mut ws.proj))?;
        op(be, p, "residual add + rmsnorm", 5.0 * act(d), 5.0 * r * d as f64, || {
            be.add_rmsnorm(&mut ws.h, &ws.proj, &lw.ff_norm, cfg.rms_eps, rows, &mut ws.a)
        })?;
        let x8 = ws.fp8.as_mut().map(|f| &mut f.a);
        op(be, p, "linear gate|up", gb, gf, || linear(be, &ws.a, x8, &lw.gate_up, rows, &mut ws.gate_up))?;
        op(be, p, "swiglu", 3.0 * act(m), 5.0 * r * m as f64, || be.swiglu(&ws.gate_up, rows, &mut ws.act))?;
        let x8 = ws.fp8.as_mut().map(|f| &mut f.act);
        op(be, p, "linear down", db, df, || linear(be, &ws.act, x8, &lw.down, rows, &mut ws.proj))?;
        match w.layers.get(l + 1) {
            Some(next) => op(be, p, "residual add + rmsnorm", 5.0 * act(d), 5.0 * r * d as f64, || {
                be.add_rmsnorm(&mut ws.h, &ws.proj, &next.attn_norm, cfg.rms_eps, rows, &mut ws.a)
            })?,
            None => {
                op(be, p, "residual add", 3.0 * act(d), r * d as f64, || be.add(&mut ws.h, &ws.proj, rows))?
            }
        }
        be.range_pop();
    }
    Ok(())
}

/// `out = x · wᵀ`; an FP8 `w` (issue 17) takes `x` quantized per row into `x8` first (the
/// workspace's FP8 buffer of `x`'s width, present when the model is FP8).
fn linear<B: Backend>(
    be: &B,
    x: &B::Tensor,
    x8: Option<&mut B::Tensor>,
    w: &B::Tensor,
    rows: usize,
    out: &mut B::Tensor,
) -> Result<()> {
    if be.stored_dtype(w) != DType::E4m3 {
        return be.linear(x, w, rows, out);
    }
    let Some(x8) = x8 else {
        return Err(crate::Error::Device(
            "an FP8 weight without an FP8 workspace (config has no quantization)".into(),
        ));
    };
    be.quantize_fp8(x, rows, x8)?;
    be.linear(x8, w, rows, out)
}

/// Bytes one element of a weight occupies on the device.
fn weight_elem<B: Backend>(be: &B, w: &B::Tensor) -> f64 {
    match be.stored_dtype(w) {
        DType::E4m3 => 1.0,
        _ => be.stored_size() as f64,
    }
}

/// Logits of the current block's positions only (the final norm and the LM head never touch the
/// rest of the window), into `ws.logits` as `[batch × block.len, n_logits]`. Dream's come from
/// the row before each position (spec §3).
pub fn block_logits<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Tensor>,
    ws: &mut Workspace<B::Tensor>,
    step: Step,
    block: Window,
    mut prof: Option<&mut Profiler<B::Mark>>,
) -> Result<()> {
    let rows = step.batch * block.len;
    let s = be.dtype().size() as f64;
    let d = cfg.d_model;
    let act = 2.0 * (rows * d) as f64 * s;
    let p = &mut prof;
    op(be, p, "gather block", act, 0.0, || {
        be.gather_block(&ws.h, step, block, cfg.arch == Arch::Dream, &mut ws.block_h)
    })?;
    op(be, p, "rmsnorm", act, 4.0 * (rows * d) as f64, || {
        be.rmsnorm(&ws.block_h, &w.ln_f, cfg.rms_eps, rows, &mut ws.block_norm)
    })?;
    let (lb, lf) = gemm_cost(rows, cfg.n_logits, d, weight_elem(be, &w.lm_head), s);
    let x8 = ws.fp8.as_mut().map(|f| &mut f.a);
    op(be, p, "lm head", lb, lf, || linear(be, &ws.block_norm, x8, &w.lm_head, rows, &mut ws.logits))
}
