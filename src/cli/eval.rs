//! `dllm eval`: the problems, the modes (one, or the paper's table), then `eval` scores and
//! renders them.

use std::io::IsTerminal;

use dllm::backend::Backend;
use dllm::decode::{DecodeOptions, Decoder};
use dllm::eval::{self, datasets, Problem};
use dllm::model::ModelFiles;
use dllm::{Error, Result};

use super::args::EvalArgs;
use super::device::{dispatch, load_engine, open_model, OnBackend};

/// One `eval` run, ready for a backend.
struct Job<'a> {
    args: &'a EvalArgs,
    files: &'a ModelFiles,
    problems: Vec<Problem>,
    shots: Vec<Problem>,
    opts: DecodeOptions,
}

impl OnBackend for Job<'_> {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let (a, opts) = (self.args, &self.opts);
        let engine = load_engine(backend, self.files, self.args.dev.weights.into())?;
        let modes: Vec<(String, DecodeOptions)> = if a.table {
            let modes = eval::table_modes(engine.special.eos);
            modes.iter().map(|m| (m.name.to_string(), m.options(opts))).collect()
        } else {
            let name = match opts.decoder {
                Decoder::Blocks => format!("{} cache, {}", opts.cache.name(), opts.rule),
                d => format!("{d}, {}", opts.rule),
            };
            vec![(name, opts.clone())]
        };
        eval::print_header(self.problems.len(), self.shots.len(), opts, a.batch_size, &engine.backend.name());
        let tty = std::io::stderr().is_terminal();
        let how = eval::Prompting { shots: &self.shots, chat: !a.decode.no_chat, batch_size: a.batch_size };
        let mut base_rate = None;
        let mut jsonl = String::new();
        for (name, o) in &modes {
            let progress = |d, n| {
                if tty {
                    eprint!("\r{name}: {d}/{n}   ");
                }
            };
            let r = eval::run(&engine, &self.files.tokenizer, &self.problems, how, o, progress)?;
            if tty {
                eprint!("\r{:60}\r", "");
            }
            eval::print_row(name, &r, *base_rate.get_or_insert(r.strict_tok_per_s()));
            jsonl.push_str(&eval::samples_jsonl(&self.problems, name, &r));
        }
        if let Some(path) = &a.out {
            std::fs::write(path, jsonl).map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    }
}

pub(crate) fn run(a: EvalArgs) -> Result<()> {
    let files = open_model(&a.model)?;
    let opts = a.decode.options(&files)?;
    let mut problems = match &a.data {
        Some(p) => eval::read_jsonl(p)?,
        None => datasets::test_set()?,
    };
    if let Some(n) = a.limit {
        problems.truncate(n);
    }
    let shots = match (a.shots, &a.fewshot) {
        (0, _) => vec![],
        (n, Some(p)) => eval::read_jsonl(p)?.into_iter().take(n).collect(),
        (n, None) => datasets::fewshot_set()?.into_iter().take(n).collect(),
    };
    if shots.len() < a.shots {
        return Err(Error::options(format!(
            "--shots {}: only {} few-shot examples available",
            a.shots,
            shots.len()
        )));
    }
    if a.batch_size == 0 {
        return Err(Error::options("--batch-size must be at least 1"));
    }
    dispatch(&a.dev, files.dtype, Job { args: &a, files: &files, problems, shots, opts })
}
