//! A deterministic network simulator that runs real engines: the tests' and the benchmark's one
//! network (built with the `testkit` feature only).
//!
//! Every node is a real [`Engine`] over its own in-memory store. Messages travel as they would
//! on the wire (protobuf, counted in bytes per node) and arrive after a latency drawn from a
//! seeded generator, so a run is the same every time for the same seed. Virtual time, in
//! milliseconds, advances to each delivery; [`Net::run_for`] also ticks every node once per
//! [`TICK_MS`] and dials the members the engines ask for, as the runtime does.
//!
//! The model, and what it leaves out:
//! - **Connections** are explicit ([`Net::connect`]); a node's `Io::Dial` and its member links
//!   ([`Engine::reach_plan`]) connect it to the peer after one latency, unless a partition
//!   separates them. Every node can reach every other (no NAT, no DHT lookups).
//! - **Request-response**: a request is answered on arrival; the answer travels back. A lost
//!   request or answer is reported to the requester as failed after [`Config::timeout_ms`].
//! - **Loss and duplication** per message, in percent. A duplicated request is handled twice
//!   (the second answer is not sent back); a duplicated answer is delivered twice.
//! - **Partitions** ([`Net::partition`]) cut links: connections across them close and messages
//!   in flight across them are lost.
//! - **Gossip** as gossipsub does it for one topic per flow: each node subscribes to the topics
//!   of the flows it is a member of, and tells connected peers; it keeps a mesh of up to
//!   [`Config::mesh`] connected subscribers per topic; a publish goes to every connected
//!   subscriber (flood publishing); a message passed by the engine's validation
//!   (`Verdict::Accept`) is forwarded to the node's mesh peers but the one it came from and its
//!   source. Copies of a message a peer has already seen still cost their bytes and are
//!   dropped there. Not modelled: IHAVE/IWANT gossip, peer scores, mesh maintenance after
//!   heartbeats, topics relayed by non-members.
//! - **Offers**: with [`Config::accept_offers`], a node's user accepts a flow offered to it at
//!   once (`coflow flow accept`).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use crate::flow::FlowId;
use crate::identity::{Identity, NodeId};
use crate::repo::Repo;
use crate::store::{MemStore, Storage};
use crate::sync::{Engine, Event, Io, Verdict};
use crate::wire;

/// How often [`Net::run_for`] ticks every node, as the node runtime does.
pub const TICK_MS: u64 = 1_000;

/// How often [`Net::tick_all`] has every node work out its member links afresh, as the node
/// runtime does ([`crate::node::SWEEP`]).
pub const SWEEP_MS: u64 = 10_000;
const _: () = assert!(SWEEP_MS == crate::node::SWEEP.as_millis() as u64);

/// What gossipsub adds to a signed message beyond its payload and topic: the author's peer id,
/// a sequence number and a signature (protobuf framing not counted).
pub const GOSSIP_OVERHEAD: usize = 38 + 8 + 64;

/// The network's behaviour.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seeds every random choice (latency, loss, duplication).
    pub seed: u64,
    /// One-way latency of a message, drawn uniformly from this range (ms).
    pub latency_ms: (u64, u64),
    /// Percent of messages lost.
    pub drop_percent: u64,
    /// Percent of messages delivered twice.
    pub dup_percent: u64,
    /// After how long a request with no answer is reported failed (ms).
    pub timeout_ms: u64,
    /// Gossip mesh degree per topic (gossipsub's D).
    pub mesh: usize,
    /// Whether users accept offered flows at once.
    pub accept_offers: bool,
    /// The wall-clock time (Unix ms) at virtual time 0, given to every engine with each input
    /// (`Engine::set_now`); `None`: the sim gives none, and repositories keep their own clocks.
    pub unix_ms: Option<i64>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            seed: 1,
            latency_ms: (1, 50),
            drop_percent: 0,
            dup_percent: 0,
            timeout_ms: 10_000,
            mesh: 6,
            accept_offers: true,
            // 2026-12-01T00:00:00Z
            unix_ms: Some(1_764_547_200_000),
        }
    }
}

impl Config {
    /// No latency, no loss: messages arrive in the order they were sent; the engines' stores
    /// keep their own clocks.
    pub fn instant() -> Config {
        Config {
            latency_ms: (0, 0),
            unix_ms: None,
            ..Config::default()
        }
    }
}

/// Messages and bytes one node sent and received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
}

enum Msg {
    Request {
        flow: FlowId,
        request: wire::SyncRequest,
    },
    Response {
        flow: FlowId,
        response: wire::SyncResponse,
    },
    JoinRequest {
        flow: FlowId,
        request: wire::JoinRequest,
    },
    JoinResponse {
        flow: FlowId,
        response: wire::JoinResponse,
    },
    /// Gossip message `id` (an index into [`Net::gossip`]).
    Gossip { id: u64 },
    /// The request `from` sent `to` about `flow` got no answer in time.
    Failed { flow: FlowId, join: bool },
    /// A dial from `from` reaches `to`.
    Dial,
}

struct Packet {
    from: usize,
    to: usize,
    msg: Msg,
}

struct GossipMsg {
    source: usize,
    topic: String,
    data: Vec<u8>,
}

/// A change whose spread is measured: when it was made, and when each node held it.
struct Tracked {
    flow: FlowId,
    hash: automerge::ChangeHash,
    made_at: u64,
    arrived: Vec<Option<u64>>,
}

/// The simulated network.
pub struct Net<S: Storage = MemStore> {
    pub nodes: Vec<Engine<S>>,
    pub ids: Vec<NodeId>,
    pub cfg: Config,
    /// Virtual time (ms).
    pub now: u64,
    pub traffic: Vec<Traffic>,
    /// Who was penalized (its index) and why.
    pub penalties: Vec<(usize, String)>,
    /// Events the engines reported, with the node that reported them.
    pub events: Vec<(usize, Event)>,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// Gossip messages handed to an engine.
    pub announcements: u64,
    index: HashMap<NodeId, usize>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    packets: HashMap<u64, Packet>,
    sent: u64,
    rng: u64,
    next_tick: u64,
    next_sweep: u64,
    /// Connected pairs, as (smaller index, larger index).
    links: HashSet<(usize, usize)>,
    peers: Vec<Vec<usize>>,
    /// Pairs a partition separates.
    cut: HashSet<(usize, usize)>,
    subscribed: Vec<BTreeSet<String>>,
    mesh: HashMap<(usize, String), Vec<usize>>,
    gossip: Vec<GossipMsg>,
    seen: HashSet<(usize, u64)>,
    tracked: Vec<Tracked>,
}

mod deliver;
pub mod scenario;

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Net {
    /// `n` nodes named "Node i", with keys from the seeds `sim-node-i`, each on an in-memory
    /// store.
    pub fn new(n: usize, cfg: Config) -> Net {
        // Ids and incarnations from the seed: the same changes, sizes and hashes every run.
        crate::identity::seed_random(Some(cfg.seed));
        let engines = (0..n)
            .map(|i| {
                let id = Identity::from_seed(&format!("sim-node-{i}"), &format!("Node {i}"));
                Engine::new(Repo::new(MemStore::new(), id))
            })
            .collect();
        Net::with_engines(engines, cfg)
    }
}

impl<S: Storage> Net<S> {
    /// A network of the given engines (on any store: the benchmark's are on disk).
    pub fn with_engines(nodes: Vec<Engine<S>>, cfg: Config) -> Net<S> {
        let ids: Vec<NodeId> = nodes.iter().map(|e| *e.node_id()).collect();
        let n = nodes.len();
        Net {
            index: ids.iter().cloned().zip(0..).collect(),
            nodes,
            ids,
            rng: cfg.seed | 1,
            cfg,
            now: 1,
            traffic: vec![Traffic::default(); n],
            penalties: Vec::new(),
            events: Vec::new(),
            delivered: 0,
            dropped: 0,
            duplicated: 0,
            announcements: 0,
            queue: BinaryHeap::new(),
            packets: HashMap::new(),
            sent: 0,
            next_tick: 1 + TICK_MS,
            next_sweep: 0,
            links: HashSet::new(),
            peers: vec![Vec::new(); n],
            cut: HashSet::new(),
            subscribed: vec![BTreeSet::new(); n],
            mesh: HashMap::new(),
            gossip: Vec::new(),
            seen: HashSet::new(),
            tracked: Vec::new(),
        }
    }

    /// The next number of the seeded generator (xorshift).
    pub fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    pub fn index(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Gives `node`'s engine the time, as a runtime does at the start of each turn.
    pub fn clock(&mut self, node: usize) {
        if let Some(start) = self.cfg.unix_ms {
            let unix = start + self.now as i64;
            self.nodes[node].set_now(self.now, unix);
        }
    }

    /// How many connections are open.
    pub fn links(&self) -> usize {
        self.links.len()
    }

    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.links.contains(&pair(a, b))
    }

    /// The nodes `node` is connected to.
    pub fn peers_of(&self, node: usize) -> &[usize] {
        &self.peers[node]
    }

    fn latency(&mut self) -> u64 {
        let (lo, hi) = self.cfg.latency_ms;
        if hi <= lo {
            lo
        } else {
            lo + self.rand() % (hi - lo + 1)
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        percent > 0 && self.rand() % 100 < percent
    }

    fn schedule(&mut self, at: u64, packet: Packet) {
        self.sent += 1;
        self.packets.insert(self.sent, packet);
        self.queue.push(Reverse((at, self.sent)));
    }

    /// Connects two nodes now (both engines are told, and learn each other's topics).
    pub fn connect(&mut self, a: usize, b: usize) {
        if a == b || !self.links.insert(pair(a, b)) {
            return;
        }
        self.peers[a].push(b);
        self.peers[b].push(a);
        let (ia, ib) = (self.ids[a], self.ids[b]);
        self.clock(a);
        self.clock(b);
        self.nodes[a].peer_connected(ib, self.now);
        self.nodes[b].peer_connected(ia, self.now);
        for (x, y) in [(a, b), (b, a)] {
            let topics: Vec<String> = self.subscribed[x].iter().cloned().collect();
            for topic in topics {
                self.tell_subscribed(x, y, &topic);
            }
        }
        self.collect_from(a);
        self.collect_from(b);
    }

    /// Connects every pair of nodes.
    pub fn connect_all(&mut self) {
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                self.connect(a, b);
            }
        }
        self.collect();
    }

    /// Connects each node to `k` others chosen at random (and to the next one, so the graph
    /// is connected).
    pub fn connect_random(&mut self, k: usize) {
        let n = self.nodes.len();
        for a in 0..n {
            if n > 1 {
                self.connect(a, (a + 1) % n);
            }
            for _ in 0..k {
                let b = (self.rand() % n as u64) as usize;
                self.connect(a, b);
            }
        }
        self.collect();
    }

    pub fn disconnect(&mut self, a: usize, b: usize) {
        if !self.links.remove(&pair(a, b)) {
            return;
        }
        self.peers[a].retain(|p| *p != b);
        self.peers[b].retain(|p| *p != a);
        for (x, y) in [(a, b), (b, a)] {
            let id = self.ids[y];
            self.nodes[x].peer_disconnected(&id);
            for m in self.mesh.iter_mut().filter(|((o, _), _)| *o == x) {
                m.1.retain(|p| *p != y);
            }
        }
    }

    /// Separates `side` from every other node until [`Net::heal`].
    pub fn partition(&mut self, side: &[usize]) {
        let side: HashSet<usize> = side.iter().copied().collect();
        for a in side.iter().copied() {
            for b in (0..self.nodes.len()).filter(|b| !side.contains(b)) {
                self.cut.insert(pair(a, b));
                self.disconnect(a, b);
            }
        }
    }

    /// Lifts every partition (nodes reconnect when they dial).
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// `from` dials `to`: connected after one latency, unless a partition separates them.
    pub fn dial(&mut self, from: usize, to: usize) {
        if from == to || self.connected(from, to) || self.cut.contains(&pair(from, to)) {
            return;
        }
        let at = self.now + self.latency();
        self.schedule(
            at,
            Packet {
                from,
                to,
                msg: Msg::Dial,
            },
        );
    }

    /// Delivers until nothing is in flight (no ticks); panics after `max_steps` deliveries (a
    /// conversation that never rests).
    pub fn drain_within(&mut self, max_steps: u64) -> u64 {
        let mut steps = 0;
        while self.step() {
            steps += 1;
            assert!(steps < max_steps, "a conversation that never rests");
        }
        steps
    }

    /// Ticks every node at `now` (anti-entropy, expiries), and dials the members each asks to
    /// be connected to, as the runtime does on its tick: when the flows' members, holders or
    /// connections changed, and on every flow each [`SWEEP_MS`].
    pub fn tick_all(&mut self) {
        let sweep = self.now >= self.next_sweep;
        if sweep {
            self.next_sweep = self.now + SWEEP_MS;
        }
        for node in 0..self.nodes.len() {
            self.clock(node);
            self.nodes[node].tick(self.now);
            if self.nodes[node].take_changed().is_empty() && !sweep {
                self.collect_from(node);
                continue;
            }
            let (must, more) = self.nodes[node].reach_plan();
            let mut wanted: Vec<NodeId> = must;
            for (count, candidates) in more {
                wanted.extend(candidates.into_iter().take(count));
            }
            for peer in wanted {
                if let Some(to) = self.index(&peer) {
                    self.dial(node, to);
                }
            }
            self.collect_from(node);
        }
    }

    /// Runs the network for `ms` of virtual time: deliveries in order, every node ticked each
    /// [`TICK_MS`].
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        loop {
            let next_packet = self.queue.peek().map(|Reverse((at, _))| *at);
            match next_packet {
                Some(at) if at <= self.next_tick && at <= end => {
                    self.step();
                }
                _ if self.next_tick <= end => {
                    self.now = self.now.max(self.next_tick);
                    self.next_tick += TICK_MS;
                    self.tick_all();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Runs until `done` holds, checking after each tick; the virtual time it took, or `None`
    /// if it did not hold within `limit_ms`.
    pub fn run_until(
        &mut self,
        limit_ms: u64,
        mut done: impl FnMut(&mut Net<S>) -> bool,
    ) -> Option<u64> {
        let start = self.now;
        while self.now - start < limit_ms {
            if done(self) {
                return Some(self.now - start);
            }
            self.run_for(TICK_MS);
        }
        done(self).then(|| self.now - start)
    }

    /// Node `node` makes a local edit and tells its engine; the change is tracked from now.
    pub fn edit(
        &mut self,
        node: usize,
        flow: &FlowId,
        edit: &crate::flow::Edit,
    ) -> crate::Result<()> {
        self.clock(node);
        let outcome = self.nodes[node].repo().edit(flow.as_str(), edit)?;
        self.nodes[node].local_change(flow);
        if let Ok(hash) = outcome.change.parse::<automerge::ChangeHash>() {
            let mut arrived = vec![None; self.nodes.len()];
            arrived[node] = Some(self.now);
            self.tracked.push(Tracked {
                flow: *flow,
                hash,
                made_at: self.now,
                arrived,
            });
        }
        self.collect_from(node);
        Ok(())
    }

    /// Records which tracked changes of `flow` node `node` holds now.
    fn arrivals(&mut self, node: usize, flow: &FlowId) {
        for t in self.tracked.iter_mut() {
            if t.arrived[node].is_none()
                && t.flow == *flow
                && matches!(
                    self.nodes[node].repo().signature(flow, &t.hash),
                    Ok(Some(_))
                )
            {
                t.arrived[node] = Some(self.now);
            }
        }
    }

    /// For each tracked change, the delays (virtual ms) until each node of `among` held it;
    /// `None` for a node that does not hold it yet.
    pub fn delays(&self, among: &[usize]) -> Vec<Option<u64>> {
        self.tracked
            .iter()
            .flat_map(|t| {
                among
                    .iter()
                    .map(move |n| t.arrived[*n].map(|a| a - t.made_at))
            })
            .collect()
    }

    /// The flow's heads on each node, sorted (`None` where it is not held).
    pub fn heads(&mut self, flow: &FlowId) -> Vec<Option<Vec<automerge::ChangeHash>>> {
        self.nodes
            .iter_mut()
            .map(|n| {
                n.repo().doc(flow).ok().map(|d| {
                    let mut h = d.get_heads();
                    h.sort();
                    h
                })
            })
            .collect()
    }

    /// Whether every node holds the flow at the same heads.
    pub fn converged(&mut self, flow: &FlowId) -> bool {
        let heads = self.heads(flow);
        heads[0].is_some() && heads.iter().all(|h| h == &heads[0])
    }
}
