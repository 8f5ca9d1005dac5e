// fill_random: out[i] = round(offset + scale · (2u − 1)), u = 24-bit hash(seed, i) / 2^24.
// Synthetic weights generated in device memory (`dllm bench --synthetic`: LLaDA-8B's 16 GB of
// bf16 weights without a file). Bit-identical to backend::rng::synthetic_value on the CPU.
// Layout: out [n] contiguous. Floor: n · sizeof(T) bytes written; a few integer ops per element.
#include "common.cuh"

template <typename T>
__device__ void fill_random(const FillParams p) {
    T* out = (T*)p.out;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        uint64_t z = p.seed ^ (i * 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        out[i] = from_f<T>(__fadd_rn(p.offset, __fmul_rn(p.scale, __fsub_rn(__fmul_rn(2.0f, u), 1.0f))));
    }
}

extern "C" __global__ void fill_random_f32(const FillParams p) { fill_random<float>(p); }
extern "C" __global__ void fill_random_bf16(const FillParams p) { fill_random<__nv_bfloat16>(p); }
