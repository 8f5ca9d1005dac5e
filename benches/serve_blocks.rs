//! The server's decode path on the CPU, interleaved so that the machine's drift cancels: a
//! continuous batch of 8 rows (the embedded model, prompts of 21–44 tokens, 2 blocks of 32,
//! DualCache threshold 0.9) decoded one block per call, by a fresh call per block, on a session
//! sized as `dllm serve` sizes it (8 × 512, blocks up to 256, 20 logprob alternatives), and on a
//! session sized to the batch; the three take turns, `ROUNDS` times, and the mean of each is
//! printed (issue 19, part 7: the per-block overhead a session removes).
//!
//! `cargo bench --no-default-features --bench serve_blocks`

use std::path::Path;
use std::time::Instant;

use dllm::backend::cpu::Cpu;
use dllm::decode::{Capacity, DecodeOptions, Engine, Output, Quiet, RowStart, RunOptions, Session};
use dllm::model::ModelFiles;

const ROUNDS: usize = 40;

fn tokens(o: Output) -> Vec<Vec<u32>> {
    o.rows.into_iter().map(|r| r.tokens).collect()
}

/// Two blocks of every row, one call per block.
fn two_blocks(rows: &[RowStart], decode: &mut dyn FnMut(&[RowStart]) -> Vec<Vec<u32>>) -> Vec<RowStart> {
    let mut rows = rows.to_vec();
    for _ in 0..2 {
        let tokens = decode(&rows);
        for (r, t) in rows.iter_mut().zip(tokens) {
            r.done = t[..r.done.len() + 32].to_vec();
        }
    }
    rows
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dllm-arith-tiny");
    let files = ModelFiles::open(&dir).expect("the embedded model's files");
    let engine = Engine::new(Cpu::new(files.dtype, None), &files).expect("load");
    let opts = DecodeOptions { gen_length: 64, steps: 64, ..DecodeOptions::default() };
    let rows: Vec<RowStart> = [21usize, 35, 28, 44, 30, 25, 40, 33]
        .into_iter()
        .map(|n| RowStart { prompt: (0..n).map(|i| 40 + (i % 20) as u32).collect(), ..RowStart::default() })
        .collect();
    let run = RunOptions::default();
    let server_cap = Capacity { batch: 8, canvas: 512, window: 256, logprobs: Some(20) };
    let mut server = Session::new(&engine, server_cap).expect("session");
    let mut exact = Session::new(&engine, Capacity { batch: 8, canvas: 44 + 64, window: 32, logprobs: None })
        .expect("session");
    let mut seconds = [0f64; 3];
    for i in 0..ROUNDS {
        for k in 0..3 {
            let m = (i + k) % 3;
            let t0 = Instant::now();
            let out = match m {
                0 => two_blocks(&rows, &mut |r| {
                    tokens(engine.generate_rows(r, &opts, run, 1, &mut Quiet).unwrap())
                }),
                1 => two_blocks(&rows, &mut |r| tokens(server.decode(r, &opts, run, 1, &mut Quiet).unwrap())),
                _ => two_blocks(&rows, &mut |r| tokens(exact.decode(r, &opts, run, 1, &mut Quiet).unwrap())),
            };
            std::hint::black_box(out);
            seconds[m] += t0.elapsed().as_secs_f64();
        }
    }
    println!("2 blocks of 8 rows, one call per block, {ROUNDS} interleaved rounds (mean):");
    for (name, s) in ["a fresh call per block", "a server-sized session", "a session sized to the batch"]
        .iter()
        .zip(seconds)
    {
        println!("  {name}: {:.1} ms", s / ROUNDS as f64 * 1e3);
    }
}
