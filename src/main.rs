//! The `quartic` command: parses the command line and runs one subcommand; errors are printed
//! once, as one clear message, with a non-zero exit status.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

// see quartic::alloc: freed tensors stay in the process for the next op, no huge pages
#[global_allocator]
static GLOBAL: quartic::alloc::Allocator = quartic::alloc::Allocator;

fn main() -> ExitCode {
    quartic::threads::include_calling_thread();
    if let Err(e) = cli::environment::stay_warm() {
        eprintln!("error: {}", cli::output::escaped(&e.to_string()));
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let done = |r: quartic::Result<()>| r.map(|()| 0);
    let result = match &cli.command {
        Command::Train(args) => cli::train::run(args),
        Command::Experiment(args) => cli::experiment::run(args),
        Command::Eval(args) => done(cli::eval::run(args)),
        Command::Forward(args) => done(cli::forward::run(args)),
        Command::Predict(args) => done(cli::predict::run(args)),
        Command::Generate(args) => done(cli::generate::run(args)),
        Command::ImportReference(args) => done(cli::import::run(args)),
        Command::ExportReference(args) => done(cli::export::run(args)),
        Command::Check(args) => done(cli::check::run(args)),
        Command::Explain(args) => done(cli::explain::run(args)),
    };
    // a closed pipe ends the command as SIGPIPE ends other programs: quietly, status 141
    if cli::output::stdout_closed() {
        return ExitCode::from(128 + 13);
    }
    match result {
        Ok(status) => ExitCode::from(status),
        // rule errors render themselves (location, source line, caret, hint), already escaped
        Err(e @ quartic::Error::Rule(_)) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", cli::output::escaped(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
