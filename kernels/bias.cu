// add_bias: x[r, c] = round(x[r, c] + bias[c]) — Dream's q/k/v projection biases (spec §3),
// added to the fused q|k|v GEMM output before RoPE.
// Layout: x [rows, cols] row-major, bias [cols]. Floor: (2 · rows + 1) · cols · sizeof(T) bytes.
// Grid-stride elementwise. CPU twin: Cpu::add_bias.
#include "common.cuh"

template <typename T>
__device__ void add_bias(const BiasParams p) {
    T* x = (T*)p.x;
    const T* bias = (const T*)p.bias;
    const size_t n = (size_t)p.rows * p.cols;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x)
        x[k] = from_f<T>(__fadd_rn(to_f(x[k]), to_f(bias[k % p.cols])));
}

DLLM_KERNEL_PAIR(add_bias, BiasParams, add_bias)
