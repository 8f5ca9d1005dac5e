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
//
// Grid (⌈W/16⌉, H, B·S), 128 threads: 4 warps × 4 query rows; lane j of a warp scores key j of a
// 32-key tile staged in shared memory as f32 (K rows padded to hd+1 floats: no bank conflicts).
// The next tile's K/V are loaded into registers (16-byte loads, all in flight at once) while
// the current tile is computed. An in-block step has few query tiles (W = 32: 2 per head), so
// the keys are split over S blocks (flash-decoding): each writes its unnormalised partial
// (o, m, l) to a workspace and attention_combine merges them; S = 1 writes the output directly.
// The host picks S (src/backend/cuda/attention.rs: attention_splits) to fill the GPU.
//
// Floor: FLOPs 4·B·W·L·H·hd (the softmax's exps besides); bytes: Q and out once, K/V of each row
// once from HBM (B·L·KV·hd·2·sizeof(T)), re-read from L2 by every query tile and head of a group.
// In-block LLaDA-8B (W 32, L 768): 0.4 GFLOP and 12.6 MB a layer; block start (W = L = 768):
// 9.7 GFLOP a layer, compute-bound on these CUDA-core FMAs (attention_tc.cu takes bf16 windows of
// head_dim 128 to tensor cores).
// CPU twin: Cpu::attention (two-pass softmax: equal up to f32 rounding and summation order).
#include "common.cuh"

// Block shape: DLLM_ATT_THREADS, DLLM_ATT_QROWS, DLLM_ATT_KTILE, DLLM_ATT_MAX_HEAD_DIM (params.h).
#define ATT_ROWS_PER_WARP 4
#define ATT_WARPS (DLLM_ATT_THREADS / 32)
#define ATT_DPL (DLLM_ATT_MAX_HEAD_DIM / 32)
static_assert(ATT_ROWS_PER_WARP * ATT_WARPS == DLLM_ATT_QROWS, "a warp owns 4 of a block's query rows");

// 16 bytes of K or V: 8 bf16 or 4 f32 values of one key row.
template <typename T> struct Chunk { static constexpr int N = 16 / sizeof(T); };
// At most this many 16-byte chunks of K (and as many of V) per thread per tile.
template <typename T> struct TileLoad {
    static constexpr int PER_THREAD =
        DLLM_ATT_KTILE * (DLLM_ATT_MAX_HEAD_DIM / Chunk<T>::N) / DLLM_ATT_THREADS;
};

template <typename T>
__device__ void attention(const AttentionParams p) {
    extern __shared__ __align__(16) float smem[];
    constexpr int N = Chunk<T>::N, PER = TileLoad<T>::PER_THREAD;
    const unsigned int hd = p.head_dim, kstride = hd + 1;
    float* q_s = smem;                            // [hd][QROWS]: the 4 rows of a warp are one float4
    float* k_s = q_s + DLLM_ATT_QROWS * hd;       // [KTILE][hd + 1]
    float* v_s = k_s + DLLM_ATT_KTILE * kstride;  // [KTILE][hd]
    const unsigned int B = p.step.batch, S = p.splits;
    const unsigned int b = blockIdx.z % B, split = blockIdx.z / B;
    const unsigned int h = blockIdx.y, t0 = blockIdx.x * DLLM_ATT_QROWS;
    const unsigned int W = p.step.win_len, L = p.step.canvas_len;
    const unsigned int qd = p.n_heads * hd, kvd = p.n_kv_heads * hd, cols = qd + 2 * kvd;
    const unsigned int kvh = h / (p.n_heads / p.n_kv_heads);
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned int first = ((const unsigned int*)p.pads)[b];
    const unsigned int end = ((const unsigned int*)p.pads)[B + b];
    // this block's keys: split `split` of the row's [first, end), in whole tiles
    const unsigned int n_keys = end > first ? end - first : 0;
    const unsigned int per = (n_keys + S - 1) / S;
    const unsigned int span = (per + DLLM_ATT_KTILE - 1) / DLLM_ATT_KTILE * DLLM_ATT_KTILE;
    const unsigned int kbeg = min(end, first + split * span), kend = min(end, kbeg + span);

    const T* qkv = (const T*)p.qkv;
    for (unsigned int e = threadIdx.x; e < DLLM_ATT_QROWS * hd; e += blockDim.x) {
        const unsigned int i = e / hd, d = e % hd, t = t0 + i;
        q_s[d * DLLM_ATT_QROWS + i] = t < W ? to_f(qkv[((size_t)b * W + t) * cols + h * hd + d]) : 0.0f;
    }
    float m[ATT_ROWS_PER_WARP], l[ATT_ROWS_PER_WARP], o[ATT_ROWS_PER_WARP][ATT_DPL];
#pragma unroll
    for (int rr = 0; rr < ATT_ROWS_PER_WARP; ++rr) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;  // this lane's share; summed over the warp at the end
#pragma unroll
        for (int c = 0; c < ATT_DPL; ++c) o[rr][c] = 0.0f;
    }
    const T* K = (const T*)p.k_cache + (size_t)b * L * kvd + kvh * hd;
    const T* V = (const T*)p.v_cache + (size_t)b * L * kvd + kvh * hd;

    // 16-byte chunks when every key row starts 16-byte aligned (hd a multiple of N; the caches
    // come from cudaMalloc), else scalar loads straight into shared memory.
    const bool vec = hd % N == 0 && ((size_t)p.k_cache | (size_t)p.v_cache) % 16 == 0;
    const unsigned int cpr = hd / N, chunks = DLLM_ATT_KTILE * cpr;
    uint4 kr[PER], vr[PER];
    auto prefetch = [&](unsigned int k0) {
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const unsigned int c = threadIdx.x + i * DLLM_ATT_THREADS, j = c / cpr, key = k0 + j;
            kr[i] = vr[i] = make_uint4(0u, 0u, 0u, 0u);
            if (c < chunks && key < kend) {
                const size_t off = (size_t)key * kvd + (c % cpr) * N;
                kr[i] = __ldg((const uint4*)(K + off));
                vr[i] = __ldg((const uint4*)(V + off));
            }
        }
    };
    auto commit = [&]() {
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const unsigned int c = threadIdx.x + i * DLLM_ATT_THREADS;
            if (c < chunks) {
                const unsigned int j = c / cpr, d0 = (c % cpr) * N;
                float kf[N], vf[N];
                unpack16(kr[i], kf, T());
                unpack16(vr[i], vf, T());
#pragma unroll
                for (int x = 0; x < N; ++x) {
                    k_s[j * kstride + d0 + x] = kf[x];
                    v_s[j * hd + d0 + x] = vf[x];
                }
            }
        }
    };
    auto direct = [&](unsigned int k0) {
        for (unsigned int e = threadIdx.x; e < DLLM_ATT_KTILE * hd; e += blockDim.x) {
            const unsigned int j = e / hd, d = e % hd, key = k0 + j;
            const bool in = key < kend;
            k_s[j * kstride + d] = in ? to_f(K[(size_t)key * kvd + d]) : 0.0f;
            v_s[j * hd + d] = in ? to_f(V[(size_t)key * kvd + d]) : 0.0f;
        }
    };

    if (vec && kbeg < kend) prefetch(kbeg);
    for (unsigned int k0 = kbeg; k0 < kend; k0 += DLLM_ATT_KTILE) {
        __syncthreads();  // the previous tile is consumed (and q_s is complete on the first pass)
        if (vec) {
            commit();
            if (k0 + DLLM_ATT_KTILE < kend) prefetch(k0 + DLLM_ATT_KTILE);  // in flight during the math
        } else {
            direct(k0);
        }
        __syncthreads();
        const bool valid = k0 + lane < kend;
        // scores: lane = key; the warp's 4 query rows share each K value
        float s[ATT_ROWS_PER_WARP] = {0.0f, 0.0f, 0.0f, 0.0f};
        const float* kl = k_s + lane * kstride;
        const float* qw = q_s + warp * ATT_ROWS_PER_WARP;
#pragma unroll 4
        for (unsigned int d = 0; d < hd; ++d) {
            const float4 q4 = *(const float4*)(qw + d * DLLM_ATT_QROWS);
            const float kk = kl[d];
            s[0] = fmaf(q4.x, kk, s[0]);
            s[1] = fmaf(q4.y, kk, s[1]);
            s[2] = fmaf(q4.z, kk, s[2]);
            s[3] = fmaf(q4.w, kk, s[3]);
        }
        float pj[ATT_ROWS_PER_WARP];
#pragma unroll
        for (int rr = 0; rr < ATT_ROWS_PER_WARP; ++rr) {
            const float sc = valid ? s[rr] * p.scale : -INFINITY;
            const float mn = fmaxf(m[rr], warp_max(sc));  // finite: key k0 is valid
            const float corr = expf(m[rr] - mn);           // 0 on the first tile (m = -inf)
            pj[rr] = valid ? expf(sc - mn) : 0.0f;
            l[rr] = l[rr] * corr + pj[rr];
#pragma unroll
            for (int c = 0; c < ATT_DPL; ++c) o[rr][c] *= corr;
            m[rr] = mn;
        }
        // o += p · V: lane = output dimension (d = lane + 32c)
        const unsigned int jn = min((unsigned int)DLLM_ATT_KTILE, kend - k0);
        for (unsigned int j = 0; j < jn; ++j) {
            float w[ATT_ROWS_PER_WARP];
#pragma unroll
            for (int rr = 0; rr < ATT_ROWS_PER_WARP; ++rr) w[rr] = __shfl_sync(0xffffffffu, pj[rr], j);
#pragma unroll
            for (int c = 0; c < ATT_DPL; ++c) {
                const unsigned int d = lane + 32 * c;
                if (d < hd) {
                    const float v = v_s[j * hd + d];
#pragma unroll
                    for (int rr = 0; rr < ATT_ROWS_PER_WARP; ++rr) o[rr][c] = fmaf(w[rr], v, o[rr][c]);
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_ROWS_PER_WARP; ++rr) {
        const float lsum = warp_sum(l[rr]);
        const unsigned int t = t0 + warp * ATT_ROWS_PER_WARP + rr;
        if (t >= W) continue;
        const size_t r = (size_t)b * W + t;
        if (S == 1) {
            T* out = (T*)p.out;
            const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
#pragma unroll
            for (int c = 0; c < ATT_DPL; ++c) {
                const unsigned int d = lane + 32 * c;
                if (d < hd) out[r * qd + h * hd + d] = from_f<T>(o[rr][c] * inv);
            }
        } else {
            // partial record [o (hd) | m | l] of (split, row, head); an empty split has m = -inf
            float* rec = (float*)p.partial + (((size_t)split * B * W + r) * p.n_heads + h) * (hd + 2);
#pragma unroll
            for (int c = 0; c < ATT_DPL; ++c) {
                const unsigned int d = lane + 32 * c;
                if (d < hd) rec[d] = o[rr][c];
            }
            if (lane == 0) {
                rec[hd] = m[rr];
                rec[hd + 1] = lsum;
            }
        }
    }
}

// Merge the S partial records of each (row, head): o = Σ_s e^(m_s − M) o_s / Σ_s e^(m_s − M) l_s.
// Grid (B·W, H), hd threads: one (row, head) a block, so every load of a thread is independent
// of the others. One block per row looping over the heads gives an in-block step 32 blocks of
// dependent loads, latency-bound: attention + combine ≈ 126 µs a call against ≈ 48 µs with this
// grid (eager profile; docs/perf.md, runs 2 and 3).
// Bytes: S·(hd + 2)·4 read and hd·sizeof(T) written per (row, head).
template <typename T>
__device__ void attention_combine(const AttentionParams p) {
    const unsigned int hd = p.head_dim, H = p.n_heads, S = p.splits, d = threadIdx.x;
    const size_t R = (size_t)p.step.batch * p.step.win_len, r = blockIdx.x, h = blockIdx.y;
    if (d >= hd) return;
    const float* rec = (const float*)p.partial + (r * H + h) * (hd + 2);
    const size_t stride = R * H * (hd + 2);  // from one split's record to the next
    float M = -INFINITY;
    for (unsigned int s = 0; s < S; ++s) M = fmaxf(M, rec[s * stride + hd]);
    float o = 0.0f, l = 0.0f;
    if (M != -INFINITY) {
        for (unsigned int s = 0; s < S; ++s) {
            const float ms = rec[s * stride + hd];
            if (ms == -INFINITY) continue;  // an empty split
            const float f = expf(ms - M);
            o = fmaf(f, rec[s * stride + d], o);
            l = fmaf(f, rec[s * stride + hd + 1], l);
        }
    }
    ((T*)p.out)[r * H * hd + h * hd + d] = from_f<T>(l > 0.0f ? o / l : 0.0f);
}

extern "C" __global__ void __launch_bounds__(DLLM_ATT_THREADS) attention_f32(const AttentionParams p) { attention<float>(p); }
extern "C" __global__ void __launch_bounds__(DLLM_ATT_THREADS) attention_bf16(const AttentionParams p) { attention<__nv_bfloat16>(p); }
DLLM_KERNEL_PAIR(attention_combine, AttentionParams, attention_combine)
