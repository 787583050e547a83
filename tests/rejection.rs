//! The rejection matrix at the protocol level: a hand-built hostile peer sends crafted
//! `/coflow/sync/1` requests to a node's engine (backed by a real on-disk store). Each hostile
//! request is refused before any state is touched — the database files are byte-identical — the
//! sender is penalized, and an honest member's change still goes through right after.

mod common;

use automerge::sync::SyncDoc;
use automerge::transaction::CommitOptions;
use automerge::{Automerge, ReadDoc};
use coflow::flow::{Edit, Reader, Role};
use coflow::identity::{Identity, NodeId};
use coflow::repo::Repo;
use coflow::sync::{Engine, Io};
use coflow::wire::{self, sync_response};
use common::*;
use sha2::Digest;

struct Node {
    _dir: tempfile::TempDir,
    home: std::path::PathBuf,
    engine: Engine,
    flow: coflow::flow::FlowId,
}

fn digest(home: &std::path::Path) -> Vec<String> {
    ["coflow.db", "coflow.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(home.join(f)).ok())
        .map(|b| coflow::identity::hex(&sha2::Sha256::digest(&b)))
        .collect()
}

/// Alice's node, holding the tailor's flow (Olga owner, Carl contributor, Oscar observer).
fn alices_node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    std::fs::create_dir_all(&home).unwrap();
    let sim = Sim::tailor();
    // Alice's key is the one the Sim uses; her node receives the whole history.
    let key = alice();
    let mut repo = Repo::init(&home, key.clone()).unwrap();
    assert_eq!(repo.identity().node_id(), key.node_id());
    let out = repo.receive(&sim.flow_id, &sim.log).unwrap();
    assert_eq!(out.accepted.len(), sim.log.len());
    let mut engine = Engine::new(repo);
    engine.peer_connected(*carl().node_id(), 1);
    while engine.next_io().is_some() {}
    Node {
        _dir: dir,
        home,
        engine,
        flow: sim.flow_id,
    }
}

impl Node {
    fn doc(&mut self) -> Automerge {
        self.engine.repo().doc(&self.flow).unwrap().clone()
    }

    /// A change by `actor` made on top of the node's document, signed by `signer`.
    fn change(&mut self, actor: &Identity, signer: &Identity, edit: Edit) -> wire::SignedChange {
        let doc = self.doc();
        let mut fork = doc.fork().with_actor(actor.actor());
        let flow = Reader::now(&fork).flow(self.flow.as_str());
        let mut tx = fork.transaction();
        edit.apply(&mut tx, &flow, actor.node_id(), NOW).unwrap();
        let hash = tx
            .commit_with(CommitOptions::default().with_time(NOW))
            .0
            .unwrap();
        let mut c = fork.get_change_by_hash(&hash).unwrap();
        wire::SignedChange {
            change: c.bytes().into_owned(),
            signature: signer.sign_change(&hash).to_vec(),
        }
    }

    fn request(&self, changes: Vec<wire::SignedChange>) -> wire::SyncRequest {
        let am = Automerge::new()
            .generate_sync_message(&mut automerge::sync::State::new())
            .unwrap();
        wire::SyncRequest {
            message: Some(wire::SyncMessage {
                flow: coflow::identity::unhex(self.flow.as_str()).unwrap(),
                automerge: am.encode(),
                changes,
                session: 1,
                everyone_told: false,
            }),
        }
    }

    /// Sends `req` as `from`; returns whether `from` was penalized and the answer.
    fn send(&mut self, from: &NodeId, req: wire::SyncRequest) -> (bool, wire::SyncResponse) {
        let resp = self.engine.handle_sync_request(from, req);
        let mut penalized = false;
        while let Some(io) = self.engine.next_io() {
            if let Io::Penalize { peer, .. } = io {
                penalized |= &peer == from;
            }
        }
        (penalized, resp)
    }

    /// An honest member's change still goes through.
    fn honest_still_syncs(&mut self, text: &str) {
        let c = self.change(
            &carl(),
            &carl(),
            Edit::Comment {
                text: text.into(),
                step: None,
            },
        );
        let req = self.request(vec![c]);
        let (penalized, _) = self.send(&carl().node_id().clone(), req);
        assert!(!penalized);
        let comments = Reader::now(&self.doc()).flow(self.flow.as_str()).comments;
        assert!(
            comments.iter().any(|c| c.text == text),
            "the honest change went through"
        );
    }
}

/// Runs one hostile request and checks: refused, nothing written, sender penalized (or, for
/// harmless repeats, not), honest members unaffected.
fn row(name: &str, penalize: bool, make: impl FnOnce(&mut Node) -> (NodeId, wire::SyncRequest)) {
    let mut node = alices_node();
    let (from, req) = make(&mut node);
    let heads = node.doc().get_heads();
    let before = digest(&node.home);
    let (penalized, resp) = node.send(&from, req);
    assert_eq!(
        digest(&node.home),
        before,
        "{name}: the store must be byte-identical"
    );
    assert_eq!(
        node.doc().get_heads(),
        heads,
        "{name}: the heads must not move"
    );
    assert_eq!(penalized, penalize, "{name}: penalty");
    if penalize {
        assert!(
            matches!(resp.result, Some(sync_response::Result::Unavailable(true))),
            "{name}: a refused request gets no content"
        );
    }
    node.honest_still_syncs(&format!("after {name}"));
}

#[test]
fn forged_signature() {
    row("forged signature", true, |n| {
        let mut c = n.change(&carl(), &carl(), add_step("forged", None));
        c.signature[5] ^= 0x10;
        (*eve().node_id(), n.request(vec![c]))
    });
}

#[test]
fn valid_signature_by_a_non_member() {
    // Refused and nothing kept, but not penalized: the node treats a stranger's change about a
    // flow it holds exactly as one about a flow it does not hold (where the change only waits
    // for dependencies it lacks), so the stranger cannot tell which (SECURITY.md,
    // "Confidentiality from non-members"). A forged one is penalized either way (above).
    row("non-member", false, |n| {
        let c = n.change(&eve(), &eve(), add_step("by a stranger", None));
        (*eve().node_id(), n.request(vec![c]))
    });
}

#[test]
fn an_observer_writing_steps() {
    row("observer writes a step", true, |n| {
        let c = n.change(&oscar(), &oscar(), add_step("observer's step", None));
        (*oscar().node_id(), n.request(vec![c]))
    });
}

#[test]
fn an_actor_id_that_is_not_the_signing_key() {
    row("actor is not the signer", true, |n| {
        let c = n.change(&olga(), &eve(), add_step("in Olga's name", None));
        (*eve().node_id(), n.request(vec![c]))
    });
    row("actor is no key at all", true, |n| {
        let mut fork = n
            .doc()
            .fork()
            .with_actor(automerge::ActorId::from(&[7u8; 16][..]));
        let mut tx = fork.transaction();
        automerge::transaction::Transactable::put(&mut tx, automerge::ROOT, "title", "x").unwrap();
        let hash = tx.commit().0.unwrap();
        let mut c = fork.get_change_by_hash(&hash).unwrap();
        let signed = wire::SignedChange {
            change: c.bytes().into_owned(),
            signature: eve().sign_change(&hash).to_vec(),
        };
        (*eve().node_id(), n.request(vec![signed]))
    });
}

#[test]
fn a_replayed_change_is_harmless_and_ignored() {
    // Sync overlaps resend changes all the time; a change the node holds is skipped, not punished.
    row("replay", false, |n| {
        let history: Vec<wire::SignedChange> = n
            .engine
            .repo()
            .signed_changes(&n.flow.clone())
            .unwrap()
            .iter()
            .map(Into::into)
            .collect();
        (*carl().node_id(), n.request(history))
    });
}

#[test]
fn missing_dependencies_are_not_stored() {
    // A change whose dependencies the node lacks waits (it is not applied or stored); it is not
    // proof of malice — a sync message can be cut — so it is not punished either.
    row("missing dependencies", false, |n| {
        let first = n.change(&carl(), &carl(), add_step("first", None));
        let mut doc = n.doc();
        doc.apply_changes([automerge::Change::from_bytes(first.change.clone()).unwrap()])
            .unwrap();
        let mut fork = doc.fork().with_actor(carl().actor());
        let flow = Reader::now(&fork).flow(n.flow.as_str());
        let mut tx = fork.transaction();
        add_step("second", None)
            .apply(&mut tx, &flow, carl().node_id(), NOW)
            .unwrap();
        let hash = tx.commit().0.unwrap();
        let mut c = fork.get_change_by_hash(&hash).unwrap();
        let second = wire::SignedChange {
            change: c.bytes().into_owned(),
            signature: carl().sign_change(&hash).to_vec(),
        };
        (*carl().node_id(), n.request(vec![second]))
    });
}

#[test]
fn two_different_changes_with_the_same_actor_and_seq() {
    let mut node = alices_node();
    let a = node.change(&carl(), &carl(), add_step("one", None));
    let b = node.change(&carl(), &carl(), add_step("another", None));
    let carl_id = *carl().node_id();
    let req = node.request(vec![a]);
    let (penalized, _) = node.send(&carl_id, req);
    assert!(!penalized);
    let heads = node.doc().get_heads();
    let before = digest(&node.home);
    let req = node.request(vec![b]);
    let (penalized, _) = node.send(&carl_id, req);
    assert!(penalized, "an equivocating member is penalized");
    assert_eq!(node.doc().get_heads(), heads);
    assert_eq!(digest(&node.home), before);
}

#[test]
fn malformed_automerge_bytes() {
    row("malformed change bytes", true, |n| {
        let garbage = wire::SignedChange {
            change: vec![0x85, 0x6f, 0x4a, 0x83, 0xde, 0xad, 0xbe, 0xef],
            signature: vec![0; 64],
        };
        (*eve().node_id(), n.request(vec![garbage]))
    });
    row("malformed sync message", true, |n| {
        let mut req = n.request(vec![]);
        req.message.as_mut().unwrap().automerge = vec![0x42, 0xff, 0xff, 0xff];
        (*carl().node_id(), req)
    });
    row("changes smuggled inside the Automerge message", true, |n| {
        let c = n.change(&carl(), &carl(), add_step("unsigned", None));
        let mut am = Automerge::new()
            .generate_sync_message(&mut automerge::sync::State::new())
            .unwrap();
        am.changes = vec![c.change].into();
        let mut req = n.request(vec![]);
        req.message.as_mut().unwrap().automerge = am.encode();
        (*carl().node_id(), req)
    });
}

#[test]
fn too_many_changes_in_one_message() {
    row("oversized batch", true, |n| {
        let c = n.change(&carl(), &carl(), add_step("x", None));
        (
            *carl().node_id(),
            n.request(vec![c; wire::MAX_CHANGES_PER_MESSAGE + 1]),
        )
    });
}

#[test]
fn a_ticket_from_nowhere_and_a_wrong_flow() {
    // Requests about flows the node does not hold get an empty answer and store nothing.
    let mut node = alices_node();
    let before = digest(&node.home);
    let mut req = node.request(vec![]);
    req.message.as_mut().unwrap().flow = vec![9; 16];
    let (penalized, resp) = node.send(&eve().node_id().clone(), req);
    assert!(!penalized);
    match resp.result {
        Some(sync_response::Result::Message(m)) => assert!(m.changes.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
    let mut req = node.request(vec![]);
    req.message.as_mut().unwrap().flow = vec![1, 2, 3];
    let (_, resp) = node.send(&eve().node_id().clone(), req);
    assert!(matches!(
        resp.result,
        Some(sync_response::Result::Unavailable(true))
    ));
    assert_eq!(digest(&node.home), before);
    let _ = Role::Observer;
}
