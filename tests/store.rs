//! The store and the repository: durability across reopen, snapshots, and the receive path.

mod common;

use coflow::auth::{Rejection, SignedChange};
use coflow::flow::{Edit, Role};
use coflow::identity::Identity;
use coflow::repo::{load_doc, Repo, SNAPSHOT_EVERY};
use coflow::store::{Changes, Storage, Store};

fn repo(dir: &std::path::Path, seed: &str, name: &str) -> Repo {
    if Identity::load(dir).is_err() {
        return Repo::init(dir, Identity::from_seed(seed, name)).unwrap();
    }
    Repo::open(dir).unwrap()
}

fn step(title: &str) -> Edit {
    common::add_step(title, None)
}

#[test]
fn snapshots_load_the_same_document_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    let mut alice = repo(&home, "alice", "Alice");
    let f = alice.create_flow("Suit", "A suit", Role::Customer).unwrap();
    let n = SNAPSHOT_EVERY as usize + 20;
    for i in 0..n {
        alice.edit(&f, &step(&format!("step {i}"))).unwrap();
    }
    let shown = alice.show(&f).unwrap();
    drop(alice);

    let store = Store::open(&home).unwrap();
    let (upto, _) = store
        .reader()
        .snapshot(&f)
        .unwrap()
        .expect("a snapshot was written");
    assert!(upto > 0);
    // Loading from the snapshot gives the same document as replaying every change.
    let from_snapshot = load_doc(&store.reader(), &f).unwrap();
    let mut replayed = automerge::Automerge::new();
    let all: Vec<automerge::Change> = store
        .reader()
        .changes_after(&f, 0)
        .unwrap()
        .into_iter()
        .map(|c| automerge::Change::from_bytes(c.signed.bytes).unwrap())
        .collect();
    assert_eq!(all.len(), n + 1);
    replayed.apply_changes(all).unwrap();
    assert_eq!(from_snapshot.get_heads(), replayed.get_heads());
    drop(store);

    let mut alice = repo(&home, "alice", "Alice");
    let again = alice.show(&f).unwrap();
    assert_eq!(again.heads, shown.heads);
    assert_eq!(again.flow, shown.flow);
    let report = alice.verify(&f).unwrap();
    assert_eq!(
        (report.changes, report.valid, report.invalid),
        (n + 1, n + 1, 0)
    );
    assert!(report.heads_match);
}

#[test]
fn received_changes_take_the_same_path_and_bad_ones_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = repo(&dir.path().join("alice"), "alice", "Alice");
    let mut tom = repo(&dir.path().join("tom"), "tom", "Tom");
    let f = alice.create_flow("Suit", "A suit", Role::Customer).unwrap();
    alice
        .edit(
            &f,
            &Edit::AddMember {
                node_id: tom.identity().node_id().to_string(),
                role: Role::Owner,
                name: Some("Tom".into()),
            },
        )
        .unwrap();
    alice.edit(&f, &step("Choose the cloth")).unwrap();

    // Tom receives the whole history, verified, and holds the same flow.
    let history = alice.signed_changes(&f).unwrap();
    let out = tom.receive(&f, &history).unwrap();
    assert_eq!(out.accepted.len(), 3);
    assert!(out.rejected.is_empty());
    assert_eq!(tom.show(&f).unwrap().flow, alice.show(&f).unwrap().flow);
    // Receiving it again changes nothing.
    let out = tom.receive(&f, &history).unwrap();
    assert_eq!((out.accepted.len(), out.known), (0, 3));

    // Tom edits; Alice receives Tom's change.
    tom.edit(&f, &step("First fitting")).unwrap();
    let out = alice.receive(&f, &tom.signed_changes(&f).unwrap()).unwrap();
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(alice.show(&f).unwrap().heads, tom.show(&f).unwrap().heads);

    // A forged change and malformed bytes are refused; the store is byte-identical.
    let heads = alice.show(&f).unwrap().heads;
    let alice_home = dir.path().join("alice");
    drop(alice);
    let before = files_digest(&alice_home);
    let mut alice = repo(&alice_home, "alice", "Alice");
    let mut forged = tom.signed_changes(&f).unwrap().pop().unwrap();
    forged.signature[10] ^= 0x40;
    let garbage = SignedChange {
        bytes: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3],
        signature: vec![0; 64],
    };
    // A fresh change by Tom, with a bad signature.
    let mut tom2 = tom;
    tom2.edit(&f, &step("Sneaky")).unwrap();
    let mut bad = tom2.signed_changes(&f).unwrap().pop().unwrap();
    bad.signature[0] ^= 1;
    let out = alice.receive(&f, &[forged, garbage, bad]).unwrap();
    assert!(out.accepted.is_empty());
    assert!(out
        .rejected
        .iter()
        .any(|(_, r)| *r == Rejection::BadSignature));
    assert!(out
        .rejected
        .iter()
        .any(|(_, r)| matches!(r, Rejection::Malformed(_))));
    assert_eq!(alice.show(&f).unwrap().heads, heads);
    drop(alice);
    assert_eq!(files_digest(&alice_home), before);
}

/// A digest of the database files in `home` (taken with no connection open).
fn files_digest(home: &std::path::Path) -> Vec<(String, String)> {
    use sha2::Digest;
    ["coflow.db", "coflow.db-wal"]
        .iter()
        .filter_map(|f| {
            let bytes = std::fs::read(home.join(f)).ok()?;
            Some((
                f.to_string(),
                coflow::identity::hex(&sha2::Sha256::digest(&bytes)),
            ))
        })
        .collect()
}

fn stored_count(home: &std::path::Path, flow: &str) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        home.join("coflow.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(
        "SELECT count(*) FROM changes WHERE flow = ?1",
        [flow],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

#[test]
fn grouped_writes_are_durable_together_at_the_commit_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = repo(&dir.path().join("alice"), "alice", "Alice");
    let tom_home = dir.path().join("tom");
    let mut tom = repo(&tom_home, "tom", "Tom");
    let f = alice.create_flow("Suit", "A suit", Role::Customer).unwrap();
    let tom_id = tom.identity().node_id().to_string();
    alice
        .edit(
            &f,
            &Edit::AddMember {
                node_id: tom_id,
                role: Role::Owner,
                name: Some("Tom".into()),
            },
        )
        .unwrap();
    let g = alice.create_flow("Coat", "A coat", Role::Customer).unwrap();

    // Two received flows and a local edit share one transaction: another connection sees
    // none of it until the commit, then all of it.
    tom.begin_group().unwrap();
    assert!(!tom.group_wrote());
    let out = tom.receive(&f, &alice.signed_changes(&f).unwrap()).unwrap();
    assert_eq!(out.accepted.len(), 2);
    tom.edit(&f, &step("Measure")).unwrap();
    assert!(tom.group_wrote());
    assert_eq!(tom.show(&f).unwrap().flow.steps.len(), 1);
    assert_eq!(stored_count(&tom_home, &f), 0);
    tom.commit_group().unwrap();
    assert_eq!(stored_count(&tom_home, &f), 3);

    // A change received in a group that never commits (the process dies) is not stored, and
    // the store still loads.
    alice.edit(&f, &step("Cut")).unwrap();
    tom.begin_group().unwrap();
    let out = tom.receive(&f, &alice.signed_changes(&f).unwrap()).unwrap();
    assert_eq!(out.accepted.len(), 1);
    // A refused change inside the group leaves what the group already wrote alone.
    let mut forged = alice.signed_changes(&g).unwrap().pop().unwrap();
    forged.signature[3] ^= 1;
    assert!(tom.receive(&g, &[forged]).unwrap().accepted.is_empty());
    drop(tom);
    assert_eq!(stored_count(&tom_home, &f), 3);
    let mut tom = repo(&tom_home, "tom", "Tom");
    assert_eq!(tom.show(&f).unwrap().flow.steps.len(), 1);
    tom.begin_group().unwrap();
    assert_eq!(
        tom.receive(&f, &alice.signed_changes(&f).unwrap())
            .unwrap()
            .accepted
            .len(),
        1
    );
    tom.commit_group().unwrap();
    assert_eq!(stored_count(&tom_home, &f), 4);
    assert_eq!(tom.show(&f).unwrap().flow.steps.len(), 2);
}
