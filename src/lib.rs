//! dllm: diffusion LLMs (LLaDA, Dream) with Fast-dLLM decoding, on a CPU reference backend and a
//! CUDA backend. Dependencies point one way, in the order the data flows:
//! [`error`]/[`dtype`] → [`model`] (config, checkpoint, layout, tokenizer) → [`backend`] (the op
//! set, the CPU twin, CUDA) → [`cache`] (the KV cache and its windows) and [`profile`] (per-op
//! times, the cost model) → [`transformer`] (the forward, which writes the cache) → [`decode`]
//! (options, policy, batch, engine, step) → [`eval`], [`bench`], [`serve`] → the CLI
//! (`src/cli/`, in the binary).
//!
//! `../shared/spec/fast-dllm.md` (copied as `docs/fast-dllm-spec.md`) is the reference semantics;
//! comments cite its sections as "spec §N".

#![warn(clippy::too_many_lines)]

pub mod backend;
pub mod bench;
pub mod cache;
pub mod decode;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod fp8;
pub mod model;
pub mod profile;
pub mod serve;
pub mod transformer;

pub use error::{Error, Result};
