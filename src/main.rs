use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = coflow::cli::Cli::parse();
    match coflow::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
