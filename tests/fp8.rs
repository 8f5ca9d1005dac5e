//! dllm's e4m3 conversion against the standard (ml_dtypes' float8_e4m3fn tables written by
//! tools/make_e4m3_table.py), and the per-row quantization's contract.

mod common;

use common::{rand_uniform, rel_err};
use dllm::backend::cpu::Cpu;
use dllm::backend::{Backend, DType};
use dllm::fp8::{e4m3_from_f32, e4m3_to_f32, quantize_row, quantize_rows, E4M3_NAN};

fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/fixtures/fp8/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn every_code_decodes_to_the_standard_value() {
    let values = fixture("e4m3_values.bin");
    assert_eq!(values.len(), 256 * 4);
    for (code, v) in values.chunks_exact(4).enumerate() {
        let want = f32::from_le_bytes(v.try_into().unwrap());
        let got = e4m3_to_f32(code as u8);
        assert!(
            got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan(),
            "code {code:#04x}: {got} vs {want}"
        );
    }
}

#[test]
fn every_bf16_value_encodes_bit_exactly() {
    let want = fixture("e4m3_of_bf16.bin");
    assert_eq!(want.len(), 1 << 16);
    let mut bad = vec![];
    for bits in 0..=u16::MAX {
        let x = half::bf16::from_bits(bits).to_f32();
        let got = e4m3_from_f32(x);
        if got != want[bits as usize] {
            bad.push(format!("bf16 {bits:#06x} ({x:e}): {got:#04x} vs {:#04x}", want[bits as usize]));
        }
    }
    assert!(bad.is_empty(), "{} mismatches, first: {:?}", bad.len(), &bad[..bad.len().min(8)]);
}

#[test]
fn random_f32_values_encode_bit_exactly() {
    let rec = fixture("e4m3_of_f32.bin");
    assert_eq!(rec.len() % 5, 0);
    for r in rec.chunks_exact(5) {
        let x = f32::from_bits(u32::from_le_bytes(r[..4].try_into().unwrap()));
        assert_eq!(e4m3_from_f32(x), r[4], "f32 {:#010x} ({x:e})", x.to_bits());
    }
}

#[test]
fn encoding_a_code_value_gives_the_code_back() {
    for code in 0..=255u8 {
        let v = e4m3_to_f32(code);
        if v.is_nan() {
            assert_eq!(e4m3_from_f32(v), E4M3_NAN);
        } else {
            assert_eq!(e4m3_from_f32(v), code, "code {code:#04x} value {v}");
        }
    }
}

#[test]
fn a_row_is_scaled_to_its_absmax() {
    let x = [0.5f32, -3.0, 1.25, 0.0, 2.9];
    let mut q = [0u8; 5];
    let s = quantize_row(&x, &mut q);
    assert_eq!(s, 3.0 / 448.0);
    assert_eq!(q[1], 0xFE, "the absmax entry is −448");
    for (c, v) in q.iter().zip(x) {
        let back = e4m3_to_f32(*c) * s;
        assert!((back - v).abs() <= v.abs() / 16.0 + 1e-6, "{v} came back as {back}");
    }
    let mut z = [7u8; 3];
    assert_eq!(quantize_row(&[0.0, -0.0, 0.0], &mut z), 0.0);
    assert_eq!(z, [0, 0, 0], "a zero row has zero codes, not NaN");
}

#[test]
fn non_finite_entries_poison_their_row() {
    let mut q = [0u8; 3];
    let s = quantize_row(&[1.0, f32::NAN, -2.0], &mut q);
    assert_eq!(s, 2.0 / 448.0, "NaN is skipped by the absmax");
    assert!(e4m3_to_f32(q[1]).is_nan());
    let s = quantize_row(&[1.0, f32::INFINITY, -2.0], &mut q);
    assert!(s.is_infinite());
    assert!(e4m3_to_f32(q[1]).is_nan(), "inf / inf");
}

/// The CPU twin's FP8 linear against its definition evaluated in f64, and against the dense
/// linear it approximates, on awkward sizes (rows 1, 31, 33; k = 200, not a multiple of 64).
#[test]
fn the_cpu_fp8_linear_is_its_definition() {
    for (m, n, k, dtype, tol) in
        [(1, 47, 80, DType::F32, 1e-6), (31, 40, 200, DType::F32, 1e-6), (33, 64, 96, DType::Bf16, 1e-2)]
    {
        let cpu = Cpu::new(dtype, Some(2));
        let (x, w) = (rand_uniform(m * k, 7, 2.0), rand_uniform(n * k, 8, 0.05));
        let xt = cpu.tensor_from_host(&x, m, k).unwrap();
        let mut x8 = cpu.tensor_fp8(m, k).unwrap();
        cpu.quantize_fp8(&xt, m, &mut x8).unwrap();
        let (wq, ws) = quantize_rows(&w, n, k);
        let w8 = cpu.upload_fp8(&wq, &ws, n, k).unwrap();
        let mut out = cpu.tensor(m, n).unwrap();
        cpu.linear(&x8, &w8, m, &mut out).unwrap();
        let got = cpu.to_host(&out, m).unwrap();
        let xr = cpu.to_host(&xt, m).unwrap(); // x as the backend holds it (rounded to dtype)
        let (xq, xs) = quantize_rows(&xr, m, k);
        let def: Vec<f32> = (0..m * n)
            .map(|i| {
                let (r, o) = (i / n, i % n);
                let acc: f64 = (0..k)
                    .map(|j| e4m3_to_f32(xq[r * k + j]) as f64 * e4m3_to_f32(wq[o * k + j]) as f64)
                    .sum();
                (acc * xs[r] as f64 * ws[o] as f64) as f32
            })
            .collect();
        let e = rel_err(&got, &def);
        assert!(e <= tol, "{m}×{n}×{k} {dtype:?}: {e:e} against the definition");
        let dense: Vec<f32> =
            (0..m * n).map(|i| (0..k).map(|j| xr[i / n * k + j] * w[i % n * k + j]).sum()).collect();
        let q = rel_err(&got, &dense);
        assert!(
            q > 1e-4 && q < 0.1,
            "{m}×{n}×{k}: FP8 is {q:e} from the dense product (e4m3 keeps ~2 digits)"
        );
    }
}

#[test]
fn an_fp8_weight_needs_an_fp8_input_and_a_quantize_needs_an_fp8_output() {
    let cpu = Cpu::new(DType::F32, Some(1));
    let x = cpu.tensor_from_host(&[1.0; 8], 2, 4).unwrap();
    let w8 = cpu.upload_fp8(&[0x38; 12], &[1.0; 3], 3, 4).unwrap();
    let mut out = cpu.tensor(2, 3).unwrap();
    let e = cpu.linear(&x, &w8, 2, &mut out).unwrap_err().to_string();
    assert!(e.contains("FP8 input"), "{e}");
    let mut dense = cpu.tensor(2, 4).unwrap();
    let e = cpu.quantize_fp8(&x, 2, &mut dense).unwrap_err().to_string();
    assert!(e.contains("FP8 buffer"), "{e}");
    assert!(cpu.upload_fp8(&[0; 12], &[1.0; 2], 3, 4).is_err(), "scales must match the rows");
    // read back dequantized (code value × row scale), as on CUDA
    let w8 = cpu.upload_fp8(&[0x38, 0xB8, 0x00, 0x7E], &[0.5, 2.0], 2, 2).unwrap();
    assert_eq!(cpu.to_host(&w8, 2).unwrap(), vec![0.5, -0.5, 0.0, 896.0]);
}
