//! The store and the repository: durability across reopen, snapshots, the receive path, and the
//! store's own rules. Each rule is one generic function, run on both stores — the SQLite
//! [`Store`] and [`MemStore`] — so that the two cannot drift apart unnoticed (`sqlite::…` and
//! `memory::…` below).

mod common;

use coflow::auth::removal::Removal;
use coflow::auth::{Rejection, SignedChange};
use coflow::flow::{Edit, FlowId, Role};
use coflow::identity::Identity;
use coflow::repo::{load_doc, Repo, SNAPSHOT_EVERY};
use coflow::store::{Changes, Flows, MemStore, Peers, Storage, Store, StoreError, MAX_DECLINED};

fn repo(dir: &std::path::Path, seed: &str, name: &str) -> Repo {
    if Identity::load(dir).is_err() {
        return Repo::init(dir, Identity::from_seed(seed, name)).unwrap();
    }
    Repo::open(dir).unwrap()
}

fn step(title: &str) -> Edit {
    common::add_step(title, None)
}

/// Runs each rule on both stores: `store` rules are given an empty store, `repo` rules a
/// [`Backend`] to keep their repositories in.
macro_rules! on_both_stores {
    (store: $($s:ident),* ; repo: $($r:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(#[test] fn $s() { super::$s(Store::in_memory().unwrap()) })*
            $(#[test] fn $r() { super::$r(Disk(tempfile::tempdir().unwrap())) })*
        }
        mod memory {
            use super::*;
            $(#[test] fn $s() { super::$s(MemStore::new()) })*
            $(#[test] fn $r() { super::$r(Mem) })*
        }
    };
}

on_both_stores!(
    store: a_failed_write_keeps_nothing_it_wrote,
        a_failed_write_in_a_group_keeps_the_group_s_other_writes,
        what_the_store_refuses_it_refuses_with_the_same_error,
        changes_keep_their_insertion_order,
        a_declined_flow_leaves_its_id_and_members_and_the_oldest_go_first,
        offers_are_not_held_until_accepted,
        the_address_book_and_meta,
        the_address_book_forgets_the_oldest;
    repo: snapshots_load_the_same_document_and_survive_reopen,
        received_changes_take_the_same_path_and_bad_ones_leave_no_trace,
        grouped_writes_are_durable_together_at_the_commit_and_not_before,
);

/// Where a test's repositories live.
trait Backend {
    type S: Storage;
    /// What another process finds stored for a repository: equal if nothing changed.
    type Trace: PartialEq + std::fmt::Debug;
    /// The repository `seed` names (made the first time).
    fn repo(&mut self, seed: &str, name: &str) -> Repo<Self::S>;
    /// `repo`'s process ended (an open group with it); the repository opened again.
    fn reopen(&mut self, seed: &str, repo: Repo<Self::S>) -> Repo<Self::S>;
    /// How many of `flow`'s changes another process finds stored for `seed`'s repository.
    fn stored_count(&self, seed: &str, repo: &Repo<Self::S>, flow: &FlowId) -> i64;
    /// What another process finds stored for `seed`'s repository (taken with `repo` closed),
    /// and the repository opened again.
    fn trace(&mut self, seed: &str, repo: Repo<Self::S>) -> (Repo<Self::S>, Self::Trace);
}

/// SQLite stores, each in a data dir of its own.
struct Disk(tempfile::TempDir);

impl Backend for Disk {
    type S = Store;
    type Trace = Vec<(String, String)>;
    fn repo(&mut self, seed: &str, name: &str) -> Repo {
        repo(&self.0.path().join(seed), seed, name)
    }
    fn reopen(&mut self, seed: &str, repo: Repo) -> Repo {
        drop(repo);
        Repo::open(&self.0.path().join(seed)).unwrap()
    }
    fn stored_count(&self, seed: &str, _: &Repo, flow: &FlowId) -> i64 {
        stored_count(&self.0.path().join(seed), flow)
    }
    fn trace(&mut self, seed: &str, repo: Repo) -> (Repo, Self::Trace) {
        drop(repo);
        let digest = files_digest(&self.0.path().join(seed));
        (Repo::open(&self.0.path().join(seed)).unwrap(), digest)
    }
}

/// Stores in memory; "another process" finds a store as [`MemStore::reopened`] gives it.
struct Mem;

impl Backend for Mem {
    type S = MemStore;
    type Trace = MemStore;
    fn repo(&mut self, seed: &str, name: &str) -> Repo<MemStore> {
        Repo::new(MemStore::new(), Identity::from_seed(seed, name))
    }
    fn reopen(&mut self, _: &str, repo: Repo<MemStore>) -> Repo<MemStore> {
        let (store, identity) = (repo.store().reopened(), repo.identity().clone());
        drop(repo);
        Repo::new(store, identity)
    }
    fn stored_count(&self, _: &str, repo: &Repo<MemStore>, flow: &FlowId) -> i64 {
        let store = repo.store().reopened();
        let n = store.reader().changes_after(flow, 0).unwrap().len();
        n as i64
    }
    fn trace(&mut self, _: &str, repo: Repo<MemStore>) -> (Repo<MemStore>, MemStore) {
        let trace = repo.store().reopened();
        (repo, trace)
    }
}

fn snapshots_load_the_same_document_and_survive_reopen(mut b: impl Backend) {
    let mut alice = b.repo("alice", "Alice");
    let f = alice.create_flow("Suit", "A suit", Role::Customer).unwrap();
    let n = SNAPSHOT_EVERY as usize + 20;
    for i in 0..n {
        alice.edit(f.as_str(), &step(&format!("step {i}"))).unwrap();
    }
    let shown = alice.show(f.as_str()).unwrap();
    let alice = b.reopen("alice", alice);

    let store = alice.store();
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

    let mut alice = b.reopen("alice", alice);
    let again = alice.show(f.as_str()).unwrap();
    assert_eq!(again.heads, shown.heads);
    assert_eq!(again.flow, shown.flow);
    let report = alice.verify(f.as_str()).unwrap();
    assert_eq!(
        (report.changes, report.valid, report.invalid),
        (n + 1, n + 1, 0)
    );
    assert!(report.heads_match);
}

fn received_changes_take_the_same_path_and_bad_ones_leave_no_trace(mut b: impl Backend) {
    let mut alice = b.repo("alice", "Alice");
    let mut tom = b.repo("tom", "Tom");
    let f = alice.create_flow("Suit", "A suit", Role::Customer).unwrap();
    alice
        .edit(
            f.as_str(),
            &Edit::AddMember {
                node_id: tom.identity().node_id().to_string(),
                role: Role::Owner,
                name: Some("Tom".into()),
            },
        )
        .unwrap();
    alice.edit(f.as_str(), &step("Choose the cloth")).unwrap();

    // Tom receives the whole history, verified, and holds the same flow.
    let history = alice.signed_changes(&f).unwrap();
    let out = tom.receive(&f, &history).unwrap();
    assert_eq!(out.accepted.len(), 3);
    assert!(out.rejected.is_empty());
    assert_eq!(
        tom.show(f.as_str()).unwrap().flow,
        alice.show(f.as_str()).unwrap().flow
    );
    // Receiving it again changes nothing.
    let out = tom.receive(&f, &history).unwrap();
    assert_eq!((out.accepted.len(), out.known), (0, 3));

    // Tom edits; Alice receives Tom's change.
    tom.edit(f.as_str(), &step("First fitting")).unwrap();
    let out = alice.receive(&f, &tom.signed_changes(&f).unwrap()).unwrap();
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(
        alice.show(f.as_str()).unwrap().heads,
        tom.show(f.as_str()).unwrap().heads
    );

    // A forged change and malformed bytes are refused; the store is byte-identical.
    let heads = alice.show(f.as_str()).unwrap().heads;
    let (mut alice, before) = b.trace("alice", alice);
    let mut forged = tom.signed_changes(&f).unwrap().pop().unwrap();
    forged.signature[10] ^= 0x40;
    let garbage = SignedChange {
        bytes: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3],
        signature: vec![0; 64],
    };
    // A fresh change by Tom, with a bad signature.
    let mut tom2 = tom;
    tom2.edit(f.as_str(), &step("Sneaky")).unwrap();
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
    assert_eq!(alice.show(f.as_str()).unwrap().heads, heads);
    let (_, after) = b.trace("alice", alice);
    assert_eq!(after, before);
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

fn stored_count(home: &std::path::Path, flow: &FlowId) -> i64 {
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

fn grouped_writes_are_durable_together_at_the_commit_and_not_before(mut b: impl Backend) {
    let mut alice = b.repo("alice", "Alice");
    let mut tom = b.repo("tom", "Tom");
    let f = alice.create_flow("Suit", "A suit", Role::Customer).unwrap();
    let tom_id = tom.identity().node_id().to_string();
    alice
        .edit(
            f.as_str(),
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
    tom.edit(f.as_str(), &step("Measure")).unwrap();
    assert!(tom.group_wrote());
    assert_eq!(tom.show(f.as_str()).unwrap().flow.steps.len(), 1);
    assert_eq!(b.stored_count("tom", &tom, &f), 0);
    tom.commit_group().unwrap();
    assert_eq!(b.stored_count("tom", &tom, &f), 3);

    // A change received in a group that never commits (the process dies) is not stored, and
    // the store still loads.
    alice.edit(f.as_str(), &step("Cut")).unwrap();
    tom.begin_group().unwrap();
    let out = tom.receive(&f, &alice.signed_changes(&f).unwrap()).unwrap();
    assert_eq!(out.accepted.len(), 1);
    // A refused change inside the group leaves what the group already wrote alone.
    let mut forged = alice.signed_changes(&g).unwrap().pop().unwrap();
    forged.signature[3] ^= 1;
    assert!(tom.receive(&g, &[forged]).unwrap().accepted.is_empty());
    let mut tom = b.reopen("tom", tom);
    assert_eq!(b.stored_count("tom", &tom, &f), 3);
    assert_eq!(tom.show(f.as_str()).unwrap().flow.steps.len(), 1);
    tom.begin_group().unwrap();
    assert_eq!(
        tom.receive(&f, &alice.signed_changes(&f).unwrap())
            .unwrap()
            .accepted
            .len(),
        1
    );
    tom.commit_group().unwrap();
    assert_eq!(b.stored_count("tom", &tom, &f), 4);
    assert_eq!(tom.show(f.as_str()).unwrap().flow.steps.len(), 2);
}

/// The flow id a rule below calls `name` (at most 16 bytes): its bytes, padded with zeros, so
/// ids sort as their names do.
fn fid(name: &str) -> FlowId {
    let mut bytes = [0u8; 16];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    FlowId::from_array(bytes)
}

/// A change row of `flow`: its hash, bytes and signature, told apart by `i`.
fn change(i: u8) -> ([u8; 32], Vec<u8>, Vec<u8>) {
    ([i; 32], vec![i, 1, 2], vec![i; 64])
}

fn insert(w: &impl Changes, flow: &FlowId, rows: &[([u8; 32], Vec<u8>, Vec<u8>)]) -> usize {
    w.insert_changes(
        flow,
        rows.iter()
            .map(|(h, b, s)| (&h[..], b.as_slice(), s.as_slice())),
    )
    .unwrap()
}

fn removal(i: u8) -> Removal {
    Removal {
        change: automerge::ChangeHash([i; 32]),
        target: [i + 100; 32],
        rank: 1,
    }
}

fn seqs(s: &impl Storage, flow: &FlowId) -> Vec<i64> {
    let rows = s.reader().changes_after(flow, 0).unwrap();
    rows.into_iter().map(|c| c.seq).collect()
}

/// Every kind of row, written in one transaction that then fails: none of it is kept, and the
/// next change is numbered as if the failed one never was.
fn a_failed_write_keeps_nothing_it_wrote(mut s: impl Storage) {
    s.write(|w| w.insert_flow(&fid("kept"), b"g", "Kept", "open", 1))
        .unwrap();
    let failed = s.write(|w| {
        w.insert_flow(&fid("f"), b"g", "Suit", "open", 1)?;
        insert(w, &fid("f"), &[change(1), change(2)]);
        insert(w, &fid("kept"), &[change(3)]);
        w.update_flow(&fid("kept"), "Renamed", "done", 2)?;
        w.set_summary(&fid("kept"), "{}")?;
        w.mark_offered(&fid("kept"), "bob")?;
        w.put_snapshot(&fid("f"), 2, b"doc")?;
        w.insert_removals(&fid("f"), &[removal(1)])?;
        w.set_meta("k", "v")?;
        w.saw_peer("bob", &["/ip4/1.2.3.4/tcp/1".into()], 5)?;
        w.decline_flow(&fid("kept"), &["bob".into()], 3)?;
        Err::<(), _>(StoreError::Busy)
    });
    assert!(matches!(failed, Err(StoreError::Busy)));
    let r = s.reader();
    assert!(!r.has_flow(&fid("f")).unwrap());
    assert!(r.changes_after(&fid("f"), 0).unwrap().is_empty());
    assert_eq!(r.snapshot(&fid("f")).unwrap(), None);
    assert!(r.removals(&fid("f")).unwrap().is_empty());
    assert_eq!(r.meta("k").unwrap(), None);
    assert!(r.peers().unwrap().is_empty());
    assert_eq!(r.declined_members(&fid("kept")).unwrap(), None);
    assert!(r.changes_after(&fid("kept"), 0).unwrap().is_empty());
    assert_eq!(r.summary(&fid("kept")).unwrap(), None);
    assert_eq!(r.pending_ids().unwrap(), Vec::<FlowId>::new());
    let flows = r.flows().unwrap();
    assert_eq!(
        (
            flows.len(),
            flows[0].title.as_str(),
            flows[0].status.as_str()
        ),
        (1, "Kept", "open")
    );
    drop(r);
    s.write(|w| Ok::<_, StoreError>(insert(w, &fid("kept"), &[change(4)])))
        .unwrap();
    assert_eq!(seqs(&s, &fid("kept")), [1]);
    assert!(s.integrity_check().unwrap().is_empty());
}

/// In a group, a failed write undoes itself only; nothing is durable before the commit, and
/// `group_wrote` tells whether the commit has anything to write.
fn a_failed_write_in_a_group_keeps_the_group_s_other_writes(mut s: impl Storage) {
    s.write(|w| w.insert_flow(&fid("f"), b"g", "Suit", "open", 1))
        .unwrap();
    s.begin_group().unwrap();
    assert!(s.in_group() && !s.group_wrote());
    s.begin_group().unwrap();
    assert!(s.in_group());
    s.write(|w| Ok::<_, StoreError>(insert(w, &fid("f"), &[change(1)])))
        .unwrap();
    assert!(s.group_wrote());
    let failed = s.write(|w| {
        insert(w, &fid("f"), &[change(2)]);
        w.set_meta("k", "v")?;
        Err::<(), _>(StoreError::Busy)
    });
    assert!(failed.is_err());
    // A write through the reader joins the group.
    s.reader().set_meta("k2", "v2").unwrap();
    s.write(|w| Ok::<_, StoreError>(insert(w, &fid("f"), &[change(3)])))
        .unwrap();
    s.commit_group().unwrap();
    assert!(!s.in_group() && !s.group_wrote());
    let r = s.reader();
    let hashes: Vec<_> = r
        .changes_after(&fid("f"), 0)
        .unwrap()
        .into_iter()
        .map(|c| c.hash[0])
        .collect();
    assert_eq!(hashes, [1, 3]);
    assert_eq!(r.meta("k").unwrap(), None);
    assert_eq!(r.meta("k2").unwrap().as_deref(), Some("v2"));
    drop(r);
    assert_eq!(seqs(&s, &fid("f")), [1, 2]);
    // Committing with no group open does nothing.
    s.commit_group().unwrap();
}

/// A flow stored twice, and rows of a flow not stored, are refused with SQLite's errors.
fn what_the_store_refuses_it_refuses_with_the_same_error(mut s: impl Storage) {
    s.write(|w| w.insert_flow(&fid("f"), b"g", "Suit", "open", 1))
        .unwrap();
    let twice = s.write(|w| w.insert_flow(&fid("f"), b"g", "Coat", "open", 2));
    assert_eq!(
        twice.unwrap_err().to_string(),
        "storage error: UNIQUE constraint failed: flows.id"
    );
    let fk = "storage error: FOREIGN KEY constraint failed";
    let changes =
        s.write(|w| w.insert_changes(&fid("nope"), [(&[1u8; 32][..], &[1u8][..], &[1u8][..])]));
    assert_eq!(changes.unwrap_err().to_string(), fk);
    let snapshot = s.write(|w| w.put_snapshot(&fid("nope"), 1, b"doc"));
    assert_eq!(snapshot.unwrap_err().to_string(), fk);
    let removals = s.write(|w| w.insert_removals(&fid("nope"), &[removal(1)]));
    assert_eq!(removals.unwrap_err().to_string(), fk);
    assert_eq!(s.reader().flows().unwrap()[0].title, "Suit");
    // What names no row changes nothing.
    s.write(|w| {
        w.update_flow(&fid("nope"), "X", "done", 3)?;
        w.set_summary(&fid("nope"), "{}")?;
        w.accept_flow(&fid("nope"))?;
        w.peer_failed("nobody")
    })
    .unwrap();
    assert!(!s.reader().has_flow(&fid("nope")).unwrap());
    assert!(s.reader().peers().unwrap().is_empty());
}

/// Changes are numbered in insertion order across every flow; a flow reads its own in that
/// order, from any point; a change stored again is skipped (and, as SQLite's `AUTOINCREMENT`
/// does, uses up a number).
fn changes_keep_their_insertion_order(mut s: impl Storage) {
    s.write(|w| {
        w.insert_flow(&fid("a"), b"g", "A", "open", 1)?;
        w.insert_flow(&fid("b"), b"g", "B", "open", 1)?;
        assert_eq!(insert(w, &fid("a"), &[change(9), change(2)]), 2);
        assert_eq!(insert(w, &fid("b"), &[change(5)]), 1);
        assert_eq!(insert(w, &fid("a"), &[change(2), change(7)]), 1);
        Ok::<_, StoreError>(())
    })
    .unwrap();
    let r = s.reader();
    assert_eq!(seqs(&s, &fid("a")), [1, 2, 5]);
    assert_eq!(seqs(&s, &fid("b")), [3]);
    let after: Vec<_> = r
        .changes_after(&fid("a"), 1)
        .unwrap()
        .into_iter()
        .map(|c| (c.seq, c.hash[0], c.signed.bytes[0], c.signed.signature[0]))
        .collect();
    assert_eq!(after, [(2, 2, 2, 2), (5, 7, 7, 7)]);
    assert_eq!(r.last_seq(&fid("a")).unwrap(), 5);
    assert_eq!(r.last_seq(&fid("none")).unwrap(), 0);
    assert_eq!(r.count_after(&fid("a"), 0).unwrap(), 3);
    assert_eq!(r.count_after(&fid("a"), 2).unwrap(), 1);
    assert_eq!(r.signature(&fid("a"), &[7; 32]).unwrap(), Some(vec![7; 64]));
    assert_eq!(r.signature(&fid("b"), &[7; 32]).unwrap(), None);
    let signed = r.signed_change(&fid("b"), &[5; 32]).unwrap().unwrap();
    assert_eq!(
        (signed.bytes, signed.signature),
        (vec![5, 1, 2], vec![5; 64])
    );
    assert_eq!(r.snapshot_seq(&fid("a")).unwrap(), None);
    r.put_snapshot(&fid("a"), 2, b"one").unwrap();
    r.put_snapshot(&fid("a"), 5, b"two").unwrap();
    assert_eq!(r.snapshot(&fid("a")).unwrap(), Some((5, b"two".to_vec())));
    assert_eq!(r.snapshot_seq(&fid("a")).unwrap(), Some(5));
    r.insert_removals(&fid("a"), &[removal(3), removal(1), removal(3)])
        .unwrap();
    assert_eq!(r.removals(&fid("a")).unwrap(), [removal(1), removal(3)]);
    assert!(s.integrity_check().unwrap().is_empty());
}

/// Declining deletes what was stored for a flow and keeps its id and members; past
/// [`MAX_DECLINED`] the oldest decline is forgotten first (the highest id among equals).
fn a_declined_flow_leaves_its_id_and_members_and_the_oldest_go_first(mut s: impl Storage) {
    s.write(|w| {
        w.insert_flow(&fid("x"), b"g", "X", "open", 1)?;
        insert(w, &fid("x"), &[change(1)]);
        w.put_snapshot(&fid("x"), 1, b"doc")?;
        w.insert_removals(&fid("x"), &[removal(1)])?;
        w.mark_offered(&fid("x"), "bob")?;
        w.decline_flow(&fid("x"), &["bob".into(), "carol".into()], 1)
    })
    .unwrap();
    let r = s.reader();
    assert!(!r.has_flow(&fid("x")).unwrap());
    assert!(r.changes_after(&fid("x"), 0).unwrap().is_empty());
    assert_eq!(r.snapshot(&fid("x")).unwrap(), None);
    assert!(r.removals(&fid("x")).unwrap().is_empty());
    assert_eq!(
        r.declined_members(&fid("x")).unwrap(),
        Some(vec!["bob".to_string(), "carol".to_string()])
    );
    drop(r);
    assert!(s.integrity_check().unwrap().is_empty());
    // Two more at the same time as "x": "z" is forgotten first, then "y", then "x".
    s.write(|w| {
        for id in ["y", "z"] {
            w.insert_flow(&fid(id), b"g", "", "open", 1)?;
            w.decline_flow(&fid(id), &[], 1)?;
        }
        for i in 0..MAX_DECLINED - 3 {
            let id = format!("later{i:04}");
            w.insert_flow(&fid(&id), b"g", "", "open", 2)?;
            w.decline_flow(&fid(&id), &[], 2 + i as i64)?;
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    assert_eq!(declined(&s, &["x", "y", "z"]), [true, true, true]);
    s.write(|w| {
        w.insert_flow(&fid("new1"), b"g", "", "open", 9)?;
        w.decline_flow(&fid("new1"), &[], 5000)
    })
    .unwrap();
    assert_eq!(declined(&s, &["x", "y", "z"]), [true, true, false]);
    s.write(|w| {
        w.insert_flow(&fid("new2"), b"g", "", "open", 9)?;
        w.decline_flow(&fid("new2"), &[], 5001)?;
        w.forget_declined(&fid("later0000"))
    })
    .unwrap();
    assert_eq!(
        declined(&s, &["x", "y", "z", "new1", "new2", "later0000"]),
        [true, false, false, true, true, false]
    );
}

fn declined(s: &impl Storage, ids: &[&str]) -> Vec<bool> {
    ids.iter()
        .map(|id| s.reader().declined_members(&fid(id)).unwrap().is_some())
        .collect()
}

/// An offered flow is stored but not held until accepted; rows list oldest first.
fn offers_are_not_held_until_accepted(mut s: impl Storage) {
    s.write(|w| {
        w.insert_flow(&fid("b"), b"g", "B", "open", 1)?;
        w.insert_flow(&fid("a"), b"g", "A", "open", 1)?;
        w.insert_flow(&fid("c"), b"g", "C", "open", 0)?;
        w.mark_offered(&fid("b"), "bob")?;
        w.update_flow(&fid("a"), "A2", "done", 7)
    })
    .unwrap();
    let r = s.reader();
    assert!(r.has_flow(&fid("b")).unwrap());
    assert_eq!(r.flow_ids().unwrap(), [fid("a"), fid("c")]);
    assert_eq!(r.pending_ids().unwrap(), [fid("b")]);
    let mut all = r.all_flow_ids().unwrap();
    all.sort();
    assert_eq!(all, [fid("a"), fid("b"), fid("c")]);
    let held: Vec<_> = r.flows().unwrap().into_iter().map(|f| f.id).collect();
    assert_eq!(held, [fid("c"), fid("a")]);
    let a = &r.flows().unwrap()[1];
    assert_eq!(
        (a.title.as_str(), a.status.as_str(), a.updated_at),
        ("A2", "done", 7)
    );
    let offers = r.offers().unwrap();
    assert_eq!((offers[0].0.id, offers[0].1.as_str()), (fid("b"), "bob"));
    assert_eq!(r.summary(&fid("b")).unwrap(), None);
    r.set_summary(&fid("b"), "").unwrap();
    assert_eq!(r.summary(&fid("b")).unwrap(), None);
    r.set_summary(&fid("b"), "{\"heads\":[]}").unwrap();
    assert_eq!(
        r.summary(&fid("b")).unwrap().as_deref(),
        Some("{\"heads\":[]}")
    );
    drop(r);
    s.write(|w| w.accept_flow(&fid("b"))).unwrap();
    let r = s.reader();
    assert!(r.offers().unwrap().is_empty());
    let held: Vec<_> = r.flows().unwrap().into_iter().map(|f| f.id).collect();
    assert_eq!(held, [fid("c"), fid("a"), fid("b")]);
}

/// The address book, most recently seen first, with failures counted until seen again; meta.
fn the_address_book_and_meta(s: impl Storage) {
    let r = s.reader();
    r.saw_peer("bob", &["/ip4/1.1.1.1/tcp/1".into()], 10)
        .unwrap();
    r.saw_peer("carol", &[], 20).unwrap();
    r.peer_failed("bob").unwrap();
    r.peer_failed("bob").unwrap();
    let book: Vec<_> = r
        .peers()
        .unwrap()
        .into_iter()
        .map(|p| (p.node, p.addrs.len(), p.last_seen, p.failures))
        .collect();
    assert_eq!(book, [("carol".into(), 0, 20, 0), ("bob".into(), 1, 10, 2)]);
    r.saw_peer("bob", &[], 30).unwrap();
    assert_eq!(r.peers().unwrap()[0].failures, 0);
    assert_eq!(r.meta("m").unwrap(), None);
    r.set_meta("m", "1").unwrap();
    r.set_meta("m", "2").unwrap();
    assert_eq!(r.meta("m").unwrap().as_deref(), Some("2"));
}

/// The book keeps the nodes seen last; what it forgot is gone for good (the rest keep their
/// rows), and a forgotten node seen again is back.
fn the_address_book_forgets_the_oldest(s: impl Storage) {
    let r = s.reader();
    for i in 0..10 {
        r.saw_peer(
            &format!("n{i}"),
            &[format!("/ip4/10.0.0.{i}/tcp/1")],
            100 + i,
        )
        .unwrap();
    }
    // Seen at the same time as n9: ties go by node id, as in the book's order.
    r.saw_peer("m", &[], 109).unwrap();
    r.peer_failed("n8").unwrap();
    let nodes =
        |r: &dyn Peers| -> Vec<String> { r.peers().unwrap().into_iter().map(|p| p.node).collect() };
    assert_eq!(r.forget_peers(20).unwrap(), 0);
    assert_eq!(nodes(&r).len(), 11);
    // Keep 4: m and n9 (both at 109), n8, n7.
    assert_eq!(r.forget_peers(4).unwrap(), 7);
    assert_eq!(nodes(&r), ["m", "n9", "n8", "n7"]);
    let n8 = r
        .peers()
        .unwrap()
        .into_iter()
        .find(|p| p.node == "n8")
        .unwrap();
    assert_eq!((n8.addrs.len(), n8.failures), (1, 1));
    r.saw_peer("n0", &[], 200).unwrap();
    assert_eq!(r.forget_peers(4).unwrap(), 1);
    assert_eq!(nodes(&r), ["n0", "m", "n9", "n8"]);
}
