//! Text people can trust: what other members wrote is shown escaped in human output (no terminal
//! control, no hidden links, no bidi tricks, no fake blocks), `flow log` says what each change's
//! operations did (never its free-text message), and every name comes with its role and a node
//! id suffix that no member can choose.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use automerge::transaction::CommitOptions;
use automerge::ReadDoc;
use coflow::auth::SignedChange;
use coflow::flow::{Edit, Reader, Role};
use coflow::identity::Identity;
use coflow::repo::Repo;
use serde_json::Value;

struct Node {
    _dir: tempfile::TempDir,
    home: PathBuf,
}

impl Node {
    /// A node with the key `Identity::from_seed(seed, name)`.
    fn init(seed: &str, name: &str) -> Node {
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

    fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("coflow").unwrap();
        c.env_remove("COFLOW_TEST_KEY_SEED")
            .env_remove("COFLOW_HOME")
            .arg("--home")
            .arg(&self.home);
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd().arg("--json").args(args).assert().success();
        serde_json::from_slice(&out.get_output().stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {:?}", out.get_output()))
    }

    /// Human output of a command that must succeed: stdout and stderr.
    fn human(&self, args: &[&str]) -> (String, String) {
        let out = self.cmd().args(args).assert().success();
        let o = out.get_output();
        (
            String::from_utf8(o.stdout.clone()).unwrap(),
            String::from_utf8(o.stderr.clone()).unwrap(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        self.human(args).0
    }

    /// A command that must fail: its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).assert().code(1);
        assert!(out.get_output().stdout.is_empty(), "no data on failure");
        String::from_utf8(out.get_output().stderr.clone()).unwrap()
    }

    fn new_flow(&self, title: &str, need: &str) -> String {
        self.json(&["flow", "new", title, "--need", need])["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn heads(&self, flow: &str) -> Value {
        self.json(&["flow", "show", flow])["heads"].clone()
    }
}

/// Characters that must never reach a terminal from peer text: C0 controls other than the line
/// breaks the printer itself writes, DEL, C1 controls, bidi embeddings/overrides/isolates/marks,
/// and invisible format characters.
fn forbidden(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(c,
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}'
            | '\u{061c}' | '\u{200b}' | '\u{2060}' | '\u{feff}' | '\u{2028}' | '\u{2029}')
}

fn assert_clean(what: &str, text: &str) {
    if let Some((i, c)) = text.char_indices().find(|(_, c)| forbidden(*c)) {
        panic!(
            "{what}: raw U+{:04X} at byte {i} in:\n{}",
            c as u32,
            text.escape_debug()
        );
    }
}

/// Every line that mentions `needle` must be one the printer indented as quoted text, never
/// one at the start of a line or at a member line's indentation.
fn assert_no_fake_lines(what: &str, text: &str, needle: &str) {
    for line in text.lines().filter(|l| l.contains(needle)) {
        let fake = line.starts_with(needle)
            || line.starts_with(&format!("  {needle}"))
            || line.starts_with("Members:");
        assert!(
            !fake,
            "{what}: a line looks like the printer's own:\n{line}\nin:\n{text}"
        );
    }
}

// An ESC[2J (clear screen), an OSC 0 (terminal title), an OSC 8 hyperlink around innocent text,
// a right-to-left override, a zero-width space, and a fake member block after newlines.
const ESC_CLEAR: &str = "\u{1b}[2J\u{1b}[H";
const OSC_TITLE: &str = "\u{1b}]0;you have been pwned\u{7}";
const OSC_LINK: &str = "\u{1b}]8;;https://evil.example/\u{1b}\\invoice.pdf\u{1b}]8;;\u{1b}\\";
const BIDI: &str = "\u{202e}fdp.exe\u{202c}";
const FAKE_BLOCK: &str = "\n\nMembers:\n  Mallory (customer, …gkBm)  (in sync)\n";

fn hostile(tag: &str) -> String {
    format!("{tag}{ESC_CLEAR}{OSC_TITLE}{OSC_LINK}{BIDI}\u{200b}\u{7f}\u{9b}31m{FAKE_BLOCK}end")
}

#[test]
fn hostile_text_is_escaped_in_human_output_and_raw_in_json() {
    let alice = Node::init("alice", "Alice");
    let title = hostile("Suit");
    let need = hostile("Need");
    let f = alice.new_flow(&title, &need);
    let mallory = Identity::from_seed("mallory", "x");
    let name = hostile("Mal");
    alice.json(&[
        "member",
        "add",
        &f,
        mallory.node_id().as_str(),
        "--role",
        "contributor",
        "--name",
        &name,
    ]);
    let step_title = hostile("Cut");
    let step = alice.json(&[
        "step",
        "add",
        &f,
        &step_title,
        "--assignee",
        mallory.node_id().as_str(),
    ]);
    let step = step["id"].as_str().unwrap().to_string();
    let comment = hostile("Note");
    alice.json(&["comment", &f, &comment, "--step", &step]);
    let question = hostile("Which");
    let option = hostile("Wool");
    alice.json(&[
        "decision", "new", &f, &question, "--option", &option, "--option", "Linen",
    ]);
    let (_, stderr) = alice.human(&["step", "done", &f, &step]);

    let show = alice.ok(&["flow", "show", &f]);
    let log = alice.ok(&["flow", "log", &f]);
    let list = alice.ok(&["flow", "list"]);
    for (what, text) in [
        ("flow show", &show),
        ("flow log", &log),
        ("flow list", &list),
    ] {
        assert_clean(what, text);
        assert_no_fake_lines(what, text, "Mallory");
        // What was there is shown, visibly.
        assert!(text.contains("\\u{1b}"), "{what} hides the escape:\n{text}");
    }
    assert!(
        show.contains("\\u{202e}") && show.contains("\\u{200b}"),
        "{show}"
    );
    assert_eq!(
        show.lines().filter(|l| l.starts_with("Members:")).count(),
        1,
        "{show}"
    );
    assert_clean("stderr of step done", &stderr);
    // One flow, one line.
    assert_eq!(list.lines().count(), 1, "{list}");
    // The log has one line per change.
    let changes = alice.json(&["flow", "log", &f]).as_array().unwrap().len();
    assert_eq!(log.lines().count(), changes, "{log}");

    // JSON keeps every value exactly as written.
    let v = alice.json(&["flow", "show", &f]);
    assert_eq!(v["title"], title.as_str());
    assert_eq!(v["need"], need.as_str());
    assert_eq!(v["steps"][0]["title"], step_title.as_str());
    assert_eq!(v["comments"][0]["text"], comment.as_str());
    assert_eq!(v["decisions"][0]["question"], question.as_str());
    assert_eq!(v["decisions"][0]["options"][0], option.as_str());
    let m = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == mallory.node_id().as_str())
        .unwrap();
    assert_eq!(m["name"], name.as_str());
    let l = alice.json(&["flow", "list"]);
    assert_eq!(l[0]["title"], title.as_str());
}

#[test]
fn multi_line_text_keeps_its_lines_but_cannot_fake_a_block() {
    let alice = Node::init("alice", "Alice");
    let f = alice.new_flow(
        "Suit",
        "Navy.\nThree pieces.\n\nMembers:\n  Mallory (customer)",
    );
    alice.json(&[
        "comment",
        &f,
        "Looks good.\nMembers:\n  Mallory (customer) (in sync)",
    ]);
    let show = alice.ok(&["flow", "show", &f]);
    assert_clean("flow show", &show);
    assert_no_fake_lines("flow show", &show, "Mallory");
    // The lines are kept: each on its own line, after the printer's indentation.
    assert!(
        show.lines()
            .any(|l| l.trim_end().ends_with("Three pieces.")),
        "{show}"
    );
    assert!(
        show.lines().any(|l| l.trim_end().ends_with("Looks good.")),
        "{show}"
    );
}

/// Adds `who` to `flow` in the store of `home` with a change made and signed by `author`, whose
/// free-text message is `message`, and whose operations are `edit`'s.
fn receive_with_message(home: &Path, flow: &str, author: &Identity, edit: Edit, message: &str) {
    let mut repo = Repo::open(home).unwrap();
    let flow: coflow::flow::FlowId = flow.parse().unwrap();
    let doc = repo.load(&flow).unwrap();
    let mut fork = doc.fork().with_actor(author.actor());
    let current = Reader::now(&fork).flow(flow.as_str());
    let mut tx = fork.transaction();
    edit.apply(&mut tx, &current, author.node_id(), 1_780_000_000)
        .unwrap();
    let hash = tx
        .commit_with(
            CommitOptions::default()
                .with_message(message.to_string())
                .with_time(1_780_000_000),
        )
        .0
        .unwrap();
    let mut change = fork.get_change_by_hash(&hash).unwrap();
    let signed = SignedChange {
        bytes: change.bytes().into_owned(),
        signature: author.sign_change(&hash).to_vec(),
    };
    let out = repo.receive(&flow, &[signed]).unwrap();
    assert_eq!(
        out.accepted.len(),
        1,
        "the change is accepted: {:?}",
        out.rejected
    );
}

#[test]
fn the_log_says_what_the_operations_did_not_what_the_message_claims() {
    let alice = Node::init("alice", "Alice");
    let f = alice.new_flow("Navy suit", "A navy three-piece suit");
    let carl = Identity::from_seed("carl", "Carl");
    alice.json(&[
        "member",
        "add",
        &f,
        carl.node_id().as_str(),
        "--role",
        "contributor",
        "--name",
        "Alice",
    ]);
    let step = alice.json(&["step", "add", &f, "Choose the cloth"]);
    let step = step["id"].as_str().unwrap().to_string();
    // Carl, a contributor who named himself "Alice", comments; his change's message lies.
    receive_with_message(
        &alice.home,
        &f,
        &carl,
        Edit::Comment {
            text: "lovely".into(),
            step: Some(step.clone()),
        },
        "confirmed the need fulfilled",
    );
    // Alice marks the step done; her own node's message lies too (any author can write one).
    let me = Identity::from_seed("alice", "Alice");
    receive_with_message(
        &alice.home,
        &f,
        &me,
        Edit::SetStepStatus {
            step: step.clone(),
            status: coflow::flow::StepStatus::Done,
        },
        "removed Carl",
    );

    let show = alice.json(&["flow", "show", &f]);
    assert_eq!(show["status"], "open");
    let log = alice.json(&["flow", "log", &f]);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 5, "{log:?}");
    let carl_suffix = &carl.node_id().as_str()[carl.node_id().as_str().len() - 6..];
    let me_suffix = &me.node_id().as_str()[me.node_id().as_str().len() - 6..];
    // What the two lying changes did.
    assert_eq!(log[3]["author"], carl.node_id().as_str());
    assert_eq!(
        log[3]["summary"],
        "commented on step 'Choose the cloth': lovely"
    );
    assert_eq!(log[4]["summary"], "marked step 'Choose the cloth' done");
    assert_eq!(log[0]["summary"], "started the flow 'Navy suit'");
    assert_eq!(
        log[1]["summary"],
        format!("added member Alice (contributor, …{carl_suffix})")
    );
    assert_eq!(log[2]["summary"], "added step 'Choose the cloth'");

    let human = alice.ok(&["flow", "log", &f]);
    assert!(!human.contains("fulfilled"), "{human}");
    assert!(!human.contains("removed"), "{human}");
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 5, "{human}");
    // The author is shown from the flow's member records, with role and node id suffix, and
    // the two "Alice"s are told apart.
    assert!(
        lines[3].contains(&format!("Alice (contributor, …{carl_suffix})"))
            && lines[3].contains("⚠")
            && lines[3].contains("commented on step 'Choose the cloth': lovely"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].contains(&format!("Alice (customer, …{me_suffix})"))
            && lines[4].contains("marked step 'Choose the cloth' done"),
        "{}",
        lines[4]
    );

    // Real status and membership changes are described from their operations.
    alice.json(&["member", "remove", &f, carl.node_id().as_str()]);
    alice.json(&["flow", "fulfil", &f]);
    let log = alice.json(&["flow", "log", &f]);
    let log = log.as_array().unwrap();
    assert_eq!(
        log[5]["summary"],
        format!("removed member Alice (contributor, …{carl_suffix})")
    );
    assert_eq!(log[6]["summary"], "confirmed the need fulfilled");
}

#[test]
fn same_names_are_marked_and_an_ambiguous_name_is_refused_with_candidates() {
    let carol = Node::init("carol", "Carol");
    let f = carol.new_flow("Navy suit", "A navy three-piece suit");
    let other = Identity::from_seed("other-carol", "Carol");
    let lookalike = Identity::from_seed("cyrillic-carol", "x");
    carol.json(&[
        "member",
        "add",
        &f,
        other.node_id().as_str(),
        "--role",
        "contributor",
        "--name",
        "Carol",
    ]);
    // A Cyrillic "С" and a zero-width space: another name to a computer, the same to an eye.
    carol.json(&[
        "member",
        "add",
        &f,
        lookalike.node_id().as_str(),
        "--role",
        "observer",
        "--name",
        "\u{421}arol\u{200b}",
    ]);
    let me = carol.json(&["id"])["node_id"].as_str().unwrap().to_string();
    let sfx = |id: &str| id[id.len() - 6..].to_string();

    let heads = carol.heads(&f);
    let err = carol.fails(&["member", "remove", &f, "Carol"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("no member matches"), "{err}");
    assert!(
        err.contains(&format!("Carol (customer, …{})", sfx(&me)))
            && err.contains(&format!(
                "Carol (contributor, …{})",
                sfx(other.node_id().as_str())
            )),
        "{err}"
    );
    assert_clean("stderr", &err);
    assert_eq!(carol.heads(&f), heads, "a refused removal changes nothing");
    // The same ambiguity when assigning a step.
    let err = carol.fails(&["step", "add", &f, "Cut", "--assignee", "Carol"]);
    assert!(err.contains("contributor, …"), "{err}");
    assert_eq!(carol.heads(&f), heads);

    let show = carol.ok(&["flow", "show", &f]);
    assert_clean("flow show", &show);
    let member_lines: Vec<&str> = show
        .lines()
        .skip_while(|l| *l != "Members:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(member_lines.len(), 3, "{show}");
    for (id, role) in [
        (me.as_str(), "customer"),
        (other.node_id().as_str(), "contributor"),
        (lookalike.node_id().as_str(), "observer"),
    ] {
        let line = member_lines
            .iter()
            .find(|l| l.contains(&format!("({role}, …{})", sfx(id))))
            .unwrap_or_else(|| panic!("no {role} line with its suffix in:\n{show}"));
        assert!(
            line.contains("⚠ same name as another member"),
            "{line}\n{show}"
        );
    }

    // A node id prefix names one of them.
    let id = other.node_id().as_str();
    carol.json(&["member", "remove", &f, &id[..20]]);
    let v = carol.json(&["flow", "show", &f]);
    let removed = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == id)
        .unwrap()
        .clone();
    assert_eq!(removed["removed"], true, "{v}");
}

/// Not run by default: how long `flow log` takes on a flow with a few thousand changes.
/// `cargo test --release --test text -- --ignored --nocapture log_timing`
#[test]
#[ignore]
fn log_timing() {
    let alice = Node::init("alice", "Alice");
    let f = alice.new_flow("Navy suit", "A navy three-piece suit");
    let n: usize = std::env::var("LOG_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    {
        // Made in memory on top of the stored flow, signed, and received as one batch (one
        // store write), as a node catching up would receive them.
        let me = Identity::from_seed("alice", "Alice");
        let mut repo = Repo::open(&alice.home).unwrap();
        let flow: coflow::flow::FlowId = f.parse().unwrap();
        let mut doc = repo.load(&flow).unwrap().with_actor(me.actor());
        let mut batch = Vec::new();
        let mut edit = |doc: &mut automerge::Automerge, edit: Edit| {
            let current = Reader::now(&*doc).flow_without_comments(&f);
            let mut tx = doc.transaction();
            let applied = edit
                .apply(&mut tx, &current, me.node_id(), 1_780_000_000)
                .unwrap();
            let hash = tx
                .commit_with(CommitOptions::default().with_time(1_780_000_000))
                .0
                .unwrap();
            let mut change = doc.get_change_by_hash(&hash).unwrap();
            batch.push(SignedChange {
                bytes: change.bytes().into_owned(),
                signature: me.sign_change(&hash).to_vec(),
            });
            applied.created
        };
        let step = edit(
            &mut doc,
            Edit::AddStep {
                title: "Cut".into(),
                detail: None,
                assignee: None,
                customer_involved: false,
                due: None,
            },
        )
        .unwrap();
        for i in 0..n {
            let e = match i % 40 {
                39 => Edit::AddMember {
                    node_id: Identity::from_seed(&format!("m{i}"), "m")
                        .node_id()
                        .to_string(),
                    role: Role::Observer,
                    name: Some(format!("Member {i}")),
                },
                n if n % 3 == 0 => Edit::Comment {
                    text: format!("comment {i}"),
                    step: Some(step.clone()),
                },
                n if n % 3 == 1 => Edit::SetStepStatus {
                    step: step.clone(),
                    status: coflow::flow::StepStatus::Active,
                },
                _ => Edit::SetStepStatus {
                    step: step.clone(),
                    status: coflow::flow::StepStatus::Todo,
                },
            };
            edit(&mut doc, e);
        }
        let out = repo.receive(&flow, &batch).unwrap();
        assert_eq!(out.accepted.len(), n + 1, "{:?}", out.rejected);
    }
    // To time other builds on the same store: LOG_KEEP=DIR keeps a copy of the data dir.
    if let Ok(keep) = std::env::var("LOG_KEEP") {
        let status = std::process::Command::new("cp")
            .args(["-a"])
            .arg(&alice.home)
            .arg(&keep)
            .status()
            .unwrap();
        assert!(status.success());
        eprintln!("flow {f}");
    }
    for json in [false, true] {
        let started = std::time::Instant::now();
        let mut c = alice.cmd();
        if json {
            c.arg("--json");
        }
        let out = c.args(["flow", "log", &f]).assert().success();
        let took = started.elapsed();
        let lines = String::from_utf8_lossy(&out.get_output().stdout)
            .lines()
            .count();
        eprintln!(
            "flow log{} on {} changes: {took:?} ({lines} lines)",
            if json { " --json" } else { "" },
            n + 2
        );
    }
}
