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
use dllm::bench;
use dllm::cache::CacheMode;
use dllm::decode::{DecodeOptions, Engine, Output};
use dllm::model::ModelFiles;
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
    /// Benchmark workload S1 on seeded random weights of a real model's shape, beside floors.
    Bench(BenchArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DTypeArg {
    Bf16,
    F32,
}

#[derive(Args)]
struct BenchArgs {
    /// Preset shape of the synthetic weights: llada-8b (spec §2) or tiny.
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
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
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

#[derive(Args)]
struct GenerateArgs {
    /// Checkpoint directory as Hugging Face ships it (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The prompt. Repeat to decode several prompts as one batch.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Generated positions (a multiple of --block-length).
    #[arg(long, default_value_t = 128)]
    gen_length: usize,
    /// Positions per block, decoded left to right.
    #[arg(long, default_value_t = 32)]
    block_length: usize,
    /// Steps for the quota rule (a multiple of the number of blocks). Default: gen-length.
    #[arg(long)]
    steps: Option<usize>,
    /// KV cache: none (baseline), prefix or dual.
    #[arg(long, value_enum, default_value_t = CacheArg::Dual)]
    cache: CacheArg,
    /// Commit every masked token with confidence ≥ T (and always the most confident one).
    /// The default rule, with T = 0.9.
    #[arg(long, conflicts_with_all = ["factor", "quota"])]
    threshold: Option<f64>,
    /// Commit by the factor rule: the n-th most confident passes if c ≥ 1 − F/(n+1).
    #[arg(long, conflicts_with = "quota")]
    factor: Option<f64>,
    /// Commit a fixed quota per step (LLaDA's low-confidence schedule over --steps).
    #[arg(long)]
    quota: bool,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Seed of the sampling noise (with --temperature > 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the prompt as is, without the chat template.
    #[arg(long)]
    no_chat: bool,
    /// Stop a row once a whole block of it is end-of-sequence tokens.
    #[arg(long)]
    early_exit: bool,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object (prompt and generated ids, text, NFE, commits per forward) instead
    /// of the answer text.
    #[arg(long)]
    json: bool,
    /// Print what every forward committed to stderr (and into --json).
    #[arg(long)]
    trace: bool,
    /// Run every step eagerly instead of replaying captured CUDA graphs.
    #[arg(long)]
    no_graphs: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Bench(args) => bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn decode_options(a: &GenerateArgs) -> DecodeOptions {
    let rule = match (a.threshold, a.factor, a.quota) {
        (_, _, true) => Rule::Quota,
        (_, Some(f), _) => Rule::Factor(f),
        (Some(t), _, _) => Rule::Threshold(t),
        (None, None, false) => Rule::Threshold(0.9),
    };
    DecodeOptions {
        gen_length: a.gen_length,
        block_length: a.block_length,
        steps: a.steps.unwrap_or(a.gen_length),
        cache: match a.cache {
            CacheArg::None => CacheMode::None,
            CacheArg::Prefix => CacheMode::Prefix,
            CacheArg::Dual => CacheMode::Dual,
        },
        rule,
        temperature: a.temperature,
        seed: a.seed,
        early_exit: a.early_exit,
        trace: a.trace,
        cuda_graphs: !a.no_graphs,
        profile: false,
    }
}

fn generate(a: GenerateArgs) -> Result<()> {
    let opts = decode_options(&a);
    if a.threads == Some(0) {
        return Err(Error::options("--threads must be at least 1"));
    }
    let files = ModelFiles::open(&a.model)?;
    let tok = &files.tokenizer;
    let prompts = a
        .prompt
        .iter()
        .map(|p| if a.no_chat { tok.encode(p) } else { tok.encode_chat(p) })
        .collect::<Result<Vec<_>>>()?;
    opts.validate(&files.config, &prompts)?;
    let cpu = || Cpu::new(files.dtype, a.threads);
    match a.device {
        DeviceArg::Cpu => run(cpu(), &a, &files, &prompts, &opts),
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => run(Cuda::new(0, files.dtype)?, &a, &files, &prompts, &opts),
        #[cfg(feature = "cuda")]
        DeviceArg::Auto => match Cuda::new(0, files.dtype) {
            Ok(gpu) => run(gpu, &a, &files, &prompts, &opts),
            Err(e) => {
                eprintln!("CUDA unavailable ({e}); using the CPU");
                run(cpu(), &a, &files, &prompts, &opts)
            }
        },
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda => Err(Error::Device(
            "--device cuda: this build of dllm has no CUDA backend (built without the `cuda` feature)".into(),
        )),
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Auto => run(cpu(), &a, &files, &prompts, &opts),
    }
}

fn bench(a: BenchArgs) -> Result<()> {
    if a.threads == Some(0) {
        return Err(Error::options("--threads must be at least 1"));
    }
    let dtype = match a.dtype {
        DTypeArg::Bf16 => DType::Bf16,
        DTypeArg::F32 => DType::F32,
    };
    let args = |gpu: bool| bench::BenchArgs {
        preset: a.synthetic.clone(),
        scale: a.scale.unwrap_or(if gpu { 1 } else { 16 }),
        workload_scale: a.workload_scale.unwrap_or(if gpu { 1 } else { 4 }),
        variants: a.variants.clone(),
        profile: a.profile,
        cuda_graphs: !a.no_graphs,
        seed: a.seed,
    };
    // fail on a bad preset or scale before touching any device
    bench::preset(&a.synthetic, args(false).scale)?;
    let cpu = || Cpu::new(dtype, a.threads);
    let json = match a.device {
        DeviceArg::Cpu => bench::run(cpu(), &args(false), false)?,
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => bench::run(Cuda::new(0, dtype)?, &args(true), true)?,
        #[cfg(feature = "cuda")]
        DeviceArg::Auto => match Cuda::new(0, dtype) {
            Ok(gpu) => bench::run(gpu, &args(true), true)?,
            Err(e) => {
                eprintln!("CUDA unavailable ({e}); benchmarking the CPU, scaled down");
                bench::run(cpu(), &args(false), false)?
            }
        },
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda => {
            return Err(Error::Device("--device cuda: this build of dllm has no CUDA backend".into()))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Auto => bench::run(cpu(), &args(false), false)?,
    };
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap_or_default() + "\n")
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

fn run<B: Backend>(
    backend: B,
    a: &GenerateArgs,
    files: &ModelFiles,
    prompts: &[Vec<u32>],
    opts: &DecodeOptions,
) -> Result<()> {
    eprintln!("device: {}", backend.name());
    let tty = std::io::stderr().is_terminal();
    let t0 = std::time::Instant::now();
    let engine = Engine::with_progress(backend, files, &mut |done, all| {
        if tty {
            eprint!("\rloading weights: layer {done}/{all}");
            if done == all {
                eprintln!(" ({:.1} s)", t0.elapsed().as_secs_f64());
            }
        }
    })?;
    let out = engine.generate(prompts, opts)?;
    report(a, files, opts, &out);
    Ok(())
}

/// Tokens up to and including the first end-of-sequence token (spec §1 strict tok/s).
fn strict_len(tokens: &[u32], stop: &[u32]) -> usize {
    tokens.iter().position(|t| stop.contains(t)).map_or(tokens.len(), |i| i + 1)
}

fn report(a: &GenerateArgs, files: &ModelFiles, opts: &DecodeOptions, out: &Output) {
    let tok = &files.tokenizer;
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
            .map(|r| {
                json!({
                    "prompt_ids": r.prompt,
                    "generated_ids": r.tokens,
                    "text": tok.decode(tok.cut_at_stop(&r.tokens)),
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
                "steps": opts.steps, "cache": opts.cache.name(), "rule": format!("{:?}", opts.rule),
                "temperature": opts.temperature, "seed": opts.seed, "early_exit": opts.early_exit,
            },
            "trace": trace,
        });
        println!("{doc}");
    } else {
        for (i, r) in out.rows.iter().enumerate() {
            if out.rows.len() > 1 {
                println!("--- [{i}]");
            }
            println!("{}", tok.decode(tok.cut_at_stop(&r.tokens)));
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
