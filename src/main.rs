//! Argument parsing only; the work is in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = realfill::cli::Cli::parse();
    match realfill::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(realfill::Error::Cancelled) => {
            eprintln!("cancelled; nothing was written");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
