//! bf16 GEMMs through cuBLASLt with the algorithm chosen by timing, once per shape.
//!
//! Why: at the in-block shapes (M = 32 rows against LLaDA-8B's weights) the GEMMs are
//! weight-streaming, and cuBLAS's default choice (`cublasGemmEx`) reached 53–87 % of the copy
//! bandwidth on an H100 (docs/perf.md, run 3): 1.6 TB/s on the 4096×4096 output projection. The
//! first time a shape of at most `TUNE_MAX_ROWS` rows is seen outside a graph capture, every algorithm cuBLASLt's heuristic offers
//! (split-K ones included) and `cublasGemmEx` itself are timed on the real operands, each run
//! after evicting L2 (run 5 timed L2-resident weights and chose no better in a forward), and the
//! fastest is kept for that shape; captured steps replay it. Tuning synchronises the stream, once
//! per shape per process, never inside a capture (a shape first seen while capturing runs
//! `cublasGemmEx` and is tuned on its next eager call).
//!
//! f32 checkpoints keep `cublasGemmEx` with pure FP32 compute (exact CPU parity, spec §8).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublaslt::sys as lt;

use crate::error::{Error, Result};

/// (rows, n, k): out[rows, n] = x[rows, k] · w[n, k]ᵀ.
pub type Shape = (usize, usize, usize);

/// Candidates timed per shape: the heuristic's first few.
const CANDIDATES: i32 = 8;
/// Timed runs per candidate (after one warm-up run).
pub const REPS: usize = 5;
/// Only weight-streaming shapes are tuned: at more rows the GEMM is compute-bound and the default
/// choice ran within 1.0–1.2× of the FLOP floor (run 3, M = 768).
pub const TUNE_MAX_ROWS: usize = 256;

fn ok(s: lt::cublasStatus_t, what: &str) -> Result<()> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Device(format!("cuBLASLt {what}: {s:?}")))
    }
}

/// One shape's matmul description and the algorithm chosen for it.
pub struct LtPlan {
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
pub struct LtGemms {
    handle: lt::cublasLtHandle_t,
    /// None: `cublasGemmEx` was the fastest (or cuBLASLt offered nothing for the shape).
    pub plans: RefCell<HashMap<Shape, Option<LtPlan>>>,
    /// One line per tuned shape, for `dllm bench`.
    pub report: RefCell<Vec<String>>,
}

impl Drop for LtGemms {
    fn drop(&mut self) {
        self.plans.borrow_mut().clear();
        // SAFETY: created in LtGemms::new; every plan using it is dropped above.
        unsafe { lt::cublasLtDestroy(self.handle) };
    }
}

/// Device pointers and the stream of one GEMM call.
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
        let mut pref = std::ptr::null_mut();
        let mut found = 0i32;
        // SAFETY: an all-zero heuristic result is a valid value of this plain C struct.
        let mut results: Vec<lt::cublasLtMatmulHeuristicResult_t> =
            (0..CANDIDATES).map(|_| unsafe { std::mem::zeroed() }).collect();
        // SAFETY: out-pointers; `results` holds CANDIDATES entries; pref is destroyed below.
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
                self.handle,
                plan.desc,
                plan.a,
                plan.b,
                plan.c,
                plan.c,
                pref,
                CANDIDATES,
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

    /// Queue out = x · wᵀ with the plan's algorithm.
    pub fn run(&self, plan: &LtPlan, o: &Operands) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the operands are live device buffers of the plan's shape (checked by the
        // caller), the workspace is the backend's fixed one, and the stream is the backend's.
        let st = unsafe {
            lt::cublasLtMatmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                o.w as *const c_void,
                plan.a,
                o.x as *const c_void,
                plan.b,
                &beta as *const f32 as *const c_void,
                o.out as *const c_void,
                plan.c,
                o.out as *mut c_void,
                plan.c,
                &plan.algo,
                o.workspace as *mut c_void,
                o.workspace_bytes,
                o.stream,
            )
        };
        ok(st, "matmul")
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
