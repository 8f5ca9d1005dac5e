//! The command line's schema (clap): every subcommand's flags, and the decoding flags turned into
//! [`DecodeOptions`] — whose defaults are the library's ([`DecodeOptions::default`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use dllm::cache::CacheMode;
use dllm::decode::{fresh_seed, DecodeOptions, Decoder, MultiBlockKnobs, Rule, RunOptions};
use dllm::dtype::DType;
use dllm::model::ModelFiles;
use dllm::{Error, Result};

#[derive(Parser)]
#[command(name = "dllm", version, about = "Diffusion LLMs with Fast-dLLM decoding (LLaDA)")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Generate an answer to one or more prompts (several prompts run as one batch).
    Generate(GenerateArgs),
    /// Exact-match accuracy on a GSM8K-format JSONL file, with speed, per decoding mode.
    Eval(EvalArgs),
    /// Benchmark workload S1 on seeded random weights of a real model's shape, beside floors.
    Bench(BenchArgs),
    /// An OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /v1/models, /health).
    Serve(ServeArgs),
    /// Write a checkpoint with FP8 e4m3 linears (compressed-tensors layout) for `--model`.
    Quantize(QuantizeArgs),
}

#[derive(Args)]
pub(crate) struct QuantizeArgs {
    /// The format: FP8 e4m3 weights with one scale per output channel, activations quantized per
    /// token at run time (the only format; required so the command says what it writes).
    #[arg(long, required = true)]
    pub(crate) fp8: bool,
    /// Checkpoint directory to read (bf16, f16 or f32).
    pub(crate) input: std::path::PathBuf,
    /// New (or empty) directory to write.
    pub(crate) output: std::path::PathBuf,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Checkpoint directory. Default: the small arithmetic model embedded in dllm.
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// Address to listen on. Only loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8000)]
    pub(crate) port: u16,
    /// Most requests decoded together as one batch.
    #[arg(long, default_value_t = 8)]
    pub(crate) max_batch: usize,
    /// Most requests waiting for the engine; one more is answered 429.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_queue: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long)]
    pub(crate) api_key: Option<String>,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) body_limit: usize,
    /// Most tokens of one request (prompt + gen_length + suffix); with --max-batch and
    /// --max-block it sizes the decode buffers allocated at start (README: the formula).
    /// Default: the model's context, at most 4096.
    #[arg(long)]
    pub(crate) max_context: Option<usize>,
    /// Longest decoding window a request may use (its block_length; its gen_length where the
    /// whole generation is one window). Default: 256, or the default request's window if longer.
    #[arg(long)]
    pub(crate) max_block: Option<usize>,
    /// The canvas every request decodes (generated positions; a request may ask for another with
    /// `gen_length`). `max_tokens` only cuts the answer. Default: the checkpoint's
    /// generation_config.json `max_new_tokens` rounded up to whole blocks, else 128.
    #[arg(long)]
    pub(crate) gen_length: Option<usize>,
    #[command(flatten)]
    pub(crate) dev: DeviceArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DTypeArg {
    Bf16,
    F32,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Preset shape of the synthetic weights: llada-8b (spec §2), dream-7b (spec §3) or tiny.
    #[arg(long, value_name = "PRESET")]
    pub(crate) synthetic: String,
    /// Divide the preset's width (heads), depth, MLP and vocabulary by this power of two.
    /// Default: 1 on a GPU, 16 on the CPU.
    #[arg(long)]
    pub(crate) scale: Option<usize>,
    /// Divide S1's prompt, gen length and steps by this. Default: 1 on a GPU, 4 on the CPU.
    #[arg(long)]
    pub(crate) workload_scale: Option<usize>,
    /// Comma-separated S1 variants (s1-base, s1-prefix, s1-dual, s1-dual-b4, s1-dual-b16).
    #[arg(long, value_delimiter = ',', default_value = "s1-base,s1-prefix,s1-dual,s1-dual-b4,s1-dual-b16")]
    pub(crate) variants: Vec<String>,
    /// Add a per-op table (device marks around every op: total ms, %, GB/s, TFLOP/s, floor).
    #[arg(long)]
    pub(crate) profile: bool,
    /// Run every step eagerly instead of replaying captured CUDA graphs.
    #[arg(long)]
    pub(crate) no_graphs: bool,
    /// Also write everything as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Activation and weight dtype of the synthetic model.
    #[arg(long, value_enum, default_value_t = DTypeArg::Bf16)]
    pub(crate) dtype: DTypeArg,
    #[command(flatten)]
    pub(crate) dev: DeviceArgs,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum CacheArg {
    /// Baseline: every step forwards the whole canvas.
    None,
    /// PrefixCache: reuse the prompt and finished blocks' K/V within a block.
    Prefix,
    /// DualCache: reuse prefix and suffix K/V; forward only the block.
    Dual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DeviceArg {
    /// CUDA when this build has it and a GPU works, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// How to decode (shared by `generate` and `eval`).
#[derive(Args)]
pub(crate) struct DecodeArgs {
    /// Generated positions (a multiple of --block-length). Default: the checkpoint's
    /// generation_config.json `max_new_tokens` rounded up to whole blocks, else 128.
    #[arg(long)]
    pub(crate) gen_length: Option<usize>,
    /// Positions per block, decoded left to right. Dream with --cache none has no blocks (the
    /// whole generation is one window) and ignores it.
    #[arg(long, default_value_t = DecodeOptions::default().block_length)]
    pub(crate) block_length: usize,
    /// Steps for the quota rule (a multiple of the number of blocks). Default: gen-length.
    /// Dream: the steps of its entropy schedule (per block: steps / blocks, at least 2; with
    /// --cache none: exactly this many forwards), and with --cache none --threshold the nominal
    /// steps of its budgeted threshold (gen-length must be a multiple).
    #[arg(long)]
    pub(crate) steps: Option<usize>,
    /// KV cache of the block loop: none (baseline), prefix or dual. Default: dual (none with
    /// multi-block decoding, which has its own delayed cache: --cache-delay).
    #[arg(long, value_enum)]
    pub(crate) cache: Option<CacheArg>,
    /// Commit every masked token with confidence ≥ T (and always the most confident one).
    /// The default rule, with T = 0.9. Dream compares its bf16 confidences with bf16(T); with
    /// --cache none it commits at most the step's budget (spec §3).
    #[arg(long, conflicts_with_all = ["factor", "quota", "entropy"])]
    pub(crate) threshold: Option<f64>,
    /// Commit by the factor rule: the n-th most confident passes if c ≥ 1 − F/(n+1). LLaDA only.
    #[arg(long, conflicts_with_all = ["quota", "entropy"])]
    pub(crate) factor: Option<f64>,
    /// Commit a fixed quota per step (LLaDA's low-confidence schedule over --steps). Dream: its
    /// entropy schedule (the most certain positions by negative entropy, Dream's timestep rule).
    #[arg(long, conflicts_with = "entropy")]
    pub(crate) quota: bool,
    /// d3LLM's entropy rule (d3llm spec §3): the lowest-entropy candidate always, every other
    /// one with entropy ≤ T nats. LLaDA only. With the block loop it is dParallel's setting.
    #[arg(long, value_name = "T")]
    pub(crate) entropy: Option<f64>,
    /// A published setting: d3llm (multi-block, entropy 0.5, add 0.1, activate 0.95, early
    /// stop), d3llm-cache (the same with the delayed cache: delay 2, refresh 3), dparallel (the
    /// block loop with entropy 0.5). The other flags override its parts.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(dllm::decode::PRESETS))]
    pub(crate) preset: Option<String>,
    #[command(flatten)]
    pub(crate) multi: MultiBlockArgs,
    /// Sampling temperature; 0 is greedy (the only choice for Dream so far).
    #[arg(long, default_value_t = DecodeOptions::default().temperature)]
    pub(crate) temperature: f64,
    /// With --temperature > 0: draw among the K highest logits only (0: no limit).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub(crate) top_k: u32,
    /// With --temperature > 0: draw within the nucleus of mass P only, in (0, 1] (1: no limit).
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    pub(crate) top_p: f64,
    /// Seed of the sampling noise (with --temperature > 0). Default: a fresh one, printed so
    /// that the run can be reproduced.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Use the prompt as is, without the chat template.
    #[arg(long)]
    pub(crate) no_chat: bool,
    /// Stop a row once a whole block of it is end-of-sequence tokens.
    #[arg(long)]
    pub(crate) early_exit: bool,
    /// Run every step eagerly instead of replaying captured CUDA graphs.
    #[arg(long)]
    pub(crate) no_graphs: bool,
}

/// d3LLM's multi-block decoder (d3llm spec §5–§7) and its knobs, under d3LLM's names.
#[derive(Args)]
pub(crate) struct MultiBlockArgs {
    /// Decode several blocks at once (d3LLM's generate_multi_block); needs --entropy.
    #[arg(long)]
    pub(crate) multi_block: bool,
    /// block_add_threshold: a block is added when the last one's progress reaches X (0.1).
    #[arg(long, value_name = "X")]
    pub(crate) block_add: Option<f64>,
    /// decoded_token_threshold: a block is fully activated (forced to progress) when its
    /// predecessor's progress reaches X (0.95).
    #[arg(long, value_name = "X")]
    pub(crate) activate: Option<f64>,
    /// cache_delay_iter: the delayed prefix cache; a decoded block enters it N iterations after
    /// it is first seen complete.
    #[arg(long, value_name = "N")]
    pub(crate) cache_delay: Option<usize>,
    /// refresh_interval: every N-th forward rebuilds the cache (default: never).
    #[arg(long, value_name = "N")]
    pub(crate) refresh: Option<usize>,
    /// Stop early at the first end token (the checkpoint's EOS): everything after it becomes
    /// EOS (d3llm spec §7).
    #[arg(long)]
    pub(crate) early_stop: bool,
    /// Stop early on this token id instead of the EOS.
    #[arg(long, value_name = "ID")]
    pub(crate) early_stop_id: Option<u32>,
}

impl MultiBlockArgs {
    fn knobs(&self) -> MultiBlockKnobs {
        MultiBlockKnobs {
            enable: self.multi_block,
            add: self.block_add,
            activate: self.activate,
            cache_delay: self.cache_delay,
            refresh: self.refresh,
            early_stop: self.early_stop.then_some(true),
            early_stop_id: self.early_stop_id,
            max_per_forward: None,
        }
    }
}

/// Where to run.
#[derive(Args)]
pub(crate) struct DeviceArgs {
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub(crate) device: DeviceArg,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Linear weights: as the checkpoint stores them, or FP8 e4m3 with per-channel scales,
    /// quantized at load (W8A8: activations quantized per token at run time; CUDA needs
    /// compute capability 8.9+).
    #[arg(long, value_enum, default_value_t = WeightsArg::Checkpoint)]
    pub(crate) weights: WeightsArg,
}

/// `--weights`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum WeightsArg {
    Checkpoint,
    Fp8,
}

impl From<WeightsArg> for dllm::transformer::WeightFormat {
    fn from(w: WeightsArg) -> Self {
        match w {
            WeightsArg::Checkpoint => Self::AsStored,
            WeightsArg::Fp8 => Self::Fp8,
        }
    }
}

#[derive(Args)]
pub(crate) struct GenerateArgs {
    /// Checkpoint directory as Hugging Face ships it (config.json, *.safetensors, tokenizer.json).
    /// Default: the small arithmetic model embedded in dllm.
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// The prompt. Repeat to decode several prompts as one batch.
    #[arg(long, required = true)]
    pub(crate) prompt: Vec<String>,
    /// Infilling: text that follows the generated middle (tokenized as written, after the
    /// templated prompt and the --gen-length masked positions; every prompt gets it). Every
    /// forward attends to it; it never changes.
    #[arg(long, value_name = "TEXT")]
    pub(crate) suffix: Option<String>,
    #[command(flatten)]
    pub(crate) decode: DecodeArgs,
    #[command(flatten)]
    pub(crate) dev: DeviceArgs,
    /// Print one JSON object (prompt and generated ids, text, NFE, commits per forward) instead
    /// of the answer text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print what every forward committed to stderr (and into --json).
    #[arg(long)]
    pub(crate) trace: bool,
    /// Watch the canvas fill: after every forward, the generated positions (masks, committed
    /// tokens, the newest highlighted), the current block, NFE and TPF, redrawn in place on a
    /// terminal; one plain line per forward when stdout is not one.
    #[arg(long)]
    pub(crate) visual: bool,
    /// Cut each answer after N tokens. The canvas (--gen-length) is decoded whole either way: for
    /// a diffusion model its length is part of the decoding, so this never changes the tokens.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_tokens: Option<u64>,
}

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Checkpoint directory. Default: the small arithmetic model embedded in dllm.
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// GSM8K-format JSONL (`question`, `answer` ending in `#### N`). Default: the embedded
    /// model's 500 held-out problems.
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Few-shot examples to put before each question, taken from --fewshot.
    #[arg(long, default_value_t = 0)]
    pub(crate) shots: usize,
    /// JSONL of few-shot examples (same format). Default with --shots: the embedded set.
    #[arg(long)]
    pub(crate) fewshot: Option<PathBuf>,
    /// Evaluate only the first N problems.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Problems decoded together as one batch.
    #[arg(long, default_value_t = 8)]
    pub(crate) batch_size: usize,
    /// Run the paper's configurations (baseline, +PrefixCache, +parallel, Fast-dLLM, DualCache,
    /// factor) and print the accuracy / tok/s / speedup / NFE table; --cache and the rule flags
    /// are then ignored.
    #[arg(long)]
    pub(crate) table: bool,
    /// Run the accuracy-against-speed sweep (every cache mode × thresholds 0.5…0.99, factors
    /// 0.5…2, quota at 4 and 8 tokens a step, then the baseline) and write its points as JSON
    /// to FILE (`tools/plot.py` draws them); --table and the rule flags are then ignored.
    #[arg(long, value_name = "FILE")]
    pub(crate) sweep: Option<PathBuf>,
    /// Write every sample (question, target, prediction, output, NFE) as JSONL here.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) decode: DecodeArgs,
    #[command(flatten)]
    pub(crate) dev: DeviceArgs,
}

impl From<CacheArg> for CacheMode {
    fn from(c: CacheArg) -> Self {
        match c {
            CacheArg::None => CacheMode::None,
            CacheArg::Prefix => CacheMode::Prefix,
            CacheArg::Dual => CacheMode::Dual,
        }
    }
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::Bf16 => DType::Bf16,
            DTypeArg::F32 => DType::F32,
        }
    }
}

/// The canvas when none is asked for: the checkpoint's `max_new_tokens` rounded up to whole
/// blocks of `block_length`, else the library's default.
pub(crate) fn default_gen_length(files: &ModelFiles, block_length: usize) -> usize {
    let bl = block_length.max(1);
    files.max_new_tokens.map_or(DecodeOptions::default().gen_length, |n| n.div_ceil(bl) * bl)
}

impl DecodeArgs {
    /// The decoding options these flags ask for, every default the library's (or the preset's).
    pub(crate) fn options(&self, files: &ModelFiles) -> Result<DecodeOptions> {
        let gen_length = self.gen_length.unwrap_or_else(|| default_gen_length(files, self.block_length));
        let mut o = DecodeOptions {
            gen_length,
            block_length: self.block_length,
            steps: self.steps.unwrap_or(gen_length),
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            // greedy decoding draws no noise: a seed only matters (and is only drawn) when sampling
            seed: self.seed.unwrap_or_else(|| if self.temperature > 0.0 { fresh_seed() } else { 0 }),
            early_exit: self.early_exit,
            ..DecodeOptions::default()
        };
        let eos = files.tokenizer.special.eos;
        if let Some(p) = &self.preset {
            o = o.with_preset(p, eos)?;
        }
        o.rule = match (self.threshold, self.factor, self.quota, self.entropy) {
            (_, _, true, _) => Rule::Quota,
            (_, Some(f), _, _) => Rule::Factor(f),
            (Some(t), _, _, _) => Rule::Threshold(t),
            (_, _, _, Some(t)) => Rule::Entropy(t),
            (None, None, false, None) => o.rule,
        };
        self.multi
            .knobs()
            .apply(&mut o, eos)
            .map_err(|e| Error::options(format!("--{}", e.replace('_', "-"))))?;
        o.cache = match self.cache {
            Some(c) => c.into(),
            None if o.decoder != Decoder::Blocks => CacheMode::None,
            None => o.cache,
        };
        Ok(o)
    }

    /// How to run them (`trace`: record every forward's commits).
    pub(crate) fn run_options(&self, trace: bool) -> RunOptions {
        RunOptions { trace, cuda_graphs: !self.no_graphs, ..RunOptions::default() }
    }
}
