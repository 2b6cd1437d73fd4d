//! The `quartic` command: parses the command line and runs one subcommand; errors are printed
//! once, as one clear message, with a non-zero exit status.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

// see quartic::alloc: freed tensors stay in the process for the next op
#[global_allocator]
static GLOBAL: quartic::alloc::Allocator = quartic::alloc::Allocator;

fn main() -> ExitCode {
    quartic::alloc::keep_freed_memory();
    quartic::threads::include_calling_thread();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Train(args) => cli::train::run(args),
        Command::Experiment(args) => cli::experiment::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Forward(args) => cli::forward::run(args),
        Command::Generate(args) => cli::generate::run(args),
        Command::ImportReference(args) => cli::import::run(args),
        Command::Check { n } => cli::check::run(*n as usize),
        Command::Explain(args) => cli::explain::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // rule errors render themselves (location, source line, caret, hint)
        Err(e @ quartic::Error::Rule(_)) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
