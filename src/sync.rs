//! The sans-IO sync engine.
//!
//! Inputs arrive as method calls (a peer connected, a request or response arrived, a local change
//! was made, time passed); outputs are queued as [`Io`] and drained with [`Engine::next_io`] by
//! whoever does the real I/O: the libp2p runtime in `node.rs`, or a simulator in tests. The engine
//! never touches a socket or a clock of its own.
//!
//! Per (peer, flow) it runs the Automerge sync protocol. Changes never travel inside Automerge's
//! own sync messages: they are moved out and paired with their signatures, and received ones go
//! through [`Repo::receive`] — verify → authorize → apply → persist — before the sync state sees
//! the rest of the message. Content goes only to current members of a flow.

use std::collections::{HashMap, VecDeque};

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, Change};

use crate::auth::SignedChange;
use crate::error::{Error, Result};
use crate::identity::{hex, unhex, NodeId};
use crate::repo::Repo;
use crate::wire::{self, join_response, sync_response, JoinRequest, JoinResponse, SyncMessage};

/// A (peer, flow) session with no message for this long is refreshed on the next tick, so a
/// lost message or a missed change is repaired (anti-entropy).
pub const ANTI_ENTROPY_MS: u64 = 5_000;

/// How many connected members a node passes received news on to (its own edits go to all).
pub const RELAY_FANOUT: usize = 6;

/// Picks up to `k` peers to relay news to, spread evenly but deterministically: ordered by a
/// hash of the peer and the news, so different news takes different paths.
fn relay_targets(mut peers: Vec<NodeId>, news: &[u8], k: usize) -> Vec<NodeId> {
    use sha2::Digest;
    if peers.len() <= k {
        return peers;
    }
    peers.sort_by_cached_key(|p| {
        let mut h = sha2::Sha256::new();
        h.update(p.public_key());
        h.update(news);
        h.finalize()
    });
    peers.truncate(k);
    peers
}

/// What the engine asks its runtime to do.
#[derive(Debug)]
pub enum Io {
    /// Send a `/coflow/sync/1` request; its answer comes back through
    /// [`Engine::handle_sync_response`] (or [`Engine::sync_failed`]).
    Sync {
        peer: NodeId,
        flow: String,
        request: wire::SyncRequest,
    },
    /// Send a `/coflow/join/1` request to a peer named in a ticket.
    Join {
        peer: NodeId,
        flow: String,
        request: JoinRequest,
    },
    /// The peer sent something invalid: disconnect it and keep it away for a while.
    Penalize { peer: NodeId, reason: String },
    /// Something happened that local observers may care about.
    Event(Event),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Changes from `from` were accepted into `flow`.
    FlowUpdated { flow: String, from: NodeId },
    /// A join finished: this node now holds the flow as a member.
    Joined { flow: String },
    /// Every peer refused or failed the join.
    JoinFailed { flow: String, reason: String },
}

/// How a node answers a sync request.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Talk {
    /// The peer is a member (or the flow is being joined through it): a real sync session.
    Member,
    /// This node holds the flow but the peer is not a member: answer exactly as if the flow
    /// were unknown here, and take nothing from the peer.
    Outsider,
    /// This node does not hold the flow: answer as an empty document, and keep what the peer
    /// sends only if it makes this node a member (someone added it by node id).
    Unknown,
}

/// One side of a conversation about one flow with one peer. Conversations we start use a
/// client state; conversations the peer starts use a server state. Each is a strict
/// request/response alternation, which is what Automerge's sync protocol expects.
struct Conversation {
    state: sync::State,
    session: u64,
    /// (client side) a request of ours is on the way.
    awaiting: bool,
    last_activity: u64,
}

impl Conversation {
    /// A fresh conversation that keeps the heads both sides are known to share.
    fn fresh(session: u64, now: u64, previous: Option<&Conversation>) -> Conversation {
        let mut state = sync::State::new();
        if let Some(p) = previous {
            state.shared_heads = p.state.shared_heads.clone();
        }
        Conversation {
            state,
            session,
            awaiting: false,
            last_activity: now,
        }
    }
}

struct Joining {
    via: Vec<NodeId>,
    refusals: Vec<String>,
}

/// Per member of a flow: is this node in sync with them, and when did it last hear from them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct MemberSync {
    pub node_id: String,
    pub connected: bool,
    /// `None` until this node has exchanged sync messages with them.
    pub in_sync: Option<bool>,
    /// Unix seconds of their last sync message, if any.
    pub last_heard: Option<i64>,
}

/// Counters for status and benchmarks.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub requests_sent: u64,
    pub changes_sent: u64,
    pub changes_accepted: u64,
    pub changes_rejected: u64,
}

pub struct Engine {
    repo: Repo,
    me: NodeId,
    now: u64,
    connected: HashMap<NodeId, u64>,
    last_heard: HashMap<NodeId, i64>,
    clients: HashMap<(NodeId, String), Conversation>,
    servers: HashMap<(NodeId, String), Conversation>,
    joining: HashMap<String, Joining>,
    io: VecDeque<Io>,
    pub stats: Stats,
}

impl Engine {
    pub fn new(repo: Repo) -> Engine {
        let me = repo.identity().node_id().clone();
        Engine {
            repo,
            me,
            now: 0,
            connected: HashMap::new(),
            last_heard: HashMap::new(),
            clients: HashMap::new(),
            servers: HashMap::new(),
            joining: HashMap::new(),
            io: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn repo(&mut self) -> &mut Repo {
        &mut self.repo
    }

    pub fn node_id(&self) -> &NodeId {
        &self.me
    }

    /// The next thing to do, if any.
    pub fn next_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }

    pub fn connected_peers(&self) -> impl Iterator<Item = &NodeId> {
        self.connected.keys()
    }

    /// Flows whose current members include `peer`.
    fn shared_flows(&mut self, peer: &NodeId) -> Vec<String> {
        let Ok(ids) = self.repo.flow_ids() else {
            return Vec::new();
        };
        ids.into_iter()
            .filter(|f| self.is_member(f, peer))
            .collect()
    }

    fn is_member(&mut self, flow: &str, peer: &NodeId) -> bool {
        self.repo
            .members(flow)
            .map(|ms| ms.iter().any(|(n, _)| n == peer.as_str()))
            .unwrap_or(false)
    }

    /// How this node talks about `flow` with `peer`.
    fn talk(&mut self, flow: &str, peer: &NodeId) -> Talk {
        if self.joining.get(flow).is_some_and(|j| j.via.contains(peer)) {
            return Talk::Member;
        }
        match self.repo.holds(flow) {
            Ok(true) if self.is_member(flow, peer) => Talk::Member,
            Ok(true) => Talk::Outsider,
            _ => Talk::Unknown,
        }
    }

    pub fn peer_connected(&mut self, peer: NodeId, now: u64) {
        self.now = now;
        self.connected.insert(peer.clone(), now);
        for flow in self.shared_flows(&peer) {
            self.sync_with(&peer, &flow);
        }
    }

    pub fn peer_disconnected(&mut self, peer: &NodeId) {
        self.connected.remove(peer);
        self.clients.retain(|(p, _), _| p != peer);
        self.servers.retain(|(p, _), _| p != peer);
    }

    /// A change was made here: offer it to every connected member of the flow.
    pub fn local_change(&mut self, flow: &str) {
        let peers: Vec<NodeId> = self.connected.keys().cloned().collect();
        for peer in peers {
            if self.is_member(flow, &peer) {
                self.sync_with(&peer, flow);
            }
        }
    }

    /// Anti-entropy: start missing conversations, and restart quiet ones whose peer is not known
    /// to have our heads (a message was lost, or a change was missed).
    pub fn tick(&mut self, now: u64) {
        self.now = now;
        // Each flow's heads and members are read once per tick, not once per peer.
        let flows: Vec<(String, Vec<automerge::ChangeHash>, Vec<String>)> = self
            .repo
            .flow_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|flow| {
                let heads = self.heads(&flow);
                let members = self
                    .repo
                    .members(&flow)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                (flow, heads, members)
            })
            .collect();
        let peers: Vec<NodeId> = self.connected.keys().cloned().collect();
        for peer in peers {
            for (flow, ours, members) in &flows {
                if !members.iter().any(|m| m == peer.as_str()) {
                    continue;
                }
                let key = (peer.clone(), flow.clone());
                let restart = match self.clients.get(&key) {
                    None => true,
                    Some(c) => {
                        now.saturating_sub(c.last_activity) >= ANTI_ENTROPY_MS
                            && c.state.their_heads.as_ref().map(|h| sorted(h.clone()))
                                != Some(ours.clone())
                    }
                };
                if restart {
                    let previous = self.clients.remove(&key);
                    let session = previous.as_ref().map_or(1, |c| c.session + 1);
                    self.clients
                        .insert(key, Conversation::fresh(session, now, previous.as_ref()));
                    self.sync_with(&peer, flow);
                }
            }
        }
    }

    fn heads(&mut self, flow: &str) -> Vec<automerge::ChangeHash> {
        match self.repo.holds(flow) {
            Ok(true) => self
                .repo
                .doc(flow)
                .map(|d| sorted(d.get_heads()))
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Our next sync message for `flow`, from the given state (an empty document's if the flow
    /// is not held here).
    fn generate(&mut self, flow: &str, state: &mut sync::State) -> Option<SyncMessage> {
        let message = match self.repo.holds(flow) {
            Ok(true) => match self.repo.doc(flow) {
                Ok(doc) => guarded(|| doc.generate_sync_message(state)),
                Err(e) => {
                    tracing::warn!(target: "sync", %flow, "cannot load flow: {e}");
                    return None;
                }
            },
            _ => guarded(|| Automerge::new().generate_sync_message(state)),
        };
        let Some(message) = message else {
            // What the peer told us earlier broke the state machine: start the session afresh.
            *state = sync::State::new();
            return None;
        };
        let message = message?;
        match to_wire(&self.repo, flow, message, state) {
            Ok(w) => {
                self.stats.changes_sent += w.changes.len() as u64;
                Some(w)
            }
            Err(e) => {
                tracing::warn!(target: "sync", %flow, "cannot build a sync message: {e}");
                None
            }
        }
    }

    /// Continues (or starts) our conversation about `flow` with `peer`.
    fn sync_with(&mut self, peer: &NodeId, flow: &str) {
        let now = self.now;
        let key = (peer.clone(), flow.to_string());
        let mut client = self
            .clients
            .remove(&key)
            .unwrap_or_else(|| Conversation::fresh(1, now, None));
        if client.awaiting {
            tracing::debug!(target: "sync", %peer, %flow, "request in flight; news waits for its answer");
        } else {
            let generated = self.generate(flow, &mut client.state);
            tracing::debug!(target: "sync", %peer, %flow, sends = generated.is_some(), changes = generated.as_ref().map_or(0, |w| w.changes.len()), "client turn");
            if let Some(mut wire) = generated {
                wire.session = client.session;
                client.awaiting = true;
                client.last_activity = now;
                self.stats.requests_sent += 1;
                self.io.push_back(Io::Sync {
                    peer: peer.clone(),
                    flow: flow.to_string(),
                    request: wire::SyncRequest {
                        message: Some(wire),
                    },
                });
            }
        }
        self.clients.insert(key, client);
    }

    /// A peer's sync request: absorb it, and answer with our next message for that flow.
    pub fn handle_sync_request(
        &mut self,
        peer: &NodeId,
        request: wire::SyncRequest,
    ) -> wire::SyncResponse {
        let unavailable = wire::SyncResponse {
            result: Some(sync_response::Result::Unavailable(true)),
        };
        let Some(message) = request.message else {
            return unavailable;
        };
        let Some(flow) = flow_id(&message.flow) else {
            return unavailable;
        };
        let talk = self.talk(&flow, peer);
        if talk == Talk::Outsider {
            // Take what is valid (a member removed concurrently may still push changes made
            // before it knew), penalize what is not, and answer as if the flow were unknown.
            if let Err(reason) = self.absorb(peer, &flow, message, &mut sync::State::new()) {
                self.penalize(peer, reason);
                return unavailable;
            }
            return self.empty_answer(&flow);
        }
        let key = (peer.clone(), flow.clone());
        let now = self.now;
        let previous = self.servers.remove(&key);
        let mut server = match previous {
            Some(s) if s.session == message.session => s,
            other => Conversation::fresh(message.session, now, other.as_ref()),
        };
        server.last_activity = now;
        if let Err(reason) = self.absorb(peer, &flow, message, &mut server.state) {
            self.penalize(peer, reason);
            return unavailable;
        }
        if talk == Talk::Unknown && self.talk(&flow, peer) != Talk::Member {
            // Still not ours: nothing was kept, and the answer says nothing about the flow.
            return self.empty_answer(&flow);
        }
        let reply = self.generate(&flow, &mut server.state);
        tracing::debug!(target: "sync", %peer, %flow, replies = reply.is_some(), changes = reply.as_ref().map_or(0, |w| w.changes.len()), "server turn");
        self.servers.insert(key, server);
        wire::SyncResponse {
            result: reply.map(sync_response::Result::Message),
        }
    }

    /// The answer about a flow this node does not hold — also given to non-members about a flow
    /// it does hold, so the two cannot be told apart.
    fn empty_answer(&mut self, flow: &str) -> wire::SyncResponse {
        let reply = Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .map(|m| SyncMessage {
                flow: unhex(flow).unwrap_or_default(),
                automerge: m.encode(),
                changes: Vec::new(),
                session: 0,
            });
        wire::SyncResponse {
            result: reply.map(sync_response::Result::Message),
        }
    }

    /// The answer to one of our sync requests.
    pub fn handle_sync_response(
        &mut self,
        peer: &NodeId,
        flow: &str,
        response: wire::SyncResponse,
    ) {
        let key = (peer.clone(), flow.to_string());
        let Some(mut client) = self.clients.remove(&key) else {
            return; // a conversation we have since dropped
        };
        if !client.awaiting {
            // Not an answer we are waiting for (a duplicate, or from an abandoned session).
            self.clients.insert(key, client);
            return;
        }
        client.awaiting = false;
        client.last_activity = self.now;
        match response.result {
            Some(sync_response::Result::Message(m)) => {
                if flow_id(&m.flow).as_deref() != Some(flow) {
                    self.penalize(peer, "answered about another flow".into());
                    return;
                }
                if let Err(reason) = self.absorb(peer, flow, m, &mut client.state) {
                    self.penalize(peer, reason);
                    return;
                }
                self.clients.insert(key, client);
                // Keep the conversation going until neither side has anything to say.
                self.sync_with(peer, flow);
            }
            Some(sync_response::Result::Unavailable(_)) => {
                tracing::debug!(target: "sync", %peer, %flow, "peer does not serve this flow");
                self.clients.insert(key, client);
            }
            // The peer had nothing to say. News that arrived while we waited goes out now;
            // with no news, Automerge has nothing to send and the conversation rests.
            None => {
                self.clients.insert(key, client);
                self.sync_with(peer, flow);
            }
        }
    }

    /// One of our sync requests failed (timeout, disconnect): let the next tick retry.
    pub fn sync_failed(&mut self, peer: &NodeId, flow: &str) {
        if let Some(c) = self.clients.get_mut(&(peer.clone(), flow.to_string())) {
            c.awaiting = false;
        }
    }

    /// Applies a received sync message: its signed changes through the accept path, the rest
    /// to the session's sync state. An `Err` is a reason to penalize the sender.
    fn absorb(
        &mut self,
        peer: &NodeId,
        flow: &str,
        message: SyncMessage,
        state: &mut sync::State,
    ) -> Result<(), String> {
        self.last_heard.insert(peer.clone(), self.repo.now());
        let mut am = decode_sync_message(&message.automerge)?;
        if !am.changes.is_empty() {
            return Err("changes must travel with their signatures".into());
        }
        if message.changes.len() > wire::MAX_CHANGES_PER_MESSAGE {
            return Err("too many changes in one message".into());
        }
        if !message.changes.is_empty() {
            let batch: Vec<SignedChange> = message.changes.into_iter().map(Into::into).collect();
            let held = matches!(self.repo.holds(flow), Ok(true));
            let require_member = !held && !self.joining.contains_key(flow);
            let out = match self.repo.receive_new(flow, &batch, require_member) {
                Ok(out) => out,
                Err(e) => {
                    // A local storage failure is not the peer's fault; anti-entropy retries.
                    tracing::error!(target: "sync", %flow, "cannot store received changes: {e}");
                    return Ok(());
                }
            };
            tracing::debug!(target: "sync", %peer, %flow, accepted = out.accepted.len(), pending = out.pending.len(), rejected = out.rejected.len(), known = out.known, "received changes");
            self.stats.changes_accepted += out.accepted.len() as u64;
            self.stats.changes_rejected += out.rejected.len() as u64;
            if !out.accepted.is_empty() {
                self.io.push_back(Io::Event(Event::FlowUpdated {
                    flow: flow.to_string(),
                    from: peer.clone(),
                }));
                self.finish_join(flow);
                // Pass the news on to a few other connected members (epidemic gossip with a
                // bounded fan-out: in a dense mesh, relaying to everyone costs O(n²) exchanges per
                // change; anti-entropy repairs whatever a relay misses).
                let heads: Vec<u8> = out
                    .accepted
                    .iter()
                    .flat_map(|v| v.hash().0.to_vec())
                    .collect();
                let mut others: Vec<NodeId> = self
                    .connected
                    .keys()
                    .filter(|p| *p != peer)
                    .cloned()
                    .collect();
                others.retain(|o| self.is_member(flow, o));
                for other in relay_targets(others, &heads, RELAY_FANOUT) {
                    self.sync_with(&other, flow);
                }
            }
            if let Some((_, why)) = out.rejected.first() {
                return Err(format!("sent a change that was rejected: {why}"));
            }
        }
        am.changes = sync::ChunkList::empty();
        // The message carries no changes any more: this only updates the sync state.
        let result = match self.repo.holds(flow) {
            Ok(true) => match self.repo.doc_for_sync(flow) {
                Ok(doc) => guarded(|| doc.receive_sync_message(state, am)),
                Err(_) => Some(Ok(())),
            },
            _ => guarded(|| Automerge::new().receive_sync_message(state, am)),
        };
        let Some(result) = result else {
            *state = sync::State::new();
            return Err("a sync message that crashes the sync state machine".into());
        };
        // Never switch to whole-document messages: every change must carry its signature.
        state.their_capabilities = None;
        result.map_err(|e| format!("bad sync message: {e}"))
    }

    /// The runtime caught `peer` misbehaving below the protocol (flooding, unreadable bytes).
    pub fn penalize_peer(&mut self, peer: &NodeId, reason: String) {
        self.penalize(peer, reason);
    }

    fn penalize(&mut self, peer: &NodeId, reason: String) {
        tracing::warn!(target: "sync", %peer, "penalizing peer: {reason}");
        self.clients.retain(|(p, _), _| p != peer);
        self.servers.retain(|(p, _), _| p != peer);
        self.io.push_back(Io::Penalize {
            peer: peer.clone(),
            reason,
        });
    }

    /// Starts joining a flow with a ticket: asks each peer named in it to redeem the invite.
    /// Returns the peers to ask (the runtime dials them with the ticket's addresses).
    pub fn start_join(&mut self, ticket: &wire::InviteTicket, name: &str) -> Result<Vec<NodeId>> {
        if matches!(self.repo.holds(&ticket.flow), Ok(true))
            && self.is_member(&ticket.flow, &self.me.clone())
        {
            return Err(Error::Invalid(
                "this node is already a member of that flow".into(),
            ));
        }
        let mut via: Vec<NodeId> = Vec::new();
        for addr in &ticket.addrs {
            if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                if let Ok(node) = peer.to_base58().parse::<NodeId>() {
                    if !via.contains(&node) && node != self.me {
                        via.push(node);
                    }
                }
            }
        }
        if via.is_empty() {
            return Err(Error::Invalid(
                "the ticket names no member node to ask (it has no addresses)".into(),
            ));
        }
        let request = JoinRequest {
            flow: unhex(&ticket.flow).unwrap_or_default(),
            invite: unhex(&ticket.invite).unwrap_or_default(),
            secret: ticket.secret.to_vec(),
            name: name.to_string(),
        };
        for peer in &via {
            self.io.push_back(Io::Join {
                peer: peer.clone(),
                flow: ticket.flow.clone(),
                request: request.clone(),
            });
        }
        self.joining.insert(
            ticket.flow.clone(),
            Joining {
                via: via.clone(),
                refusals: Vec::new(),
            },
        );
        Ok(via)
    }

    /// A member node's answer to our join request.
    pub fn handle_join_response(&mut self, peer: &NodeId, flow: &str, response: JoinResponse) {
        match response.result {
            Some(join_response::Result::Joined(_)) => {
                tracing::info!(target: "sync", %peer, %flow, "invite redeemed; fetching the flow");
                self.sync_with(peer, flow);
            }
            Some(join_response::Result::Refused(reason)) => self.join_refused(peer, flow, reason),
            None => self.join_refused(peer, flow, "no answer".into()),
        }
    }

    /// A join request of ours failed to reach `peer`.
    pub fn join_failed(&mut self, peer: &NodeId, flow: &str, reason: String) {
        self.join_refused(peer, flow, reason);
    }

    fn join_refused(&mut self, peer: &NodeId, flow: &str, reason: String) {
        let Some(j) = self.joining.get_mut(flow) else {
            return;
        };
        j.refusals.push(format!("{peer}: {reason}"));
        if j.refusals.len() >= j.via.len() {
            let j = self.joining.remove(flow).expect("present");
            let reason = if j.via.len() == 1 {
                reason
            } else {
                j.refusals.join("; ")
            };
            self.io.push_back(Io::Event(Event::JoinFailed {
                flow: flow.to_string(),
                reason,
            }));
        }
    }

    fn finish_join(&mut self, flow: &str) {
        if self.joining.contains_key(flow) && self.is_member(flow, &self.me.clone()) {
            self.joining.remove(flow);
            self.io.push_back(Io::Event(Event::Joined {
                flow: flow.to_string(),
            }));
        }
    }

    /// Whether a join of `flow` is under way.
    pub fn is_joining(&self, flow: &str) -> bool {
        self.joining.contains_key(flow)
    }

    /// A peer asks to redeem an invite: check it and admit the peer.
    pub fn handle_join_request(&mut self, peer: &NodeId, request: JoinRequest) -> JoinResponse {
        let refuse = |why: &str| JoinResponse {
            result: Some(join_response::Result::Refused(why.to_string())),
        };
        let Some(flow) = flow_id(&request.flow) else {
            return refuse("unknown flow or invite");
        };
        // Only a member can redeem; a node that does not hold the flow says the same as one
        // whose invite is unknown.
        if !matches!(self.repo.holds(&flow), Ok(true)) || !self.is_member(&flow, &self.me.clone()) {
            return refuse("unknown flow or invite");
        }
        let name: String = request.name.chars().take(64).collect();
        match self
            .repo
            .redeem(&flow, &hex(&request.invite), &request.secret, peer, &name)
        {
            Ok(_) => {
                self.local_change(&flow);
                JoinResponse {
                    result: Some(join_response::Result::Joined(true)),
                }
            }
            Err(Error::Invalid(why)) if why == "unknown invite" => refuse("unknown flow or invite"),
            Err(Error::Invalid(why)) => refuse(&why),
            Err(e) => {
                tracing::warn!(target: "sync", %flow, "cannot admit {peer}: {e}");
                refuse("the member node could not record the join")
            }
        }
    }

    /// Per member of `flow`: connected, in sync, last heard.
    pub fn member_sync(&mut self, flow: &str) -> Vec<MemberSync> {
        let heads = self
            .repo
            .doc(flow)
            .map(|d| {
                let mut h = d.get_heads();
                h.sort();
                h
            })
            .unwrap_or_default();
        let members = self.repo.members(flow).unwrap_or_default();
        members
            .into_iter()
            .filter(|(n, _)| n != self.me.as_str())
            .map(|(n, _)| {
                let node: Option<NodeId> = n.parse().ok();
                let key = node.as_ref().map(|p| (p.clone(), flow.to_string()));
                let session =
                    key.as_ref()
                        .and_then(|k| match (self.clients.get(k), self.servers.get(k)) {
                            (Some(c), Some(s)) if s.last_activity > c.last_activity => Some(s),
                            (Some(c), _) => Some(c),
                            (None, s) => s,
                        });
                let in_sync = session.and_then(|s| {
                    s.state.their_heads.as_ref().map(|t| {
                        let mut t = t.clone();
                        t.sort();
                        t == heads
                    })
                });
                MemberSync {
                    connected: node
                        .as_ref()
                        .is_some_and(|p| self.connected.contains_key(p)),
                    last_heard: node.as_ref().and_then(|p| self.last_heard.get(p).copied()),
                    node_id: n,
                    in_sync,
                }
            })
            .collect()
    }
}

/// Decodes a peer's Automerge sync message; a decoder panic is an error like any other.
pub fn decode_sync_message(bytes: &[u8]) -> Result<sync::Message, String> {
    guarded(|| sync::Message::decode(bytes))
        .ok_or("a sync message that crashes the decoder")?
        .map_err(|e| format!("malformed sync message: {e}"))
}

/// Runs Automerge code on peer-supplied input, turning a panic into `None`.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// The flow id a wire message names (16 bytes), as hex.
fn flow_id(bytes: &[u8]) -> Option<String> {
    (bytes.len() == 16).then(|| hex(bytes))
}

/// Moves the changes out of an Automerge sync message, pairs each with its stored signature,
/// and caps the message's size; changes left out are forgotten by the sync state so they go in
/// a later message.
fn to_wire(
    repo: &Repo,
    flow: &str,
    mut message: sync::Message,
    state: &mut sync::State,
) -> Result<SyncMessage> {
    let mut changes = Vec::new();
    let mut size = 0usize;
    for chunk in message.changes.iter() {
        let decoded: Vec<Change> = match Change::from_bytes(chunk.to_vec()) {
            Ok(c) => vec![c],
            // A whole-document chunk (never requested, but handled): split it into changes.
            Err(_) => Automerge::load(chunk)
                .map(|d| d.get_changes(&[]))
                .unwrap_or_default(),
        };
        for mut change in decoded {
            let hash = change.hash();
            let bytes = change.bytes().into_owned();
            let full = size + bytes.len() + 100 > wire::MAX_SYNC_MESSAGE / 2
                || changes.len() >= wire::MAX_CHANGES_PER_MESSAGE;
            match repo.signature(flow, &hash)? {
                Some(signature) if !full => {
                    size += bytes.len() + signature.len();
                    changes.push(wire::SignedChange {
                        change: bytes,
                        signature,
                    });
                }
                _ => {
                    state.sent_hashes.remove(&hash);
                }
            }
        }
    }
    message.changes = sync::ChunkList::empty();
    Ok(SyncMessage {
        flow: unhex(flow).unwrap_or_default(),
        automerge: message.encode(),
        changes,
        session: 0,
    })
}

fn sorted(mut heads: Vec<automerge::ChangeHash>) -> Vec<automerge::ChangeHash> {
    heads.sort();
    heads
}
