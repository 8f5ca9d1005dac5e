//! `dllm eval`: exact-match accuracy on a GSM8K-format JSONL file ([`gsm8k`]), with the decoding
//! speed beside it, per decoding mode, and its table. Works on any checkpoint: with
//! LLaDA-8B-Instruct and the real GSM8K test file it measures what the Fast-dLLM paper's table
//! measures (spec §7).

pub mod datasets;
pub mod gsm8k;

use std::time::Instant;

use serde_json::json;

pub use gsm8k::{extract_answer, parse_jsonl, read_jsonl, user_message, Problem};

use crate::backend::Backend;
use crate::cache::CacheMode;
use crate::decode::{DecodeOptions, Decoder, DelayedCache, Engine, MultiBlock, Rule};
use crate::error::Result;
use crate::model::Tokenizer;

/// A decoding configuration of the table (spec §7; d3LLM's decoders, d3llm spec §1.2).
#[derive(Clone, Debug)]
pub struct Mode {
    pub name: String,
    pub cache: CacheMode,
    pub rule: Rule,
    pub decoder: Decoder,
    /// Total steps for the quota rule (None: the base options').
    pub steps: Option<usize>,
}

impl Mode {
    /// `base` (lengths, steps, temperature, seed) decoded this way.
    pub fn options(&self, base: &DecodeOptions) -> DecodeOptions {
        let steps = self.steps.unwrap_or(base.steps);
        DecodeOptions { cache: self.cache, rule: self.rule, decoder: self.decoder, steps, ..base.clone() }
    }
}

/// The four configurations of the Fast-dLLM table, DualCache and the factor rule, then d3LLM's
/// decoders at their published settings (early stop on `eos`, the checkpoint's EOS).
pub fn table_modes(eos: u32) -> Vec<Mode> {
    let fast = |name: &str, cache, rule| Mode {
        name: name.into(),
        cache,
        rule,
        decoder: Decoder::Blocks,
        steps: None,
    };
    let mb = |cache| {
        Decoder::MultiBlock(MultiBlock {
            add: 0.1,
            activate: 0.95,
            cache,
            early_stop: Some(eos),
            max_per_forward: None,
        })
    };
    let d3 = |name: &str, cache| Mode {
        name: name.into(),
        cache: CacheMode::None,
        rule: Rule::Entropy(0.5),
        decoder: mb(cache),
        steps: None,
    };
    vec![
        fast("baseline (no cache, 1 token/step)", CacheMode::None, Rule::Quota),
        fast("+ PrefixCache", CacheMode::Prefix, Rule::Quota),
        fast("+ parallel (threshold 0.9)", CacheMode::None, Rule::Threshold(0.9)),
        fast("Fast-dLLM (PrefixCache + threshold 0.9)", CacheMode::Prefix, Rule::Threshold(0.9)),
        fast("DualCache + threshold 0.9", CacheMode::Dual, Rule::Threshold(0.9)),
        fast("DualCache + factor 1.0", CacheMode::Dual, Rule::Factor(1.0)),
        fast("dParallel (entropy 0.5, one block at a time)", CacheMode::None, Rule::Entropy(0.5)),
        d3("d3LLM multi-block (entropy 0.5, early stop)", None),
        d3("d3LLM multi-block + delayed cache (2, refresh 3)", Some(DelayedCache { delay: 2, refresh: 3 })),
    ]
}

/// Thresholds, factors and quota tokens per step of `dllm eval --sweep` (issue 20).
pub const SWEEP_THRESHOLDS: [f64; 6] = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99];
pub const SWEEP_FACTORS: [f64; 4] = [0.5, 1.0, 1.5, 2.0];
pub const SWEEP_QUOTA_TOKENS: [usize; 2] = [4, 8];

/// The accuracy-against-speed sweep: every cache mode with the threshold rule at
/// [`SWEEP_THRESHOLDS`], the factor rule at [`SWEEP_FACTORS`] and the quota rule committing
/// [`SWEEP_QUOTA_TOKENS`] tokens a step (`gen` / n steps), after the baseline (no cache, 1 token
/// a step), the pictures' reference point.
pub fn sweep_modes(gen: usize) -> Vec<Mode> {
    // the baseline first: the table's speedups are over it
    let mut modes = vec![Mode {
        name: "baseline (no cache, 1 token/step)".into(),
        cache: CacheMode::None,
        rule: Rule::Quota,
        decoder: Decoder::Blocks,
        steps: Some(gen),
    }];
    for cache in [CacheMode::None, CacheMode::Prefix, CacheMode::Dual] {
        let mode = |rule, steps| Mode {
            name: match steps {
                Some(s) => format!("{} cache, quota {} tokens/step", cache.name(), gen / s),
                None => format!("{} cache, {rule}", cache.name()),
            },
            cache,
            rule,
            decoder: Decoder::Blocks,
            steps,
        };
        modes.extend(SWEEP_THRESHOLDS.map(|t| mode(Rule::Threshold(t), None)));
        modes.extend(SWEEP_FACTORS.map(|f| mode(Rule::Factor(f), None)));
        modes.extend(SWEEP_QUOTA_TOKENS.map(|n| mode(Rule::Quota, Some(gen / n))));
    }
    modes
}

/// One sweep point as JSON (what `tools/plot.py` draws).
pub fn sweep_point(mode: &Mode, r: &Report) -> serde_json::Value {
    let (rule, value) = match mode.rule {
        Rule::Threshold(t) => ("threshold", t),
        Rule::Factor(f) => ("factor", f),
        Rule::Quota => {
            ("quota", r.generated() as f64 / r.samples.len().max(1) as f64 / mode.steps.unwrap_or(1) as f64)
        }
        Rule::Entropy(h) => ("entropy", h),
    };
    json!({
        "name": mode.name, "cache": mode.cache.name(), "rule": rule, "value": value,
        "accuracy": r.accuracy(), "problems": r.samples.len(), "nfe": r.nfe(), "tpf": r.tpf(),
        "strict_tok_per_s": r.strict_tok_per_s(), "wall_s": r.wall_s,
    })
}

/// One sample's outcome.
#[derive(Clone, Debug)]
pub struct Sample {
    pub index: usize,
    pub target: Option<String>,
    pub prediction: Option<String>,
    pub text: String,
    pub nfe: usize,
    pub generated: usize,
    pub strict: usize,
}

impl Sample {
    pub fn correct(&self) -> bool {
        self.prediction.is_some() && self.prediction == self.target
    }
}

/// A whole run of one mode.
#[derive(Clone, Debug)]
pub struct Report {
    pub samples: Vec<Sample>,
    pub wall_s: f64,
}

impl Report {
    pub fn accuracy(&self) -> f64 {
        self.samples.iter().filter(|s| s.correct()).count() as f64 / self.samples.len().max(1) as f64
    }
    pub fn nfe(&self) -> f64 {
        self.samples.iter().map(|s| s.nfe).sum::<usize>() as f64 / self.samples.len().max(1) as f64
    }
    pub fn generated(&self) -> usize {
        self.samples.iter().map(|s| s.generated).sum()
    }
    /// Tokens per forward: generated tokens over forwards (spec §1).
    pub fn tpf(&self) -> f64 {
        self.generated() as f64 / self.samples.iter().map(|s| s.nfe).sum::<usize>().max(1) as f64
    }
    /// Strict tok/s: tokens up to and including the first end token, over the wall time (spec §1).
    pub fn strict_tok_per_s(&self) -> f64 {
        self.samples.iter().map(|s| s.strict).sum::<usize>() as f64 / self.wall_s.max(1e-9)
    }
}

/// How problems become prompts and batches.
#[derive(Clone, Copy, Debug)]
pub struct Prompting<'a> {
    /// Worked examples put before each question.
    pub shots: &'a [Problem],
    /// Render with the checkpoint's chat template (else the text as is).
    pub chat: bool,
    /// Problems decoded together as one batch.
    pub batch_size: usize,
}

/// Decode every problem (in batches) with `opts` and score it.
pub fn run<B: Backend>(
    engine: &Engine<B>,
    tok: &Tokenizer,
    problems: &[Problem],
    how: Prompting<'_>,
    opts: &DecodeOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report> {
    let Prompting { shots, chat, batch_size } = how;
    let t0 = Instant::now();
    let mut samples = Vec::with_capacity(problems.len());
    for (c, chunk) in problems.chunks(batch_size.max(1)).enumerate() {
        let prompts = chunk
            .iter()
            .map(|p| {
                let msg = user_message(p, shots);
                if chat {
                    tok.encode_chat(&msg)
                } else {
                    tok.encode_prompt(&msg)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let out = engine.generate(&prompts, opts)?;
        for (i, (p, r)) in chunk.iter().zip(&out.rows).enumerate() {
            let text = tok.decode(tok.cut_at_stop(&r.tokens));
            samples.push(Sample {
                index: c * batch_size + i,
                target: extract_answer(&p.answer),
                prediction: extract_answer(&text),
                text,
                nfe: r.nfe,
                generated: r.tokens.len(),
                strict: tok.special.strict_len(&r.tokens),
            });
        }
        progress(samples.len(), problems.len());
    }
    Ok(Report { samples, wall_s: t0.elapsed().as_secs_f64() })
}

/// Every sample as one JSON object per line, for inspection.
pub fn samples_jsonl(problems: &[Problem], mode: &str, r: &Report) -> String {
    let mut s = String::new();
    for x in &r.samples {
        let p = &problems[x.index];
        let v = json!({
            "mode": mode, "index": x.index, "question": p.question, "target": x.target,
            "prediction": x.prediction, "correct": x.correct(), "output": x.text,
            "nfe": x.nfe, "generated_tokens": x.generated,
        });
        s.push_str(&v.to_string());
        s.push('\n');
    }
    s
}

/// The table's header: what was run, then the column names.
pub fn print_header(problems: usize, shots: usize, opts: &DecodeOptions, batch_size: usize, device: &str) {
    println!(
        "dllm eval: {problems} problems, {shots}-shot, gen {}, block {}, steps {} (quota modes), batch {batch_size}, on {device}",
        opts.gen_length, opts.block_length, opts.steps
    );
    println!();
    println!("| configuration | accuracy | NFE / problem | TPF | strict tok/s | speedup | wall s |");
    println!("|---|---|---|---|---|---|---|");
}

/// One mode's row; `base_rate` is the first mode's strict tok/s (the speedup's reference).
pub fn print_row(name: &str, r: &Report, base_rate: f64) {
    let rate = r.strict_tok_per_s();
    println!(
        "| {name} | {:.1}% ({}/{}) | {:.1} | {:.2} | {:.1} | {:.1}× | {:.1} |",
        100.0 * r.accuracy(),
        r.samples.iter().filter(|s| s.correct()).count(),
        r.samples.len(),
        r.nfe(),
        r.tpf(),
        rate,
        rate / base_rate,
        r.wall_s
    );
}
