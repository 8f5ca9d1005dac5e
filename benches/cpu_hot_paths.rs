//! Criterion benches of the CPU-side hot paths, so regressions show without a GPU:
//! selection (rank + rule), the confidence reduction over an LLaDA-8B-wide vocabulary, an
//! in-block step's linear at LLaDA-8B's width (weights owned f32 or read in place as mapped
//! bf16), one forward of the tiny fixture (full canvas and DualCache window), and a continuous
//! batch decoded block by block with and without a reused session.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};

use dllm::backend::cpu::select::{commit_count, rank, Candidate};
use dllm::backend::cpu::{Cpu, CpuTensor};
use dllm::backend::{Backend, DType, Draw, Sampling, SelectRule, Step, Window};
use dllm::cache::KvCache;
use dllm::decode::policy::quota_schedule;
use dllm::decode::{Capacity, DecodeOptions, Engine, Quiet, RowStart, RunOptions, Session};
use dllm::model::ModelFiles;
use dllm::transformer::{self, Workspace};

fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut z = seed;
    (0..n)
        .map(|_| {
            z = z.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
        })
        .collect()
}

fn selection(c: &mut Criterion) {
    let confs = lcg(32, 1);
    let cands: Vec<Candidate> = confs
        .iter()
        .enumerate()
        .map(|(i, &x)| Candidate { pos: i, token: i as u32, conf: (x as f64 + 4.0) / 8.0 })
        .collect();
    for (name, rule) in [
        ("quota", SelectRule::Quota),
        ("threshold", SelectRule::Threshold(0.9)),
        ("factor", SelectRule::Factor(1.0)),
    ] {
        c.bench_function(&format!("select/{name}/32 candidates"), |b| {
            b.iter(|| {
                let mut v = cands.clone();
                rank(&mut v);
                let confs: Vec<f64> = v.iter().map(|c| c.conf).collect();
                black_box(commit_count(rule, &confs, 3))
            })
        });
    }
    c.bench_function("select/quota_schedule", |b| b.iter(|| black_box(quota_schedule(black_box(32), 12))));
}

fn confidence(c: &mut Criterion) {
    // one block row of LLaDA-8B logits (126464 wide) through argmax + float64 softmax
    let cpu = Cpu::new(DType::Bf16, Some(1));
    let logits = CpuTensor::new(1, 126464, lcg(126464, 2));
    let mut out = cpu.cands(1).unwrap();
    let pads = vec![0u32];
    for (name, t) in [("greedy", 0.0), ("temperature 1", 1.0)] {
        c.bench_function(&format!("argmax_confidence/126464 vocab/{name}"), |b| {
            b.iter(|| {
                let draws = [Draw { temperature: t, ..Draw::GREEDY }];
                let s = Sampling {
                    draws: &draws,
                    seeds: &[1],
                    counters: &[0],
                    mask_id: 126336,
                    bf16_probs: false,
                };
                cpu.argmax_confidence(&logits, &pads, Window { start: 0, len: 1 }, 1, s, &mut out).unwrap();
                black_box(out.tokens[0])
            })
        });
    }
}

/// `[32, 4096] · [4096, 4096]ᵀ` (LLaDA-8B's attention output projection at an in-block step):
/// owned f32 weights, and bf16 weights read in place from a mapped checkpoint file.
fn linear_8b_width(c: &mut Criterion) {
    let (rows, k, n) = (32, 4096, 4096);
    let w = lcg(n * k, 3).into_iter().map(|x| half::bf16::from_f32(x * 0.01)).collect::<Vec<_>>();
    let dir = std::env::temp_dir().join(format!("dllm-bench-linear-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![n, k], &bytes).unwrap();
    let file = safetensors::serialize([("w", view)], None).unwrap();
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    let ck = dllm::model::Checkpoint::open(&dir).unwrap();
    for (name, dtype) in [("owned f32", DType::F32), ("mapped bf16", DType::Bf16)] {
        let cpu = Cpu::new(dtype, None);
        let weight = cpu.upload(&[ck.get("w").unwrap()], n, k).unwrap();
        let x = cpu.tensor_from_host(&lcg(rows * k, 4), rows, k).unwrap();
        let mut out = cpu.tensor(rows, n).unwrap();
        c.bench_function(&format!("linear 32x4096x4096/{name}"), |b| {
            b.iter(|| cpu.linear(&x, &weight, rows, &mut out).unwrap())
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tiny_forward(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mha/checkpoint");
    let files = ModelFiles::open(&dir).unwrap();
    let engine = Engine::new(Cpu::new(files.dtype, None), &files).unwrap();
    let cfg = &engine.config;
    let (batch, canvas) = (1, 32 + 96);
    let ids = vec![65u32; canvas];
    let pads = vec![0u32];
    let mut ws = Workspace::new(&engine.backend, cfg, batch, canvas, 32).unwrap();
    let mut cache = KvCache::new(&engine.backend, cfg, batch, canvas).unwrap();
    for (name, win) in [
        ("full canvas 128", Window { start: 0, len: canvas }),
        ("dual block 32", Window { start: 64, len: 32 }),
    ] {
        let step = Step { batch, canvas, win };
        c.bench_function(&format!("tiny-mha forward/{name}"), |b| {
            b.iter(|| {
                transformer::forward(
                    &engine.backend,
                    cfg,
                    &engine.weights,
                    &mut ws,
                    &mut cache,
                    &ids,
                    &pads,
                    step,
                    None,
                )
                .unwrap();
                transformer::block_logits(
                    &engine.backend,
                    cfg,
                    &engine.weights,
                    &mut ws,
                    step,
                    Window { start: 64, len: 32 },
                    None,
                )
                .unwrap();
            })
        });
    }
    let opts = DecodeOptions { gen_length: 96, steps: 96, ..DecodeOptions::default() };
    c.bench_function("tiny-mha generate/96 tokens dual thr0.9", |b| {
        b.iter(|| black_box(engine.generate(&[vec![72, 105]], &opts).unwrap().forwards))
    });
}

/// The server's continuous batch over three blocks of 4 rows: a fresh call per block (buffers
/// allocated and the canvas laid out every block) against one session reused for every block
/// (issue 19). The difference is the per-block overhead a session removes.
fn continuous_batch(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mha/checkpoint");
    let files = ModelFiles::open(&dir).unwrap();
    let engine = Engine::new(Cpu::new(files.dtype, None), &files).unwrap();
    let opts = DecodeOptions { gen_length: 96, steps: 96, ..DecodeOptions::default() };
    let rows: Vec<RowStart> = [vec![72, 105], vec![72, 105, 33, 33], vec![65; 9], vec![66; 5]]
        .into_iter()
        .map(|prompt| RowStart { prompt, ..RowStart::default() })
        .collect();
    let blocks = |decode: &mut dyn FnMut(&[RowStart]) -> Vec<Vec<u32>>| {
        let mut rows = rows.clone();
        for _ in 0..opts.gen_length / opts.block_length {
            let tokens = decode(&rows);
            for (r, t) in rows.iter_mut().zip(tokens) {
                r.done = t[..r.done.len() + opts.block_length].to_vec();
            }
        }
        rows
    };
    let tokens = |o: dllm::decode::Output| o.rows.into_iter().map(|r| r.tokens).collect();
    let run = RunOptions::default();
    c.bench_function("tiny-mha continuous batch/4 rows × 3 blocks, a fresh call per block", |b| {
        b.iter(|| {
            black_box(blocks(&mut |r| tokens(engine.generate_rows(r, &opts, run, 1, &mut Quiet).unwrap())))
        })
    });
    // sized for the batch, and as `dllm serve` sizes it (8 rows of 512 tokens, blocks up to 256,
    // 20 logprob alternatives)
    for (name, cap) in [
        ("one session", Capacity { batch: 4, canvas: 9 + 96, window: 32, logprobs: None }),
        ("one server-sized session", Capacity { batch: 8, canvas: 512, window: 256, logprobs: Some(20) }),
    ] {
        let mut session = Session::new(&engine, cap).unwrap();
        c.bench_function(&format!("tiny-mha continuous batch/4 rows × 3 blocks, {name}"), |b| {
            b.iter(|| {
                black_box(blocks(&mut |r| tokens(session.decode(r, &opts, run, 1, &mut Quiet).unwrap())))
            })
        });
    }
}

criterion_group!(benches, selection, confidence, linear_8b_width, tiny_forward, continuous_batch);
criterion_main!(benches);
