// select_commit: commit tokens of the current block into the device canvas by each row's rule
// (spec §4.4) and report how many per row — the one small read-back of a step.
// Candidates are the active row's masked block positions, ranked by confidence descending, lower
// position first on ties (dllm's choice, docs/spec-notes.md), in the total order of f64
// (Rust's f64::total_cmp: a NaN confidence still gets a rank of its own, so ranks are always a
// permutation and the count reported equals the tokens committed). Every rule commits a prefix:
//   quota:     min(quota[b], n)
//   threshold: max(1, #{c ≥ τ})
//   factor:    first failure c(i) < 1 − f/(i+1) (1-based i ≥ 2) at i; all n if none failed or the
//              failure is the last candidate (reference quirk), else the i − 1 that passed.
//   capped threshold (Dream's uncached "+parallel", spec §3): min(max(1, #{c ≥ τ}), max(1, quota[b]))
//   first (Dream's cached block start, spec §3): the lowest masked position, whatever its score.
// A NaN score among a row's candidates (argmax_conf's mark of non-finite logits) commits nothing
// for that row and reports DLLM_NONFINITE as its count.
// Each row has its own rule and parameter (rules/params [B]; rows of a batch may differ).
// Layout: tokens/conf [B·BL] (from argmax_conf), canvas [B, L] u32, active/quota/counts/rules/
// params [B].
// One block per batch row, one thread per block position (BL ≤ 1024); O(BL²) ranking in shared
// memory: BL = 32 makes that 1k comparisons. CPU twin: Cpu::select / backend::cpu::select.
#include "common.cuh"

// f64::total_cmp as a signed integer key
__device__ __forceinline__ long long total_key(double c) {
    long long k = __double_as_longlong(c);
    return k ^ (long long)(((unsigned long long)(k >> 63)) >> 1);
}

extern "C" __global__ void __launch_bounds__(DLLM_MAX_BLOCK_LENGTH) select_commit(const SelectParams p) {
    __shared__ long long key_s[DLLM_MAX_BLOCK_LENGTH];
    __shared__ double sorted[DLLM_MAX_BLOCK_LENGTH];
    __shared__ unsigned char masked_s[DLLM_MAX_BLOCK_LENGTH];
    __shared__ unsigned int k_s;
    const unsigned int b = blockIdx.x, i = threadIdx.x, bl = p.block_len;
    const bool act = ((const unsigned int*)p.active)[b] != 0;
    const unsigned int rule = ((const unsigned int*)p.rules)[b];
    const double param = ((const double*)p.params)[b];
    unsigned int* canvas = (unsigned int*)p.canvas + (size_t)b * p.canvas_len + p.block_start;
    bool m = false;
    double c = 0.0;
    if (i < bl) {
        m = act && canvas[i] == p.mask_id;
        c = ((const double*)p.conf)[(size_t)b * bl + i];
        key_s[i] = total_key(c);
        masked_s[i] = m ? 1 : 0;
    }
    const unsigned int n = __syncthreads_count(m);
    if (__syncthreads_or(m && isnan(c))) {
        if (i == 0) ((unsigned int*)p.counts)[b] = DLLM_NONFINITE;
        return;
    }
    unsigned int rank = 0;
    if (m) {
        const long long key = total_key(c);
        for (unsigned int j = 0; j < bl; ++j)
            if (masked_s[j] && (key_s[j] > key || (key_s[j] == key && j < i))) ++rank;
        sorted[rank] = c;
    }
    __syncthreads();
    if (i == 0) {
        unsigned int k = 0;
        if (n > 0) {
            if (rule == DLLM_RULE_QUOTA) {
                const unsigned int q = ((const unsigned int*)p.quota)[b];
                k = q < n ? q : n;
            } else if (rule == DLLM_RULE_THRESHOLD || rule == DLLM_RULE_CAPPED_THRESHOLD) {
                while (k < n && sorted[k] >= param) ++k;
                if (k == 0) k = 1;
                if (rule == DLLM_RULE_CAPPED_THRESHOLD) {
                    unsigned int q = ((const unsigned int*)p.quota)[b];
                    if (q == 0) q = 1;
                    if (k > q) k = q;
                }
            } else if (rule == DLLM_RULE_FIRST) {
                k = 1;
            } else {
                unsigned int fail = n;
                for (unsigned int j = 1; j < n; ++j) {
                    if (sorted[j] < 1.0 - param / (double)(j + 2)) {
                        fail = j;
                        break;
                    }
                }
                k = (fail == n || fail == n - 1) ? n : fail;
            }
        }
        k_s = k;
        ((unsigned int*)p.counts)[b] = k;
    }
    __syncthreads();
    if (rule == DLLM_RULE_FIRST) {
        // the lowest masked position: no masked position before it
        if (m) {
            bool first = true;
            for (unsigned int j = 0; j < i; ++j) first = first && !masked_s[j];
            if (first) canvas[i] = ((const unsigned int*)p.tokens)[(size_t)b * bl + i];
        }
        return;
    }
    if (m && rank < k_s) canvas[i] = ((const unsigned int*)p.tokens)[(size_t)b * bl + i];
}
