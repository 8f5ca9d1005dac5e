// embed: out[b·W + t, :] = table[canvas[b, win_start + t], :]          (spec §2: h = wte[ids])
// Layout: table [n_logits, d], canvas [batch, canvas_len] u32, out [batch × W, d], T = f32 | bf16.
// Floor: rows · d · sizeof(T) read + the same written; no FLOPs. Grid: one block per row.
// CPU twin: Cpu::embed.
#include "common.cuh"

template <typename T>
__device__ void embed(const EmbedParams p) {
    const unsigned int r = blockIdx.x;
    const unsigned int b = r / p.step.win_len, t = r % p.step.win_len;
    const unsigned int* canvas = (const unsigned int*)p.canvas;
    unsigned int id = canvas[(size_t)b * p.step.canvas_len + p.step.win_start + t];
    if (id >= p.n_rows_table) id = 0;  // unreachable: the decoder validates ids; never read out of bounds
    const T* src = (const T*)p.table + (size_t)id * p.d;
    T* dst = (T*)p.out + (size_t)r * p.d;
    for (unsigned int i = threadIdx.x; i < p.d; i += blockDim.x) dst[i] = src[i];
}

DLLM_KERNEL_PAIR(embed, EmbedParams, embed)
