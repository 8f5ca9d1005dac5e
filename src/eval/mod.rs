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
    pub name: &'static str,
    pub cache: CacheMode,
    pub rule: Rule,
    pub decoder: Decoder,
}

impl Mode {
    /// `base` (lengths, steps, temperature, seed) decoded this way.
    pub fn options(&self, base: &DecodeOptions) -> DecodeOptions {
        DecodeOptions { cache: self.cache, rule: self.rule, decoder: self.decoder, ..base.clone() }
    }
}

/// The four configurations of the Fast-dLLM table, DualCache and the factor rule, then d3LLM's
/// decoders at their published settings (early stop on `eos`, the checkpoint's EOS).
pub fn table_modes(eos: u32) -> Vec<Mode> {
    let fast = |name, cache, rule| Mode { name, cache, rule, decoder: Decoder::Blocks };
    let mb = |cache| {
        Decoder::MultiBlock(MultiBlock {
            add: 0.1,
            activate: 0.95,
            cache,
            early_stop: Some(eos),
            max_per_forward: None,
        })
    };
    let d3 =
        |name, cache| Mode { name, cache: CacheMode::None, rule: Rule::Entropy(0.5), decoder: mb(cache) };
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
