//! A hostile peer outside the node's process: a libp2p swarm of its own that speaks
//! `/coflow/sync/1` and `/coflow/join/2` with raw frames, so a test can send any message under
//! any identity to a real `coflow node` and compare the bytes it answers.

use std::time::Duration;

use automerge::sync::SyncDoc;
use automerge::transaction::{CommitOptions, Transaction};
use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};
use coflow::flow::{Edit, Flow, Reader};
use coflow::identity::Identity;
use coflow::wire::{self, sync_response};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use prost::Message as _;

use super::procs::{Participant, PATIENCE};

/// Reads and writes frames as raw bytes: what goes out is exactly what the test built, and what
/// comes back is exactly what the node wrote (its length prefix included).
#[derive(Clone, Default)]
pub struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        // Outbound only: the node never gets a stream of ours to write to.
        Err(std::io::ErrorKind::Unsupported.into())
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        let cap = (wire::MAX_SYNC_MESSAGE + 16) as u64;
        futures::AsyncReadExt::read_to_end(&mut futures::AsyncReadExt::take(io, cap), &mut v)
            .await?;
        Ok(v)
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        futures::AsyncWriteExt::write_all(io, &req).await?;
        futures::AsyncWriteExt::close(io).await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[derive(NetworkBehaviour)]
pub struct Raw {
    sync: request_response::Behaviour<RawCodec>,
    join: request_response::Behaviour<RawCodec>,
}

/// What came back for one request: the node's raw answer, or how the request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Bytes(Vec<u8>),
    Failed(String),
}

impl Answer {
    /// The raw answer (length prefix and protobuf); fails the test if there was none.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Answer::Bytes(b) => b,
            Answer::Failed(e) => panic!("no answer: {e}"),
        }
    }

    pub fn sync(&self) -> wire::SyncResponse {
        wire::SyncResponse::decode(unframe(self.bytes())).expect("a sync response")
    }

    pub fn join(&self) -> wire::JoinResponse {
        wire::JoinResponse::decode(unframe(self.bytes())).expect("a join response")
    }

    /// The sync message answered; fails the test on `unavailable` or no message.
    pub fn message(&self) -> wire::SyncMessage {
        match self.sync().result {
            Some(sync_response::Result::Message(m)) => m,
            other => panic!("expected a sync message, got {other:?}"),
        }
    }

    /// The changes the answer carries, parsed.
    pub fn changes(&self) -> Vec<Change> {
        self.message()
            .changes
            .iter()
            .map(|c| Change::from_bytes(c.change.clone()).expect("a change"))
            .collect()
    }
}

/// One connection from a hostile identity to one node.
pub struct HostilePeer {
    swarm: Swarm<Raw>,
    target: PeerId,
    /// The node closed the connection.
    pub closed: bool,
}

fn target_of(addr: &Multiaddr) -> PeerId {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("address without /p2p/"),
    }
}

impl HostilePeer {
    /// Connects as `who`; `None` if the node does not keep the connection.
    pub async fn connect(who: &Identity, addr: &Multiaddr) -> Option<HostilePeer> {
        let behaviour = |_: &libp2p::identity::Keypair| {
            let rr = |proto: &'static str| {
                request_response::Behaviour::with_codec(
                    RawCodec,
                    [(StreamProtocol::new(proto), ProtocolSupport::Outbound)],
                    request_response::Config::default().with_request_timeout(PATIENCE),
                )
            };
            Raw {
                sync: rr(wire::SYNC_PROTOCOL),
                join: rr(wire::JOIN_PROTOCOL),
            }
        };
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(who.libp2p_keypair())
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        let target = target_of(addr);
        swarm.dial(addr.clone()).unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .expect("the node accepts or refuses in time");
            match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target => {
                    let mut peer = HostilePeer {
                        swarm,
                        target,
                        closed: false,
                    };
                    // A node that refuses us (a blocked peer) closes the connection at once.
                    peer.idle(Duration::from_millis(300)).await;
                    return (!peer.closed).then_some(peer);
                }
                SwarmEvent::OutgoingConnectionError { .. }
                | SwarmEvent::ConnectionClosed { .. } => return None,
                _ => {}
            }
        }
    }

    fn note(&mut self, event: &SwarmEvent<RawEvent>) {
        if let SwarmEvent::ConnectionClosed {
            peer_id,
            num_established: 0,
            ..
        } = event
        {
            if *peer_id == self.target {
                self.closed = true;
            }
        }
    }

    /// Lets the connection run for `d`; returns whether it is still open.
    pub async fn idle(&mut self, d: Duration) -> bool {
        let end = tokio::time::Instant::now() + d;
        while let Ok(event) = tokio::time::timeout_at(end, self.swarm.select_next_some()).await {
            self.note(&event);
        }
        !self.closed
    }

    async fn ask(&mut self, join: bool, body: Vec<u8>) -> Answer {
        if self.closed {
            return Answer::Failed("the connection is closed".into());
        }
        let target = self.target;
        let b = self.swarm.behaviour_mut();
        let id: OutboundRequestId = if join {
            b.join.send_request(&target, body)
        } else {
            b.sync.send_request(&target, body)
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .expect("the node answers in time");
            self.note(&event);
            let rr = match event {
                SwarmEvent::Behaviour(RawEvent::Sync(e) | RawEvent::Join(e)) => e,
                _ => continue,
            };
            match rr {
                request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                } if request_id == id => return Answer::Bytes(response),
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                } if request_id == id => return Answer::Failed(error.to_string()),
                _ => {}
            }
        }
    }

    /// Sends one sync request; then lets the connection run a moment, so that a node that
    /// penalizes the sender has closed it by the time this returns (see `closed`).
    pub async fn sync(&mut self, req: &wire::SyncRequest) -> Answer {
        let a = self.ask(false, frame(req)).await;
        self.idle(Duration::from_millis(300)).await;
        a
    }

    /// Sends one join request (like [`HostilePeer::sync`]).
    pub async fn join(&mut self, req: &wire::JoinRequest) -> Answer {
        let a = self.ask(true, frame(req)).await;
        self.idle(Duration::from_millis(300)).await;
        a
    }

    /// Syncs `flow` from the node as far as it answers, starting from nothing (a member
    /// learns the whole flow this way); returns the document built from the changes received.
    pub async fn pull(&mut self, flow: &str) -> Automerge {
        let mut doc = Automerge::new();
        let mut state = automerge::sync::State::new();
        for _ in 0..20 {
            let Some(mut msg) = doc.generate_sync_message(&mut state) else {
                break;
            };
            msg.changes = automerge::sync::ChunkList::empty();
            let req = wire::SyncRequest {
                message: Some(wire::SyncMessage {
                    flow: coflow::identity::unhex(flow).unwrap(),
                    automerge: msg.encode(),
                    changes: vec![],
                    session: 77,
                    everyone_told: false,
                }),
            };
            let answer = self.ask(false, frame(&req)).await;
            let Some(sync_response::Result::Message(m)) = answer.sync().result else {
                break;
            };
            let changes: Vec<Change> = m
                .changes
                .iter()
                .map(|c| Change::from_bytes(c.change.clone()).unwrap())
                .collect();
            doc.apply_changes(changes).unwrap();
            let am = automerge::sync::Message::decode(&m.automerge).unwrap();
            doc.receive_sync_message(&mut state, am).unwrap();
        }
        doc
    }
}

/// Whether `who` can hold a connection to the node for a moment (a blocked peer cannot).
pub async fn can_stay_connected(who: &Identity, addr: &Multiaddr) -> bool {
    match HostilePeer::connect(who, addr).await {
        Some(mut p) => p.idle(Duration::from_secs(2)).await,
        None => false,
    }
}

/// A message as the codec frames it: an unsigned-varint length, then the protobuf.
pub fn frame(m: &impl prost::Message) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut out = Vec::new();
    let mut n = body.len() as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(&body);
    out
}

/// The protobuf inside one frame.
pub fn unframe(bytes: &[u8]) -> &[u8] {
    let mut len = 0usize;
    for (i, b) in bytes.iter().enumerate() {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let body = &bytes[i + 1..];
            assert_eq!(body.len(), len, "one whole frame");
            return body;
        }
    }
    panic!("a frame without a length")
}

/// A sync request about `flow` with `doc`'s first sync message (what a peer holding `doc`
/// would say first) and `changes` beside it.
pub fn sync_request(
    flow: &str,
    doc: &Automerge,
    changes: Vec<wire::SignedChange>,
    session: u64,
) -> wire::SyncRequest {
    let mut am = doc
        .generate_sync_message(&mut automerge::sync::State::new())
        .unwrap();
    am.changes = automerge::sync::ChunkList::empty();
    wire::SyncRequest {
        message: Some(wire::SyncMessage {
            flow: coflow::identity::unhex(flow).unwrap(),
            automerge: am.encode(),
            changes,
            session,
            everyone_told: false,
        }),
    }
}

/// A change by `who` under `actor`, made with `f` on `doc` at `heads`, signed by `who`.
pub fn change_at(
    doc: &Automerge,
    heads: &[ChangeHash],
    flow: &str,
    actor: &ActorId,
    who: &Identity,
    f: impl FnOnce(&mut Transaction<'_>, &Flow),
) -> wire::SignedChange {
    let mut fork = doc.fork_at(heads).unwrap().with_actor(actor.clone());
    let current = Reader::now(&fork).flow(flow);
    let mut tx = fork.transaction();
    f(&mut tx, &current);
    let hash = tx
        .commit_with(CommitOptions::default().with_time(super::NOW))
        .0
        .expect("the change does something");
    let mut change = fork.get_change_by_hash(&hash).unwrap();
    wire::SignedChange {
        change: change.bytes().into_owned(),
        signature: who.sign_change(&hash).to_vec(),
    }
}

/// A typed edit by `who` under `actor` on `doc` at `heads`, signed.
pub fn edit_at(
    doc: &Automerge,
    heads: &[ChangeHash],
    flow: &str,
    actor: &ActorId,
    who: &Identity,
    edit: Edit,
) -> wire::SignedChange {
    let id = *who.node_id();
    change_at(doc, heads, flow, actor, who, |tx, current| {
        edit.apply(tx, current, &id, super::NOW)
            .expect("the edit applies");
    })
}

pub fn comment(text: &str) -> Edit {
    Edit::Comment {
        text: text.into(),
        step: None,
    }
}

/// The hash of a signed change.
pub fn hash_of(c: &wire::SignedChange) -> ChangeHash {
    Change::from_bytes(c.change.clone()).unwrap().hash()
}

/// The flow as `p` holds it (as it stands), read from `flow export --format automerge`.
pub fn export(p: &Participant, flow: &str) -> Automerge {
    let file = p.home.join(format!("export-{flow}.automerge"));
    let (ok, _, err) = p.run(&[
        "flow",
        "export",
        flow,
        "--format",
        "automerge",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc = Automerge::load(&std::fs::read(&file).unwrap()).unwrap();
    std::fs::remove_file(&file).unwrap();
    doc
}

/// A current-thread runtime for a test's async part.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
