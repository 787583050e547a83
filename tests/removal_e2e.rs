//! Removal takes effect (SECURITY.md, "Removal takes effect") between real `coflow node`
//! processes on 127.0.0.1: what a removed member writes after its removal, whether its node was
//! running or offline, falls on every node; its own node learns of the removal, shows it and
//! refuses further edits; all end at the same heads, and nobody penalizes anyone (the removed
//! member was honest: it did not know).

mod common;

use common::procs::{converged, eventually, Participant};
use serde_json::Value;
use std::time::{Duration, Instant};

fn show(p: &Participant, flow: &str) -> Value {
    p.json(&["flow", "show", flow])
}

/// Whether `p` shows `name` among the flow's members as removed.
fn shows_removed(p: &Participant, flow: &str, name: &str) -> bool {
    show(p, flow)["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == name && m["removed"] == true)
}

/// `p` comments on the flow; returns the change's hash.
fn comment(p: &Participant, flow: &str, text: &str) -> String {
    p.json(&["comment", flow, text])["change"]
        .as_str()
        .unwrap()
        .to_string()
}

fn comment_texts(v: &Value) -> Vec<String> {
    v["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

/// Alice (customer) starts a flow and invites Bob as a contributor and Carol as an owner; all
/// three nodes run and hold the same heads.
fn tailor(root: &std::path::Path) -> (Participant, Participant, Participant, String) {
    let mut alice = Participant::new(root, "Alice");
    let mut bob = Participant::new(root, "Bob");
    let mut carol = Participant::new(root, "Carol");
    for p in [&mut alice, &mut bob, &mut carol] {
        p.start(&[]);
    }
    let flow = alice.json(&["flow", "new", "Navy suit", "--need", "A navy suit"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (p, role) in [(&bob, "contributor"), (&carol, "owner")] {
        let invite = alice.json(&["flow", "invite", &flow, "--role", role]);
        p.json(&["flow", "join", invite["ticket"].as_str().unwrap()]);
    }
    comment(&alice, &flow, "Fitting on Tuesday");
    let all = [&alice, &bob, &carol];
    converged(&flow, &all);
    // Every node talks to both others and is in sync with them: no conversation is still to
    // start (a node that connects to a member after its removal learns of it at once).
    eventually("every node is in sync with both others", &all, || {
        all.iter().all(|p| {
            let sync = show(p, &flow)["sync"].as_array().unwrap().clone();
            sync.len() == 2
                && sync
                    .iter()
                    .all(|m| m["connected"] == true && m["in_sync"] == true)
        })
    });
    (alice, bob, carol, flow)
}

/// Waits until no conversation is due a restart: a node restarts one whose last message is
/// `ANTI_ENTROPY_MS` old and whose peer's heads it has not heard, so once no node has sent a
/// sync request for longer than that (and a tick), none will until something changes.
fn quiet(all: &[&Participant]) {
    let quiet = Duration::from_millis(coflow::sync::ANTI_ENTROPY_MS) + coflow::node::TICK * 2;
    let mut last = Vec::new();
    let mut since = Instant::now();
    eventually("no node has sent a sync request for a while", all, || {
        let sent: Vec<Value> = all
            .iter()
            .map(|p| p.json(&["stats"])["requests_sent"].clone())
            .collect();
        if sent != last {
            last = sent;
            since = Instant::now();
        }
        since.elapsed() >= quiet
    });
}

/// Whether `p` holds the change `change` as fallen and does not show the comment `text`.
fn fell(p: &Participant, flow: &str, text: &str, change: &str) -> bool {
    let v = show(p, flow);
    !comment_texts(&v).iter().any(|t| t == text)
        && v["fallen"].as_array().unwrap().iter().any(|h| h == change)
}

/// What every node must agree on once Bob, removed, wrote `text` (change `change`): his node
/// shows him removed and his comment fallen, nobody shows the comment (if Alice and Carol were
/// given it, `held`, they keep it as fallen), his next edit is refused, everyone holds the same
/// heads, and no node penalized anyone.
fn removal_took_effect(
    alice: &Participant,
    bob: &Participant,
    carol: &Participant,
    flow: &str,
    (text, change): (&str, &str),
    held: bool,
) {
    let all = [alice, bob, carol];
    // Bob's node learns of its removal from a member it sends its comment to, and then stops
    // syncing the flow: once it shows him removed, nothing of his can reach anyone any more.
    eventually("Bob's node shows him removed", &all, || {
        shows_removed(bob, flow, "Bob")
    });
    eventually("Bob's comment fell on his node", &all, || {
        fell(bob, flow, text, change)
    });
    if held {
        eventually(
            "Bob's comment fell on Alice's and Carol's nodes",
            &all,
            || fell(alice, flow, text, change) && fell(carol, flow, text, change),
        );
    }
    for p in [alice, carol] {
        let v = show(p, flow);
        assert!(
            !comment_texts(&v).iter().any(|t| t == text),
            "{} shows the removed member's comment: {v}",
            p.name
        );
        // What a removed member sends is not taken: only a member who had not heard of the
        // removal can have passed the comment on.
        let holds = v["fallen"].as_array().unwrap().iter().any(|h| h == change);
        assert_eq!(holds, held, "{} holds the comment: {v}", p.name);
    }
    eventually("Alice and Carol show Bob removed", &all, || {
        shows_removed(alice, flow, "Bob") && shows_removed(carol, flow, "Bob")
    });
    converged(flow, &all);
    for p in all {
        assert_eq!(
            comment_texts(&show(p, flow)),
            ["Fitting on Tuesday"],
            "{} shows what stands",
            p.name
        );
    }
    let err = bob.fails(&["comment", flow, "And again"]);
    assert!(err.contains("not a member"), "{err}");
    // Bob was honest (he did not know): no node penalized or blocked anyone for what he sent,
    // nor for passing it on. (These are coflow's own penalties; gossipsub's peer score, which
    // also logs "penalizing", docks a node that restarts and grafts again within its backoff.)
    for p in all {
        let logs = p.logs();
        let penalties: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("penalizing peer: ") || l.contains("blocking peer: "))
            .collect();
        assert!(
            penalties.is_empty(),
            "{} penalized a peer:\n{}",
            p.name,
            penalties.join("\n")
        );
    }
}

/// Review A.1: Alice removes Bob while his node runs; Bob, not knowing, comments through it.
#[test]
fn a_member_removed_while_its_node_runs_writes_nothing_that_stands() {
    let root = tempfile::tempdir().unwrap();
    let (alice, bob, carol, flow) = tailor(root.path());
    // Otherwise Bob's node could learn of his removal by its own anti-entropy before he writes.
    quiet(&[&alice, &bob, &carol]);
    alice.json(&["member", "remove", &flow, "Bob"]);
    eventually("Carol holds the removal", &[&alice, &carol], || {
        shows_removed(&carol, &flow, "Bob")
    });
    // No member sends a removed member content, so Bob's node has not heard of it.
    let text = "Written after my removal";
    let change = comment(&bob, &flow, text);
    removal_took_effect(&alice, &bob, &carol, &flow, (text, &change), false);
}

/// Bob's node is down when Alice removes him; he comments offline (his CLI writes to his store)
/// and starts his node again.
#[test]
fn a_member_removed_while_offline_writes_nothing_that_stands() {
    let root = tempfile::tempdir().unwrap();
    let (alice, mut bob, carol, flow) = tailor(root.path());
    bob.kill9();
    alice.json(&["member", "remove", &flow, "Bob"]);
    eventually("Carol holds the removal", &[&alice, &carol], || {
        shows_removed(&carol, &flow, "Bob")
    });
    assert_eq!(bob.json(&["status"])["running"], false);
    let text = "Written offline after my removal";
    let change = comment(&bob, &flow, text);
    bob.start(&[]);
    removal_took_effect(&alice, &bob, &carol, &flow, (text, &change), false);
}

/// Alice removes Bob while her node is down; Bob, whose node runs, comments and Carol takes it
/// (she has not heard of the removal). When Alice's node is back, the comment falls on Carol's
/// node too, Alice holds it as fallen (Carol passed it on; nobody blames her), and Bob's node
/// learns of the removal.
#[test]
fn a_comment_taken_before_the_removal_was_heard_of_falls_there_too() {
    let root = tempfile::tempdir().unwrap();
    let (mut alice, bob, carol, flow) = tailor(root.path());
    alice.stop();
    alice.json(&["member", "remove", &flow, "Bob"]);
    let text = "Written after my removal, taken by Carol";
    let change = comment(&bob, &flow, text);
    eventually("Carol shows Bob's comment", &[&bob, &carol], || {
        comment_texts(&show(&carol, &flow))
            .iter()
            .any(|t| t == text)
    });
    alice.restart_same_port(&[]);
    removal_took_effect(&alice, &bob, &carol, &flow, (text, &change), true);
}
