//! Per-op timing (`--profile`) and the cost model every floor is computed from: the bytes an op
//! must move and the FLOPs it must do, shared by the forward's profile and `dllm bench`.

use crate::backend::Backend;
use crate::error::Result;
use crate::model::config::ModelConfig;

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

/// The four GEMMs of a layer as `(n, k)` (out, in): q|k|v, o, gate|up, down (spec §2, §3).
pub fn layer_gemms(cfg: &ModelConfig) -> [(usize, usize); 4] {
    let (d, m) = (cfg.d_model, cfg.mlp_hidden);
    [(cfg.qkv_dim(), d), (d, cfg.n_heads * cfg.head_dim), (2 * m, d), (d, m)]
}

/// Bytes and FLOPs of one layer's attention: `rows` queries (of `batch` rows) reading and
/// writing q|k|v and output activations and every one of the batch's `batch × keys` cached K/V
/// rows, with `s`-byte elements.
pub fn attention_cost(cfg: &ModelConfig, rows: usize, batch: usize, keys: usize, s: f64) -> (f64, f64) {
    let r = rows as f64;
    let kv = (batch * keys) as f64 * 2.0 * cfg.kv_dim() as f64;
    let bytes = (r * (cfg.qkv_dim() + cfg.d_model) as f64 + kv) * s;
    (bytes, 4.0 * r * keys as f64 * (cfg.n_heads * cfg.head_dim) as f64)
}

/// Bytes and FLOPs of `out[rows, n] = x[rows, k] · w[n, k]ᵀ` with `w`-byte weights and
/// `s`-byte activations.
pub fn gemm_cost(rows: usize, n: usize, k: usize, w: f64, s: f64) -> (f64, f64) {
    let (r, n, k) = (rows as f64, n as f64, k as f64);
    (n * k * w + r * (n + k) * s, 2.0 * r * n * k)
}

/// Bytes a forward must move — every weight once (all layers and the LM head; the embedding is
/// only gathered) and the KV cache it reads and writes — and its FLOPs, for `rows_per_batch`
/// query rows against `keys` keys per batch row, with `elem`-byte elements (weights of an FP8
/// model, `cfg.quantization`, 1 byte: the LM head counted as FP8 too).
pub fn forward_cost(
    cfg: &ModelConfig,
    elem: usize,
    batch: usize,
    rows_per_batch: usize,
    keys: usize,
    block: usize,
) -> (f64, f64) {
    let layer_params: f64 = layer_gemms(cfg).iter().map(|&(n, k)| (n * k) as f64).sum();
    let head_params = (cfg.n_logits * cfg.d_model) as f64;
    let kv = 2.0 * cfg.kv_dim() as f64 * (batch * (keys + rows_per_batch)) as f64;
    let welem = if cfg.quantization.is_some() { 1.0 } else { elem as f64 };
    let bytes =
        (cfg.n_layers as f64 * layer_params + head_params) * welem + cfg.n_layers as f64 * kv * elem as f64;
    let rows = (batch * rows_per_batch) as f64;
    let attn = 4.0 * rows * keys as f64 * (cfg.n_heads * cfg.head_dim) as f64;
    let flops =
        cfg.n_layers as f64 * (2.0 * rows * layer_params + attn) + 2.0 * (batch * block) as f64 * head_params;
    (bytes, flops)
}

/// The floor of a forward in ms: `bytes` at `bandwidth` (bytes/s) or `flops` at `gemm` (FLOP/s).
pub fn floor_ms(bandwidth: f64, gemm: f64, bytes: f64, flops: f64) -> f64 {
    (bytes / bandwidth).max(flops / gemm) * 1e3
}
