//! Fast-dLLM decoding: the selection rules (spec §4) and the block loop (spec §5).

pub mod generate;
pub mod select;

pub use generate::{
    fresh_seed, DecodeOptions, Engine, ForwardTime, Output, Progress, Quiet, RowOutput, RowStart, TraceStep,
};
