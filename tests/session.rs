//! The decode session (issue 19) on the CPU backend: buffers allocated once for a capacity and
//! reused by every call (how `dllm serve` decodes). What it allocates is what `Capacity::bytes`
//! (the README's formula) says; batches beyond it are refused by name; calls of every mode, one
//! after another on the same buffers, equal the goldens and allocate nothing; a fresh call per
//! block (the server before sessions) allocates on every block.

mod common;
use common::*;

use dllm::backend::cpu::Cpu;
use dllm::decode::{Capacity, Engine, Quiet, RowStart, RunOptions, Session};
use dllm::model::ModelFiles;
use dllm::transformer::WeightFormat;

fn goldens_and_infill(name: &str) -> Vec<Case> {
    let mut all = cases(&fixture(name).join("goldens.json"), "nfe");
    all.extend(cases(&fixture(name).join("goldens_infill.json"), "nfe"));
    all
}

/// The capacity that holds every case as a batch of one.
fn one_row_capacity(engine: &Engine<Cpu>, cases: &[Case]) -> Capacity {
    Capacity {
        batch: 1,
        canvas: cases.iter().map(|c| c.prompt.len() + c.opts.gen_length + c.suffix.len()).max().unwrap(),
        window: cases.iter().map(|c| c.opts.window_len(engine.config.arch)).max().unwrap(),
        logprobs: Some(5),
    }
}

#[test]
fn a_session_allocates_what_its_formula_says() {
    for (name, format) in [
        ("tiny-gqa", WeightFormat::AsStored),
        ("tiny-dream", WeightFormat::AsStored),
        ("tiny-gqa", WeightFormat::Fp8),
    ] {
        let files = ModelFiles::open(&fixture(name).join("checkpoint")).unwrap();
        let engine =
            Engine::load_with_progress(Cpu::new(files.dtype, None), &files, format, &mut |_, _| {}).unwrap();
        for logprobs in [None, Some(20)] {
            let cap = Capacity { batch: 3, canvas: 200, window: 32, logprobs };
            let before = engine.backend.allocated().1;
            let session = Session::new(&engine, cap).unwrap();
            let got = engine.backend.allocated().1 - before;
            assert_eq!(got, session.bytes(), "{name} {format:?} {cap:?}");
            assert_eq!(session.bytes(), cap.bytes(&engine.config, 4, 12), "{name}");
        }
        // linear in the batch and in the canvas of its big terms: twice the rows, about twice
        let small = Capacity { batch: 1, canvas: 200, window: 32, logprobs: None };
        let big = Capacity { batch: 2, ..small };
        assert_eq!(big.bytes(&engine.config, 4, 12), 2 * small.bytes(&engine.config, 4, 12));
    }
}

#[test]
fn every_golden_case_in_turn_on_one_session_allocates_nothing() {
    for name in ["tiny-gqa", "tiny-dream"] {
        let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
        let cases = goldens_and_infill(name);
        let mut session = Session::new(&engine, one_row_capacity(&engine, &cases)).unwrap();
        let allocated = engine.backend.allocated();
        let mut bad = vec![];
        for c in &cases {
            let out =
                session.decode(&[c.row()], &c.opts, RunOptions::default(), usize::MAX, &mut Quiet).unwrap();
            let r = &out.rows[0];
            if (&r.tokens, r.nfe, &r.commits, &r.suffix) != (&c.tokens, c.nfe, &c.commits, &c.suffix) {
                bad.push(c.name.clone());
            }
        }
        assert!(
            bad.is_empty(),
            "{name}: {} of {} differ on a reused session: {bad:?}",
            bad.len(),
            cases.len()
        );
        assert_eq!(engine.backend.allocated(), allocated, "{name}: a call on the session allocated");
    }
}

#[test]
fn a_batch_beyond_the_capacity_is_refused_by_name() {
    let (_, engine) = cpu_engine(&fixture("tiny-gqa").join("checkpoint"));
    let cases = goldens_and_infill("tiny-gqa");
    let c = cases.iter().find(|c| c.opts.gen_length > c.opts.block_length).unwrap();
    let exact = Capacity {
        batch: 1,
        canvas: c.prompt.len() + c.opts.gen_length + c.suffix.len(),
        window: c.opts.block_length,
        logprobs: None,
    };
    let run = RunOptions::default();
    let refusals = [
        (Capacity { batch: 1, ..exact }, vec![c.row(), c.row()], run, "2 batch rows"),
        (Capacity { canvas: exact.canvas - 1, ..exact }, vec![c.row()], run, "canvas columns"),
        (Capacity { window: exact.window / 2, ..exact }, vec![c.row()], run, "block window"),
        (exact, vec![c.row()], RunOptions { logprobs: Some(3), ..run }, "4 logprob alternatives"),
    ];
    for (cap, rows, run, what) in refusals {
        let mut session = Session::new(&engine, cap).unwrap();
        let e = session.decode(&rows, &c.opts, run, usize::MAX, &mut Quiet).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("the decode session holds"), "{what}: {e}");
        // the session still decodes what fits
        let out = session.decode(&[c.row()], &c.opts, RunOptions::default(), usize::MAX, &mut Quiet);
        if cap.canvas == exact.canvas && cap.window == exact.window {
            assert_eq!(out.unwrap().rows[0].tokens, c.tokens, "{what}");
        }
    }
}

/// What the session removes: a fresh call per block (how the server decoded before sessions)
/// allocates the batch's buffers on every block; the session allocates them once.
#[test]
fn a_fresh_call_per_block_allocates_every_block_and_a_session_once() {
    let (_, engine) = cpu_engine(&fixture("tiny-gqa").join("checkpoint"));
    let cases = goldens_and_infill("tiny-gqa");
    let c =
        cases.iter().find(|c| c.opts.gen_length / c.opts.block_length >= 3 && c.suffix.is_empty()).unwrap();
    let blocks = c.opts.gen_length / c.opts.block_length;
    let per_block = |decode: &mut dyn FnMut(&RowStart) -> Vec<u32>| {
        let mut row = c.row();
        let mut counts = vec![];
        for _ in 0..blocks {
            let before = engine.backend.allocated().0;
            let tokens = decode(&row);
            counts.push(engine.backend.allocated().0 - before);
            row.done = tokens[..row.done.len() + c.opts.block_length].to_vec();
        }
        assert_eq!(row.done, c.tokens, "{}", c.name);
        counts
    };
    let run = RunOptions::default();
    let fresh = per_block(&mut |r| {
        engine.generate_rows(std::slice::from_ref(r), &c.opts, run, 1, &mut Quiet).unwrap().rows[0]
            .tokens
            .clone()
    });
    assert!(fresh.iter().all(|&n| n > 0), "fresh calls allocate each block: {fresh:?}");
    let cap = one_row_capacity(&engine, &cases);
    let before = engine.backend.allocated().0;
    let mut session = Session::new(&engine, cap).unwrap();
    assert!(engine.backend.allocated().0 > before);
    let reused = per_block(&mut |r| {
        session.decode(std::slice::from_ref(r), &c.opts, run, 1, &mut Quiet).unwrap().rows[0].tokens.clone()
    });
    assert!(reused.iter().all(|&n| n == 0), "a session allocates no block: {reused:?}");
}

/// d3LLM's 76 reference cases (its block loop, multi-block decoding with and without the delayed
/// cache) one after another on one session's buffers: token for token, NFE and model calls as
/// its own code, nothing allocated after the session is made.
#[test]
fn the_d3llm_cases_in_turn_on_one_session_allocate_nothing() {
    let (_, engine) = cpu_engine(&fixture("official/checkpoint"));
    let cases = d3llm_cases();
    let cap = Capacity {
        batch: 1,
        canvas: cases.iter().map(|c| c.prompt.len() + c.opts.gen_length).max().unwrap(),
        window: cases.iter().map(|c| c.opts.gen_length).max().unwrap(),
        logprobs: None,
    };
    let mut session = Session::new(&engine, cap).unwrap();
    let allocated = engine.backend.allocated();
    let mut bad = vec![];
    for c in &cases {
        let row = RowStart { prompt: c.prompt.clone(), ..RowStart::default() };
        let out = session.decode(&[row], &c.opts, RunOptions::default(), usize::MAX, &mut Quiet).unwrap();
        let r = &out.rows[0];
        if (&r.tokens, r.nfe, out.forwards) != (&c.tokens, c.nfe, c.model_calls) {
            bad.push(c.name.clone());
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} d3LLM cases differ on a reused session: {bad:?}",
        bad.len(),
        cases.len()
    );
    assert_eq!(engine.backend.allocated(), allocated, "a call on the session allocated");
    let too_long = Capacity { window: cap.window - 1, ..cap };
    let mut small = Session::new(&engine, too_long).unwrap();
    let c = cases
        .iter()
        .find(|c| c.opts.gen_length == cap.window && c.opts.decoder != dllm::decode::Decoder::Blocks);
    if let Some(c) = c {
        let row = RowStart { prompt: c.prompt.clone(), ..RowStart::default() };
        let e = small.decode(&[row], &c.opts, RunOptions::default(), usize::MAX, &mut Quiet).unwrap_err();
        assert!(e.to_string().contains("block window"), "{e}");
    }
}
