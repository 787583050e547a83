use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before parsing: with `--json`, a command line that does not parse is reported as JSON too.
    let json = std::env::args_os()
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let cli = match coflow::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if json
                && e.use_stderr()
                && e.kind() != clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // clap's message, without its usage and tip paragraphs, on one line.
            let rendered = e.render().to_string();
            let message = rendered.split("\n\n").next().unwrap_or_default();
            let message = message.strip_prefix("error: ").unwrap_or(message);
            let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("{}", coflow::cli::json_error(&message, true));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
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
    let json = cli.json;
    match coflow::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors quote what users and peers wrote (names, titles): escaped, on one line.
            let error = e.to_string();
            let message = coflow::text::one_line(&error);
            if json {
                eprintln!("{}", coflow::cli::json_error(&message, false));
            } else {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}
