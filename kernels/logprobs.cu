// top_logprobs: per logits row of the current block, the log-probability of the token argmax_conf
// drew and the n most likely non-mask tokens with theirs (issue 19: reveal-time logprobs), the
// logits never leaving the GPU:
//   lse   = max + ln Σ_v exp(l_v − max)                (f64, over the whole vocabulary)
//   out[r·(1+n)]       = (drawn_r, l_drawn − lse)
//   out[r·(1+n) + 1+j] = the j-th non-mask token in (logit desc, id asc) order, l − lse
// A row holding a non-finite logit gets NaN log-probabilities (argmax_conf scores it NaN and the
// decoder ends that row with an error). The log-probability is the model's at this forward: it is
// conditional on every token committed before it (docs/spec-notes.md).
// Layout: logits [rows, vocab] activation dtype; drawn [rows] u32; ids [rows·(1+n)] u32; lps
// [rows·(1+n)] f64. One block of DLLM_ARGMAX_THREADS per row; the j-th token is a block argmax
// over the logits below the (j−1)-th in that order.
// Floor: (2 + n) passes over rows·vocab·sizeof(T) bytes (all but the first from L1/L2), vocab
// f64 exps per row. CPU twin: Cpu::top_logprobs.
#include "common.cuh"

template <typename T>
__device__ void top_logprobs(const LogprobParams p) {
    const unsigned int r = blockIdx.x;
    const T* l = (const T*)p.logits + (size_t)r * p.vocab;
    float mx = -INFINITY, poison = 0.0f;
    for_each_logit(l, p.vocab, [&](unsigned int, float x) {
        mx = fmaxf(mx, x);
        poison += x * 0.0f;
    });
    mx = block_max(mx);
    const double m = (double)mx;
    double sum = 0.0;
    for_each_logit(l, p.vocab, [&](unsigned int, float x) { sum += exp((double)x - m); });
    sum = block_sum_d(sum) + (double)block_sum(poison);
    const double lse = m + log(sum);
    const size_t out0 = (size_t)r * (p.n + 1);
    unsigned int* ids = (unsigned int*)p.ids;
    double* lps = (double*)p.lps;
    if (threadIdx.x == 0) {
        const unsigned int tok = ((const unsigned int*)p.drawn)[r];
        ids[out0] = tok;
        lps[out0] = tok < p.vocab ? (double)to_f(l[tok]) - lse : NAN;
    }
    __shared__ double best_s[DLLM_ARGMAX_THREADS / 32];
    __shared__ unsigned int arg_s[DLLM_ARGMAX_THREADS / 32];
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double prev_s = INFINITY;
    unsigned int prev_a = 0;
    bool first = true;
    for (unsigned int j = 0; j < p.n; ++j) {
        double best = -INFINITY;
        unsigned int arg = AM_NONE;
        for_each_logit(l, p.vocab, [&](unsigned int v, float x) {
            const double s = isnan(x) ? -INFINITY : (double)x;
            // strictly after the previous pick in (logit desc, id asc) order
            if (v == p.mask_id || !(first || s < prev_s || (s == prev_s && v > prev_a))) return;
            better(best, arg, s, v);
        });
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const double s2 = __shfl_xor_sync(0xffffffffu, best, o);
            const unsigned int a2 = __shfl_xor_sync(0xffffffffu, arg, o);
            better(best, arg, s2, a2);
        }
        __syncthreads();  // best_s may still be read by the previous pick
        if (lane == 0) {
            best_s[warp] = best;
            arg_s[warp] = arg;
        }
        __syncthreads();
        if (threadIdx.x == 0)
            for (unsigned int w = 1; w < blockDim.x / 32; ++w) better(best_s[0], arg_s[0], best_s[w], arg_s[w]);
        __syncthreads();
        prev_s = best_s[0];
        prev_a = arg_s[0];
        first = false;
        if (threadIdx.x == 0) {
            // fewer than n non-mask tokens: the rest of the list is (AM_NONE, -inf)
            ids[out0 + 1 + j] = prev_a;
            lps[out0 + 1 + j] = prev_a == AM_NONE ? -INFINITY : (double)to_f(l[prev_a]) - lse;
        }
    }
}

extern "C" __global__ void __launch_bounds__(DLLM_ARGMAX_THREADS) top_logprobs_f32(const LogprobParams p) { top_logprobs<float>(p); }
extern "C" __global__ void __launch_bounds__(DLLM_ARGMAX_THREADS) top_logprobs_bf16(const LogprobParams p) { top_logprobs<__nv_bfloat16>(p); }
