//! CLI transcripts: the tailor's flow through the `coflow` binary, with deterministic keys.

mod common;

use std::path::Path;

use common::cli::{flows_sharing_a_prefix, s, Node};
use serde_json::Value;

#[test]
fn the_customers_own_story() {
    let alice = Node::init("alice", "Alice");
    let id = alice.json(&["id"]);
    assert_eq!(id["name"], "Alice");
    // Deterministic keys: the same seed gives the same node id on every run.
    assert_eq!(
        id["node_id"],
        "12D3KooWQCkBm1BYtkHpocxCwMgR8yjitEeHGx8spzcDLGt2gkBm"
    );

    let flow = alice.json(&[
        "flow",
        "new",
        "Navy suit",
        "--need",
        "A navy three-piece suit for my wedding in May",
    ]);
    let f = s(&flow["id"]).to_string();
    assert_eq!(f.len(), 32);
    let short = &f[..8];
    let list = alice.json(&["flow", "list"]);
    assert_eq!(
        list,
        serde_json::json!([{"id": f, "title": "Navy suit", "status": "open", "pending": false, "waiting": []}])
    );

    let cloth = alice.json(&["step", "add", short, "Choose the cloth", "--customer"]);
    let cloth = s(&cloth["id"]).to_string();
    let fitting = alice.json(&["step", "add", short, "First fitting", "--customer"]);
    let fitting = s(&fitting["id"]).to_string();
    alice.json(&["step", "add", short, "Cut and baste"]);
    let d = alice.json(&[
        "decision",
        "new",
        short,
        "Which cloth?",
        "--option",
        "Navy wool",
        "--option",
        "Navy linen",
        "--who",
        "customer",
        "--step",
        &cloth[..6],
    ]);
    let d = s(&d["id"]).to_string();
    alice.json(&["step", "start", short, &cloth[..6]]);
    alice.json(&["decision", "choose", short, &d[..6], "Navy wool"]);
    alice.json(&["step", "done", short, &cloth]);
    alice.json(&["comment", short, "The wool is lovely", "--step", &cloth]);
    alice.json(&["step", "start", short, &fitting]);
    alice.json(&["step", "done", short, &fitting]);
    // "Cut and baste" is still to do: confirmed on purpose.
    alice.json(&["flow", "fulfil", short, "--force"]);

    let show = alice.json(&["flow", "show", short]);
    assert_eq!(show["id"], f.as_str());
    assert_eq!(show["title"], "Navy suit");
    assert_eq!(show["status"], "fulfilled");
    assert_eq!(
        show["need"],
        "A navy three-piece suit for my wedding in May"
    );
    let members = show["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["role"], "customer");
    assert_eq!(members[0]["name"], "Alice");
    let steps: Vec<(&str, &str)> = show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| (s(&st["title"]), s(&st["status"])))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("Choose the cloth", "done"),
            ("First fitting", "done"),
            ("Cut and baste", "todo")
        ]
    );
    assert_eq!(show["decisions"][0]["outcome"], "Navy wool");
    assert_eq!(show["decisions"][0]["closed"], true);
    assert_eq!(show["comments"][0]["text"], "The wool is lovely");
    assert_eq!(show["comments"][0]["step"], cloth.as_str());
    assert_eq!(show["heads"].as_array().unwrap().len(), 1);

    let log = alice.json(&["flow", "log", short]);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 12);
    assert_eq!(log[0]["summary"], "started the flow 'Navy suit'");
    assert_eq!(log[11]["summary"], "confirmed the need fulfilled");
    assert!(log
        .iter()
        .all(|e| e["name"] == "Alice" && e["at"].as_i64().unwrap() > 0));
    let human = alice.ok(&["flow", "log", short]);
    assert!(human.contains("Alice") && human.contains("chose 'Navy wool' for 'Which cloth?'"));

    let verify = alice.json(&["flow", "verify", short]);
    assert_eq!(verify["changes"], 12);
    assert_eq!(verify["valid"], 12);
    assert_eq!(verify["invalid"], 0);

    // Exports: JSON, the two diagrams, and a standard Automerge document with the same heads.
    let exported: Value =
        serde_json::from_str(&alice.ok(&["flow", "export", short, "--format", "json"])).unwrap();
    assert_eq!(exported["heads"], show["heads"]);
    let dot = alice.ok(&["flow", "export", short, "--format", "dot"]);
    assert!(dot.starts_with("digraph flow {") && dot.contains("Cut and baste\\n[todo]"));
    assert!(dot.contains("First fitting\\n[done] with the customer"));
    let mermaid = alice.ok(&["flow", "export", short, "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart TD") && mermaid.contains("Which cloth? → Navy wool"));
    let file = alice.home.join("suit.automerge");
    alice.ok(&[
        "flow",
        "export",
        short,
        "--format",
        "automerge",
        "-o",
        file.to_str().unwrap(),
    ]);
    let doc = automerge::Automerge::load(&std::fs::read(&file).unwrap()).unwrap();
    let heads: Vec<String> = doc.get_heads().iter().map(|h| h.to_string()).collect();
    let shown: Vec<String> = show["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| s(h).to_string())
        .collect();
    assert_eq!(heads, shown);
}

#[test]
fn refused_commands_leave_the_flow_untouched() {
    let tom = Node::init("tom", "Tom");
    let alice_id = Node::init("alice", "Alice").id();
    let f = s(&tom.json(&[
        "flow",
        "new",
        "Navy suit",
        "--need",
        "A suit",
        "--as",
        "owner",
    ])["id"])
    .to_string();
    // The owner may bring in the flow's first customer, but no second one.
    tom.json(&[
        "member", "add", &f, &alice_id, "--role", "customer", "--name", "Alice",
    ]);
    let bea_id = Node::init("bea", "Bea").id();
    let err = tom.fails(&["member", "add", &f, &bea_id, "--role", "customer"]);
    assert!(
        err.contains("forbidden") && err.contains("only a customer"),
        "{err}"
    );
    tom.json(&["step", "add", &f, "Choose the cloth", "--customer"]);
    let d = s(&tom.json(&[
        "decision",
        "new",
        &f,
        "Which cloth?",
        "--option",
        "Navy wool",
        "--option",
        "Navy linen",
    ])["id"])
    .to_string();
    let heads = tom.heads(&f);
    let db = tom.db();
    for args in [
        vec!["decision", "choose", &f, &d, "Navy wool"],
        vec!["flow", "fulfil", &f],
    ] {
        let err = tom.fails(&args);
        assert!(err.contains("forbidden"), "{err}");
        assert_eq!(tom.heads(&f), heads);
    }
    assert_eq!(tom.db(), db, "a refused command writes nothing");
}

#[test]
fn bad_input_gets_one_clear_line() {
    let alice = Node::init("alice", "Alice");
    let f = s(&alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]).to_string();
    let heads = alice.heads(&f);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["flow", "show", "ffffffffffffffffzz"],
            "no flow matches",
        ),
        (vec!["step", "done", &f, "nosuchstep"], "no step matches"),
        (
            vec!["decision", "choose", &f, "abc", "x"],
            "no decision matches",
        ),
        (
            vec!["flow", "new", "  ", "--need", "x"],
            "title must not be empty",
        ),
        (vec!["step", "add", &f, ""], "step title must not be empty"),
        (vec!["comment", &f, " "], "comment must not be empty"),
        (
            vec!["member", "add", &f, "not-a-node", "--role", "owner"],
            "is not a node id",
        ),
        (
            vec!["decision", "new", &f, "Q?", "--option", "a"],
            "at least two options",
        ),
        (vec!["init", "--name", "Again"], "refusing to overwrite"),
    ];
    for (args, want) in cases {
        let err = alice.fails(&args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(alice.heads(&f), heads);
    // Usage errors exit 2.
    alice.cmd().args(["flow", "new"]).assert().code(2);
    alice
        .cmd()
        .args(["member", "add", &f, "x", "--role", "boss"])
        .assert()
        .code(2);
}

#[test]
fn ambiguous_prefixes_are_refused() {
    let alice = Node::init("alice", "Alice");
    let (_, prefix) = flows_sharing_a_prefix(&alice);
    let err = alice.fails(&["flow", "show", &prefix]);
    assert!(
        err.contains("matches") && err.contains("give more characters"),
        "{err}"
    );
}

#[test]
fn missing_or_corrupt_keys_and_damaged_databases() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = Node {
        home: dir.path().join("nobody"),
        _dir: dir,
    };
    let err = nobody.fails(&["flow", "list"]);
    assert!(err.contains("coflow init"), "{err}");

    let alice = Node::init("alice", "Alice");
    alice.json(&["flow", "new", "Suit", "--need", "A suit"]);
    let key = alice.home.join("identity.key");
    let good_key = std::fs::read(&key).unwrap();
    std::fs::write(
        &key,
        b"{\"version\":1,\"secret_key\":\"zz\",\"name\":\"A\"}",
    )
    .unwrap();
    let err = alice.fails(&["flow", "list"]);
    assert!(err.contains("corrupt"), "{err}");
    std::fs::write(&key, &good_key).unwrap();

    // A damaged database: an error, and the file is left exactly as it was.
    let db = alice.home.join("coflow.db");
    for f in ["coflow.db-wal", "coflow.db-shm"] {
        let _ = std::fs::remove_file(alice.home.join(f));
    }
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&db, &garbage).unwrap();
    let err = alice.fails(&["flow", "list"]);
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), garbage);
}

#[test]
fn two_processes_at_once_never_corrupt_the_store() {
    let alice = Node::init("alice", "Alice");
    let f = s(&alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]).to_string();
    let bin = assert_cmd::cargo::cargo_bin("coflow");
    let spawn = |tag: &str| {
        let home: &Path = &alice.home;
        let f = f.clone();
        let tag = tag.to_string();
        let bin = bin.clone();
        let home = home.to_path_buf();
        std::thread::spawn(move || {
            let mut ok = 0;
            for i in 0..15 {
                let st = std::process::Command::new(&bin)
                    .arg("--home")
                    .arg(&home)
                    .args(["step", "add", &f, &format!("{tag} {i}")])
                    .output()
                    .unwrap();
                if st.status.success() {
                    ok += 1;
                } else {
                    let err = String::from_utf8_lossy(&st.stderr).to_string();
                    assert!(err.contains("locked"), "unexpected failure: {err}");
                }
            }
            ok
        })
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let made = a.join().unwrap() + b.join().unwrap();
    assert!(made > 0);
    let show = alice.json(&["flow", "show", &f]);
    assert_eq!(show["steps"].as_array().unwrap().len(), made);
    let verify = alice.json(&["flow", "verify", &f]);
    assert_eq!(verify["valid"], made as u64 + 1);
    assert_eq!(verify["invalid"], 0);
}

#[test]
fn a_full_disk_stops_writes_with_a_clear_message_and_loses_nothing() {
    let alice = Node::init("alice", "Alice");
    let f = s(&alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]).to_string();
    alice.json(&["step", "add", &f, "Choose the cloth"]);
    let heads = alice.heads(&f);
    let pages: i64 = {
        let db = rusqlite::Connection::open(alice.home.join("coflow.db")).unwrap();
        db.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap()
    };
    // The database may not grow: a large edit cannot be stored.
    // Incompressible text (Automerge deflates large values), bigger than the free space and
    // as long as a comment may be.
    let mut x: u64 = 88172645463325252;
    let big: String = (0..coflow::flow::limit::LONG_TEXT)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect();
    let out = alice
        .cmd()
        .env("COFLOW_TEST_MAX_PAGES", pages.to_string())
        .args(["comment", &f, &big])
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.contains("disk is full") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(
        alice.heads(&f),
        heads,
        "nothing was acknowledged, nothing changed"
    );
    assert_eq!(alice.json(&["flow", "verify", &f])["invalid"], 0);
    // With room again, writing goes on.
    alice.json(&["comment", &f, "room again"]);
    assert_eq!(
        alice.json(&["flow", "show", &f])["comments"][0]["text"],
        "room again"
    );
}

/// One changed digit of the secret key in `identity.key` is refused (it would otherwise be a
/// new node with the same name), and so is a key file group or others may read.
#[test]
fn a_damaged_or_readable_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let alice = Node::init("alice", "Alice");
    let id = alice.id();
    // `coflow init` made the data dir its owner's alone.
    let mode = std::fs::metadata(&alice.home).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let path = alice.home.join("identity.key");
    let text = std::fs::read_to_string(&path).unwrap();
    let key: Value = serde_json::from_str(&text).unwrap();
    let secret = key["secret_key"].as_str().unwrap();
    let digit = if secret.as_bytes()[20] == b'7' {
        "8"
    } else {
        "7"
    };
    let mut changed = secret.to_string();
    changed.replace_range(20..21, digit);
    std::fs::write(&path, text.replace(secret, &changed)).unwrap();
    let err = alice.fails(&["id"]);
    assert!(
        err.contains(&format!("the key file {} is corrupt", path.display())),
        "{err}"
    );
    std::fs::write(&path, &text).unwrap();
    assert_eq!(alice.id(), id);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = alice.fails(&["id"]);
    assert!(
        err.contains(&format!(
            "permissions 0644 for {} are too open",
            path.display()
        )),
        "{err}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(alice.id(), id);
}

/// A data dir whose database was deleted, or truncated to nothing, next to its key: every
/// command and the node refuse with one line saying so and how to go on, and nothing is
/// created; `init --new-store` is the explicit way to start over with an empty store.
#[test]
fn a_lost_database_is_refused_not_replaced() {
    let alice = Node::init("alice", "Alice");
    let id = alice.id();
    let f = alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let db = alice.home.join("coflow.db");
    std::fs::remove_file(&db).unwrap();
    for args in [vec!["flow", "list"], vec!["id"], vec!["flow", "show", &f]] {
        let err = alice.fails(&args);
        assert!(
            err.contains(&format!("this node's database {} is missing", db.display()))
                && err.contains("restore it from a backup")
                && err.contains("coflow init --new-store"),
            "{args:?}: {err}"
        );
    }
    let node = alice
        .cmd()
        .env("COFLOW_LOG", "warn")
        .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .timeout(std::time::Duration::from_secs(30))
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&node.get_output().stderr).to_string();
    assert!(err.contains("is missing"), "{err}");
    assert!(!db.exists(), "nothing created");

    std::fs::write(&db, b"").unwrap();
    let err = alice.fails(&["flow", "list"]);
    assert!(
        err.contains(&format!("this node's database {} is empty", db.display())),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "nothing written");

    // Starting over is explicit, keeps the key, and never replaces a store.
    let out = alice
        .cmd()
        .args(["--json", "init", "--new-store"])
        .assert()
        .success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["node_id"], id.as_str());
    assert_eq!(alice.json(&["flow", "list"]), serde_json::json!([]));
    let err = alice.fails(&["init", "--new-store"]);
    assert!(err.contains("already holds a coflow store"), "{err}");
    alice
        .cmd()
        .args(["init", "--name", "A", "--new-store"])
        .assert()
        .code(2);
}

/// A data dir the user may not write is reported as such, not as a damaged store.
#[test]
fn a_read_only_data_dir_names_the_real_reason() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let alice = Node::init("alice", "Alice");
    alice.json(&["flow", "new", "Suit", "--need", "A suit"]);
    alice.json(&["flow", "list"]);
    let home = &alice.home;
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("coflow"));
    cmd.env_remove("COFLOW_HOME")
        .arg("--home")
        .arg(home)
        .args(["flow", "list"]);
    // Permissions do not bind root: run the command as an ordinary user who owns the dir.
    if std::fs::metadata(home).unwrap().uid() == 0 {
        const NOBODY: u32 = 65534;
        let parent = home.parent().unwrap();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(home, Some(NOBODY), Some(NOBODY)).unwrap();
        for entry in std::fs::read_dir(home).unwrap() {
            std::os::unix::fs::chown(entry.unwrap().path(), Some(NOBODY), Some(NOBODY)).unwrap();
        }
        cmd.uid(NOBODY).gid(NOBODY);
    }
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o500)).unwrap();
    let before = std::fs::read(home.join("coflow.db")).unwrap();
    let out = cmd.output().unwrap();
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot write to {}", home.display()))
            && err.contains("Permission denied"),
        "{err}"
    );
    assert!(!err.contains("damaged"), "{err}");
    assert_eq!(std::fs::read(home.join("coflow.db")).unwrap(), before);
}

/// A version 1 key file (no checksum; still loadable) with one changed digit is another key:
/// the store knows whose it is and refuses it.
#[test]
fn a_store_refuses_a_key_that_is_not_its_own() {
    use std::os::unix::fs::PermissionsExt;
    let alice = Node::init("alice", "Alice");
    let id = alice.id();
    let path = alice.home.join("identity.key");
    let key: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let secret = key["secret_key"].as_str().unwrap().to_string();
    let v1 = |secret: &str| {
        format!("{{\n  \"version\": 1,\n  \"secret_key\": \"{secret}\",\n  \"name\": \"Alice\"\n}}")
    };
    std::fs::write(&path, v1(&secret)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(alice.id(), id, "a version 1 key file loads");
    let digit = if secret.as_bytes()[5] == b'3' {
        "4"
    } else {
        "3"
    };
    let mut changed = secret.clone();
    changed.replace_range(5..6, digit);
    std::fs::write(&path, v1(&changed)).unwrap();
    let err = alice.fails(&["flow", "list"]);
    assert!(
        err.contains(&format!("belongs to node {id}")) && err.contains("replaced or damaged"),
        "{err}"
    );
    // A store with no key at all: init will not make a new key for it.
    std::fs::remove_file(&path).unwrap();
    let err = alice.fails(&["init", "--name", "Alice"]);
    assert!(
        err.contains("holds a coflow store but there is no key"),
        "{err}"
    );
    assert!(!path.exists(), "no key was made");
}

/// 4 KiB of random bytes over a page no flow reads (the address book's) used to pass `flow
/// verify`: it now runs SQLite's integrity check too and fails, and so does `coflow doctor`.
#[test]
fn random_bytes_in_the_database_fail_verify_and_doctor() {
    use std::io::{Seek, SeekFrom, Write};
    let alice = Node::init("alice", "Alice");
    let f = alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..5 {
        alice.json(&["comment", &f, &format!("note {i}")]);
    }
    let v = alice.json(&["flow", "verify", &f]);
    assert_eq!(
        (v["store_ok"].clone(), v["invalid"].clone()),
        (true.into(), 0.into())
    );
    assert_eq!(v["integrity"], serde_json::json!([]));
    let d = alice.json(&["doctor"]);
    assert_eq!(d["ok"], true, "{d}");

    let db = alice.home.join("coflow.db");
    let (page, page_size): (i64, i64) = {
        // Move every page into the main file (the last connection to close removes the WAL).
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let page = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'peers'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let size = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        (page, size)
    };
    assert!(
        !alice.home.join("coflow.db-wal").exists(),
        "all pages are in the main file"
    );
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.seek(SeekFrom::Start(((page - 1) * page_size) as u64))
        .unwrap();
    file.write_all(&garbage).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let out = alice
        .cmd()
        .args(["--json", "flow", "verify", &f])
        .assert()
        .code(1);
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["invalid"], 0, "every change still verifies: {v}");
    assert_eq!(v["store_ok"], false, "{v}");
    assert!(!v["integrity"].as_array().unwrap().is_empty(), "{v}");
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("failed SQLite's integrity check"), "{err}");

    let out = alice.cmd().args(["--json", "doctor"]).assert().code(1);
    let d: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(d["ok"], false, "{d}");
    let by_name = |name: &str| {
        d["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {d}"))
            .clone()
    };
    assert_eq!(by_name("store")["ok"], false, "{d}");
    assert_eq!(by_name("key")["ok"], true, "{d}");
    assert_eq!(by_name("config")["ok"], true, "{d}");
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("1 of 3 checks"), "{err}");
}

/// `coflow doctor` reports each broken part: a readable key and a bad config at once.
#[test]
fn doctor_reports_the_key_and_the_config() {
    use std::os::unix::fs::PermissionsExt;
    let alice = Node::init("alice", "Alice");
    let key = alice.home.join("identity.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(alice.home.join("config.toml"), "listen = [\"nonsense\"]\n").unwrap();
    let out = alice.cmd().args(["--json", "doctor"]).assert().code(1);
    let d: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let checks = d["checks"].as_array().unwrap();
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["key", "config"], "{d}");
    assert!(
        checks[0]["detail"]
            .as_str()
            .unwrap()
            .contains("permissions 0644"),
        "{d}"
    );
    assert!(
        checks[1]["detail"]
            .as_str()
            .unwrap()
            .contains("is not a multiaddr"),
        "{d}"
    );
    assert_eq!(checks[2]["check"], "store");
    assert_eq!(checks[2]["ok"], true, "{d}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(alice.home.join("config.toml")).unwrap();
    let d = alice.json(&["doctor"]);
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(d["checks"].as_array().unwrap().len(), 4, "{d}");
}

/// What a flow waits on its customer for, in `flow list` and `flow show`: her decision, then a
/// step she takes part in, then confirming the need; each gone once done (the list's stored
/// answer follows every change).
#[test]
fn flow_list_and_show_tell_what_waits_on_you_and_forget_it_once_done() {
    let alice = Node::init("waits-alice", "Alice");
    let f = s(&alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]).to_string();
    let waiting = |n: &Node| -> Vec<(String, String)> {
        n.json(&["flow", "list"])[0]["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (s(&w["kind"]).to_string(), s(&w["text"]).to_string()))
            .collect()
    };
    let pair = |k: &str, t: &str| (k.to_string(), t.to_string());
    assert_eq!(waiting(&alice), []);
    let d = alice.json(&[
        "decision", "new", &f, "Cloth", "--option", "Wool", "--option", "Linen",
    ]);
    let d = s(&d["id"]).to_string();
    assert_eq!(waiting(&alice), [pair("decision", "Decide: Cloth")]);
    // Asked again, the stored answer is the same.
    assert_eq!(waiting(&alice), [pair("decision", "Decide: Cloth")]);
    assert!(alice.ok(&["flow", "list"]).contains("(1 waiting on you)"));
    assert!(alice
        .ok(&["flow", "show", &f])
        .starts_with("Waiting on you:\n  - Decide: Cloth\n"));
    alice.json(&["decision", "choose", &f, &d, "Wool"]);
    assert_eq!(waiting(&alice), []);
    let step = alice.json(&["step", "add", &f, "First fitting", "--customer"]);
    let step = s(&step["id"]).to_string();
    assert_eq!(waiting(&alice), [pair("step", "Step: First fitting")]);
    alice.json(&["step", "done", &f, &step]);
    assert_eq!(
        waiting(&alice),
        [pair("fulfil", "Confirm your need fulfilled")]
    );
    let show = alice.json(&["flow", "show", &f]);
    assert_eq!(show["my_role"], "customer");
    assert_eq!(show["me"], alice.id().as_str());
    assert_eq!(show["waiting_on_me"][0]["kind"], "fulfil");
    alice.json(&["flow", "fulfil", &f]);
    assert_eq!(waiting(&alice), []);
    assert!(!alice.ok(&["flow", "list"]).contains("waiting on you"));
}
