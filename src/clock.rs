//! The wall clock, in one place: the repository stamps changes and edits with it, the node turns
//! it into the engine's `now`, and tests give a repository a clock of their own
//! (`Repo::with_clock`).

/// Seconds since the Unix epoch.
pub fn system_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn system_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
