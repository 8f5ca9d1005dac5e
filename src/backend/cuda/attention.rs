//! Launch geometry of attention: which kernel (kernels/attention.cu on CUDA cores,
//! kernels/attention_tc.cu on tensor cores), its grid and shared memory, and how many blocks split
//! each row's keys (merged by attention_combine). The block shapes come from kernels/params.h.

use super::options::CudaOptions;
use super::params::*;
use crate::backend::{Heads, Step};

/// Attention keeps the head in shared memory and registers: head_dim ≤ 128 (LLaDA, Dream: 128).
pub(super) const MAX_HEAD_DIM: usize = DLLM_ATT_MAX_HEAD_DIM as usize;
const QROWS: usize = DLLM_ATT_QROWS as usize;
const KTILE: usize = DLLM_ATT_KTILE as usize;
/// The tensor-core kernel: 64 query rows a block, head_dim 128 only.
const TC_ROWS: usize = DLLM_ATT_TC_ROWS as usize;
const TC_HEAD_DIM: usize = DLLM_ATT_TC_HEAD_DIM as usize;
/// Workspace of the split attention's partial records (f32 [splits][rows][heads][hd + 2]).
pub(super) const PARTIAL_BYTES: usize = 16 << 20;
/// At most this many key splits, each of at least `MIN_SPLIT_KEYS` keys.
const MAX_SPLITS: usize = 16;
const MIN_SPLIT_KEYS: usize = 64;

/// Key splits for an attention launch of `blocks` (query tiles × heads × rows) over at most `keys`
/// keys, each split's partial records taking `records_per_split` floats: about one block per
/// multiprocessor when the query tiles alone cannot fill them (an in-block step: one or two tiles
/// a head), never below `MIN_SPLIT_KEYS` keys a split (a forced count: one key tile), at most
/// `MAX_SPLITS`, and within the partial-record workspace. One block per multiprocessor and no
/// more, because every split adds partial records for attention_combine to merge: an in-block step
/// on an H200 takes 5.69 ms at 5 splits against 5.80 at 12, and on an H100 3 splits beat 6, 12 and
/// 24 (docs/perf.md, runs 6 and 10).
pub fn attention_splits(
    sm_count: usize,
    forced: Option<usize>,
    blocks: usize,
    keys: usize,
    records_per_split: usize,
) -> usize {
    let wanted = match forced {
        Some(s) => s.min(keys.div_ceil(KTILE)),
        None => sm_count.div_ceil(blocks.max(1)).min(keys.div_ceil(MIN_SPLIT_KEYS)),
    };
    let fits = PARTIAL_BYTES / (records_per_split.max(1) * 4);
    wanted.min(MAX_SPLITS).min(fits).max(1)
}

/// Whether an attention of `head_dim` runs on tensor cores, given that the tensor-core kernel is
/// loaded (bf16 only): every bf16 window of head_dim 128 (an in-block step's 32 rows too: its keys
/// are split instead) unless the options keep it on CUDA cores; f32 (exact parity) and other
/// head dims run on CUDA cores.
pub(super) fn on_tensor_cores(kernel_loaded: bool, head_dim: usize, opts: CudaOptions) -> bool {
    kernel_loaded && head_dim == TC_HEAD_DIM && opts.tensor_core_attention
}

/// One attention call's launch: grid (query tiles, heads, rows × splits) of `DLLM_ATT_THREADS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Launch {
    pub grid: (u32, u32, u32),
    /// Dynamic shared memory: the CUDA-core kernel's q, K and V tiles (the tensor-core kernel's
    /// shared memory is static: 0).
    pub smem: u32,
    pub splits: usize,
    /// attention_combine's grid (one block per (row, head)) and threads (head_dim rounded up to a
    /// warp), when the keys are split.
    pub combine: Option<((u32, u32, u32), u32)>,
}

impl Launch {
    pub fn new(step: Step, heads: Heads, tensor_cores: bool, sm_count: usize, forced: Option<usize>) -> Self {
        let hd = heads.head_dim;
        let rows_per_block = if tensor_cores { TC_ROWS } else { QROWS };
        let tiles = step.win.len.div_ceil(rows_per_block);
        let blocks = tiles * heads.n_heads * step.batch;
        let records = step.rows() * heads.n_heads * (hd + 2);
        let splits = attention_splits(sm_count, forced, blocks, step.canvas, records);
        let smem = if tensor_cores { 0 } else { (QROWS * hd + KTILE * (hd + 1) + KTILE * hd) * 4 };
        let combine = (splits > 1)
            .then(|| ((step.rows() as u32, heads.n_heads as u32, 1), hd.next_multiple_of(32) as u32));
        Launch {
            grid: (tiles as u32, heads.n_heads as u32, (step.batch * splits) as u32),
            smem: smem as u32,
            splits,
            combine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{attention_splits, on_tensor_cores, Launch};
    use crate::backend::cuda::CudaOptions;
    use crate::backend::{Heads, Step, Window};

    /// The split counts on an H100's 132 multiprocessors at the S1 shapes of docs/perf.md, and the
    /// limits.
    #[test]
    fn attention_splits_fill_the_gpu_within_the_workspace() {
        // partial-record floats of `rows` query rows of LLaDA-8B (32 heads, head_dim 128)
        let rec = |rows: usize| rows * 32 * 130;
        // in-block, batch 1, 768 keys: tensor cores (1 tile a head) 5 splits, CUDA cores 3
        assert_eq!(attention_splits(132, None, 32, 768, rec(32)), 5);
        assert_eq!(attention_splits(132, None, 64, 768, rec(32)), 3);
        // batch 4 in-block (128 blocks on tensor cores): 2
        assert_eq!(attention_splits(132, None, 128, 768, rec(128)), 2);
        // a block start (768 rows) fills the GPU alone, and its records would not fit anyway
        assert_eq!(attention_splits(132, None, 384, 768, rec(768)), 1);
        // batch 16 in-block (512 blocks) fills it alone too
        assert_eq!(attention_splits(132, None, 512, 768, rec(512)), 1);
        // a forced count is capped by the workspace: 512 rows' records fill its 16 MiB once
        assert_eq!(attention_splits(132, Some(4), 512, 768, rec(512)), 1);
        // few keys: at least 64 a split; a forced count: at least one 32-key tile a split
        assert_eq!(attention_splits(132, None, 8, 100, rec(4)), 2);
        assert_eq!(attention_splits(132, Some(7), 8, 100, rec(4)), 4);
        assert_eq!(attention_splits(132, Some(100), 8, 100_000, rec(4)), 16);
        // never 0, whatever the input
        assert_eq!(attention_splits(0, None, 0, 0, 0), 1);
    }

    /// LLaDA-8B's in-block step (batch 1, 32 rows of a 768-token canvas) on 132 multiprocessors:
    /// the tensor-core grid (1, 32, 5) Nsight Compute shows in docs/gpu-runs (run 10), and the
    /// CUDA-core launch with its shared memory.
    #[test]
    fn in_block_launches() {
        let heads = Heads { n_heads: 32, n_kv_heads: 32, head_dim: 128 };
        let step = Step { batch: 1, canvas: 768, win: Window { start: 512, len: 32 } };
        let tc = Launch::new(step, heads, true, 132, None);
        assert_eq!(tc, Launch { grid: (1, 32, 5), smem: 0, splits: 5, combine: Some(((32, 32, 1), 128)) });
        let simt = Launch::new(step, heads, false, 132, None);
        let smem = (16 * 128 + 32 * 129 + 32 * 128) * 4;
        assert_eq!(simt, Launch { grid: (2, 32, 3), smem, splits: 3, combine: Some(((32, 32, 1), 128)) });
        // a forced single split: no combine
        assert_eq!(Launch::new(step, heads, true, 132, Some(1)).combine, None);
    }

    #[test]
    fn tensor_cores_take_bf16_head_dim_128_unless_turned_off() {
        let on = CudaOptions::default();
        let off = CudaOptions { tensor_core_attention: false, ..on };
        assert!(on_tensor_cores(true, 128, on));
        assert!(!on_tensor_cores(true, 128, off));
        assert!(!on_tensor_cores(true, 64, on));
        assert!(!on_tensor_cores(false, 128, on)); // f32: the kernel is not loaded
    }
}
