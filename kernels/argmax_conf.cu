// argmax_conf: per logits row of the current block, the drawn token and its confidence
// (spec §4.1–4.3), without the logit row ever leaving the GPU:
//   max  = max_v l_v                                   (over the whole vocabulary)
//   x0   = argmax_{v ≠ mask} l_v            (T = 0; lowest id on ties; a NaN never wins, and
//                                            when nothing beats -inf the lowest non-mask id)
//        = argmax_{v ≠ mask} l_v / T + Gumbel(seed, counter, pos, v)   (T > 0, f64 noise)
//   conf = exp(l_x0 − max) / Σ_v exp(l_v − max)          (the sum in f64, tree-reduced)
// The score written is conf, or (Dream's entropy rule, spec §3) the negative entropy
//   Σ_v p_v · ln(p_v + 1e-10)                            (a third pass over the row)
// or (d3LLM's entropy rule, d3llm spec §3) −H = Σ_v p_v · ln(p_v + 1e-12), in f64, never rounded.
// A row holding any non-finite logit (NaN, ±inf: a broken checkpoint or an overflow) gets a NaN
// softmax sum, found in the pass that already reads every logit (x · 0 is NaN exactly for those),
// hence a NaN score; select_commit turns it into an error for that batch row (DLLM_NONFINITE)
// instead of committing garbage.
// With bf16_probs (Dream with bf16 activations, spec §3) every p is rounded to bf16 first, x0 is
// the lowest id whose rounded p equals the best one's, and the score is rounded to bf16; the
// entropy rounds p + 1e-10, its log and the product to bf16 too (torch's op-by-op bf16 outputs).
// The mask token is never drawn (docs/spec-notes.md). Logits are in the activation dtype (bf16
// logits for a bf16 model, spec §4.1).
// Each batch row has its own draw (ArgmaxDraw: temperature, top-k, nucleus, score; issue 19).
// A sampled row with a top-k or a nucleus draws only among non-mask tokens with
// key(l_v) ≥ cut, key the order-preserving u32 of the f32 logit: cut_k is the largest key with
// #{v ≠ mask : key_v ≥ cut_k} ≥ k (the k-th highest; ties at it stay), cut_p the smallest key
// with Σ_{v ≠ mask, key_v > cut_p} e_v < top_p · Z, e_v = exp((l_v − max) / T) and Z = Σ_v e_v
// over the whole vocabulary (f64); cut = max of the two. Each is found by bisection over the
// 2^32 keys: 32 passes over the row a limit (the row stays in L1/L2). A row holding a
// non-finite logit gets no cut (its score is NaN anyway). CPU twin: backend::cpu::nucleus.
// Layout: logits [B·BL, vocab]; tokens u32, conf f64 [B·BL]. One block of DLLM_ARGMAX_THREADS
// (512) threads per row, 16-byte loads (for_each_logit) in unrolled loops so that each thread has
// several loads in flight: an in-block step has only 32 rows (blocks), and 256 threads with one
// 2-byte load at a time take 330 µs a call on an H100 (docs/perf.md, run 2).
// Floor: 2 passes over B·BL·vocab·sizeof(T) bytes (the second mostly from L1/L2); ~vocab f64
// exps per row; a top-k / nucleus row adds up to 2 + 64 passes (from L1/L2) and ~33·vocab exps.
// CPU twin: Cpu::argmax_confidence.
#include "common.cuh"

// f32 → u32 in the order of the values (backend::cpu::nucleus::order_key).
__device__ __forceinline__ unsigned int order_key(float x) {
    const unsigned int b = __float_as_uint(x);
    return (b >> 31) ? ~b : (b | 0x80000000u);
}

// The lowest key a restricted draw allows (0: every token), every thread of the block getting it.
template <typename T>
__device__ unsigned int allowed_cut(const T* l, const ArgmaxParams& p, const ArgmaxDraw& d) {
    float mx = -INFINITY, poison = 0.0f;
    for_each_logit(l, p.vocab, [&](unsigned int, float x) {
        mx = fmaxf(mx, x);
        poison += x * 0.0f;
    });
    mx = block_max(mx);
    if (isnan(block_sum(poison))) return 0;
    unsigned int cut_k = 0, cut_p = 0;
    if (d.top_k > 0) {
        // the largest t with #{v ≠ mask : key_v ≥ t} ≥ k (0 when fewer than k tokens)
        unsigned long long lo = 0, hi = 0xffffffffull;
        while (lo < hi) {
            const unsigned int mid = (unsigned int)(lo + (hi - lo + 1) / 2);
            double c = 0.0;
            for_each_logit(l, p.vocab, [&](unsigned int v, float x) {
                if (v != p.mask_id && order_key(x) >= mid) c += 1.0;
            });
            if (block_sum_d(c) >= (double)d.top_k) lo = mid; else hi = mid - 1;
        }
        cut_k = (unsigned int)lo;
    }
    if (d.top_p < 1.0) {
        const double m = (double)mx, t = d.temperature;
        double z = 0.0;
        for_each_logit(l, p.vocab, [&](unsigned int, float x) { z += exp(((double)x - m) / t); });
        const double bound = d.top_p * block_sum_d(z);
        // the smallest t with Σ_{v ≠ mask, key_v > t} e_v < bound
        unsigned long long lo = 0, hi = 0xffffffffull;
        while (lo < hi) {
            const unsigned int mid = (unsigned int)(lo + (hi - lo) / 2);
            double above = 0.0;
            for_each_logit(l, p.vocab, [&](unsigned int v, float x) {
                if (v != p.mask_id && order_key(x) > mid) above += exp(((double)x - m) / t);
            });
            if (block_sum_d(above) < bound) hi = mid; else lo = mid + 1;
        }
        cut_p = (unsigned int)lo;
    }
    return cut_k > cut_p ? cut_k : cut_p;
}

template <typename T>
__device__ void argmax_conf(const ArgmaxParams p) {
    __shared__ double best_s[DLLM_ARGMAX_THREADS / 32];
    __shared__ unsigned int arg_s[DLLM_ARGMAX_THREADS / 32];
    __shared__ float max_s[DLLM_ARGMAX_THREADS / 32];
    const unsigned int r = blockIdx.x, b = r / p.block_len, i = r % p.block_len;
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const T* l = (const T*)p.logits + (size_t)r * p.vocab;
    const ArgmaxDraw d = ((const ArgmaxDraw*)p.draws)[b];
    const bool greedy = d.temperature == 0.0;
    // uniform over the block (one row), so every thread takes the bisection's reductions
    const unsigned int cut = !greedy && (d.top_k > 0 || d.top_p < 1.0) ? allowed_cut(l, p, d) : 0;
    const unsigned int pad = ((const unsigned int*)p.pads)[b];
    const unsigned int cpos = p.block_start + i;
    const uint64_t pos = cpos >= pad ? cpos - pad : 0;
    const uint64_t seed = greedy ? 0 : ((const uint64_t*)p.seeds)[b];
    const uint64_t counter = greedy ? 0 : ((const uint64_t*)p.counters)[b];

    float mx = -INFINITY;
    double best = -INFINITY;
    unsigned int arg = AM_NONE;
    for_each_logit(l, p.vocab, [&](unsigned int v, float x) {
        mx = fmaxf(mx, x);
        if (v == p.mask_id || (cut != 0 && order_key(x) < cut)) return;
        double score = greedy ? (double)x : (double)x / d.temperature + gumbel(seed, counter, pos, v);
        if (isnan(score)) score = -INFINITY;
        better(best, arg, score, v);
    });
    mx = warp_max(mx);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const double s2 = __shfl_xor_sync(0xffffffffu, best, o);
        const unsigned int a2 = __shfl_xor_sync(0xffffffffu, arg, o);
        better(best, arg, s2, a2);
    }
    if (lane == 0) {
        best_s[warp] = best;
        arg_s[warp] = arg;
        max_s[warp] = mx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (unsigned int w = 1; w < blockDim.x / 32; ++w) {
            better(best_s[0], arg_s[0], best_s[w], arg_s[w]);
            max_s[0] = fmaxf(max_s[0], max_s[w]);
        }
        if (arg_s[0] == AM_NONE) arg_s[0] = 0;  // only with a vocabulary of the mask alone
    }
    __syncthreads();
    const double m = (double)max_s[0];
    const unsigned int x0 = arg_s[0];
    double sum = 0.0;
    float poison = 0.0f;
    for_each_logit(l, p.vocab, [&](unsigned int, float x) {
        sum += exp((double)x - m);
        poison += x * 0.0f;  // 0 for a finite logit, NaN for NaN or ±inf
    });
    sum = block_sum_d(sum + (double)poison);
    const bool r16 = p.bf16_probs != 0;
    auto prob = [&](float x) {
        const double q = exp((double)x - m) / sum;
        // through f32 (both steps round to nearest), bit for bit as the CPU twin
        return r16 ? (double)__bfloat162float(__float2bfloat16_rn(__double2float_rn(q))) : q;
    };
    unsigned int tok = x0;
    if (r16 && greedy) {
        __shared__ unsigned int low_s;
        if (threadIdx.x == 0) low_s = x0;
        __syncthreads();
        const double top = prob(to_f(l[x0]));
        for (unsigned int v = threadIdx.x; v < x0; v += blockDim.x)
            if (v != p.mask_id && prob(to_f(l[v])) == top) atomicMin(&low_s, v);
        __syncthreads();
        tok = low_s;
    }
    double score;
    if (d.score == DLLM_SCORE_NEG_ENTROPY || d.score == DLLM_SCORE_NEG_ENTROPY_F64) {
        // Dream's ε is 1e-10, d3LLM's 1e-12 (d3llm spec §3); only Dream rounds to bf16
        const double eps = d.score == DLLM_SCORE_NEG_ENTROPY_F64 ? 1e-12 : 1e-10;
        double e = 0.0;
        for_each_logit(l, p.vocab, [&](unsigned int, float x) {
            const double q = prob(x);
            if (r16) {
                // every op's output in bf16, as torch on bf16 tensors (the CPU twin's order)
                const float t = __bfloat162float(__float2bfloat16_rn((float)q + 1e-10f));
                const float lg = __bfloat162float(__float2bfloat16_rn(__double2float_rn(log((double)t))));
                e += (double)__bfloat162float(__float2bfloat16_rn((float)q * lg));
            } else {
                e += q * log(q + eps);
            }
        });
        e = block_sum_d(e);
        score = r16 ? (double)__bfloat162float(__float2bfloat16_rn(__double2float_rn(e))) : e;
    } else {
        score = prob(to_f(l[tok]));
    }
    if (threadIdx.x == 0) {
        ((unsigned int*)p.tokens)[r] = tok;
        ((double*)p.conf)[r] = score;
    }
}

extern "C" __global__ void __launch_bounds__(DLLM_ARGMAX_THREADS) argmax_conf_f32(const ArgmaxParams p) { argmax_conf<float>(p); }
extern "C" __global__ void __launch_bounds__(DLLM_ARGMAX_THREADS) argmax_conf_bf16(const ArgmaxParams p) { argmax_conf<__nv_bfloat16>(p); }
