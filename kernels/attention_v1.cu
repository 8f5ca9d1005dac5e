// attention v1 (kept only while tuning v2, docs/perf.md): the first version, latency-bound on
// its scalar K/V loads. Delete once v2 has been measured against it on a GPU.
// attention: bidirectional multi-head attention of the window's queries over every cached key
// of their batch row (spec §2: no causal mask; scale 1/sqrt(hd); GQA: query head h reads KV head
// h / (H / KV)); keys before the row's first real token (pads[b]) and from the row's end
// (pads[B + b], a row shorter than the canvas in a continuous batch) on are masked (spec §6).
// Fresh K/V of the window are already in the cache (rope_kv ran first), so PrefixCache, DualCache
// and full forwards are the same kernel over [cached | fresh] keys (src/cache.rs).
//
//   o[t, h] = Σ_j softmax_j(q[t,h] · k[j, kvh] · scale) · v[j, kvh]
//
// Online softmax (running max m, running sum l, fp32 accumulators); no score matrix in memory.
// Layout: q inside qkv [B·W, (H + 2KV)·hd]; caches [B·L, KV·hd]; out [B·W, H·hd]. hd ≤ 128.
// Grid (⌈W/16⌉, H, B), 128 threads: 4 warps × 4 query rows; key tiles of 32 staged in shared
// memory as f32 (K padded to hd+1 columns: lane j reads key j's row without bank conflicts).
// Floor: FLOPs 4·B·W·L·H·hd; bytes: K/V of the row once per (query tile, head) from L2, B·L·KV·hd
// ·2·sizeof(T) from HBM. First version: correct and simple, not yet tuned (docs/perf.md).
// CPU twin: Cpu::attention (two-pass softmax: equal up to f32 rounding).
#include "common.cuh"

#define ATT1_ROWS_PER_WARP 4
#define ATT1_WARPS 4
#define ATT1_QROWS (ATT1_ROWS_PER_WARP * ATT1_WARPS)
#define ATT1_KTILE 32
#define ATT1_MAX_HD 128
#define ATT1_DPL (ATT1_MAX_HD / 32)

template <typename T>
__device__ void attention_v1(const AttentionParams p) {
    extern __shared__ float smem[];
    const unsigned int hd = p.head_dim, kstride = hd + 1;
    float* q_s = smem;                       // [QROWS][hd]
    float* k_s = q_s + ATT1_QROWS * hd;       // [KTILE][hd + 1]
    float* v_s = k_s + ATT1_KTILE * kstride;  // [KTILE][hd]
    const unsigned int b = blockIdx.z, h = blockIdx.y, t0 = blockIdx.x * ATT1_QROWS;
    const unsigned int W = p.step.win_len, L = p.step.canvas_len;
    const unsigned int qd = p.n_heads * hd, kvd = p.n_kv_heads * hd, cols = qd + 2 * kvd;
    const unsigned int kvh = h / (p.n_heads / p.n_kv_heads);
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned int first = ((const unsigned int*)p.pads)[b];
    const unsigned int end = ((const unsigned int*)p.pads)[p.step.batch + b];

    const T* qkv = (const T*)p.qkv;
    for (unsigned int e = threadIdx.x; e < ATT1_QROWS * hd; e += blockDim.x) {
        const unsigned int i = e / hd, d = e % hd, t = t0 + i;
        q_s[e] = t < W ? to_f(qkv[((size_t)b * W + t) * cols + h * hd + d]) : 0.0f;
    }
    float m[ATT1_ROWS_PER_WARP], l[ATT1_ROWS_PER_WARP], o[ATT1_ROWS_PER_WARP][ATT1_DPL];
#pragma unroll
    for (int rr = 0; rr < ATT1_ROWS_PER_WARP; ++rr) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int c = 0; c < ATT1_DPL; ++c) o[rr][c] = 0.0f;
    }
    const T* K = (const T*)p.k_cache + (size_t)b * L * kvd + kvh * hd;
    const T* V = (const T*)p.v_cache + (size_t)b * L * kvd + kvh * hd;

    for (unsigned int k0 = first; k0 < end; k0 += ATT1_KTILE) {
        __syncthreads();  // the previous tile is consumed (and q_s is complete on the first pass)
        for (unsigned int e = threadIdx.x; e < ATT1_KTILE * hd; e += blockDim.x) {
            const unsigned int j = e / hd, d = e % hd, key = k0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (key < end) {
                kv = to_f(K[(size_t)key * kvd + d]);
                vv = to_f(V[(size_t)key * kvd + d]);
            }
            k_s[j * kstride + d] = kv;
            v_s[j * hd + d] = vv;
        }
        __syncthreads();
        const bool valid = k0 + lane < end;
#pragma unroll
        for (int rr = 0; rr < ATT1_ROWS_PER_WARP; ++rr) {
            const float* q = q_s + (warp * ATT1_ROWS_PER_WARP + rr) * hd;
            const float* k = k_s + lane * kstride;
            float s = 0.0f;
            for (unsigned int d = 0; d < hd; ++d) s += q[d] * k[d];
            s = valid ? s * p.scale : -INFINITY;
            const float mn = fmaxf(m[rr], warp_max(s));
            const float corr = expf(m[rr] - mn);  // 0 on the first tile (m = -inf)
            const float pj = valid ? expf(s - mn) : 0.0f;
            l[rr] = l[rr] * corr + warp_sum(pj);
#pragma unroll
            for (int c = 0; c < ATT1_DPL; ++c) o[rr][c] *= corr;
            for (int j = 0; j < ATT1_KTILE; ++j) {
                const float w = __shfl_sync(0xffffffffu, pj, j);
#pragma unroll
                for (int c = 0; c < ATT1_DPL; ++c) {
                    const unsigned int d = lane + 32 * c;
                    if (d < hd) o[rr][c] += w * v_s[j * hd + d];
                }
            }
            m[rr] = mn;
        }
    }
    T* out = (T*)p.out;
#pragma unroll
    for (int rr = 0; rr < ATT1_ROWS_PER_WARP; ++rr) {
        const unsigned int t = t0 + warp * ATT1_ROWS_PER_WARP + rr;
        if (t >= W) continue;
        const float inv = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
#pragma unroll
        for (int c = 0; c < ATT1_DPL; ++c) {
            const unsigned int d = lane + 32 * c;
            if (d < hd) out[((size_t)b * W + t) * qd + h * hd + d] = from_f<T>(o[rr][c] * inv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(ATT1_WARPS * 32) attention_v1_f32(const AttentionParams p) { attention_v1<float>(p); }
extern "C" __global__ void __launch_bounds__(ATT1_WARPS * 32) attention_v1_bf16(const AttentionParams p) { attention_v1<__nv_bfloat16>(p); }
