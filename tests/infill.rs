//! Infilling (issue 19) on the CPU backend: the canvas is prompt | masked middle | fixed suffix,
//! blocks cover the middle only. Golden parity with the NumPy reference extended with a suffix
//! (tools/make_tiny.py --infill → goldens_infill.json) for LLaDA and Dream in every cache mode and
//! rule; the suffix never changes; batches mixing suffix lengths, and rows with and without a
//! suffix, equal each row alone; the refusals.

mod common;
use common::*;

use dllm::cache::CacheMode;
use dllm::decode::{DecodeOptions, Decoder, MultiBlock, RowStart, Rule, RunOptions};

fn infill(name: &str) -> Vec<Case> {
    cases(&fixture(name).join("goldens_infill.json"), "nfe")
}

fn plain(name: &str) -> Vec<Case> {
    cases(&fixture(name).join("goldens.json"), "nfe")
}

#[test]
fn infill_goldens_token_for_token_llada_and_dream() {
    for name in ["tiny-gqa", "tiny-dream"] {
        let cases = infill(name);
        assert!(cases.len() >= 27, "{name}: {} cases", cases.len());
        for cache in [CacheMode::None, CacheMode::Prefix, CacheMode::Dual] {
            assert!(cases.iter().filter(|c| c.opts.cache == cache).count() >= 6, "{name} {cache:?}");
        }
        assert!(cases.iter().all(|c| !c.suffix.is_empty()), "{name}: a case without a suffix");
        let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
        let bad = mismatches(&engine, &cases);
        assert!(bad.is_empty(), "{name}: {} of {} cases differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
    }
}

/// The suffix is attended to: with it, the middle differs from the plain golden of the same
/// prompt and mode (a suffix that changed nothing would mean it was not a key).
#[test]
fn the_suffix_changes_the_middle() {
    for name in ["tiny-gqa", "tiny-dream"] {
        let plain = plain(name);
        let infill = infill(name);
        let changed =
            infill.iter().filter(|c| plain.iter().any(|p| p.name == c.name && p.tokens != c.tokens)).count();
        assert!(changed * 2 > infill.len(), "{name}: only {changed} of {} middles differ", infill.len());
    }
}

#[test]
fn infill_batches_equal_each_row_alone() {
    for name in ["tiny-gqa", "tiny-dream"] {
        let cases = infill(name);
        let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
        let lens: std::collections::BTreeSet<usize> = cases.iter().map(|c| c.suffix.len()).collect();
        assert!(lens.len() == 3, "{name}: suffix lengths {lens:?} should differ per prompt");
        assert!(assert_batches_equal_alone(&engine, &cases, name) >= 9, "{name}");
    }
}

/// Rows with and without a suffix in one batch: p0 and p2 infill, p1 plain, every mode.
#[test]
fn batches_mixing_infill_and_plain_rows_equal_each_row_alone() {
    for name in ["tiny-gqa", "tiny-dream"] {
        let (infill, plain) = (infill(name), plain(name));
        let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
        let mut modes = 0;
        for p0 in infill.iter().filter(|c| c.name.starts_with("p0/")) {
            let mode = &p0.name[3..];
            let pick = |set: &[Case], p: &str| set.iter().find(|c| c.name == format!("{p}/{mode}")).cloned();
            let group = [pick(&infill, "p0"), pick(&plain, "p1"), pick(&infill, "p2")];
            let group: Vec<Case> = group.into_iter().map(|c| c.expect(mode)).collect();
            let rows: Vec<RowStart> = group.iter().map(Case::row).collect();
            for (o, c) in run_rows(&engine, &rows, &p0.opts).iter().zip(&group) {
                assert_eq!(
                    (&o.tokens, o.nfe, &o.commits),
                    (&c.tokens, c.nfe, &c.commits),
                    "{name} {}",
                    c.name
                );
                assert_eq!(o.suffix, c.suffix, "{name} {}", c.name);
            }
            modes += 1;
        }
        assert!(modes >= 9, "{name}: {modes} modes");
    }
}

/// The continuous batch of `dllm serve` (rows joining at block boundaries, resumed one block at
/// a time) with suffixes: every row equals its infill golden.
#[test]
fn infill_rows_joining_at_block_boundaries_equal_each_row_alone() {
    for name in ["tiny-gqa", "tiny-dream"] {
        let (_, engine) = cpu_engine(&fixture(name).join("checkpoint"));
        assert!(assert_joining_equals_alone(&engine, &infill(name), name) >= 6, "{name}");
    }
}

#[test]
fn bad_suffixes_are_refused_by_name() {
    let (files, engine) = cpu_engine(&fixture("tiny-gqa").join("checkpoint"));
    let opts = DecodeOptions { gen_length: 64, steps: 64, ..DecodeOptions::default() };
    let row = |suffix: Vec<u32>| RowStart { prompt: vec![72, 101], suffix, ..RowStart::default() };
    let run = |rows: &[RowStart], o: &DecodeOptions| {
        engine.generate_rows(rows, o, RunOptions::default(), usize::MAX, &mut dllm::decode::Quiet)
    };
    let mask = files.tokenizer.special.mask;
    let e = run(&[row(vec![72, mask])], &opts).unwrap_err().to_string();
    assert!(e.contains("suffix") && e.contains("mask"), "{e}");
    let e = run(&[row(vec![72, 100_000])], &opts).unwrap_err().to_string();
    assert!(e.contains("suffix") && e.contains("vocabulary"), "{e}");
    let long = vec![72; files.config.max_seq_len];
    let e = run(&[row(long)], &opts).unwrap_err().to_string();
    assert!(e.contains("suffix") && e.contains("max_sequence_length"), "{e}");
    let mb = DecodeOptions {
        cache: CacheMode::None,
        rule: Rule::Entropy(0.5),
        decoder: Decoder::MultiBlock(MultiBlock {
            add: 0.1,
            activate: 0.95,
            cache: None,
            early_stop: None,
            max_per_forward: None,
        }),
        ..opts
    };
    let e = run(&[row(vec![72])], &mb).unwrap_err().to_string();
    assert!(e.contains("suffix") && e.contains("multi-block"), "{e}");
}
