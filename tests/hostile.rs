//! A hand-built hostile peer, speaking `/coflow/sync/1` directly to real nodes: a change signed
//! by a non-member and a change with a forged signature are rejected, the flow's heads stay as
//! they were on every member, and the sender is disconnected and kept out.

mod common;

use std::time::Duration;

use automerge::sync::SyncDoc;
use automerge::transaction::CommitOptions;
use automerge::{Automerge, ReadDoc};
use coflow::flow::{Edit, Reader};
use coflow::identity::Identity;
use coflow::net::{self, Behaviour, BehaviourEvent};
use coflow::wire::{self, sync_response};
use common::peer::RawCodec;
use common::procs::{converged, shared_flow, Participant, PATIENCE};
use futures::StreamExt;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};

/// A change by `actor` adding a step, on top of `doc`, signed by `signer`.
fn hostile_change(
    doc: &Automerge,
    flow: &str,
    actor: &Identity,
    signer: &Identity,
) -> wire::SignedChange {
    let mut fork = doc.fork().with_actor(actor.actor());
    let current = Reader::now(&fork).flow(flow);
    let mut tx = fork.transaction();
    common::add_step("Injected", None)
        .apply(&mut tx, &current, actor.node_id(), common::NOW)
        .unwrap();
    let hash = tx
        .commit_with(CommitOptions::default().with_time(common::NOW))
        .0
        .unwrap();
    let mut change = fork.get_change_by_hash(&hash).unwrap();
    wire::SignedChange {
        change: change.bytes().into_owned(),
        signature: signer.sign_change(&hash).to_vec(),
    }
}

fn request(flow: &str, change: wire::SignedChange) -> wire::SyncRequest {
    let am = Automerge::new()
        .generate_sync_message(&mut automerge::sync::State::new())
        .unwrap();
    wire::SyncRequest {
        message: Some(wire::SyncMessage {
            flow: coflow::identity::unhex(flow).unwrap(),
            automerge: am.encode(),
            changes: vec![change],
            session: 1,
            everyone_told: false,
        }),
    }
}

enum Outcome {
    Answered(Option<sync_response::Result>),
    Failed(#[allow(dead_code)] String),
}

/// Connects as `who`, sends one sync request, and reports the answer and whether the node then
/// closed the connection.
async fn inject(who: &Identity, addr: &Multiaddr, req: wire::SyncRequest) -> (Outcome, bool) {
    inject_then(who, addr, req, true).await
}

/// Like [`inject`]; with `wait_close` false it returns as soon as the answer is in (`closed`
/// then says whether the node had already closed the connection).
async fn inject_then(
    who: &Identity,
    addr: &Multiaddr,
    req: wire::SyncRequest,
    wait_close: bool,
) -> (Outcome, bool) {
    let mut swarm: Swarm<Behaviour> =
        net::build(who.libp2p_keypair(), net::NetOptions::default()).unwrap();
    let target: PeerId = match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("address without /p2p/"),
    };
    swarm.dial(addr.clone()).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut outcome = None;
    let mut closed = false;
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("the node answers in time");
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. }
                if peer_id == target && outcome.is_none() =>
            {
                swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&target, wire::Frame::Message(req.clone()));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            })) => outcome = Some(Outcome::Answered(response.result)),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(
                request_response::Event::OutboundFailure { error, .. },
            )) => outcome = Some(Outcome::Failed(error.to_string())),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if peer_id == target => {
                closed = true;
            }
            SwarmEvent::OutgoingConnectionError { .. } => {
                return (Outcome::Failed("could not connect".into()), true);
            }
            _ => {}
        }
        if closed || !wait_close {
            if let Some(outcome) = outcome.take() {
                return (outcome, closed);
            }
        }
    }
}

/// Whether `who` can still hold a connection to the node for a moment.
async fn can_stay_connected(who: &Identity, addr: &Multiaddr) -> bool {
    let mut swarm: Swarm<Behaviour> =
        net::build(who.libp2p_keypair(), net::NetOptions::default()).unwrap();
    swarm.dial(addr.clone()).unwrap();
    let mut connected = false;
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(event) = tokio::time::timeout_at(end, swarm.select_next_some()).await {
        match event {
            SwarmEvent::ConnectionEstablished { .. } => connected = true,
            SwarmEvent::ConnectionClosed {
                num_established: 0, ..
            } => connected = false,
            SwarmEvent::OutgoingConnectionError { .. } => return false,
            _ => {}
        }
    }
    connected
}

#[test]
fn forgeries_at_the_protocol_level_are_rejected_and_the_sender_penalised() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let mut tom = Participant::new(root.path(), "Tom");
    alice.start(&[]);
    tom.start(&[]);
    let flow = shared_flow(&alice, &[&tom]);
    alice.json(&["step", "add", &flow, "Choose the cloth"]);
    let heads = converged(&flow, &[&alice, &tom]);

    let file = root.path().join("flow.automerge");
    let (ok, _, err) = alice.run(&[
        "flow",
        "export",
        &flow,
        "--format",
        "automerge",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc = Automerge::load(&std::fs::read(&file).unwrap()).unwrap();
    let alice_key = Identity::from_seed("e2e-Alice", "Alice");
    let eve = Identity::from_seed("hostile-eve", "Eve");
    let mallory = Identity::from_seed("hostile-mallory", "Mallory");
    let addr: Multiaddr = alice.addr().parse().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // 1. A well-signed change by a non-member, building on the flow's heads (a stranger
        // can learn them from gossip): treated exactly as the same change about a flow the
        // node does not hold — the same answer, nothing kept, no penalty — so it does not tell
        // the stranger that the node holds the flow. (Until 2026-12-01 the node judged it
        // against the flow and blocked the stranger only when it held the flow.)
        let by_stranger = hostile_change(&doc, &flow, &eve, &eve);
        let mut elsewhere = request(&flow, by_stranger.clone());
        elsewhere.message.as_mut().unwrap().flow = vec![0x5a; 16];
        let answer = |o: Outcome| match o {
            Outcome::Answered(Some(sync_response::Result::Message(mut m))) => {
                m.flow.clear();
                m
            }
            Outcome::Answered(other) => panic!("unexpected answer {other:?}"),
            Outcome::Failed(e) => panic!("no answer: {e}"),
        };
        let (held, closed) = inject_then(&eve, &addr, request(&flow, by_stranger), false).await;
        assert!(
            !closed,
            "a stranger is not cut off for what an unknown flow would not"
        );
        let (unknown, _) = inject_then(&eve, &addr, elsewhere, false).await;
        let held = answer(held);
        assert!(held.changes.is_empty(), "no content for a stranger");
        assert_eq!(held, answer(unknown));
        assert!(can_stay_connected(&eve, &addr).await);

        // 2. A change under the customer's actor id, signed by someone else.
        let forged = hostile_change(&doc, &flow, &alice_key, &mallory);
        let (_, closed) = inject(&mallory, &addr, request(&flow, forged)).await;
        assert!(closed, "the forger is disconnected");
        assert!(
            !can_stay_connected(&mallory, &addr).await,
            "the forger is kept out"
        );
    });

    // Nothing changed anywhere, and the members still sync.
    assert_eq!(alice.heads(&flow).unwrap(), heads);
    assert_eq!(tom.heads(&flow).unwrap(), heads);
    assert!(alice.logs().contains("blocking peer"), "{}", alice.logs());
    tom.json(&["comment", &flow, "Still here"]);
    converged(&flow, &[&alice, &tom]);
    let verify = alice.json(&["flow", "verify", &flow]);
    assert_eq!(verify["invalid"], 0);
    let _ = Edit::SetTitle {
        title: String::new(),
    };
}

/// A flood of requests from one connection: stream limits and the per-peer budget throttle it (a
/// peer over budget is penalized); resident memory stays bounded, and members still sync.
#[test]
fn a_request_flood_is_throttled_and_memory_stays_bounded() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let mut tom = Participant::new(root.path(), "Tom");
    alice.start(&[]);
    tom.start(&[]);
    let flow = shared_flow(&alice, &[&tom]);
    let addr: Multiaddr = alice.addr().parse().unwrap();
    let before = alice.rss_kib();
    let flooder = Identity::from_seed("hostile-flooder", "Flooder");
    // Harmless-looking requests (a sync message with no changes), as fast as possible.
    let mut req = request(
        &flow,
        wire::SignedChange {
            change: vec![],
            signature: vec![],
        },
    );
    req.message.as_mut().unwrap().changes.clear();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sent, answered, cut_off) = runtime.block_on(async {
        let mut swarm: Swarm<Behaviour> =
            net::build(flooder.libp2p_keypair(), net::NetOptions::default()).unwrap();
        swarm.dial(addr.clone()).unwrap();
        let (mut sent, mut answered, mut cut_off) = (0usize, 0usize, false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline && !cut_off {
            let Ok(event) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await
            else {
                break;
            };
            match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    for _ in 0..1000 {
                        swarm
                            .behaviour_mut()
                            .sync
                            .send_request(&peer_id, wire::Frame::Message(req.clone()));
                        sent += 1;
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                    ..
                })) => {
                    answered += 1;
                }
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } => cut_off = true,
                _ => {}
            }
        }
        (sent, answered, cut_off)
    });
    let after = alice.rss_kib();
    println!(
        "flood: {sent} requests sent, {answered} answered in 10 s (disconnected: {cut_off}); \
         node RSS {before} KiB before, {after} KiB after"
    );
    // The node serves at most its per-peer budget (and stream limits slow a flooder further);
    // a flooder that exceeds the budget is disconnected.
    assert!(
        answered as f64 <= coflow::node::REQUEST_BURST + 50.0,
        "{answered} answered"
    );
    assert!(
        answered < sent,
        "the flood was cut short ({answered} of {sent} answered)"
    );
    let _ = cut_off;
    assert!(
        after < before + 128 * 1024,
        "resident memory grew by {} KiB",
        after - before
    );
    tom.json(&["comment", &flow, "Still syncing"]);
    converged(&flow, &[&alice, &tom]);
}

/// Sends `bytes` raw on `/coflow/sync/1`; returns whether the node then closed the connection.
async fn send_raw(who: &Identity, addr: &Multiaddr, bytes: Vec<u8>) -> bool {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(who.libp2p_keypair())
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(
                    libp2p::StreamProtocol::new(wire::SYNC_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default(),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.dial(addr.clone()).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let Ok(event) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await else {
            return false;
        };
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                swarm.behaviour_mut().send_request(&peer_id, bytes.clone());
            }
            SwarmEvent::ConnectionClosed {
                num_established: 0, ..
            } => return true,
            _ => {}
        }
    }
}

#[test]
fn malformed_and_oversized_frames_get_the_sender_penalised() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    alice.start(&[]);
    let flow = alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let heads = alice.heads(&flow);
    let addr: Multiaddr = alice.addr().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A correct length prefix around bytes that are not protobuf.
        let mut not_protobuf = vec![12u8];
        not_protobuf.extend_from_slice(&[0xff; 12]);
        let who = Identity::from_seed("hostile-garbler", "Garbler");
        assert!(
            send_raw(&who, &addr, not_protobuf).await,
            "malformed protobuf: disconnected"
        );
        // A length prefix announcing 100 MB.
        let mut huge = Vec::new();
        let mut n: u64 = 100 * 1024 * 1024;
        while n >= 0x80 {
            huge.push((n as u8) | 0x80);
            n >>= 7;
        }
        huge.push(n as u8);
        huge.extend_from_slice(&[0; 1024]);
        let who = Identity::from_seed("hostile-giant", "Giant");
        assert!(
            send_raw(&who, &addr, huge).await,
            "oversized frame: disconnected"
        );
    });
    assert_eq!(alice.heads(&flow), heads);
    let logs = alice.logs();
    assert!(logs.matches("blocking peer").count() >= 2, "{logs}");
}
