// add: h = round(h + x), the residual connection.
// Layout: h, x [n] contiguous. Floor: 3 · n · sizeof(T) bytes. Grid-stride elementwise.
// CPU twin: Cpu::add.
#include "common.cuh"

template <typename T>
__device__ void add(const AddParams p) {
    T* h = (T*)p.h;
    const T* x = (const T*)p.x;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < p.n; k += (size_t)gridDim.x * blockDim.x)
        h[k] = from_f<T>(__fadd_rn(to_f(h[k]), to_f(x[k])));
}

DLLM_KERNEL_PAIR(add, AddParams, add)
