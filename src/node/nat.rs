//! Reaching across NATs, the runtime's side: what the swarm reports about reachability
//! (AutoNAT, UPnP, relays, hole punching) goes into [`Reach`](super::reach::Reach), whose
//! actions (reserve on a relay, give a reservation up) are carried out here; the relay this
//! node offers follows its reachability; and join requests to an inviter with no known address
//! wait for the DHT to find it.

use std::time::Instant;

use libp2p::{autonat, dcutr, identify, relay, upnp, PeerId};

use super::reach::{Action, Reachability};
use super::Runtime;
use crate::identity::NodeId;
use crate::net;
use crate::wire::{Frame, JoinRequest};

/// A join request held until its inviter's address is known.
pub(crate) struct WaitingJoin {
    node: NodeId,
    flow: String,
    request: JoinRequest,
    since: Instant,
}

impl Runtime {
    /// A peer's identify: whether it offers a relay, over a connection this node dialed directly.
    pub(super) fn on_identify_relay(
        &mut self,
        peer: PeerId,
        connection: libp2p::swarm::ConnectionId,
        info: &identify::Info,
    ) {
        let offers = info
            .protocols
            .iter()
            .any(|p| p.as_ref() == net::RELAY_HOP_PROTOCOL);
        let direct = self.peers.dialed_directly(&peer, connection);
        if offers && direct.is_none() {
            // Offered over a connection the peer dialed, or through a relay: no address to
            // reach it at from here; keep what we knew.
            return;
        }
        let bootstrap = self
            .bootstrap
            .iter()
            .any(|a| a.iter().last() == Some(libp2p::multiaddr::Protocol::P2p(peer)));
        let preferred = bootstrap || self.wanted.contains(&peer);
        self.reach.relay_offered(peer, offers, direct, preferred);
    }

    pub(super) fn on_autonat_event(&mut self, event: autonat::v2::client::Event) {
        match &event.result {
            Ok(()) => tracing::info!(target: "node", addr = %event.tested_addr, server = %event.server, "reachable at this address"),
            Err(e) => tracing::info!(target: "node", addr = %event.tested_addr, server = %event.server, "not reachable at this address: {e}"),
        }
        self.reach.tested(event.result.is_ok());
        self.follow_reachability();
    }

    pub(super) fn on_autonat_v1_event(&mut self, event: autonat::v1::Event) {
        match event {
            autonat::v1::Event::StatusChanged { new, .. } => {
                tracing::info!(target: "node", "AutoNAT v1: {new:?}");
                match new {
                    autonat::v1::NatStatus::Public(_) => self.reach.tested(true),
                    autonat::v1::NatStatus::Private => self.reach.tested(false),
                    autonat::v1::NatStatus::Unknown => {}
                }
                self.follow_reachability();
            }
            other => tracing::debug!(target: "node", "AutoNAT v1: {other:?}"),
        }
    }

    pub(super) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    tracing::info!(target: "node", relay = %relay_peer_id, "reachable through a relay");
                }
                self.reach.accepted(&relay_peer_id);
            }
            other => tracing::debug!(target: "node", "relay client: {other:?}"),
        }
    }

    pub(super) fn on_relay_event(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                tracing::info!(target: "node", peer = %src_peer_id, "relaying for a node behind a NAT")
            }
            other => tracing::debug!(target: "node", "relay: {other:?}"),
        }
    }

    pub(super) fn on_dcutr_event(&mut self, event: dcutr::Event) {
        match event.result {
            Ok(_) => {
                tracing::info!(target: "node", peer = %event.remote_peer_id, "hole punched: direct connection");
                // The relay need not carry what the direct connection now does.
                for id in self.peers.superseded_relayed(&event.remote_peer_id) {
                    self.swarm.close_connection(id);
                }
            }
            Err(e) => {
                tracing::info!(target: "node", peer = %event.remote_peer_id, "no hole punched, staying relayed: {e}")
            }
        }
    }

    pub(super) fn on_upnp_event(&mut self, event: upnp::Event) {
        match event {
            upnp::Event::NewExternalAddr { external_addr, .. } => {
                tracing::info!(target: "node", addr = %external_addr, "port mapped by the router (UPnP)")
            }
            upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                tracing::info!(target: "node", addr = %external_addr, "the router's port mapping expired (UPnP)")
            }
            upnp::Event::GatewayNotFound => {
                tracing::debug!(target: "node", "no UPnP router found")
            }
            upnp::Event::NonRoutableGateway => {
                tracing::debug!(target: "node", "the UPnP router is not on the internet itself")
            }
        }
    }

    /// Carries out what [`Reach::plan`](super::reach::Reach::plan) says, and offers a relay
    /// only while reachable.
    pub(super) fn plan_reach(&mut self, now: Instant) {
        for action in self.reach.plan(now) {
            match action {
                Action::Reserve { relay, addr } => match self.swarm.listen_on(addr.clone()) {
                    Ok(id) => {
                        tracing::info!(target: "node", %relay, "asking a relay for a reservation");
                        self.reach.reserving(id, relay);
                    }
                    Err(e) => {
                        tracing::warn!(target: "node", %addr, "cannot listen through the relay: {e}");
                        self.reach.reserve_failed(relay, now);
                    }
                },
                Action::Release(id) => {
                    self.swarm.remove_listener(id);
                    self.reach.listener_closed(id, now);
                }
            }
        }
        self.follow_reachability();
    }

    /// The relay served follows this node's reachability as [`Reach`] judges it (rust-libp2p's
    /// own rule would count a circuit address through another relay as reachable).
    ///
    /// [`Reach`]: super::reach::Reach
    pub(super) fn follow_reachability(&mut self) {
        let serve = self.relay_serve && self.reach.reachability() == Reachability::Public;
        let status = if serve {
            relay::Status::Enable
        } else {
            relay::Status::Disable
        };
        self.swarm.behaviour_mut().relay.set_status(Some(status));
    }

    /// Sends a join request now, or holds it until the DHT finds the inviter (a ticket made
    /// while its node was stopped, or before it knew an address of its own, names the node
    /// only).
    pub(super) fn send_join(&mut self, node: NodeId, flow: String, request: JoinRequest) {
        let Some(peer) = super::peer_of(&node) else {
            return;
        };
        let addrs = self.peers.addrs(&peer);
        if addrs.is_empty() && !self.swarm.is_connected(&peer) {
            if self.peers.lookup_due(peer, Instant::now()) {
                self.swarm.behaviour_mut().kad.get_closest_peers(peer);
            }
            self.joins_waiting
                .entry(peer)
                .or_default()
                .push(WaitingJoin {
                    node,
                    flow,
                    request,
                    since: Instant::now(),
                });
            return;
        }
        let id = self.swarm.behaviour_mut().join.send_request_with_addresses(
            &peer,
            Frame::Message(request),
            addrs,
        );
        self.join.sent.insert(id, (node, flow));
    }

    /// Sends the held join requests whose inviter is now known, asks the DHT again about the
    /// others, and drops those older than a join may take.
    pub(super) fn send_waiting_joins(&mut self, now: Instant) {
        let peers: Vec<PeerId> = self.joins_waiting.keys().copied().collect();
        for peer in peers {
            let known = self.swarm.is_connected(&peer) || !self.peers.addrs(&peer).is_empty();
            if known {
                for w in self.joins_waiting.remove(&peer).unwrap_or_default() {
                    self.send_join(w.node, w.flow, w.request);
                }
                continue;
            }
            if let Some(list) = self.joins_waiting.get_mut(&peer) {
                list.retain(|w| now.duration_since(w.since) < super::JOIN_TIMEOUT);
                if list.is_empty() {
                    self.joins_waiting.remove(&peer);
                } else if self.peers.lookup_due(peer, now) {
                    self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                }
            }
        }
    }
}
