//! FP8 e4m3 (the OCP "E4M3FN" format: 1 sign, 4 exponent bits of bias 7, 3 mantissa bits, no
//! infinities, one NaN code per sign, largest finite ±448) and the per-row scaled quantization of
//! dllm's W8A8 linears (issue 17):
//!
//! - a weight `[n, k]` is stored as e4m3 codes `q(w)[n, k]` with one f32 scale per output row,
//!   `sw[n] = absmax(w[n, :]) / 448`;
//! - an activation `[m, k]` entering a linear is quantized per row the same way at run time
//!   (`sa[m]`, dynamic per-token scales);
//! - the linear is `y[m, n] = round(Σ_k e(q(a)[m, k]) · e(q(w)[n, k]) · sa[m] · sw[n])`, the sum
//!   in f32, `e` the exact e4m3 value, one rounding to the activation dtype.
//!
//! The rounding is round to nearest even, saturating to ±448 (NaN stays NaN, as 0x7F): exactly
//! CUDA's `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)`, the kernels' conversion.
//! `tests/fp8.rs` checks it bit for bit against ml_dtypes' `float8_e4m3fn` for every bf16 value.

/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// The e4m3 code of NaN that conversions produce (0xFF is NaN too).
pub const E4M3_NAN: u8 = 0x7F;

/// The exact value of every e4m3 code (index = code).
pub static E4M3_VALUES: [f32; 256] = e4m3_table();

const fn e4m3_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    let mut c = 0;
    while c < 256 {
        let (exp, man) = ((c >> 3) & 0xF, c & 0x7);
        // subnormals (exp 0): man · 2^-9; normals: (8 + man) · 2^(exp − 10)
        let (m, e) = if exp == 0 { (man, -9) } else { (8 + man, exp as i32 - 10) };
        let mut v = m as f32;
        let mut i = 0;
        while i < e.unsigned_abs() {
            v = if e < 0 { v / 2.0 } else { v * 2.0 };
            i += 1;
        }
        if exp == 0xF && man == 0x7 {
            v = f32::NAN;
        }
        t[c] = if c & 0x80 != 0 { -v } else { v };
        c += 1;
    }
    t
}

/// The value of an e4m3 code.
#[inline]
pub fn e4m3_to_f32(code: u8) -> f32 {
    E4M3_VALUES[code as usize]
}

/// `x` rounded to e4m3: round to nearest even, saturating to ±448, NaN → [`E4M3_NAN`].
pub fn e4m3_from_f32(x: f32) -> u8 {
    if x.is_nan() {
        return E4M3_NAN;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7E; // 448, also for +inf (saturating)
    }
    let bits = a.to_bits();
    let exp = (bits >> 23) as i32 - 127; // unbiased; a < 448 so exp ≤ 8
                                         // The quantum of e4m3 around `a`: 2^(exp − 3) for normals (exp ≥ −6), 2^-9 below.
    let q = exp.max(-6) - 3;
    // a / 2^q, rounded to nearest even in the integer domain (exact: a power-of-two scaling)
    let scaled = a * f32::from_bits(((127 - q) as u32) << 23);
    let n = scaled.round_ties_even() as i32;
    // Normal binades give n in [8, 16] (16: the carry into the next binade, which the sum below
    // absorbs); the subnormal one (q = −9) gives n in [0, 8], where 8 is the smallest normal.
    // Either way the code is the biased exponent of the quantum, q + 10, then n − 8.
    let code = (((q + 10) << 3) + n - 8) as u8;
    sign | code
}

/// Quantize one row with its dynamic scale: returns `s = absmax(x) / 448` and writes
/// `q[i] = e4m3(x[i] / s)` (all zero codes when `s` is 0). NaN entries are skipped by the absmax
/// (as CUDA's `fmaxf` does) and become [`E4M3_NAN`]; an infinite entry makes `s` infinite and the
/// row's finite entries 0, itself NaN.
///
/// # Panics
/// If `q` is shorter than `x`.
pub fn quantize_row(x: &[f32], q: &mut [u8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let s = amax / E4M3_MAX;
    for (o, &v) in q[..x.len()].iter_mut().zip(x) {
        *o = if s == 0.0 {
            if v.is_nan() {
                E4M3_NAN
            } else {
                0
            }
        } else {
            e4m3_from_f32(v / s)
        };
    }
    s
}

/// Quantize a row-major `[rows, cols]` matrix per row: the codes and `rows` scales
/// ([`quantize_row`] on each row).
pub fn quantize_rows(x: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; rows * cols];
    let scales = (0..rows)
        .map(|r| quantize_row(&x[r * cols..(r + 1) * cols], &mut q[r * cols..(r + 1) * cols]))
        .collect();
    (q, scales)
}
