//! The device side of the CUDA backend: the embedded kernels, and the low-level helpers every op
//! uses (allocation, device addresses, launches, uploads, errors).

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::bf16;

use super::params::*;
use super::{Cuda, CudaTensor};
use crate::backend::{DType, Step};
use crate::error::{Error, Result};

/// Every kernel of `kernels/*.cu`, compiled for sm_80/86/89/90a (+ compute_80 PTX).
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dllm.fatbin"));

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
unsafe impl DeviceRepr for LogprobParams {}
unsafe impl DeviceRepr for SelectParams {}
unsafe impl DeviceRepr for FillParams {}
unsafe impl DeviceRepr for QuantizeFp8Params {}
unsafe impl DeviceRepr for LinearFp8Params {}

/// The kernels of one activation dtype, loaded from the fatbin.
pub(super) struct Kernels {
    pub embed: CudaFunction,
    pub rmsnorm: CudaFunction,
    pub add_rmsnorm: CudaFunction,
    pub rope_kv: CudaFunction,
    pub attention: CudaFunction,
    pub attention_combine: CudaFunction,
    /// bf16 only (None for f32): kernels/attention_tc.cu.
    pub attention_tc: Option<CudaFunction>,
    pub swiglu: CudaFunction,
    pub add: CudaFunction,
    pub add_bias: CudaFunction,
    pub gather: CudaFunction,
    pub argmax: CudaFunction,
    pub logprobs: CudaFunction,
    pub select: CudaFunction,
    pub fill: CudaFunction,
    /// FP8 W8A8 linears (issue 17): kernels/quantize_fp8.cu and the SIMT kernels/linear_fp8.cu.
    pub quantize_fp8: CudaFunction,
    pub linear_fp8: CudaFunction,
}

impl Kernels {
    /// Load the fatbin into `ctx` and look up every kernel of `dtype` (F32 or BF16).
    pub fn load(ctx: &Arc<CudaContext>, dtype: DType) -> Result<Self> {
        let module =
            ctx.load_module(Ptx::from_binary(FATBIN.to_vec())).map_err(drv("loading the kernels"))?;
        let sfx = match dtype {
            DType::Bf16 => "bf16",
            _ => "f32",
        };
        let f = |name: &str| module.load_function(name).map_err(drv(name));
        Ok(Kernels {
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
            logprobs: f(&format!("top_logprobs_{sfx}"))?,
            select: f("select_commit")?,
            fill: f(&format!("fill_random_{sfx}"))?,
            quantize_fp8: f(&format!("quantize_fp8_{sfx}"))?,
            linear_fp8: f(&format!("linear_fp8_{sfx}"))?,
        })
    }
}

/// F32 and BF16 activations run here (F16 on the CPU backend only), and the driver and cuBLAS
/// libraries must be loadable.
pub(super) fn check_dtype_and_libraries(dtype: DType) -> Result<()> {
    if dtype == DType::F16 {
        return Err(Error::Device("F16 checkpoints run on the CPU backend only (use --device cpu)".into()));
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
    Ok(())
}

/// A driver error as this crate's error, naming what failed.
pub(super) fn drv(what: &str) -> impl Fn(DriverError) -> Error + '_ {
    // Format the CUresult itself: Debug on a DriverError would call back into the driver.
    move |e: DriverError| Error::Device(format!("CUDA {what}: {:?}", e.0))
}

/// A failed shape check of an op.
pub(super) fn check(cond: bool, what: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Device(format!("cuda backend: {what}")))
    }
}

impl Cuda {
    pub(super) fn alloc<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
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

    pub(super) fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    pub(super) fn ptr_mut<T>(&self, s: &mut CudaSlice<T>) -> u64 {
        s.device_ptr_mut(&self.stream).0
    }

    pub(super) fn launch<P: DeviceRepr>(
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

    pub(super) fn bytes_of(&self, values: &[f32], dtype: DType) -> Vec<u8> {
        match dtype {
            DType::Bf16 => values.iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect(),
            _ => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub(super) fn tensor_of(
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
        Ok(CudaTensor { rows, cols, dtype, buf, scales: None })
    }

    pub(super) fn step_shape(step: Step) -> StepShape {
        StepShape {
            batch: step.batch as u32,
            canvas_len: step.canvas as u32,
            win_start: step.win.start as u32,
            win_len: step.win.len as u32,
        }
    }

    pub(super) fn grid1(n: usize) -> (u32, u32, u32) {
        (n as u32, 1, 1)
    }

    pub(super) fn elementwise_grid(n: usize) -> (u32, u32, u32) {
        (n.div_ceil(256).clamp(1, 65535) as u32, 1, 1)
    }
}
