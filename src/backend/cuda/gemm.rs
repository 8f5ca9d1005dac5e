//! bf16 GEMMs through cuBLASLt with the algorithm chosen by timing, once per shape
//! ([`GemmTuner`]); `cublasGemmEx` ([`gemm_ex`]) for f32 and as the baseline.
//!
//! Why: at the in-block shapes (M = 32 rows against LLaDA-8B's weights) the GEMMs are
//! weight-streaming, and cuBLAS's default choice (`cublasGemmEx`) reaches 53–87 % of the copy
//! bandwidth on an H100: 1.6 TB/s on the 4096×4096 output projection (docs/perf.md, run 3). The
//! first time a shape of at most `TUNE_MAX_ROWS` rows is seen outside a graph capture, every
//! algorithm cuBLASLt's heuristic offers (split-K ones included) and `cublasGemmEx` itself are
//! timed on the real operands, each run after evicting L2, and the fastest is kept for that shape;
//! captured steps replay it. L2 is evicted because a 4096×4096 weight (32 MiB) stays in an H100's
//! 50 MB L2 when timed back to back: it reads at 3.9 TB/s, above the 3.0 TB/s the copy reaches
//! from HBM, and a choice made so gains nothing in a forward, where each weight streams from HBM
//! once; timed from HBM, cuBLASLt's pick beats `cublasGemmEx` by 3–22 % per 32-row shape
//! (docs/perf.md, runs 5 and 6). Tuning synchronises the stream, once per shape per process, never
//! inside a capture (a shape first seen while capturing runs `cublasGemmEx` and is tuned on its
//! next eager call).
//!
//! f32 checkpoints keep `cublasGemmEx` with pure FP32 compute (exact CPU parity, spec §8).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::cublaslt::sys as lt;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtrMut};

use super::device::drv;
use super::Cuda;
use crate::backend::{Backend, DType};
use crate::error::{Error, Result};

/// (rows, n, k): out[rows, n] = x[rows, k] · w[n, k]ᵀ.
pub type Shape = (usize, usize, usize);

/// Candidates timed per shape: the heuristic's first few.
const CANDIDATES: i32 = 8;
/// Timed runs per candidate (after one warm-up run).
const REPS: usize = 5;
/// Only weight-streaming shapes are tuned: at more rows the GEMM is compute-bound, and the default
/// choice runs within 1.1–1.2× of the FLOP floor at M = 768 on an H100
/// (docs/gpu-runs/2026-11-27-h100-run3.md, the s1-base profile).
const TUNE_MAX_ROWS: usize = 256;

pub(super) fn ok(s: lt::cublasStatus_t, what: &str) -> Result<()> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Device(format!("cuBLASLt {what}: {s:?}")))
    }
}

/// One shape's matmul description and the algorithm chosen for it.
struct LtPlan {
    desc: lt::cublasLtMatmulDesc_t,
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    c: lt::cublasLtMatrixLayout_t,
    /// The algorithm `run` uses: the tuner sets each candidate in turn, then the fastest.
    pub algo: lt::cublasLtMatmulAlgo_t,
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: created by LtPlan::new and owned here alone.
        unsafe {
            lt::cublasLtMatrixLayoutDestroy(self.c);
            lt::cublasLtMatrixLayoutDestroy(self.b);
            lt::cublasLtMatrixLayoutDestroy(self.a);
            lt::cublasLtMatmulDescDestroy(self.desc);
        }
    }
}

impl LtPlan {
    /// Column-major outᵀ[n, rows] = wᵀ · xᵀ, as cublasGemmEx is called: A = w (k×n, transposed),
    /// B = x (k×rows), C = D = out (n×rows); bf16 data, fp32 compute and scale.
    pub fn new((rows, n, k): Shape) -> Result<Self> {
        let bf16 = lt::cudaDataType::CUDA_R_16BF;
        let mut p = LtPlan {
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            algo: lt::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // SAFETY: out-pointers to fields of `p`; attribute buffers are i32s of the stated size.
        unsafe {
            ok(
                lt::cublasLtMatmulDescCreate(
                    &mut p.desc,
                    lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    lt::cudaDataType::CUDA_R_32F,
                ),
                "matmul desc",
            )?;
            let (op_t, op_n) = (1i32, 0i32); // CUBLAS_OP_T, CUBLAS_OP_N
            for (attr, v) in [
                (lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &op_t),
                (lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, &op_n),
            ] {
                ok(
                    lt::cublasLtMatmulDescSetAttribute(p.desc, attr, v as *const i32 as *const c_void, 4),
                    "matmul transpose",
                )?;
            }
            ok(lt::cublasLtMatrixLayoutCreate(&mut p.a, bf16, k as u64, n as u64, k as i64), "layout A")?;
            ok(lt::cublasLtMatrixLayoutCreate(&mut p.b, bf16, k as u64, rows as u64, k as i64), "layout B")?;
            ok(lt::cublasLtMatrixLayoutCreate(&mut p.c, bf16, n as u64, rows as u64, n as i64), "layout C")?;
        }
        Ok(p)
    }
}

/// The cuBLASLt handle and the per-shape choices.
struct LtGemms {
    handle: lt::cublasLtHandle_t,
    /// None: `cublasGemmEx` was the fastest (or cuBLASLt offered nothing for the shape).
    plans: RefCell<HashMap<Shape, Option<LtPlan>>>,
    /// One line per tuned shape, for `dllm bench`.
    report: RefCell<Vec<String>>,
}

impl Drop for LtGemms {
    fn drop(&mut self) {
        self.plans.borrow_mut().clear();
        // SAFETY: created in LtGemms::new; every plan using it is dropped above.
        unsafe { lt::cublasLtDestroy(self.handle) };
    }
}

/// Device pointers and the stream of one GEMM call (bf16 here, FP8 in `fp8.rs`).
pub struct Operands {
    pub w: u64,
    pub x: u64,
    pub out: u64,
    pub workspace: u64,
    pub workspace_bytes: usize,
    pub stream: lt::cudaStream_t,
}

impl LtGemms {
    pub fn new() -> Result<Self> {
        // SAFETY: probing for the library, then an out-pointer.
        if !unsafe { lt::is_culib_present() } {
            return Err(Error::Device("libcublasLt.so.13 not found".into()));
        }
        let mut handle = std::ptr::null_mut();
        ok(unsafe { lt::cublasLtCreate(&mut handle) }, "create")?;
        Ok(LtGemms { handle, plans: RefCell::new(HashMap::new()), report: RefCell::new(vec![]) })
    }

    /// The heuristic's candidate algorithms for `plan`, best first by its own ranking.
    pub fn candidates(&self, plan: &LtPlan, workspace_bytes: usize) -> Result<Vec<lt::cublasLtMatmulAlgo_t>> {
        heuristic(
            self.handle,
            [plan.desc.cast(), plan.a.cast(), plan.b.cast(), plan.c.cast()],
            CANDIDATES as usize,
            workspace_bytes,
        )
    }

    /// Queue out = x · wᵀ with the plan's algorithm.
    pub fn run(&self, plan: &LtPlan, o: &Operands) -> Result<()> {
        let layouts = [plan.desc.cast(), plan.a.cast(), plan.b.cast(), plan.c.cast()];
        matmul(self.handle, layouts, &plan.algo, o, "matmul")
    }

    /// Mean µs of `reps` runs of `f`, each after `flush` (which evicts the operands from L2, so
    /// that a weight small enough to stay in L2 — LLaDA-8B's 4096×4096 ones are 32 MiB — is timed
    /// streaming from memory as in a forward, not from the cache); `mark` records an event on
    /// the stream and `elapsed` waits for and reads a pair.
    pub fn time<F, Z, M, E, V>(reps: usize, mut f: F, flush: Z, mark: M, elapsed: V) -> Result<f64>
    where
        F: FnMut() -> Result<()>,
        Z: Fn() -> Result<()>,
        M: Fn() -> Result<E>,
        V: Fn(&E, &E) -> Result<f64>,
    {
        f()?;
        let mut pairs = Vec::with_capacity(reps);
        for _ in 0..reps {
            flush()?;
            let a = mark()?;
            f()?;
            pairs.push((a, mark()?));
        }
        let mut total = 0.0;
        for (a, b) in &pairs {
            total += elapsed(a, b)?;
        }
        Ok(total * 1e3 / reps as f64)
    }
}

/// cuBLAS gets a fixed workspace so that no GEMM allocates, which graph capture requires.
pub const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Queue `out = x · wᵀ` (C = D = out, α 1, β 0) for one matmul (`[desc, A, B, C=D layouts]`)
/// with `algo`: the one cublasLtMatmul call of the bf16 and the FP8 GEMMs (the FP8 scales ride on
/// the descriptor). `what` names the call in errors.
pub fn matmul(
    handle: lt::cublasLtHandle_t,
    [desc, a, b, c]: [*mut c_void; 4],
    algo: &lt::cublasLtMatmulAlgo_t,
    o: &Operands,
    what: &str,
) -> Result<()> {
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: the operands are live device buffers of the plan's shape (checked by the callers),
    // the workspace is the backend's fixed one of `workspace_bytes`, the stream the backend's.
    let st = unsafe {
        lt::cublasLtMatmul(
            handle,
            desc.cast(),
            &alpha as *const f32 as *const c_void,
            o.w as *const c_void,
            a.cast(),
            o.x as *const c_void,
            b.cast(),
            &beta as *const f32 as *const c_void,
            o.out as *const c_void,
            c.cast(),
            o.out as *mut c_void,
            c.cast(),
            algo,
            o.workspace as *mut c_void,
            o.workspace_bytes,
            o.stream,
        )
    };
    ok(st, what)
}

/// cuBLASLt's heuristic for one matmul (`[desc, A, B, C=D layouts]`): up to `wanted`
/// algorithms that succeed and fit `workspace_bytes`, best first by its own ranking. The bf16
/// tuner and the FP8 GEMMs both ask it.
pub fn heuristic(
    handle: lt::cublasLtHandle_t,
    [desc, a, b, c]: [*mut c_void; 4],
    wanted: usize,
    workspace_bytes: usize,
) -> Result<Vec<lt::cublasLtMatmulAlgo_t>> {
    let mut pref = std::ptr::null_mut();
    let mut found = 0i32;
    // SAFETY: an all-zero heuristic result is a valid value of this plain C struct.
    let mut results: Vec<lt::cublasLtMatmulHeuristicResult_t> =
        (0..wanted).map(|_| unsafe { std::mem::zeroed() }).collect();
    // SAFETY: out-pointers; `results` holds `wanted` entries; the handles are live (the
    // caller's plan); pref is destroyed below.
    unsafe {
        ok(lt::cublasLtMatmulPreferenceCreate(&mut pref), "preference")?;
        let ws = workspace_bytes as u64;
        let st = lt::cublasLtMatmulPreferenceSetAttribute(
            pref,
            lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const u64 as *const c_void,
            8,
        );
        let heur = lt::cublasLtMatmulAlgoGetHeuristic(
            handle,
            desc.cast(),
            a.cast(),
            b.cast(),
            c.cast(),
            c.cast(),
            pref,
            wanted as i32,
            results.as_mut_ptr(),
            &mut found,
        );
        lt::cublasLtMatmulPreferenceDestroy(pref);
        ok(st, "workspace preference")?;
        ok(heur, "heuristic")?;
    }
    Ok(results
        .iter()
        .take(found.max(0) as usize)
        .filter(|r| {
            r.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS && r.workspaceSize <= workspace_bytes
        })
        .map(|r| r.algo)
        .collect())
}

/// A cuBLAS handle on `stream` with its fixed workspace: (handle, workspace, its device address).
pub fn cublas_with_workspace(stream: &Arc<CudaStream>) -> Result<(CudaBlas, CudaSlice<u8>, u64)> {
    let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::Device(format!("cuBLAS: {:?}", e.0)))?;
    let mut workspace = stream.alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES).map_err(drv("cuBLAS workspace"))?;
    let wp = workspace.device_ptr_mut(stream).0;
    // SAFETY: the workspace lives as long as the handle (both fields of the backend).
    unsafe { blas_sys::cublasSetWorkspace_v2(*blas.handle(), wp as *mut c_void, CUBLAS_WORKSPACE_BYTES) }
        .result()
        .map_err(|e| Error::Device(format!("cuBLAS workspace: {:?}", e.0)))?;
    Ok((blas, workspace, wp))
}

/// Queue `out[rows, n] = x[rows, k] · w[n, k]ᵀ` (device addresses `(w, x, out)`, all in `dtype`)
/// through `cublasGemmEx` with its default algorithm and fp32 accumulation; for f32 data this is
/// pure FP32 (no TF32), spec §8.
pub fn gemm_ex(
    blas: &CudaBlas,
    (rows, n, k): Shape,
    dtype: DType,
    (w, x, out): (u64, u64, u64),
) -> Result<()> {
    // Row-major out[rows, n] = x[rows, k] · w[n, k]ᵀ is column-major outᵀ = w · xᵀ:
    // A = w seen as k×n (transposed), B = x seen as k×rows.
    let ty = match dtype {
        DType::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
        _ => blas_sys::cudaDataType::CUDA_R_32F,
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: the caller's pointers address live buffers of at least these shapes.
    unsafe {
        blas::gemm_ex(
            *blas.handle(),
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            rows as i32,
            k as i32,
            &alpha as *const f32 as *const c_void,
            w as *const c_void,
            ty,
            k as i32,
            x as *const c_void,
            ty,
            k as i32,
            &beta as *const f32 as *const c_void,
            out as *mut c_void,
            ty,
            n as i32,
            // fp32 accumulation; for f32 data this is pure FP32 (no TF32), spec §8
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
        )
    }
    .map_err(|e| Error::Device(format!("cuBLAS gemm {rows}x{n}x{k}: {:?}", e.0)))
}

/// The bf16 GEMM path: cuBLASLt's plans per shape, the timing that chooses them, and the report.
pub struct GemmTuner {
    lt: LtGemms,
    /// Twice the L2 size, written before each timed GEMM while tuning; allocated at the first
    /// tuning (eager, outside any capture).
    l2_flush: RefCell<Option<CudaSlice<u8>>>,
}

/// The fastest cuBLASLt candidate of a shape, if one beat `cublasGemmEx`.
struct Choice {
    /// (µs, candidate number) of the fastest, None if `cublasGemmEx` was faster than all.
    best: Option<(f64, usize)>,
    /// Candidates timed.
    tried: usize,
    plan: Option<LtPlan>,
}

impl GemmTuner {
    /// The tuner of a backend with `dtype` activations: None for f32 (cublasGemmEx only), or when
    /// cuBLASLt cannot be loaded (with a warning).
    pub fn for_dtype(dtype: DType) -> Option<Self> {
        if dtype != DType::Bf16 {
            return None;
        }
        match LtGemms::new() {
            Ok(lt) => Some(GemmTuner { lt, l2_flush: RefCell::new(None) }),
            Err(e) => {
                eprintln!("warning: {e}; bf16 GEMMs use cublasGemmEx's default algorithm");
                None
            }
        }
    }

    /// One line per tuned shape, for `dllm bench`.
    pub fn report(&self) -> Vec<String> {
        self.lt.report.borrow().clone()
    }

    /// Queue `out = x · wᵀ` of `shape` (device addresses `(w, x, out)`) on `cuda`'s stream with the
    /// algorithm chosen for the shape. A weight-streaming shape seen for the first time is tuned
    /// first, unless a graph capture is in progress; `gemm_ex` is the `cublasGemmEx` call.
    pub fn run(
        &self,
        cuda: &Cuda,
        shape: Shape,
        (w, x, out): (u64, u64, u64),
        gemm_ex: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        if shape.0 > TUNE_MAX_ROWS {
            return gemm_ex(); // compute-bound: the default is already near the FLOP floor
        }
        let ops = Operands {
            w,
            x,
            out,
            workspace: cuda.workspace_ptr,
            workspace_bytes: CUBLAS_WORKSPACE_BYTES,
            stream: cuda.stream.cu_stream() as lt::cudaStream_t,
        };
        let known = self.lt.plans.borrow().contains_key(&shape);
        if !known && !cuda.graphs.capturing() {
            self.tune(cuda, shape, &ops, gemm_ex)?;
        }
        match self.lt.plans.borrow().get(&shape) {
            Some(Some(plan)) => self.lt.run(plan, &ops),
            _ => gemm_ex(),
        }
    }

    /// Time `cublasGemmEx` and cuBLASLt's candidate algorithms for `shape` on the real operands
    /// and keep the fastest. Synchronises: once per shape, eagerly.
    fn tune(
        &self,
        cuda: &Cuda,
        shape: Shape,
        ops: &Operands,
        gemm_ex: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        self.allocate_l2_flush(cuda)?;
        let base = self.time(cuda, gemm_ex)?;
        let choice = self.fastest_candidate(cuda, shape, ops, base);
        let (rows, n, k) = shape;
        let (us, chosen) = match choice.best {
            Some((t, i)) => (t, format!("cuBLASLt #{}", i + 1)),
            None => (base, "cublasGemmEx".to_string()),
        };
        let gbs = 2.0 * (n * k + rows * k + rows * n) as f64 / (us * 1e-6) / 1e9;
        let tried = choice.tried;
        self.lt.report.borrow_mut().push(format!(
            "{rows}×{n}×{k}: {chosen} {us:.1} µs ({gbs:.0} GB/s; cublasGemmEx {base:.1} µs, {tried} cuBLASLt candidates)"
        ));
        self.lt.plans.borrow_mut().insert(shape, choice.plan);
        Ok(())
    }

    /// Time each algorithm cuBLASLt offers for `shape` against `base` µs of `cublasGemmEx`.
    fn fastest_candidate(&self, cuda: &Cuda, shape: Shape, ops: &Operands, base: f64) -> Choice {
        let mut choice = Choice { best: None, tried: 0, plan: None };
        let offered = LtPlan::new(shape).and_then(|p| Ok((self.lt.candidates(&p, ops.workspace_bytes)?, p)));
        match offered {
            Ok((algos, mut plan)) => {
                for (i, &algo) in algos.iter().enumerate() {
                    plan.algo = algo;
                    let Ok(t) = self.time(cuda, || self.lt.run(&plan, ops)) else {
                        continue;
                    };
                    choice.tried += 1;
                    if t < choice.best.map_or(base, |b| b.0) {
                        choice.best = Some((t, i));
                    }
                }
                if let Some((_, i)) = choice.best {
                    plan.algo = algos[i];
                    choice.plan = Some(plan);
                }
            }
            Err(e) => eprintln!("warning: {e} for a {shape:?} GEMM; using cublasGemmEx"),
        }
        choice
    }

    /// Mean µs of `REPS` runs of `f` on `cuda`'s stream, L2 evicted before each.
    fn time(&self, cuda: &Cuda, f: impl FnMut() -> Result<()>) -> Result<f64> {
        let mark = || cuda.mark();
        let elapsed = |a: &CudaEvent, b: &CudaEvent| {
            cuda.synchronize()?;
            cuda.elapsed_ms(a, b)
        };
        let flush = || -> Result<()> {
            match self.l2_flush.borrow_mut().as_mut() {
                Some(buf) => cuda.stream.memset_zeros(buf).map_err(drv("L2 flush")),
                None => Ok(()),
            }
        };
        LtGemms::time(REPS, f, flush, mark, elapsed)
    }

    /// The L2 eviction buffer, at the first tuning: twice the GPU's L2.
    fn allocate_l2_flush(&self, cuda: &Cuda) -> Result<()> {
        if self.l2_flush.borrow().is_none() {
            let l2 = cuda
                .ctx
                .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
                .map_err(drv("L2 size"))?
                .max(1 << 20) as usize;
            let buf = cuda.stream.alloc_zeros::<u8>(2 * l2).map_err(drv("L2 flush buffer"))?;
            *self.l2_flush.borrow_mut() = Some(buf);
        }
        Ok(())
    }
}
