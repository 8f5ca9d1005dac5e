//! dllm: diffusion LLMs (LLaDA, Dream) with Fast-dLLM decoding, on a CPU reference backend and a
//! CUDA backend. The modules read in the order the data flows:
//! config → checkpoint → tokenizer ([`model`]) → the transformer over backend ops ([`graph`],
//! [`backend`]) → the KV cache policy ([`cache`]) → the decoder ([`decode`]) → what runs it:
//! [`eval`], [`bench`], [`serve`] and the CLI (main.rs).
//!
//! `../shared/spec/fast-dllm.md` (copied as `docs/fast-dllm-spec.md`) is the reference semantics;
//! comments cite its sections as "spec §N".

pub mod backend;
pub mod bench;
pub mod cache;
pub mod decode;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod model;
pub mod profile;
pub mod serve;
pub mod transformer;

pub use error::{Error, Result};
