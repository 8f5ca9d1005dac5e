// quantize_fp8: per row r, s[r] = absmax(x[r]) / 448 and codes[r, i] = e4m3(x[r, i] / s[r]) (FP8
// W8A8 linears, issue 17; src/fp8.rs quantize_row, bit for bit): the absmax is fmaxf over |x|
// (a NaN is skipped, an infinity wins), both divisions IEEE (__fdiv_rn), e4m3 the round to nearest
// even saturating to ±448 of __nv_cvt_float_to_fp8(·, __NV_SATFINITE, __NV_E4M3) (NaN → 0x7F).
// A row with s == 0 gets zero codes, NaN entries still 0x7F. The scale is written as f32.
// Layout: x [rows, cols] T = f32 | bf16 (the activation dtype), codes [rows, cols] u8, scales
// [rows] f32. One block of DLLM_QUANT_FP8_THREADS per row: a max reduction, then the codes.
// Floor: rows · cols · (sizeof(T) + 1) + 4 · rows bytes (the second read of a row hits L1/L2);
// about 2 · rows · cols FLOPs: memory-bound.
// CPU twin: Cpu::quantize_fp8 (fp8::quantize_row).
#include <cuda_fp8.h>
#include "common.cuh"

template <typename T>
__device__ void quantize_fp8(const QuantizeFp8Params p) {
    const unsigned int r = blockIdx.x;
    const T* x = (const T*)p.x + (size_t)r * p.cols;
    __nv_fp8_storage_t* q = (__nv_fp8_storage_t*)p.codes + (size_t)r * p.cols;
    // fmaxf returns the other operand when one is NaN: NaN entries never become the absmax
    float m = 0.0f;
    for (unsigned int i = threadIdx.x; i < p.cols; i += blockDim.x) m = fmaxf(m, fabsf(to_f(x[i])));
    const float amax = block_max_nonneg(m);
    const float s = __fdiv_rn(amax, 448.0f);
    if (threadIdx.x == 0) ((float*)p.scales)[r] = s;
    for (unsigned int i = threadIdx.x; i < p.cols; i += blockDim.x) {
        const float v = to_f(x[i]);
        __nv_fp8_storage_t c;
        if (s == 0.0f) {
            c = isnan(v) ? (__nv_fp8_storage_t)0x7F : (__nv_fp8_storage_t)0;
        } else {
            // NaN (a NaN entry, or ±inf / inf) is 0x7F whatever its sign, as on the CPU
            const float y = __fdiv_rn(v, s);
            c = isnan(y) ? (__nv_fp8_storage_t)0x7F : __nv_cvt_float_to_fp8(y, __NV_SATFINITE, __NV_E4M3);
        }
        q[i] = c;
    }
}

DLLM_KERNEL_PAIR(quantize_fp8, QuantizeFp8Params, quantize_fp8)
