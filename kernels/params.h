/* Kernel parameter structs and launch geometry: the one definition shared by the CUDA kernels
 * (nvcc) and the Rust launches (bindgen turns this header into $OUT_DIR/params.rs at build time,
 * the `params` module of src/backend/cuda; every DLLM_* define becomes a Rust constant).
 * Every kernel takes one of these by value. Device pointers are plain 64-bit addresses.
 * Layout conventions are those of src/backend/mod.rs: activations [batch x window, cols]
 * row-major, KV cache [batch x canvas, kv_dim], batch row b left-padded by pads[b] tokens. */
#pragma once

#ifdef __CUDACC__
typedef unsigned long long dptr_t;
#else
#include <stdint.h>
typedef uint64_t dptr_t;
#endif

/* The canvas rows one forward computes, and the batch geometry. */
typedef struct {
    unsigned int batch;
    unsigned int canvas_len;
    unsigned int win_start;
    unsigned int win_len;
} StepShape;

typedef struct {
    dptr_t table;   /* [n_logits, d] activation dtype */
    dptr_t canvas;  /* [batch, canvas_len] u32 */
    dptr_t out;     /* [batch x win_len, d] */
    StepShape step;
    unsigned int d;
    unsigned int n_rows_table;
} EmbedParams;

typedef struct {
    dptr_t x;    /* [rows, d]; add_rmsnorm: h, updated in place (h += residual) */
    dptr_t w;    /* [d] */
    dptr_t out;  /* [rows, d] */
    dptr_t residual;  /* add_rmsnorm only: [rows, d] */
    unsigned int rows;
    unsigned int d;
    float eps;
} RmsNormParams;
/* Threads of an rmsnorm / add_rmsnorm block (one block per row). */
#define DLLM_RMSNORM_THREADS 512

typedef struct {
    dptr_t qkv;      /* [batch x win_len, (n_heads + 2 n_kv_heads) head_dim], q|k|v */
    dptr_t cos;      /* [max_pos, head_dim] f32 */
    dptr_t sin;      /* [max_pos, head_dim] f32 */
    dptr_t pads;     /* [batch] u32 */
    dptr_t k_cache;  /* [batch x canvas_len, n_kv_heads head_dim] */
    dptr_t v_cache;
    StepShape step;
    unsigned int n_heads;
    unsigned int n_kv_heads;
    unsigned int head_dim;
    unsigned int max_pos;
} RopeKvParams;

typedef struct {
    dptr_t qkv;      /* queries: the q part of each row */
    dptr_t k_cache;
    dptr_t v_cache;
    dptr_t pads;     /* [2 batch] u32: left pads, then row ends (exclusive canvas column) */
    dptr_t out;      /* [batch x win_len, n_heads head_dim] */
    dptr_t partial;  /* f32 [splits][batch x win_len][n_heads][head_dim + 2]: o | m | l (splits > 1) */
    StepShape step;
    unsigned int n_heads;
    unsigned int n_kv_heads;
    unsigned int head_dim;
    unsigned int splits; /* key splits per (query tile, head, row); 1: no partials, no combine */
    float scale;
} AttentionParams;
/* Block shapes of attention.cu (CUDA cores) and attention_tc.cu (tensor cores, bf16): the
 * kernels are written for them and the host sizes its grids, shared memory and key splits by them.
 * Both kernels run DLLM_ATT_THREADS threads (4 warps) a block and split keys in whole tiles of
 * DLLM_ATT_KTILE. attention.cu: DLLM_ATT_QROWS query rows a block (4 a warp), a head of at most
 * DLLM_ATT_MAX_HEAD_DIM values in registers. attention_tc.cu: DLLM_ATT_TC_ROWS query rows a block
 * (16 a warp), head_dim exactly DLLM_ATT_TC_HEAD_DIM. */
#define DLLM_ATT_THREADS 128
#define DLLM_ATT_QROWS 16
#define DLLM_ATT_KTILE 32
#define DLLM_ATT_MAX_HEAD_DIM 128
#define DLLM_ATT_TC_ROWS 64
#define DLLM_ATT_TC_HEAD_DIM 128

typedef struct {
    dptr_t gate_up;  /* [rows, 2 mlp]: gate | up */
    dptr_t out;      /* [rows, mlp] */
    unsigned int rows;
    unsigned int mlp;
} SwigluParams;

typedef struct {
    dptr_t h;  /* [n] updated in place: h += x */
    dptr_t x;
    unsigned int n;
} AddParams;

typedef struct {
    dptr_t x;     /* [rows, cols] updated in place: x[r] += bias */
    dptr_t bias;  /* [cols] */
    unsigned int rows;
    unsigned int cols;
} BiasParams;

typedef struct {
    dptr_t h;    /* [batch x win_len, d] */
    dptr_t out;  /* [batch x block_len, d] */
    unsigned int batch;
    unsigned int d;
    unsigned int win_len;
    unsigned int offset;     /* block start - window start */
    unsigned int block_len;
    unsigned int shift;      /* 1: Dream's shifted logits, row p - 1 predicts p (spec §3) */
} GatherParams;

/* What argmax_conf writes as a candidate's score (values match the Rust side). */
#define DLLM_SCORE_CONFIDENCE 0
#define DLLM_SCORE_NEG_ENTROPY 1
#define DLLM_SCORE_NEG_ENTROPY_F64 2  /* d3LLM: sum p ln(p + 1e-12) in f64, never rounded */

/* One batch row's draw (backend::Draw): 24 bytes, written by the host as three u64 words. */
typedef struct {
    double temperature;  /* 0: greedy */
    double top_p;        /* nucleus mass, (0, 1]; 1: no limit */
    unsigned int top_k;  /* 0: no limit */
    unsigned int score;  /* DLLM_SCORE_* */
} ArgmaxDraw;

typedef struct {
    dptr_t logits;    /* [batch x block_len, vocab] activation dtype */
    dptr_t pads;      /* [batch] u32 */
    dptr_t seeds;     /* [batch] u64 */
    dptr_t counters;  /* [batch] u64 */
    dptr_t draws;     /* [batch] ArgmaxDraw */
    dptr_t tokens;    /* out: [batch x block_len] u32 */
    dptr_t conf;      /* out: [batch x block_len] f64 */
    unsigned int rows;
    unsigned int vocab;
    unsigned int block_start;
    unsigned int block_len;
    unsigned int mask_id;
    unsigned int bf16_probs;  /* 1: Dream's bf16 softmax (spec §3) */
} ArgmaxParams;
typedef struct {
    dptr_t logits;  /* [rows, vocab] activation dtype */
    dptr_t drawn;   /* [rows] u32: argmax_conf's tokens */
    dptr_t ids;     /* out: [rows x (1 + n)] u32: the drawn token, then the n most likely */
    dptr_t lps;     /* out: [rows x (1 + n)] f64 log-probabilities */
    unsigned int rows;
    unsigned int vocab;
    unsigned int n;
    unsigned int mask_id;
} LogprobParams;

/* Threads of an argmax_conf block (one block per logits row). */
#define DLLM_ARGMAX_THREADS 512

typedef struct {
    dptr_t out;          /* [n] activation dtype */
    unsigned long long n;
    unsigned long long seed;
    float offset;
    float scale;
} FillParams;

/* Selection rules (spec §4.4); values match the Rust side. */
#define DLLM_RULE_QUOTA 0
#define DLLM_RULE_THRESHOLD 1
#define DLLM_RULE_FACTOR 2
#define DLLM_RULE_FIRST 3             /* Dream: the block's first mask (spec §3) */
#define DLLM_RULE_CAPPED_THRESHOLD 4  /* Dream: threshold within quota[b] (spec §3) */

typedef struct {
    dptr_t tokens;   /* [batch x block_len] u32, from argmax */
    dptr_t conf;     /* [batch x block_len] f64 */
    dptr_t canvas;   /* [batch, canvas_len] u32, updated in place */
    dptr_t active;   /* [batch] u32 (0/1) */
    dptr_t quota;    /* [batch] u32 */
    dptr_t counts;   /* out: [batch] u32, tokens committed per row */
    dptr_t rules;    /* [batch] u32 DLLM_RULE_*: each row's rule */
    dptr_t params;   /* [batch] f64: each row's threshold tau or factor f */
    unsigned int batch;
    unsigned int canvas_len;
    unsigned int block_start;
    unsigned int block_len;
    unsigned int mask_id;
    unsigned int pad_;
} SelectParams;
/* select_commit ranks a block in one thread block, one thread per position: the longest block. */
#define DLLM_MAX_BLOCK_LENGTH 1024

/* select_commit's count for a row whose candidates had non-finite logits (argmax_conf writes a
   NaN score for any row holding a NaN or infinite logit): nothing of that row is committed. */
#define DLLM_NONFINITE 0xffffffffu

/* FP8 e4m3 W8A8 linears (issue 17, src/fp8.rs): per-row dynamic activation scales, per-output-
   channel weight scales. */
typedef struct {
    dptr_t x;       /* [rows, cols] activation dtype */
    dptr_t codes;   /* out: [rows, cols] e4m3 codes */
    dptr_t scales;  /* out: [rows] f32, absmax / 448 */
    unsigned int rows;
    unsigned int cols;
} QuantizeFp8Params;
/* Threads of a quantize_fp8 block (one block per row). */
#define DLLM_QUANT_FP8_THREADS 256

typedef struct {
    dptr_t x;    /* [rows, k] e4m3 codes (quantize_fp8) */
    dptr_t sx;   /* [rows] f32 */
    dptr_t w;    /* [n, k] e4m3 codes */
    dptr_t sw;   /* [n] f32 */
    dptr_t out;  /* [rows, n] activation dtype */
    unsigned int rows;
    unsigned int n;
    unsigned int k;
} LinearFp8Params;
/* linear_fp8 (the SIMT path): DLLM_LINEAR_FP8_THREADS threads a block, one warp per output
   column, each warp the DLLM_LINEAR_FP8_ROWS rows of its block's row tile. */
#define DLLM_LINEAR_FP8_THREADS 128
#define DLLM_LINEAR_FP8_ROWS 8
