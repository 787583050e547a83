//! Metrics measured in process with no sockets: catch-up (time and bytes), bytes per live
//! change, and ingest through `Repo::receive`.

use std::path::Path;
use std::time::Instant;

use automerge::{sync, Automerge, Change};
use coflow::flow::Edit;
use coflow::identity::{change_message, Identity};
use coflow::repo::Repo;
use coflow::store::{Changes, Storage};
use ed25519_dalek::{Signature, VerifyingKey};

use crate::gen::{seed_home, FlowGen};
use coflow::sim::{Config, Net};
use coflow::sync::Engine;

use crate::baseline::automerge_sync;

pub struct Catchup {
    pub changes: usize,
    pub secs: f64,
    pub base_secs: f64,
    pub bytes: u64,
    pub base_bytes: u64,
    /// Sync requests and responses the catch-up took.
    pub messages: u64,
    /// Bytes per live change after the catch-up (0 if not measured).
    pub wire_per_change: f64,
    pub signed_change_size: f64,
}

/// A new member catches up with `flow` from the node that holds it: two engines with on-disk
/// stores, messages delivered in process. Then, if `live_samples > 0`, the holder makes that
/// many edits, each synced before the next, and the bytes per delivered change are counted.
pub fn catchup(
    root: &Path,
    holder: &Identity,
    newcomer: &Identity,
    flow: &FlowGen,
    live_samples: usize,
) -> Catchup {
    let a = seed_home(&root.join("holder"), holder, &[flow]);
    let home_c = root.join("newcomer");
    let c = Repo::init(&home_c, newcomer.clone()).expect("a repository");
    // The shared simulator with no latency: messages delivered in the order they were sent.
    let mut net = Net::with_engines(vec![Engine::new(a), Engine::new(c)], Config::instant());
    let start = Instant::now();
    net.connect(0, 1);
    net.drain_within(u64::MAX);
    let secs = start.elapsed().as_secs_f64();
    let got = net.nodes[1]
        .repo()
        .signed_changes(&flow.id)
        .map(|c| c.len())
        .unwrap_or(0);
    assert_eq!(got, flow.changes.len(), "the newcomer caught up completely");
    assert!(
        net.penalties.is_empty(),
        "an honest peer was penalized: {:?}",
        net.penalties
    );
    let (bytes, sync_messages) = received(&net);

    // Baseline: Automerge's own sync of the same document into an empty one, plus batch
    // verification of every signature.
    let mut full = Automerge::load(&flow.doc.save()).expect("loads");
    let messages: Vec<Vec<u8>> = flow.hashes.iter().map(change_message).collect();
    let sigs: Vec<Signature> = flow
        .changes
        .iter()
        .map(|c| Signature::from_bytes(&c.signature[..].try_into().expect("64 bytes")))
        .collect();
    let keys: Vec<VerifyingKey> = vec![holder.node_id().verifying_key(); sigs.len()];
    let start = Instant::now();
    let mut empty = Automerge::new();
    let base_bytes = automerge_sync(
        &mut full,
        &mut sync::State::new(),
        &mut empty,
        &mut sync::State::new(),
    );
    let refs: Vec<&[u8]> = messages.iter().map(|m| m.as_slice()).collect();
    ed25519_dalek::verify_batch(&refs, &sigs, &keys).expect("the signatures verify");
    let base_secs = start.elapsed().as_secs_f64();
    assert_eq!(empty.get_heads().len(), full.get_heads().len());

    let (mut wire_per_change, mut signed_change_size) = (0.0, 0.0);
    if live_samples > 0 {
        let seq0 = net.nodes[0]
            .repo()
            .store()
            .reader()
            .last_seq(&flow.id)
            .expect("seq");
        let before = received(&net).0;
        for i in 0..live_samples {
            net.nodes[0]
                .repo()
                .edit(
                    flow.id.as_str(),
                    &Edit::Comment {
                        text: format!("live comment {i}"),
                        step: None,
                    },
                )
                .expect("an edit");
            net.nodes[0].local_change(&flow.id);
            net.collect();
            net.drain_within(u64::MAX);
        }
        let sent = received(&net).0 - before;
        let made = net.nodes[0]
            .repo()
            .store()
            .reader()
            .changes_after(&flow.id, seq0)
            .expect("changes");
        assert_eq!(made.len(), live_samples);
        let got = net.nodes[1]
            .repo()
            .signed_changes(&flow.id)
            .map(|c| c.len())
            .unwrap_or(0);
        assert_eq!(got, flow.changes.len() + live_samples, "every edit arrived");
        wire_per_change = sent as f64 / live_samples as f64;
        signed_change_size = made
            .iter()
            .map(|c| (c.signed.bytes.len() + c.signed.signature.len()) as f64)
            .sum::<f64>()
            / live_samples as f64;
    }
    Catchup {
        changes: flow.changes.len(),
        secs,
        base_secs,
        bytes,
        base_bytes,
        messages: sync_messages,
        wire_per_change,
        signed_change_size,
    }
}

/// Bytes and messages every node of the net received (protobuf-encoded requests and responses,
/// and gossip with what gossipsub adds to it).
fn received<S: coflow::store::Storage>(net: &Net<S>) -> (u64, u64) {
    let bytes = net.traffic.iter().map(|t| t.bytes_in).sum();
    let messages = net.traffic.iter().map(|t| t.messages_in).sum();
    (bytes, messages)
}

pub struct Ingest {
    pub changes: usize,
    pub rate: f64,
    pub verify_rate: f64,
    pub apply_rate: f64,
}

/// Changes from `flows` flows arrive `batch` at a time, round-robin over the flows, and go
/// through `Repo::receive` (verify, authorize, apply) on one on-disk store; every `group`
/// receive calls share one durable commit, as the inputs of one turn of a node's event loop do
/// (a node that cannot keep up finds [`coflow::node::MAX_INPUTS_PER_TURN`] inputs ready each
/// turn). `group` 1 commits each call.
pub fn ingest(root: &Path, flows: usize, per_flow: usize, batch: usize, group: usize) -> Ingest {
    let writer = Identity::from_seed("bench-ingest-writer", "Writer");
    let receiver = Identity::from_seed("bench-ingest-receiver", "Receiver");
    let gens: Vec<FlowGen> = (0..flows)
        .map(|i| {
            let mut g = FlowGen::new(&writer, &format!("Flow {i}"));
            g.add_member(&writer, &receiver);
            g.comments(&writer, per_flow);
            g
        })
        .collect();
    const SETUP: usize = 2; // genesis and the receiver's membership
    let home = root.join("receiver");
    let mut repo = Repo::init(&home, receiver.clone()).expect("a repository");
    for g in &gens {
        repo.receive(&g.id, &g.changes[..SETUP]).expect("seeded");
    }
    let rounds: Vec<std::ops::Range<usize>> = (SETUP..SETUP + per_flow)
        .step_by(batch)
        .map(|s| s..(s + batch).min(SETUP + per_flow))
        .collect();
    let calls: Vec<(&FlowGen, &std::ops::Range<usize>)> = rounds
        .iter()
        .flat_map(|r| gens.iter().map(move |g| (g, r)))
        .collect();
    let start = Instant::now();
    for turn in calls.chunks(group.max(1)) {
        repo.begin_group().expect("a transaction");
        for (g, r) in turn {
            let out = repo
                .receive(&g.id, &g.changes[(*r).clone()])
                .expect("received");
            assert_eq!(out.accepted.len(), r.len(), "{:?}", out.rejected.first());
        }
        repo.commit_group().expect("committed");
    }
    let secs = start.elapsed().as_secs_f64();
    let total = flows * per_flow;

    // Baselines over the same batches: batch signature verification alone, and Automerge
    // applying the batches alone.
    let key = writer.node_id().verifying_key();
    let prepared: Vec<(Vec<Vec<u8>>, Vec<Signature>)> = rounds
        .iter()
        .flat_map(|r| {
            gens.iter().map(move |g| {
                let msgs = g.hashes[r.clone()].iter().map(change_message).collect();
                let sigs = g.changes[r.clone()]
                    .iter()
                    .map(|c| Signature::from_bytes(&c.signature[..].try_into().expect("64")))
                    .collect();
                (msgs, sigs)
            })
        })
        .collect();
    let start = Instant::now();
    for (msgs, sigs) in &prepared {
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        let keys = vec![key; sigs.len()];
        ed25519_dalek::verify_batch(&refs, sigs, &keys).expect("verifies");
    }
    let verify_rate = total as f64 / start.elapsed().as_secs_f64();
    let parse = |g: &FlowGen, r: std::ops::Range<usize>| -> Vec<Change> {
        g.changes[r]
            .iter()
            .map(|c| Change::from_bytes(c.bytes.clone()).expect("parses"))
            .collect()
    };
    let mut docs: Vec<Automerge> = gens
        .iter()
        .map(|g| {
            let mut d = Automerge::new();
            d.apply_changes(parse(g, 0..SETUP)).expect("applies");
            d
        })
        .collect();
    let batches: Vec<Vec<Vec<Change>>> = rounds
        .iter()
        .map(|r| gens.iter().map(|g| parse(g, r.clone())).collect())
        .collect();
    let start = Instant::now();
    for round in batches {
        for (doc, changes) in docs.iter_mut().zip(round) {
            doc.apply_changes(changes).expect("applies");
        }
    }
    let apply_rate = total as f64 / start.elapsed().as_secs_f64();
    Ingest {
        changes: total,
        rate: total as f64 / secs,
        verify_rate,
        apply_rate,
    }
}

/// What the removal rule costs a node receiving changes: the time per receive of one change
/// at the end of a flow of `history` comments in which a member was removed (the rule runs on
/// every receive that moves the heads), and in the same flow with a comment where the removal
/// was (the baseline). The receives share one commit, so the fsync does not hide the work.
pub struct RemovalCost {
    pub ms: f64,
    pub base_ms: f64,
}

pub fn removal_cost(root: &Path, history: usize, receives: usize) -> RemovalCost {
    let customer = Identity::from_seed("bench-removal-customer", "Customer");
    let gone = Identity::from_seed("bench-removal-gone", "Gone");
    let receiver = Identity::from_seed("bench-removal-receiver", "Receiver");
    let per_receive = |remove: bool, name: &str| {
        let mut g = FlowGen::new(&customer, "Removal");
        g.add_member(&customer, &receiver);
        g.add_member(&customer, &gone);
        if remove {
            g.edit(
                &customer,
                &Edit::RemoveMember {
                    member: gone.node_id().to_string(),
                },
            );
        } else {
            g.comment(&customer, "where the removal would be");
        }
        g.comments(&customer, history);
        let mut repo = Repo::init(&root.join(name), receiver.clone()).expect("a repository");
        let split = g.changes.len() - receives.min(history);
        repo.receive(&g.id, &g.changes[..split]).expect("seeded");
        repo.begin_group().expect("a transaction");
        let start = Instant::now();
        for c in &g.changes[split..] {
            let out = repo
                .receive(&g.id, std::slice::from_ref(c))
                .expect("received");
            assert_eq!(out.accepted.len(), 1, "{:?}", out.rejected.first());
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0 / (g.changes.len() - split) as f64;
        repo.commit_group().expect("committed");
        ms
    };
    RemovalCost {
        ms: per_receive(true, "removal-with"),
        base_ms: per_receive(false, "removal-without"),
    }
}
