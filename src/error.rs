//! One error type for the whole crate. Every variant carries the thing it is about (a file, a
//! tensor, a config field, a flag) so the CLI can print it as is and exit non-zero.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum Error {
    /// A file could not be read.
    Io { path: PathBuf, source: std::io::Error },
    /// config.json (or another JSON file of the checkpoint) is malformed or unsupported.
    Config { path: PathBuf, field: String, msg: String },
    /// A safetensors file or a tensor in it is missing, corrupt or misshaped.
    Checkpoint { path: PathBuf, tensor: Option<String>, msg: String },
    /// tokenizer.json / tokenizer_config.json problems.
    Tokenizer { path: PathBuf, msg: String },
    /// Decoding options that cannot work (spec §4, §5).
    Options(String),
    /// A backend (device) problem: no CUDA, out of memory, a failed launch.
    Device(String),
    /// The model computed NaN or infinite logits (a broken checkpoint, an overflow): no answer.
    NonFinite(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }
    pub fn config(path: &Path, field: &str, msg: impl Into<String>) -> Self {
        Error::Config { path: path.to_path_buf(), field: field.to_string(), msg: msg.into() }
    }
    pub fn tensor(path: &Path, tensor: &str, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.to_path_buf(), tensor: Some(tensor.to_string()), msg: msg.into() }
    }
    pub fn file(path: &Path, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.to_path_buf(), tensor: None, msg: msg.into() }
    }
    pub fn tokenizer(path: &Path, msg: impl Into<String>) -> Self {
        Error::Tokenizer { path: path.to_path_buf(), msg: msg.into() }
    }
    pub fn options(msg: impl Into<String>) -> Self {
        Error::Options(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Config { path, field, msg } => {
                write!(f, "{}: field `{field}`: {msg}", path.display())
            }
            Error::Checkpoint { path, tensor: Some(t), msg } => {
                write!(f, "{}: tensor `{t}`: {msg}", path.display())
            }
            Error::Checkpoint { path, tensor: None, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Tokenizer { path, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Options(msg) => write!(f, "invalid options: {msg}"),
            Error::Device(msg) => write!(f, "device: {msg}"),
            Error::NonFinite(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
