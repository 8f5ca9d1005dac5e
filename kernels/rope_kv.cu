// rope_kv: rotate q and k of each window row in fp32 by the row's position (rotate-half layout,
// spec §2: [x1 | x2] -> [x1·cos − x2·sin | x2·cos + x1·sin]), q in place, and write the rotated k
// and the v of the row into the KV cache at its canvas position (post-RoPE cache).
// Position of canvas index p in batch row b: p − pads[b] (0 on pad rows, which nobody attends).
// Layout: qkv [B·W, (H + 2·KV)·hd] = q | k | v; cos/sin [max_pos, hd] f32 (built on the host);
// caches [B·L, KV·hd]. Grid (rows, H + 2·KV): one block per (row, head), 64 threads over the
// head's hd/2 pairs (or its hd values for a v head). One block per row leaves an in-block step's
// 32 rows latency-bound: 34.2 µs a call under Nsight Compute on an H100, 5.35 µs with a block per
// (row, head) (docs/perf.md, runs 5 and 6).
// Floor: reads (H + 2KV)·hd + 2·hd table values per row, writes as much: memory-bound, tiny.
// Multiplies and adds are explicitly rounded (__fmul_rn/__fadd_rn) so no FMA contraction: the
// same operations as the CPU twin Cpu::rope_store_kv.
#include "common.cuh"

template <typename T>
__device__ void rope_kv(const RopeKvParams p) {
    const unsigned int r = blockIdx.x, h = blockIdx.y;  // h < H + KV: a q or k head; then v heads
    const unsigned int b = r / p.step.win_len, t = r % p.step.win_len;
    const unsigned int cpos = p.step.win_start + t;
    const unsigned int pad = ((const unsigned int*)p.pads)[b];
    unsigned int pos = cpos >= pad ? cpos - pad : 0;
    if (pos >= p.max_pos) pos = p.max_pos - 1;  // unreachable: the decoder checks lengths
    const unsigned int hd = p.head_dim, half = hd / 2;
    const unsigned int qd = p.n_heads * hd, kvd = p.n_kv_heads * hd;
    const unsigned int cols = qd + 2 * kvd;
    T* row = (T*)p.qkv + (size_t)r * cols;
    const size_t cache_row = ((size_t)b * p.step.canvas_len + cpos) * kvd;
    if (h >= p.n_heads + p.n_kv_heads) {  // a v head: copied into the cache as it is
        const unsigned int vh = h - p.n_heads - p.n_kv_heads;
        const T* v = row + qd + kvd + vh * hd;
        T* vc = (T*)p.v_cache + cache_row + vh * hd;
        for (unsigned int j = threadIdx.x; j < hd; j += blockDim.x) vc[j] = v[j];
        return;
    }
    const float* c = (const float*)p.cos + (size_t)pos * hd;
    const float* s = (const float*)p.sin + (size_t)pos * hd;
    T* x = row + h * hd;
    for (unsigned int i = threadIdx.x; i < half; i += blockDim.x) {
        const float x1 = to_f(x[i]), x2 = to_f(x[i + half]);
        const T y1 = from_f<T>(__fsub_rn(__fmul_rn(x1, c[i]), __fmul_rn(x2, s[i])));
        const T y2 = from_f<T>(__fadd_rn(__fmul_rn(x2, c[i + half]), __fmul_rn(x1, s[i + half])));
        x[i] = y1;
        x[i + half] = y2;
        if (h >= p.n_heads) {
            T* k = (T*)p.k_cache + cache_row + (h - p.n_heads) * hd;
            k[i] = y1;
            k[i + half] = y2;
        }
    }
}

DLLM_KERNEL_PAIR(rope_kv, RopeKvParams, rope_kv)
