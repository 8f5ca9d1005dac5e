//! The CPU reference backend: plain Rust, f32 arithmetic, every op's output rounded to the
//! activation dtype (spec §8: nothing rounded for an f32 checkpoint; bf16 rounding at every op
//! boundary for a bf16 one, with RMSNorm and RoPE computed in fp32 and logits in the activation
//! dtype). It is the twin every device kernel is compared with, so it favours clarity over speed:
//! the only optimisations are row blocking and threads over output rows, neither of which changes
//! a single bit of the result (each output element is always the same dot product).
//!
//! Weight matrices stay where the checkpoint's files are mapped, in their stored dtype, whenever
//! that is the activation dtype (every real checkpoint): values are widened to f32 inside the dot
//! product, exactly as a copy would hold them, so results are bit-identical to copying while
//! LLaDA-8B's 16 GB of bf16 stay 16 GB of page cache instead of 32 GB of f32.

#![allow(clippy::needless_range_loop)] // index loops read like the kernels they twin

use std::thread;

use half::{bf16, f16};
use memmap2::Mmap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Backend, DType, Heads, Sampling, Score, Select, SelectRule, Step, Window, NON_FINITE};
pub mod nucleus;
pub mod select;

use super::rng;
pub use crate::dtype::round_to;
use crate::error::{Error, Result};
use crate::fp8;
use crate::model::checkpoint::TensorView;
use select::Candidate;

pub struct Cpu {
    dtype: DType,
    threads: usize,
    /// Set-up allocations so far: (count, bytes) of activation buffers, ids and candidates (not
    /// weights), so tests can check that decoding allocates only where it should.
    allocated: (AtomicU64, AtomicU64),
}

/// A row-major matrix: f32 values in `data` (rounded to the activation dtype where the dtype says
/// so), or, for a weight matrix read in place from the checkpoint, `mapped`, or e4m3 codes and
/// per-row scales in `fp8` (FP8 weights and activation buffers); `data` is empty in both.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
    mapped: Option<Mapped>,
    fp8: Option<Fp8>,
}

/// e4m3 codes `[rows, cols]` and one f32 scale per row (`crate::fp8`).
#[derive(Clone, Debug, PartialEq)]
struct Fp8 {
    codes: Vec<u8>,
    scales: Vec<f32>,
}

/// A weight matrix in the checkpoint's mapped files: the stacked tensors' (map, byte offset, rows)
/// in row order, all in `dtype`.
#[derive(Clone, Debug)]
struct Mapped {
    dtype: DType,
    parts: Vec<(Arc<Mmap>, usize, usize)>,
}

impl PartialEq for Mapped {
    fn eq(&self, other: &Self) -> bool {
        self.dtype == other.dtype
            && self.parts.len() == other.parts.len()
            && self
                .parts
                .iter()
                .zip(&other.parts)
                .all(|(a, b)| Arc::ptr_eq(&a.0, &b.0) && (a.1, a.2) == (b.1, b.2))
    }
}

impl Mapped {
    /// The stored bytes of row `r` of a matrix of `cols` columns.
    fn row(&self, mut r: usize, cols: usize) -> &[u8] {
        let n = cols * self.dtype.size();
        for (map, offset, rows) in &self.parts {
            if r < *rows {
                return &map[offset + r * n..offset + (r + 1) * n];
            }
            r -= rows;
        }
        &[]
    }
}

impl CpuTensor {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "CpuTensor data does not match its shape");
        CpuTensor { rows, cols, data, mapped: None, fp8: None }
    }
    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    /// Row `r` widened to f32 into `out` (owned or mapped; FP8 dequantized: code value × scale,
    /// as the CUDA backend's `to_host`).
    fn row_into(&self, r: usize, out: &mut [f32]) {
        if let Some(q) = &self.fp8 {
            let codes = &q.codes[r * self.cols..(r + 1) * self.cols];
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = fp8::e4m3_to_f32(c) * q.scales[r];
            }
            return;
        }
        match &self.mapped {
            None => out.copy_from_slice(self.row(r)),
            Some(m) => widen(m.dtype, m.row(r, self.cols), out),
        }
    }
    /// Row `r` as the dot product reads it, resolved once per row: owned f32, or the mapped
    /// bytes as their element type when aligned on a little-endian host (the common case:
    /// safetensors data is packed in the dtype's own alignment), else as bytes.
    #[inline]
    fn weight_row(&self, r: usize) -> WeightRow<'_> {
        let Some(m) = &self.mapped else { return WeightRow::F32(self.row(r)) };
        let b = m.row(r, self.cols);
        let le = cfg!(target_endian = "little");
        match m.dtype {
            DType::F32 if le => {
                bytemuck::try_cast_slice(b).map_or(WeightRow::Bytes(m.dtype, b), WeightRow::F32)
            }
            DType::Bf16 if le => {
                bytemuck::try_cast_slice(b).map_or(WeightRow::Bytes(m.dtype, b), WeightRow::Bf16)
            }
            dtype => WeightRow::Bytes(dtype, b),
        }
    }
}

/// One weight row for [`WeightRow::dot`].
enum WeightRow<'a> {
    F32(&'a [f32]),
    /// bf16 values as bits.
    Bf16(&'a [u16]),
    /// Little-endian stored values of a dtype.
    Bytes(DType, &'a [u8]),
}

impl WeightRow<'_> {
    /// `dot(x, row)` with the stored values widened inside the product, in the same order: the
    /// owned copy's result bit for bit.
    #[inline]
    fn dot(&self, x: &[f32]) -> f32 {
        match *self {
            WeightRow::F32(w) => dot(x, w),
            WeightRow::Bf16(w) => dot_with(x, w, bf16_bits_to_f32),
            WeightRow::Bytes(DType::F32, b) => dot_by::<4>(x, b, f32::from_le_bytes),
            WeightRow::Bytes(DType::Bf16, b) => {
                dot_by::<2>(x, b, |c| bf16_bits_to_f32(u16::from_le_bytes(c)))
            }
            WeightRow::Bytes(DType::F16, b) => {
                dot_by::<2>(x, b, |c| f16::from_bits(u16::from_le_bytes(c)).to_f32())
            }
            WeightRow::Bytes(DType::E4m3, b) => dot_with(x, b, fp8::e4m3_to_f32),
        }
    }
}

/// Stored little-endian values of `dtype` widened to f32 (exact for every supported dtype).
fn widen(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let n = dtype.size();
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(n)) {
        *o = match dtype {
            DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            DType::Bf16 => bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32(),
            DType::F16 => f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32(),
            DType::E4m3 => fp8::e4m3_to_f32(c[0]),
        };
    }
}

/// Per block position: the drawn token and its float64 confidence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuCands {
    pub tokens: Vec<u32>,
    pub conf: Vec<f64>,
}

impl Cpu {
    /// `threads`: worker threads for the large ops (None: all cores).
    pub fn new(dtype: DType, threads: Option<usize>) -> Self {
        let threads =
            threads.unwrap_or_else(|| thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
        Cpu { dtype, threads, allocated: (AtomicU64::new(0), AtomicU64::new(0)) }
    }

    /// (allocations, bytes) of activation buffers, ids and candidates since it was made.
    pub fn allocated(&self) -> (u64, u64) {
        (self.allocated.0.load(Ordering::Relaxed), self.allocated.1.load(Ordering::Relaxed))
    }

    fn tally(&self, bytes: usize) {
        self.allocated.0.fetch_add(1, Ordering::Relaxed);
        self.allocated.1.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Round one value to the activation dtype.
    #[inline]
    pub fn round(&self, x: f32) -> f32 {
        round_to(self.dtype, x)
    }

    /// Run `f(first_row, rows_chunk)` over `out` split into row chunks, on up to `threads`
    /// threads when the work (`cost` flops or so) is worth it.
    fn par_rows<F>(&self, out: &mut [f32], cols: usize, cost: usize, f: F)
    where
        F: Fn(usize, &mut [f32]) + Sync,
    {
        let rows = out.len().checked_div(cols).unwrap_or(0);
        let threads = if cost < (1 << 20) { 1 } else { self.threads.min(rows).max(1) };
        if threads == 1 {
            f(0, out);
            return;
        }
        let per = rows.div_ceil(threads);
        thread::scope(|s| {
            for (i, chunk) in out.chunks_mut(per * cols).enumerate() {
                let f = &f;
                s.spawn(move || f(i * per, chunk));
            }
        });
    }
}

/// Dot product in f32 with 8 interleaved partial sums combined pairwise: a fixed order, so the
/// same inputs give the same bits whatever the batch, window or thread count.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, |x| x)
}

/// [`dot`] of `a` with stored values `b`, each widened to f32 by `w` inside the product: the
/// same lanes and order, so the same bits as widening first.
#[inline]
fn dot_with<T: Copy>(a: &[f32], b: &[T], w: impl Fn(T) -> f32) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * w(y[l]);
        }
    }
    for (l, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] += x * w(*y);
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// A bf16 value's f32 (exact); a NaN keeps its payload (its products are NaN either way), which
/// keeps the loop branch-free where `half`'s conversion quiets NaNs with a branch per element.
#[inline]
fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// [`dot`] of f32 `a` with `S`-byte stored values `b`, each widened by `w`: the same lanes and the
/// same final combination, hence the same bits as `dot` over the widened values.
#[inline]
fn dot_by<const S: usize>(a: &[f32], b: &[u8], w: impl Fn([u8; S]) -> f32) -> f32 {
    debug_assert_eq!(a.len() * S, b.len());
    let at = |c: &[u8], i: usize| w(std::array::from_fn(|j| c[i * S + j]));
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8 * S);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * at(y, l);
        }
    }
    let rest = cb.remainder();
    for (l, x) in ca.remainder().iter().enumerate() {
        acc[l] += x * at(rest, l);
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Activation rows of [`Cpu::linear`] that share one pass over the weights (64 rows of a
/// 12288-wide input are 3 MiB of f32: cache-resident while the weight rows stream past).
const LINEAR_ROWS: usize = 64;

fn check(cond: bool, what: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Device(format!("cpu backend: {what}")))
    }
}

/// Position of canvas index `p` inside batch row `b`, counted from its first real token.
#[inline]
fn row_position(p: usize, pad: u32) -> usize {
    p.saturating_sub(pad as usize)
}

impl Cpu {
    /// The FP8 linear (`crate::fp8`): codes widened to their exact values, the same fixed-order
    /// f32 dot product as every linear, then `· sx[m] · sw[n]` and one rounding.
    fn linear_fp8(&self, x: &CpuTensor, w: &Fp8, n: usize, rows: usize, out: &mut CpuTensor) -> Result<()> {
        let Some(xq) = &x.fp8 else {
            return Err(Error::Device(
                "cpu backend: linear: an FP8 weight needs an FP8 input (quantize_fp8)".into(),
            ));
        };
        let k = x.cols;
        let xs: Vec<f32> = xq.codes[..rows * k].iter().map(|&c| fp8::e4m3_to_f32(c)).collect();
        let dtype = self.dtype;
        let weight = |o: usize| &w.codes[o * k..(o + 1) * k];
        self.row_blocked(&mut out.data[..rows * n], n, k, weight, |wr, o, r| {
            let acc = dot_with(&xs[r * k..(r + 1) * k], wr, fp8::e4m3_to_f32);
            round_to(dtype, acc * xq.scales[r] * w.scales[o])
        });
        Ok(())
    }

    /// `out[r, o] = value(&weight(o), o, r)` over the rows of `out` (`n` columns; `k`, the inner
    /// size, sizes the thread split): up to LINEAR_ROWS rows share each weight row while it is in
    /// cache (an in-block step of a real model reads its weights, GBs beyond any cache, once per
    /// thread), each weight row resolved once per block of rows. The linears' one loop.
    fn row_blocked<W>(
        &self,
        out: &mut [f32],
        n: usize,
        k: usize,
        weight: impl Fn(usize) -> W + Sync,
        value: impl Fn(&W, usize, usize) -> f32 + Sync,
    ) {
        let rows = out.len().checked_div(n).unwrap_or(0);
        self.par_rows(out, n, rows * n * k, |r0, chunk| {
            let m = chunk.len() / n;
            for rb in (0..m).step_by(LINEAR_ROWS) {
                let re = (rb + LINEAR_ROWS).min(m);
                for o in 0..n {
                    let wr = weight(o);
                    for r in rb..re {
                        chunk[r * n + o] = value(&wr, o, r0 + r);
                    }
                }
            }
        });
    }
}

impl Backend for Cpu {
    type Tensor = CpuTensor;
    type Ids = Vec<u32>;
    type Cands = CpuCands;
    type Mark = std::time::Instant;

    fn name(&self) -> String {
        format!("cpu ({} threads, {} activations)", self.threads, self.dtype.name())
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn tensor(&self, rows: usize, cols: usize) -> Result<CpuTensor> {
        self.tally(rows * cols * 4);
        Ok(CpuTensor::new(rows, cols, vec![0.0; rows * cols]))
    }

    fn upload(&self, parts: &[TensorView<'_>], rows: usize, cols: usize) -> Result<CpuTensor> {
        let stored = parts.iter().map(|p| p.bytes.len()).sum::<usize>();
        check(
            stored == rows * cols * parts.first().map_or(0, |p| p.dtype.size()),
            "upload: parts do not fill the matrix",
        )?;
        // A matrix in the activation dtype is read in place (no copy); vectors (norms, biases)
        // and matrices that need rounding are copied.
        if rows > 1
            && parts.iter().all(|p| p.dtype == self.dtype && p.bytes.len() % (cols * p.dtype.size()) == 0)
        {
            let parts = parts
                .iter()
                .map(|p| (p.map.clone(), p.offset, p.bytes.len() / (cols * p.dtype.size())))
                .collect();
            let mapped = Some(Mapped { dtype: self.dtype, parts });
            return Ok(CpuTensor { rows, cols, data: vec![], mapped, fp8: None });
        }
        let mut data = Vec::with_capacity(rows * cols);
        for p in parts {
            // Values of a bf16 checkpoint are exact in f32; rounding keeps an f32 checkpoint run
            // in bf16 (for tests) honest.
            data.extend(p.to_f32().into_iter().map(|x| self.round(x)));
        }
        check(data.len() == rows * cols, "upload: parts do not fill the matrix")?;
        Ok(CpuTensor::new(rows, cols, data))
    }

    fn upload_fp8(&self, codes: &[u8], scales: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
        check(
            codes.len() == rows * cols && scales.len() == rows,
            "upload_fp8: codes or scales do not match the shape",
        )?;
        let fp8 = Some(Fp8 { codes: codes.to_vec(), scales: scales.to_vec() });
        Ok(CpuTensor { rows, cols, data: vec![], mapped: None, fp8 })
    }

    fn tensor_fp8(&self, rows: usize, cols: usize) -> Result<CpuTensor> {
        self.tally(rows * cols + rows * 4);
        self.upload_fp8(&vec![0; rows * cols], &vec![0.0; rows], rows, cols)
    }

    fn stored_dtype(&self, t: &CpuTensor) -> DType {
        match (&t.fp8, &t.mapped) {
            (Some(_), _) => DType::E4m3,
            (None, Some(m)) => m.dtype,
            (None, None) => self.dtype,
        }
    }

    fn upload_f32(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
        check(data.len() == rows * cols, "upload_f32: data does not match its shape")?;
        Ok(CpuTensor::new(rows, cols, data.to_vec()))
    }

    fn ids(&self, len: usize) -> Result<Vec<u32>> {
        self.tally(len * 4);
        Ok(vec![0; len])
    }

    fn cands(&self, len: usize) -> Result<CpuCands> {
        self.tally(len * self.cand_bytes());
        Ok(CpuCands { tokens: vec![0; len], conf: vec![0.0; len] })
    }

    fn write_ids(&self, dst: &mut Vec<u32>, src: &[u32]) -> Result<()> {
        check(dst.len() >= src.len(), "write_ids: destination too small")?;
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn read_ids(&self, src: &Vec<u32>, dst: &mut [u32]) -> Result<()> {
        check(src.len() >= dst.len(), "read_ids: source too small")?;
        dst.copy_from_slice(&src[..dst.len()]);
        Ok(())
    }

    fn embed(&self, table: &CpuTensor, canvas: &Vec<u32>, step: Step, out: &mut CpuTensor) -> Result<()> {
        let d = table.cols;
        check(out.cols == d && out.rows >= step.rows(), "embed: output shape")?;
        for b in 0..step.batch {
            for t in 0..step.win.len {
                let id = canvas[b * step.canvas + step.win.start + t] as usize;
                check(id < table.rows, "embed: token id outside the table")?;
                let r = b * step.win.len + t;
                table.row_into(id, &mut out.data[r * d..(r + 1) * d]);
            }
        }
        Ok(())
    }

    fn rmsnorm(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        eps: f32,
        rows: usize,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let d = x.cols;
        check(w.data.len() == d && out.cols == d && x.rows >= rows && out.rows >= rows, "rmsnorm: shapes")?;
        for r in 0..rows {
            let xr = x.row(r);
            let var = dot(xr, xr) / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            let o = &mut out.data[r * d..(r + 1) * d];
            for i in 0..d {
                // spec §2: normalise in fp32, cast to the activation dtype, then scale.
                o[i] = self.round(self.round(xr[i] * inv) * w.data[i]);
            }
        }
        Ok(())
    }

    fn linear(&self, x: &CpuTensor, w: &CpuTensor, rows: usize, out: &mut CpuTensor) -> Result<()> {
        let (k, n) = (w.cols, w.rows);
        check(x.cols == k && out.cols == n && x.rows >= rows && out.rows >= rows, "linear: shapes")?;
        if let Some(wq) = &w.fp8 {
            return self.linear_fp8(x, wq, n, rows, out);
        }
        check(x.fp8.is_none(), "linear: an FP8 input needs an FP8 weight")?;
        let xd = &x.data[..rows * k];
        let dtype = self.dtype;
        self.row_blocked(
            &mut out.data[..rows * n],
            n,
            k,
            |o| w.weight_row(o),
            |wr, _, r| round_to(dtype, wr.dot(&xd[r * k..(r + 1) * k])),
        );
        Ok(())
    }

    fn rope_store_kv(
        &self,
        qkv: &mut CpuTensor,
        cos: &CpuTensor,
        sin: &CpuTensor,
        pads: &Vec<u32>,
        step: Step,
        heads: Heads,
        k_cache: &mut CpuTensor,
        v_cache: &mut CpuTensor,
    ) -> Result<()> {
        let hd = heads.head_dim;
        let (qd, kvd) = (heads.q_dim(), heads.kv_dim());
        check(qkv.cols == qd + 2 * kvd && cos.cols == hd && sin.cols == hd, "rope: shapes")?;
        check(k_cache.cols == kvd && v_cache.cols == kvd, "rope: cache shapes")?;
        check(k_cache.rows >= step.batch * step.canvas, "rope: cache rows")?;
        let half = hd / 2;
        let mut tmp = vec![0f32; hd];
        for b in 0..step.batch {
            for t in 0..step.win.len {
                let p = step.win.start + t;
                let mut pos = row_position(p, pads[b]);
                if pads.len() >= 2 * step.batch && p >= pads[step.batch + b] as usize {
                    pos = pos.min(cos.rows - 1); // after the row's end: masked, any table row does
                }
                check(pos < cos.rows, "rope: position beyond the table")?;
                let (c, s) = (cos.row(pos), sin.row(pos));
                let r = b * step.win.len + t;
                let row = &mut qkv.data[r * qkv.cols..(r + 1) * qkv.cols];
                // rotate_half layout (spec §2): [x1 | x2] -> [x1 cos - x2 sin | x2 cos + x1 sin]
                let mut rotate = |x: &mut [f32]| {
                    for i in 0..half {
                        tmp[i] = x[i] * c[i] - x[i + half] * s[i];
                        tmp[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
                    }
                    for i in 0..hd {
                        x[i] = round_to(self.dtype, tmp[i]);
                    }
                };
                for h in 0..heads.n_heads + heads.n_kv_heads {
                    rotate(&mut row[h * hd..(h + 1) * hd]);
                }
                let cr = (b * step.canvas + p) * kvd;
                k_cache.data[cr..cr + kvd].copy_from_slice(&row[qd..qd + kvd]);
                v_cache.data[cr..cr + kvd].copy_from_slice(&row[qd + kvd..qd + 2 * kvd]);
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        qkv: &CpuTensor,
        k_cache: &CpuTensor,
        v_cache: &CpuTensor,
        pads: &Vec<u32>,
        step: Step,
        heads: Heads,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let hd = heads.head_dim;
        let (qd, kvd) = (heads.q_dim(), heads.kv_dim());
        let group = heads.n_heads / heads.n_kv_heads;
        check(out.cols == qd && out.rows >= step.rows(), "attention: output shape")?;
        check(pads.len() >= 2 * step.batch, "attention: pads must hold left pads and row ends")?;
        check(
            (0..step.batch)
                .all(|b| pads[b] < pads[step.batch + b] && pads[step.batch + b] as usize <= step.canvas),
            "attention: a row's keys [pad, end) are empty or outside the canvas",
        )?;
        let scale = 1.0 / (hd as f32).sqrt();
        let canvas = step.canvas;
        let dtype = self.dtype;
        let cost = step.rows() * canvas * qd * 2;
        self.par_rows(&mut out.data[..step.rows() * qd], qd, cost, |r0, chunk| {
            let mut p = vec![0f32; canvas];
            let mut acc = vec![0f32; hd];
            for (ri, o) in chunk.chunks_mut(qd).enumerate() {
                let r = r0 + ri;
                let b = r / step.win.len;
                let q = &qkv.data[r * qkv.cols..r * qkv.cols + qd];
                // keys before the row's first real token and from its end on are masked
                let (first, l) = (pads[b] as usize, pads[step.batch + b] as usize);
                for h in 0..heads.n_heads {
                    let qh = &q[h * hd..(h + 1) * hd];
                    let kvo = (h / group) * hd;
                    let mut max = f32::NEG_INFINITY;
                    for j in first..l {
                        let kr = (b * canvas + j) * kvd + kvo;
                        let s = dot(qh, &k_cache.data[kr..kr + hd]) * scale;
                        p[j] = s;
                        max = max.max(s);
                    }
                    let mut sum = 0f32;
                    for pj in &mut p[first..l] {
                        *pj = (*pj - max).exp();
                        sum += *pj;
                    }
                    acc.fill(0.0);
                    for j in first..l {
                        let w = p[j] / sum;
                        let vr = (b * canvas + j) * kvd + kvo;
                        for (a, v) in acc.iter_mut().zip(&v_cache.data[vr..vr + hd]) {
                            *a += w * v;
                        }
                    }
                    for (oi, a) in o[h * hd..(h + 1) * hd].iter_mut().zip(&acc) {
                        *oi = round_to(dtype, *a);
                    }
                }
            }
        });
        Ok(())
    }

    fn quantize_fp8(&self, x: &CpuTensor, rows: usize, out: &mut CpuTensor) -> Result<()> {
        let k = x.cols;
        check(
            out.cols == k && x.rows >= rows && out.rows >= rows && x.fp8.is_none(),
            "quantize_fp8: shapes",
        )?;
        check(out.fp8.is_some(), "quantize_fp8: the output is not an FP8 buffer")?;
        let Some(q) = &mut out.fp8 else { return Ok(()) };
        for r in 0..rows {
            q.scales[r] = fp8::quantize_row(x.row(r), &mut q.codes[r * k..(r + 1) * k]);
        }
        Ok(())
    }

    fn swiglu(&self, gate_up: &CpuTensor, rows: usize, out: &mut CpuTensor) -> Result<()> {
        let m = out.cols;
        check(gate_up.cols == 2 * m && gate_up.rows >= rows && out.rows >= rows, "swiglu: shapes")?;
        for r in 0..rows {
            let gu = gate_up.row(r);
            let o = &mut out.data[r * m..(r + 1) * m];
            for i in 0..m {
                let g = gu[i];
                let silu = self.round(g / (1.0 + (-g).exp()));
                o[i] = self.round(silu * gu[m + i]);
            }
        }
        Ok(())
    }

    fn add(&self, h: &mut CpuTensor, x: &CpuTensor, rows: usize) -> Result<()> {
        check(h.cols == x.cols && h.rows >= rows && x.rows >= rows, "add: shapes")?;
        let n = rows * h.cols;
        for (a, b) in h.data[..n].iter_mut().zip(&x.data[..n]) {
            *a = self.round(*a + b);
        }
        Ok(())
    }

    fn add_bias(&self, x: &mut CpuTensor, bias: &CpuTensor, rows: usize) -> Result<()> {
        check(bias.data.len() == x.cols && x.rows >= rows, "add_bias: shapes")?;
        for r in 0..rows {
            for (a, b) in x.data[r * x.cols..(r + 1) * x.cols].iter_mut().zip(&bias.data) {
                *a = self.round(*a + b);
            }
        }
        Ok(())
    }

    fn gather_block(
        &self,
        h: &CpuTensor,
        step: Step,
        block: Window,
        shift: bool,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let d = h.cols;
        check(out.cols == d && out.rows >= step.batch * block.len, "gather_block: output shape")?;
        check(
            block.start >= step.win.start && block.start + block.len <= step.win.start + step.win.len,
            "gather_block: the block is outside the window",
        )?;
        let off = block.start - step.win.start;
        for b in 0..step.batch {
            for i in 0..block.len {
                // Dream's shift (spec §3): row p − 1 predicts p; the window's first row itself.
                let src = b * step.win.len + if shift { (off + i).saturating_sub(1) } else { off + i };
                let dst = b * block.len + i;
                out.data[dst * d..(dst + 1) * d].copy_from_slice(h.row(src));
            }
        }
        Ok(())
    }

    fn argmax_confidence(
        &self,
        logits: &CpuTensor,
        pads: &Vec<u32>,
        block: Window,
        batch: usize,
        sampling: Sampling<'_>,
        out: &mut CpuCands,
    ) -> Result<()> {
        let rows = batch * block.len;
        check(logits.rows >= rows && out.tokens.len() >= rows, "argmax_confidence: shapes")?;
        check(sampling.draws.len() >= batch, "argmax_confidence: draws")?;
        for r in 0..rows {
            let b = r / block.len;
            let draw = sampling.draws[b];
            let greedy = draw.temperature == 0.0;
            let l = logits.row(r);
            // the allowed set of a top-k / nucleus draw (issue 19); 0: every token
            let cut = nucleus::cut(l, sampling.mask_id, &draw);
            let (max, sum) = softmax_sum(l);
            let pos = row_position(block.start + r % block.len, pads[b]) as u64;
            // The first non-mask id with the highest score (lowest id on ties); NaN scores
            // never win; when nothing beats -inf, the lowest non-mask id. The mask token is never
            // drawn: committing it would leave the position masked (docs/spec-notes.md).
            let first = usize::from(sampling.mask_id == 0);
            let mut best = (f64::NEG_INFINITY, first.min(l.len() - 1));
            for (v, &x) in l.iter().enumerate() {
                if v == sampling.mask_id as usize || (cut != 0 && nucleus::order_key(x) < cut) {
                    continue;
                }
                let score = if greedy {
                    x as f64
                } else {
                    x as f64 / draw.temperature
                        + rng::gumbel(sampling.seeds[b], sampling.counters[b], pos, v as u64)
                };
                if score > best.0 {
                    best = (score, v);
                }
            }
            let prob = |x: f32| {
                let p = (x as f64 - max).exp() / sum;
                if sampling.bf16_probs {
                    // through f32, as the kernel does (and torch: f32 softmax, then bf16)
                    bf16::from_f32(p as f32).to_f64()
                } else {
                    p
                }
            };
            if greedy && sampling.bf16_probs {
                // Dream's bf16 softmax (spec §3): the argmax of the rounded probabilities, so
                // the lowest id among those that round like the best one.
                let top = prob(l[best.1]);
                if let Some(v) = (0..best.1).find(|&v| v != sampling.mask_id as usize && prob(l[v]) == top) {
                    best.1 = v;
                }
            }
            out.tokens[r] = best.1 as u32;
            out.conf[r] = match draw.score {
                Score::Confidence => prob(l[best.1]),
                Score::NegEntropy if sampling.bf16_probs => {
                    // Dream on bf16 tensors (spec §3): torch rounds the output of every op of
                    // Σ p·log(p + 1e-10) to bf16 (the sum, the log, the product), the sum once
                    let r16 = |x: f32| bf16::from_f32(x).to_f32();
                    let e: f64 = l
                        .iter()
                        .map(|&x| {
                            let p = prob(x) as f32;
                            let log = r16((r16(p + 1e-10) as f64).ln() as f32);
                            r16(p * log) as f64
                        })
                        .sum();
                    bf16::from_f32(e as f32).to_f64()
                }
                Score::NegEntropy => l.iter().map(|&x| prob(x)).map(|p| p * (p + 1e-10).ln()).sum(),
                Score::NegEntropyF64 => l.iter().map(|&x| prob(x)).map(|p| p * (p + 1e-12).ln()).sum(),
            };
        }
        Ok(())
    }

    fn top_logprobs(
        &self,
        logits: &CpuTensor,
        drawn: &CpuCands,
        rows: usize,
        n: usize,
        mask_id: u32,
        out: &mut CpuCands,
    ) -> Result<()> {
        check(logits.rows >= rows && drawn.tokens.len() >= rows, "top_logprobs: shapes")?;
        check(out.tokens.len() >= rows * (n + 1), "top_logprobs: output too small")?;
        for r in 0..rows {
            let l = logits.row(r);
            let (max, sum) = softmax_sum(l);
            let lse = max + sum.ln();
            let tok = drawn.tokens[r];
            let o = r * (n + 1);
            out.tokens[o] = tok;
            out.conf[o] = l.get(tok as usize).map_or(f64::NAN, |&x| x as f64 - lse);
            // NaN sorts as -inf (the kernel's reduction never prefers it)
            let key = |v: usize| if l[v].is_nan() { f64::NEG_INFINITY } else { l[v] as f64 };
            let mut order: Vec<usize> = (0..l.len()).filter(|&v| v != mask_id as usize).collect();
            order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
            for j in 0..n {
                let (id, lp) =
                    order.get(j).map_or((u32::MAX, f64::NEG_INFINITY), |&v| (v as u32, l[v] as f64 - lse));
                out.tokens[o + 1 + j] = id;
                out.conf[o + 1 + j] = lp;
            }
        }
        Ok(())
    }

    fn select(
        &self,
        cands: &mut CpuCands,
        canvas: &mut Vec<u32>,
        canvas_len: usize,
        sel: Select<'_>,
    ) -> Result<Vec<u32>> {
        let bl = sel.block.len;
        let mut counts = vec![0u32; sel.active.len()];
        let mut row: Vec<Candidate> = Vec::with_capacity(bl);
        let mut confs: Vec<f64> = Vec::with_capacity(bl);
        for (b, &active) in sel.active.iter().enumerate() {
            if !active {
                continue;
            }
            row.clear();
            for i in 0..bl {
                let p = sel.block.start + i;
                if canvas[b * canvas_len + p] == sel.mask_id {
                    let c = b * bl + i;
                    row.push(Candidate { pos: p, token: cands.tokens[c], conf: cands.conf[c] });
                }
            }
            if row.iter().any(|c| c.conf.is_nan()) {
                counts[b] = NON_FINITE;
                continue;
            }
            if sel.rules[b] == SelectRule::First {
                // `row` is in position order: its first entry is the block's first mask.
                if let Some(c) = row.first() {
                    canvas[b * canvas_len + c.pos] = c.token;
                    counts[b] = 1;
                }
                continue;
            }
            select::rank(&mut row);
            confs.clear();
            confs.extend(row.iter().map(|c| c.conf));
            let k = select::commit_count(sel.rules[b], &confs, sel.quota[b]);
            for c in &row[..k] {
                canvas[b * canvas_len + c.pos] = c.token;
            }
            counts[b] = k as u32;
        }
        Ok(counts)
    }

    fn stored_size(&self) -> usize {
        4
    }

    fn cand_bytes(&self) -> usize {
        4 + 8
    }

    fn mark(&self) -> Result<std::time::Instant> {
        Ok(std::time::Instant::now())
    }

    fn elapsed_ms(&self, from: &std::time::Instant, to: &std::time::Instant) -> Result<f64> {
        Ok(to.saturating_duration_since(*from).as_secs_f64() * 1e3)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn copy(&self, src: &CpuTensor, dst: &mut CpuTensor) -> Result<()> {
        check(src.rows == dst.rows && src.cols == dst.cols, "copy: shapes")?;
        check(src.mapped.is_none() && dst.mapped.is_none(), "copy: a mapped weight")?;
        if src.fp8.is_some() || dst.fp8.is_some() {
            check(src.fp8.is_some() && dst.fp8.is_some(), "copy: an FP8 and a dense tensor")?;
            dst.fp8.clone_from(&src.fp8);
            return Ok(());
        }
        let n = src.data.len();
        self.par_rows(&mut dst.data, src.cols, n, |r0, chunk| {
            chunk.copy_from_slice(&src.data[r0 * src.cols..r0 * src.cols + chunk.len()]);
        });
        Ok(())
    }

    fn fill_random(&self, t: &mut CpuTensor, seed: u64, offset: f32, scale: f32) -> Result<()> {
        check(t.mapped.is_none(), "fill_random: a mapped weight")?;
        let dtype = self.dtype;
        let cols = t.cols.max(1);
        self.par_rows(&mut t.data, cols, t.rows * cols * 8, |r0, chunk| {
            for (j, x) in chunk.iter_mut().enumerate() {
                *x = round_to(dtype, rng::synthetic_value(seed, (r0 * cols + j) as u64, offset, scale));
            }
        });
        Ok(())
    }

    fn tensor_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
        check(data.len() == rows * cols, "tensor_from_host: data does not match its shape")?;
        Ok(CpuTensor::new(rows, cols, data.iter().map(|&x| self.round(x)).collect()))
    }

    fn to_host(&self, t: &CpuTensor, rows: usize) -> Result<Vec<f32>> {
        check(rows <= t.rows, "to_host: more rows than the matrix has")?;
        let mut out = vec![0f32; rows * t.cols];
        for (r, o) in out.chunks_mut(t.cols.max(1)).enumerate() {
            t.row_into(r, o);
        }
        Ok(out)
    }

    fn read_cands(&self, c: &CpuCands, len: usize) -> Result<(Vec<u32>, Vec<f64>)> {
        check(len <= c.tokens.len(), "read_cands: too many")?;
        Ok((c.tokens[..len].to_vec(), c.conf[..len].to_vec()))
    }
}

/// A logits row's max and softmax denominator `Σ_v exp(l_v − max)`, both f64 (spec §4.2: the
/// denominator in float64, over the whole vocabulary). A non-finite logit (broken checkpoint,
/// overflow) makes the sum NaN, so every probability and score of the row is NaN (as in the
/// kernels).
fn softmax_sum(l: &[f32]) -> (f64, f64) {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum = if l.iter().all(|x| x.is_finite()) {
        l.iter().map(|&x| (x as f64 - max).exp()).sum()
    } else {
        f64::NAN
    };
    (max, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Draw;

    /// Degenerate logits behave the same on every backend (the CUDA kernels have the same rules):
    /// NaN never wins, all -inf draws the lowest non-mask id, the mask id is never drawn, ties go
    /// to the lowest id; a row holding any non-finite logit is scored NaN, and selection commits
    /// nothing of a batch row with a NaN candidate and reports it as [`NON_FINITE`].
    #[test]
    fn degenerate_logits_and_non_finite_rows() {
        let cpu = Cpu::new(DType::F32, Some(1));
        let ni = f32::NEG_INFINITY;
        let rows = [
            vec![ni, ni, ni, ni],          // nothing beats -inf: lowest non-mask id
            vec![0.0, 1.0, 3.0, 3.0],      // tie: lowest id
            vec![9.0, 1.0, f32::NAN, 0.5], // the mask (id 0) is the max: never drawn; NaN never wins
            vec![f32::NAN; 4],             // all NaN
            vec![ni, 1.0, 3.0, 2.0],       // one -inf among finite logits
        ];
        let logits = CpuTensor::new(5, 4, rows.concat());
        let mut out = cpu.cands(5).unwrap();
        let s =
            Sampling { draws: &[Draw::GREEDY], seeds: &[0], counters: &[0], mask_id: 0, bf16_probs: false };
        cpu.argmax_confidence(&logits, &vec![0], Window { start: 0, len: 5 }, 1, s, &mut out).unwrap();
        assert_eq!(out.tokens, vec![1, 2, 1, 1, 2]);
        let want = 1.0 / ((-3.0f64).exp() + (-2.0f64).exp() + 2.0);
        assert!((out.conf[1] - want).abs() < 1e-12, "{}", out.conf[1]);
        for r in [0, 2, 3, 4] {
            assert!(out.conf[r].is_nan(), "row {r}: {}", out.conf[r]);
        }
        for rule in
            [SelectRule::Quota, SelectRule::Threshold(0.9), SelectRule::Factor(1.0), SelectRule::First]
        {
            // every position masked (id 0): NaN candidates, nothing committed
            let mut canvas = vec![0u32; 5];
            let block = Window { start: 0, len: 5 };
            let sel = Select { rules: &[rule], active: &[true], quota: &[2], mask_id: 0, block };
            assert_eq!(cpu.select(&mut out, &mut canvas, 5, sel).unwrap(), vec![NON_FINITE], "{rule:?}");
            assert_eq!(canvas, vec![0; 5], "{rule:?}");
            // only the finite row masked: it is committed
            let mut canvas = vec![7, 0, 7, 7, 7];
            assert_eq!(cpu.select(&mut out, &mut canvas, 5, sel).unwrap(), vec![1], "{rule:?}");
            assert_eq!(canvas, vec![7, 2, 7, 7, 7], "{rule:?}");
        }
    }

    /// top_logprobs against a direct log-softmax: the drawn token first, then the n most likely
    /// non-mask ids (ties: lower id first), a short vocabulary padded with (u32::MAX, -inf), NaN
    /// for a row with a non-finite logit.
    #[test]
    fn top_logprobs_rank_and_normalise() {
        let cpu = Cpu::new(DType::F32, Some(1));
        let rows = [vec![1.0f32, 3.0, 3.0, 0.5, 2.0], vec![0.0, f32::NAN, 1.0, 2.0, 3.0]];
        let logits = CpuTensor::new(2, 5, rows.concat());
        let mut drawn = cpu.cands(2).unwrap();
        drawn.tokens = vec![4, 2];
        let mut out = cpu.cands(2 * 7).unwrap();
        // mask id 2: never listed
        cpu.top_logprobs(&logits, &drawn, 2, 6, 2, &mut out).unwrap();
        let lse = rows[0].iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert_eq!(&out.tokens[..7], &[4, 1, 4, 0, 3, u32::MAX, u32::MAX]);
        for (j, &v) in [4usize, 1, 4, 0, 3].iter().enumerate() {
            assert!((out.conf[j] - (rows[0][v] as f64 - lse)).abs() < 1e-12, "{j}: {}", out.conf[j]);
        }
        assert_eq!(out.conf[5], f64::NEG_INFINITY);
        assert!(out.conf[7..].iter().all(|x| x.is_nan() || *x == f64::NEG_INFINITY), "{:?}", &out.conf[7..]);
        assert!(out.conf[7].is_nan());
    }

    /// Dream's bf16 entropy as torch computes `torch.sum(probs * torch.log(probs + 1e-10), -1)`
    /// on bf16 tensors: pinned with PyTorch 2.15's value for this row (-0.2294921875, bits
    /// 0xbe6b); rounding only the final sum gives -0.228515625.
    #[test]
    #[allow(clippy::excessive_precision)] // bf16 logits, written exactly
    fn dream_bf16_entropy_rounds_like_torch() {
        let cpu = Cpu::new(DType::F32, Some(1));
        let row = vec![
            -1.84375,
            0.0947265625,
            -1.4765625,
            0.74609375,
            1.3203125,
            0.337890625,
            1.921875,
            1.3203125,
            -0.306640625,
            2.375,
            -0.8671875,
            0.1572265625,
            1.5703125,
            6.90625,
            -4.40625,
            -4.75,
        ];
        let logits = CpuTensor::new(1, 16, row);
        let mut out = cpu.cands(1).unwrap();
        let draws = [Draw { score: Score::NegEntropy, ..Draw::GREEDY }];
        let s = Sampling { draws: &draws, seeds: &[0], counters: &[0], mask_id: 99, bf16_probs: true };
        cpu.argmax_confidence(&logits, &vec![0], Window { start: 0, len: 1 }, 1, s, &mut out).unwrap();
        assert_eq!(out.conf[0], -0.2294921875);
    }

    /// Dream's scores (spec §3): the negative entropy of the row's distribution, and with bf16
    /// probabilities the lowest id among tokens whose rounded probabilities tie with the best.
    #[test]
    fn dream_entropy_and_bf16_probability_ties() {
        let cpu = Cpu::new(DType::F32, Some(1));
        // ids 1 and 3 differ by 1e-4 in logit: their probabilities round to one bf16 value
        let logits = CpuTensor::new(2, 4, vec![0.0, 2.0, 0.0, 2.0001, 0.0, 0.0, 0.0, 0.0]);
        let mut out = cpu.cands(2).unwrap();
        let pads = vec![0u32];
        let block = Window { start: 0, len: 2 };
        let run = |score, bf16_probs, out: &mut CpuCands| {
            let draws = [Draw { score, ..Draw::GREEDY }];
            let s = Sampling { draws: &draws, seeds: &[0], counters: &[0], mask_id: 99, bf16_probs };
            cpu.argmax_confidence(&logits, &pads, block, 1, s, out).unwrap();
        };
        run(Score::Confidence, false, &mut out);
        assert_eq!(out.tokens, vec![3, 0], "f32: the larger logit");
        run(Score::Confidence, true, &mut out);
        assert_eq!(out.tokens, vec![1, 0], "bf16 probabilities tie: the lowest id");
        assert_eq!(out.conf[1], 0.25);
        assert_eq!(bf16::from_f32(out.conf[0] as f32).to_f64(), out.conf[0], "a bf16 confidence");
        run(Score::NegEntropy, false, &mut out);
        // uniform over 4: Σ p ln(p + 1e-10) = ln(0.25 + 1e-10)
        assert!((out.conf[1] - (0.25f64 + 1e-10).ln()).abs() < 1e-12, "{}", out.conf[1]);
        assert!(out.conf[0] > out.conf[1], "a peaked row is more certain");
    }
}
