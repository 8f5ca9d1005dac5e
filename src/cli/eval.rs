//! `dllm eval`: the problems, the modes (one, or the paper's table), then `eval` scores and
//! renders them.

use dllm::backend::Backend;
use dllm::decode::{DecodeOptions, Decoder};
use dllm::eval::{self, datasets, Mode, Problem};
use dllm::model::ModelFiles;
use dllm::{Error, Result};
use serde_json::json;

use super::args::EvalArgs;
use super::device::{dispatch, load_engine, open_model, progress_bar, OnBackend};

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
        let modes = self.modes(&engine.config, engine.special.eos);
        eval::print_header(self.problems.len(), self.shots.len(), opts, a.batch_size, &engine.backend.name());
        let how = eval::Prompting { shots: &self.shots, chat: !a.decode.no_chat, batch_size: a.batch_size };
        let mut base_rate = None;
        let (mut jsonl, mut points) = (String::new(), vec![]);
        for m in &modes {
            let name = &m.name;
            let bar = progress_bar(self.problems.len(), name, "problems");
            let progress = |d: usize, _| bar.set_position(d as u64);
            let r =
                eval::run(&engine, &self.files.tokenizer, &self.problems, how, &m.options(opts), progress)?;
            bar.finish_and_clear();
            eval::print_row(name, &r, *base_rate.get_or_insert(r.strict_tok_per_s()));
            jsonl.push_str(&eval::samples_jsonl(&self.problems, name, &r));
            points.push(eval::sweep_point(m, &r));
        }
        if let Some(path) = &a.out {
            std::fs::write(path, jsonl).map_err(|e| Error::io(path, e))?;
        }
        if let Some(path) = &a.sweep {
            let v = json!({
                "model": a.model.as_ref().map_or_else(|| dllm::model::embedded::NAME.to_string(), |d| d.display().to_string()),
                "device": engine.backend.name(), "weights": if engine.config.quantization.is_some() { "fp8" } else { "checkpoint" },
                "problems": self.problems.len(), "gen_length": opts.gen_length, "block_length": opts.block_length,
                "batch_size": a.batch_size, "points": points,
            });
            std::fs::write(path, serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
                .map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    }
}

impl Job<'_> {
    /// What runs: the sweep (modes the model refuses skipped, saying so), the table, or the one
    /// mode of the flags.
    fn modes(&self, cfg: &dllm::model::ModelConfig, eos: u32) -> Vec<Mode> {
        let (a, opts) = (self.args, &self.opts);
        if a.sweep.is_some() {
            let (ok, refused): (Vec<Mode>, Vec<Mode>) = eval::sweep_modes(opts.gen_length)
                .into_iter()
                .partition(|m| m.options(opts).validate_options(cfg).is_ok());
            for m in refused {
                eprintln!("sweep: skipping {} (not available for this model)", m.name);
            }
            return ok;
        }
        if a.table {
            return eval::table_modes(eos);
        }
        let name = match opts.decoder {
            Decoder::Blocks => format!("{} cache, {}", opts.cache.name(), opts.rule),
            d => format!("{d}, {}", opts.rule),
        };
        vec![Mode { name, cache: opts.cache, rule: opts.rule, decoder: opts.decoder, steps: None }]
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
