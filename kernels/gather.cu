// gather: out[b·BL + i, :] = h[b·W + src(i), :] — the rows that predict the current block's
// positions, out of the window, so the final norm and the LM head run on them only (spec §4:
// logits of the block). src(i) = offset + i (LLaDA); with shift, max(offset + i − 1, 0): Dream's
// prediction for position p is row p − 1, the window's first position its own row (spec §3).
// Layout: h [B·W, d], out [B·BL, d]. Floor: 2 · B · BL · d · sizeof(T) bytes. One block per row.
// CPU twin: Cpu::gather_block.
#include "common.cuh"

template <typename T>
__device__ void gather(const GatherParams p) {
    const unsigned int r = blockIdx.x;
    const unsigned int b = r / p.block_len, i = r % p.block_len;
    const unsigned int t = p.offset + i;
    const unsigned int src_t = (p.shift && t > 0) ? t - 1 : t;
    const T* src = (const T*)p.h + ((size_t)b * p.win_len + src_t) * p.d;
    T* dst = (T*)p.out + (size_t)r * p.d;
    for (unsigned int c = threadIdx.x; c < p.d; c += blockDim.x) dst[c] = src[c];
}

DLLM_KERNEL_PAIR(gather, GatherParams, gather)
