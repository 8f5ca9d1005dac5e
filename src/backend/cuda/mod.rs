//! The CUDA backend: the kernels of `kernels/` (one fatbin, built by build.rs and embedded here)
//! and cuBLAS GEMMs, driven through cudarc on one stream.
//!
//! - cudarc loads libcuda and libcublas at run time (`dynamic-loading`): a machine without a
//!   driver or a GPU gets an error from [`Cuda::new`], never a panic.
//! - Activations run in the checkpoint's dtype (spec §8): f32 checkpoints in f32 with pure FP32
//!   GEMMs (`CUBLAS_COMPUTE_32F`, no TF32) so CPU and GPU agree token for token on the fixtures;
//!   bf16 checkpoints in bf16 with fp32 accumulation.
//! - Every buffer is allocated at set-up (weights, KV cache, workspace, candidate arrays); the ops
//!   only launch kernels and GEMMs on the stream. The one host synchronisation of a step is the
//!   read-back of the per-row commit counts in [`Backend::select`].
//! - Each op is checked against its CPU twin by `tests/gpu.rs` (skipped without a GPU).
//!
//! This file holds the backend and its ops (shape checks, then launches). Beside it: `options`
//! (the knobs and their environment variables), `device` (the embedded kernels, allocation,
//! launches), `attention` (attention's launch geometry and key splits), `gemm` (cuBLAS,
//! cuBLASLt and the GEMM tuner), `fp8` (the FP8 W8A8 linears: quantization, cuBLASLt's FP8 GEMM
//! and the SIMT fallback), `graphs` (CUDA-graph capture and replay of decode steps).

// The crate's function budget (clippy.toml: 80 lines), enforced here; crate-wide once
// bench.rs and model/tokenizer.rs fit it.

use std::cell::Cell;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream};
use half::bf16;

use super::{Backend, DType, GraphKey, GraphUse, Heads, Sampling, Score, Select, SelectRule, Step, Window};
use crate::error::Result;
use crate::model::checkpoint::TensorView;

mod attention;
mod device;
mod fp8;
mod gemm;
mod graphs;
mod options;

pub use attention::attention_splits;
pub use options::CudaOptions;

use device::{check, check_dtype_and_libraries, drv, Kernels};
use graphs::GraphCache;

#[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
mod params {
    include!(concat!(env!("OUT_DIR"), "/params.rs"));
}
use params::*;

// The count select_commit reports for a row with non-finite logits is the Rust side's.
const _: () = assert!(DLLM_NONFINITE == super::NON_FINITE);

/// Selection ranks a block in one thread block (kernels/params.h).
const MAX_BLOCK_LENGTH: usize = DLLM_MAX_BLOCK_LENGTH as usize;
// The limits as the error messages of attention and select state them.
const _: () = assert!(attention::MAX_HEAD_DIM == 128 && MAX_BLOCK_LENGTH == 1024);

/// The window lies inside the canvas (the kernels index caches by canvas position).
fn window_fits(step: Step) -> bool {
    step.win.start + step.win.len <= step.canvas
}

pub struct Cuda {
    // Field order matters for drop: graphs, cuBLAS and the functions before the context.
    graphs: GraphCache,
    /// bf16 GEMMs through cuBLASLt with per-shape tuned algorithms (None: f32, or no cuBLASLt).
    gemm: Option<gemm::GemmTuner>,
    /// FP8 GEMMs through cuBLASLt, per shape (or the SIMT kernel).
    fp8: fp8::Fp8Gemms,
    blas: CudaBlas,
    _blas_workspace: CudaSlice<u8>,
    /// The workspace's device address (shared by cuBLAS and cuBLASLt: one stream, in order).
    workspace_ptr: u64,
    /// Partial (o, m, l) records of split attention, merged by attention_combine.
    att_partial: CudaSlice<u8>,
    /// Multiprocessors of the GPU: split attention aims to fill them.
    sm_count: usize,
    /// Compute capability (major, minor): FP8 needs 8.9.
    cc: (i32, i32),
    /// The knobs: from the environment at `new`, changed by the test and tuning setters.
    opts: Cell<CudaOptions>,
    k: Kernels,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    dtype: DType,
    device: String,
    /// libnvToolsExt was found: NVTX ranges are emitted.
    nvtx: bool,
}

/// A row-major matrix in device memory, in `dtype` (the activation dtype, or f32 for tables, or
/// e4m3 codes for FP8 weights and activation buffers, with one f32 scale per row in `scales`).
pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
    buf: CudaSlice<u8>,
    /// FP8 only: `[rows]` f32 scales (`crate::fp8`).
    scales: Option<CudaSlice<f32>>,
}

/// Per block position: token and f64 confidence; plus the small per-row arrays of a step.
pub struct CudaCands {
    len: usize,
    tokens: CudaSlice<u32>,
    conf: CudaSlice<f64>,
    active: CudaSlice<u32>,
    quota: CudaSlice<u32>,
    counts: CudaSlice<u32>,
    seeds: CudaSlice<u64>,
    counters: CudaSlice<u64>,
    /// `[batch]` ArgmaxDraw as 3 u64 words each (temperature bits, top_p bits, top_k | score << 32).
    draws: CudaSlice<u64>,
    rules: CudaSlice<u32>,
    params: CudaSlice<f64>,
}

impl Cuda {
    /// Open GPU `ordinal` for a model with activation dtype `dtype` (F32 or BF16), with the
    /// options the environment sets ([`CudaOptions::from_env`]).
    pub fn new(ordinal: usize, dtype: DType) -> Result<Self> {
        Self::with_options(ordinal, dtype, CudaOptions::from_env())
    }

    /// [`Cuda::new`] with explicit options (the environment is not read).
    pub fn with_options(ordinal: usize, dtype: DType, opts: CudaOptions) -> Result<Self> {
        check_dtype_and_libraries(dtype)?;
        let ctx = CudaContext::new(ordinal).map_err(drv("context"))?;
        // One stream, ordered work: cudarc's per-buffer events would only add overhead and get
        // in the way of graph capture.
        // SAFETY: every buffer of this backend is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        // A created stream, not the legacy default one, so a step can later be graph-captured.
        let stream = ctx.new_stream().map_err(drv("stream"))?;
        let device = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let k = Kernels::load(&ctx, dtype)?;
        let (blas, blas_workspace, workspace_ptr) = gemm::cublas_with_workspace(&stream)?;
        // SAFETY: only probes for the shared library.
        let nvtx = unsafe { cudarc::nvtx::sys::is_culib_present() };
        let att_partial =
            stream.alloc_zeros::<u8>(attention::PARTIAL_BYTES).map_err(drv("attention workspace"))?;
        let gemm = gemm::GemmTuner::for_dtype(dtype);
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("multiprocessor count"))?
            .max(1) as usize;
        let cc = ctx.compute_capability().map_err(drv("compute capability"))?;
        Ok(Cuda {
            graphs: GraphCache::new(),
            gemm,
            fp8: fp8::Fp8Gemms::new(),
            blas,
            _blas_workspace: blas_workspace,
            workspace_ptr,
            att_partial,
            sm_count,
            cc,
            opts: Cell::new(opts),
            k,
            stream,
            ctx,
            dtype,
            device,
            nvtx,
        })
    }

    /// The options in force.
    pub fn options(&self) -> CudaOptions {
        self.opts.get()
    }

    /// Force attention's key splits (tests, tuning); `None` restores the automatic choice.
    /// The count is still capped by the workspace and by one split per key tile.
    pub fn force_attention_splits(&self, splits: Option<usize>) {
        self.opts.set(CudaOptions { attention_splits: splits, ..self.opts.get() });
    }

    /// Keep bf16 attention on the CUDA-core kernel (tests compare both paths with the CPU twin).
    pub fn disable_tensor_core_attention(&self, off: bool) {
        self.opts.set(CudaOptions { tensor_core_attention: !off, ..self.opts.get() });
    }

    /// Run every FP8 linear on the SIMT kernel (kernels/linear_fp8.cu), as `DLLM_FP8_GEMM=simt`
    /// does (tests compare both paths with the CPU twin); false restores cuBLASLt where it applies.
    pub fn force_simt_fp8_gemm(&self, on: bool) {
        self.opts.set(CudaOptions { fp8_cublaslt: !on, ..self.opts.get() });
    }

    /// The GPU's compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// (graphs captured, graph replays) so far: tests check that graphs are really used.
    pub fn graph_counts(&self) -> (u64, u64) {
        self.graphs.counts()
    }

    /// Whether NVTX ranges are emitted (libnvToolsExt found).
    pub fn nvtx(&self) -> bool {
        self.nvtx
    }

    /// rmsnorm or add_rmsnorm over `rows` rows of width `d`: `(x, residual)` are the input's
    /// device address and the residual's (0 for a plain rmsnorm).
    #[allow(clippy::too_many_arguments)]
    fn launch_norm(
        &self,
        f: &CudaFunction,
        (x, residual): (u64, u64),
        d: usize,
        w: &CudaTensor,
        eps: f32,
        rows: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        check(w.rows * w.cols == d && out.cols == d && out.rows >= rows, "rmsnorm: shapes")?;
        let p = RmsNormParams {
            x,
            w: self.ptr(&w.buf),
            out: self.ptr_mut(&mut out.buf),
            residual,
            rows: rows as u32,
            d: d as u32,
            eps,
        };
        self.launch(f, Self::grid1(rows), DLLM_RMSNORM_THREADS, 0, &p)
    }
}

impl Backend for Cuda {
    type Tensor = CudaTensor;
    type Ids = CudaSlice<u32>;
    type Cands = CudaCands;
    type Mark = CudaEvent;

    fn max_block_length(&self) -> usize {
        MAX_BLOCK_LENGTH
    }

    fn name(&self) -> String {
        let nvtx = if self.nvtx { "NVTX ranges on" } else { "NVTX off: no libnvToolsExt" };
        format!("cuda ({}, {} activations, {nvtx})", self.device, self.dtype.name())
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn tensor(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        let buf = self.alloc::<u8>(rows * cols * self.dtype.size(), "activations")?;
        Ok(CudaTensor { rows, cols, dtype: self.dtype, buf, scales: None })
    }

    fn upload(&self, parts: &[TensorView<'_>], rows: usize, cols: usize) -> Result<CudaTensor> {
        let mut bytes = Vec::with_capacity(rows * cols * self.dtype.size());
        for p in parts {
            if p.dtype == self.dtype {
                bytes.extend_from_slice(p.bytes);
            } else {
                bytes.extend(self.bytes_of(&p.to_f32(), self.dtype));
            }
        }
        let what = parts.first().map(|p| p.name).unwrap_or("weights");
        self.tensor_of(rows, cols, self.dtype, &bytes, what)
    }

    fn upload_fp8(&self, codes: &[u8], scales: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        self.fp8_tensor(Some((codes, scales)), rows, cols)
    }

    fn tensor_fp8(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        self.fp8_tensor(None, rows, cols)
    }

    fn stored_dtype(&self, t: &CudaTensor) -> DType {
        t.dtype
    }

    fn quantize_fp8(&self, x: &CudaTensor, rows: usize, out: &mut CudaTensor) -> Result<()> {
        self.quantize_fp8_rows(x, rows, out)
    }

    fn upload_f32(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        self.tensor_of(rows, cols, DType::F32, &self.bytes_of(data, DType::F32), "tables")
    }

    fn ids(&self, len: usize) -> Result<CudaSlice<u32>> {
        self.alloc::<u32>(len, "token ids")
    }

    fn cands(&self, len: usize) -> Result<CudaCands> {
        Ok(CudaCands {
            len,
            tokens: self.alloc(len, "candidates")?,
            conf: self.alloc(len, "candidates")?,
            active: self.alloc(len, "candidates")?,
            quota: self.alloc(len, "candidates")?,
            counts: self.alloc(len, "candidates")?,
            seeds: self.alloc(len, "candidates")?,
            counters: self.alloc(len, "candidates")?,
            draws: self.alloc(3 * len, "candidates")?,
            rules: self.alloc(len, "candidates")?,
            params: self.alloc(len, "candidates")?,
        })
    }

    fn write_ids(&self, dst: &mut CudaSlice<u32>, src: &[u32]) -> Result<()> {
        check(dst.len() >= src.len(), "write_ids: destination too small")?;
        let mut view = dst.slice_mut(..src.len());
        self.stream.memcpy_htod(src, &mut view).map_err(drv("write_ids"))
    }

    fn read_ids(&self, src: &CudaSlice<u32>, dst: &mut [u32]) -> Result<()> {
        check(src.len() >= dst.len(), "read_ids: source too small")?;
        let view = src.slice(..dst.len());
        self.stream.memcpy_dtoh(&view, dst).map_err(drv("read_ids"))?;
        self.synchronize()
    }

    fn embed(
        &self,
        table: &CudaTensor,
        canvas: &CudaSlice<u32>,
        step: Step,
        out: &mut CudaTensor,
    ) -> Result<()> {
        check(out.cols == table.cols && out.rows >= step.rows() && table.rows > 0, "embed: shapes")?;
        check(window_fits(step), "embed: window outside the canvas")?;
        check(canvas.len() >= step.batch * step.canvas, "embed: canvas size")?;
        let p = EmbedParams {
            table: self.ptr(&table.buf),
            canvas: self.ptr(canvas),
            out: self.ptr_mut(&mut out.buf),
            step: Self::step_shape(step),
            d: table.cols as u32,
            n_rows_table: table.rows as u32,
        };
        self.launch(&self.k.embed, Self::grid1(step.rows()), 128, 0, &p)
    }

    fn rmsnorm(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        eps: f32,
        rows: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        check(x.rows >= rows, "rmsnorm: input rows")?;
        let xp = self.ptr(&x.buf);
        self.launch_norm(&self.k.rmsnorm, (xp, 0), x.cols, w, eps, rows, out)
    }

    fn add_rmsnorm(
        &self,
        h: &mut CudaTensor,
        x: &CudaTensor,
        w: &CudaTensor,
        eps: f32,
        rows: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        if !self.opts.get().fused_norm {
            self.add(h, x, rows)?;
            return self.rmsnorm(h, w, eps, rows, out);
        }
        check(x.cols == h.cols && h.rows >= rows && x.rows >= rows, "add_rmsnorm: shapes")?;
        let hx = (self.ptr_mut(&mut h.buf), self.ptr(&x.buf));
        self.launch_norm(&self.k.add_rmsnorm, hx, h.cols, w, eps, rows, out)
    }

    fn linear(&self, x: &CudaTensor, w: &CudaTensor, rows: usize, out: &mut CudaTensor) -> Result<()> {
        let (k, n) = (w.cols, w.rows);
        check(x.cols == k && out.cols == n && x.rows >= rows && out.rows >= rows, "linear: shapes")?;
        if w.dtype == DType::E4m3 || x.dtype == DType::E4m3 {
            check(rows.max(n).max(k) <= u32::MAX as usize, "linear: dimension above u32")?;
            return self.linear_fp8(x, w, rows, out);
        }
        check(x.dtype == w.dtype && out.dtype == w.dtype, "linear: dtypes")?;
        check(rows.max(n).max(k) <= i32::MAX as usize, "linear: dimension above i32")?;
        if rows == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(drv("bind"))?;
        let shape = (rows, n, k);
        let operands = (self.ptr(&w.buf), self.ptr(&x.buf), self.ptr_mut(&mut out.buf));
        let gemm_ex = || gemm::gemm_ex(&self.blas, shape, w.dtype, operands);
        match self.gemm.as_ref().filter(|_| w.dtype == DType::Bf16) {
            Some(tuner) => tuner.run(self, shape, operands, &gemm_ex),
            None => gemm_ex(),
        }
    }

    fn rope_store_kv(
        &self,
        qkv: &mut CudaTensor,
        cos: &CudaTensor,
        sin: &CudaTensor,
        pads: &CudaSlice<u32>,
        step: Step,
        heads: Heads,
        k_cache: &mut CudaTensor,
        v_cache: &mut CudaTensor,
    ) -> Result<()> {
        let hd = heads.head_dim;
        check(qkv.cols == heads.q_dim() + 2 * heads.kv_dim() && qkv.rows >= step.rows(), "rope: qkv shape")?;
        check(heads.n_kv_heads > 0 && window_fits(step), "rope: heads or window")?;
        check(cos.cols == hd && sin.cols == hd && cos.rows == sin.rows && cos.rows > 0, "rope: tables")?;
        check(cos.dtype == DType::F32 && sin.dtype == DType::F32 && qkv.dtype == self.dtype, "rope: dtypes")?;
        check(k_cache.cols == heads.kv_dim() && k_cache.rows >= step.batch * step.canvas, "rope: cache")?;
        check(v_cache.cols == heads.kv_dim() && v_cache.rows >= step.batch * step.canvas, "rope: cache")?;
        check(pads.len() >= step.batch, "rope: pads")?;
        let p = RopeKvParams {
            qkv: self.ptr_mut(&mut qkv.buf),
            cos: self.ptr(&cos.buf),
            sin: self.ptr(&sin.buf),
            pads: self.ptr(pads),
            k_cache: self.ptr_mut(&mut k_cache.buf),
            v_cache: self.ptr_mut(&mut v_cache.buf),
            step: Self::step_shape(step),
            n_heads: heads.n_heads as u32,
            n_kv_heads: heads.n_kv_heads as u32,
            head_dim: hd as u32,
            max_pos: cos.rows as u32,
        };
        let grid = (step.rows() as u32, (heads.n_heads + 2 * heads.n_kv_heads) as u32, 1);
        self.launch(&self.k.rope_kv, grid, 64, 0, &p)
    }

    fn attention(
        &self,
        qkv: &CudaTensor,
        k_cache: &CudaTensor,
        v_cache: &CudaTensor,
        pads: &CudaSlice<u32>,
        step: Step,
        heads: Heads,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let hd = heads.head_dim;
        check(hd <= attention::MAX_HEAD_DIM, "attention: head_dim above 128 is not supported")?;
        check(
            heads.n_kv_heads > 0 && heads.n_heads % heads.n_kv_heads == 0,
            "attention: n_kv_heads must divide n_heads",
        )?;
        check(
            pads.len() >= 2 * step.batch && window_fits(step),
            "attention: pads (left pads, row ends) or window",
        )?;
        check(k_cache.cols == heads.kv_dim() && v_cache.cols == heads.kv_dim(), "attention: cache width")?;
        check(out.cols == heads.q_dim() && out.rows >= step.rows(), "attention: output shape")?;
        check(
            qkv.cols == heads.q_dim() + 2 * heads.kv_dim() && qkv.rows >= step.rows(),
            "attention: qkv shape",
        )?;
        check(
            k_cache.rows >= step.batch * step.canvas && v_cache.rows >= step.batch * step.canvas,
            "attention: cache",
        )?;
        let opts = self.opts.get();
        let on_tc = attention::on_tensor_cores(self.k.attention_tc.is_some(), hd, opts);
        let tc = self.k.attention_tc.as_ref().filter(|_| on_tc);
        let geo = attention::Launch::new(step, heads, on_tc, self.sm_count, opts.attention_splits);
        let p = AttentionParams {
            qkv: self.ptr(&qkv.buf),
            k_cache: self.ptr(&k_cache.buf),
            v_cache: self.ptr(&v_cache.buf),
            pads: self.ptr(pads),
            out: self.ptr_mut(&mut out.buf),
            partial: self.ptr(&self.att_partial),
            step: Self::step_shape(step),
            n_heads: heads.n_heads as u32,
            n_kv_heads: heads.n_kv_heads as u32,
            head_dim: hd as u32,
            splits: geo.splits as u32,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        match tc {
            Some(f) => self.launch(f, geo.grid, DLLM_ATT_THREADS, geo.smem, &p)?,
            None => self.launch(&self.k.attention, geo.grid, DLLM_ATT_THREADS, geo.smem, &p)?,
        }
        if let Some((grid, threads)) = geo.combine {
            self.launch(&self.k.attention_combine, grid, threads, 0, &p)?;
        }
        Ok(())
    }

    fn swiglu(&self, gate_up: &CudaTensor, rows: usize, out: &mut CudaTensor) -> Result<()> {
        let m = out.cols;
        check(gate_up.cols == 2 * m && gate_up.rows >= rows && out.rows >= rows, "swiglu: shapes")?;
        let p = SwigluParams {
            gate_up: self.ptr(&gate_up.buf),
            out: self.ptr_mut(&mut out.buf),
            rows: rows as u32,
            mlp: m as u32,
        };
        self.launch(&self.k.swiglu, Self::elementwise_grid(rows * m), 256, 0, &p)
    }

    fn add(&self, h: &mut CudaTensor, x: &CudaTensor, rows: usize) -> Result<()> {
        check(h.cols == x.cols && h.rows >= rows && x.rows >= rows, "add: shapes")?;
        let n = rows * h.cols;
        check(n <= u32::MAX as usize, "add: more than 2^32 elements")?;
        let p = AddParams { h: self.ptr_mut(&mut h.buf), x: self.ptr(&x.buf), n: n as u32 };
        self.launch(&self.k.add, Self::elementwise_grid(n), 256, 0, &p)
    }

    fn add_bias(&self, x: &mut CudaTensor, bias: &CudaTensor, rows: usize) -> Result<()> {
        check(bias.rows * bias.cols == x.cols && x.rows >= rows, "add_bias: shapes")?;
        let n = rows * x.cols;
        check(n <= u32::MAX as usize, "add_bias: more than 2^32 elements")?;
        let p = BiasParams {
            x: self.ptr_mut(&mut x.buf),
            bias: self.ptr(&bias.buf),
            rows: rows as u32,
            cols: x.cols as u32,
        };
        self.launch(&self.k.add_bias, Self::elementwise_grid(n), 256, 0, &p)
    }

    fn gather_block(
        &self,
        h: &CudaTensor,
        step: Step,
        block: Window,
        shift: bool,
        out: &mut CudaTensor,
    ) -> Result<()> {
        check(out.cols == h.cols && out.rows >= step.batch * block.len, "gather_block: output shape")?;
        check(h.rows >= step.rows(), "gather_block: input rows")?;
        check(
            block.start >= step.win.start && block.start + block.len <= step.win.start + step.win.len,
            "gather_block: the block is outside the window",
        )?;
        let p = GatherParams {
            h: self.ptr(&h.buf),
            out: self.ptr_mut(&mut out.buf),
            batch: step.batch as u32,
            d: h.cols as u32,
            win_len: step.win.len as u32,
            offset: (block.start - step.win.start) as u32,
            block_len: block.len as u32,
            shift: shift as u32,
        };
        self.launch(&self.k.gather, Self::grid1(step.batch * block.len), 128, 0, &p)
    }

    fn argmax_confidence(
        &self,
        logits: &CudaTensor,
        pads: &CudaSlice<u32>,
        block: Window,
        batch: usize,
        sampling: Sampling<'_>,
        out: &mut CudaCands,
    ) -> Result<()> {
        let rows = batch * block.len;
        check(block.len > 0 && batch > 0, "argmax_confidence: empty block")?;
        check(logits.rows >= rows && out.len >= rows && pads.len() >= batch, "argmax_confidence: shapes")?;
        check(sampling.draws.len() >= batch, "argmax_confidence: draws")?;
        let score = |s: Score| match s {
            Score::Confidence => DLLM_SCORE_CONFIDENCE,
            Score::NegEntropy => DLLM_SCORE_NEG_ENTROPY,
            Score::NegEntropyF64 => DLLM_SCORE_NEG_ENTROPY_F64,
        };
        let words: Vec<u64> = sampling.draws[..batch]
            .iter()
            .flat_map(|d| {
                [d.temperature.to_bits(), d.top_p.to_bits(), d.top_k as u64 | (score(d.score) as u64) << 32]
            })
            .collect();
        self.stream.memcpy_htod(&words[..], &mut out.draws).map_err(drv("draws"))?;
        if sampling.draws[..batch].iter().any(|d| d.temperature != 0.0) {
            check(
                sampling.seeds.len() >= batch && sampling.counters.len() >= batch,
                "argmax_confidence: seeds",
            )?;
            self.stream.memcpy_htod(&sampling.seeds[..batch], &mut out.seeds).map_err(drv("seeds"))?;
            self.stream
                .memcpy_htod(&sampling.counters[..batch], &mut out.counters)
                .map_err(drv("counters"))?;
        }
        let p = ArgmaxParams {
            logits: self.ptr(&logits.buf),
            pads: self.ptr(pads),
            seeds: self.ptr(&out.seeds),
            counters: self.ptr(&out.counters),
            draws: self.ptr(&out.draws),
            tokens: self.ptr_mut(&mut out.tokens),
            conf: self.ptr_mut(&mut out.conf),
            rows: rows as u32,
            vocab: logits.cols as u32,
            block_start: block.start as u32,
            block_len: block.len as u32,
            mask_id: sampling.mask_id,
            bf16_probs: sampling.bf16_probs as u32,
        };
        self.launch(&self.k.argmax, Self::grid1(rows), DLLM_ARGMAX_THREADS, 0, &p)
    }

    fn top_logprobs(
        &self,
        logits: &CudaTensor,
        drawn: &CudaCands,
        rows: usize,
        n: usize,
        mask_id: u32,
        out: &mut CudaCands,
    ) -> Result<()> {
        check(rows > 0 && logits.rows >= rows && drawn.len >= rows, "top_logprobs: shapes")?;
        check(out.len >= rows * (n + 1), "top_logprobs: output too small")?;
        let p = LogprobParams {
            logits: self.ptr(&logits.buf),
            drawn: self.ptr(&drawn.tokens),
            ids: self.ptr_mut(&mut out.tokens),
            lps: self.ptr_mut(&mut out.conf),
            rows: rows as u32,
            vocab: logits.cols as u32,
            n: n as u32,
            mask_id,
        };
        self.launch(&self.k.logprobs, Self::grid1(rows), DLLM_ARGMAX_THREADS, 0, &p)
    }

    fn select(
        &self,
        cands: &mut CudaCands,
        canvas: &mut CudaSlice<u32>,
        canvas_len: usize,
        sel: Select<'_>,
    ) -> Result<Vec<u32>> {
        let batch = sel.active.len();
        let bl = sel.block.len;
        check(bl <= MAX_BLOCK_LENGTH, "select: block_length above 1024 is not supported")?;
        check(bl > 0 && batch > 0, "select: empty block or batch")?;
        check(cands.len >= batch * bl && cands.len >= batch && sel.quota.len() >= batch, "select: shapes")?;
        check(canvas.len() >= batch * canvas_len && sel.block.start + bl <= canvas_len, "select: canvas")?;
        let active: Vec<u32> = sel.active.iter().map(|&a| a as u32).collect();
        self.stream.memcpy_htod(&active[..], &mut cands.active).map_err(drv("active"))?;
        self.stream.memcpy_htod(&sel.quota[..batch], &mut cands.quota).map_err(drv("quota"))?;
        check(sel.rules.len() >= batch, "select: rules")?;
        let (rules, params): (Vec<u32>, Vec<f64>) = sel.rules[..batch]
            .iter()
            .map(|r| match *r {
                SelectRule::Quota => (DLLM_RULE_QUOTA, 0.0),
                SelectRule::Threshold(t) => (DLLM_RULE_THRESHOLD, t),
                SelectRule::Factor(f) => (DLLM_RULE_FACTOR, f),
                SelectRule::First => (DLLM_RULE_FIRST, 0.0),
                SelectRule::CappedThreshold(t) => (DLLM_RULE_CAPPED_THRESHOLD, t),
            })
            .unzip();
        self.stream.memcpy_htod(&rules[..], &mut cands.rules).map_err(drv("rules"))?;
        self.stream.memcpy_htod(&params[..], &mut cands.params).map_err(drv("params"))?;
        let p = SelectParams {
            tokens: self.ptr(&cands.tokens),
            conf: self.ptr(&cands.conf),
            canvas: self.ptr_mut(canvas),
            active: self.ptr(&cands.active),
            quota: self.ptr(&cands.quota),
            counts: self.ptr_mut(&mut cands.counts),
            rules: self.ptr(&cands.rules),
            params: self.ptr(&cands.params),
            batch: batch as u32,
            canvas_len: canvas_len as u32,
            block_start: sel.block.start as u32,
            block_len: bl as u32,
            mask_id: sel.mask_id,
            pad_: 0,
        };
        self.launch(&self.k.select, Self::grid1(batch), bl.div_ceil(32) as u32 * 32, 0, &p)?;
        let mut counts = vec![0u32; batch];
        let view = cands.counts.slice(..batch);
        self.stream.memcpy_dtoh(&view, &mut counts[..]).map_err(drv("counts"))?;
        self.synchronize()?;
        Ok(counts)
    }

    fn mark(&self) -> Result<CudaEvent> {
        self.stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("event"))
    }

    fn elapsed_ms(&self, from: &CudaEvent, to: &CudaEvent) -> Result<f64> {
        from.elapsed_ms(to).map(f64::from).map_err(drv("event timing"))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv("synchronize"))
    }

    fn copy(&self, src: &CudaTensor, dst: &mut CudaTensor) -> Result<()> {
        check(src.rows == dst.rows && src.cols == dst.cols && src.dtype == dst.dtype, "copy: shapes")?;
        if let (Some(s), Some(d)) = (&src.scales, &mut dst.scales) {
            self.stream.memcpy_dtod(s, d).map_err(drv("copy"))?;
        }
        self.stream.memcpy_dtod(&src.buf, &mut dst.buf).map_err(drv("copy"))
    }

    fn fill_random(&self, t: &mut CudaTensor, seed: u64, offset: f32, scale: f32) -> Result<()> {
        check(t.dtype == self.dtype, "fill_random: tensor not in the activation dtype")?;
        let n = t.rows * t.cols;
        let p = FillParams { out: self.ptr_mut(&mut t.buf), n: n as u64, seed, offset, scale };
        let grid = (n.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1);
        self.launch(&self.k.fill, grid, 256, 0, &p)
    }

    fn tuning_report(&self) -> Vec<String> {
        let mut lines = self.gemm.as_ref().map(|g| g.report()).unwrap_or_default();
        lines.extend(self.fp8.report());
        lines
    }

    fn cand_bytes(&self) -> usize {
        // tokens, conf, active, quota, counts, seeds, counters, draws (3 words), rules, params:
        // the fields `cands` allocates, `len` entries each
        4 + 8 + 4 + 4 + 4 + 8 + 8 + 3 * 8 + 4 + 8
    }

    fn memory_used(&self) -> Option<u64> {
        self.ctx.mem_get_info().ok().map(|(free, total)| (total - free) as u64)
    }

    fn range_push(&self, name: &str) {
        if self.nvtx {
            cudarc::nvtx::result::range_push(name);
        }
    }

    fn range_pop(&self) {
        if self.nvtx {
            cudarc::nvtx::result::range_pop();
        }
    }

    fn graph_step(&self, key: GraphKey, step: &mut dyn FnMut() -> Result<()>) -> Result<GraphUse> {
        self.graphs.run(&self.stream, key, step)
    }

    fn reset_graphs(&self) {
        self.graphs.clear();
    }

    fn tensor_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        check(data.len() == rows * cols, "tensor_from_host: data does not match its shape")?;
        self.tensor_of(rows, cols, self.dtype, &self.bytes_of(data, self.dtype), "host data")
    }

    fn to_host(&self, t: &CudaTensor, rows: usize) -> Result<Vec<f32>> {
        check(rows <= t.rows, "to_host: more rows than the matrix has")?;
        if t.dtype == DType::E4m3 {
            return self.fp8_dequantized(t, rows);
        }
        let n = rows * t.cols * t.dtype.size();
        let mut bytes = vec![0u8; n];
        let view = t.buf.slice(..n);
        self.stream.memcpy_dtoh(&view, &mut bytes[..]).map_err(drv("to_host"))?;
        self.synchronize()?;
        Ok(match t.dtype {
            DType::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            _ => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        })
    }

    fn read_cands(&self, c: &CudaCands, len: usize) -> Result<(Vec<u32>, Vec<f64>)> {
        check(len <= c.len, "read_cands: too many")?;
        let mut tokens = vec![0u32; len];
        let mut conf = vec![0f64; len];
        self.stream.memcpy_dtoh(&c.tokens.slice(..len), &mut tokens[..]).map_err(drv("read_cands"))?;
        self.stream.memcpy_dtoh(&c.conf.slice(..len), &mut conf[..]).map_err(drv("read_cands"))?;
        self.synchronize()?;
        Ok((tokens, conf))
    }
}
