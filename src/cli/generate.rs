//! `dllm generate`: prompts → engine → the answers, with NFE, TPF and strict tok/s on stderr.

use serde_json::json;

use dllm::backend::Backend;
use dllm::decode::{DecodeOptions, Output, Quiet, RowStart, RunOptions};
use dllm::model::ModelFiles;
use dllm::serve::text::answer;
use dllm::{Error, Result};

use super::args::GenerateArgs;
use super::device::{dispatch, load_engine, open_model, OnBackend};
use super::visual::Visual;

/// One `generate` run, ready for a backend.
struct Job<'a> {
    args: &'a GenerateArgs,
    files: &'a ModelFiles,
    rows: Vec<RowStart>,
    opts: DecodeOptions,
    run: RunOptions,
}

impl OnBackend for Job<'_> {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let engine = load_engine(backend, self.files, self.args.dev.weights.into())?;
        let out = if self.args.visual {
            let (tok, o) = (&self.files.tokenizer, &self.opts);
            let mut view = Visual::new(tok, self.rows.len(), o.gen_length, o.block_length);
            engine.decode_rows(&self.rows, o, self.run, &mut view)?
        } else {
            engine.decode_rows(&self.rows, &self.opts, self.run, &mut Quiet)?
        };
        report(self.args, self.files, &self.opts, &out);
        Ok(())
    }
}

pub(crate) fn run(a: GenerateArgs) -> Result<()> {
    let files = open_model(&a.model)?;
    let opts = a.decode.options(&files)?;
    if a.decode.steps.is_some() && !opts.uses_steps(files.config.arch) {
        return Err(Error::options(format!(
            "--steps has no effect with the {} rule: steps apply to --quota (and to Dream's --cache none --threshold)",
            opts.rule
        )));
    }
    if a.decode.seed.is_none() && opts.temperature > 0.0 {
        eprintln!("seed {} (drawn; --seed {} reproduces this run)", opts.seed, opts.seed);
    }
    let tok = &files.tokenizer;
    let prompts = a
        .prompt
        .iter()
        .map(|p| if a.decode.no_chat { tok.encode_prompt(p) } else { tok.encode_chat(p) })
        .collect::<Result<Vec<_>>>()?;
    opts.validate(&files.config, &prompts)?;
    let suffix = match &a.suffix {
        Some(s) => tok.encode_prompt(s).map_err(|e| Error::options(format!("--suffix: {e}")))?,
        None => vec![],
    };
    let rows =
        prompts.into_iter().map(|prompt| RowStart { prompt, suffix: suffix.clone(), ..RowStart::default() });
    let run = a.decode.run_options(a.trace);
    dispatch(&a.dev, files.dtype, Job { args: &a, files: &files, rows: rows.collect(), opts, run })
}

/// The answers (stdout: text, or one JSON object with `--json`), the trace and the speed line.
fn report(a: &GenerateArgs, files: &ModelFiles, opts: &DecodeOptions, out: &Output) {
    let tok = &files.tokenizer;
    let max_tokens = a.max_tokens.map(|n| n as usize);
    let answers: Vec<_> = out.rows.iter().map(|r| answer(tok, &r.tokens, max_tokens, &[])).collect();
    if a.trace {
        for (i, t) in out.trace.iter().enumerate() {
            eprintln!(
                "forward {i:3} block {} {} window [{}, {}) committed {:?}",
                t.block,
                t.kind,
                t.window.start,
                t.window.start + t.window.len,
                t.committed
            );
        }
    }
    if a.json {
        println!("{}", json_report(files, opts, out, &answers));
    } else {
        for (i, (text, _, _)) in answers.iter().enumerate() {
            if out.rows.len() > 1 {
                println!("--- [{i}]");
            }
            println!("{text}");
        }
    }
    let wall = out.elapsed.as_secs_f64();
    let strict: usize = out.rows.iter().map(|r| tok.special.strict_len(&r.tokens)).sum();
    let generated: usize = out.rows.iter().map(|r| r.tokens.len()).sum();
    let nfe: usize = out.rows.iter().map(|r| r.nfe).sum();
    eprintln!(
        "NFE {nfe} | TPF {:.2} | generated {generated} tokens ({strict} up to EOS) | wall {:.3} s | strict {:.1} tok/s | {:.2} ms/forward",
        generated as f64 / nfe.max(1) as f64,
        wall,
        strict as f64 / wall,
        1e3 * wall / out.forwards.max(1) as f64,
    );
}

/// `--json`: every row's ids, text, answer length and finish, NFE, forward kinds and commits;
/// the options; the trace; each forward's time.
fn json_report(
    files: &ModelFiles,
    opts: &DecodeOptions,
    out: &Output,
    answers: &[(String, usize, Option<&str>)],
) -> serde_json::Value {
    let rows: Vec<_> = out
        .rows
        .iter()
        .zip(answers)
        .map(|(r, (text, n, why))| {
            json!({
                "prompt_ids": r.prompt,
                "generated_ids": r.tokens,
                "suffix_ids": r.suffix,
                "text": text,
                "answer_tokens": n,
                "finish_reason": why.unwrap_or("length"),
                "nfe": r.nfe,
                "forward_kinds": r.kinds,
                "commits_per_forward": r.commits,
            })
        })
        .collect();
    let trace: Vec<_> = out
        .trace
        .iter()
        .map(|t| json!({"block": t.block, "kind": t.kind.to_string(), "window": [t.window.start, t.window.len], "committed": t.committed}))
        .collect();
    let wall = out.elapsed.as_secs_f64();
    let strict: usize = out.rows.iter().map(|r| files.tokenizer.special.strict_len(&r.tokens)).sum();
    json!({
        "rows": rows,
        "forwards": out.forwards,
        "wall_s": wall,
        "strict_tokens": strict,
        "strict_tok_per_s": strict as f64 / wall,
        "options": {
            "gen_length": opts.gen_length, "block_length": opts.block_length,
            "steps": opts.steps, "cache": opts.cache.name(), "rule": opts.rule.to_string(),
            "temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p,
            "seed": opts.seed, "early_exit": opts.early_exit,
            "decoder": opts.decoder.to_string(),
        },
        "trace": trace,
        "forward_ms": out.forward_ms.iter().map(|f| json!({"kind": f.kind.to_string(), "ms": f.ms})).collect::<Vec<_>>(),
    })
}
