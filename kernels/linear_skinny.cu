// linear_skinny: out[m, n] = Σ_k x[m, k] · w[n, k] for few rows (m < rows ≤ 32), bf16 in and
// out, f32 accumulation on tensor cores — the in-block GEMM of a DualCache/PrefixCache step
// (32 rows against LLaDA-8B's weights), where the time is the weight stream.
//
// Layout: x [rows, k], w [n, k] (the checkpoint's [out, in]), out [rows, n], all row-major.
// Needs k % 256 == 0 (each of the 8 warps owns k/8 columns, a multiple of 32) and 16-byte
// aligned rows; the backend offers this kernel to the GEMM tuner only then
// (src/backend/cuda/gemm.rs), which keeps it for a shape only where it beat cuBLAS.
//
// Grid ⌈n / (16·MT)⌉ blocks of 8 warps; block j owns output features [16·MT·j, 16·MT·(j+1)),
// i.e. one contiguous 16·MT·k·2-byte slab of w, and warp i the slice k ∈ [i·k/8, (i+1)·k/8).
// Per 32 columns a lane loads 16 bytes of each of its 2·MT weight rows and of its 4 token rows
// and runs 2·MT·4 mma.m16n8k16: the sum over k does not depend on its order, so A (weights)
// and B (tokens) fragments may take the k values in any order as long as both take the same
// one — lane (g, q) holds the 8 consecutive columns [8q, 8q+8) of the 32, split over the two
// mma k-steps. Loads run PF chunks ahead of the tensor cores (a ring of registers) so that each
// SM keeps ~48–64 KiB of weight reads in flight: m2 (32 features a block, PF 4, 194 registers,
// one block per SM), m1 (16 features, PF 3, ≤ 128 registers, two blocks per SM). The 8 warps' partial sums meet in shared memory
// and are added in a fixed order (deterministic, run to run).
//
// Floor: 2·n·k bytes of weights (+ 2·rows·(k + n)) at the copy bandwidth; 2·rows·n·k FLOPs
// are ~1/60 of the tensor-core rate at 32 rows, so this is bandwidth-bound by design.
// CPU twin: Cpu::linear. Test: tests/gpu.rs skinny_linear_matches_the_cpu.
#include "common.cuh"

#define SK_WARPS 8
#define SK_TOKENS 32

// 16 bytes of weights, read once: no L1 allocation, L2 fetches 256-byte lines.
__device__ __forceinline__ uint4 load_stream16(const void* ptr) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(ptr));
    return v;
}

template <int MT, int PF>
__device__ __forceinline__ void linear_skinny(const LinearParams p) {
    constexpr int FEAT = 16 * MT;
    constexpr int PITCH = FEAT + 4;  // conflict-free partial writes (lane (g, q) → bank 8q + g)
    __shared__ float part[SK_WARPS][SK_TOKENS][PITCH];
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const unsigned int n0 = blockIdx.x * FEAT, K = p.k, rows = p.rows;
    const unsigned int chunks = K / (SK_WARPS * 32), k0 = warp * chunks * 32 + 8 * q;
    const __nv_bfloat16* w = (const __nv_bfloat16*)p.w;
    const __nv_bfloat16* x = (const __nv_bfloat16*)p.x;

    // this lane's weight rows (features past n read row n - 1, never stored) and token rows
    const __nv_bfloat16* wrow[MT][2];
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int h = 0; h < 2; ++h)
            wrow[t][h] = w + (size_t)min(n0 + 16 * t + 8 * h + g, p.n - 1) * K + k0;
    const __nv_bfloat16* xrow[4];
    bool xin[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        xin[j] = 8 * j + g < rows;
        xrow[j] = x + (size_t)(xin[j] ? 8 * j + g : 0) * K + k0;
    }

    float acc[MT][4][4];
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[t][j][e] = 0.0f;

    uint4 wb[PF][MT][2], xb[PF][4];
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int s = 0; s < PF; ++s) {
        const bool in = s < (int)chunks;
#pragma unroll
        for (int t = 0; t < MT; ++t)
#pragma unroll
            for (int h = 0; h < 2; ++h) wb[s][t][h] = in ? load_stream16(wrow[t][h] + 32 * s) : zero;
#pragma unroll
        for (int j = 0; j < 4; ++j) xb[s][j] = in && xin[j] ? __ldg((const uint4*)(xrow[j] + 32 * s)) : zero;
    }
    for (unsigned int c = 0; c < chunks; c += PF) {
#pragma unroll
        for (int s = 0; s < PF; ++s) {
            if (c + s < chunks) {
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    const uint4 lo = wb[s][t][0], hi = wb[s][t][1];
                    const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y}, a1[4] = {lo.z, hi.z, lo.w, hi.w};
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        mma_16816(acc[t][j], a0, xb[s][j].x, xb[s][j].y);
                        mma_16816(acc[t][j], a1, xb[s][j].z, xb[s][j].w);
                    }
                }
            }
            // refill this ring slot with chunk c + s + PF
            const unsigned int nc = c + s + PF;
            const bool in = nc < chunks;
#pragma unroll
            for (int t = 0; t < MT; ++t)
#pragma unroll
                for (int h = 0; h < 2; ++h) wb[s][t][h] = in ? load_stream16(wrow[t][h] + 32 * nc) : zero;
#pragma unroll
            for (int j = 0; j < 4; ++j)
                xb[s][j] = in && xin[j] ? __ldg((const uint4*)(xrow[j] + 32 * nc)) : zero;
        }
    }

    // C fragment: acc[t][j] = (feature 16t + g, tokens 8j + 2q, +1), (feature 16t + g + 8, same)
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const unsigned int f = 16 * t + g, m = 8 * j + 2 * q;
            part[warp][m][f] = acc[t][j][0];
            part[warp][m + 1][f] = acc[t][j][1];
            part[warp][m][f + 8] = acc[t][j][2];
            part[warp][m + 1][f + 8] = acc[t][j][3];
        }
    __syncthreads();
    __nv_bfloat16* out = (__nv_bfloat16*)p.out;
    for (unsigned int i = threadIdx.x; i < rows * FEAT; i += blockDim.x) {
        const unsigned int m = i / FEAT, f = i % FEAT;
        if (n0 + f >= p.n) continue;
        float s = 0.0f;
#pragma unroll
        for (int v = 0; v < SK_WARPS; ++v) s += part[v][m][f];
        out[(size_t)m * p.n + n0 + f] = __float2bfloat16_rn(s);
    }
}

extern "C" __global__ void __launch_bounds__(SK_WARPS * 32, 2) linear_skinny_m1_bf16(const LinearParams p) {
    linear_skinny<1, 3>(p);
}
extern "C" __global__ void __launch_bounds__(SK_WARPS * 32, 1) linear_skinny_m2_bf16(const LinearParams p) {
    linear_skinny<2, 4>(p);
}
