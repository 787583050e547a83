//! The node runtime: wires the store, the sync engine and the libp2p swarm, and serves the
//! control API. One task owns everything and `select!`s over swarm events, API calls and a
//! timer. Each turn handles the input that woke it and whatever else is ready (up to
//! [`MAX_INPUTS_PER_TURN`]) inside one store transaction, commits it (one fsync for all of
//! them), and only then sends what those inputs produced: sync and join responses, API replies
//! and the engine's [`Io`](crate::sync::Io). Nothing that tells of a change (a reply, advertised
//! heads) leaves before the change is durable.
//!
//! Time goes into the engine at the start of every turn ([`Engine::set_now`]), and the loop
//! sleeps until the engine's next deadline ([`Engine::next_wake`]) or the next [`TICK`],
//! whichever comes first.
//!
//! The turns run on a thread of their own (`coflow-turns`), not on a tokio worker: a turn's
//! work is synchronous and CPU- or disk-bound (SQLite reads and writes, batch signature
//! verification, Automerge apply and save, the commit's fsync), and while it runs, the
//! runtime's workers go on serving the control socket and the page, libp2p's connection tasks
//! (Noise, Yamux, QUIC, pings) and, in one process, other nodes. The thread drives the loop with
//! the runtime's handle, so the swarm stays async code: its sockets and timers are the
//! runtime's, and the tasks it spawns run on the workers. A turn is still one piece, inline on
//! that thread, rather than handed out in parts with the results fed back: the engine's inputs
//! are taken in order and a turn's writes share one commit, so a second thread of engine work
//! could only wait for the first; its length is bounded (at most [`MAX_INPUTS_PER_TURN`] inputs,
//! each message at most `wire::MAX_SYNC_MESSAGE` bytes and `wire::MAX_CHANGES_PER_MESSAGE`
//! changes, their signatures checked as one batch). On a current-thread runtime (some tests)
//! the loop runs inline in the caller's task instead.
//!
//! With its page served ([`NodeOptions::web`]) on a data dir that has no key yet, the node
//! first answers only `status` and the page's `init`, which makes the key; then it starts.
//!
//! `mod.rs` holds [`run`] and the turn loop; `start.rs` the data dir's lock, setup, the page
//! and the drain; `turn.rs` a turn's end
//! (commit, held responses, the engine's `Io`); `swarm.rs` listening, connections, identify,
//! mDNS and dialing; `reach.rs` and `nat.rs` reachability, relays and hole punching; `rr.rs` the two request-response protocols; `gossip.rs` topics and announcements;
//! `dht.rs` Kademlia; `peers.rs` the `PeerBook` of per-peer state;
//! `control.rs` the control socket; `faults.rs` test fault injection; the page is
//! [`crate::web`].

mod control;
mod dht;
mod faults;
mod gossip;
mod nat;
mod peers;
mod reach;
mod rr;
mod start;
mod swarm;
mod turn;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::api::{self, Call, Reply};
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::net::{self, Behaviour, BehaviourEvent, Limits, RelayLimits};
use crate::repo::Repo;
use crate::sync::Engine;
use crate::web::Change;
use start::{finish, lock_home, setup, start_web, until_stopped};
use crate::wire::{JoinResponse, SyncResponse};

#[cfg(feature = "testkit")]
pub use peers::{REQUESTS_PER_SECOND, REQUEST_BURST};
pub use reach::Reachability;

/// How often the node ticks at the least (anti-entropy, redials, timeouts); the engine's tick
/// comes sooner when it has a deadline to keep ([`Engine::next_wake`]).
pub const TICK: Duration = Duration::from_millis(1000);
/// How often a tick looks at every flow held, not only those whose members or connections
/// changed: member links (a candidate whose dial backoff ended), topics, DHT provider records and
/// lookups (as often as they are retried, [`DHT_RETRY`]).
pub const SWEEP: Duration = DHT_RETRY;
/// The shortest time between two ticks.
pub const MIN_TICK: Duration = Duration::from_millis(10);
/// How long a join may take before the caller is told it failed.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Most topics a node relays for flows it is not a member of.
pub const MAX_RELAYED_TOPICS: usize = 64;
/// How often to ask the DHT again about the same peer or flow.
pub const DHT_RETRY: Duration = Duration::from_secs(10);
/// Most inputs (swarm events, API calls) handled in one turn, under one commit.
pub const MAX_INPUTS_PER_TURN: usize = 64;
/// Longest a penalized peer stays blocked.
pub const MAX_BAN: Duration = Duration::from_secs(3600);

/// Most nodes the stored address book keeps (those seen last).
pub const ADDRESS_BOOK_SIZE: usize = 1024;

/// Meta key: the TCP port the node last listened on by default.
const META_LISTEN_PORT: &str = "listen_port";
/// Meta key: the UDP port the node last listened on by default (QUIC).
const META_LISTEN_PORT_QUIC: &str = "listen_port_quic";

#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub home: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Ask the router for a port mapping (UPnP); only when listening beyond loopback.
    pub upnp: bool,
    /// Addresses others reach this node at that it cannot find out itself (a forwarded port).
    pub external: Vec<Multiaddr>,
    pub limits: Limits,
    /// What this node offers as a relay once it is reachable.
    pub relay: RelayLimits,
    /// Where to serve the page (a loopback address); `None`: no page.
    pub web: Option<std::net::SocketAddr>,
    /// If the page's port is taken, serve it on a free one (the default address does).
    pub web_fall_back: bool,
    /// Print the page's login URL on stdout once it is served (`coflow up`).
    pub print_url: bool,
    /// Open the page in the default browser once it is served (`coflow up`).
    pub open_page: bool,
}

type Pending = oneshot::Sender<Result<Reply>>;

/// What woke the event loop.
enum Input {
    Swarm(Box<SwarmEvent<BehaviourEvent>>),
    Call(Call, Pending),
    Tick,
    /// A penalized peer is due to be blocked.
    Close,
}

struct Runtime {
    engine: Engine,
    swarm: Swarm<Behaviour>,
    started: Instant,
    /// When the runtime's own periodic work (redials, bans, member links, topics, the DHT) is
    /// next due; the engine's tick may come earlier ([`Engine::next_wake`]).
    next_full_tick: Instant,
    /// When the runtime next looks at every flow held (see [`SWEEP`]).
    next_sweep: Instant,
    sync: rr::Lane<SyncResponse>,
    join: rr::Lane<JoinResponse>,
    pending_joins: HashMap<crate::flow::FlowId, Vec<(Pending, Instant)>>,
    /// Addresses, dial backoff, bans, request budgets and DHT lookups, per peer.
    peers: peers::PeerBook,
    bootstrap: Vec<Multiaddr>,
    listen: Vec<Multiaddr>,
    /// Members this node wants to be connected to (see [`Engine::reach_plan`]).
    wanted: HashSet<PeerId>,
    topics: gossip::Topics,
    dht: dht::Dht,
    /// Whether peers can dial this node, and the relays it is reachable through.
    reach: reach::Reach,
    /// Offer a relay to others once reachable.
    relay_serve: bool,
    /// Whether the relay is offered now.
    relay_serving: bool,
    /// Join requests for inviters with no known address, held until the DHT finds them.
    joins_waiting: HashMap<PeerId, Vec<nat::WaitingJoin>>,
    /// Join requests on their way, by inviter and flow, with the second chances each had.
    joins_sent: HashMap<(NodeId, crate::flow::FlowId), nat::SentJoin>,
    /// The page's logins (they hand out its login URLs), if it is served.
    web: Option<crate::web::Logins>,
    /// What the page is told happened (see [`crate::web::Change`]).
    changes: broadcast::Sender<Change>,
    faults: faults::Faults,
    /// What this turn's inputs produced that must wait for its commit.
    held: turn::Held,
    /// Peers whose responses went out at the end of this turn (see [`peers::PeerBook::closing`]).
    answering: HashSet<PeerId>,
}

fn now_secs() -> i64 {
    crate::repo::system_clock()
}

fn node_of(peer: &PeerId) -> Option<NodeId> {
    NodeId::from_peer_id(peer)
}

fn peer_of(node: &NodeId) -> Option<PeerId> {
    Some(node.peer_id())
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
    use tracing::Instrument;
    // Mode 0700, as `coflow init` makes it: a first run from the page makes the data dir here.
    crate::identity::create_data_dir(&opts.home).map_err(|source| Error::Io {
        path: opts.home.clone(),
        source,
    })?;
    let socket_path = opts.home.join(api::SOCKET_FILE);
    let lock = lock_home(&opts.home, &socket_path).await?;
    tokio::pin!(shutdown);
    let (calls_tx, mut calls_rx) = mpsc::channel::<(Call, Pending)>(64);
    let (changes, _) = broadcast::channel::<Change>(256);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let named = opts.home.join(crate::identity::KEY_FILE).exists();
    let mut web_url = None;
    if !named {
        // No key yet: the page asks for a name first (with no page, nothing can).
        if opts.web.is_none() {
            return Err(Error::Invalid(format!(
                "no node key in {}: run `coflow init --name NAME`, or `coflow up` and choose a name on the page",
                opts.home.display()
            )));
        }
        web_url = start_web(&opts, &calls_tx, &changes, &stopped, &mut tasks)?;
        let logins = web_url.clone().expect("the page is served");
        if !setup(&opts.home, &mut calls_rx, &logins, &mut shutdown).await {
            let _ = stop.send(true);
            finish(tasks, Some(calls_rx), &opts.home).await;
            return Ok(());
        }
    }
    let repo = Repo::open(&opts.home)?;
    let keypair = repo.identity().libp2p_keypair();
    // A node that listens on loopback only has no router to ask.
    let beyond_loopback =
        opts.listen.is_empty() || opts.listen.iter().any(|a| !swarm::is_loopback(a));
    let mut swarm = net::build(
        keypair,
        net::NetOptions {
            mdns: opts.mdns,
            upnp: opts.upnp && beyond_loopback,
            limits: opts.limits,
            relay: opts.relay,
        },
    )
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let external = opts.external.clone();
    swarm::listen(&mut swarm, &repo, &opts.listen)?;
    if named {
        web_url = start_web(&opts, &calls_tx, &changes, &stopped, &mut tasks)?;
    }
    let listener = control::bind(&socket_path)?;
    tasks.push(tokio::spawn(control::serve_api(
        listener,
        calls_tx,
        stopped.clone(),
    )));

    let mut rt = Runtime {
        engine: Engine::new(repo),
        swarm,
        started: Instant::now(),
        next_full_tick: Instant::now(),
        next_sweep: Instant::now(),
        sync: rr::Lane::default(),
        join: rr::Lane::default(),
        pending_joins: HashMap::new(),
        peers: peers::PeerBook::default(),
        bootstrap: opts.bootstrap.clone(),
        listen: Vec::new(),
        wanted: HashSet::new(),
        topics: gossip::Topics::default(),
        dht: dht::Dht::default(),
        reach: reach::Reach::default(),
        relay_serve: opts.relay.serve,
        relay_serving: false,
        joins_waiting: HashMap::new(),
        joins_sent: HashMap::new(),
        web: web_url,
        changes,
        faults: faults::Faults::from_env(),
        held: turn::Held::default(),
        answering: HashSet::new(),
    };
    for addr in external {
        rt.reach.confirmed(addr.clone());
        rt.swarm.add_external_address(addr);
    }
    rt.load_address_book();
    for addr in rt.bootstrap.clone() {
        // Known by id, a bootstrap node is dialed again whenever the node loses it (it is often
        // the only relay and way into the DHT a node behind a NAT has).
        let mut base = addr.clone();
        if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = base.pop() {
            rt.learn_addr(peer, base);
        }
        if let Err(e) = rt.swarm.dial(addr.clone()) {
            tracing::warn!(target: "node", "cannot dial bootstrap {addr}: {e}");
        }
    }
    rt.refresh_members();
    rt.refresh_topics();
    tracing::info!(target: "node", node = %rt.engine.node_id(), "node started");

    // The turns run on a thread of their own (see the module's doc); the servers, libp2p's
    // connection tasks and the caller stay on the runtime's workers.
    let (stop_turns, turns_stopped) = oneshot::channel::<()>();
    let turns = rt
        .turns(calls_rx, turns_stopped)
        .instrument(tracing::Span::current());
    let threaded = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    // The data dir stays locked until the store is closed: if this future is dropped while a
    // turn runs, the thread's share of the lock goes only when the turn is over.
    let lock = std::sync::Arc::new(lock);
    let calls_rx = if threaded {
        let (done, turns_done) = oneshot::channel();
        let handle = tokio::runtime::Handle::current();
        let held = lock.clone();
        std::thread::Builder::new()
            .name("coflow-turns".into())
            .spawn(move || {
                let calls = handle.block_on(turns);
                drop(held);
                let _ = done.send(calls);
            })
            .map_err(|source| Error::Io {
                path: opts.home.clone(),
                source,
            })?;
        until_stopped(turns_done.map(Result::ok), shutdown, stop_turns).await
    } else {
        until_stopped(turns.map(Some), shutdown, stop_turns).await
    };
    let _ = stop.send(true);
    // No calls back: the turns ended without being told to (a panic, in the log).
    let ended = calls_rx.is_some();
    finish(tasks, calls_rx, &opts.home).await;
    let _ = std::fs::remove_file(&socket_path);
    drop(lock);
    if !ended {
        tracing::error!(target: "node", "the node's turns ended unexpectedly; the node stopped");
        return Err(Error::Invalid(
            "the node stopped unexpectedly (its turn loop panicked; the log says where)".into(),
        ));
    }
    tracing::info!(target: "node", "node stopped");
    Ok(())
}

impl Runtime {
    /// The turn loop, until `stop` fires (or its sender is dropped): the calls not taken.
    async fn turns(
        mut self,
        mut calls_rx: mpsc::Receiver<(Call, Pending)>,
        mut stop: oneshot::Receiver<()>,
    ) -> mpsc::Receiver<(Call, Pending)> {
        let rt = &mut self;
        loop {
            let wake = rt.next_tick();
            let first = tokio::select! {
                event = rt.swarm.select_next_some() => Input::Swarm(Box::new(event)),
                Some((call, reply)) = calls_rx.recv() => Input::Call(call, reply),
                _ = tokio::time::sleep_until(wake.into()) => Input::Tick,
                _ = tokio::time::sleep_until(
                    rt.peers
                        .next_closing()
                        .unwrap_or_else(|| Instant::now() + TICK)
                        .into(),
                ), if rt.peers.next_closing().is_some() => Input::Close,
                _ = &mut stop => break,
            };
            let grouped = match rt.engine.repo().begin_group() {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(target: "node", "cannot open a store transaction: {e}");
                    false
                }
            };
            // The engine's clock for this turn: it reads none of its own.
            let now = rt.now_ms();
            rt.engine.set_now(now, crate::clock::system_clock_ms());
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
        calls_rx
    }
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Swarm(event) => self.on_swarm_event(*event),
            Input::Call(call, reply) => self.on_call(call, reply),
            Input::Tick => self.on_tick(),
            Input::Close => self.close_due(),
        }
    }

    /// When the next tick is due: when the engine next has work ([`Engine::next_wake`]), but no
    /// later than the runtime's own periodic work, every [`TICK`]; and not sooner than
    /// [`MIN_TICK`] from now, so a deadline the engine keeps reporting cannot spin the loop.
    fn next_tick(&self) -> Instant {
        let engine = self
            .engine
            .next_wake()
            .map(|ms| self.started + Duration::from_millis(ms.saturating_sub(1)));
        let due = engine.map_or(self.next_full_tick, |e| e.min(self.next_full_tick));
        due.max(Instant::now() + MIN_TICK)
    }

    fn on_tick(&mut self) {
        let now = self.now_ms();
        self.engine.tick(now);
        let instant = Instant::now();
        if instant < self.next_full_tick {
            // Woken early for the engine's sake (a deadline): the rest waits for its time.
            return;
        }
        self.next_full_tick = instant + TICK;
        self.close_due();
        // Lift bans whose time is up.
        for peer in self.peers.lift_bans(instant) {
            if !self.faults.partitioned(&peer) {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
        }
        let swarm = &self.swarm;
        self.peers.prune(instant, |p| swarm.is_connected(p));
        // Keep in touch with enough members of our flows: what changed on every tick, every
        // flow on a sweep.
        let changed = self.engine.take_changed();
        let sweep = instant >= self.next_sweep;
        if sweep {
            self.next_sweep = instant + SWEEP;
        }
        if sweep || !changed.is_empty() {
            self.refresh_members();
        } else {
            for peer in self.wanted_unconnected() {
                self.dial(peer);
            }
        }
        if sweep {
            self.prune_address_book();
            self.redial_bootstrap();
            self.refresh_topics();
        } else {
            self.refresh_topics_of(&changed);
        }
        self.use_dht(&changed, sweep);
        self.plan_reach(instant);
        self.send_waiting_joins(instant);
        self.expire_joins(instant);
    }

    /// Gives up on joins that take too long.
    fn expire_joins(&mut self, now: Instant) {
        for (flow, waiters) in self.pending_joins.iter_mut() {
            let (late, keep): (Vec<_>, Vec<_>) = waiters
                .drain(..)
                .partition(|(_, deadline)| *deadline <= now);
            *waiters = keep;
            for (tx, _) in late {
                let _ = tx.send(Err(Error::Invalid(format!(
                    "joining flow {flow} timed out: no member node could be reached"
                ))));
            }
        }
        self.pending_joins.retain(|_, w| !w.is_empty());
    }
}
