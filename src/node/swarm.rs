//! Listening, swarm events (listen addresses, connections, identify, mDNS) and dialing: which
//! members to stay connected to, and the address book they are dialed by.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Instant;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, mdns, ping, Multiaddr, PeerId, Swarm};

use super::{
    node_of, now_secs, peer_of, Runtime, ADDRESS_BOOK_SIZE, META_LISTEN_PORT,
    META_LISTEN_PORT_QUIC,
};
use crate::error::{Error, Result};
use crate::net::{self, Behaviour, BehaviourEvent};
use crate::repo::Repo;
use crate::repo::META_LISTEN_ADDRS;
use crate::store::{Peers, Storage};

impl Runtime {
    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let address = self.without_own_id(address);
                let port = match (address.iter().nth(1), address.iter().nth(2)) {
                    _ if net::is_relayed(&address) => None,
                    (Some(Protocol::Tcp(port)), _) => Some((META_LISTEN_PORT, port)),
                    (Some(Protocol::Udp(port)), Some(Protocol::QuicV1)) => {
                        Some((META_LISTEN_PORT_QUIC, port))
                    }
                    _ => None,
                };
                if let Some((key, port)) = port {
                    let _ = self
                        .engine
                        .repo()
                        .store()
                        .reader()
                        .set_meta(key, &port.to_string());
                }
                // A reservation's renewal tells the same address again; a relay (which chooses
                // the addresses and how often it renews) gets at most a few circuits in.
                let through_same_relay = |a: &Multiaddr| {
                    net::is_relayed(a) && relay_of(a).is_some() && relay_of(a) == relay_of(&address)
                };
                let crowded = net::is_relayed(&address)
                    && self.listen.iter().filter(|a| through_same_relay(a)).count()
                        >= MAX_CIRCUITS_PER_RELAY;
                if self.listen.contains(&address) || crowded {
                    return;
                }
                tracing::info!(target: "node", "listening on {address}/p2p/{}", self.swarm.local_peer_id());
                self.listen.push(address);
                self.record_listen_addrs();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let address = self.without_own_id(address);
                self.listen.retain(|a| a != &address);
                self.record_listen_addrs();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let Some(node) = node_of(&peer_id) else {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                };
                let relayed = endpoint.is_relayed();
                let dialed = endpoint
                    .is_dialer()
                    .then(|| endpoint.get_remote_address().clone());
                if let Some(addr) = &dialed {
                    self.learn_addr(peer_id, addr.clone());
                }
                self.peers.opened(
                    peer_id,
                    connection_id,
                    endpoint.get_remote_address(),
                    relayed,
                    dialed.filter(|_| !relayed),
                );
                self.reach.connected(Instant::now());
                self.peers.clear_backoff(&peer_id);
                self.remember_peer(&peer_id);
                if num_established.get() == 1 {
                    tracing::info!(target: "node", peer = %node, "connected");
                    let now = self.now_ms();
                    self.engine.peer_connected(node, now);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.peers.closed(&peer_id, connection_id);
                if num_established > 0 {
                    return;
                }
                if let Some(node) = node_of(&peer_id) {
                    tracing::info!(target: "node", peer = %node, "disconnected");
                    self.engine.peer_disconnected(&node);
                }
                self.topics.peer_gone(&peer_id);
                self.reach.disconnected(&peer_id);
            }
            // A behaviour's word is not enough (AutoNAT v1 takes one server's): what `Reach` has
            // not taken stays out of what identify tells peers. A relay's circuit stays.
            SwarmEvent::ExternalAddrConfirmed { address }
                if !net::is_relayed(&address) && !self.reach.is_external(&address) =>
            {
                tracing::debug!(target: "node", "not taken as external (yet): {address}");
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                self.reach.expired(&address);
                self.follow_reachability();
                self.record_listen_addrs();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                if let Err(e) = reason {
                    tracing::info!(target: "node", "a listener closed: {e}");
                }
                // The swarm tells of no expired address for a listener that closed: its
                // addresses (a relay's circuit, say) go here, or tickets would keep them.
                for a in addresses {
                    let a = self.without_own_id(a);
                    self.listen.retain(|l| *l != a);
                }
                self.record_listen_addrs();
                self.reach.listener_closed(listener_id, Instant::now());
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                tracing::debug!(target: "node", "peers see this node at {address}");
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(target: "node", %peer, "dial failed: {error}");
                self.peers.dial_failed(peer, Instant::now());
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
            BehaviourEvent::Identify(
                identify::Event::Received {
                    peer_id,
                    info,
                    connection_id,
                }
                | identify::Event::Pushed {
                    peer_id,
                    info,
                    connection_id,
                },
            ) => {
                self.on_identify_relay(peer_id, connection_id, &info);
                let dht = info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == net::KAD_PROTOCOL);
                for addr in info.listen_addrs {
                    if let Some(addr) = self.addr_of(&peer_id, addr) {
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
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => {
                let answered = !matches!(
                    result,
                    Err(ping::Failure::Timeout | ping::Failure::Other { .. })
                );
                if self.peers.pinged(&peer, connection, answered) {
                    tracing::info!(target: "node", %peer, "closing a connection that answers no ping");
                    self.swarm.close_connection(connection);
                }
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
            BehaviourEvent::Sync(event) => self.on_rr_event::<super::rr::Sync>(event),
            BehaviourEvent::Join(event) => self.on_rr_event::<super::rr::Join>(event),
            BehaviourEvent::Autonat(event) => self.on_autonat_event(event),
            BehaviourEvent::AutonatV1(event) => self.on_autonat_v1_event(event),
            BehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            BehaviourEvent::Relay(event) => self.on_relay_event(event),
            BehaviourEvent::Dcutr(event) => self.on_dcutr_event(event),
            BehaviourEvent::Upnp(event) => self.on_upnp_event(event),
            _ => {}
        }
    }

    pub(super) fn record_listen_addrs(&mut self) {
        let me = *self.swarm.local_peer_id();
        // Where tickets say this node is: what it listens on (circuits through relays too) and
        // the addresses confirmed reachable from outside (a router's mapped port).
        let mut addrs: Vec<String> = Vec::new();
        for a in self.listen.iter().chain(self.reach.external()) {
            let a = a.clone().with(Protocol::P2p(me)).to_string();
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
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

    /// Loads the stored address book (and the backoff of peers that kept failing before).
    pub(super) fn load_address_book(&mut self) {
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
                self.peers.failed_before(peer, failures, Instant::now());
            }
        }
    }

    /// `addr` as an address to reach `peer` at, without a trailing `/p2p/<peer>`; `None` for
    /// what cannot be one: an unspecified IP, an address naming another node last, or one of
    /// this node's own addresses. A peer's identify record has been seen to list the addresses
    /// of the node it tells them to (a relay's, say), and a node that records those under the
    /// peer dials itself, or its relay, for it: `WrongPeerId`, and the peer is never reached.
    pub(super) fn addr_of(&self, peer: &PeerId, mut addr: Multiaddr) -> Option<Multiaddr> {
        match addr.iter().last() {
            Some(Protocol::P2p(p)) if p == *peer => {
                addr.pop();
            }
            Some(Protocol::P2p(_)) => return None,
            _ => {}
        }
        // A circuit through the relay this node uses too reads the same as its own until the
        // peer's id is put back at the end (as a dial does): never taken for ours.
        let ours = !net::is_relayed(&addr)
            && self
                .listen
                .iter()
                .chain(self.reach.external())
                .any(|a| *a == addr);
        (!addr.is_empty() && !is_unspecified(&addr) && !ours).then_some(addr)
    }

    pub(super) fn learn_addr(&mut self, peer: PeerId, addr: Multiaddr) {
        let Some(addr) = self.addr_of(&peer, addr) else {
            return;
        };
        let swarm = &self.swarm;
        if self
            .peers
            .learn_addr(peer, &addr, Instant::now(), |p| swarm.is_connected(p))
        {
            self.swarm.add_peer_address(peer, addr);
        }
    }

    /// Keeps the stored address book within [`ADDRESS_BOOK_SIZE`] rows, of the nodes seen last:
    /// every node that connects gets a row, strangers included.
    pub(super) fn prune_address_book(&mut self) {
        let store = self.engine.repo().store();
        match store.reader().forget_peers(ADDRESS_BOOK_SIZE) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(target: "node", "forgot {n} nodes in the address book"),
            Err(e) => tracing::warn!(target: "node", "cannot prune the address book: {e}"),
        }
    }

    fn remember_peer(&mut self, peer: &PeerId) {
        let addrs = self.peers.addr_strings(peer);
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
    pub(super) fn refresh_members(&mut self) {
        let (must, more) = self.engine.reach_plan();
        let mut wanted: HashSet<PeerId> = must.iter().filter_map(peer_of).collect();
        let now = Instant::now();
        for (count, candidates) in more {
            // Skip candidates that are banned or backing off, so an offline member does not
            // keep the flow from reaching one that is online.
            let usable = candidates
                .iter()
                .filter_map(peer_of)
                .filter(|p| self.peers.may_dial(p, now));
            wanted.extend(usable.take(count));
        }
        self.wanted = wanted;
        for peer in self.wanted_unconnected() {
            self.dial(peer);
        }
    }

    /// One of this node's listen addresses as it keeps them: a relay's circuit comes with this
    /// node's id at the end, the others without.
    fn without_own_id(&self, mut addr: Multiaddr) -> Multiaddr {
        if addr.iter().last() == Some(Protocol::P2p(*self.swarm.local_peer_id())) {
            addr.pop();
        }
        addr
    }

    /// The bootstrap nodes given with their id.
    pub(super) fn bootstrap_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.bootstrap.iter().filter_map(|a| match a.iter().last() {
            Some(Protocol::P2p(peer)) => Some(peer),
            _ => None,
        })
    }

    /// Dials the bootstrap nodes (those given with their id) this node is not connected to, as
    /// their dial backoff allows.
    pub(super) fn redial_bootstrap(&mut self) {
        let peers: Vec<PeerId> = self
            .bootstrap_peers()
            .filter(|p| !self.swarm.is_connected(p))
            .collect();
        for peer in peers {
            self.dial(peer);
        }
    }

    /// Wanted members this node is not connected to.
    pub(super) fn wanted_unconnected(&self) -> Vec<PeerId> {
        self.wanted
            .iter()
            .filter(|p| !self.swarm.is_connected(p))
            .copied()
            .collect()
    }

    pub(super) fn dial(&mut self, peer: PeerId) {
        let now = Instant::now();
        if !self.peers.may_dial(&peer, now) {
            return;
        }
        // With no address of our own, the swarm asks its behaviours (the DHT's routing table).
        let opts = DialOpts::peer_id(peer)
            .addresses(self.peers.addrs(&peer))
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(target: "node", %peer, "cannot dial: {e}");
        }
        self.peers.dialing(peer, Instant::now());
    }
}

/// Most circuit addresses kept through one relay.
const MAX_CIRCUITS_PER_RELAY: usize = 4;

/// The relay a circuit address goes through (the `/p2p/…` before `/p2p-circuit`).
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// Listens on `addrs`; with none, on all IPv4 interfaces over TCP and over QUIC, each on the
/// port it used last time if that is free (so peers that remember this node's address find it
/// again after a restart), else a fresh one.
pub(super) fn listen(swarm: &mut Swarm<Behaviour>, repo: &Repo, addrs: &[Multiaddr]) -> Result<()> {
    if addrs.is_empty() {
        for (key, template) in [
            (META_LISTEN_PORT, "/ip4/0.0.0.0/tcp/{}"),
            (META_LISTEN_PORT_QUIC, "/ip4/0.0.0.0/udp/{}/quic-v1"),
        ] {
            let at = |port: &str| -> Multiaddr {
                template
                    .replace("{}", port)
                    .parse()
                    .expect("valid multiaddr")
            };
            let last = repo.store().reader().meta(key)?;
            let preferred = last.filter(|p| p.parse::<u16>().is_ok()).map(|p| at(&p));
            let listening = preferred.is_some_and(|a| net::listen(swarm, &a).is_ok());
            if !listening {
                net::listen(swarm, &at("0")).map_err(|e| Error::Invalid(e.to_string()))?;
            }
        }
    } else {
        for addr in addrs {
            net::listen(swarm, addr).map_err(|e| Error::Invalid(e.to_string()))?;
        }
    }
    Ok(())
}

/// Whether an address is on a loopback interface.
pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}
