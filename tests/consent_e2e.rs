//! Consent (SECURITY.md, "Consent") between real `coflow node` processes on 127.0.0.1: a flow
//! a member put this node into by node id waits as an offer; nothing more of it is taken and it
//! cannot be edited until the user accepts; accepted, it syncs both ways; declined, it is
//! deleted and stays away while its members keep writing; and nobody is penalized.

mod common;

use common::procs::{converged, eventually, Participant};
use serde_json::Value;
use std::time::Duration;

fn listed<'a>(list: &'a Value, flow: &str) -> Option<&'a Value> {
    list.as_array().unwrap().iter().find(|f| f["id"] == flow)
}

#[test]
fn an_offer_waits_for_accept_and_a_declined_flow_stays_away() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let mut bob = Participant::new(root.path(), "Bob");
    alice.start(&[]);
    bob.start(&[alice.addr()]);
    eventually("Bob is connected to Alice", &[&alice, &bob], || {
        bob.json(&["status"])["peers"] == 1
    });
    let new_flow = |title: &str| {
        alice.json(&["flow", "new", title, "--need", "A navy suit"])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (suit, spam) = (new_flow("Navy suit"), new_flow("Grey coat"));
    for flow in [&suit, &spam] {
        alice.json(&[
            "member",
            "add",
            flow,
            &bob.id(),
            "--role",
            "contributor",
            "--name",
            "Bob",
        ]);
    }
    eventually("both flows are offered to Bob", &[&bob], || {
        let list = bob.json(&["flow", "list"]);
        [&suit, &spam]
            .iter()
            .all(|f| listed(&list, f).is_some_and(|l| l["pending"] == true))
    });
    let list = bob.json(&["flow", "list"]);
    let offer = &listed(&list, &suit).unwrap()["offer"];
    assert_eq!(offer["by"], alice.id().as_str());
    assert_eq!(offer["by_role"], "customer");
    assert_eq!(offer["role"], "contributor");
    let (ok, human, _) = bob.run(&["flow", "list"]);
    assert!(ok);
    assert!(human.contains("Offered to you"), "{human}");
    assert!(human.contains("Alice (customer, "), "{human}");
    let (ok, shown, _) = bob.run(&["flow", "show", &suit]);
    assert!(ok);
    assert!(
        shown.contains("offered to you and waits for your answer"),
        "{shown}"
    );
    let err = bob.fails(&["comment", &suit, "too early"]);
    assert!(err.contains("waits for your answer"), "{err}");
    assert_eq!(bob.json(&["status"])["flows"], 0, "an offer is not held");

    // Alice's node shows that Bob has not accepted the flow yet.
    eventually("Alice sees Bob has not accepted", &[&alice], || {
        alice.json(&["flow", "show", &suit])["sync"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["node_id"] == bob.id().as_str() && m["not_serving"] == true)
    });
    let (ok, shown, _) = alice.run(&["flow", "show", &suit]);
    assert!(ok);
    assert!(shown.contains("has not accepted this flow yet"), "{shown}");

    // Alice writes on: Bob's node takes nothing more of the offered flow.
    let offered_heads = bob.json(&["flow", "show", &suit])["heads"].clone();
    alice.json(&["comment", &suit, "Fitting on Tuesday"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(bob.json(&["flow", "show", &suit])["heads"], offered_heads);

    // Bob accepts: the rest arrives, and his comment reaches Alice.
    bob.json(&["flow", "accept", &suit]);
    converged(&suit, &[&alice, &bob]);
    assert_eq!(bob.comments(&suit), ["Fitting on Tuesday"]);
    bob.json(&["comment", &suit, "Tuesday suits me"]);
    converged(&suit, &[&alice, &bob]);
    let sync = alice.json(&["flow", "show", &suit])["sync"].clone();
    assert!(
        sync.as_array()
            .unwrap()
            .iter()
            .any(|m| m["node_id"] == bob.id().as_str() && m["not_serving"] == false),
        "{sync}"
    );
    assert_eq!(alice.comments(&suit).len(), 2);
    let err = bob.fails(&["flow", "accept", &suit]);
    assert!(err.contains("already held"), "{err}");

    // Bob declines the other: it is gone, and stays gone while Alice writes on.
    bob.json(&["flow", "decline", &spam]);
    alice.json(&["comment", &spam, "Still there?"]);
    alice.json(&["comment", &suit, "Bring your shoes"]);
    converged(&suit, &[&alice, &bob]);
    std::thread::sleep(Duration::from_secs(6)); // past an anti-entropy round
    let list = bob.json(&["flow", "list"]);
    assert!(listed(&list, &spam).is_none(), "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1);
    let err = bob.fails(&["flow", "show", &spam]);
    assert!(err.contains("no flow matches"), "{err}");
    let err = bob.fails(&["flow", "accept", &spam]);
    assert!(err.contains("you declined flow"), "{err}");
    // Nothing of it is left on disk (the database and its write-ahead log).
    for file in ["coflow.db", "coflow.db-wal"] {
        let db = std::fs::read(bob.home.join(file)).unwrap_or_default();
        for needle in [&b"Grey coat"[..], b"Still there?"] {
            assert!(
                !db.windows(needle.len()).any(|w| w == needle),
                "{file} still holds {}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    // Nobody was penalized: both ends stayed connected and say nothing of it.
    assert_eq!(bob.json(&["status"])["peers"], 1);
    for p in [&alice, &bob] {
        assert!(!p.logs().contains("penalizing peer"), "{}", p.logs());
    }
}
