//! Keeps `examples/bench.rs` working: runs its smallest tier (`--smoke --json`) and checks that
//! every metric is reported with a finite, positive value, baseline and ratio. Timings are not
//! judged here: they depend on the machine.

use std::path::PathBuf;
use std::process::Command;

const METRICS: [&str; 11] = [
    "live_p50",
    "live_p99",
    "catchup_10k",
    "catchup_trace",
    "catchup_bytes",
    "propagation_p99",
    "ingest",
    "ingest_commit_each",
    "memory_per_flow",
    "cold_start",
    "wire_bytes",
];

/// The bench example next to this test (`target/<profile>/examples/bench`), built first with
/// the same profile and target dir: `cargo test --test bench_smoke` alone does not build
/// examples, and a binary left from an earlier build may be stale. (When `cargo test` has just
/// built it, this build has nothing to do.)
fn bench_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target/");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .args(["build", "--example", "bench", "--target-dir"])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build --example bench failed");
    profile_dir.join("examples").join("bench")
}

#[test]
fn smoke_tier_reports_every_metric() {
    let bench = bench_binary();
    let out = Command::new(&bench)
        .args(["--smoke", "--json"])
        .output()
        .expect("the bench runs");
    assert!(
        out.status.success(),
        "bench --smoke failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json prints one JSON object");
    let metrics = json["metrics"].as_array().expect("a metrics array");
    for name in METRICS {
        let m = metrics
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("metric {name} is missing from {json}"));
        for field in ["value", "baseline", "ratio"] {
            let v = m[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}.{field} is not a number: {m}"));
            assert!(
                v.is_finite() && v > 0.0,
                "{name}.{field} must be finite and positive, is {v}"
            );
        }
        assert!(m["unit"].is_string(), "{name} has a unit");
    }
}
