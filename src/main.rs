//! `dllm`: the command line. `dllm generate` loads a Hugging Face checkpoint directory and decodes
//! with Fast-dLLM; errors are printed without a backtrace and exit non-zero.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use dllm::backend::cpu::Cpu;
#[cfg(feature = "cuda")]
use dllm::backend::cuda::Cuda;
use dllm::backend::{Backend, DType, Rule};
use dllm::cache::CacheMode;
use dllm::decode::{fresh_seed, DecodeOptions, Engine, Output};
use dllm::model::embedded;
use dllm::model::ModelFiles;
use dllm::{bench, eval};
use dllm::{Error, Result};

#[derive(Parser)]
#[command(name = "dllm", version, about = "Diffusion LLMs with Fast-dLLM decoding (LLaDA)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an answer to one or more prompts (several prompts run as one batch).
    Generate(GenerateArgs),
    /// Exact-match accuracy on a GSM8K-format JSONL file, with speed, per decoding mode.
    Eval(EvalArgs),
    /// Benchmark workload S1 on seeded random weights of a real model's shape, beside floors.
    Bench(BenchArgs),
    /// An OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /v1/models, /health).
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Checkpoint directory. Default: the small arithmetic model embedded in dllm.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on. Only loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Most requests decoded together as one batch.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most requests waiting for the engine; one more is answered 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long)]
    api_key: Option<String>,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    body_limit: usize,
    /// The canvas every request decodes (generated positions; a request may ask for another with
    /// `gen_length`). `max_tokens` only cuts the answer. Default: the checkpoint's
    /// generation_config.json `max_new_tokens` rounded up to whole blocks, else 128.
    #[arg(long)]
    gen_length: Option<usize>,
    #[command(flatten)]
    dev: DeviceArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DTypeArg {
    Bf16,
    F32,
}

#[derive(Args)]
struct BenchArgs {
    /// Preset shape of the synthetic weights: llada-8b (spec §2), dream-7b (spec §3) or tiny.
    #[arg(long, value_name = "PRESET")]
    synthetic: String,
    /// Divide the preset's width (heads), depth, MLP and vocabulary by this power of two.
    /// Default: 1 on a GPU, 16 on the CPU.
    #[arg(long)]
    scale: Option<usize>,
    /// Divide S1's prompt, gen length and steps by this. Default: 1 on a GPU, 4 on the CPU.
    #[arg(long)]
    workload_scale: Option<usize>,
    /// Comma-separated S1 variants (s1-base, s1-prefix, s1-dual, s1-dual-b4, s1-dual-b16).
    #[arg(long, value_delimiter = ',', default_value = "s1-base,s1-prefix,s1-dual,s1-dual-b4,s1-dual-b16")]
    variants: Vec<String>,
    /// Add a per-op table (device marks around every op: total ms, %, GB/s, TFLOP/s, floor).
    #[arg(long)]
    profile: bool,
    /// Run every step eagerly instead of replaying captured CUDA graphs.
    #[arg(long)]
    no_graphs: bool,
    /// Also write everything as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Activation and weight dtype of the synthetic model.
    #[arg(long, value_enum, default_value_t = DTypeArg::Bf16)]
    dtype: DTypeArg,
    #[command(flatten)]
    dev: DeviceArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CacheArg {
    /// Baseline: every step forwards the whole canvas.
    None,
    /// PrefixCache: reuse the prompt and finished blocks' K/V within a block.
    Prefix,
    /// DualCache: reuse prefix and suffix K/V; forward only the block.
    Dual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// CUDA when this build has it and a GPU works, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// How to decode (shared by `generate` and `eval`).
#[derive(Args)]
struct DecodeArgs {
    /// Generated positions (a multiple of --block-length). Default: the checkpoint's
    /// generation_config.json `max_new_tokens` rounded up to whole blocks, else 128.
    #[arg(long)]
    gen_length: Option<usize>,
    /// Positions per block, decoded left to right. Dream with --cache none has no blocks (the
    /// whole generation is one window) and ignores it.
    #[arg(long, default_value_t = 32)]
    block_length: usize,
    /// Steps for the quota rule (a multiple of the number of blocks). Default: gen-length.
    /// Dream: the steps of its entropy schedule (per block: steps / blocks, at least 2; with
    /// --cache none: exactly this many forwards), and with --cache none --threshold the nominal
    /// steps of its budgeted threshold (gen-length must be a multiple).
    #[arg(long)]
    steps: Option<usize>,
    /// KV cache: none (baseline), prefix or dual.
    #[arg(long, value_enum, default_value_t = CacheArg::Dual)]
    cache: CacheArg,
    /// Commit every masked token with confidence ≥ T (and always the most confident one).
    /// The default rule, with T = 0.9. Dream compares its bf16 confidences with bf16(T); with
    /// --cache none it commits at most the step's budget (spec §3).
    #[arg(long, conflicts_with_all = ["factor", "quota"])]
    threshold: Option<f64>,
    /// Commit by the factor rule: the n-th most confident passes if c ≥ 1 − F/(n+1). LLaDA only.
    #[arg(long, conflicts_with = "quota")]
    factor: Option<f64>,
    /// Commit a fixed quota per step (LLaDA's low-confidence schedule over --steps). Dream: its
    /// entropy schedule (the most certain positions by negative entropy, Dream's timestep rule).
    #[arg(long)]
    quota: bool,
    /// Sampling temperature; 0 is greedy (the only choice for Dream so far).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Seed of the sampling noise (with --temperature > 0). Default: a fresh one, printed so
    /// that the run can be reproduced.
    #[arg(long)]
    seed: Option<u64>,
    /// Use the prompt as is, without the chat template.
    #[arg(long)]
    no_chat: bool,
    /// Stop a row once a whole block of it is end-of-sequence tokens.
    #[arg(long)]
    early_exit: bool,
    /// Run every step eagerly instead of replaying captured CUDA graphs.
    #[arg(long)]
    no_graphs: bool,
}

/// Where to run.
#[derive(Args)]
struct DeviceArgs {
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct GenerateArgs {
    /// Checkpoint directory as Hugging Face ships it (config.json, *.safetensors, tokenizer.json).
    /// Default: the small arithmetic model embedded in dllm.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The prompt. Repeat to decode several prompts as one batch.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    #[command(flatten)]
    decode: DecodeArgs,
    #[command(flatten)]
    dev: DeviceArgs,
    /// Print one JSON object (prompt and generated ids, text, NFE, commits per forward) instead
    /// of the answer text.
    #[arg(long)]
    json: bool,
    /// Print what every forward committed to stderr (and into --json).
    #[arg(long)]
    trace: bool,
    /// Cut each answer after N tokens. The canvas (--gen-length) is decoded whole either way: for
    /// a diffusion model its length is part of the decoding, so this never changes the tokens.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_tokens: Option<u64>,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint directory. Default: the small arithmetic model embedded in dllm.
    #[arg(long)]
    model: Option<PathBuf>,
    /// GSM8K-format JSONL (`question`, `answer` ending in `#### N`). Default: the embedded
    /// model's 500 held-out problems.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Few-shot examples to put before each question, taken from --fewshot.
    #[arg(long, default_value_t = 0)]
    shots: usize,
    /// JSONL of few-shot examples (same format). Default with --shots: the embedded set.
    #[arg(long)]
    fewshot: Option<PathBuf>,
    /// Evaluate only the first N problems.
    #[arg(long)]
    limit: Option<usize>,
    /// Problems decoded together as one batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Run the paper's configurations (baseline, +PrefixCache, +parallel, Fast-dLLM, DualCache,
    /// factor) and print the accuracy / tok/s / speedup / NFE table; --cache and the rule flags
    /// are then ignored.
    #[arg(long)]
    table: bool,
    /// Write every sample (question, target, prediction, output, NFE) as JSONL here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    decode: DecodeArgs,
    #[command(flatten)]
    dev: DeviceArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Eval(args) => eval(args),
        Command::Bench(args) => bench(args),
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The canvas when none is asked for: the checkpoint's `max_new_tokens` rounded up to whole
/// blocks of `block_length`, else 128.
fn default_gen_length(files: &ModelFiles, block_length: usize) -> usize {
    let bl = block_length.max(1);
    files.max_new_tokens.map_or(128, |n| n.div_ceil(bl) * bl)
}

fn decode_options(a: &DecodeArgs, files: &ModelFiles) -> DecodeOptions {
    let rule = match (a.threshold, a.factor, a.quota) {
        (_, _, true) => Rule::Quota,
        (_, Some(f), _) => Rule::Factor(f),
        (Some(t), _, _) => Rule::Threshold(t),
        (None, None, false) => Rule::Threshold(0.9),
    };
    let gen_length = a.gen_length.unwrap_or_else(|| default_gen_length(files, a.block_length));
    DecodeOptions {
        gen_length,
        block_length: a.block_length,
        steps: a.steps.unwrap_or(gen_length),
        cache: match a.cache {
            CacheArg::None => CacheMode::None,
            CacheArg::Prefix => CacheMode::Prefix,
            CacheArg::Dual => CacheMode::Dual,
        },
        rule,
        temperature: a.temperature,
        // greedy decoding draws no noise: a seed only matters (and is only drawn) when sampling
        seed: a.seed.unwrap_or_else(|| if a.temperature > 0.0 { fresh_seed() } else { 0 }),
        early_exit: a.early_exit,
        trace: false,
        cuda_graphs: !a.no_graphs,
        profile: false,
    }
}

/// Work that runs on whichever backend `--device` picks.
trait OnBackend {
    fn run<B: Backend>(self, backend: B) -> Result<()>;
}

/// `auto`: CUDA when it works (saying why not otherwise), else the CPU.
fn dispatch(dev: &DeviceArgs, dtype: DType, work: impl OnBackend) -> Result<()> {
    if dev.threads == Some(0) {
        return Err(Error::options("--threads must be at least 1"));
    }
    let cpu = || Cpu::new(dtype, dev.threads);
    match dev.device {
        DeviceArg::Cpu => work.run(cpu()),
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => work.run(Cuda::new(0, dtype)?),
        #[cfg(feature = "cuda")]
        DeviceArg::Auto => match Cuda::new(0, dtype) {
            Ok(gpu) => work.run(gpu),
            Err(e) => {
                eprintln!("CUDA unavailable ({e}); using the CPU");
                work.run(cpu())
            }
        },
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda => Err(Error::Device(
            "--device cuda: this build of dllm has no CUDA backend (built without the `cuda` feature)".into(),
        )),
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Auto => work.run(cpu()),
    }
}

/// The checkpoint of `--model`, or the embedded one.
fn open_model(model: &Option<PathBuf>) -> Result<ModelFiles> {
    match model {
        Some(dir) => ModelFiles::open(dir),
        None => ModelFiles::open(&embedded::model_dir()?),
    }
}

/// Upload the weights, with a progress line on a terminal.
fn load_engine<B: Backend>(backend: B, files: &ModelFiles) -> Result<Engine<B>> {
    eprintln!("device: {}", backend.name());
    let tty = std::io::stderr().is_terminal();
    let t0 = std::time::Instant::now();
    let engine = Engine::with_progress(backend, files, &mut |done, all| {
        if tty {
            eprint!("\rloading weights: layer {done}/{all}");
        }
    })?;
    let what = if tty { "\r" } else { "" };
    eprintln!(
        "{what}loaded weights: {} layers in {:.2} s",
        files.config.n_layers,
        t0.elapsed().as_secs_f64()
    );
    Ok(engine)
}

fn serve(a: ServeArgs) -> Result<()> {
    let files = open_model(&a.model)?;
    let http_tok = files.tokenizer.clone();
    let cfg = dllm::serve::ServeConfig {
        host: a.host.clone(),
        port: a.port,
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        api_key: a.api_key.clone(),
        model_id: match &a.model {
            Some(d) => {
                d.file_name().map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into_owned())
            }
            None => dllm::model::embedded::NAME.to_string(),
        },
        body_limit: a.body_limit,
        gen_length: a.gen_length.unwrap_or_else(|| default_gen_length(&files, 32)),
    };
    struct Work(ModelFiles, dllm::model::Tokenizer, dllm::serve::ServeConfig);
    impl OnBackend for Work {
        fn run<B: Backend>(self, backend: B) -> Result<()> {
            let Work(files, http_tok, cfg) = self;
            let engine = load_engine(backend, &files)?;
            dllm::serve::serve(engine, http_tok, files.tokenizer, cfg)
        }
    }
    let dtype = files.dtype;
    dispatch(&a.dev, dtype, Work(files, http_tok, cfg))
}

fn generate(a: GenerateArgs) -> Result<()> {
    let files = open_model(&a.model)?;
    let mut opts = decode_options(&a.decode, &files);
    opts.trace = a.trace;
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
    struct Work<'a>(&'a GenerateArgs, &'a ModelFiles, Vec<Vec<u32>>, DecodeOptions);
    impl OnBackend for Work<'_> {
        fn run<B: Backend>(self, backend: B) -> Result<()> {
            let Work(a, files, prompts, opts) = self;
            let engine = load_engine(backend, files)?;
            let out = engine.generate(&prompts, &opts)?;
            report(a, files, &opts, &out);
            Ok(())
        }
    }
    dispatch(&a.dev, files.dtype, Work(&a, &files, prompts, opts))
}

fn eval(a: EvalArgs) -> Result<()> {
    let files = open_model(&a.model)?;
    let opts = decode_options(&a.decode, &files);
    let mut problems = match &a.data {
        Some(p) => eval::read_jsonl(p)?,
        None => embedded::test_set()?,
    };
    if let Some(n) = a.limit {
        problems.truncate(n);
    }
    let shots = match (a.shots, &a.fewshot) {
        (0, _) => vec![],
        (n, Some(p)) => eval::read_jsonl(p)?.into_iter().take(n).collect(),
        (n, None) => embedded::fewshot_set()?.into_iter().take(n).collect(),
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
    struct Work<'a>(&'a EvalArgs, &'a ModelFiles, Vec<eval::Problem>, Vec<eval::Problem>, DecodeOptions);
    impl OnBackend for Work<'_> {
        fn run<B: Backend>(self, backend: B) -> Result<()> {
            let Work(a, files, problems, shots, opts) = self;
            let engine = load_engine(backend, files)?;
            let modes: Vec<(String, DecodeOptions)> = if a.table {
                eval::TABLE_MODES
                    .iter()
                    .map(|m| {
                        (m.name.to_string(), DecodeOptions { cache: m.cache, rule: m.rule, ..opts.clone() })
                    })
                    .collect()
            } else {
                vec![(format!("{} cache, {}", opts.cache.name(), opts.rule), opts.clone())]
            };
            println!(
                "dllm eval: {} problems, {}-shot, gen {}, block {}, steps {} (quota modes), batch {}, on {}",
                problems.len(),
                shots.len(),
                opts.gen_length,
                opts.block_length,
                opts.steps,
                a.batch_size,
                engine.backend.name()
            );
            println!();
            println!("| configuration | accuracy | NFE / problem | TPF | strict tok/s | speedup | wall s |");
            println!("|---|---|---|---|---|---|---|");
            let tty = std::io::stderr().is_terminal();
            let mut base_rate = None;
            let mut jsonl = String::new();
            for (name, o) in &modes {
                let r = eval::run(
                    &engine,
                    &files.tokenizer,
                    &problems,
                    eval::Prompting { shots: &shots, chat: !a.decode.no_chat, batch_size: a.batch_size },
                    o,
                    |d, n| {
                        if tty {
                            eprint!("\r{name}: {d}/{n}   ");
                        }
                    },
                )?;
                if tty {
                    eprint!("\r{:60}\r", "");
                }
                let rate = r.strict_tok_per_s();
                let speedup = rate / *base_rate.get_or_insert(rate);
                println!(
                    "| {name} | {:.1}% ({}/{}) | {:.1} | {:.2} | {:.1} | {:.1}× | {:.1} |",
                    100.0 * r.accuracy(),
                    r.samples.iter().filter(|s| s.correct()).count(),
                    r.samples.len(),
                    r.nfe(),
                    r.tpf(),
                    rate,
                    speedup,
                    r.wall_s
                );
                jsonl.push_str(&eval::samples_jsonl(&problems, name, &r));
            }
            if let Some(path) = &a.out {
                std::fs::write(path, jsonl).map_err(|e| Error::io(path, e))?;
            }
            Ok(())
        }
    }
    dispatch(&a.dev, files.dtype, Work(&a, &files, problems, shots, opts))
}

fn bench(a: BenchArgs) -> Result<()> {
    let dtype = match a.dtype {
        DTypeArg::Bf16 => DType::Bf16,
        DTypeArg::F32 => DType::F32,
    };
    // fail on a bad preset or scale before touching any device
    bench::preset(&a.synthetic, a.scale.unwrap_or(16))?;
    struct Work<'a>(&'a BenchArgs);
    impl OnBackend for Work<'_> {
        fn run<B: Backend>(self, backend: B) -> Result<()> {
            let a = self.0;
            let gpu = !backend.name().starts_with("cpu");
            let args = bench::BenchArgs {
                preset: a.synthetic.clone(),
                scale: a.scale.unwrap_or(if gpu { 1 } else { 16 }),
                workload_scale: a.workload_scale.unwrap_or(if gpu { 1 } else { 4 }),
                variants: a.variants.clone(),
                profile: a.profile,
                cuda_graphs: !a.no_graphs,
                seed: a.seed,
            };
            let json = bench::run(backend, &args, gpu)?;
            if let Some(path) = &a.json {
                std::fs::write(path, serde_json::to_string_pretty(&json).unwrap_or_default() + "\n")
                    .map_err(|e| Error::io(path, e))?;
            }
            Ok(())
        }
    }
    dispatch(&a.dev, dtype, Work(&a))
}

/// Tokens up to and including the first end-of-sequence token (spec §1 strict tok/s).
fn strict_len(tokens: &[u32], stop: &[u32]) -> usize {
    tokens.iter().position(|t| stop.contains(t)).map_or(tokens.len(), |i| i + 1)
}

fn report(a: &GenerateArgs, files: &ModelFiles, opts: &DecodeOptions, out: &Output) {
    let tok = &files.tokenizer;
    let max_tokens = a.max_tokens.map(|n| n as usize);
    let answers: Vec<_> =
        out.rows.iter().map(|r| dllm::serve::text::answer(tok, &r.tokens, max_tokens, &[])).collect();
    let wall = out.elapsed.as_secs_f64();
    let strict: usize = out.rows.iter().map(|r| strict_len(&r.tokens, &tok.special.stop)).sum();
    let generated: usize = out.rows.iter().map(|r| r.tokens.len()).sum();
    let nfe: usize = out.rows.iter().map(|r| r.nfe).sum();
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
        let rows: Vec<_> = out
            .rows
            .iter()
            .zip(&answers)
            .map(|(r, (text, n, why))| {
                json!({
                    "prompt_ids": r.prompt,
                    "generated_ids": r.tokens,
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
        let doc = json!({
            "rows": rows,
            "forwards": out.forwards,
            "wall_s": wall,
            "strict_tokens": strict,
            "strict_tok_per_s": strict as f64 / wall,
            "options": {
                "gen_length": opts.gen_length, "block_length": opts.block_length,
                "steps": opts.steps, "cache": opts.cache.name(), "rule": opts.rule.to_string(),
                "temperature": opts.temperature, "seed": opts.seed, "early_exit": opts.early_exit,
            },
            "trace": trace,
            "forward_ms": out.forward_ms.iter().map(|f| json!({"kind": f.kind.to_string(), "ms": f.ms})).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else {
        for (i, (text, _, _)) in answers.iter().enumerate() {
            if out.rows.len() > 1 {
                println!("--- [{i}]");
            }
            println!("{text}");
        }
    }
    eprintln!(
        "NFE {nfe} | TPF {:.2} | generated {generated} tokens ({strict} up to EOS) | wall {:.3} s | strict {:.1} tok/s | {:.2} ms/forward",
        generated as f64 / nfe.max(1) as f64,
        wall,
        strict as f64 / wall,
        1e3 * wall / out.forwards.max(1) as f64,
    );
}
