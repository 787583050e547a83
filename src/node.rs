//! The node runtime: wires the store, the sync engine and the libp2p swarm, and serves the
//! control API. One task owns everything and `select!`s over swarm events, API calls and a
//! timer. Each turn handles the input that woke it and whatever else is ready (up to
//! [`MAX_INPUTS_PER_TURN`]) inside one store transaction, commits it (one fsync for all of
//! them), and only then sends what those inputs produced: sync and join responses, API replies
//! and the engine's [`Io`]. Nothing that tells of a change (a reply, advertised heads) leaves
//! before the change is durable.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use crate::api::{self, Call, PeerInfo, Reply, Status};
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::net::{self, Behaviour, BehaviourEvent, Limits};
use crate::repo::{Repo, META_LISTEN_ADDRS};

/// Meta key: the TCP port the node last listened on by default.
const META_LISTEN_PORT: &str = "listen_port";
use crate::sync::{Engine, Event, Io, Verdict};
use crate::wire::{Frame, InviteTicket};

/// How often the engine ticks (anti-entropy, redials, timeouts).
pub const TICK: Duration = Duration::from_millis(1000);
/// How long a join may take before the caller is told it failed.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Inbound requests a peer may send in a burst, and per second after that.
pub const REQUEST_BURST: f64 = 400.0;
pub const REQUESTS_PER_SECOND: f64 = 200.0;

/// A token bucket: how many requests a peer may still send right now.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * REQUESTS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(REQUEST_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Most topics a node relays for flows it is not a member of.
pub const MAX_RELAYED_TOPICS: usize = 64;

/// How often to ask the DHT again about the same peer or flow.
pub const DHT_RETRY: Duration = Duration::from_secs(10);

/// Most inputs (swarm events, API calls) handled in one turn, under one commit.
pub const MAX_INPUTS_PER_TURN: usize = 64;

/// Longest a penalized peer waits to be blocked while its last answer goes out.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Longest a penalized peer stays blocked.
pub const MAX_BAN: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub home: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub limits: Limits,
}

type Pending = oneshot::Sender<Result<Reply>>;

/// What woke the event loop.
enum Input {
    Swarm(Box<SwarmEvent<BehaviourEvent>>),
    Call(Call, Pending),
    Tick,
}

/// Responses and replies that wait for the turn's commit.
#[derive(Default)]
struct Held {
    sync: Vec<(
        request_response::ResponseChannel<crate::wire::SyncResponse>,
        crate::wire::SyncResponse,
    )>,
    join: Vec<(
        request_response::ResponseChannel<crate::wire::JoinResponse>,
        crate::wire::JoinResponse,
    )>,
    replies: Vec<(Pending, Result<Reply>)>,
    /// The peers the held responses go to.
    peers: HashSet<PeerId>,
}

struct Runtime {
    engine: Engine,
    swarm: Swarm<Behaviour>,
    started: Instant,
    sync_requests: HashMap<OutboundRequestId, (NodeId, String)>,
    join_requests: HashMap<OutboundRequestId, (NodeId, String)>,
    pending_joins: HashMap<String, Vec<(Pending, Instant)>>,
    /// Known addresses of peers (address book, identify, mDNS, tickets).
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// Next allowed dial and consecutive failures, per peer.
    backoff: HashMap<PeerId, (Instant, u32)>,
    /// Blocked until (while blocked), and how often penalized.
    bans: HashMap<PeerId, (Option<Instant>, u32)>,
    /// Penalized peers not blocked yet: the answer to their last request is on its way (the
    /// block closes the connection, which would reset the stream under it). Blocked once it
    /// is sent, or at the deadline; meanwhile their requests are answered `unavailable`.
    closing: HashMap<PeerId, Instant>,
    bootstrap: Vec<Multiaddr>,
    listen: Vec<Multiaddr>,
    /// Members this node wants to be connected to (see [`Engine::reach_plan`]).
    wanted: HashSet<PeerId>,
    /// Gossip topics subscribed as a member, and as a relay (a topic two or more connected
    /// peers subscribe to, for a flow this node is not a member of).
    member_topics: HashSet<String>,
    relayed: HashSet<String>,
    /// Which connected peers subscribe to which topics.
    topic_peers: HashMap<String, HashSet<PeerId>>,
    /// Inbound request budget per peer.
    budgets: HashMap<PeerId, Bucket>,
    /// When we last asked the DHT for a peer's addresses.
    lookups: HashMap<PeerId, Instant>,
    /// Flows announced in the DHT (provider records under their tags), and when we last asked
    /// the DHT for a flow's providers.
    provided: HashSet<String>,
    provider_queries: HashMap<String, Instant>,
    last_bootstrap: Option<Instant>,
    /// Peers cut off by test fault injection (only with `COFLOW_TEST_FAULTS=1`).
    partitioned: HashSet<PeerId>,
    test_faults: bool,
    /// What this turn's inputs produced that must wait for its commit.
    held: Held,
    /// Peers whose responses went out at the end of this turn (see `closing`).
    answering: HashSet<PeerId>,
}

fn now_secs() -> i64 {
    crate::repo::system_clock()
}

fn node_of(peer: &PeerId) -> Option<NodeId> {
    peer.to_base58().parse().ok()
}

fn peer_of(node: &NodeId) -> Option<PeerId> {
    PeerId::from_str(node.as_str()).ok()
}

/// Runs a node until `shutdown` completes. Everything acknowledged is already durable when this
/// returns: every write commits before it is acknowledged.
pub async fn run(opts: NodeOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    use tracing::Instrument;
    // Every log line of this node names its data dir: several nodes may share one process.
    let dir = opts
        .home
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    serve(opts, shutdown)
        .instrument(tracing::info_span!(target: "node", "node", %dir))
        .await
}

async fn serve(opts: NodeOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&opts.home).map_err(|source| Error::Io {
        path: opts.home.clone(),
        source,
    })?;
    let lock = api::lock_file(&opts.home)?;
    // A command working on the store holds the lock shared for a moment: close the gate to new
    // ones, and wait for those already in. A node that answers on the socket holds the lock for
    // good: refuse.
    let socket_path = opts.home.join(api::SOCKET_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    let gate = api::gate_file(&opts.home)?;
    while gate.try_lock().is_err() {
        if Instant::now() > deadline {
            return Err(Error::Invalid(
                "another coflow process keeps this data dir locked".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while lock.try_lock().is_err() {
        if std::os::unix::net::UnixStream::connect(&socket_path).is_ok() {
            return Err(Error::Invalid(
                "a coflow node is already running for this data dir".into(),
            ));
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(
                "another coflow process keeps this data dir locked".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Commands that now get through the gate find the lock held, and talk to this node.
    drop(gate);
    let repo = Repo::open(&opts.home)?;
    let keypair = repo.identity().libp2p_keypair();
    let mut swarm =
        net::build(keypair, opts.mdns, opts.limits).map_err(|e| Error::Invalid(e.to_string()))?;
    if opts.listen.is_empty() {
        // All interfaces, on the port used last time if it is free (so peers that remember
        // this node's address find it again after a restart), else a fresh one.
        let last = repo.store().reader().meta(META_LISTEN_PORT)?;
        let preferred = last.and_then(|p| p.parse::<u16>().ok()).map(|port| {
            format!("/ip4/0.0.0.0/tcp/{port}")
                .parse::<Multiaddr>()
                .expect("valid multiaddr")
        });
        let fresh: Multiaddr = "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr");
        let listening = preferred.is_some_and(|a| net::listen(&mut swarm, &a).is_ok());
        if !listening {
            net::listen(&mut swarm, &fresh).map_err(|e| Error::Invalid(e.to_string()))?;
        }
    } else {
        for addr in &opts.listen {
            net::listen(&mut swarm, addr).map_err(|e| Error::Invalid(e.to_string()))?;
        }
    }

    let _ = std::fs::remove_file(&socket_path);
    let listener = tokio::net::UnixListener::bind(&socket_path).map_err(|source| Error::Io {
        path: socket_path.clone(),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| Error::Io {
                path: socket_path.clone(),
                source,
            },
        )?;
    }
    let (calls_tx, mut calls_rx) = mpsc::channel::<(Call, Pending)>(64);
    let api_task = tokio::spawn(serve_api(listener, calls_tx));

    let mut rt = Runtime {
        engine: Engine::new(repo),
        swarm,
        started: Instant::now(),
        sync_requests: HashMap::new(),
        join_requests: HashMap::new(),
        pending_joins: HashMap::new(),
        addrs: HashMap::new(),
        backoff: HashMap::new(),
        bans: HashMap::new(),
        closing: HashMap::new(),
        bootstrap: opts.bootstrap.clone(),
        listen: Vec::new(),
        wanted: HashSet::new(),
        member_topics: HashSet::new(),
        relayed: HashSet::new(),
        topic_peers: HashMap::new(),
        budgets: HashMap::new(),
        lookups: HashMap::new(),
        provided: HashSet::new(),
        provider_queries: HashMap::new(),
        last_bootstrap: None,
        partitioned: HashSet::new(),
        test_faults: std::env::var("COFLOW_TEST_FAULTS").as_deref() == Ok("1"),
        held: Held::default(),
        answering: HashSet::new(),
    };
    rt.load_address_book();
    for addr in rt.bootstrap.clone() {
        if let Err(e) = rt.swarm.dial(addr.clone()) {
            tracing::warn!(target: "node", "cannot dial bootstrap {addr}: {e}");
        }
    }
    rt.refresh_members();
    rt.refresh_topics();
    tracing::info!(target: "node", node = %rt.engine.node_id(), "node started");

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let first = tokio::select! {
            event = rt.swarm.select_next_some() => Input::Swarm(Box::new(event)),
            Some((call, reply)) = calls_rx.recv() => Input::Call(call, reply),
            _ = tick.tick() => Input::Tick,
            _ = &mut shutdown => break,
        };
        let grouped = match rt.engine.repo().begin_group() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(target: "node", "cannot open a store transaction: {e}");
                false
            }
        };
        rt.on_input(first);
        // Whatever else is ready now shares the turn's commit.
        for _ in 1..MAX_INPUTS_PER_TURN {
            let next = if let Some(Some(event)) = rt.swarm.next().now_or_never() {
                Input::Swarm(Box::new(event))
            } else if let Ok((call, reply)) = calls_rx.try_recv() {
                Input::Call(call, reply)
            } else {
                break;
            };
            rt.on_input(next);
        }
        rt.end_turn(grouped);
    }
    api_task.abort();
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!(target: "node", "node stopped");
    drop(lock);
    Ok(())
}

async fn serve_api(listener: tokio::net::UnixListener, calls: mpsc::Sender<(Call, Pending)>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let (status, body) = match api::read_request(&mut stream).await {
                Ok(req) if req.method == "POST" && req.path == "/v1/call" => {
                    match serde_json::from_slice::<Call>(&req.body) {
                        Ok(call) => {
                            let (tx, rx) = oneshot::channel();
                            if calls.send((call, tx)).await.is_err() {
                                (500, error_body("the node is shutting down"))
                            } else {
                                match rx.await {
                                    Ok(Ok(reply)) => (
                                        200,
                                        serde_json::to_vec(&reply).expect("replies serialize"),
                                    ),
                                    Ok(Err(e)) => (400, error_body(&e.to_string())),
                                    Err(_) => (500, error_body("the node dropped the call")),
                                }
                            }
                        }
                        Err(e) => (400, error_body(&format!("bad call: {e}"))),
                    }
                }
                Ok(_) => (404, error_body("unknown endpoint")),
                Err(e) => (400, error_body(&format!("bad request: {e}"))),
            };
            let _ = api::write_response(&mut stream, status, &body).await;
        });
    }
}

fn error_body(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": msg })).expect("serializes")
}

impl Runtime {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn load_address_book(&mut self) {
        let Ok(rows) = self.engine.repo().store().reader().peers() else {
            return;
        };
        for row in rows {
            let Ok(peer) = PeerId::from_str(&row.node) else {
                continue;
            };
            for a in row.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                self.learn_addr(peer, a);
            }
            // Peers that kept failing before the restart are not hammered right after it.
            if row.failures > 0 {
                let failures = row.failures.min(16) as u32;
                self.backoff
                    .insert(peer, (Instant::now() + redial_wait(failures), failures));
            }
        }
    }

    fn learn_addr(&mut self, peer: PeerId, addr: Multiaddr) {
        let list = self.addrs.entry(peer).or_default();
        if !list.contains(&addr) {
            list.push(addr.clone());
            if list.len() > 8 {
                list.remove(0);
            }
            self.swarm.add_peer_address(peer, addr);
        }
    }

    fn remember_peer(&mut self, peer: &PeerId) {
        let addrs: Vec<String> = self
            .addrs
            .get(peer)
            .map(|a| a.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default();
        let store = self.engine.repo().store();
        if let Err(e) = store
            .reader()
            .saw_peer(&peer.to_base58(), &addrs, now_secs())
        {
            tracing::warn!(target: "node", "cannot record peer: {e}");
        }
    }

    /// Decides which members to connect to (never all of them: a few per flow, plus those this
    /// node is to bring a flow to) and dials those not connected.
    fn refresh_members(&mut self) {
        let (must, more) = self.engine.reach_plan();
        let mut wanted: HashSet<PeerId> = must.iter().filter_map(peer_of).collect();
        let now = Instant::now();
        for (count, candidates) in more {
            // Skip candidates that are banned or backing off, so an offline member does not
            // keep the flow from reaching one that is online.
            let usable = candidates
                .iter()
                .filter_map(peer_of)
                .filter(|p| !self.bans.get(p).is_some_and(|(u, _)| u.is_some()))
                .filter(|p| self.backoff.get(p).is_none_or(|(next, _)| *next <= now));
            wanted.extend(usable.take(count));
        }
        self.wanted = wanted;
        for peer in self.wanted_unconnected() {
            self.dial(peer);
        }
    }

    /// Wanted members this node is not connected to.
    fn wanted_unconnected(&self) -> Vec<PeerId> {
        self.wanted
            .iter()
            .filter(|p| !self.swarm.is_connected(p))
            .copied()
            .collect()
    }

    /// Subscribes to the gossip topics of the flows held here as a member, and relays topics
    /// that two or more connected peers share.
    fn refresh_topics(&mut self) {
        let topics: HashSet<String> = self.engine.member_topics().into_iter().collect();
        let gossip = &mut self.swarm.behaviour_mut().gossip;
        let mut seen = Vec::new();
        for t in topics.difference(&self.member_topics) {
            if let Err(e) = net::subscribe(gossip, t) {
                tracing::warn!(target: "node", topic = %t, "cannot subscribe: {e}");
            }
            // Peers that subscribed before this node held the flow.
            for p in self.topic_peers.get(t).into_iter().flatten() {
                seen.push((*p, t.clone()));
            }
        }
        for t in self.member_topics.difference(&topics) {
            if !self.relayed.contains(t) {
                gossip.unsubscribe(&gossipsub::IdentTopic::new(t.clone()));
            }
        }
        self.relayed.retain(|t| !topics.contains(t));
        self.member_topics = topics;
        for (peer, topic) in seen {
            if let Some(node) = node_of(&peer) {
                self.engine.peer_subscribed(&node, &topic);
            }
        }
        let mut shared: Vec<(&String, usize)> = self
            .topic_peers
            .iter()
            .map(|(t, peers)| (t, peers.len()))
            .filter(|(t, n)| *n >= 2 && !self.member_topics.contains(*t))
            .collect();
        shared.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let relay: HashSet<String> = shared
            .into_iter()
            .take(MAX_RELAYED_TOPICS)
            .map(|(t, _)| t.clone())
            .collect();
        for t in relay.difference(&self.relayed) {
            tracing::debug!(target: "node", topic = %t, "relaying a topic");
            let _ = net::subscribe(gossip, t);
        }
        for t in self.relayed.difference(&relay) {
            gossip.unsubscribe(&gossipsub::IdentTopic::new(t.clone()));
        }
        self.relayed = relay;
    }

    fn on_gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let Some(via) = node_of(&propagation_source) else {
                    return;
                };
                let source = message.source.as_ref().and_then(node_of);
                self.engine.handle_announcement(
                    message_id.0,
                    &via,
                    source.as_ref(),
                    message.topic.as_str(),
                    &message.data,
                );
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                self.topic_peers
                    .entry(topic.to_string())
                    .or_default()
                    .insert(peer_id);
                if let Some(node) = node_of(&peer_id) {
                    self.engine.peer_subscribed(&node, topic.as_str());
                }
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                if let Some(node) = node_of(&peer_id) {
                    self.engine.peer_unsubscribed(&node, topic.as_str());
                }
                if let Some(peers) = self.topic_peers.get_mut(topic.as_str()) {
                    peers.remove(&peer_id);
                    if peers.is_empty() {
                        self.topic_peers.remove(topic.as_str());
                    }
                }
            }
            _ => {}
        }
    }

    fn record_listen_addrs(&mut self) {
        let me = *self.swarm.local_peer_id();
        let addrs: Vec<String> = self
            .listen
            .iter()
            .map(|a| {
                a.clone()
                    .with(libp2p::multiaddr::Protocol::P2p(me))
                    .to_string()
            })
            .collect();
        let json = serde_json::to_string(&addrs).expect("serializes");
        if let Err(e) = self
            .engine
            .repo()
            .store()
            .reader()
            .set_meta(META_LISTEN_ADDRS, &json)
        {
            tracing::warn!(target: "node", "cannot record listen addresses: {e}");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = self.now_ms();
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(target: "node", "listening on {address}/p2p/{}", self.swarm.local_peer_id());
                if let Some(libp2p::multiaddr::Protocol::Tcp(port)) = address
                    .iter()
                    .find(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
                {
                    let _ = self
                        .engine
                        .repo()
                        .store()
                        .reader()
                        .set_meta(META_LISTEN_PORT, &port.to_string());
                }
                self.listen.push(address);
                self.record_listen_addrs();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen.retain(|a| a != &address);
                self.record_listen_addrs();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let Some(node) = node_of(&peer_id) else {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                };
                if endpoint.is_dialer() {
                    self.learn_addr(peer_id, endpoint.get_remote_address().clone());
                }
                self.backoff.remove(&peer_id);
                self.remember_peer(&peer_id);
                if num_established.get() == 1 {
                    tracing::info!(target: "node", peer = %node, "connected");
                    self.engine.peer_connected(node, now);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if let Some(node) = node_of(&peer_id) {
                    tracing::info!(target: "node", peer = %node, "disconnected");
                    self.engine.peer_disconnected(&node);
                }
                for peers in self.topic_peers.values_mut() {
                    peers.remove(&peer_id);
                }
                self.topic_peers.retain(|_, peers| !peers.is_empty());
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(target: "node", %peer, "dial failed: {error}");
                let failures = self.backoff.get(&peer).map_or(0, |(_, f)| *f) + 1;
                self.backoff
                    .insert(peer, (Instant::now() + redial_wait(failures), failures));
                let _ = self
                    .engine
                    .repo()
                    .store()
                    .reader()
                    .peer_failed(&peer.to_base58());
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let dht = info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == net::KAD_PROTOCOL);
                for addr in info.listen_addrs {
                    if !is_unspecified(&addr) {
                        if dht {
                            self.swarm
                                .behaviour_mut()
                                .kad
                                .add_address(&peer_id, addr.clone());
                        }
                        self.learn_addr(peer_id, addr);
                    }
                }
                self.remember_peer(&peer_id);
            }
            BehaviourEvent::Kad(event) => self.on_kad_event(event),
            BehaviourEvent::Gossip(event) => self.on_gossip_event(event),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.learn_addr(peer, addr);
                    if !self.swarm.is_connected(&peer) {
                        self.dial(peer);
                    }
                }
            }
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::Join(event) => self.on_join_event(event),
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer, addresses, ..
            } => {
                for a in addresses.iter() {
                    self.learn_addr(peer, a.clone());
                }
                self.reach_if_member(peer);
            }
            kad::Event::OutboundQueryProgressed { result, .. } => match result {
                kad::QueryResult::GetClosestPeers(Ok(ok)) => {
                    for info in ok.peers {
                        for a in info.addrs {
                            self.learn_addr(info.peer_id, a);
                        }
                        self.reach_if_member(info.peer_id);
                    }
                }
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) => {
                    for p in providers {
                        self.reach_if_member(p);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Dials `peer` if this node wants to reach it and is not connected yet.
    fn reach_if_member(&mut self, peer: PeerId) {
        if self.wanted.contains(&peer) && !self.swarm.is_connected(&peer) {
            self.backoff.remove(&peer);
            self.dial(peer);
        }
    }

    /// Uses the DHT: join it, announce the flows held here under their tags, and look up
    /// members this node cannot reach by the addresses it knows.
    fn use_dht(&mut self) {
        let now = Instant::now();
        let kad = &mut self.swarm.behaviour_mut().kad;
        if self
            .last_bootstrap
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
            && kad.bootstrap().is_ok()
        {
            self.last_bootstrap = Some(now);
        }
        for flow in self.engine.repo().flow_ids().unwrap_or_default() {
            if self.provided.insert(flow.clone()) {
                let key = kad::RecordKey::new(&crate::wire::flow_tag(&flow));
                let _ = self.swarm.behaviour_mut().kad.start_providing(key);
            }
        }
        for peer in self.wanted_unconnected() {
            let due = self
                .lookups
                .get(&peer)
                .is_none_or(|t| now.duration_since(*t) > DHT_RETRY);
            if due {
                self.lookups.insert(peer, now);
                self.swarm.behaviour_mut().kad.get_closest_peers(peer);
            }
        }
        // Flows with no member connected: ask who provides them.
        for flow in self.engine.repo().flow_ids().unwrap_or_default() {
            let members: Vec<PeerId> = self
                .engine
                .repo()
                .members(&flow)
                .unwrap_or_default()
                .iter()
                .filter_map(|(n, _)| PeerId::from_str(n).ok())
                .filter(|p| p != self.swarm.local_peer_id())
                .collect();
            let lonely = !members.is_empty() && !members.iter().any(|p| self.swarm.is_connected(p));
            let due = self
                .provider_queries
                .get(&flow)
                .is_none_or(|t| now.duration_since(*t) > DHT_RETRY);
            if lonely && due {
                self.provider_queries.insert(flow.clone(), now);
                let key = kad::RecordKey::new(&crate::wire::flow_tag(&flow));
                self.swarm.behaviour_mut().kad.get_providers(key);
            }
        }
    }

    fn on_sync_event(
        &mut self,
        event: request_response::Event<Frame<crate::wire::SyncRequest>, crate::wire::SyncResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => {
                let Some(node) = node_of(&peer) else { return };
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let unavailable = crate::wire::SyncResponse {
                            result: Some(crate::wire::sync_response::Result::Unavailable(true)),
                        };
                        let response = match request {
                            _ if self.closing.contains_key(&peer) => unavailable,
                            _ if !self.within_budget(peer) => unavailable,
                            Frame::Malformed(why) => {
                                self.engine.penalize_peer(
                                    &node,
                                    format!("sent an unreadable request: {why}"),
                                );
                                unavailable
                            }
                            Frame::Message(request) => {
                                self.engine.handle_sync_request(&node, request)
                            }
                        };
                        self.held.sync.push((channel, response));
                        self.held.peers.insert(peer);
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some((node, flow)) = self.sync_requests.remove(&request_id) {
                            self.engine.handle_sync_response(&node, &flow, response);
                        }
                    }
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((node, flow)) = self.sync_requests.remove(&request_id) {
                    tracing::debug!(target: "node", peer = %node, %flow, "sync request failed: {error}");
                    self.engine.sync_failed(&node, &flow);
                }
            }
            request_response::Event::ResponseSent { peer, .. }
            | request_response::Event::InboundFailure { peer, .. } => self.answered(peer),
        }
    }

    fn on_join_event(
        &mut self,
        event: request_response::Event<Frame<crate::wire::JoinRequest>, crate::wire::JoinResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => {
                let Some(node) = node_of(&peer) else { return };
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        if self.closing.contains_key(&peer) || !self.within_budget(peer) {
                            return;
                        }
                        let request = match request {
                            Frame::Message(r) => r,
                            Frame::Malformed(why) => {
                                self.engine.penalize_peer(
                                    &node,
                                    format!("sent an unreadable request: {why}"),
                                );
                                return;
                            }
                        };
                        let response = self.engine.handle_join_request(&node, request);
                        self.held.join.push((channel, response));
                        self.held.peers.insert(peer);
                        self.refresh_members();
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some((node, flow)) = self.join_requests.remove(&request_id) {
                            self.engine.handle_join_response(&node, &flow, response);
                        }
                    }
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((node, flow)) = self.join_requests.remove(&request_id) {
                    self.engine.join_failed(&node, &flow, error.to_string());
                }
            }
            request_response::Event::ResponseSent { peer, .. }
            | request_response::Event::InboundFailure { peer, .. } => self.answered(peer),
        }
    }

    /// An answer to `peer` went out (or could not): block it now if it was penalized.
    fn answered(&mut self, peer: PeerId) {
        if self.closing.remove(&peer).is_some() {
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        }
    }

    /// Whether `peer` may make another request now; a peer over its budget is penalized.
    fn within_budget(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        let ok = self
            .budgets
            .entry(peer)
            .or_insert(Bucket {
                tokens: REQUEST_BURST,
                at: now,
            })
            .take(now);
        if !ok {
            if let Some(node) = node_of(&peer) {
                self.engine
                    .penalize_peer(&node, "too many requests".to_string());
            }
        }
        ok
    }

    fn dial(&mut self, peer: PeerId) {
        if self
            .bans
            .get(&peer)
            .is_some_and(|(until, _)| until.is_some())
        {
            return;
        }
        if let Some((next, _)) = self.backoff.get(&peer) {
            if Instant::now() < *next {
                return;
            }
        }
        // With no address of our own, the swarm asks its behaviours (the DHT's routing table).
        let addrs = self.addrs.get(&peer).cloned().unwrap_or_default();
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(target: "node", %peer, "cannot dial: {e}");
        }
        // Until the outcome is known, do not try again for a while.
        let failures = self.backoff.get(&peer).map_or(0, |(_, f)| *f);
        self.backoff
            .insert(peer, (Instant::now() + Duration::from_secs(2), failures));
    }

    fn on_tick(&mut self) {
        let now = self.now_ms();
        self.engine.tick(now);
        let instant = Instant::now();
        // Penalized peers whose last answer never went out are blocked now.
        let late: Vec<PeerId> = self
            .closing
            .iter()
            .filter(|(_, deadline)| **deadline <= instant)
            .map(|(p, _)| *p)
            .collect();
        for peer in late {
            self.answered(peer);
        }
        // Lift bans whose time is up.
        let expired: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, (until, _))| until.is_some_and(|u| u <= instant))
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            if !self.partitioned.contains(&peer) {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
            if let Some(entry) = self.bans.get_mut(&peer) {
                // Keep the count (for a longer ban next time) but allow traffic again.
                entry.0 = None;
            }
        }
        // Keep in touch with enough members of our flows.
        self.refresh_members();
        self.refresh_topics();
        self.use_dht();
        // Give up on joins that take too long.
        for (flow, waiters) in self.pending_joins.iter_mut() {
            let (late, keep): (Vec<_>, Vec<_>) = waiters
                .drain(..)
                .partition(|(_, deadline)| *deadline <= instant);
            *waiters = keep;
            for (tx, _) in late {
                let _ = tx.send(Err(Error::Invalid(format!(
                    "joining flow {flow} timed out: no member node could be reached"
                ))));
            }
        }
        self.pending_joins.retain(|_, w| !w.is_empty());
    }

    fn on_call(&mut self, call: Call, reply: Pending) {
        let result = match call {
            Call::Status => Ok(Reply::Status(Status {
                running: true,
                node_id: self.engine.node_id().to_string(),
                name: self.engine.repo().identity().name().to_string(),
                listen: self
                    .listen
                    .iter()
                    .map(|a| format!("{a}/p2p/{}", self.swarm.local_peer_id()))
                    .collect(),
                peers: self.swarm.connected_peers().count(),
                flows: self.engine.repo().flow_ids().map(|f| f.len()).unwrap_or(0),
            })),
            Call::Peers => Ok(Reply::Peers(self.peers())),
            Call::Stats => Ok(Reply::Stats(Box::new(self.engine.stats.clone()))),
            Call::TestPartition { .. } | Call::TestHeal if !self.test_faults => Err(
                Error::Invalid("test fault injection is off (COFLOW_TEST_FAULTS=1)".into()),
            ),
            Call::TestPartition { peers } => {
                for p in peers.iter().filter_map(|p| PeerId::from_str(p).ok()) {
                    self.swarm.behaviour_mut().blocked.block_peer(p);
                    self.partitioned.insert(p);
                }
                Ok(Reply::Done)
            }
            Call::TestHeal => {
                for p in std::mem::take(&mut self.partitioned) {
                    if !self.bans.get(&p).is_some_and(|(until, _)| until.is_some()) {
                        self.swarm.behaviour_mut().blocked.unblock_peer(p);
                    }
                    self.backoff.remove(&p);
                }
                Ok(Reply::Done)
            }
            Call::Join { ticket } => {
                self.start_join(&ticket, reply);
                return;
            }
            Call::FlowAccept { flow } => self.engine.accept(&flow).map(|id| {
                self.refresh_members();
                self.refresh_topics();
                Reply::Accepted { id }
            }),
            Call::FlowDecline { flow } => {
                self.engine.decline(&flow).map(|id| Reply::Declined { id })
            }
            Call::FlowShow { flow } => api::execute(self.engine.repo(), Call::FlowShow { flow })
                .map(|r| match r {
                    Reply::Flow(mut view) => {
                        view.sync = self.engine.member_sync(&view.flow.id);
                        Reply::Flow(view)
                    }
                    other => other,
                }),
            other => {
                let touched = match &other {
                    Call::Edit { flow, .. } | Call::Invite { flow, .. } => Some(flow.clone()),
                    _ => None,
                };
                let result = api::execute(self.engine.repo(), other);
                if let (Some(_), Ok(Reply::Edited(e))) = (&touched, &result) {
                    self.engine.local_change(&e.flow.clone());
                    self.refresh_members();
                }
                if matches!(&result, Ok(Reply::Created { .. })) {
                    self.refresh_topics();
                }
                if let (Some(_), Ok(Reply::Invited(i))) = (&touched, &result) {
                    self.engine.local_change(&i.edit.flow.clone());
                }
                result
            }
        };
        self.held.replies.push((reply, result));
    }

    fn start_join(&mut self, ticket: &str, reply: Pending) {
        let ticket = match InviteTicket::decode(ticket) {
            Ok(t) => t,
            Err(e) => {
                let _ = reply.send(Err(Error::Invalid(e.to_string())));
                return;
            }
        };
        let name = self.engine.repo().identity().name().to_string();
        match self.engine.start_join(&ticket, &name) {
            Ok(via) => {
                for addr in &ticket.addrs {
                    if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                        let base: Multiaddr = addr
                            .iter()
                            .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                            .collect();
                        self.learn_addr(peer, base);
                    }
                }
                for node in via {
                    if let Some(p) = peer_of(&node) {
                        self.backoff.remove(&p);
                    }
                }
                self.pending_joins
                    .entry(ticket.flow.clone())
                    .or_default()
                    .push((reply, Instant::now() + JOIN_TIMEOUT));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn peers(&mut self) -> Vec<PeerInfo> {
        let names = self.member_names();
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let book = self
            .engine
            .repo()
            .store()
            .reader()
            .peers()
            .unwrap_or_default();
        let mut out: Vec<PeerInfo> = connected
            .iter()
            .map(|p| PeerInfo {
                node_id: p.to_base58(),
                name: names.get(&p.to_base58()).cloned().unwrap_or_default(),
                addrs: self
                    .addrs
                    .get(p)
                    .map(|a| a.iter().map(|a| a.to_string()).collect())
                    .unwrap_or_default(),
                connected: true,
                last_seen: Some(now_secs()),
            })
            .collect();
        for row in book {
            if !out.iter().any(|p| p.node_id == row.node) {
                out.push(PeerInfo {
                    name: names.get(&row.node).cloned().unwrap_or_default(),
                    node_id: row.node,
                    addrs: row.addrs,
                    connected: false,
                    last_seen: Some(row.last_seen),
                });
            }
        }
        out
    }

    fn member_names(&mut self) -> HashMap<String, String> {
        let mut names = HashMap::new();
        let repo = self.engine.repo();
        for flow in repo.flow_ids().unwrap_or_default() {
            if let Ok(view) = repo.show(&flow) {
                for m in view.flow.members {
                    if !m.name.is_empty() {
                        names.insert(m.node_id, m.name);
                    }
                }
            }
        }
        names
    }

    /// Executes what the engine asked for.
    fn on_input(&mut self, input: Input) {
        match input {
            Input::Swarm(event) => self.on_swarm_event(*event),
            Input::Call(call, reply) => self.on_call(call, reply),
            Input::Tick => self.on_tick(),
        }
    }

    /// Ends a turn: commits what its inputs wrote, then sends what they produced. If the commit
    /// fails nothing of the turn was stored, so nothing that tells of it is sent: sync
    /// responses say the flow is unavailable, join responses are dropped, API calls get the
    /// error, and the engine forgets its unsent messages (see [`Engine::commit`]).
    fn end_turn(&mut self, grouped: bool) {
        let committed = if !grouped {
            Ok(())
        } else if self.engine.repo().group_wrote()
            && tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread
        {
            // The fsync blocks this thread: let the runtime move other tasks off it.
            tokio::task::block_in_place(|| self.engine.commit())
        } else {
            self.engine.commit()
        };
        let mut held = std::mem::take(&mut self.held);
        if let Err(e) = committed {
            let unavailable = crate::wire::SyncResponse {
                result: Some(crate::wire::sync_response::Result::Unavailable(true)),
            };
            for (_, response) in &mut held.sync {
                *response = unavailable.clone();
            }
            held.join.clear();
            for (_, result) in &mut held.replies {
                *result = Err(Error::Invalid(format!("the store could not commit: {e}")));
            }
        }
        for (channel, response) in held.sync {
            let _ = self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, response);
        }
        for (channel, response) in held.join {
            let _ = self
                .swarm
                .behaviour_mut()
                .join
                .send_response(channel, response);
        }
        for (reply, result) in held.replies {
            let _ = reply.send(result);
        }
        self.answering = held.peers;
        self.drain();
        self.answering.clear();
    }

    fn drain(&mut self) {
        while let Some(io) = self.engine.next_io() {
            match io {
                Io::Sync {
                    peer,
                    flow,
                    request,
                } => {
                    let Some(p) = peer_of(&peer) else { continue };
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&p, Frame::Message(request));
                    self.sync_requests.insert(id, (peer, flow));
                }
                Io::Join {
                    peer,
                    flow,
                    request,
                } => {
                    let Some(p) = peer_of(&peer) else { continue };
                    let addrs = self.addrs.get(&p).cloned().unwrap_or_default();
                    let id = self.swarm.behaviour_mut().join.send_request_with_addresses(
                        &p,
                        Frame::Message(request),
                        addrs,
                    );
                    self.join_requests.insert(id, (peer, flow));
                }
                Io::Penalize { peer, reason } => {
                    let Some(p) = peer_of(&peer) else { continue };
                    let count = self.bans.get(&p).map_or(0, |(_, c)| *c) + 1;
                    let ban =
                        (Duration::from_secs(30) * 2u32.saturating_pow(count.min(7))).min(MAX_BAN);
                    tracing::warn!(target: "node", %peer, ?ban, "blocking peer: {reason}");
                    self.bans.insert(p, (Some(Instant::now() + ban), count));
                    if self.answering.contains(&p) {
                        // Blocked once the answer just handed out has gone (see `closing`).
                        self.closing.insert(p, Instant::now() + CLOSE_GRACE);
                    } else {
                        self.swarm.behaviour_mut().blocked.block_peer(p);
                    }
                }
                Io::Announce { topic, heads } => {
                    let data = crate::wire::encode_announce(&heads);
                    if let Err(e) = self
                        .swarm
                        .behaviour_mut()
                        .gossip
                        .publish(gossipsub::IdentTopic::new(topic), data)
                    {
                        tracing::debug!(target: "node", "announcement not sent: {e}");
                    }
                }
                Io::Validate { id, via, verdict } => {
                    let Some(p) = peer_of(&via) else { continue };
                    let acceptance = match verdict {
                        Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                        Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                        Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                    };
                    self.swarm
                        .behaviour_mut()
                        .gossip
                        .report_message_validation_result(
                            &gossipsub::MessageId::new(&id),
                            &p,
                            acceptance,
                        );
                }
                Io::Dial { peer } => {
                    if let Some(p) = peer_of(&peer) {
                        self.wanted.insert(p);
                        if !self.swarm.is_connected(&p) {
                            self.dial(p);
                        }
                    }
                }
                Io::Event(Event::Joined { flow }) => {
                    tracing::info!(target: "node", %flow, "joined");
                    self.refresh_members();
                    self.refresh_topics();
                    for (tx, _) in self.pending_joins.remove(&flow).unwrap_or_default() {
                        let _ = tx.send(Ok(Reply::Joined { id: flow.clone() }));
                    }
                }
                Io::Event(Event::JoinFailed { flow, reason }) => {
                    for (tx, _) in self.pending_joins.remove(&flow).unwrap_or_default() {
                        let _ = tx.send(Err(Error::Invalid(format!("cannot join: {reason}"))));
                    }
                }
                Io::Event(Event::Offered { flow, from }) => {
                    tracing::info!(target: "node", %flow, peer = %from, "a member added this node to a flow: it waits for `coflow flow accept` (or `decline`)");
                }
                Io::Event(Event::FlowUpdated { flow, from }) => {
                    // Membership changes it brings are acted on at the next tick: doing it
                    // for every batch received cost a busy node a tenth of its time.
                    tracing::info!(target: "node", %flow, peer = %from, "received changes");
                }
            }
        }
    }
}

/// How long to wait before dialing a peer again after `failures` failed attempts in a row:
/// 2 s, 4 s, 8 s, 16 s, then every 32 s. Kept short: a member that comes back should be found
/// again quickly (the long chaos tier took two minutes to reconverge with a 4-minute cap).
fn redial_wait(failures: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(failures.clamp(1, 5)))
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}
