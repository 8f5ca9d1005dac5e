//! FP8 (e4m3) W8A8 linears (issue 17, `crate::fp8`): the FP8 tensors (codes in the byte buffer,
//! one f32 scale per row beside them), `quantize_fp8` (kernels/quantize_fp8.cu) and the GEMM
//! `out[m, n] = round(Σ_k e(x[m, k]) · e(w[n, k]) · sx[m] · sw[n])` on one of two paths:
//!
//! - cuBLASLt ([`Fp8Gemms`]): column-major `outᵀ[n, rows] = wᵀ · xᵀ` as the bf16 GEMMs are called
//!   ("TN", the layout cuBLASLt's FP8 kernels require): A = w (e4m3, k×n, op T), B = x (e4m3,
//!   k×rows, op N), C = D = out (bf16 or f32, n×rows), `CUBLAS_COMPUTE_32F`, f32 scale type, and
//!   the scales applied by the library as outer vectors
//!   (`CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F` on A and B: `D[i, j] = sA[i] · sB[j] · Σ`, sA
//!   = sw of length n, sB = sx of length rows). The scale pointers are set on the shape's
//!   descriptor before each call (weights of one shape share a plan);
//! - the SIMT kernel (kernels/linear_fp8.cu): any shape; used where cuBLASLt is not (see
//!   [`Fp8Gemms::run`]) and for every call with `DLLM_FP8_GEMM=simt`.
//!
//! A shape's path is decided once, on its first call outside a graph capture: the shape must
//! qualify ([`cublaslt_refusal`]), the heuristic must offer an algorithm, and a first call with
//! the real operands must be accepted (cuBLASLt reports an unsupported scale mode only when
//! called); then its first algorithm is kept. A shape first seen while capturing runs the SIMT
//! kernel and is decided on its next eager call. No call allocates or synchronises.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;

use cudarc::cublaslt::sys as lt;
use cudarc::driver::CudaSlice;

use super::device::{check, drv};
use super::gemm::{ok, Operands, Shape, CUBLAS_WORKSPACE_BYTES};
use super::params::*;
use super::{Cuda, CudaTensor};
use crate::backend::DType;
use crate::error::{Error, Result};
use crate::fp8;

/// Why cuBLASLt's FP8 GEMM cannot take `(rows, n, k)`, if it cannot: its FP8 kernels need 16-byte
/// aligned leading dimensions and sizes (cuBLAS docs, cublasLtMatmul "FP8 requirements" and
/// "Tensor Core Usage"): k (A's and B's leading dimension, in 1-byte codes) and n (D's, and the
/// rows of A) multiples of 16.
pub fn cublaslt_refusal((_, n, k): Shape) -> Option<&'static str> {
    if k % 16 != 0 {
        Some("k not a multiple of 16")
    } else if n % 16 != 0 {
        Some("n not a multiple of 16")
    } else {
        None
    }
}

/// One shape's matmul description and its algorithm.
struct Fp8Plan {
    desc: lt::cublasLtMatmulDesc_t,
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    c: lt::cublasLtMatrixLayout_t,
    algo: lt::cublasLtMatmulAlgo_t,
}

impl Drop for Fp8Plan {
    fn drop(&mut self) {
        // SAFETY: created by Fp8Plan::new (null where creation stopped early) and owned here.
        unsafe {
            for l in [self.c, self.b, self.a] {
                if !l.is_null() {
                    lt::cublasLtMatrixLayoutDestroy(l);
                }
            }
            if !self.desc.is_null() {
                lt::cublasLtMatmulDescDestroy(self.desc);
            }
        }
    }
}

/// Set one attribute of a matmul descriptor from a plain value.
///
/// # Safety
/// `desc` is a live descriptor and `T` the attribute's documented type.
unsafe fn set_attr<T>(
    desc: lt::cublasLtMatmulDesc_t,
    attr: lt::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<()> {
    ok(
        lt::cublasLtMatmulDescSetAttribute(
            desc,
            attr,
            v as *const T as *const c_void,
            std::mem::size_of::<T>(),
        ),
        "FP8 matmul attribute",
    )
}

impl Fp8Plan {
    /// The description of `shape` with `out` the output dtype (bf16 or f32); algorithm unset.
    fn new((rows, n, k): Shape, out: DType) -> Result<Self> {
        use lt::cublasLtMatmulDescAttributes_t as A;
        let e4m3 = lt::cudaDataType::CUDA_R_8F_E4M3;
        let d = match out {
            DType::Bf16 => lt::cudaDataType::CUDA_R_16BF,
            _ => lt::cudaDataType::CUDA_R_32F,
        };
        let mut p = Fp8Plan {
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            algo: lt::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        let outer = lt::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F as i32;
        // SAFETY: out-pointers to fields of `p`; each attribute gets its documented type
        // (cublasOperation_t and cublasLtMatmulMatrixScale_t are int32).
        unsafe {
            ok(
                lt::cublasLtMatmulDescCreate(
                    &mut p.desc,
                    lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    lt::cudaDataType::CUDA_R_32F,
                ),
                "FP8 matmul desc",
            )?;
            set_attr(p.desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?; // CUBLAS_OP_T
            set_attr(p.desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?; // CUBLAS_OP_N
            set_attr(p.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &outer)?;
            set_attr(p.desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &outer)?;
            ok(lt::cublasLtMatrixLayoutCreate(&mut p.a, e4m3, k as u64, n as u64, k as i64), "FP8 layout A")?;
            ok(
                lt::cublasLtMatrixLayoutCreate(&mut p.b, e4m3, k as u64, rows as u64, k as i64),
                "FP8 layout B",
            )?;
            ok(lt::cublasLtMatrixLayoutCreate(&mut p.c, d, n as u64, rows as u64, n as i64), "FP8 layout D")?;
        }
        Ok(p)
    }

    /// Point the descriptor at this call's scales: A's (the weight's, n) and B's (the input's).
    fn set_scales(&self, sw: u64, sx: u64) -> Result<()> {
        use lt::cublasLtMatmulDescAttributes_t as A;
        // SAFETY: a live descriptor; the scale pointers are `void*` device addresses.
        unsafe {
            set_attr(self.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw)?;
            set_attr(self.desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx)
        }
    }
}

/// Device addresses and the stream of one FP8 GEMM call.
pub struct Fp8Operands {
    /// Codes of the weight (w) and the input (x), the output, workspace and stream.
    pub ops: Operands,
    pub sw: u64,
    pub sx: u64,
}

/// cuBLASLt's FP8 GEMMs: the handle (None: no cuBLASLt), each shape's path, the report.
pub struct Fp8Gemms {
    handle: Option<lt::cublasLtHandle_t>,
    /// Per decided shape: its plan, or None for the SIMT kernel.
    plans: RefCell<HashMap<Shape, Option<Fp8Plan>>>,
    /// Shapes already reported as SIMT for a reason decided per call (forced, no cuBLASLt).
    noted: RefCell<HashSet<Shape>>,
    /// One line per shape, for `tuning_report`.
    report: RefCell<Vec<String>>,
}

impl Drop for Fp8Gemms {
    fn drop(&mut self) {
        self.plans.borrow_mut().clear();
        if let Some(h) = self.handle {
            // SAFETY: created in Fp8Gemms::new; every plan is dropped above.
            unsafe { lt::cublasLtDestroy(h) };
        }
    }
}

impl Fp8Gemms {
    /// The FP8 GEMMs of a backend; without cuBLASLt every FP8 linear runs the SIMT kernel.
    pub fn new() -> Self {
        // SAFETY: probing for the library, then an out-pointer.
        let handle = unsafe {
            let mut h = std::ptr::null_mut();
            (lt::is_culib_present()
                && lt::cublasLtCreate(&mut h) == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
                .then_some(h)
        };
        Fp8Gemms {
            handle,
            plans: RefCell::new(HashMap::new()),
            noted: RefCell::new(HashSet::new()),
            report: RefCell::new(vec![]),
        }
    }

    pub fn report(&self) -> Vec<String> {
        self.report.borrow().clone()
    }

    fn note(&self, shape: Shape, line: String) {
        let (rows, n, k) = shape;
        self.report.borrow_mut().push(format!("FP8 {rows}×{n}×{k}: {line}"));
    }

    /// Queue the GEMM of `shape` through cuBLASLt if that is its path: Ok(true) if queued,
    /// Ok(false) if the caller runs the SIMT kernel. `allowed` false: `DLLM_FP8_GEMM=simt`;
    /// `capturing`: a graph capture is in progress (an undecided shape stays undecided).
    pub fn run(
        &self,
        shape: Shape,
        out: DType,
        ops: &Fp8Operands,
        allowed: bool,
        capturing: bool,
    ) -> Result<bool> {
        let Some(handle) = self.handle.filter(|_| allowed) else {
            if self.noted.borrow_mut().insert(shape) {
                let why = if allowed { "no cuBLASLt" } else { "DLLM_FP8_GEMM=simt" };
                self.note(shape, format!("SIMT kernel ({why})"));
            }
            return Ok(false);
        };
        if let Some(entry) = self.plans.borrow().get(&shape) {
            return match entry {
                Some(plan) => {
                    plan.set_scales(ops.sw, ops.sx)?;
                    Self::matmul(handle, plan, ops).map(|_| true)
                }
                None => Ok(false),
            };
        }
        if capturing {
            return Ok(false);
        }
        let (entry, queued) = match self.decide(handle, shape, out, ops) {
            Ok((plan, offered)) => {
                self.note(shape, format!("cuBLASLt, the heuristic's first of {offered} algorithms"));
                (Some(plan), true)
            }
            Err(why) => {
                self.note(shape, format!("SIMT kernel ({why})"));
                (None, false)
            }
        };
        self.plans.borrow_mut().insert(shape, entry);
        Ok(queued)
    }

    /// The plan of a new shape, its first call already queued (the real operands), and how many
    /// algorithms the heuristic offered; or why the shape stays on the SIMT kernel.
    fn decide(
        &self,
        handle: lt::cublasLtHandle_t,
        shape: Shape,
        out: DType,
        ops: &Fp8Operands,
    ) -> std::result::Result<(Fp8Plan, usize), String> {
        if let Some(why) = cublaslt_refusal(shape) {
            return Err(why.into());
        }
        let mut plan = Fp8Plan::new(shape, out).map_err(|e| e.to_string())?;
        plan.set_scales(ops.sw, ops.sx).map_err(|e| e.to_string())?;
        let algos = Self::heuristic(handle, &plan).map_err(|e| e.to_string())?;
        let Some(&first) = algos.first() else {
            return Err("cuBLASLt offers no algorithm".into());
        };
        plan.algo = first;
        Self::matmul(handle, &plan, ops).map_err(|e| format!("cuBLASLt refused the call: {e}"))?;
        Ok((plan, algos.len()))
    }

    /// The heuristic's algorithms for `plan` that fit the workspace, best first.
    fn heuristic(handle: lt::cublasLtHandle_t, plan: &Fp8Plan) -> Result<Vec<lt::cublasLtMatmulAlgo_t>> {
        let ops = [plan.desc.cast(), plan.a.cast(), plan.b.cast(), plan.c.cast()];
        super::gemm::heuristic(handle, ops, 4, CUBLAS_WORKSPACE_BYTES)
    }

    /// Queue `out = (x · wᵀ) · sx · sw` with the plan's algorithm (scales already set).
    fn matmul(handle: lt::cublasLtHandle_t, plan: &Fp8Plan, o: &Fp8Operands) -> Result<()> {
        let layouts = [plan.desc.cast(), plan.a.cast(), plan.b.cast(), plan.c.cast()];
        super::gemm::matmul(handle, layouts, &plan.algo, &o.ops, "FP8 matmul")
    }
}

impl Cuda {
    /// FP8 needs compute capability 8.9 (Ada) or newer.
    pub(super) fn check_fp8_device(&self) -> Result<()> {
        let (major, minor) = self.cc;
        if (major, minor) < (8, 9) {
            return Err(Error::Device(format!(
                "FP8 weights need compute capability 8.9 or newer (this GPU: {major}.{minor})"
            )));
        }
        Ok(())
    }

    /// An FP8 matrix: `codes` (or zeros) in the byte buffer and `scales` (or zeros).
    pub(super) fn fp8_tensor(
        &self,
        data: Option<(&[u8], &[f32])>,
        rows: usize,
        cols: usize,
    ) -> Result<CudaTensor> {
        self.check_fp8_device()?;
        let mut buf = self.alloc::<u8>(rows * cols, "FP8 codes")?;
        let mut scales: CudaSlice<f32> = self.alloc(rows, "FP8 scales")?;
        if let Some((codes, s)) = data {
            check(
                codes.len() == rows * cols && s.len() == rows,
                "upload_fp8: codes or scales do not match the shape",
            )?;
            self.stream.memcpy_htod(codes, &mut buf).map_err(drv("upload"))?;
            self.stream.memcpy_htod(s, &mut scales).map_err(drv("upload"))?;
        }
        Ok(CudaTensor { rows, cols, dtype: DType::E4m3, buf, scales: Some(scales) })
    }

    /// Backend::quantize_fp8: one block per row.
    pub(super) fn quantize_fp8_rows(&self, x: &CudaTensor, rows: usize, out: &mut CudaTensor) -> Result<()> {
        check(
            out.cols == x.cols && x.rows >= rows && out.rows >= rows && x.dtype == self.dtype,
            "quantize_fp8: shapes",
        )?;
        check(x.cols <= u32::MAX as usize, "quantize_fp8: more than 2^32 columns")?;
        let p = QuantizeFp8Params {
            x: self.ptr(&x.buf),
            codes: self.ptr_mut(&mut out.buf),
            scales: match &mut out.scales {
                Some(s) if out.dtype == DType::E4m3 => self.ptr_mut(s),
                _ => return check(false, "quantize_fp8: the output is not an FP8 buffer (tensor_fp8)"),
            },
            rows: rows as u32,
            cols: x.cols as u32,
        };
        self.launch(&self.k.quantize_fp8, Self::grid1(rows), DLLM_QUANT_FP8_THREADS, 0, &p)
    }

    /// Backend::linear on an FP8 pair (shapes checked by the caller): cuBLASLt or the SIMT kernel.
    pub(super) fn linear_fp8(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        rows: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let (n, k) = (w.rows, w.cols);
        let (Some(sx), Some(sw)) = (x.scales.as_ref(), w.scales.as_ref()) else {
            return check(false, "linear: an FP8 weight needs an FP8 input (quantize_fp8), and the reverse");
        };
        check(x.dtype == DType::E4m3 && w.dtype == DType::E4m3, "linear: FP8 dtypes")?;
        check(out.dtype == self.dtype, "linear: the FP8 output is in the activation dtype")?;
        check(rows.div_ceil(DLLM_LINEAR_FP8_ROWS as usize) <= 65535, "linear: too many FP8 rows")?;
        if rows == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(drv("bind"))?;
        let ops = Fp8Operands {
            ops: Operands {
                w: self.ptr(&w.buf),
                x: self.ptr(&x.buf),
                out: self.ptr_mut(&mut out.buf),
                workspace: self.workspace_ptr,
                workspace_bytes: CUBLAS_WORKSPACE_BYTES,
                stream: self.stream.cu_stream() as lt::cudaStream_t,
            },
            sw: self.ptr(sw),
            sx: self.ptr(sx),
        };
        let allowed = self.opts.get().fp8_cublaslt;
        if self.fp8.run((rows, n, k), self.dtype, &ops, allowed, self.graphs.capturing())? {
            return Ok(());
        }
        let p = LinearFp8Params {
            x: ops.ops.x,
            sx: ops.sx,
            w: ops.ops.w,
            sw: ops.sw,
            out: ops.ops.out,
            rows: rows as u32,
            n: n as u32,
            k: k as u32,
        };
        let warps = DLLM_LINEAR_FP8_THREADS / 32;
        let grid =
            (n.div_ceil(warps as usize) as u32, rows.div_ceil(DLLM_LINEAR_FP8_ROWS as usize) as u32, 1);
        self.launch(&self.k.linear_fp8, grid, DLLM_LINEAR_FP8_THREADS, 0, &p)
    }

    /// The first `rows` rows of an FP8 matrix: its codes and scales (tests; to_host gives the
    /// dequantized values).
    pub fn fp8_to_host(&self, t: &CudaTensor, rows: usize) -> Result<(Vec<u8>, Vec<f32>)> {
        let Some(s) = t.scales.as_ref().filter(|_| t.dtype == DType::E4m3) else {
            return Err(Error::Device("fp8_to_host: not an FP8 matrix".into()));
        };
        check(rows <= t.rows, "fp8_to_host: more rows than the matrix has")?;
        let mut codes = vec![0u8; rows * t.cols];
        let mut scales = vec![0f32; rows];
        self.stream.memcpy_dtoh(&t.buf.slice(..rows * t.cols), &mut codes[..]).map_err(drv("fp8_to_host"))?;
        self.stream.memcpy_dtoh(&s.slice(..rows), &mut scales[..]).map_err(drv("fp8_to_host"))?;
        self.stream.synchronize().map_err(drv("synchronize"))?;
        Ok((codes, scales))
    }

    /// An FP8 matrix's values: e(code) · its row's scale.
    pub(super) fn fp8_dequantized(&self, t: &CudaTensor, rows: usize) -> Result<Vec<f32>> {
        let (codes, scales) = self.fp8_to_host(t, rows)?;
        let cols = t.cols.max(1);
        Ok(codes.iter().enumerate().map(|(i, &c)| fp8::e4m3_to_f32(c) * scales[i / cols]).collect())
    }
}
