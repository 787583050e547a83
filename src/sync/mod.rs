//! The sans-IO sync engine.
//!
//! Inputs arrive as method calls (a peer connected, a request or response arrived, a local change
//! was made, time passed); outputs are queued as [`Io`] and drained with [`Engine::next_io`] by
//! whoever does the real I/O: the libp2p runtime in `node`, or a simulator in tests. The engine
//! never touches a socket or a clock of its own: time is an input too ([`Engine::set_now`] at the
//! start of every turn; [`Engine::tick`] and [`Engine::peer_connected`] also carry it), and
//! [`Engine::next_wake`] tells the caller when a tick next has work. Nothing here reads the wall
//! clock or the environment, or spawns a thread (the accept path's batch signature check runs on
//! a scoped thread of `auth`: it joins before the call returns, so no input is handled
//! concurrently and nothing depends on scheduling).
//!
//! Per (peer, flow) it runs the Automerge sync protocol. Changes never travel inside Automerge's
//! own sync messages: they are moved out and paired with their signatures, and received ones go
//! through [`Repo::receive`] — verify → authorize → apply → persist — before the sync state sees
//! the rest of the message. Content goes only to current members of a flow.
//!
//! One module per part of the engine, each an `impl Engine` block over the state it keeps in
//! [`Engine`]: [`outbox`] (what goes out), `conversation` (sync sessions and answers), `absorb`
//! (taking in a message), `message` (wire messages), `push`, `gossip`, `pull`, `links`,
//! `anti_entropy`, `join`, [`stats`].

use std::collections::VecDeque;

/// The hasher of the engine's maps and sets. Built with `testkit`, it has fixed keys, so the
/// simulator's runs iterate them, and so send messages, in the same order every time (a run is
/// reproducible from its seed); a node's build keeps Rust's randomly keyed hasher, so no peer
/// can choose keys that collide.
#[cfg(feature = "testkit")]
type Keys = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
#[cfg(not(feature = "testkit"))]
type Keys = std::collections::hash_map::RandomState;
type HashMap<K, V> = std::collections::HashMap<K, V, Keys>;
type HashSet<T> = std::collections::HashSet<T, Keys>;

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, Change, ChangeHash};

use crate::auth::SignedChange;
use crate::error::{Error, Result};
use crate::flow::FlowId;
use crate::identity::{hex, InviteKey, NodeId};
use crate::repo::{Offered, RedeemError, Repo};
use crate::store::{Storage, Store};
use crate::wire::{self, join_response, sync_response, JoinRequest, JoinResponse, SyncMessage};

mod absorb;
mod anti_entropy;
mod conversation;
mod gossip;
mod join;
mod links;
mod message;
pub mod outbox;
mod pull;
mod push;
pub mod stats;
#[cfg(test)]
mod tests;

use absorb::Absorbed;
use conversation::Conversation;
use gossip::Waiting;
use join::Joining;
use message::*;

#[cfg(any(test, feature = "testkit"))]
pub use anti_entropy::{ANTI_ENTROPY_FLOWS_PER_TICK, ANTI_ENTROPY_MS, ANTI_ENTROPY_PEERS, RECHECK_MS};
pub use gossip::ANNOUNCE_PATIENCE_MS;
#[cfg(any(test, feature = "testkit"))]
pub use gossip::MAX_WAITING_ANNOUNCEMENTS;
#[cfg(any(test, feature = "testkit"))]
pub use join::JOIN_PATIENCE_MS;
#[cfg(any(test, feature = "testkit"))]
pub use links::{DELIVERERS, MIN_MEMBER_LINKS};
#[cfg(feature = "testkit")]
pub use message::decode_sync_message;
use outbox::Outbox;
pub use outbox::{Event, Io, Verdict};
#[cfg(any(test, feature = "testkit"))]
pub use pull::MAX_QUEUED_HEADS;
#[cfg(any(test, feature = "testkit"))]
pub use push::PUSH_TO_ALL_MAX;
pub use stats::{Arrival, MemberSync, Stats, MAX_ARRIVALS};

pub struct Engine<S: Storage = Store> {
    repo: Repo<S>,
    me: NodeId,
    /// The caller's monotonic clock, in ms: the node's is the time since it started, plus one
    /// (so 0 means "not yet"); a simulator's is virtual. Durations are measured in it: join and
    /// announcement patience, quiet conversations (anti-entropy), connection times.
    now: u64,
    /// The wall clock, in ms since the Unix epoch, as the caller last gave it
    /// ([`Engine::set_now`]; 0 until then): arrivals are stamped with it, a peer's last message
    /// is dated with it, and the repository is handed it (in seconds) as the time of what it
    /// does for the engine (changes received, invites redeemed).
    unix_ms: i64,
    connected: HashMap<NodeId, u64>,
    last_heard: HashMap<NodeId, i64>,
    clients: HashMap<(NodeId, FlowId), Conversation>,
    servers: HashMap<(NodeId, FlowId), Conversation>,
    joining: HashMap<FlowId, Joining>,
    out: Outbox,
    /// Gossip topic ↔ flow, for the flows held here.
    topics: HashMap<String, FlowId>,
    topic_of: HashMap<FlowId, String>,
    /// Announcements held back until their changes arrive.
    waiting: VecDeque<Waiting>,
    /// Per flow, the members known to hold it (they sent its heads in a sync message, or
    /// announced changes of it).
    holders: HashMap<FlowId, HashSet<NodeId>>,
    /// Per flow, the connected peers seen subscribed to its topic (gossip reaches them).
    subscribers: HashMap<FlowId, HashSet<NodeId>>,
    /// Node ids parsed from member lists (parsing decodes a curve point).
    parsed: HashMap<String, Option<NodeId>>,
    /// Per flow, the peer this node is fetching announced heads from (one at a time, so the
    /// same changes do not arrive over many conversations at once), and the announcements
    /// queued behind it: who announced which heads.
    pulling: HashMap<FlowId, NodeId>,
    queued: HashMap<FlowId, Vec<(NodeId, Vec<ChangeHash>)>>,
    /// Changes accepted since the last [`Engine::commit`], to be stamped as arrivals then.
    uncommitted: Vec<String>,
    /// Flows whose latest local change was pushed to every other member (see
    /// [`Engine::local_change`]); messages about them say so, and receivers do not announce.
    told_all: HashSet<FlowId>,
    /// Changes refused without blaming their sender (the other version of an equivocation,
    /// and what builds on it), with their dependencies: a peer's heads naming one are read as
    /// its dependencies, so it is not asked for again (two honest nodes holding different
    /// versions would otherwise ask each other for them forever).
    refused: HashMap<ChangeHash, Vec<ChangeHash>>,
    /// Flows whose members, holders or connected members changed since the runtime last asked
    /// ([`Engine::take_changed`]): its member links, topics and DHT records follow them.
    changed: HashSet<FlowId>,
    /// When anti-entropy looks at which flows (see [`anti_entropy`]).
    schedule: anti_entropy::Schedule,
    /// (peer, flow) whose last answer to us was "not served here" (for `flow show`; at most
    /// [`MAX_UNSERVED`], then started afresh).
    unserved: HashSet<(NodeId, FlowId)>,
    pub stats: Stats,
}

/// How many (peer, flow) "not served here" answers [`Engine`] remembers before it starts afresh.
const MAX_UNSERVED: usize = 4096;

/// How many refused changes [`Engine`] remembers before it starts afresh.
const MAX_REFUSED: usize = 4096;

impl<S: Storage> Engine<S> {
    pub fn new(repo: Repo<S>) -> Engine<S> {
        let me = *repo.identity().node_id();
        Engine {
            repo,
            me,
            now: 0,
            unix_ms: 0,
            connected: HashMap::default(),
            last_heard: HashMap::default(),
            clients: HashMap::default(),
            servers: HashMap::default(),
            joining: HashMap::default(),
            out: Outbox::default(),
            topics: HashMap::default(),
            topic_of: HashMap::default(),
            waiting: VecDeque::new(),
            holders: HashMap::default(),
            subscribers: HashMap::default(),
            parsed: HashMap::default(),
            pulling: HashMap::default(),
            queued: HashMap::default(),
            uncommitted: Vec::new(),
            told_all: HashSet::default(),
            refused: HashMap::default(),
            unserved: HashSet::default(),
            schedule: anti_entropy::Schedule::default(),
            changed: HashSet::default(),
            stats: Stats::default(),
        }
    }

    /// The time, given by the caller at the start of every turn: `now_ms` on its monotonic
    /// clock (see [`Engine::tick`]), `unix_ms` on the wall clock (ms since the Unix epoch).
    /// Everything the engine does until the next call happens at this time, and so does what
    /// the repository does on its behalf ([`Repo::set_now`]).
    pub fn set_now(&mut self, now_ms: u64, unix_ms: i64) {
        self.now = now_ms;
        self.unix_ms = unix_ms;
        self.repo.set_now(Some(unix_ms.div_euclid(1000)));
    }

    /// The wall-clock time last given, in seconds since the Unix epoch.
    fn unix_secs(&self) -> i64 {
        self.unix_ms.div_euclid(1000)
    }

    /// Records changes as arrived (durable) now.
    fn arrived(&mut self, hashes: Vec<String>) {
        let at_ms = self.unix_ms;
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
                self.out.clear();
                self.clients.clear();
                self.servers.clear();
                self.waiting.clear();
                self.pulling.clear();
                self.queued.clear();
                // Every conversation starts again: anti-entropy looks at every flow.
                for flow in self.repo.flow_ids().unwrap_or_default() {
                    self.touch(&flow);
                }
            }
        }
        result
    }

    pub fn repo(&mut self) -> &mut Repo<S> {
        &mut self.repo
    }

    pub fn node_id(&self) -> &NodeId {
        &self.me
    }

    /// The flows whose members, holders or connected members changed since the last call: the
    /// runtime refreshes member links, topics and DHT records for them (and sweeps every flow
    /// now and then).
    pub fn take_changed(&mut self) -> Vec<FlowId> {
        self.changed.drain().collect()
    }

    /// The next thing to do, if any.
    pub fn next_io(&mut self) -> Option<Io> {
        self.out.next()
    }

    /// Flows whose current members include `peer`.
    fn shared_flows(&mut self, peer: &NodeId) -> Vec<FlowId> {
        let Ok(ids) = self.repo.flow_ids() else {
            return Vec::new();
        };
        ids.into_iter()
            .filter(|f| self.is_member(f, peer))
            .collect()
    }

    fn holds(&mut self, flow: &FlowId) -> bool {
        matches!(self.repo.holds(flow), Ok(true))
    }

    fn is_member(&mut self, flow: &FlowId, peer: &NodeId) -> bool {
        matches!(self.repo.role_of(flow, peer.as_str()), Ok(Some(_)))
    }

    pub fn peer_connected(&mut self, peer: NodeId, now: u64) {
        self.now = now;
        self.connected.insert(peer, now);
        for flow in self.shared_flows(&peer) {
            self.changed.insert(flow);
            self.sync_with(&peer, &flow);
        }
    }

    pub fn peer_disconnected(&mut self, peer: &NodeId) {
        self.connected.remove(peer);
        // The flows talked about with it (every flow shared with it, from its connection on).
        let talked = self.clients.keys().chain(self.servers.keys());
        let shared: Vec<FlowId> = talked
            .filter(|(p, _)| p == peer)
            .map(|(_, f)| *f)
            .collect();
        self.changed.extend(shared);
        self.clients.retain(|(p, _), _| p != peer);
        self.servers.retain(|(p, _), _| p != peer);
        for s in self.subscribers.values_mut() {
            s.remove(peer);
        }
        self.pulls_from_ended(peer);
    }

    /// The node ids of the flow's current members (this node's included, if it is one).
    fn member_ids(&mut self, flow: &FlowId) -> Vec<NodeId> {
        let names = self.repo.members(flow).unwrap_or_default();
        names
            .into_iter()
            .filter_map(|(n, _)| {
                *self.parsed
                    .entry(n)
                    .or_insert_with_key(|n| n.parse().ok())
            })
            .collect()
    }

    /// The flow's heads, sorted (from its summary: no document is loaded for it).
    fn heads(&mut self, flow: &FlowId) -> Vec<automerge::ChangeHash> {
        match self.repo.summary(flow) {
            Ok(Some(s)) => s.change_hashes().to_vec(),
            _ => Vec::new(),
        }
    }

    /// Accepts a flow offered to this node (`coflow flow accept`): from now on it syncs with its
    /// connected members like any held flow (the runtime then refreshes its member links and
    /// topics). Returns the flow's id.
    pub fn accept(&mut self, prefix: &str) -> Result<FlowId> {
        let flow = self.repo.accept(prefix)?;
        self.topic(&flow);
        self.touch(&flow);
        self.changed.insert(flow);
        let me = self.me;
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
    pub fn decline(&mut self, prefix: &str) -> Result<FlowId> {
        let flow = self.repo.decline(prefix)?;
        self.changed.insert(flow);
        self.clients.retain(|(_, f), _| *f != flow);
        self.servers.retain(|(_, f), _| *f != flow);
        Ok(flow)
    }

    /// Per member of `flow`: connected, in sync, last heard.
    pub fn member_sync(&mut self, flow: &FlowId) -> Vec<MemberSync> {
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
                let key = node.as_ref().map(|p| (*p, *flow));
                // What either conversation last heard of the peer's heads: a peer never loses
                // changes, so heads it once held equal to ours mean it holds all we hold, even
                // if a request it sent before that arrived later.
                let heard: Vec<Vec<automerge::ChangeHash>> = key
                    .as_ref()
                    .map(|k| [self.clients.get(k), self.servers.get(k)])
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|s| s.state.their_heads.as_ref().map(|t| sorted(t.clone())))
                    .collect();
                let in_sync = (!heard.is_empty()).then(|| heard.contains(&heads));
                MemberSync {
                    connected: node
                        .as_ref()
                        .is_some_and(|p| self.connected.contains_key(p)),
                    last_heard: node.as_ref().and_then(|p| self.last_heard.get(p).copied()),
                    not_serving: key.as_ref().is_some_and(|k| self.unserved.contains(k)),
                    node_id: n,
                    in_sync,
                    // The runtime knows the connections: it fills this in.
                    link: crate::api::Link::Absent,
                }
            })
            .collect()
    }
}
