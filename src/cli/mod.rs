//! The binary's code: flags ([`args`]), where work runs ([`device`]), and one module per
//! subcommand.

pub mod args;
pub mod bench;
pub mod device;
pub mod eval;
pub mod generate;
pub mod quantize;
pub mod serve;
pub mod visual;
