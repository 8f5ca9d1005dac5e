//! `dllm`: the command line. Every subcommand's flags are in [`cli::args`], its body in its own
//! module under `cli/`; errors are printed without a backtrace and exit non-zero (2 for a
//! malformed command line, from clap; 1 for everything else).

#![warn(clippy::too_many_lines)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::{Cli, Command};

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Quantize(args) => cli::quantize::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
