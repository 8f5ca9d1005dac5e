// Shared device helpers: activation-dtype conversion, warp/block reductions, the counter-based
// RNG of temperature sampling (bit-identical to src/backend/rng.rs: uniform).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>
#include "params.h"

// ---- activation dtype: every op computes in f32 and rounds its output once (spec §8)
template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
// round to nearest even, as half::bf16::from_f32 on the CPU twin
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// ---- 16-byte loads: 4 f32 or 8 bf16 values of a uint4, widened to f32 (the tag picks T)
__device__ __forceinline__ void unpack16(uint4 c, float* out, float) {
    out[0] = __uint_as_float(c.x);
    out[1] = __uint_as_float(c.y);
    out[2] = __uint_as_float(c.z);
    out[3] = __uint_as_float(c.w);
}
__device__ __forceinline__ void unpack16(uint4 c, float* out, __nv_bfloat16) {
    const unsigned int w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

// ---- reductions
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Reduce over the block with the warp reduction W (blockDim.x a multiple of 32, at most 1024);
// every thread gets the result. Each instantiation has its own 32-slot shared array.
template <typename T, T (*W)(T)>
__device__ __forceinline__ T block_reduce(T v) {
    __shared__ T part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = W(v);
    __syncthreads();  // part[] may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < warps ? part[lane] : (T)0;
    return W(v);
}
__device__ __forceinline__ float block_sum(float v) { return block_reduce<float, warp_sum>(v); }
__device__ __forceinline__ double block_sum_d(double v) { return block_reduce<double, warp_sum_d>(v); }
// The block's max of any floats (the missing warps count as -inf); every thread gets it.
__device__ __forceinline__ float block_max(float v) {
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < warps ? part[lane] : -INFINITY;
    return warp_max(v);
}
// The block's max of non-negative values (absmaxes: the missing warps count as 0).
__device__ __forceinline__ float block_max_nonneg(float v) { return block_reduce<float, warp_max>(v); }

// ---- logit rows (argmax_conf, top_logprobs)
#define AM_NONE 0xffffffffu

// (score, id) reduction: the higher score wins, the lower id on equal scores; NaN scores arrive
// as -inf; AM_NONE is "no candidate seen".
__device__ __forceinline__ void better(double& s, unsigned int& a, double s2, unsigned int a2) {
    if (a2 == AM_NONE) return;
    if (a == AM_NONE || s2 > s || (s2 == s && a2 < a)) {
        s = s2;
        a = a2;
    }
}

// Visit every logit of a row once as f(v, x), the block's threads striding over it: 16-byte loads
// (8 bf16 / 4 f32 values, several in flight a thread) when the row starts 16-byte aligned, the
// rest of the row (or an unaligned row) one element at a time. 2-byte loads alone leave an
// in-block step's 32 rows latency-bound: 160 µs a call at 512 threads on an H100, 75 µs with these
// (eager profile; docs/perf.md, runs 3 and 4).
template <typename T, typename F>
__device__ __forceinline__ void for_each_logit(const T* l, unsigned int vocab, F f) {
    constexpr unsigned int N = 16 / sizeof(T);
    const unsigned int chunks = (size_t)l % 16 == 0 ? vocab / N : 0;
    const uint4* l4 = (const uint4*)l;
#pragma unroll 4
    for (unsigned int c = threadIdx.x; c < chunks; c += blockDim.x) {
        float x[N];
        unpack16(__ldg(l4 + c), x, T());
#pragma unroll
        for (unsigned int k = 0; k < N; ++k) f(c * N + k, x[k]);
    }
    for (unsigned int v = chunks * N + threadIdx.x; v < vocab; v += blockDim.x) f(v, to_f(l[v]));
}

// ---- counter-based RNG (SplitMix64 finalisers), the twin of backend::rng::uniform
__device__ __forceinline__ uint64_t splitmix_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ double uniform01(uint64_t seed, uint64_t counter, uint64_t pos, uint64_t token) {
    const uint64_t G = 0x9e3779b97f4a7c15ull;
    uint64_t z = splitmix_mix(seed + G);
    z = splitmix_mix(z ^ (counter + G * 2));
    z = splitmix_mix(z ^ (pos + G * 3));
    z = splitmix_mix(z ^ (token + G * 4));
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;  // 2^53
}
__device__ __forceinline__ double gumbel(uint64_t seed, uint64_t counter, uint64_t pos, uint64_t token) {
    return -log(-log(uniform01(seed, counter, pos, token)));
}

// One extern "C" entry point per activation dtype: NAME_f32 and NAME_bf16.
#define DLLM_KERNEL_PAIR(NAME, PARAMS, BODY)                                         \
    extern "C" __global__ void NAME##_f32(const PARAMS p) { BODY<float>(p); }       \
    extern "C" __global__ void NAME##_bf16(const PARAMS p) { BODY<__nv_bfloat16>(p); }
