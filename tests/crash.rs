//! Durability at every crash point of the receive path: a node is killed (abort, like a power
//! cut) at each labelled point of receive → verify/apply → store → commit → advertise. On restart
//! its database passes `PRAGMA integrity_check`, nothing the sender acknowledged is lost, and the
//! node catches up — which it could not if it had advertised heads it had not stored.

mod common;

use common::procs::{converged, shared_flow, Participant};

fn stored_changes(p: &Participant, flow: &str) -> i64 {
    let db = rusqlite::Connection::open(p.home.join("coflow.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "{}'s database is damaged", p.name);
    db.query_row(
        "SELECT count(*) FROM changes WHERE flow = ?1",
        [flow],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_crash_at_any_point_of_the_receive_path_loses_nothing() {
    for (label, stored_before_crash) in [
        ("receive", false),
        ("applied", false),
        ("stored", false),
        ("committed", true),
    ] {
        let root = tempfile::tempdir().unwrap();
        let mut alice = Participant::new(root.path(), "Alice");
        let mut bob = Participant::new(root.path(), "Bob");
        alice.start(&[]);
        bob.start(&[]);
        let flow = shared_flow(&alice, &[&bob]);
        let before = stored_changes(&bob, &flow);

        // Bob's node comes back armed to crash; Alice's next change kills it at `label`.
        bob.stop();
        bob.start_with(&[], &[("COFLOW_CRASH_AT", label)]);
        alice.json(&["comment", &flow, &format!("sent into a crash at {label}")]);
        assert!(!bob.wait_exit(), "{label}: Bob's node should have aborted");
        assert!(
            bob.logs().contains(&format!("aborting at '{label}'")),
            "{}",
            bob.logs()
        );
        let after = stored_changes(&bob, &flow);
        if stored_before_crash {
            assert_eq!(
                after,
                before + 1,
                "{label}: the committed change survives the crash"
            );
        } else {
            assert_eq!(after, before, "{label}: nothing half-written survives");
        }

        // Restarted normally, Bob ends up with everything Alice acknowledged.
        bob.start(&[]);
        converged(&flow, &[&alice, &bob]);
        let comments = bob.json(&["flow", "show", &flow])["comments"].clone();
        assert_eq!(comments[0]["text"], format!("sent into a crash at {label}"));
        assert_eq!(bob.json(&["flow", "verify", &flow])["invalid"], 0);
        assert_eq!(stored_changes(&bob, &flow), before + 1);
    }
}
