// attention_tc: the same op as attention.cu (spec §2, §6: bidirectional, scale 1/sqrt(hd), GQA,
// keys outside [pads[b], pads[B + b]) masked), on tensor cores, for bf16 activations with
// head_dim 128 (LLaDA, Dream): block starts and uncached forwards, where the CUDA-core kernel is
// compute-bound (0.73 ms a call at W = L = 768 on an H100, 13 TFLOP/s; 57 µs here), and in-block
// steps (W = 32: half a block of rows, the keys split over several blocks; under Nsight Compute
// 51.5 µs a call on CUDA cores, 15.1 µs here) (docs/perf.md, runs 2, 3, 5 and 6).
//
//   S = Q·Kᵀ·scale (f32 accumulators), online softmax per row (f32), O += bf16(P)·V (f32).
//
// Grid (⌈W/64⌉, H, B·S), 128 threads: each warp owns 16 query rows, kept in registers as
// mma.m16n8k16 A fragments. K/V tiles of 32 keys stream through shared memory with cp.async,
// two stages deep (rows padded to 136 bf16: conflict-free fragment loads); P goes from the score
// accumulators straight into A fragments (no shared memory), V is read with ldmatrix.trans.
// Splits over the keys and their partial records are those of attention.cu (attention_combine
// merges them).
// Floor: 4·B·W·L·H·128 FLOPs at the bf16 tensor-core rate; K/V bytes as attention.cu.
// Precision: P is rounded to bf16 before P·V (as FlashAttention does), so this path differs
// from the f32-P CPU twin by ~1e-3 relative; f32 checkpoints never take it (exact CPU parity).
// CPU twin: Cpu::attention. Test: tests/gpu.rs attention_splits_and_head_dims_match_the_cpu.
#include "common.cuh"

// Block shape: DLLM_ATT_THREADS, DLLM_ATT_KTILE, DLLM_ATT_TC_ROWS, DLLM_ATT_TC_HEAD_DIM (params.h).
#define TC_STRIDE (DLLM_ATT_TC_HEAD_DIM + 8)
static_assert(DLLM_ATT_THREADS == 128 && DLLM_ATT_KTILE == 32 && DLLM_ATT_TC_ROWS == 64 &&
                  DLLM_ATT_TC_HEAD_DIM == 128,
              "the fragment and cp.async loops below are written for 4 warps of 16 rows, 32-key "
              "tiles and head_dim 128");

__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global → shared; src_bytes = 0 fills the 16 bytes with zeros (keys past the end).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, unsigned int src_bytes) {
    const unsigned int d = (unsigned int)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(const uint32_t*)&v;
}

extern "C" __global__ void __launch_bounds__(DLLM_ATT_THREADS) attention_tc_bf16(const AttentionParams p) {
    __shared__ __align__(16) __nv_bfloat16 ks[2][DLLM_ATT_KTILE][TC_STRIDE];
    __shared__ __align__(16) __nv_bfloat16 vs[2][DLLM_ATT_KTILE][TC_STRIDE];
    const unsigned int B = p.step.batch, S = p.splits;
    const unsigned int b = blockIdx.z % B, split = blockIdx.z / B, h = blockIdx.y;
    const unsigned int W = p.step.win_len, L = p.step.canvas_len, H = p.n_heads;
    const unsigned int qd = H * DLLM_ATT_TC_HEAD_DIM, kvd = p.n_kv_heads * DLLM_ATT_TC_HEAD_DIM;
    const unsigned int cols = qd + 2 * kvd;
    const unsigned int kvh = h / (H / p.n_kv_heads);
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const unsigned int first = ((const unsigned int*)p.pads)[b];
    const unsigned int end = ((const unsigned int*)p.pads)[B + b];
    const unsigned int n_keys = end > first ? end - first : 0;
    const unsigned int per = (n_keys + S - 1) / S;
    const unsigned int span = (per + DLLM_ATT_KTILE - 1) / DLLM_ATT_KTILE * DLLM_ATT_KTILE;
    const unsigned int kbeg = min(end, first + split * span), kend = min(end, kbeg + span);

    // this warp's query rows g and g + 8 (of 16) as A fragments over the 8 k-steps of hd
    const unsigned int r0 = blockIdx.x * DLLM_ATT_TC_ROWS + warp * 16 + g, r1 = r0 + 8;
    // a warp whose 16 rows all lie past the window only helps load the tiles
    const bool rows_here = blockIdx.x * DLLM_ATT_TC_ROWS + warp * 16 < W;
    const __nv_bfloat16* qkv = (const __nv_bfloat16*)p.qkv;
    auto qword = [&](unsigned int row, unsigned int col) -> uint32_t {
        return row < W ? *(const uint32_t*)(qkv + ((size_t)b * W + row) * cols + h * DLLM_ATT_TC_HEAD_DIM + col)
                       : 0u;
    };
    uint32_t qa[8][4];
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
        qa[kk][0] = qword(r0, kk * 16 + 2 * tq);
        qa[kk][1] = qword(r1, kk * 16 + 2 * tq);
        qa[kk][2] = qword(r0, kk * 16 + 2 * tq + 8);
        qa[kk][3] = qword(r1, kk * 16 + 2 * tq + 8);
    }
    float o[16][4];
#pragma unroll
    for (int n = 0; n < 16; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // l: this thread's share

    const __nv_bfloat16* K =
        (const __nv_bfloat16*)p.k_cache + (size_t)b * L * kvd + kvh * DLLM_ATT_TC_HEAD_DIM;
    const __nv_bfloat16* V =
        (const __nv_bfloat16*)p.v_cache + (size_t)b * L * kvd + kvh * DLLM_ATT_TC_HEAD_DIM;
    auto issue = [&](unsigned int k0, int st) {
        // 32 keys × 16 chunks of 16 bytes, for K and for V: 4 + 4 per thread
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned int c = threadIdx.x + i * 128, j = c >> 4, ch = c & 15, key = k0 + j;
            const bool in = key < kend;
            const size_t off = in ? (size_t)key * kvd + ch * 8 : 0;
            cp_async16(&ks[st][j][ch * 8], K + off, in ? 16u : 0u);
            cp_async16(&vs[st][j][ch * 8], V + off, in ? 16u : 0u);
        }
    };

    const unsigned int ntiles = kbeg < kend ? (kend - kbeg + DLLM_ATT_KTILE - 1) / DLLM_ATT_KTILE : 0;
    if (ntiles > 0) {
        issue(kbeg, 0);
        cp_async_commit();
    }
    for (unsigned int it = 0; it < ntiles; ++it) {
        const unsigned int k0 = kbeg + it * DLLM_ATT_KTILE;
        const int st = it & 1;
        if (it + 1 < ntiles) {
            issue(k0 + DLLM_ATT_KTILE, st ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // this tile's copies, from every thread, have landed
        if (!rows_here) {
            __syncthreads();
            continue;
        }

        float s[4][4];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < 8; ++kk) {
                const __nv_bfloat16* kr = &ks[st][nt * 8 + g][kk * 16 + 2 * tq];
                mma_16816(s[nt], qa[kk], *(const uint32_t*)kr, *(const uint32_t*)(kr + 8));
            }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const unsigned int key = k0 + nt * 8 + 2 * tq + (e & 1);
                s[nt][e] = key < kend ? s[nt][e] * p.scale : -INFINITY;
            }
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        // the 4 threads of a row (same g) hold its 32 scores
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);  // finite: key k0 is valid
        const float c0 = expf(m0 - mn0), c1 = expf(m1 - mn1);    // 0 on the first tile
        float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            s[nt][0] = expf(s[nt][0] - mn0);
            s[nt][1] = expf(s[nt][1] - mn0);
            s[nt][2] = expf(s[nt][2] - mn1);
            s[nt][3] = expf(s[nt][3] - mn1);
            ps0 += s[nt][0] + s[nt][1];
            ps1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * c0 + ps0;
        l1 = l1 * c1 + ps1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int n = 0; n < 16; ++n) {
            o[n][0] *= c0;
            o[n][1] *= c0;
            o[n][2] *= c1;
            o[n][3] *= c1;
        }
        // O += P·V over two k-steps of 16 keys; P's accumulator layout is the A fragment's
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const uint32_t pa[4] = {pack_bf16(s[2 * j][0], s[2 * j][1]), pack_bf16(s[2 * j][2], s[2 * j][3]),
                                    pack_bf16(s[2 * j + 1][0], s[2 * j + 1][1]),
                                    pack_bf16(s[2 * j + 1][2], s[2 * j + 1][3])};
            const unsigned int vrow = j * 16 + (lane & 15);
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                const unsigned int addr = (unsigned int)__cvta_generic_to_shared(&vs[st][vrow][n * 8]);
                uint32_t b0, b1;
                asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                             : "=r"(b0), "=r"(b1)
                             : "r"(addr));
                mma_16816(o[n], pa, b0, b1);
            }
        }
        __syncthreads();  // every warp is done with stage st before it is refilled
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {  // rows g, then g + 8
        const unsigned int t = hi ? r1 : r0;
        if (t >= W) continue;
        const float l = hi ? l1 : l0, m = hi ? m1 : m0;
        const size_t r = (size_t)b * W + t;
        if (S == 1) {
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            __nv_bfloat16* out = (__nv_bfloat16*)p.out + r * qd + h * DLLM_ATT_TC_HEAD_DIM;
#pragma unroll
            for (int n = 0; n < 16; ++n)
                *(uint32_t*)(out + n * 8 + 2 * tq) = pack_bf16(o[n][2 * hi] * inv, o[n][2 * hi + 1] * inv);
        } else {
            float* rec =
                (float*)p.partial + (((size_t)split * B * W + r) * H + h) * (DLLM_ATT_TC_HEAD_DIM + 2);
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                rec[n * 8 + 2 * tq] = o[n][2 * hi];
                rec[n * 8 + 2 * tq + 1] = o[n][2 * hi + 1];
            }
            if (tq == 0) {
                rec[DLLM_ATT_TC_HEAD_DIM] = m;
                rec[DLLM_ATT_TC_HEAD_DIM + 1] = l;
            }
        }
    }
}
