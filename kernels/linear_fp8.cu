// linear_fp8: out[m, n] = round((Σ_k e(x[m, k]) · e(w[n, k])) · sx[m] · sw[n])  (FP8 W8A8
// linears, issue 17; src/fp8.rs): e the exact value of an e4m3 code, every product exact in f32,
// the sum in f32, the two scale multiplies in that order, one rounding to the activation dtype.
// The SIMT path: correct for any shape; the fallback of the cuBLASLt FP8 GEMM (src/backend/cuda/
// fp8.rs: shapes it does not take, GPUs where it offers nothing) and, with DLLM_FP8_GEMM=simt,
// the reference path.
// Layout: x [rows, k] e4m3 codes, sx [rows] f32 (quantize_fp8); w [n, k] e4m3 codes, sw [n] f32;
// out [rows, n] T = f32 | bf16. Block: DLLM_LINEAR_FP8_THREADS threads, one warp per output
// column n, each warp the DLLM_LINEAR_FP8_ROWS rows of the block's row tile (grid: column groups
// × row tiles), its lanes striding k by 4 codes (one u32) when k % 4 == 0, by one code otherwise,
// then a warp sum per row.
// Floor: n · k + rows · k + rows · n · sizeof(T) + 4 · (rows + n) bytes, 2 · rows · n · k FLOPs
// (each weight row is read once per row tile: ⌈rows / DLLM_LINEAR_FP8_ROWS⌉ times, the later
// reads mostly from L2).
// CPU twin: Cpu::linear on an FP8 weight (Cpu::linear_fp8).
#include <cuda_fp8.h>
#include "common.cuh"

#define LF8_R DLLM_LINEAR_FP8_ROWS

// The exact values of 4 e4m3 codes packed little-endian in a u32 (e4m3 → f16 is exact).
__device__ __forceinline__ void e4m3x4(unsigned int c, float* v) {
    const __half2 lo = __half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(c & 0xffffu), __NV_E4M3));
    const __half2 hi = __half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(c >> 16), __NV_E4M3));
    const float2 a = __half22float2(lo), b = __half22float2(hi);
    v[0] = a.x;
    v[1] = a.y;
    v[2] = b.x;
    v[3] = b.y;
}

__device__ __forceinline__ float e4m3(unsigned char c) {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E4M3)));
}

template <typename T>
__device__ void linear_fp8(const LinearFp8Params p) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int o = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const unsigned int r0 = blockIdx.y * LF8_R;
    if (o >= p.n || r0 >= p.rows) return;  // a whole warp at once
    const unsigned int nr = min((unsigned int)LF8_R, p.rows - r0);
    const unsigned char* w = (const unsigned char*)p.w + (size_t)o * p.k;
    const unsigned char* x = (const unsigned char*)p.x + (size_t)r0 * p.k;
    float acc[LF8_R];
#pragma unroll
    for (int r = 0; r < LF8_R; ++r) acc[r] = 0.0f;
    if ((p.k & 3u) == 0) {
        // every row starts 4-byte aligned (the buffers are): one u32 of 4 codes a lane a step
        const unsigned int k4 = p.k >> 2;
        const unsigned int* w4 = (const unsigned int*)w;
        for (unsigned int i = lane; i < k4; i += 32) {
            float wv[4];
            e4m3x4(w4[i], wv);
#pragma unroll
            for (int r = 0; r < LF8_R; ++r) {
                if (r < nr) {
                    float xv[4];
                    e4m3x4(((const unsigned int*)(x + (size_t)r * p.k))[i], xv);
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[r] = __fmaf_rn(xv[j], wv[j], acc[r]);
                }
            }
        }
    } else {
        for (unsigned int i = lane; i < p.k; i += 32) {
            const float wv = e4m3(w[i]);
#pragma unroll
            for (int r = 0; r < LF8_R; ++r) {
                if (r < nr) acc[r] = __fmaf_rn(e4m3(x[(size_t)r * p.k + i]), wv, acc[r]);
            }
        }
    }
    const float sw = ((const float*)p.sw)[o];
    const float* sx = (const float*)p.sx + r0;
    T* out = (T*)p.out + (size_t)r0 * p.n + o;
#pragma unroll
    for (int r = 0; r < LF8_R; ++r) {
        const float s = warp_sum(acc[r]);
        if (lane == 0 && r < nr) out[(size_t)r * p.n] = from_f<T>(__fmul_rn(__fmul_rn(s, sx[r]), sw));
    }
}

DLLM_KERNEL_PAIR(linear_fp8, LinearFp8Params, linear_fp8)
