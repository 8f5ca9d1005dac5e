// rmsnorm: y = round(round(x · 1/sqrt(mean(x²) + eps)) · w)       (spec §2: the fp32 statistics,
// cast to the activation dtype, then the weight multiply, rounded again)
// add_rmsnorm: h = round(h + r) (add.cu's residual add), then y = rmsnorm(h): one launch instead
// of two after every residual add but the last of a forward, bit-identical to add then rmsnorm
// (same roundings, same summation order; each thread re-reads only the elements it wrote).
// Layout: x (h), r, out [rows, d]; w [d]. T = f32 | bf16. One block of DLLM_RMSNORM_THREADS per row (LLaDA's
// d = 4096: one round of 8 loads a thread), fp32 tree reduction.
// Floor: 2 · rows · d · sizeof(T) bytes (+ d for w; add_rmsnorm + 2 · rows · d); 4 · rows · d
// FLOPs: memory-bound.
// CPU twins: Cpu::rmsnorm; add_rmsnorm is Backend::add_rmsnorm's default (Cpu::add, Cpu::rmsnorm).
#include "common.cuh"

#define RN_U 8

template <typename T, bool ADD>
__device__ void rmsnorm(const RmsNormParams p) {
    const unsigned int r = blockIdx.x;
    T* x = (T*)p.x + (size_t)r * p.d;
    const T* res = ADD ? (const T*)p.residual + (size_t)r * p.d : nullptr;
    const T* w = (const T*)p.w;
    T* out = (T*)p.out + (size_t)r * p.d;
    // RN_U loads of a thread in flight together (in the same element order as one at a time):
    // one load at a time leaves an in-block step's 32 rows latency-bound, 14.75 µs a call under
    // ncu against 6.81 this way (docs/perf.md, runs 5 and 6)
    float ss = 0.0f;
    for (unsigned int i0 = threadIdx.x; i0 < p.d; i0 += RN_U * blockDim.x) {
        float v[RN_U], s[RN_U];
#pragma unroll
        for (int u = 0; u < RN_U; ++u) {
            const unsigned int i = i0 + u * blockDim.x;
            v[u] = i < p.d ? to_f(x[i]) : 0.0f;
            if (ADD) s[u] = i < p.d ? to_f(res[i]) : 0.0f;
        }
        // every load above is issued before the first store below (x and res may alias as far
        // as the compiler knows: interleaved, each store holds back the next loads, and
        // add_rmsnorm takes 12.3 µs a call under ncu against 5.43 this way with 512 threads;
        // docs/perf.md, runs 10 and 11)
        if (ADD) {
#pragma unroll
            for (int u = 0; u < RN_U; ++u) {
                const unsigned int i = i0 + u * blockDim.x;
                const T h = from_f<T>(__fadd_rn(v[u], s[u]));
                if (i < p.d) x[i] = h;
                v[u] = i < p.d ? to_f(h) : 0.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < RN_U; ++u) ss += v[u] * v[u];
    }
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)p.d + p.eps);
    for (unsigned int i0 = threadIdx.x; i0 < p.d; i0 += RN_U * blockDim.x) {
        float v[RN_U], g[RN_U];
#pragma unroll
        for (int u = 0; u < RN_U; ++u) {
            const unsigned int i = i0 + u * blockDim.x;
            v[u] = i < p.d ? to_f(x[i]) : 0.0f;
            g[u] = i < p.d ? to_f(w[i]) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < RN_U; ++u) {
            const unsigned int i = i0 + u * blockDim.x;
            const float y = to_f(from_f<T>(__fmul_rn(v[u], inv)));
            if (i < p.d) out[i] = from_f<T>(__fmul_rn(y, g[u]));
        }
    }
}

template <typename T>
__device__ void rmsnorm_only(const RmsNormParams p) { rmsnorm<T, false>(p); }
template <typename T>
__device__ void add_rmsnorm(const RmsNormParams p) { rmsnorm<T, true>(p); }

DLLM_KERNEL_PAIR(rmsnorm, RmsNormParams, rmsnorm_only)
DLLM_KERNEL_PAIR(add_rmsnorm, RmsNormParams, add_rmsnorm)
