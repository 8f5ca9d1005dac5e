//! The element types of checkpoints and activations, and the one rounding every op's output gets
//! (spec §8).

use half::{bf16, f16};

/// The tensor element types dllm loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
    F16,
    /// FP8 e4m3 (`crate::fp8`): quantized weights only, never an activation dtype.
    E4m3,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
            DType::E4m3 => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::Bf16 => "BF16",
            DType::F16 => "F16",
            DType::E4m3 => "F8_E4M3",
        }
    }
}

/// Round one f32 value to `dtype` (round to nearest even, e4m3 saturating; identity for f32).
#[inline]
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F32 => x,
        DType::Bf16 => bf16::from_f32(x).to_f32(),
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::E4m3 => crate::fp8::e4m3_to_f32(crate::fp8::e4m3_from_f32(x)),
    }
}
