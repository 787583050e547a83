//! `coflow demo` runs the whole story on three real node processes, exits 0 and leaves nothing
//! running.

use std::process::Command;

fn demo_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("coflow-demo-") && cmd.contains(" node") {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn the_demo_runs_to_fulfilment_and_cleans_up() {
    let out = Command::new(assert_cmd::cargo::cargo_bin("coflow"))
        .arg("demo")
        .env_remove("COFLOW_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for line in [
        "Tom's node redeems it at Alice's node",
        "his own node refuses: forbidden",
        "the mill joins with her ticket, through her node",
        "Tom cannot declare the need fulfilled: forbidden",
        "Alice confirms: her need is fulfilled.",
        "flowchart TD",
        "Nothing is left running.",
    ] {
        assert!(stdout.contains(line), "missing '{line}' in:\n{stdout}");
    }
    // Every node verified the same full history, all valid.
    let verified: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" valid, 0 invalid; status fulfilled"))
        .collect();
    assert_eq!(verified.len(), 3, "{stdout}");
    let counts: Vec<&str> = verified
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert!(counts.iter().all(|c| *c == counts[0]));
    assert!(
        demo_processes().is_empty(),
        "left running: {:?}",
        demo_processes()
    );
}
