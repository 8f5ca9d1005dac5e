//! What a checkpoint directory holds: config → weights → tokenizer, each validated before any
//! compute.

pub mod checkpoint;
pub mod config;
pub mod embedded;
pub mod layout;
pub mod quant;
pub mod quantize;
pub mod tokenizer;

use std::path::Path;

pub use crate::dtype::DType;
pub use checkpoint::{Checkpoint, TensorView};
pub use config::{Arch, ModelConfig};
pub use tokenizer::{SpecialIds, Tokenizer};

use crate::error::Result;

/// A Hugging Face checkpoint directory, opened and checked: the config parsed, every tensor's
/// name, shape and dtype matched against it, the tokenizer and special ids loaded.
pub struct ModelFiles {
    pub config: ModelConfig,
    pub checkpoint: Checkpoint,
    /// The checkpoint's dtype, which is the activation dtype (spec §8).
    pub dtype: DType,
    pub tokenizer: Tokenizer,
    /// generation_config.json's `max_new_tokens`: the default generation length.
    pub max_new_tokens: Option<usize>,
}

impl ModelFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        let config = ModelConfig::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let dtype = layout::validate(&checkpoint, &config)?;
        let tokenizer = Tokenizer::load(dir, &config)?;
        let max_new_tokens = max_new_tokens(&dir.join("generation_config.json"))?;
        Ok(ModelFiles { config, checkpoint, dtype, tokenizer, max_new_tokens })
    }
}

fn max_new_tokens(path: &Path) -> Result<Option<usize>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| crate::Error::config(path, "(json)", format!("not valid JSON: {e}")))?;
    match v.get("max_new_tokens") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(n) => n.as_u64().filter(|&n| n > 0).map(|n| Some(n as usize)).ok_or_else(|| {
            crate::Error::config(path, "max_new_tokens", format!("expected a positive integer, got {n}"))
        }),
    }
}
