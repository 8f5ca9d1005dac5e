// linear_skinny: out[m, n] = Σ_k x[m, k] · w[n, k] for few rows (m < rows ≤ 32), bf16 in and
// out, f32 accumulation on tensor cores — the in-block GEMM of a DualCache/PrefixCache step
// (32 rows against LLaDA-8B's weights), where the time is the weight stream.
//
// Layout: x [rows, k], w [n, k] (the checkpoint's [out, in]), out [rows, n], all row-major.
// Needs k % 256 == 0 and 16-byte aligned rows, and an sm_90 GPU (thread-block clusters); the
// backend offers it to the GEMM tuner only then (src/backend/cuda/gemm.rs), which keeps it for a
// shape only where it beat cuBLAS.
//
// Grid (⌈n / (32·warps)⌉, S): block (j, s) owns output features [32·warps·j, 32·warps·(j+1)) —
// 32 per warp, each warp streaming its own 32 weight rows — over the s-th of S equal parts of k.
// The S blocks of one feature tile form a thread-block cluster: their partial sums meet in
// distributed shared memory and are added in a fixed order (deterministic), so no partial sum
// goes through global memory. All warps of a block read the same x columns at about the same
// time, so x comes from L1 after the first warp (the first version split k over the warps of a
// block instead: x then crossed L2 once per warp, as many bytes as the weights, and the kernel
// ran at cuBLAS's speed, docs/perf.md run 7).
// Per 32 columns a lane loads 16 bytes of each of its 4 weight rows and of its 4 token rows and
// runs 16 mma.m16n8k16: the sum over k does not depend on its order, so A (weights) and B
// (tokens) fragments may take the k values in any order as long as both take the same one —
// lane (g, q) holds the 8 consecutive columns [8q, 8q+8) of the 32, split over the two mma
// k-steps. The weights stream through a per-warp ring of SK_STAGES chunks in shared memory
// (cp.async, 2 KiB a warp a chunk: 192 KiB in flight per SM, where a register ring of 4 chunks,
// version 2, held 64 KiB and ran at ~80 % of cuBLAS on an H200), x through a register ring
// SK_PF chunks deep. Dynamic shared memory: warps · SK_STAGES · 2 KiB (SKINNY_STAGE_BYTES).
//
// Floor: 2·n·k bytes of weights (+ 2·rows·(k + n)) at the copy bandwidth; 2·rows·n·k FLOPs
// are ~1/60 of the tensor-core rate at 32 rows, so this is bandwidth-bound by design.
// CPU twin: Cpu::linear. Test: tests/gpu.rs skinny_linear_matches_the_cpu.
#include "common.cuh"
#include <cooperative_groups.h>

#define SK_MAX_WARPS 8
#define SK_TOKENS 32
#define SK_PF 4       // x chunks in flight (registers)
#define SK_STAGES 12  // weight chunks in flight (shared memory, 2 KiB a warp each)
#define SK_PITCH (32 * SK_MAX_WARPS + 4)  // conflict-free partial writes (lane (g, q) → bank 8q + g)

// 16 bytes of weights, read once: no L1 allocation, L2 fetches 256-byte lines.
__device__ __forceinline__ uint4 load_stream16(const void* ptr) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(ptr));
    return v;
}

// 16 bytes of weights global → shared, L2 fetching 256-byte lines (read once: no L1).
__device__ __forceinline__ void cp_async_stream16(void* dst, const void* src) {
    const unsigned int d = (unsigned int)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit_group() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait_group() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

template <int S>
__device__ __forceinline__ void linear_skinny(const LinearParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // [warps][SK_STAGES][4][32 lanes] uint4 of weights in flight; after the loop, part[32][PITCH]
    extern __shared__ __align__(16) unsigned char sk_smem[];
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const unsigned int bf = blockDim.x, nb = blockIdx.x * bf, n0 = nb + 32 * warp;
    const unsigned int K = p.k, rows = p.rows, s = blockIdx.y;
    const unsigned int total = K / 32, c0 = s * total / S, chunks = (s + 1) * total / S - c0;
    const unsigned int k0 = 32 * c0 + 8 * q;
    const __nv_bfloat16* w = (const __nv_bfloat16*)p.w;
    const __nv_bfloat16* x = (const __nv_bfloat16*)p.x;
    uint4* ring = (uint4*)sk_smem + (size_t)warp * SK_STAGES * 128 + lane;

    // this lane's weight rows (features past n read row n - 1, never stored) and token rows;
    // each lane reads back only the 16-byte pieces it copied itself, so the ring needs no barrier
    const __nv_bfloat16* wrow[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) wrow[i] = w + (size_t)min(n0 + 8 * i + g, p.n - 1) * K + k0;
    const __nv_bfloat16* xrow[4];
    bool xin[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        xin[j] = 8 * j + g < rows;
        xrow[j] = x + (size_t)(xin[j] ? 8 * j + g : 0) * K + k0;
    }
#pragma unroll
    for (int st = 0; st < SK_STAGES; ++st) {
        if (st < (int)chunks) {
#pragma unroll
            for (int i = 0; i < 4; ++i) cp_async_stream16(ring + st * 128 + i * 32, wrow[i] + 32 * st);
        }
        cp_async_commit_group();
    }

    float acc[2][4][4];
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[t][j][e] = 0.0f;

    // x: a register ring SK_PF chunks deep (L1 hits after the first warp)
    uint4 xb[SK_PF][4];
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int st = 0; st < SK_PF; ++st)
#pragma unroll
        for (int j = 0; j < 4; ++j)
            xb[st][j] = st < (int)chunks && xin[j] ? __ldg((const uint4*)(xrow[j] + 32 * st)) : zero;
    unsigned int slot = 0;
    for (unsigned int c = 0; c < chunks; c += SK_PF) {
#pragma unroll
        for (int st = 0; st < SK_PF; ++st) {
            const unsigned int cc = c + st;
            if (cc < chunks) {
                cp_async_wait_group<SK_STAGES - 1>();
                uint4 wv[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) wv[i] = ring[slot * 128 + i * 32];
#pragma unroll
                for (int t = 0; t < 2; ++t) {
                    const uint4 lo = wv[2 * t], hi = wv[2 * t + 1];
                    const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y}, a1[4] = {lo.z, hi.z, lo.w, hi.w};
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        mma_16816(acc[t][j], a0, xb[st][j].x, xb[st][j].y);
                        mma_16816(acc[t][j], a1, xb[st][j].z, xb[st][j].w);
                    }
                }
                // refill: the weights of chunk cc + STAGES into the slot just read, x of cc + PF
                const unsigned int nw = cc + SK_STAGES;
                if (nw < chunks) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) cp_async_stream16(ring + slot * 128 + i * 32, wrow[i] + 32 * nw);
                }
                cp_async_commit_group();
                slot = slot + 1 == SK_STAGES ? 0 : slot + 1;
                const unsigned int nx = cc + SK_PF;
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    xb[st][j] = nx < chunks && xin[j] ? __ldg((const uint4*)(xrow[j] + 32 * nx)) : zero;
            }
        }
    }
    cp_async_wait_group<0>();
    __syncthreads();  // every warp is done with the ring: part[] reuses its memory
    float(*part)[SK_PITCH] = (float(*)[SK_PITCH])sk_smem;

    // C fragment: acc[t][j] = (feature 16t + g, tokens 8j + 2q, +1), (feature 16t + g + 8, same)
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const unsigned int f = 32 * warp + 16 * t + g, m = 8 * j + 2 * q;
            part[m][f] = acc[t][j][0];
            part[m + 1][f] = acc[t][j][1];
            part[m][f + 8] = acc[t][j][2];
            part[m + 1][f + 8] = acc[t][j][3];
        }
    // Block s of the cluster adds features [s·bf/S, (s+1)·bf/S) of every block's part, in rank
    // order; the second cluster barrier keeps each block's shared memory alive until all read it.
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    const float* parts[S];
#pragma unroll
    for (int r = 0; r < S; ++r) parts[r] = cluster.map_shared_rank(&part[0][0], r);
    const unsigned int share = bf / S, f0 = s * share;
    __nv_bfloat16* out = (__nv_bfloat16*)p.out;
    for (unsigned int i = threadIdx.x; i < rows * share; i += blockDim.x) {
        const unsigned int m = i / share, f = f0 + i % share;
        if (nb + f >= p.n) continue;
        float sum = 0.0f;
#pragma unroll
        for (int r = 0; r < S; ++r) sum += parts[r][m * SK_PITCH + f];
        out[(size_t)m * p.n + nb + f] = __float2bfloat16_rn(sum);
    }
    cluster.sync();
#else
    __trap();  // offered only on sm_90 and later
#endif
}

// One entry point per k split (the cluster size is a compile-time attribute, so a plain launch
// forms the clusters).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define SK_CLUSTER(S)
#else
#define SK_CLUSTER(S) __cluster_dims__(1, S, 1)
#endif
#define SK_ENTRY(S)                                                                             \
    extern "C" __global__ void __launch_bounds__(32 * SK_MAX_WARPS, 1) SK_CLUSTER(S)          \
        linear_skinny_k##S##_bf16(const LinearParams p) {                                      \
        linear_skinny<S>(p);                                                                    \
    }
SK_ENTRY(1)
SK_ENTRY(2)
SK_ENTRY(4)
SK_ENTRY(8)
