//! The `coflow` binary in a data dir of its own, for transcript tests.

use std::path::PathBuf;

use assert_cmd::Command;
use serde_json::Value;

pub struct Node {
    pub _dir: tempfile::TempDir,
    pub home: PathBuf,
}

impl Node {
    /// A node with a key derived from `seed` (COFLOW_TEST_KEY_SEED, test-only).
    pub fn init(seed: &str, name: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let node = Node { _dir: dir, home };
        node.cmd()
            .env("COFLOW_TEST_KEY_SEED", seed)
            .args(["init", "--name", name])
            .assert()
            .success();
        node
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("coflow").unwrap();
        c.env_remove("COFLOW_TEST_KEY_SEED")
            .env_remove("COFLOW_HOME")
            .arg("--home")
            .arg(&self.home);
        c
    }

    /// Runs a command that must succeed and returns its JSON output.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd().arg("--json").args(args).assert().success();
        serde_json::from_slice(&out.get_output().stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {:?}", out.get_output()))
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).assert().success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    }

    /// Runs a command that must fail with one clear line on stderr; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).assert().code(1);
        let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
        assert_eq!(err.lines().count(), 1, "one line on stderr, got: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(out.get_output().stdout.is_empty(), "no data on failure");
        err
    }

    pub fn id(&self) -> String {
        self.json(&["id"])["node_id"].as_str().unwrap().to_string()
    }

    pub fn heads(&self, flow: &str) -> Value {
        self.json(&["flow", "show", flow])["heads"].clone()
    }

    /// Digests of the database and its write-ahead log (no process has them open).
    pub fn db(&self) -> Vec<String> {
        use sha2::Digest;
        ["coflow.db", "coflow.db-wal"]
            .iter()
            .filter_map(|f| std::fs::read(self.home.join(f)).ok())
            .map(|b| coflow::identity::hex(&sha2::Sha256::digest(&b)))
            .collect()
    }
}

pub fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

/// 17 flows made by `node`, two or more of them sharing a first hex digit: their ids, and that
/// digit.
pub fn flows_sharing_a_prefix(node: &Node) -> (Vec<String>, String) {
    let mut ids: Vec<String> = Vec::new();
    for i in 0..17 {
        let id = node.json(&["flow", "new", &format!("Flow {i}"), "--need", "x"]);
        ids.push(s(&id["id"]).to_string());
    }
    let prefix = ids
        .iter()
        .map(|i| &i[..1])
        .find(|p| ids.iter().filter(|i| i.starts_with(*p)).count() > 1)
        .unwrap()
        .to_string();
    (ids, prefix)
}
