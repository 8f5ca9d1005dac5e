// rmsnorm: y = round(round(x · 1/sqrt(mean(x²) + eps)) · w)       (spec §2: the fp32 statistics,
// cast to the activation dtype, then the weight multiply, rounded again)
// Layout: x, out [rows, d]; w [d]. T = f32 | bf16. One block per row, fp32 tree reduction.
// Floor: 2 · rows · d · sizeof(T) bytes (+ d for w); 4 · rows · d FLOPs: memory-bound.
// CPU twin: Cpu::rmsnorm.
#include "common.cuh"

template <typename T>
__device__ void rmsnorm(const RmsNormParams p) {
    const unsigned int r = blockIdx.x;
    const T* x = (const T*)p.x + (size_t)r * p.d;
    const T* w = (const T*)p.w;
    T* out = (T*)p.out + (size_t)r * p.d;
    float ss = 0.0f;
    for (unsigned int i = threadIdx.x; i < p.d; i += blockDim.x) {
        const float v = to_f(x[i]);
        ss += v * v;
    }
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)p.d + p.eps);
    for (unsigned int i = threadIdx.x; i < p.d; i += blockDim.x) {
        const float y = to_f(from_f<T>(__fmul_rn(to_f(x[i]), inv)));
        out[i] = from_f<T>(__fmul_rn(y, to_f(w[i])));
    }
}

DLLM_KERNEL_PAIR(rmsnorm, RmsNormParams, rmsnorm)
