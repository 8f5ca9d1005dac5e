//! The Fast-dLLM block loop (spec §5) over any backend: baseline, PrefixCache and DualCache; the
//! quota, threshold and factor rules (spec §4); batches whose rows each decode exactly as they
//! would alone (spec §6). Dream runs the same loop with its own rules (spec §3,
//! [`super::policy::StepPolicy`]).
//! A call is: plan the batch ([`BatchPlan`]), allocate its buffers once ([`Session`]), then for
//! each block run steps until no row has a mask left in it ([`super::step`]), then read the
//! canvas back.

use super::batch::BatchPlan;
use super::multiblock;
use super::options::{DecodeOptions, Decoder, RunOptions};
use super::output::{DecodeObserver, Output, Quiet, RowStart};
use super::session::{Capacity, Session};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::quant::Fp8Scheme;
use crate::model::{Arch, ModelConfig, ModelFiles, SpecialIds};
use crate::transformer::{WeightFormat, Weights};

/// A model on a backend, ready to decode.
pub struct Engine<B: Backend> {
    pub backend: B,
    pub config: ModelConfig,
    pub special: SpecialIds,
    pub weights: Weights<B::Tensor>,
}

impl<B: Backend> Engine<B> {
    /// Upload the (already validated) checkpoint's weights to `backend`.
    pub fn new(backend: B, files: &ModelFiles) -> Result<Self> {
        Self::load_with_progress(backend, files, WeightFormat::AsStored, &mut |_, _| {})
    }

    /// An engine over weights made elsewhere (synthetic weights of `dllm bench`).
    pub fn from_parts(
        backend: B,
        config: ModelConfig,
        special: SpecialIds,
        weights: Weights<B::Tensor>,
    ) -> Self {
        Engine { backend, config, special, weights }
    }

    /// As [`Engine::new`], with the linears in `format` (FP8 quantized at load, issue 17),
    /// reporting `(layers uploaded, layers)` as the weights go to the device.
    pub fn load_with_progress(
        backend: B,
        files: &ModelFiles,
        format: WeightFormat,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let weights = Weights::load(&backend, &files.checkpoint, &files.config, format, progress)?;
        let mut config = files.config.clone();
        if format == WeightFormat::Fp8 && config.quantization.is_none() {
            // the model now runs the FP8 scheme: the forward quantizes its activations
            config.quantization = Some(Fp8Scheme { ignore: vec![] });
        }
        Ok(Engine { backend, config, special: files.tokenizer.special.clone(), weights })
    }

    /// Decode a batch of prompts (token ids, already templated) with Fast-dLLM.
    pub fn generate(&self, prompts: &[Vec<u32>], opts: &DecodeOptions) -> Result<Output> {
        self.generate_with(prompts, opts, RunOptions::default(), &mut Quiet)
    }

    /// [`Engine::generate`] with run options and an observer of each block and of
    /// cancellations. Errors with [`Error::NonFinite`] when a row's logits were not finite.
    pub fn generate_with(
        &self,
        prompts: &[Vec<u32>],
        opts: &DecodeOptions,
        run: RunOptions,
        observer: &mut dyn DecodeObserver,
    ) -> Result<Output> {
        let rows: Vec<RowStart> =
            prompts.iter().map(|p| RowStart { prompt: p.clone(), ..RowStart::default() }).collect();
        self.decode_rows(&rows, opts, run, observer)
    }

    /// [`Engine::generate_with`] for rows given whole (infilling suffixes, per-row seeds and
    /// lengths): every block of every row. Errors with [`Error::NonFinite`] naming the first row
    /// whose logits were not finite.
    pub fn decode_rows(
        &self,
        rows: &[RowStart],
        opts: &DecodeOptions,
        run: RunOptions,
        observer: &mut dyn DecodeObserver,
    ) -> Result<Output> {
        let out = self.generate_rows(rows, opts, run, usize::MAX, observer)?;
        match out.rows.iter().enumerate().find_map(|(i, r)| r.error.as_ref().map(|e| (i, e))) {
            Some((i, e)) => Err(Error::NonFinite(format!("prompt {i}: {e}"))),
            None => Ok(out),
        }
    }

    /// Decode rows that may already have finished some blocks, at most `max_blocks` more blocks
    /// each: the continuous batch of `dllm serve` resumes its rows between blocks, adding and
    /// removing rows at block boundaries. Each row's current block is aligned at one canvas
    /// column by left padding; a row with fewer blocks left ends before the canvas does (its
    /// later keys are masked), so every row decodes exactly as it would alone.
    pub fn generate_rows(
        &self,
        starts: &[RowStart],
        opts: &DecodeOptions,
        run: RunOptions,
        max_blocks: usize,
        observer: &mut dyn DecodeObserver,
    ) -> Result<Output> {
        // a session sized to this batch (the plan is laid out again by the session: host work)
        let cap = match opts.decoder {
            Decoder::Blocks => Capacity::of(&self.plan(starts, opts, max_blocks)?, run.logprobs),
            Decoder::MultiBlock(_) => {
                multiblock::capacity(starts.iter().map(|s| s.prompt.len()).max().unwrap_or(0), opts)
            }
        };
        Session::new(self, cap)?.decode(starts, opts, run, max_blocks, observer)
    }

    /// Validate the options and rows and lay the batch out (errors name the problem).
    pub(super) fn plan(
        &self,
        starts: &[RowStart],
        opts: &DecodeOptions,
        max_blocks: usize,
    ) -> Result<BatchPlan> {
        opts.validate_options(&self.config)?;
        if starts.is_empty() {
            return Err(Error::options("no prompt given"));
        }
        let prompts: Vec<Vec<u32>> = starts.iter().map(|r| r.prompt.clone()).collect();
        let gens: Vec<usize> = starts.iter().map(|r| r.gen_length.unwrap_or(opts.gen_length)).collect();
        opts.validate_prompts(&self.config, &prompts, &gens)?;
        self.check_suffixes(starts, opts, &gens)?;
        for (i, r) in starts.iter().enumerate() {
            if let Some(rr) = &r.rule {
                let own = opts.with_row(rr);
                own.validate_options(&self.config).map_err(|e| Error::options(format!("row {i}: {e}")))?;
                if opts.decoder != Decoder::Blocks && own != *opts {
                    return Err(Error::options(format!(
                        "row {i}: rows of a multi-block batch share the batch's rule and draw"
                    )));
                }
            }
        }
        let window = opts.window_len(self.config.arch);
        let plan = BatchPlan::new(starts, opts, window, &self.special, max_blocks)?;
        let be = &self.backend;
        if window > be.max_block_length() && opts.decoder == Decoder::Blocks {
            let dream = self.config.arch == Arch::Dream;
            return Err(Error::options(format!(
                "{} {window} is above the {} backend's longest block ({}){}",
                if opts.blockless(self.config.arch) {
                    "gen_length (Dream's uncached window)"
                } else {
                    "block_length"
                },
                be.name(),
                be.max_block_length(),
                if dream { ": use --cache prefix or dual, or a shorter generation" } else { "" }
            )));
        }
        Ok(plan)
    }

    /// Infilling suffixes (issue 19): ids in the vocabulary and not the mask (a masked suffix
    /// position would be decoded, not kept), room beside the prompt and the middle, and the
    /// block loop (the multi-block decoder schedules blocks up to the canvas end).
    fn check_suffixes(&self, starts: &[RowStart], opts: &DecodeOptions, gens: &[usize]) -> Result<()> {
        let (cfg, mask) = (&self.config, self.special.mask);
        for (i, (r, &g)) in starts.iter().zip(gens).enumerate().filter(|(_, (r, _))| !r.suffix.is_empty()) {
            if opts.decoder != Decoder::Blocks {
                return Err(Error::options(
                    "a suffix (infilling) needs the block loop, not multi-block decoding",
                ));
            }
            if let Some(t) = r.suffix.iter().find(|&&t| t as usize >= cfg.n_logits || t == mask) {
                return Err(Error::options(format!(
                    "row {i}: suffix token id {t} is {}",
                    if *t == mask {
                        "the mask token".to_string()
                    } else {
                        format!("outside the vocabulary ({})", cfg.n_logits)
                    }
                )));
            }
            let need = r.prompt.len() + g + r.suffix.len();
            if need > cfg.max_seq_len {
                return Err(Error::options(format!(
                    "row {i}: prompt ({}) + gen_length {g} + suffix ({}) = {need} tokens exceeds the model's max_sequence_length {}",
                    r.prompt.len(),
                    r.suffix.len(),
                    cfg.max_seq_len
                )));
            }
        }
        Ok(())
    }
}
