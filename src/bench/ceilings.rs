//! What the backend can do at best, measured on it at the start of every bench run: a large
//! device copy (bandwidth) and a large GEMM (FLOP rate). Every floor is computed from them.

use crate::backend::Backend;
use crate::error::Result;

/// What the backend can do at best, measured on it.
#[derive(Clone, Debug)]
pub struct Ceilings {
    /// Bytes per second of a device-to-device copy (read + write counted).
    pub bandwidth: f64,
    /// FLOP per second of a large GEMM in the activation dtype.
    pub gemm: f64,
    pub copy_bytes: usize,
    pub gemm_mnk: (usize, usize, usize),
    /// FLOP per second of the same GEMM in FP8 (inputs quantized per row beforehand, not
    /// timed), when the model's linears are FP8.
    pub gemm_fp8: Option<f64>,
}

impl Ceilings {
    /// The GEMM rate the model's linears run at: FP8's when measured, else the activation
    /// dtype's. Floors use it.
    pub fn gemm_rate(&self) -> f64 {
        self.gemm_fp8.unwrap_or(self.gemm)
    }
}

/// Measure the ceilings (`big`: GPU-sized copy and GEMM; else CPU-sized; `fp8`: the GEMM in
/// FP8 too).
pub fn measure_ceilings<B: Backend>(be: &B, big: bool, fp8: bool) -> Result<Ceilings> {
    // copy: 2^28 elements on a GPU (512 MiB of bf16), 2^24 on a CPU
    let n = if big { 1usize << 28 } else { 1 << 24 };
    let cols = 4096;
    let src = {
        let mut t = be.tensor(n / cols, cols)?;
        be.fill_random(&mut t, 1, 0.0, 1.0)?;
        t
    };
    let mut dst = be.tensor(n / cols, cols)?;
    be.copy(&src, &mut dst)?; // warm-up
    let reps = 5;
    let a = be.mark()?;
    for _ in 0..reps {
        be.copy(&src, &mut dst)?;
    }
    let b = be.mark()?;
    let ms = be.elapsed_ms(&a, &b)?.max(1e-6);
    let copy_bytes = n * be.stored_size();
    let bandwidth = (2 * copy_bytes * reps) as f64 / (ms * 1e-3);
    drop((src, dst));

    let (m, nn, k) = if big { (8192, 8192, 8192) } else { (256, 1024, 1024) };
    let mut x = be.tensor(m, k)?;
    let mut w = be.tensor(nn, k)?;
    be.fill_random(&mut x, 2, 0.0, 1.0)?;
    be.fill_random(&mut w, 3, 0.0, 0.01)?;
    let mut out = be.tensor(m, nn)?;
    let gemm = time_gemm(be, &x, &w, (m, nn, k), &mut out)?;
    let gemm_fp8 = if fp8 {
        let (mut x8, mut w8) = (be.tensor_fp8(m, k)?, be.tensor_fp8(nn, k)?);
        be.quantize_fp8(&x, m, &mut x8)?;
        be.quantize_fp8(&w, nn, &mut w8)?;
        Some(time_gemm(be, &x8, &w8, (m, nn, k), &mut out)?)
    } else {
        None
    };
    Ok(Ceilings { bandwidth, gemm, copy_bytes, gemm_mnk: (m, nn, k), gemm_fp8 })
}

/// FLOP/s of `out[m, n] = x[m, k] · w[n, k]ᵀ`, a warm-up then the mean of 3.
fn time_gemm<B: Backend>(
    be: &B,
    x: &B::Tensor,
    w: &B::Tensor,
    (m, nn, k): (usize, usize, usize),
    out: &mut B::Tensor,
) -> Result<f64> {
    be.linear(x, w, m, out)?; // warm-up
    let reps = 3;
    let a = be.mark()?;
    for _ in 0..reps {
        be.linear(x, w, m, out)?;
    }
    let b = be.mark()?;
    let ms = be.elapsed_ms(&a, &b)?.max(1e-6);
    Ok((2 * m * nn * k * reps) as f64 / (ms * 1e-3))
}
