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

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::bf16;

use super::{Backend, DType, GraphUse, Heads, Sampling, Score, Select, SelectRule, Step, Window};
use crate::error::{Error, Result};
use crate::model::checkpoint::TensorView;

mod gemm;

#[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
mod params {
    include!(concat!(env!("OUT_DIR"), "/params.rs"));
}
use params::*;

// The count select_commit reports for a row with non-finite logits is the Rust side's.
const _: () = assert!(DLLM_NONFINITE == super::NON_FINITE);

// SAFETY: plain #[repr(C)] structs of integers and floats, passed by value to the kernels that
// declare the same struct (kernels/params.h).
unsafe impl DeviceRepr for EmbedParams {}
unsafe impl DeviceRepr for RmsNormParams {}
unsafe impl DeviceRepr for RopeKvParams {}
unsafe impl DeviceRepr for AttentionParams {}
unsafe impl DeviceRepr for SwigluParams {}
unsafe impl DeviceRepr for AddParams {}
unsafe impl DeviceRepr for BiasParams {}
unsafe impl DeviceRepr for GatherParams {}
unsafe impl DeviceRepr for ArgmaxParams {}
unsafe impl DeviceRepr for SelectParams {}
unsafe impl DeviceRepr for FillParams {}

/// Every kernel of `kernels/*.cu`, compiled for sm_80/86/89/90a (+ compute_80 PTX).
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dllm.fatbin"));
/// ptxas's registers / shared memory / spill report of every kernel, from the build.
pub static PTXAS_REPORT: &str = include_str!(concat!(env!("OUT_DIR"), "/ptxas-report.txt"));

// Launch geometry from kernels/params.h (one definition with the kernels), as usize.
/// Attention keeps the head in shared memory and registers: head_dim ≤ 128 (LLaDA, Dream: 128).
const MAX_HEAD_DIM: usize = DLLM_ATT_MAX_HEAD_DIM as usize;
/// Selection ranks a block in one thread block.
const MAX_BLOCK_LENGTH: usize = DLLM_MAX_BLOCK_LENGTH as usize;
const ATT_QROWS: usize = DLLM_ATT_QROWS as usize;
const ATT_KTILE: usize = DLLM_ATT_KTILE as usize;
/// Workspace of the split attention's partial records (f32 [splits][rows][heads][hd + 2]).
const ATT_PARTIAL_BYTES: usize = 16 << 20;
/// At most this many key splits, each of at least `ATT_MIN_SPLIT_KEYS` keys.
const ATT_MAX_SPLITS: usize = 16;
const ATT_MIN_SPLIT_KEYS: usize = 64;
/// The tensor-core attention (bf16, head_dim 128): 64 query rows a block.
const ATT_TC_ROWS: usize = DLLM_ATT_TC_ROWS as usize;
const ATT_TC_HEAD_DIM: usize = DLLM_ATT_TC_HEAD_DIM as usize;
// The limits as the error messages of attention and select state them.
const _: () = assert!(MAX_HEAD_DIM == 128 && MAX_BLOCK_LENGTH == 1024);

fn drv(what: &str) -> impl Fn(DriverError) -> Error + '_ {
    // Format the CUresult itself: Debug on a DriverError would call back into the driver.
    move |e: DriverError| Error::Device(format!("CUDA {what}: {:?}", e.0))
}

/// The window lies inside the canvas (the kernels index caches by canvas position).
fn window_fits(step: Step) -> bool {
    step.win.start + step.win.len <= step.canvas
}

/// Key splits for an attention launch of `blocks` (query tiles × heads × rows) over at most `keys`
/// keys, each split's partial records taking `records_per_split` floats: about one block per
/// multiprocessor when the query tiles alone cannot fill them (an in-block step: one or two tiles
/// a head), never below `ATT_MIN_SPLIT_KEYS` keys a split (a forced count: one key tile), at most
/// `ATT_MAX_SPLITS`, and within the partial-record workspace. (Four blocks per multiprocessor
/// before run 10: the H100 sweep of run 6 ran an in-block step fastest at the fewest splits
/// tried, 3 of 3/6/12/24, each split adding partial records for attention_combine to merge;
/// run 10 on an H200 measured 5 splits 0.11 ms a step faster than 12.)
pub fn attention_splits(
    sm_count: usize,
    forced: Option<usize>,
    blocks: usize,
    keys: usize,
    records_per_split: usize,
) -> usize {
    let wanted = match forced {
        Some(s) => s.min(keys.div_ceil(ATT_KTILE)),
        None => sm_count.div_ceil(blocks.max(1)).min(keys.div_ceil(ATT_MIN_SPLIT_KEYS)),
    };
    let fits = ATT_PARTIAL_BYTES / (records_per_split.max(1) * 4);
    wanted.min(ATT_MAX_SPLITS).min(fits).max(1)
}

fn check(cond: bool, what: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Device(format!("cuda backend: {what}")))
    }
}

struct Kernels {
    embed: CudaFunction,
    rmsnorm: CudaFunction,
    add_rmsnorm: CudaFunction,
    rope_kv: CudaFunction,
    attention: CudaFunction,
    attention_combine: CudaFunction,
    /// bf16 only (None for f32): kernels/attention_tc.cu.
    attention_tc: Option<CudaFunction>,
    swiglu: CudaFunction,
    add: CudaFunction,
    add_bias: CudaFunction,
    gather: CudaFunction,
    argmax: CudaFunction,
    select: CudaFunction,
    fill: CudaFunction,
}

/// cuBLAS gets a fixed workspace so that no GEMM allocates, which graph capture requires.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

pub struct Cuda {
    // Field order matters for drop: graphs, cuBLAS and the functions before the context.
    graphs: RefCell<HashMap<u64, CudaGraph>>,
    /// Step keys run once eagerly: a key is captured on its second use, so that one-time work
    /// (GEMM tuning) happens outside any capture.
    graph_seen: RefCell<HashSet<u64>>,
    /// A capture is in progress (GEMM tuning must wait for an eager call).
    capturing: Cell<bool>,
    /// bf16 GEMMs through cuBLASLt with per-shape tuned algorithms (None: f32, or no cuBLASLt).
    lt: Option<gemm::LtGemms>,
    /// Twice the L2 size, written before each timed GEMM while tuning; allocated at the first
    /// tuning (eager, outside any capture).
    l2_flush: RefCell<Option<CudaSlice<u8>>>,
    /// Off once a capture failed (then every step runs eagerly).
    graphs_on: Cell<bool>,
    captures: Cell<u64>,
    replays: Cell<u64>,
    blas: CudaBlas,
    _blas_workspace: CudaSlice<u8>,
    /// The workspace's device address (shared by cuBLAS and cuBLASLt: one stream, in order).
    workspace_ptr: u64,
    /// Partial (o, m, l) records of split attention, merged by attention_combine.
    att_partial: CudaSlice<u8>,
    /// Multiprocessors of the GPU: split attention aims to fill them.
    sm_count: usize,
    /// Tests and tuning: force the key splits of attention (None: `attention_splits` decides).
    att_splits_forced: Cell<Option<usize>>,
    /// Tests and tuning (`DLLM_ATTENTION=simt`): keep bf16 on the CUDA-core kernel.
    att_tc_off: Cell<bool>,
    /// `DLLM_UNFUSED=1`: add_rmsnorm runs as its two kernels (same-machine comparisons).
    unfused: bool,
    k: Kernels,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    dtype: DType,
    device: String,
    /// libnvToolsExt was found: NVTX ranges are emitted.
    nvtx: bool,
}

/// A row-major matrix in device memory, in `dtype` (the activation dtype, or f32 for tables).
pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
    buf: CudaSlice<u8>,
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
}

impl Cuda {
    /// Open GPU `ordinal` for a model with activation dtype `dtype` (F32 or BF16).
    pub fn new(ordinal: usize, dtype: DType) -> Result<Self> {
        if dtype == DType::F16 {
            return Err(Error::Device(
                "F16 checkpoints run on the CPU backend only (use --device cpu)".into(),
            ));
        }
        // SAFETY: probing for the shared libraries; no CUDA call is made before they are found.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Device("no NVIDIA driver (libcuda.so) on this machine".into()));
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Device(
                "libcublas.so.13 not found: add the CUDA 13 libraries to LD_LIBRARY_PATH".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("context"))?;
        // One stream, ordered work: cudarc's per-buffer events would only add overhead and get
        // in the way of graph capture.
        // SAFETY: every buffer of this backend is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        // A created stream, not the legacy default one, so a step can later be graph-captured.
        let stream = ctx.new_stream().map_err(drv("stream"))?;
        let device = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let module =
            ctx.load_module(Ptx::from_binary(FATBIN.to_vec())).map_err(drv("loading the kernels"))?;
        let sfx = match dtype {
            DType::Bf16 => "bf16",
            _ => "f32",
        };
        let f = |name: &str| module.load_function(name).map_err(drv(name));
        let k = Kernels {
            embed: f(&format!("embed_{sfx}"))?,
            rmsnorm: f(&format!("rmsnorm_{sfx}"))?,
            add_rmsnorm: f(&format!("add_rmsnorm_{sfx}"))?,
            rope_kv: f(&format!("rope_kv_{sfx}"))?,
            attention: f(&format!("attention_{sfx}"))?,
            attention_combine: f(&format!("attention_combine_{sfx}"))?,
            attention_tc: if dtype == DType::Bf16 { Some(f("attention_tc_bf16")?) } else { None },
            swiglu: f(&format!("swiglu_{sfx}"))?,
            add: f(&format!("add_{sfx}"))?,
            add_bias: f(&format!("add_bias_{sfx}"))?,
            gather: f(&format!("gather_{sfx}"))?,
            argmax: f(&format!("argmax_conf_{sfx}"))?,
            select: f("select_commit")?,
            fill: f(&format!("fill_random_{sfx}"))?,
        };
        let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::Device(format!("cuBLAS: {:?}", e.0)))?;
        let mut workspace =
            stream.alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES).map_err(drv("cuBLAS workspace"))?;
        let wp = workspace.device_ptr_mut(&stream).0;
        // SAFETY: the workspace lives as long as the handle (both fields of this struct).
        unsafe { blas_sys::cublasSetWorkspace_v2(*blas.handle(), wp as *mut c_void, CUBLAS_WORKSPACE_BYTES) }
            .result()
            .map_err(|e| Error::Device(format!("cuBLAS workspace: {:?}", e.0)))?;
        // SAFETY: only probes for the shared library.
        let nvtx = unsafe { cudarc::nvtx::sys::is_culib_present() };
        let att_partial = stream.alloc_zeros::<u8>(ATT_PARTIAL_BYTES).map_err(drv("attention workspace"))?;
        let lt = if dtype == DType::Bf16 {
            match gemm::LtGemms::new() {
                Ok(g) => Some(g),
                Err(e) => {
                    eprintln!("warning: {e}; bf16 GEMMs use cublasGemmEx's default algorithm");
                    None
                }
            }
        } else {
            None
        };
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("multiprocessor count"))?
            .max(1) as usize;
        Ok(Cuda {
            graphs: RefCell::new(HashMap::new()),
            graph_seen: RefCell::new(HashSet::new()),
            capturing: Cell::new(false),
            lt,
            l2_flush: RefCell::new(None),
            graphs_on: Cell::new(true),
            captures: Cell::new(0),
            replays: Cell::new(0),
            blas,
            _blas_workspace: workspace,
            workspace_ptr: wp,
            att_partial,
            sm_count,
            // tuning: DLLM_ATTENTION_SPLITS=N forces N key splits (see force_attention_splits)
            att_splits_forced: Cell::new(
                std::env::var("DLLM_ATTENTION_SPLITS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0),
            ),
            att_tc_off: Cell::new(std::env::var("DLLM_ATTENTION").as_deref() == Ok("simt")),
            unfused: std::env::var("DLLM_UNFUSED").as_deref() == Ok("1"),
            k,
            stream,
            ctx,
            dtype,
            device,
            nvtx,
        })
    }

    /// Time `cublasGemmEx` and cuBLASLt's candidate algorithms for `shape` on the real operands
    /// and keep the fastest (src/backend/cuda/gemm.rs). Synchronises: once per shape, eagerly.
    fn tune_gemm(
        &self,
        lt: &gemm::LtGemms,
        shape: gemm::Shape,
        ops: &gemm::Operands,
        gemm_ex: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        let mark = || self.mark();
        let elapsed = |a: &CudaEvent, b: &CudaEvent| {
            self.synchronize()?;
            self.elapsed_ms(a, b)
        };
        if self.l2_flush.borrow().is_none() {
            let l2 = self
                .ctx
                .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
                .map_err(drv("L2 size"))?
                .max(1 << 20) as usize;
            let buf = self.stream.alloc_zeros::<u8>(2 * l2).map_err(drv("L2 flush buffer"))?;
            *self.l2_flush.borrow_mut() = Some(buf);
        }
        let flush = || -> Result<()> {
            match self.l2_flush.borrow_mut().as_mut() {
                Some(buf) => self.stream.memset_zeros(buf).map_err(drv("L2 flush")),
                None => Ok(()),
            }
        };
        let base = gemm::LtGemms::time(gemm::REPS, gemm_ex, flush, mark, elapsed)?;
        // (µs, candidate number) of the fastest cuBLASLt algorithm, if one beats cublasGemmEx
        let mut best: Option<(f64, usize)> = None;
        let mut tried = 0;
        let mut chosen_plan = None;
        let offered = gemm::LtPlan::new(shape).and_then(|p| Ok((lt.candidates(&p, ops.workspace_bytes)?, p)));
        match offered {
            Ok((algos, mut plan)) => {
                for (i, &algo) in algos.iter().enumerate() {
                    plan.algo = algo;
                    let Ok(t) = gemm::LtGemms::time(gemm::REPS, || lt.run(&plan, ops), flush, mark, elapsed)
                    else {
                        continue;
                    };
                    tried += 1;
                    if t < best.map_or(base, |b| b.0) {
                        best = Some((t, i));
                    }
                }
                if let Some((_, i)) = best {
                    plan.algo = algos[i];
                    chosen_plan = Some(plan);
                }
            }
            Err(e) => eprintln!("warning: {e} for a {shape:?} GEMM; using cublasGemmEx"),
        }
        let (rows, n, k) = shape;
        let (us, chosen) = match best {
            Some((t, i)) => (t, format!("cuBLASLt #{}", i + 1)),
            None => (base, "cublasGemmEx".to_string()),
        };
        let gbs = 2.0 * (n * k + rows * k + rows * n) as f64 / (us * 1e-6) / 1e9;
        lt.report.borrow_mut().push(format!(
            "{rows}×{n}×{k}: {chosen} {us:.1} µs ({gbs:.0} GB/s; cublasGemmEx {base:.1} µs, {tried} cuBLASLt candidates)"
        ));
        lt.plans.borrow_mut().insert(shape, chosen_plan);
        Ok(())
    }

    /// Force attention's key splits (tests, tuning); `None` restores the automatic choice.
    /// The count is still capped by the workspace and by one split per key tile.
    pub fn force_attention_splits(&self, splits: Option<usize>) {
        self.att_splits_forced.set(splits);
    }

    /// Keep bf16 attention on the CUDA-core kernel (tests compare both paths with the CPU twin).
    pub fn disable_tensor_core_attention(&self, off: bool) {
        self.att_tc_off.set(off);
    }

    /// (graphs captured, graph replays) so far: tests check that graphs are really used.
    pub fn graph_counts(&self) -> (u64, u64) {
        (self.captures.get(), self.replays.get())
    }

    /// Whether NVTX ranges are emitted (libnvToolsExt found).
    pub fn nvtx(&self) -> bool {
        self.nvtx
    }

    pub fn device_name(&self) -> &str {
        &self.device
    }

    fn alloc<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(len.max(1)).map_err(|e| {
            let mb = (len * std::mem::size_of::<T>()) as f64 / (1 << 20) as f64;
            match e.0 {
                cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                    let free = self.ctx.mem_get_info().map(|(f, _)| f >> 20).unwrap_or(0);
                    Error::Device(format!(
                        "out of GPU memory allocating {mb:.1} MiB for {what} ({free} MiB free on {})",
                        self.device
                    ))
                }
                other => Error::Device(format!("CUDA alloc of {mb:.1} MiB for {what}: {other:?}")),
            }
        })
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    fn ptr_mut<T>(&self, s: &mut CudaSlice<T>) -> u64 {
        s.device_ptr_mut(&self.stream).0
    }

    fn launch<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        p: &P,
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: smem };
        // SAFETY: `p` is the parameter struct the kernel declares; its pointers address live
        // buffers of this backend sized by the checks of each op.
        unsafe { self.stream.launch_builder(f).arg(p).launch(cfg) }.map(|_| ()).map_err(drv("launch"))
    }

    fn bytes_of(&self, values: &[f32], dtype: DType) -> Vec<u8> {
        match dtype {
            DType::Bf16 => values.iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect(),
            _ => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    fn tensor_of(
        &self,
        rows: usize,
        cols: usize,
        dtype: DType,
        bytes: &[u8],
        what: &str,
    ) -> Result<CudaTensor> {
        check(bytes.len() == rows * cols * dtype.size(), "upload size")?;
        let mut buf = self.alloc::<u8>(bytes.len(), what)?;
        self.stream.memcpy_htod(bytes, &mut buf).map_err(drv("upload"))?;
        Ok(CudaTensor { rows, cols, dtype, buf })
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

    fn step_shape(step: Step) -> StepShape {
        StepShape {
            batch: step.batch as u32,
            canvas_len: step.canvas as u32,
            win_start: step.win.start as u32,
            win_len: step.win.len as u32,
        }
    }

    fn grid1(n: usize) -> (u32, u32, u32) {
        (n as u32, 1, 1)
    }

    fn elementwise_grid(n: usize) -> (u32, u32, u32) {
        (n.div_ceil(256).clamp(1, 65535) as u32, 1, 1)
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
        Ok(CudaTensor { rows, cols, dtype: self.dtype, buf })
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
        if self.unfused {
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
        check(x.dtype == w.dtype && out.dtype == w.dtype, "linear: dtypes")?;
        check(rows.max(n).max(k) <= i32::MAX as usize, "linear: dimension above i32")?;
        if rows == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(drv("bind"))?;
        // Row-major out[rows, n] = x[rows, k] · w[n, k]ᵀ is column-major outᵀ = w · xᵀ:
        // A = w seen as k×n (transposed), B = x seen as k×rows.
        let ty = match w.dtype {
            DType::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
            _ => blas_sys::cudaDataType::CUDA_R_32F,
        };
        let (wp, xp, op) = (self.ptr(&w.buf), self.ptr(&x.buf), self.ptr_mut(&mut out.buf));
        let gemm_ex = || -> Result<()> {
            let (alpha, beta) = (1.0f32, 0.0f32);
            // SAFETY: pointers address live buffers of at least the sizes checked above.
            unsafe {
                blas::gemm_ex(
                    *self.blas.handle(),
                    blas_sys::cublasOperation_t::CUBLAS_OP_T,
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    n as i32,
                    rows as i32,
                    k as i32,
                    &alpha as *const f32 as *const c_void,
                    wp as *const c_void,
                    ty,
                    k as i32,
                    xp as *const c_void,
                    ty,
                    k as i32,
                    &beta as *const f32 as *const c_void,
                    op as *mut c_void,
                    ty,
                    n as i32,
                    // fp32 accumulation; for f32 data this is pure FP32 (no TF32), spec §8
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                )
            }
            .map_err(|e| Error::Device(format!("cuBLAS gemm {rows}x{n}x{k}: {:?}", e.0)))
        };
        let Some(lt) = self.lt.as_ref().filter(|_| w.dtype == DType::Bf16) else { return gemm_ex() };
        if rows > gemm::TUNE_MAX_ROWS {
            return gemm_ex(); // compute-bound: the default is already near the FLOP floor
        }
        let shape = (rows, n, k);
        let ops = gemm::Operands {
            w: wp,
            x: xp,
            out: op,
            workspace: self.workspace_ptr,
            workspace_bytes: CUBLAS_WORKSPACE_BYTES,
            stream: self.stream.cu_stream() as cudarc::cublaslt::sys::cudaStream_t,
        };
        let known = lt.plans.borrow().contains_key(&shape);
        if !known && !self.capturing.get() {
            self.tune_gemm(lt, shape, &ops, &gemm_ex)?;
        }
        match lt.plans.borrow().get(&shape) {
            Some(Some(plan)) => lt.run(plan, &ops),
            _ => gemm_ex(),
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
        check(hd <= MAX_HEAD_DIM, "attention: head_dim above 128 is not supported")?;
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
        // tensor cores for every bf16 window of head_dim 128 (an in-block step's 32 rows too: its
        // keys are split instead); CUDA cores for f32 (exact parity) and other head dims
        let tc = self.k.attention_tc.as_ref().filter(|_| hd == ATT_TC_HEAD_DIM && !self.att_tc_off.get());
        let rows_per_block = if tc.is_some() { ATT_TC_ROWS } else { ATT_QROWS };
        let tiles = step.win.len.div_ceil(rows_per_block);
        let blocks = tiles * heads.n_heads * step.batch;
        let records = step.rows() * heads.n_heads * (hd + 2);
        let splits =
            attention_splits(self.sm_count, self.att_splits_forced.get(), blocks, step.canvas, records);
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
            splits: splits as u32,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let smem = (ATT_QROWS * hd + ATT_KTILE * (hd + 1) + ATT_KTILE * hd) * 4;
        let grid = (tiles as u32, heads.n_heads as u32, (step.batch * splits) as u32);
        match tc {
            Some(f) => self.launch(f, grid, DLLM_ATT_THREADS, 0, &p)?, // static shared memory
            None => self.launch(&self.k.attention, grid, DLLM_ATT_THREADS, smem as u32, &p)?,
        }
        if splits > 1 {
            let grid = (step.rows() as u32, heads.n_heads as u32, 1);
            self.launch(&self.k.attention_combine, grid, hd.next_multiple_of(32) as u32, 0, &p)?;
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
        if sampling.temperature != 0.0 {
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
            tokens: self.ptr_mut(&mut out.tokens),
            conf: self.ptr_mut(&mut out.conf),
            rows: rows as u32,
            vocab: logits.cols as u32,
            block_start: block.start as u32,
            block_len: block.len as u32,
            mask_id: sampling.mask_id,
            score: match sampling.score {
                Score::Confidence => DLLM_SCORE_CONFIDENCE,
                Score::NegEntropy => DLLM_SCORE_NEG_ENTROPY,
            },
            bf16_probs: sampling.bf16_probs as u32,
            pad_: 0,
            temperature: sampling.temperature,
        };
        self.launch(&self.k.argmax, Self::grid1(rows), DLLM_ARGMAX_THREADS, 0, &p)
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
        let (rule, param) = match sel.rule {
            SelectRule::Quota => (DLLM_RULE_QUOTA, 0.0),
            SelectRule::Threshold(t) => (DLLM_RULE_THRESHOLD, t),
            SelectRule::Factor(f) => (DLLM_RULE_FACTOR, f),
            SelectRule::First => (DLLM_RULE_FIRST, 0.0),
            SelectRule::CappedThreshold(t) => (DLLM_RULE_CAPPED_THRESHOLD, t),
        };
        let p = SelectParams {
            tokens: self.ptr(&cands.tokens),
            conf: self.ptr(&cands.conf),
            canvas: self.ptr_mut(canvas),
            active: self.ptr(&cands.active),
            quota: self.ptr(&cands.quota),
            counts: self.ptr_mut(&mut cands.counts),
            batch: batch as u32,
            canvas_len: canvas_len as u32,
            block_start: sel.block.start as u32,
            block_len: bl as u32,
            mask_id: sel.mask_id,
            rule,
            param,
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
        self.lt.as_ref().map(|g| g.report.borrow().clone()).unwrap_or_default()
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

    fn graph_step(&self, key: u64, step: &mut dyn FnMut() -> Result<()>) -> Result<GraphUse> {
        if !self.graphs_on.get() {
            step()?;
            return Ok(GraphUse::Eager);
        }
        if let Some(g) = self.graphs.borrow().get(&key) {
            g.launch().map_err(drv("graph launch"))?;
            self.replays.set(self.replays.get() + 1);
            return Ok(GraphUse::Replayed);
        }
        if self.graph_seen.borrow_mut().insert(key) {
            // first use: eagerly, so that one-time set-up (GEMM tuning) stays out of the graph
            step()?;
            return Ok(GraphUse::Eager);
        }
        // Capture (nothing runs while capturing), then launch the graph to run this step.
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv("begin capture"))?;
        self.capturing.set(true);
        let queued = step();
        self.capturing.set(false);
        match (queued, self.stream.end_capture(CUgraphInstantiate_flags(0))) {
            (Ok(()), Ok(Some(g))) => {
                g.upload().map_err(drv("graph upload"))?;
                g.launch().map_err(drv("graph launch"))?;
                self.graphs.borrow_mut().insert(key, g);
                self.captures.set(self.captures.get() + 1);
                Ok(GraphUse::Captured)
            }
            // The capture itself was fine: the step's own error (a shape check, say) is the error.
            (Err(e), Ok(Some(_))) => Err(e),
            (queued, captured) => {
                // The work could not be captured: run it eagerly, and every later step too.
                let why = match (&queued, &captured) {
                    (_, Err(e)) => format!("{:?}", e.0),
                    (Err(e), _) => e.to_string(),
                    _ => "empty graph".to_string(),
                };
                eprintln!("warning: CUDA graph capture failed ({why}); running steps without graphs");
                self.graphs_on.set(false);
                self.graphs.borrow_mut().clear();
                step()?;
                Ok(GraphUse::Eager)
            }
        }
    }

    fn reset_graphs(&self) {
        self.graphs.borrow_mut().clear();
        self.graph_seen.borrow_mut().clear();
    }

    fn tensor_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        check(data.len() == rows * cols, "tensor_from_host: data does not match its shape")?;
        self.tensor_of(rows, cols, self.dtype, &self.bytes_of(data, self.dtype), "host data")
    }

    fn to_host(&self, t: &CudaTensor, rows: usize) -> Result<Vec<f32>> {
        check(rows <= t.rows, "to_host: more rows than the matrix has")?;
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

#[cfg(test)]
mod tests {
    use super::attention_splits;

    /// The split counts measured on an H100 (132 SMs; docs/perf.md, runs 4–6) and the limits.
    #[test]
    fn attention_splits_fill_the_gpu_within_the_workspace() {
        // partial-record floats of `rows` query rows of LLaDA-8B (32 heads, head_dim 128)
        let rec = |rows: usize| rows * 32 * 130;
        // in-block, batch 1, 768 keys: tensor cores (1 tile a head) 5 splits, CUDA cores 3
        assert_eq!(attention_splits(132, None, 32, 768, rec(32)), 5);
        assert_eq!(attention_splits(132, None, 64, 768, rec(32)), 3);
        // batch 4 in-block (128 blocks on tensor cores): 2
        assert_eq!(attention_splits(132, None, 128, 768, rec(128)), 2);
        // a block start (768 rows) fills the GPU alone, and its records would not fit anyway
        assert_eq!(attention_splits(132, None, 384, 768, rec(768)), 1);
        // batch 16 in-block (512 blocks) fills it alone too
        assert_eq!(attention_splits(132, None, 512, 768, rec(512)), 1);
        // a forced count is capped by the workspace: 512 rows' records fill its 16 MiB once
        assert_eq!(attention_splits(132, Some(4), 512, 768, rec(512)), 1);
        // few keys: at least 64 a split; a forced count: at least one 32-key tile a split
        assert_eq!(attention_splits(132, None, 8, 100, rec(4)), 2);
        assert_eq!(attention_splits(132, Some(7), 8, 100, rec(4)), 4);
        assert_eq!(attention_splits(132, Some(100), 8, 100_000, rec(4)), 16);
        // never 0, whatever the input
        assert_eq!(attention_splits(0, None, 0, 0, 0), 1);
    }
}
