//! Fast-dLLM decoding (spec §4, §5): what to decode ([`options`]), each step's rule, score and
//! quota ([`policy`]), the batch's layout and row states ([`batch`]), the engine and its block
//! loop ([`engine`]), the buffers calls reuse ([`session`]), one step ([`step`]) and what a
//! call returns ([`output`]).

pub mod batch;
pub mod engine;
pub mod multiblock;
pub mod options;
pub mod output;
pub mod policy;
pub mod session;
pub mod step;

pub use engine::Engine;
pub use options::{
    fresh_seed, DecodeOptions, Decoder, DelayedCache, MultiBlock, MultiBlockKnobs, RowRule, Rule, RunOptions,
    PRESETS,
};
pub use output::{DecodeObserver, ForwardTime, Output, Quiet, RowOutput, RowStart, TokenLogprobs, TraceStep};
pub use session::{Capacity, Session};
