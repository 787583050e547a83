//! CLI conventions, through the `coflow` binary: completions, manual pages, a help text on every
//! argument, errors as JSON with `--json`, text from stdin, and prefixes that are ambiguous or
//! typed in capitals.

mod common;

use clap::CommandFactory;
use common::cli::{flows_sharing_a_prefix, s, Node};
use serde_json::Value;

#[test]
fn completions_and_manual_pages_cover_every_command() {
    let alice = Node::init("alice", "Alice");
    for shell in ["bash", "zsh", "fish"] {
        let script = alice.ok(&["completions", shell]);
        for word in ["flow", "decision", "completions", "assignee"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    alice.cmd().args(["completions", "tcsh"]).assert().code(2);

    let page = alice.ok(&["man"]);
    assert!(
        page.starts_with(".ie") && page.contains(".TH coflow 1"),
        "{page:.200}"
    );
    assert!(page.contains("decision"), "the page lists the commands");
    let dir = tempfile::tempdir().unwrap();
    let out = alice
        .cmd()
        .args(["man", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    assert!(out.get_output().stdout.is_empty());
    let show = std::fs::read_to_string(dir.path().join("coflow-flow-show.1")).unwrap();
    assert!(show.contains(".TH coflow-flow-show 1"), "{show:.200}");
    assert!(
        show.contains("unique prefix"),
        "the FLOW argument's help is on the page"
    );
    for page in ["coflow.1", "coflow-step-add.1", "coflow-decision-choose.1"] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
}

#[test]
fn every_argument_has_a_help_text() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let path = format!("{path} {}", cmd.get_name());
        if cmd.get_about().is_none() && path != "coflow" {
            missing.push(format!("{path}: the command"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id != "help" && id != "version" && arg.get_help().is_none() {
                missing.push(format!("{path}: {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &path, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&coflow::cli::Cli::command(), "", &mut missing);
    assert!(missing.is_empty(), "no help text: {missing:#?}");
}

/// Runs `args` with `--json`, expecting failure with `code`: the one JSON object on stderr.
fn json_failure(node: &Node, args: &[&str], code: i32) -> Value {
    let out = node.cmd().arg("--json").args(args).assert().code(code);
    let out = out.get_output();
    assert!(out.stdout.is_empty(), "no data on failure");
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    serde_json::from_str(&err).unwrap_or_else(|e| panic!("not JSON ({e}): {err}"))
}

#[test]
fn with_json_errors_are_a_json_object_on_stderr() {
    let alice = Node::init("alice", "Alice");
    let err = json_failure(&alice, &["flow", "show", "ffff"], 1);
    assert_eq!(s(&err["error"]), "no flow matches 'ffff'");
    assert!(err.get("usage").is_none());
    let err = json_failure(&alice, &["flow", "show"], 2);
    assert_eq!(err["usage"], true);
    assert!(s(&err["error"]).contains("<FLOW>"), "{err}");
    let err = json_failure(&alice, &["flow", "frobnicate"], 2);
    assert!(s(&err["error"]).contains("frobnicate"), "{err}");
    // Peer or user text in an error is escaped as in the human line.
    let err = json_failure(&alice, &["flow", "show", "x\u{1b}[2J"], 1);
    assert!(!s(&err["error"]).contains('\u{1b}'), "{err}");
    // Without --json: the human line.
    let human = alice.fails(&["flow", "show", "ffff"]);
    assert_eq!(human.trim_end(), "error: no flow matches 'ffff'");
    // Help and version are not errors; a command missing its subcommand prints its help.
    alice.cmd().args(["--json", "--version"]).assert().success();
    let out = alice.cmd().args(["--json", "flow"]).assert().code(2);
    let help = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        help.contains("Usage: coflow flow") && !help.starts_with('{'),
        "{help}"
    );
}

#[test]
fn a_text_given_as_a_dash_is_read_from_stdin() {
    let alice = Node::init("alice", "Alice");
    let need = "My wedding suit:\n\twool, dark blue,\nready by June.";
    let out = alice
        .cmd()
        .args(["--json", "flow", "new", "Suit", "--need", "-"])
        .write_stdin(format!("{need}\n"))
        .assert()
        .success();
    let id: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let flow = s(&id["id"]).to_string();
    let comment = "Line one\nline two";
    alice
        .cmd()
        .args(["comment", &flow, "-"])
        .write_stdin(format!("{comment}\r\n"))
        .assert()
        .success();
    alice
        .cmd()
        .args(["flow", "edit", &flow, "--title", "-"])
        .write_stdin("A suit for June")
        .assert()
        .success();
    let shown = alice.json(&["flow", "show", &flow]);
    assert_eq!(s(&shown["need"]), need);
    assert_eq!(s(&shown["title"]), "A suit for June");
    assert_eq!(s(&shown["comments"][0]["text"]), comment);

    let before = alice.json(&["flow", "show", &flow]);
    let err = alice
        .cmd()
        .args(["flow", "edit", &flow, "--title", "-", "--need", "-"])
        .write_stdin("x")
        .assert()
        .code(1);
    let err = String::from_utf8(err.get_output().stderr.clone()).unwrap();
    assert!(
        err.contains("only one argument can be read from stdin"),
        "{err}"
    );
    let err = alice
        .cmd()
        .args(["comment", &flow, "-"])
        .write_stdin(vec![b'a'; 1024 * 1024 + 1])
        .assert()
        .code(1);
    let err = String::from_utf8(err.get_output().stderr.clone()).unwrap();
    assert!(err.contains("over 1048576 bytes"), "{err}");
    let err = alice
        .cmd()
        .args(["comment", &flow, "-"])
        .write_stdin(vec![0xff, 0xfe])
        .assert()
        .code(1);
    let err = String::from_utf8(err.get_output().stderr.clone()).unwrap();
    assert!(err.contains("not UTF-8"), "{err}");
    // Over the flow's own limit: its own message.
    let long = "x".repeat(10_001);
    let err = alice
        .cmd()
        .args(["comment", &flow, "-"])
        .write_stdin(long)
        .assert()
        .code(1);
    let err = String::from_utf8(err.get_output().stderr.clone()).unwrap();
    assert!(err.contains("over the limit of 10000"), "{err}");
    assert_eq!(
        alice.json(&["flow", "show", &flow]),
        before,
        "refusals change nothing"
    );
}

#[test]
fn an_ambiguous_prefix_lists_its_candidates_and_case_does_not_matter() {
    let alice = Node::init("alice", "Alice");
    let (ids, prefix) = flows_sharing_a_prefix(&alice);
    let sharing: Vec<&String> = ids.iter().filter(|i| i.starts_with(&prefix)).collect();
    let err = alice.fails(&["flow", "show", &prefix]);
    for id in &sharing {
        assert!(err.contains(id.as_str()), "{err} names {id}");
    }
    assert!(
        err.contains(&format!("matches {} flows", sharing.len())),
        "{err}"
    );
    // Node ids are base58, where case matters: one typed in the wrong case names nobody.
    let tom = Node::init("tom", "Tom");
    let tom_id = tom.id();
    alice.json(&["member", "add", &ids[0], &tom_id, "--role", "contributor"]);
    let err = alice.fails(&["member", "remove", &ids[0], &tom_id[..20].to_lowercase()]);
    assert!(err.contains("no member matches"), "{err}");
    // An id typed in capitals still names its flow.
    let upper = ids[0][..12].to_uppercase();
    let shown = alice.json(&["flow", "show", &upper]);
    assert_eq!(s(&shown["id"]), ids[0]);
}

#[test]
fn step_show_decision_show_and_invite_list() {
    let alice = Node::init("alice", "Alice");
    let f = s(&alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]).to_string();
    let cloth = alice.json(&[
        "step",
        "add",
        &f,
        "Choose the cloth",
        "--customer",
        "--detail",
        "Wool or linen,\nsee the samples",
        "--due",
        "2027-05-01",
    ]);
    let cloth = s(&cloth["id"]).to_string();
    let d = alice.json(&[
        "decision",
        "new",
        &f,
        "Which cloth?",
        "--option",
        "Wool",
        "--option",
        "Linen",
        "--step",
        &cloth,
    ]);
    let d = s(&d["id"]).to_string();
    alice.json(&["comment", &f, "Wool, I think", "--step", &cloth]);
    alice.json(&["comment", &f, "About the whole flow"]);
    alice.json(&["decision", "choose", &f, &d, "Wo"]);

    let step = alice.json(&["step", "show", &f, &cloth[..6]]);
    assert_eq!(step["id"], cloth.as_str());
    assert_eq!(step["flow"], f.as_str());
    assert_eq!(step["detail"], "Wool or linen,\nsee the samples");
    assert_eq!(step["due"], "2027-05-01");
    assert_eq!(step["comments"].as_array().unwrap().len(), 1, "{step}");
    assert_eq!(step["comments"][0]["text"], "Wool, I think");
    assert_eq!(step["decisions"][0]["id"], d.as_str());
    let human = alice.ok(&["step", "show", &f, &cloth]);
    for part in [
        "Choose the cloth",
        "Due: 2027-05-01",
        "see the samples",
        "Wool, I think",
        "The customer takes part",
    ] {
        assert!(human.contains(part), "{part} in {human}");
    }
    assert!(!human.contains("About the whole flow"), "{human}");

    let decision = alice.json(&["decision", "show", &f, &d[..6]]);
    assert_eq!(decision["outcome"], "Wool");
    assert_eq!(decision["step"], cloth.as_str());
    let human = alice.ok(&["decision", "show", &f, &d]);
    for part in [
        "Which cloth?",
        "decided: Wool",
        "For step: Choose the cloth",
        "Alice",
    ] {
        assert!(human.contains(part), "{part} in {human}");
    }

    assert_eq!(
        alice.json(&["flow", "invite", "list", &f]),
        serde_json::json!([])
    );
    alice.ok(&["flow", "invite", &f, "--role", "owner", "--uses", "2"]);
    alice.ok(&["flow", "invite", &f, "--role", "observer"]);
    let invites = alice.json(&["flow", "invite", "list", &f]);
    let invites = invites.as_array().unwrap();
    assert_eq!(invites.len(), 2);
    let owner = invites.iter().find(|i| i["role"] == "owner").unwrap();
    assert_eq!(
        (owner["uses_left"].as_i64(), s(&owner["state"])),
        (Some(2), "open")
    );
    let observer = s(&invites.iter().find(|i| i["role"] == "observer").unwrap()["id"]).to_string();
    alice.json(&["flow", "invite", "revoke", &f, &observer]);
    let invites = alice.json(&["flow", "invite", "list", &f]);
    let revoked = invites
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == observer.as_str());
    assert_eq!(revoked.unwrap()["state"], "revoked");
    let human = alice.ok(&["flow", "invite", "list", &f]);
    assert!(
        human.contains("revoked") && human.contains("owner"),
        "{human}"
    );

    // Unknown ids: one clear line.
    let err = alice.fails(&["step", "show", &f, "zzzz"]);
    assert!(err.contains("no step matches 'zzzz'"), "{err}");
    let err = alice.fails(&["decision", "show", &f, "zzzz"]);
    assert!(err.contains("no decision matches 'zzzz'"), "{err}");
}

#[test]
fn fulfilment_with_open_work_must_be_confirmed() {
    let alice = Node::init("alice", "Alice");
    let f = s(&alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]).to_string();
    let step = s(&alice.json(&["step", "add", &f, "Cut"])["id"]).to_string();
    let d = alice.json(&[
        "decision", "new", &f, "Colour?", "--option", "Navy", "--option", "Grey",
    ]);
    let d = s(&d["id"]).to_string();
    let heads = alice.heads(&f);
    // Not a terminal: refused with what is open, and nothing written.
    let err = alice.fails(&["flow", "fulfil", &f]);
    assert!(
        err.contains("1 step(s) not done ('Cut')")
            && err.contains("1 decision(s) open ('Colour?')")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(alice.heads(&f), heads);
    alice.json(&["step", "done", &f, &step]);
    let err = alice.fails(&["flow", "fulfil", &f]);
    assert!(
        !err.contains("step(s)") && err.contains("decision(s) open"),
        "{err}"
    );
    alice.json(&["decision", "choose", &f, &d, "Navy"]);
    // Nothing open: no question asked.
    alice.json(&["flow", "fulfil", &f]);
    assert_eq!(alice.json(&["flow", "show", &f])["status"], "fulfilled");
    // --force confirms with work open.
    alice.json(&["flow", "reopen", &f]);
    alice.json(&["step", "add", &f, "Alter"]);
    alice.fails(&["flow", "fulfil", &f]);
    alice.json(&["flow", "fulfil", &f, "--force"]);
    assert_eq!(alice.json(&["flow", "show", &f])["status"], "fulfilled");
}
