use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = coflow::cli::Cli::parse();
    let default = match cli.command {
        Some(coflow::cli::Command::Node(_) | coflow::cli::Command::Up(_)) | None => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match coflow::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors quote what users and peers wrote (names, titles): escaped, on one line.
            eprintln!("error: {}", coflow::text::one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
