//! The transformer of both families (LLaDA, spec §2; Dream, spec §3), written once over the
//! [`Backend`] ops: the only place the architecture lives. The two differ only in tensor names,
//! Dream's q/k/v biases, its bf16 RoPE tables and its shifted logits. Weights are laid out for the
//! ops at load: q|k|v stacked into one matrix (and their biases into one row) and gate|up into
//! another, so each is one GEMM on any backend.

use crate::backend::{Backend, Heads, Step, Window};
use crate::cache::KvCache;
use crate::error::Result;
use crate::model::checkpoint::{Checkpoint, DType};
use crate::model::config::{Arch, ModelConfig};

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

pub struct Weights<T> {
    pub wte: T,
    pub layers: Vec<LayerWeights<T>>,
    pub ln_f: T,
    pub lm_head: T,
    /// RoPE tables `[max_sequence_length, head_dim]`, built on the host in fp32 (spec §2).
    pub rope_cos: T,
    pub rope_sin: T,
}

/// One tensor of a checkpoint, named per family by [`tensor_name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Embed,
    FinalNorm,
    LmHead,
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    O,
    FfNorm,
    Gate,
    Up,
    Down,
}

/// The checkpoint name of `part` (of layer `layer` for per-layer parts): spec §2 for LLaDA,
/// spec §3 for Dream.
pub fn tensor_name(arch: Arch, part: Part, layer: usize) -> String {
    use Part::*;
    match arch {
        Arch::Llada => {
            let p = "model.transformer.";
            let n = match part {
                Embed => return format!("{p}wte.weight"),
                FinalNorm => return format!("{p}ln_f.weight"),
                LmHead => return format!("{p}ff_out.weight"),
                AttnNorm => "attn_norm",
                Q => "q_proj",
                K => "k_proj",
                V => "v_proj",
                QBias | KBias | VBias => unreachable!("LLaDA has no biases"),
                O => "attn_out",
                FfNorm => "ff_norm",
                Gate => "ff_proj",
                Up => "up_proj",
                Down => "ff_out",
            };
            format!("{p}blocks.{layer}.{n}.weight")
        }
        Arch::Dream => {
            let n = match part {
                Embed => return "model.embed_tokens.weight".into(),
                FinalNorm => return "model.norm.weight".into(),
                LmHead => return "lm_head.weight".into(),
                AttnNorm => "input_layernorm.weight",
                Q => "self_attn.q_proj.weight",
                K => "self_attn.k_proj.weight",
                V => "self_attn.v_proj.weight",
                QBias => "self_attn.q_proj.bias",
                KBias => "self_attn.k_proj.bias",
                VBias => "self_attn.v_proj.bias",
                O => "self_attn.o_proj.weight",
                FfNorm => "post_attention_layernorm.weight",
                Gate => "mlp.gate_proj.weight",
                Up => "mlp.up_proj.weight",
                Down => "mlp.down_proj.weight",
            };
            format!("model.layers.{layer}.{n}")
        }
    }
}

/// Every tensor a checkpoint of `cfg`'s family must hold, with its shape (spec §2, §3).
pub fn layout(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    use Part::*;
    let (d, v, m, q, kv) =
        (cfg.d_model, cfg.n_logits, cfg.mlp_hidden, cfg.n_heads * cfg.head_dim, cfg.kv_dim());
    let name = |p, i| tensor_name(cfg.arch, p, i);
    let mut out = vec![(name(Embed, 0), vec![v, d])];
    for i in 0..cfg.n_layers {
        out.extend([
            (name(AttnNorm, i), vec![d]),
            (name(Q, i), vec![q, d]),
            (name(K, i), vec![kv, d]),
            (name(V, i), vec![kv, d]),
        ]);
        if cfg.arch == Arch::Dream {
            out.extend([(name(QBias, i), vec![q]), (name(KBias, i), vec![kv]), (name(VBias, i), vec![kv])]);
        }
        out.extend([
            (name(O, i), vec![d, q]),
            (name(FfNorm, i), vec![d]),
            (name(Gate, i), vec![m, d]),
            (name(Up, i), vec![m, d]),
            (name(Down, i), vec![d, m]),
        ]);
    }
    out.push((name(FinalNorm, 0), vec![d]));
    out.push((name(LmHead, 0), vec![v, d]));
    out
}

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
        use Part::*;
        let (d, v, m) = (cfg.d_model, cfg.n_logits, cfg.mlp_hidden);
        let t = |p: Part, i: usize| ck.get(&tensor_name(cfg.arch, p, i));
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
                qkv: be.upload(&[t(Q, i)?, t(K, i)?, t(V, i)?], cfg.qkv_dim(), d)?,
                qkv_bias,
                attn_out: be.upload(&[t(O, i)?], d, cfg.n_heads * cfg.head_dim)?,
                ff_norm: be.upload(&[t(FfNorm, i)?], 1, d)?,
                gate_up: be.upload(&[t(Gate, i)?, t(Up, i)?], 2 * m, d)?,
                down: be.upload(&[t(Down, i)?], d, m)?,
            });
            progress(i + 1, cfg.n_layers);
        }
        let (cos, sin) = rope_tables_for(cfg, be.dtype());
        Ok(Weights {
            wte: be.upload(&[t(Embed, 0)?], v, d)?,
            layers,
            ln_f: be.upload(&[t(FinalNorm, 0)?], 1, d)?,
            lm_head: be.upload(&[t(LmHead, 0)?], v, d)?,
            rope_cos: be.upload_f32(&cos, cfg.max_seq_len, cfg.head_dim)?,
            rope_sin: be.upload_f32(&sin, cfg.max_seq_len, cfg.head_dim)?,
        })
    }
}

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

/// Check a checkpoint against the layout of `cfg`'s family; returns its dtype.
pub fn validate(ck: &Checkpoint, cfg: &ModelConfig) -> Result<DType> {
    ck.validate(&layout(cfg))
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

/// Time and floor inputs of one kind of op, summed over calls (`--profile`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpStat {
    pub calls: usize,
    pub ms: f64,
    /// Bytes the op must move and FLOPs it must do: achieved GB/s and TFLOP/s against them.
    pub bytes: f64,
    pub flops: f64,
}

/// Per-op timings: marks queued around each op, resolved once the step's work has run.
pub struct Profiler<M> {
    pending: Vec<(&'static str, M, M, f64, f64)>,
    /// Op kinds in first-seen order.
    pub ops: Vec<(&'static str, OpStat)>,
}

impl<M> Default for Profiler<M> {
    fn default() -> Self {
        Profiler { pending: vec![], ops: vec![] }
    }
}

impl<M> Profiler<M> {
    /// Turn the queued marks into times (waits for the device).
    pub fn resolve<B: Backend<Mark = M>>(&mut self, be: &B) -> Result<()> {
        for (name, a, b, bytes, flops) in self.pending.drain(..) {
            let ms = be.elapsed_ms(&a, &b)?;
            let i = match self.ops.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    self.ops.push((name, OpStat::default()));
                    self.ops.len() - 1
                }
            };
            let st = &mut self.ops[i].1;
            st.calls += 1;
            st.ms += ms;
            st.bytes += bytes;
            st.flops += flops;
        }
        Ok(())
    }
}

/// Run one op inside a timeline range (NVTX), between two marks when profiling.
pub fn op<B: Backend>(
    be: &B,
    prof: &mut Option<&mut Profiler<B::Mark>>,
    name: &'static str,
    bytes: f64,
    flops: f64,
    f: impl FnOnce() -> Result<()>,
) -> Result<()> {
    be.range_push(name);
    let r = match prof {
        Some(p) => {
            let a = be.mark()?;
            let r = f();
            let b = be.mark()?;
            p.pending.push((name, a, b, bytes, flops));
            r
        }
        None => f(),
    };
    be.range_pop();
    r
}

/// Bytes and FLOPs of `out[rows, n] = x[rows, k] · w[n, k]ᵀ` with `s`-byte elements.
fn gemm_cost(rows: usize, n: usize, k: usize, s: f64) -> (f64, f64) {
    let (r, n, k) = (rows as f64, n as f64, k as f64);
    ((n * k + r * (n + k)) * s, 2.0 * r * n * k)
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
    op(be, p, "embed", 2.0 * act(d), 0.0, || be.embed(&w.wte, canvas, step, &mut ws.h))?;
    for (l, lw) in w.layers.iter().enumerate() {
        be.range_push("layer");
        let (qb, qf) = gemm_cost(rows, cfg.qkv_dim(), d, s);
        let (ob, of) = gemm_cost(rows, d, d, s);
        let (gb, gf) = gemm_cost(rows, 2 * m, d, s);
        let (db, df) = gemm_cost(rows, d, m, s);
        let keys = (step.batch * step.canvas) as f64;
        let att_bytes = act(cfg.qkv_dim()) + 2.0 * keys * cfg.kv_dim() as f64 * s + act(d);
        let att_flops = 4.0 * r * step.canvas as f64 * (cfg.n_heads * cfg.head_dim) as f64;
        // the first layer's input norm; every later one comes fused with the residual add before it
        if l == 0 {
            op(be, p, "rmsnorm", 2.0 * act(d), 4.0 * r * d as f64, || {
                be.rmsnorm(&ws.h, &lw.attn_norm, cfg.rms_eps, rows, &mut ws.a)
            })?;
        }
        op(be, p, "linear qkv", qb, qf, || be.linear(&ws.a, &lw.qkv, rows, &mut ws.qkv))?;
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
        op(be, p, "linear o", ob, of, || be.linear(&ws.attn, &lw.attn_out, rows, &mut ws.proj))?;
        op(be, p, "residual add + rmsnorm", 5.0 * act(d), 5.0 * r * d as f64, || {
            be.add_rmsnorm(&mut ws.h, &ws.proj, &lw.ff_norm, cfg.rms_eps, rows, &mut ws.a)
        })?;
        op(be, p, "linear gate|up", gb, gf, || be.linear(&ws.a, &lw.gate_up, rows, &mut ws.gate_up))?;
        op(be, p, "swiglu", 3.0 * act(m), 5.0 * r * m as f64, || be.swiglu(&ws.gate_up, rows, &mut ws.act))?;
        op(be, p, "linear down", db, df, || be.linear(&ws.act, &lw.down, rows, &mut ws.proj))?;
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
    let (lb, lf) = gemm_cost(rows, cfg.n_logits, d, s);
    op(be, p, "lm head", lb, lf, || be.linear(&ws.block_norm, &w.lm_head, rows, &mut ws.logits))
}
