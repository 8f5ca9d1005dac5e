//! What a checkpoint directory holds: config → weights → tokenizer, each validated before any
//! compute.

pub mod checkpoint;
pub mod config;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use checkpoint::{Checkpoint, DType, TensorView};
pub use config::{Arch, ModelConfig};
pub use tokenizer::{SpecialIds, Tokenizer};

use crate::error::Result;

/// A Hugging Face checkpoint directory, opened and checked: the config parsed, every tensor's
/// name, shape and dtype matched against it, the tokenizer and special ids loaded.
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub checkpoint: Checkpoint,
    /// The checkpoint's dtype, which is the activation dtype (spec §8).
    pub dtype: DType,
    pub tokenizer: Tokenizer,
}

impl ModelFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        let config = ModelConfig::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let dtype = crate::graph::validate(&checkpoint, &config)?;
        let tokenizer = Tokenizer::load(dir, &config)?;
        Ok(ModelFiles { dir: dir.to_path_buf(), config, checkpoint, dtype, tokenizer })
    }
}
