//! `takeover`: the command line. Each subcommand is a thin layer over the library.
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line an operator can act on: the error and its causes (check-config lists
            // one problem per line).
            eprintln!("takeover: {e:#}");
            ExitCode::FAILURE
        }
    }
}
