//! `takeover`: the command line. Each subcommand is a thin layer over the library.
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output has gone (`| head -1`): it had what it wanted.
        Err(e) if e.is::<cli::StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            // One line an operator can act on: the error and its causes (check-config lists
            // one problem per line).
            eprintln!("takeover: {e:#}");
            ExitCode::FAILURE
        }
    }
}
