// swiglu: out = round(round(silu(gate)) · up), silu(g) = g / (1 + e^−g)        (spec §2 FFN)
// Layout: gate_up [rows, 2·mlp] = gate | up (one GEMM against the stacked weights), out [rows, mlp].
// Floor: 3 · rows · mlp · sizeof(T) bytes; elementwise. Grid-stride over rows · mlp.
// CPU twin: Cpu::swiglu.
#include "common.cuh"

template <typename T>
__device__ void swiglu(const SwigluParams p) {
    const size_t n = (size_t)p.rows * p.mlp;
    const T* gu = (const T*)p.gate_up;
    T* out = (T*)p.out;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const size_t r = k / p.mlp, i = k % p.mlp;
        const float g = to_f(gu[r * 2 * p.mlp + i]);
        const float u = to_f(gu[r * 2 * p.mlp + p.mlp + i]);
        const float silu = to_f(from_f<T>(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g)))));
        out[k] = from_f<T>(__fmul_rn(silu, u));
    }
}

DLLM_KERNEL_PAIR(swiglu, SwigluParams, swiglu)
