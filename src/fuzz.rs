//! Entry points for fuzzing: each takes arbitrary bytes and must return without panicking,
//! whatever the bytes are. The cargo-fuzz targets in `fuzz/` call them, and
//! `tests/fuzz_regressions.rs` replays every input ever found to crash one (kept in
//! `tests/fuzz-crashers/`) plus a set of hand-made hostile inputs.

use std::sync::OnceLock;

/// For fuzz targets: panics that the code under test contains (with `catch_unwind`, around
/// Automerge) are not crashes, so silence the report that libFuzzer's hook would turn into an
/// abort; an uncontained panic still reaches libFuzzer and is reported.
pub fn contain_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

use automerge::transaction::CommitOptions;
use automerge::Automerge;
use prost::Message as _;

use crate::auth::{self, SignedChange};
use crate::flow::{flow_id_of_genesis, new_flow_ops, Edit, FlowId, Reader, Role};
use crate::identity::Identity;

/// Ticket parsing: any string.
pub fn ticket(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::wire::InviteTicket::decode(s);
    }
}

/// Protocol decoding: a `/coflow/sync/1` request as it comes off the wire, the Automerge sync
/// message inside it, a join request, and a gossip announcement.
pub fn sync_message(data: &[u8]) {
    if let Ok(req) = crate::wire::SyncRequest::decode(data) {
        if let Some(m) = req.message {
            let _ = crate::sync::decode_sync_message(&m.automerge);
            for c in m.changes {
                let _ = crate::auth::parse_change(&c.change);
            }
        }
    }
    let _ = crate::wire::JoinRequest::decode(data);
    let _ = crate::wire::decode_announce(data);
    let _ = crate::sync::decode_sync_message(data);
}

struct Fixture {
    doc: Automerge,
    flow: FlowId,
    member: Identity,
}

/// A flow with a customer and a contributor; the contributor is the fuzzer's voice.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let customer = Identity::from_seed("fuzz-customer", "Customer");
        let member = Identity::from_seed("fuzz-member", "Member");
        let mut doc = Automerge::new().with_actor(customer.actor());
        let mut tx = doc.transaction();
        new_flow_ops(
            &mut tx,
            customer.node_id(),
            "Customer",
            "t",
            "n",
            Role::Customer,
            1,
        )
        .expect("genesis");
        let genesis = tx
            .commit_with(CommitOptions::default().with_time(1))
            .0
            .expect("a genesis change");
        let flow = flow_id_of_genesis(&genesis);
        let current = Reader::now(&doc).flow(flow.as_str());
        let mut tx = doc.transaction();
        Edit::AddMember {
            node_id: member.node_id().to_string(),
            role: Role::Contributor,
            name: None,
        }
        .apply(&mut tx, &current, customer.node_id(), 2)
        .expect("member added");
        tx.commit_with(CommitOptions::default().with_time(2));
        Fixture { doc, flow, member }
    })
}

/// The document the [`receive`] target works on (a copy).
pub fn fixture_doc() -> Automerge {
    fixture().doc.clone()
}

/// A valid change by the fixture's member (adding a step), to seed fuzzing of [`receive`].
pub fn seed_change() -> Vec<u8> {
    let f = fixture();
    let mut doc = f.doc.fork().with_actor(f.member.actor());
    let current = Reader::now(&doc).flow(f.flow.as_str());
    let mut tx = doc.transaction();
    Edit::AddStep {
        title: "a step".into(),
        detail: None,
        assignee: Some(f.member.node_id().to_string()),
        customer_involved: true,
        due: None,
    }
    .apply(&mut tx, &current, f.member.node_id(), 3)
    .expect("a step");
    let hash = tx
        .commit_with(CommitOptions::default().with_time(3))
        .0
        .expect("a change");
    let mut change = automerge::ReadDoc::get_change_by_hash(&doc, &hash).expect("just made");
    change.bytes().into_owned()
}

/// The change a [`receive`] input stands for: after its mode byte, even, a signature (64 bytes)
/// and change bytes as received; odd, change bytes that `f`'s member signs properly.
fn received_change(f: &Fixture, data: &[u8]) -> Option<SignedChange> {
    let (&mode, rest) = data.split_first()?;
    if mode % 2 == 0 {
        if rest.len() < 64 {
            return None;
        }
        Some(SignedChange {
            signature: rest[..64].to_vec(),
            bytes: rest[64..].to_vec(),
        })
    } else {
        let change = auth::parse_change(rest).ok()?;
        Some(SignedChange {
            signature: f.member.sign_change(&change.hash()).to_vec(),
            bytes: rest.to_vec(),
        })
    }
}

/// The receive path (verify + authorize + apply) on a real flow. The first byte picks a mode:
/// even, the rest is a signature (64 bytes) and change bytes as received; odd, the rest is
/// change bytes that a member signs properly, so arbitrary changes get past the signature check
/// and reach the policy and Automerge.
pub fn receive(data: &[u8]) {
    let f = fixture();
    let Some(signed) = received_change(f, data) else {
        return;
    };
    let mut doc = f.doc.clone();
    let before = doc.clone();
    let _ = auth::accept(&mut doc, &f.flow, &[signed], || Ok::<_, ()>(before.clone()));
    // Whatever was accepted must read back as a flow.
    let _ = Reader::now(&doc).flow(f.flow.as_str());
}

/// The whole accept path of a repository ([`crate::repo::Repo::receive`]: verify, authorize,
/// apply, then persist, summarize and snapshot) on the [`receive`] target's flow, held by a
/// store; the same input as [`receive`]. Afterwards the flow must still load and read.
pub fn receive_stored(data: &[u8]) {
    let f = fixture();
    let Some(signed) = received_change(f, data) else {
        return;
    };
    let mut repo = crate::repo::Repo::new(
        crate::store::Store::in_memory().expect("a store"),
        Identity::from_seed("fuzz-node", "Node"),
    );
    let customer = Identity::from_seed("fuzz-customer", "Customer");
    let seeded: Vec<SignedChange> = f
        .doc
        .get_changes(&[])
        .into_iter()
        .map(|mut c| SignedChange {
            signature: customer.sign_change(&c.hash()).to_vec(),
            bytes: c.bytes().into_owned(),
        })
        .collect();
    let out = repo
        .receive(&f.flow, &seeded)
        .expect("the fixture is stored");
    assert_eq!(out.accepted.len(), seeded.len(), "the fixture is accepted");
    let _ = repo.receive(&f.flow, &[signed]);
    let doc = repo.doc(&f.flow).expect("the flow still loads");
    let _ = Reader::now(doc).flow(f.flow.as_str());
}
