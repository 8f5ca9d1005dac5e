//! dllm's e4m3 conversion against the standard (ml_dtypes' float8_e4m3fn tables written by
//! tools/make_e4m3_table.py), and the per-row quantization's contract.

use dllm::fp8::{e4m3_from_f32, e4m3_to_f32, quantize_row, E4M3_NAN};

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
