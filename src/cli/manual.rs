//! What the command line says about itself: shell completions (`clap_complete`), manual pages
//! (`clap_mangen`), and errors as JSON for scripts.

use std::io::Write;
use std::path::PathBuf;

use clap::CommandFactory;

use super::Cli;
use crate::error::{Error, Result};

/// Prints the completion script for `shell` on stdout.
pub(super) fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "coflow", &mut out);
    write_stdout(&out)
}

/// Prints the manual page on stdout, or writes one page per command into `dir`.
pub(super) fn man(dir: Option<PathBuf>) -> Result<()> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            let io = |source| Error::Io {
                path: dir.clone(),
                source,
            };
            std::fs::create_dir_all(&dir).map_err(io)?;
            clap_mangen::generate_to(cmd, &dir).map_err(io)?;
            eprintln!("wrote the manual pages to {}", dir.display());
            Ok(())
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| Error::Invalid(format!("cannot render the manual page: {e}")))?;
            write_stdout(&out)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        // Read in part (`coflow man | head`): what was wanted was written.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.map_err(|source| Error::Io {
            path: "stdout".into(),
            source,
        }),
    }
}

/// An error as scripts get it with `--json`: one JSON object on one line of stderr,
/// `{"error": "…"}` (with `"usage": true` for a command line that does not parse, exit 2).
pub fn json_error(message: &str, usage: bool) -> String {
    let mut e = serde_json::json!({ "error": message });
    if usage {
        e["usage"] = serde_json::Value::Bool(true);
    }
    e.to_string()
}
