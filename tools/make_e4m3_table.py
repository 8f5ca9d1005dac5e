#!/usr/bin/env python3
"""Write the e4m3 oracle tables tests/fp8.rs checks dllm's conversion against, from ml_dtypes'
float8_e4m3fn (the OCP E4M3FN format that Hugging Face, PyTorch and JAX use):

  e4m3_of_bf16.bin    65,536 codes: the e4m3 code of every bf16 bit pattern (index = bits)
  e4m3_values.bin     256 little-endian f32: the value of every code
  e4m3_of_f32.bin     16,384 records of (f32 bits LE, code): seeded random f32 values

The conversion is round to nearest even, saturating (CUDA's __NV_SATFINITE): ml_dtypes overflows
to NaN instead, so values are clamped to ±448 first, which is the same rounding (every value
beyond 448 saturates). NaN maps to 0x7F here (CUDA's code); ml_dtypes keeps the sign bit.

    pip install ml_dtypes numpy && python3 tools/make_e4m3_table.py
"""
import pathlib

import ml_dtypes
import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "fp8"


def codes(x32: np.ndarray) -> np.ndarray:
    nan = np.isnan(x32)
    c = np.clip(x32, -448.0, 448.0).astype(ml_dtypes.float8_e4m3fn).view(np.uint8).copy()
    c[nan] = 0x7F
    return c


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    bf = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(ml_dtypes.bfloat16)
    with np.errstate(invalid="ignore"):
        (OUT / "e4m3_of_bf16.bin").write_bytes(codes(bf.astype(np.float32)).tobytes())
        values = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
        (OUT / "e4m3_values.bin").write_bytes(values.astype("<f4").tobytes())
        rng = np.random.default_rng(17)
        # half uniform bit patterns, half values near e4m3's range (ties and carries)
        bits = rng.integers(0, 1 << 32, 8192, dtype=np.uint64).astype(np.uint32)
        near = (rng.standard_normal(8192) * np.exp2(rng.integers(-12, 10, 8192))).astype(np.float32)
        x = np.concatenate([bits.view(np.float32), near])
        rec = np.zeros(x.size, dtype=[("bits", "<u4"), ("code", "u1")])
        rec["bits"] = x.view(np.uint32)
        rec["code"] = codes(x)
        (OUT / "e4m3_of_f32.bin").write_bytes(rec.tobytes())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
