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

use std::collections::{HashMap, HashSet, VecDeque};

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, Change, ChangeHash};

use crate::auth::SignedChange;
use crate::error::{Error, Result};
use crate::identity::{hex, unhex, InviteKey, NodeId};
use crate::repo::{Offered, RedeemError, Repo};
use crate::wire::{self, join_response, sync_response, JoinRequest, JoinResponse, SyncMessage};

/// A (peer, flow) session with no message for this long is refreshed on the next tick, so a
/// lost message or a missed change is repaired (anti-entropy).
pub const ANTI_ENTROPY_MS: u64 = 5_000;

/// Most announced heads queued per announcer behind a fetch (the fetch that follows brings
/// everything the announcer has anyway).
pub const MAX_QUEUED_HEADS: usize = 256;

/// How many conversations per flow anti-entropy restarts on one tick.
pub const ANTI_ENTROPY_PEERS: usize = 2;

/// How long a received announcement waits for its changes to arrive before it is dropped
/// unforwarded (gossip keeps a message for validation about 10 s; see `net.rs`).
pub const ANNOUNCE_PATIENCE_MS: u64 = 8_000;

/// Most announcements waiting for their changes at once; beyond it the oldest is dropped.
pub const MAX_WAITING_ANNOUNCEMENTS: usize = 1024;

/// A node keeps connections to at least this many members of each flow it holds (when it can
/// find them): enough for a gossip mesh, far fewer than a full mesh.
pub const MIN_MEMBER_LINKS: usize = 4;

/// How many members are responsible for bringing a flow to a member not known to hold it yet.
pub const DELIVERERS: usize = 3;

/// A deterministic pseudo-random order of `candidates` with respect to `subject`: everyone who
/// knows the same candidates computes the same order.
fn rendezvous(subject: &NodeId, candidates: &mut [NodeId]) {
    use sha2::Digest;
    candidates.sort_by_cached_key(|c| {
        let mut h = sha2::Sha256::new();
        h.update(subject.public_key());
        h.update(c.public_key());
        h.finalize()
    });
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
    /// Send a `/coflow/join/2` request to a peer named in a ticket.
    Join {
        peer: NodeId,
        flow: String,
        request: JoinRequest,
    },
    /// The peer sent something invalid: disconnect it and keep it away for a while.
    Penalize { peer: NodeId, reason: String },
    /// Announce new heads on a flow's gossip topic (no content).
    Announce {
        topic: String,
        heads: Vec<ChangeHash>,
    },
    /// What gossip should do with a received announcement (by its gossip message id).
    Validate {
        id: Vec<u8>,
        via: NodeId,
        verdict: Verdict,
    },
    /// Connect to this peer: it announced changes this node lacks and is not connected.
    Dial { peer: NodeId },
    /// Something happened that local observers may care about.
    Event(Event),
}

/// The fate of a received announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on: this node holds the heads it names, or relays the topic without holding it.
    Accept,
    /// Drop it without blame (from a non-member; its changes never came).
    Ignore,
    /// Drop it and blame the sender (malformed).
    Reject,
}

/// An announcement held back until this node has the changes it names.
struct Waiting {
    id: Vec<u8>,
    via: NodeId,
    flow: String,
    heads: Vec<ChangeHash>,
    since: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Changes from `from` were accepted into `flow`.
    FlowUpdated { flow: String, from: NodeId },
    /// A join finished: this node now holds the flow as a member.
    Joined { flow: String },
    /// Every peer refused or failed the join.
    JoinFailed { flow: String, reason: String },
    /// `from` added this node to `flow`: it waits for this node's user to accept it.
    Offered { flow: String, from: NodeId },
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
    /// sends only if it makes this node a member (someone added it by node id), as an offer.
    Unknown,
    /// The flow was offered to this node (it waits for its user, or was declined) and the peer
    /// is one of its members: take nothing, and say the flow is not served here, so that the
    /// peer's side of the conversation rests.
    Waiting,
}

/// What [`Engine::absorb`] made of a message.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Absorbed {
    /// Its changes and sync state went through the conversation.
    Synced,
    /// Its changes offered this node a flow it does not hold ([`crate::repo::Offered`]): kept
    /// as an offer, or not kept (no room, declined); the conversation goes no further.
    Offer,
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
    /// Heads the peer announced that this node lacks: asked for on the next turn.
    wanted: Vec<ChangeHash>,
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
            wanted: Vec::new(),
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

/// A local change in a flow of at most this many other members, all connected, is pushed to
/// each of them instead of being announced: the common small flow (a customer, a business, a
/// few suppliers). Measured (BENCHMARKS.md): with 19 others pushing cost the same sync bytes per
/// change as gossip and cut p99 from 633 to 152 ms, but with 24 others voting at once it cost
/// seven to ten times gossip's bytes (297 KB per vote against 31-43 KB), and with 49 others
/// more again.
pub const PUSH_TO_ALL_MAX: usize = 8;

/// Most recent arrivals kept in [`Stats::arrivals`].
pub const MAX_ARRIVALS: usize = 10_000;

/// Counters for tests and benchmarks (the `Stats` control call).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Sync requests sent, and their encoded bytes.
    pub requests_sent: u64,
    pub request_bytes: u64,
    /// Sync responses sent, and their encoded bytes.
    pub responses_sent: u64,
    pub response_bytes: u64,
    /// Signed changes sent in sync messages (either direction).
    pub changes_sent: u64,
    pub changes_accepted: u64,
    pub changes_rejected: u64,
    /// Announcements published by this node, and their payload bytes (gossip's own framing and
    /// signature come on top); announcements delivered to this node (gossip drops duplicates
    /// before they get here).
    pub announcements_sent: u64,
    pub announcement_bytes: u64,
    pub announcements_received: u64,
    /// Announcements passed on for flows this node relays without holding them.
    pub announcements_relayed: u64,
    /// The last [`MAX_ARRIVALS`] changes received from peers: hash (hex) and when they were
    /// durable here (Unix milliseconds).
    pub arrivals: VecDeque<Arrival>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Arrival {
    pub hash: String,
    pub at_ms: i64,
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
    /// Gossip topic ↔ flow, for the flows held here.
    topics: HashMap<String, String>,
    topic_of: HashMap<String, String>,
    /// Announcements held back until their changes arrive.
    waiting: VecDeque<Waiting>,
    /// Per flow, the members known to hold it (they sent its heads in a sync message, or
    /// announced changes of it).
    holders: HashMap<String, HashSet<NodeId>>,
    /// Per flow, the connected peers seen subscribed to its topic (gossip reaches them).
    subscribers: HashMap<String, HashSet<NodeId>>,
    /// Node ids parsed from member lists (parsing decodes a curve point).
    parsed: HashMap<String, Option<NodeId>>,
    /// Per flow, the peer this node is fetching announced heads from (one at a time, so the
    /// same changes do not arrive over many conversations at once), and the announcements
    /// queued behind it: who announced which heads.
    pulling: HashMap<String, NodeId>,
    queued: HashMap<String, Vec<(NodeId, Vec<ChangeHash>)>>,
    /// Changes accepted since the last [`Engine::commit`], to be stamped as arrivals then.
    uncommitted: Vec<String>,
    /// Flows whose latest local change was pushed to every other member (see
    /// [`Engine::local_change`]); messages about them say so, and receivers do not announce.
    told_all: HashSet<String>,
    /// Changes refused without blaming their sender (the other version of an equivocation,
    /// and what builds on it), with their dependencies: a peer's heads naming one are read as
    /// its dependencies, so it is not asked for again (two honest nodes holding different
    /// versions would otherwise ask each other for them forever).
    refused: HashMap<ChangeHash, Vec<ChangeHash>>,
    pub stats: Stats,
}

/// How many refused changes [`Engine`] remembers before it starts afresh.
const MAX_REFUSED: usize = 4096;

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
            topics: HashMap::new(),
            topic_of: HashMap::new(),
            waiting: VecDeque::new(),
            holders: HashMap::new(),
            subscribers: HashMap::new(),
            parsed: HashMap::new(),
            pulling: HashMap::new(),
            queued: HashMap::new(),
            uncommitted: Vec::new(),
            told_all: HashSet::new(),
            refused: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// Records changes as arrived (durable) now.
    fn arrived(&mut self, hashes: Vec<String>) {
        let at_ms = crate::repo::system_clock_ms();
        for hash in hashes {
            if self.stats.arrivals.len() >= MAX_ARRIVALS {
                self.stats.arrivals.pop_front();
            }
            self.stats.arrivals.push_back(Arrival { hash, at_ms });
        }
    }

    /// Commits what the repository wrote since the last commit (the runtime groups the writes of
    /// several inputs into one commit, with [`Repo::begin_group`]). If the commit fails, nothing
    /// since the last commit was stored: every message not yet sent is dropped and every sync
    /// conversation starts again, so no peer is told of heads that were not stored.
    pub fn commit(&mut self) -> Result<()> {
        let result = self.repo.commit_group();
        let accepted = std::mem::take(&mut self.uncommitted);
        match &result {
            Ok(()) => self.arrived(accepted),
            Err(e) => {
                tracing::error!(target: "sync", "cannot commit: {e}; what was received since the last commit will be fetched again");
                self.io.clear();
                self.clients.clear();
                self.servers.clear();
                self.waiting.clear();
                self.pulling.clear();
                self.queued.clear();
            }
        }
        result
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

    fn holds(&mut self, flow: &str) -> bool {
        matches!(self.repo.holds(flow), Ok(true))
    }

    fn is_member(&mut self, flow: &str, peer: &NodeId) -> bool {
        matches!(self.repo.role_of(flow, peer.as_str()), Ok(Some(_)))
    }

    /// How this node talks about `flow` with `peer`.
    fn talk(&mut self, flow: &str, peer: &NodeId) -> Talk {
        if self.joining.get(flow).is_some_and(|j| j.via.contains(peer)) {
            return Talk::Member;
        }
        match self.repo.holds(flow) {
            Ok(true) if self.is_member(flow, peer) => Talk::Member,
            Ok(true) => Talk::Outsider,
            _ => match self.repo.offer_member(flow, peer.as_str()) {
                Some(true) => Talk::Waiting,
                // Not held: the removal answer below finds nothing to tell.
                Some(false) => Talk::Outsider,
                None => Talk::Unknown,
            },
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
        for s in self.subscribers.values_mut() {
            s.remove(peer);
        }
        self.pulls_from_ended(peer);
    }

    /// A change was made here. When every other member is connected and there are at most
    /// [`PUSH_TO_ALL_MAX`] of them, it is pushed to each of them and not announced. Otherwise the new heads are announced on the flow's gossip topic
    /// (members fetch them from whoever announced or passed the announcement on), and the change
    /// is pushed at once to connected members the announcement may not bring it to: those not
    /// seen subscribed, and those not known to hold the flow (they would only relay it).
    pub fn local_change(&mut self, flow: &str) {
        let me = self.me.clone();
        let others: Vec<NodeId> = self
            .member_ids(flow)
            .into_iter()
            .filter(|m| *m != me)
            .collect();
        if !others.is_empty()
            && others.len() <= PUSH_TO_ALL_MAX
            && others.iter().all(|m| self.connected.contains_key(m))
        {
            // Every other member is a direct peer: the change is pushed to each, and nothing
            // is announced (an announcement would have them fetch what the push brings). This
            // is the common case of a small flow, and costs one exchange per member.
            self.told_all.insert(flow.to_string());
            for m in others {
                self.sync_with(&m, flow);
            }
            return;
        }
        self.told_all.remove(flow);
        let subscribed = self.subscribers.get(flow).cloned().unwrap_or_default();
        let holders = self.holders.get(flow).cloned().unwrap_or_default();
        let peers: Vec<NodeId> = self
            .connected
            .keys()
            .filter(|p| !(subscribed.contains(*p) && holders.contains(*p)))
            .cloned()
            .collect();
        for peer in peers {
            if self.is_member(flow, &peer) {
                self.sync_with(&peer, flow);
            }
        }
        self.announce(flow);
    }

    /// The gossip topic of a flow held here.
    fn topic(&mut self, flow: &str) -> String {
        if let Some(t) = self.topic_of.get(flow) {
            return t.clone();
        }
        let t = wire::flow_topic(flow);
        self.topic_of.insert(flow.to_string(), t.clone());
        self.topics.insert(t.clone(), flow.to_string());
        t
    }

    /// The flow held here as a member whose topic this is, if any. The map is filled as flows
    /// arrive ([`Engine::absorb`]), are announced, and by [`Engine::member_topics`] (the runtime
    /// calls it at start, on every tick and when a flow is created), so a relayed message costs
    /// one lookup, not a scan of the store.
    fn flow_of_topic(&self, topic: &str) -> Option<String> {
        self.topics.get(topic).cloned()
    }

    fn announce(&mut self, flow: &str) {
        let heads = self.heads(flow);
        if heads.is_empty() {
            return;
        }
        let topic = self.topic(flow);
        self.stats.announcements_sent += 1;
        self.stats.announcement_bytes += wire::encode_announce(&heads).len() as u64;
        self.io.push_back(Io::Announce { topic, heads });
    }

    /// The gossip topics this node subscribes to: those of the flows it holds as a member.
    pub fn member_topics(&mut self) -> Vec<String> {
        let me = self.me.clone();
        let mut out = Vec::new();
        for flow in self.repo.flow_ids().unwrap_or_default() {
            if self.is_member(&flow, &me) {
                out.push(self.topic(&flow));
            }
        }
        out
    }

    /// A peer was seen subscribed to a flow's topic: gossip reaches it.
    pub fn peer_subscribed(&mut self, peer: &NodeId, topic: &str) {
        // Not proof that it holds the flow: a node relays topics it is not a member of (a member
        // added a moment ago relays before it has the flow).
        if let Some(flow) = self.flow_of_topic(topic) {
            self.subscribers
                .entry(flow)
                .or_default()
                .insert(peer.clone());
        }
    }

    /// A peer left a flow's topic.
    pub fn peer_unsubscribed(&mut self, peer: &NodeId, topic: &str) {
        if let Some(flow) = self.topics.get(topic) {
            if let Some(s) = self.subscribers.get_mut(flow) {
                s.remove(peer);
            }
        }
    }

    /// A gossip announcement arrived (`via` passed it on; `source` signed it). The verdict goes
    /// out as [`Io::Validate`]: at once, or — when this node lacks the announced changes — once
    /// it has synced them, so that a member passes an announcement on only when it can serve
    /// what it names.
    pub fn handle_announcement(
        &mut self,
        id: Vec<u8>,
        via: &NodeId,
        source: Option<&NodeId>,
        topic: &str,
        data: &[u8],
    ) {
        self.stats.announcements_received += 1;
        if let Some(verdict) = self.judge_announcement(&id, via, source, topic, data) {
            self.io.push_back(Io::Validate {
                id,
                via: via.clone(),
                verdict,
            });
        }
    }

    fn judge_announcement(
        &mut self,
        id: &[u8],
        via: &NodeId,
        source: Option<&NodeId>,
        topic: &str,
        data: &[u8],
    ) -> Option<Verdict> {
        let me = self.me.clone();
        let flow = match self.flow_of_topic(topic) {
            Some(f) if matches!(self.repo.holds(&f), Ok(true)) && self.is_member(&f, &me) => f,
            // A topic this node relays without being a member: content-free, pass it on.
            _ => {
                if let Err(why) = wire::decode_announce(data) {
                    tracing::debug!(target: "sync", %via, "rejecting an announcement: {why}");
                    return Some(Verdict::Reject);
                }
                self.stats.announcements_relayed += 1;
                return Some(Verdict::Accept);
            }
        };
        let heads = match wire::decode_announce(data) {
            Ok(h) => h,
            Err(why) => {
                tracing::debug!(target: "sync", %via, "rejecting an announcement: {why}");
                return Some(Verdict::Reject);
            }
        };
        let Some(source) = source else {
            return Some(Verdict::Reject);
        };
        if !self.is_member(&flow, source) {
            return Some(Verdict::Ignore);
        }
        self.holders
            .entry(flow.clone())
            .or_default()
            .insert(source.clone());
        // A member that holds the flow passes an announcement on only once it holds what it
        // names (one that does not hold the flow yet relays it, like a non-member).
        let via_serves = via == source || self.holders.get(&flow).is_some_and(|h| h.contains(via));
        let missing = self.missing(&flow, &heads);
        if missing.is_empty() {
            return Some(Verdict::Accept);
        }
        tracing::debug!(target: "sync", %flow, %via, %source, missing = missing.len(), "announced heads this node lacks");
        if via_serves && self.connected.contains_key(via) {
            self.want(via, &flow, &missing);
        } else if self.connected.contains_key(source) {
            self.want(source, &flow, &missing);
        } else {
            self.io.push_back(Io::Dial {
                peer: source.clone(),
            });
            // Meanwhile ask a connected member (any other than `via` first).
            let candidates: Vec<NodeId> = self
                .connected
                .keys()
                .filter(|p| *p != via)
                .cloned()
                .chain(std::iter::once(via.clone()))
                .collect();
            let member = candidates.into_iter().find(|p| self.is_member(&flow, p));
            if let Some(p) = member {
                self.want(&p, &flow, &missing);
            }
        }
        if self.waiting.len() >= MAX_WAITING_ANNOUNCEMENTS {
            if let Some(old) = self.waiting.pop_front() {
                self.io.push_back(Io::Validate {
                    id: old.id,
                    via: old.via,
                    verdict: Verdict::Ignore,
                });
            }
        }
        self.waiting.push_back(Waiting {
            id: id.to_vec(),
            via: via.clone(),
            flow,
            heads: missing,
            since: self.now,
        });
        None
    }

    /// Which of `heads` this node does not have.
    fn missing(&mut self, flow: &str, heads: &[ChangeHash]) -> Vec<ChangeHash> {
        match self.repo.doc(flow) {
            Ok(doc) => heads
                .iter()
                .filter(|h| doc.get_change_meta_by_hash(h).is_none())
                .copied()
                .collect(),
            Err(_) => heads.to_vec(),
        }
    }

    /// Fetches `heads` of `flow` from `peer`: now, if no fetch for this flow is under way (or
    /// it is from the same peer); otherwise once the current one ends.
    fn want(&mut self, peer: &NodeId, flow: &str, heads: &[ChangeHash]) {
        match self.pulling.get(flow) {
            Some(p) if p != peer => {
                let queue = self.queued.entry(flow.to_string()).or_default();
                match queue.iter_mut().find(|(q, _)| q == peer) {
                    Some((_, hs)) => {
                        for h in heads {
                            if !hs.contains(h) && hs.len() < MAX_QUEUED_HEADS {
                                hs.push(*h);
                            }
                        }
                    }
                    None => queue.push((peer.clone(), heads.to_vec())),
                }
                return;
            }
            _ => {
                self.pulling.insert(flow.to_string(), peer.clone());
            }
        }
        let now = self.now;
        let c = self
            .clients
            .entry((peer.clone(), flow.to_string()))
            .or_insert_with(|| Conversation::fresh(1, now, None));
        for h in heads {
            if !c.wanted.contains(h) {
                c.wanted.push(*h);
            }
        }
        self.sync_with(peer, flow);
    }

    /// The fetch from `peer` for `flow` ended (the conversation came to rest, failed, or the
    /// peer left): start the next one for heads still missing.
    fn pull_ended(&mut self, peer: &NodeId, flow: &str) {
        if self.pulling.get(flow) != Some(peer) {
            return;
        }
        self.pulling.remove(flow);
        let mut queue = Vec::new();
        for (p, heads) in self.queued.remove(flow).unwrap_or_default() {
            let missing = self.missing(flow, &heads);
            // What arrived meanwhile, and announcers that left, are dropped (anti-entropy and
            // later announcements cover the rest).
            if !missing.is_empty() && self.connected.contains_key(&p) {
                queue.push((p, missing));
            }
        }
        if queue.is_empty() {
            return;
        }
        let (next, heads) = queue.remove(0);
        if !queue.is_empty() {
            self.queued.insert(flow.to_string(), queue);
        }
        self.want(&next, flow, &heads);
    }

    /// Ends every fetch from `peer` (it left, or was penalized).
    fn pulls_from_ended(&mut self, peer: &NodeId) {
        let flows: Vec<String> = self
            .pulling
            .iter()
            .filter(|(_, p)| *p == peer)
            .map(|(f, _)| f.clone())
            .collect();
        for flow in flows {
            self.pull_ended(peer, &flow);
        }
    }

    /// Changes arrived in `flow`: pass on the announcements they complete. Returns whether any
    /// announcement named them.
    fn settle_waiting(&mut self, flow: &str) -> bool {
        if !self.waiting.iter().any(|w| w.flow == flow) {
            return false;
        }
        let waiting = std::mem::take(&mut self.waiting);
        let mut settled = false;
        for w in waiting {
            if w.flow == flow && self.missing(flow, &w.heads).is_empty() {
                settled = true;
                self.io.push_back(Io::Validate {
                    id: w.id,
                    via: w.via,
                    verdict: Verdict::Accept,
                });
            } else {
                self.waiting.push_back(w);
            }
        }
        settled
    }

    /// The node ids of the flow's current members (this node's included, if it is one).
    fn member_ids(&mut self, flow: &str) -> Vec<NodeId> {
        let names = self.repo.members(flow).unwrap_or_default();
        names
            .into_iter()
            .filter_map(|(n, _)| {
                self.parsed
                    .entry(n)
                    .or_insert_with_key(|n| n.parse().ok())
                    .clone()
            })
            .collect()
    }

    /// Members this node should connect to, for the runtime to dial: `must` are members not
    /// known to hold a flow whose delivery falls to this node (it is among the [`DELIVERERS`]
    /// holders a deterministic order picks for them); `more` are, per flow with fewer than
    /// [`MIN_MEMBER_LINKS`] members connected, how many more to connect and the candidates in
    /// order of preference.
    pub fn reach_plan(&mut self) -> (Vec<NodeId>, Vec<(usize, Vec<NodeId>)>) {
        let me = self.me.clone();
        let mut must = Vec::new();
        let mut more = Vec::new();
        for flow in self.repo.flow_ids().unwrap_or_default() {
            let members = self.member_ids(&flow);
            if !members.contains(&me) {
                continue;
            }
            let holders = self.holders.get(&flow).cloned().unwrap_or_default();
            let mut connected = 0;
            let mut candidates = Vec::new();
            for m in members.iter().filter(|m| **m != me) {
                if self.connected.contains_key(m) {
                    connected += 1;
                    continue;
                }
                if !holders.contains(m) {
                    let mut deliverers: Vec<NodeId> = holders
                        .iter()
                        .filter(|h| *h != m)
                        .cloned()
                        .chain(std::iter::once(me.clone()))
                        .collect();
                    rendezvous(m, &mut deliverers);
                    if deliverers.iter().take(DELIVERERS).any(|d| *d == me) {
                        must.push(m.clone());
                    }
                }
                candidates.push(m.clone());
            }
            if connected < MIN_MEMBER_LINKS && !candidates.is_empty() {
                // Holders first (they can serve the flow), each group in this node's own order.
                rendezvous(&me, &mut candidates);
                candidates.sort_by_key(|c| !holders.contains(c));
                more.push((MIN_MEMBER_LINKS - connected, candidates));
            }
        }
        must.sort();
        must.dedup();
        (must, more)
    }

    /// Anti-entropy: start missing conversations, and restart quiet ones whose peer is not known
    /// to have our heads (a message was lost, or a change was missed).
    pub fn tick(&mut self, now: u64) {
        self.now = now;
        // Announcements whose changes never came are dropped, not passed on.
        while self
            .waiting
            .front()
            .is_some_and(|w| now.saturating_sub(w.since) >= ANNOUNCE_PATIENCE_MS)
        {
            let w = self.waiting.pop_front().expect("present");
            self.io.push_back(Io::Validate {
                id: w.id,
                via: w.via,
                verdict: Verdict::Ignore,
            });
        }
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
        for (flow, ours, members) in &flows {
            // Conversations due a restart, the quietest first; only a few per tick, so that
            // after a burst of news a dense mesh is not swamped with repairs all at once.
            let mut due: Vec<(u64, NodeId)> = Vec::new();
            for peer in &peers {
                if !members.iter().any(|m| m == peer.as_str()) {
                    continue;
                }
                match self.clients.get(&(peer.clone(), flow.clone())) {
                    None => due.push((0, peer.clone())),
                    Some(c)
                        if now.saturating_sub(c.last_activity) >= ANTI_ENTROPY_MS
                            && c.state.their_heads.as_ref().map(|h| sorted(h.clone()))
                                != Some(ours.clone()) =>
                    {
                        due.push((c.last_activity, peer.clone()))
                    }
                    Some(_) => {}
                }
            }
            due.sort();
            for (_, peer) in due.into_iter().take(ANTI_ENTROPY_PEERS) {
                let key = (peer.clone(), flow.clone());
                let previous = self.clients.remove(&key);
                let session = previous.as_ref().map_or(1, |c| c.session + 1);
                self.clients
                    .insert(key, Conversation::fresh(session, now, previous.as_ref()));
                self.sync_with(&peer, flow);
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
        let mut lacking = Vec::new();
        let message = match self.repo.holds(flow) {
            Ok(true) => match self.repo.doc(flow) {
                Ok(doc) => {
                    lacking = lacking_changes(doc, state);
                    // Automerge would build every change the peer lacks, on every round, to
                    // send them all at once; they are read from the store instead, as many as
                    // a message carries. Marking them sent keeps Automerge from building them.
                    let hidden: Vec<ChangeHash> = lacking
                        .iter()
                        .filter(|h| state.sent_hashes.insert(**h))
                        .copied()
                        .collect();
                    let message = guarded(|| doc.generate_sync_message(state));
                    for h in &hidden {
                        state.sent_hashes.remove(h);
                    }
                    message
                }
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
        let built = if lacking.is_empty() {
            to_wire(&self.repo, flow, message, state)
        } else {
            from_store(&self.repo, flow, message, &lacking, state)
        };
        match built {
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
        let me = self.me.clone();
        let removed = |e: &mut Engine, who: &NodeId| {
            !e.joining.contains_key(flow) && e.holds(flow) && !e.is_member(flow, who)
        };
        if removed(self, &me) || self.talk(flow, peer) == Talk::Outsider {
            // This node was removed (it learned so from a member): it has nothing to ask for.
            // Or the peer was removed while a conversation with it was under way: it is told
            // nothing more (it learns of its removal when it asks, see `removal_answer`).
            tracing::debug!(target: "sync", %peer, %flow, "not both members: nothing to sync");
            self.clients.insert(key, client);
            self.pull_ended(peer, flow);
            return;
        }
        if client.awaiting {
            tracing::debug!(target: "sync", %peer, %flow, "request in flight; news waits for its answer");
        } else {
            if !client.wanted.is_empty() {
                // The peer announced heads we lack: tell the sync state it has them, so our
                // next message asks for them.
                let wanted = std::mem::take(&mut client.wanted);
                let missing = self.missing(flow, &wanted);
                if !missing.is_empty() {
                    let mut theirs = client.state.their_heads.clone().unwrap_or_default();
                    for h in missing {
                        if !theirs.contains(&h) {
                            theirs.push(h);
                        }
                    }
                    client.state.their_heads = Some(theirs);
                }
            }
            // Same heads on both sides means the same history: nothing to say. (Automerge would
            // still send our new heads once more after we received changes.)
            let ours = self.heads(flow);
            let in_sync =
                client.state.their_heads.as_ref().map(|h| sorted(h.clone())) == Some(ours.clone());
            let told = sorted(client.state.last_sent_heads.clone()) == ours;
            let lacking = client
                .state
                .their_heads
                .clone()
                .map(|theirs| self.missing(flow, &theirs));
            let generated = if in_sync {
                None
            } else {
                self.generate(flow, &mut client.state)
                    // Nothing to send, nothing to ask for, and the peer was told our heads: the
                    // heads differ only by changes one side refuses (an equivocation), and
                    // saying so again would go on for ever.
                    .filter(|w| !(w.changes.is_empty() && told && lacking == Some(Vec::new())))
            };
            tracing::debug!(target: "sync", %peer, %flow, sends = generated.is_some(), changes = generated.as_ref().map_or(0, |w| w.changes.len()), "client turn");
            if let Some(mut wire) = generated {
                wire.session = client.session;
                wire.everyone_told = self.told_all.contains(flow) && !wire.changes.is_empty();
                client.awaiting = true;
                client.last_activity = now;
                let request = wire::SyncRequest {
                    message: Some(wire),
                };
                self.stats.requests_sent += 1;
                self.stats.request_bytes += prost::Message::encoded_len(&request) as u64;
                self.io.push_back(Io::Sync {
                    peer: peer.clone(),
                    flow: flow.to_string(),
                    request,
                });
            } else {
                // The conversation is at rest: a fetch from this peer is over.
                self.clients.insert(key, client);
                self.pull_ended(peer, flow);
                return;
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
        let response = self.answer(peer, request);
        self.stats.responses_sent += 1;
        self.stats.response_bytes += prost::Message::encoded_len(&response) as u64;
        response
    }

    fn answer(&mut self, peer: &NodeId, request: wire::SyncRequest) -> wire::SyncResponse {
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
        if talk == Talk::Waiting {
            // Nothing is taken; what proves malice still counts against the sender.
            if let Err(reason) = self.absorb_as_stranger(peer, &flow, message) {
                self.penalize(peer, reason);
            }
            return unavailable;
        }
        if talk == Talk::Outsider {
            if let Ok(Some(upto)) = self.repo.removal_of(&flow, peer) {
                return self.removal_answer(&flow, message, &upto);
            }
            // Treated exactly as a message about a flow this node does not hold: judged against
            // an empty document, nothing kept, the same answer. Judging it against the flow
            // held here would tell a stranger that knows a head of it (from gossip) that this
            // node holds the flow ("not a member" instead of "waits for its dependencies").
            if let Err(reason) = self.absorb_as_stranger(peer, &flow, message) {
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
        let absorbed = match self.absorb(peer, &flow, message, &mut server.state) {
            Ok(absorbed) => absorbed,
            Err(reason) => {
                self.penalize(peer, reason);
                return unavailable;
            }
        };
        if talk == Talk::Unknown {
            if absorbed == Absorbed::Offer {
                // The peer offered this flow (kept or not): its side rests, and offers again
                // at its next anti-entropy round, until this node's user accepts.
                return unavailable;
            }
            if self.talk(&flow, peer) != Talk::Member {
                // Still not ours: nothing was kept, and the answer says nothing about the flow.
                return self.empty_answer(&flow);
            }
        }
        let reply = self.generate(&flow, &mut server.state);
        tracing::debug!(target: "sync", %peer, %flow, replies = reply.is_some(), changes = reply.as_ref().map_or(0, |w| w.changes.len()), "server turn");
        self.servers.insert(key, server);
        wire::SyncResponse {
            result: reply.map(sync_response::Result::Message),
        }
    }

    /// The answer to a member removed from `flow`: the flow's history up to its removal
    /// (`upto`), so that its node learns of the removal even though no member sends it content
    /// any more. Nothing it sends is taken: it is no longer a member, and what it wrote
    /// concurrently with its removal falls anyway (an honest member that did not know is not
    /// penalized for sending it).
    fn removal_answer(
        &mut self,
        flow: &str,
        message: SyncMessage,
        upto: &[ChangeHash],
    ) -> wire::SyncResponse {
        let unavailable = wire::SyncResponse {
            result: Some(sync_response::Result::Unavailable(true)),
        };
        let Ok((am, _)) = unpack(message) else {
            return unavailable;
        };
        let Ok(mut past) = self.repo.doc(flow).map(|d| d.fork_at(upto)) else {
            return unavailable;
        };
        let Ok(past) = past.as_mut() else {
            return unavailable;
        };
        let mut state = sync::State::new();
        let reply = match guarded(|| past.receive_sync_message(&mut state, am)) {
            Some(Ok(())) => guarded(|| past.generate_sync_message(&mut state)).flatten(),
            _ => None,
        };
        let wire = reply.and_then(|m| to_wire(&self.repo, flow, m, &mut state).ok());
        tracing::debug!(target: "sync", %flow, changes = wire.as_ref().map_or(0, |w| w.changes.len()), "told a removed member of its removal");
        wire::SyncResponse {
            result: wire.map(sync_response::Result::Message),
        }
    }

    /// The answer about a flow this node does not hold — also given to non-members about a flow
    /// it does hold, so the two cannot be told apart.
    fn empty_answer(&mut self, flow: &str) -> wire::SyncResponse {
        let reply = Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .map(|m| carrying(flow, m, Vec::new()));
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
                self.pull_ended(peer, flow);
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
        self.pull_ended(peer, flow);
    }

    /// Applies a received sync message: its signed changes through the accept path, the rest
    /// to the session's sync state. An `Err` is a reason to penalize the sender.
    fn absorb(
        &mut self,
        peer: &NodeId,
        flow: &str,
        message: SyncMessage,
        state: &mut sync::State,
    ) -> Result<Absorbed, String> {
        self.last_heard.insert(peer.clone(), self.repo.now());
        let everyone_told = message.everyone_told;
        let (am, batch) = unpack(message)?;
        if !am.heads.is_empty() && self.is_member(flow, peer) {
            self.holders
                .entry(flow.to_string())
                .or_default()
                .insert(peer.clone());
        }
        if !batch.is_empty() {
            let held = matches!(self.repo.holds(flow), Ok(true));
            let received = if held || self.joining.contains_key(flow) {
                self.repo.receive(flow, &batch).map(|out| (out, None))
            } else {
                self.repo
                    .receive_offer(flow, &batch, peer.as_str())
                    .map(|(out, fate)| (out, Some(fate)))
            };
            let (out, fate) = match received {
                Ok(received) => received,
                Err(e) => {
                    // A local storage failure is not the peer's fault; anti-entropy retries.
                    tracing::error!(target: "sync", %flow, "cannot store received changes: {e}");
                    return Ok(Absorbed::Synced);
                }
            };
            tracing::debug!(target: "sync", %peer, %flow, accepted = out.accepted.len(), pending = out.pending.len(), rejected = out.rejected.len(), known = out.known, "received changes");
            self.stats.changes_accepted += out.accepted.len() as u64;
            let hashes = out.accepted.iter().map(|c| c.hash().to_string());
            if self.repo.store().in_group() {
                self.uncommitted.extend(hashes);
            } else {
                self.arrived(hashes.collect());
            }
            self.stats.changes_rejected += out.rejected.len() as u64;
            match fate {
                None | Some(Offered::NotMember) => {}
                Some(fate) => {
                    if fate == Offered::Kept {
                        tracing::info!(target: "sync", %peer, %flow, "a flow was offered to this node");
                        self.io.push_back(Io::Event(Event::Offered {
                            flow: flow.to_string(),
                            from: peer.clone(),
                        }));
                    }
                    blame(peer, &out.rejected)?;
                    return Ok(Absorbed::Offer);
                }
            }
            if !out.accepted.is_empty() {
                self.io.push_back(Io::Event(Event::FlowUpdated {
                    flow: flow.to_string(),
                    from: peer.clone(),
                }));
                self.finish_join(flow);
                self.topic(flow);
                // Pass on the announcements these changes complete. News no announcement named
                // (pushed by its author, or carried over from a partition or an offline edit)
                // is announced by this node, so it spreads by gossip rather than by waiting
                // for anti-entropy.
                if !self.settle_waiting(flow) && !everyone_told {
                    self.announce(flow);
                }
            }
            blame(peer, &out.rejected)?;
            if !out.rejected.is_empty() {
                // Remembered with their dependencies (the batch parsed once, not per change).
                let deps: HashMap<ChangeHash, Vec<ChangeHash>> = batch
                    .iter()
                    .filter_map(|c| crate::auth::parse_change(&c.bytes).ok())
                    .map(|c| (c.hash(), c.deps().to_vec()))
                    .collect();
                for (hash, why) in &out.rejected {
                    tracing::warn!(target: "sync", %peer, %flow, change = ?hash, "refused a change without blaming its sender: {why}");
                    if let Some((h, d)) = hash.and_then(|h| deps.get(&h).map(|d| (h, d))) {
                        if self.refused.len() >= MAX_REFUSED {
                            self.refused.clear();
                        }
                        self.refused.insert(h, d.clone());
                    }
                }
            }
        }
        // The message carries no changes: this only updates the sync state.
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
        if let Some(theirs) = state.their_heads.as_mut() {
            unrefused(theirs, &self.refused);
        }
        result
            .map(|()| Absorbed::Synced)
            .map_err(|e| format!("bad sync message: {e}"))
    }

    /// What [`Engine::absorb`] does with a message about a flow this node does not hold, for a
    /// message from a non-member about a flow it does hold: the changes are verified and judged
    /// as if nothing of the flow were held (so what depends on the flow's history waits, and is
    /// dropped), nothing is stored, and the sync state is an empty document's. An `Err` is a
    /// reason to penalize the sender, as it would be for an unknown flow.
    fn absorb_as_stranger(
        &mut self,
        peer: &NodeId,
        flow: &str,
        message: SyncMessage,
    ) -> Result<(), String> {
        self.last_heard.insert(peer.clone(), self.repo.now());
        let (am, batch) = unpack(message)?;
        if !batch.is_empty() {
            let out = crate::auth::accept(&mut Automerge::new(), flow, &batch, || {
                Ok::<_, std::convert::Infallible>(Automerge::new())
            })
            .unwrap_or_else(|never| match never {});
            self.stats.changes_rejected += out.rejected.len() as u64;
            blame(peer, &out.rejected)?;
        }
        match guarded(|| Automerge::new().receive_sync_message(&mut sync::State::new(), am)) {
            None => Err("a sync message that crashes the sync state machine".into()),
            Some(r) => r.map_err(|e| format!("bad sync message: {e}")),
        }
    }

    /// The runtime caught `peer` misbehaving below the protocol (flooding, unreadable bytes).
    pub fn penalize_peer(&mut self, peer: &NodeId, reason: String) {
        self.penalize(peer, reason);
    }

    fn penalize(&mut self, peer: &NodeId, reason: String) {
        tracing::warn!(target: "sync", %peer, "penalizing peer: {reason}");
        self.clients.retain(|(p, _), _| p != peer);
        self.servers.retain(|(p, _), _| p != peer);
        self.pulls_from_ended(peer);
        self.io.push_back(Io::Penalize {
            peer: peer.clone(),
            reason,
        });
    }

    /// Accepts a flow offered to this node (`coflow flow accept`): from now on it syncs with its
    /// connected members like any held flow (the runtime then refreshes its member links and
    /// topics). Returns the flow's id.
    pub fn accept(&mut self, prefix: &str) -> Result<String> {
        let flow = self.repo.accept(prefix)?;
        self.topic(&flow);
        let me = self.me.clone();
        let connected: Vec<NodeId> = self
            .member_ids(&flow)
            .into_iter()
            .filter(|m| *m != me && self.connected.contains_key(m))
            .collect();
        for peer in connected {
            self.sync_with(&peer, &flow);
        }
        Ok(flow)
    }

    /// Declines a flow offered to this node (`coflow flow decline`). Returns the flow's id.
    pub fn decline(&mut self, prefix: &str) -> Result<String> {
        let flow = self.repo.decline(prefix)?;
        self.clients.retain(|(_, f), _| *f != flow);
        self.servers.retain(|(_, f), _| *f != flow);
        Ok(flow)
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
        let (flow, invite) = (
            unhex(&ticket.flow).unwrap_or_default(),
            unhex(&ticket.invite).unwrap_or_default(),
        );
        // The secret never leaves this node: the request carries a proof that admits only us.
        let proof = InviteKey::from_secret(&ticket.secret).prove(&flow, &invite, &self.me);
        let request = JoinRequest {
            flow,
            invite,
            proof: proof.to_vec(),
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

    /// A peer asks to redeem an invite: check its proof and admit the peer. Until the proof
    /// verifies, every refusal is the same bytes (see [`RedeemError::Unknown`]): a flow not held
    /// here, one this node is not a member of, an unknown invite and a bad proof look alike.
    pub fn handle_join_request(&mut self, peer: &NodeId, request: JoinRequest) -> JoinResponse {
        let refuse = |why: &RedeemError| JoinResponse {
            result: Some(join_response::Result::Refused(why.to_string())),
        };
        let Some(flow) = flow_id(&request.flow) else {
            return refuse(&RedeemError::Unknown);
        };
        let name: String = request.name.chars().take(64).collect();
        match self
            .repo
            .redeem(&flow, &hex(&request.invite), &request.proof, peer, &name)
        {
            Ok(_) => {
                self.local_change(&flow);
                JoinResponse {
                    result: Some(join_response::Result::Joined(true)),
                }
            }
            Err(RedeemError::Failed(e)) => {
                tracing::warn!(target: "sync", %flow, "cannot admit {peer}: {e}");
                JoinResponse {
                    result: Some(join_response::Result::Refused(
                        "the member node could not record the join".into(),
                    )),
                }
            }
            Err(why) => refuse(&why),
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

/// The changes a peer lacks, oldest first, when every head it last told us of is held here (so
/// its history is exactly those heads' ancestry), leaving out those already sent in this
/// session; empty otherwise (Automerge's sync then works out what to send from the peer's
/// summary of what it has).
fn lacking_changes(doc: &Automerge, state: &sync::State) -> Vec<ChangeHash> {
    let Some(theirs) = &state.their_heads else {
        return Vec::new();
    };
    if !theirs
        .iter()
        .all(|h| doc.get_change_meta_by_hash(h).is_some())
    {
        return Vec::new();
    }
    doc.get_changes_meta(theirs)
        .into_iter()
        .map(|m| m.hash)
        .filter(|h| !state.sent_hashes.contains(h))
        .collect()
}

/// A sync message carrying the first of `lacking` (oldest first) that fit in one message, read
/// with their signatures from the store; they are recorded as sent, so the next message goes on
/// from there.
fn from_store(
    repo: &Repo,
    flow: &str,
    message: sync::Message,
    lacking: &[ChangeHash],
    state: &mut sync::State,
) -> Result<SyncMessage> {
    let mut changes = Vec::new();
    let mut size = 0usize;
    for hash in lacking {
        let Some(signed) = repo.signed_change(flow, hash)? else {
            continue;
        };
        if !fits(size, signed.bytes.len(), changes.len()) {
            break;
        }
        size += signed.bytes.len() + signed.signature.len();
        state.sent_hashes.insert(*hash);
        changes.push(wire::SignedChange {
            change: signed.bytes,
            signature: signed.signature,
        });
    }
    Ok(carrying(flow, message, changes))
}

/// Moves the changes out of an Automerge sync message, pairs each with its stored signature,
/// and caps the message's size; changes left out are forgotten by the sync state so they go in
/// a later message.
fn to_wire(
    repo: &Repo,
    flow: &str,
    message: sync::Message,
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
            let full = !fits(size, bytes.len(), changes.len());
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
    Ok(carrying(flow, message, changes))
}

/// Whether a change of `bytes` bytes still fits in a message holding `count` changes of `size`
/// bytes (half the message cap: headroom for the heads, bloom filter and framing).
fn fits(size: usize, bytes: usize, count: usize) -> bool {
    size + bytes + 100 <= wire::MAX_SYNC_MESSAGE / 2 && count < wire::MAX_CHANGES_PER_MESSAGE
}

/// Our wire message: Automerge's sync message with its change list emptied, and `changes`
/// (each with its signature) beside it.
fn carrying(
    flow: &str,
    mut message: sync::Message,
    changes: Vec<wire::SignedChange>,
) -> SyncMessage {
    message.changes = sync::ChunkList::empty();
    SyncMessage {
        flow: unhex(flow).unwrap_or_default(),
        automerge: message.encode(),
        changes,
        session: 0,
        everyone_told: false,
    }
}

/// A received sync message checked and taken apart: Automerge's message (which must carry no
/// changes of its own: every change travels with its signature) and the signed changes, at
/// most [`wire::MAX_CHANGES_PER_MESSAGE`]. An `Err` is a reason to penalize the sender.
fn unpack(message: SyncMessage) -> std::result::Result<(sync::Message, Vec<SignedChange>), String> {
    let am = decode_sync_message(&message.automerge)?;
    if !am.changes.is_empty() {
        return Err("changes must travel with their signatures".into());
    }
    if message.changes.len() > wire::MAX_CHANGES_PER_MESSAGE {
        return Err("too many changes in one message".into());
    }
    Ok((am, message.changes.into_iter().map(Into::into).collect()))
}

/// Penalize only what proves `sender` malicious (see [`crate::auth::Rejection::proves_malice`]):
/// an honest relay may well pass on the other version of an equivocating member's change.
fn blame(
    sender: &NodeId,
    rejected: &[(Option<ChangeHash>, crate::auth::Rejection)],
) -> std::result::Result<(), String> {
    match rejected.iter().find(|(_, r)| r.proves_malice(sender)) {
        Some((_, why)) => Err(format!("sent a change that was rejected: {why}")),
        None => Ok(()),
    }
}

/// Replaces every refused change among `heads` by its dependencies (transitively), keeping
/// the list free of repeats.
fn unrefused(heads: &mut Vec<ChangeHash>, refused: &HashMap<ChangeHash, Vec<ChangeHash>>) {
    if !heads.iter().any(|h| refused.contains_key(h)) {
        return;
    }
    let mut out: Vec<ChangeHash> = Vec::new();
    let mut todo = std::mem::take(heads);
    let mut seen = HashSet::new();
    while let Some(h) = todo.pop() {
        if !seen.insert(h) {
            continue;
        }
        match refused.get(&h) {
            Some(deps) => todo.extend(deps.iter().copied()),
            None => out.push(h),
        }
    }
    out.sort();
    *heads = out;
}

fn sorted(mut heads: Vec<automerge::ChangeHash>) -> Vec<automerge::ChangeHash> {
    heads.sort();
    heads
}
