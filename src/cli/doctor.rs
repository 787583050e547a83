//! `coflow doctor`: checks a data dir's key file, configuration and database, each on its own,
//! so one broken part does not hide the others. Changes nothing that a normal open would not.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::identity::{Identity, KEY_FILE};
use crate::repo::Repo;
use crate::store::{Storage, Store};

/// One check and what it found.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Everything `coflow doctor` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// `coflow doctor`: prints the report; an error (exit 1) if any check failed.
pub fn command(home: &Path, out: &super::print::Out) -> Result<()> {
    let report = run(home);
    out.doctor(&report);
    let failed = report.checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        return Err(Error::Invalid(format!(
            "{failed} of {} checks of {} failed",
            report.checks.len(),
            home.display()
        )));
    }
    Ok(())
}

fn check(check: &'static str, result: Result<String, String>) -> Check {
    let (ok, detail) = match result {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    Check { check, ok, detail }
}

/// Runs every check on `home`.
pub fn run(home: &Path) -> Report {
    let key = Identity::load(home)
        .map(|id| {
            let version = match Identity::key_file_version(home) {
                Some(1) => " (version 1 key file: no checksum; the store still checks the key)",
                _ => "",
            };
            format!(
                "{}: node {} '{}'{version}",
                home.join(KEY_FILE).display(),
                id.node_id(),
                id.name()
            )
        })
        .map_err(|e| e.to_string());
    let config = crate::config::Config::load(home)
        .map(|_| format!("{}: valid", home.join(crate::config::CONFIG_FILE).display()))
        .map_err(|e| e.to_string());
    let store = Store::open(home)
        .map_err(|e| e.to_string())
        .and_then(|store| match store.integrity_check() {
            Ok(problems) if problems.is_empty() => Ok("SQLite integrity check: ok".to_string()),
            Ok(problems) => Err(format!(
                "SQLite integrity check failed: {}; restore the database from a backup",
                problems.join("; ")
            )),
            Err(e) => Err(e.to_string()),
        });
    let mut checks = Vec::new();
    // Whether the store is this key's needs both.
    let owner = (key.is_ok() && store.is_ok()).then(|| {
        check(
            "owner",
            Repo::open(home)
                .map(|_| "the database belongs to this key".to_string())
                .map_err(|e| e.to_string()),
        )
    });
    checks.push(check("key", key));
    checks.push(check("config", config));
    checks.push(check("store", store));
    checks.extend(owner);
    Report {
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}
