//! `dllm serve`: the server's settings from the flags, then `serve` runs it on the backend.

use dllm::backend::Backend;
use dllm::decode::DecodeOptions;
use dllm::model::{ModelFiles, Tokenizer};
use dllm::serve::ServeConfig;
use dllm::Result;

use super::args::{default_gen_length, ServeArgs};
use super::device::{dispatch, load_engine, open_model, OnBackend};

/// The server, ready for a backend: the checkpoint, the HTTP side's tokenizer, the settings.
struct Job {
    files: ModelFiles,
    http_tok: Tokenizer,
    cfg: ServeConfig,
    weights: dllm::transformer::WeightFormat,
}

impl OnBackend for Job {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let engine = load_engine(backend, &self.files, self.weights)?;
        dllm::serve::serve(engine, self.http_tok, self.files.tokenizer, self.cfg)
    }
}

pub(crate) fn run(a: ServeArgs) -> Result<()> {
    let files = open_model(&a.model)?;
    let http_tok = files.tokenizer.clone();
    let cfg = ServeConfig {
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
        max_context: a.max_context,
        max_block: a.max_block,
        gen_length: a
            .gen_length
            .unwrap_or_else(|| default_gen_length(&files, DecodeOptions::default().block_length)),
    };
    let dtype = files.dtype;
    dispatch(&a.dev, dtype, Job { files, http_tok, cfg, weights: a.dev.weights.into() })
}
