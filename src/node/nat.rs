//! Reaching across NATs, the runtime's side: what the swarm reports about reachability
//! (AutoNAT, UPnP, relays, hole punching) goes into [`Reach`](super::reach::Reach), whose
//! actions (reserve on a relay, give a reservation up) are carried out here; the relay this
//! node offers follows its reachability; and join requests to an inviter with no known address
//! wait for the DHT to find it.

use std::time::Instant;

use libp2p::{autonat, dcutr, identify, relay, upnp, Multiaddr, PeerId};

use super::reach::{Action, Reachability};
use super::Runtime;
use crate::flow::FlowId;
use crate::identity::NodeId;
use crate::net;
use crate::wire::{Frame, JoinRequest};

/// A join request on its way, and which of its one-time second chances it has had.
pub(super) struct SentJoin {
    pub(super) request: JoinRequest,
    /// Its dial failed and the DHT was asked for the inviter ([`Runtime::join_again`]).
    pub(super) asked_dht: bool,
    /// Its connection closed and it was sent again ([`Runtime::join_resend`]).
    pub(super) resent: bool,
}

/// A join request held until its inviter's address is known.
pub(crate) struct WaitingJoin {
    node: NodeId,
    flow: FlowId,
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
        let preferred = self.wanted.contains(&peer) || self.bootstrap_peers().any(|b| b == peer);
        self.reach.relay_offered(peer, offers, direct, preferred);
    }

    /// AutoNAT v2: a server dialed one of our addresses back (with a nonce) or could not. A
    /// success counts from a server on a public address only (one on our LAN reaching us says
    /// nothing of the internet).
    pub(super) fn on_autonat_event(&mut self, event: autonat::v2::client::Event) {
        let addr = event.tested_addr;
        match &event.result {
            Ok(()) => {
                let outside = self
                    .peers
                    .ip(&event.server)
                    .is_some_and(|ip| super::reach::is_public(&Multiaddr::from(ip)));
                tracing::info!(target: "node", %addr, server = %event.server, outside, "reachable at this address");
                if outside {
                    self.accept_external(addr);
                }
            }
            Err(e) => {
                tracing::info!(target: "node", %addr, server = %event.server, "not reachable at this address: {e}");
                self.reach.tested(false, Some(&addr));
                self.swarm.remove_external_address(&addr);
                self.record_listen_addrs();
            }
        }
        self.follow_reachability();
    }

    /// Takes `addr` as reachable from outside, if [`Reach`](super::reach::Reach) agrees:
    /// identify tells peers of it, tickets carry it.
    pub(super) fn accept_external(&mut self, addr: Multiaddr) {
        if self.reach.confirmed(addr.clone()) {
            tracing::info!(target: "node", "reachable from outside at {addr}");
            self.swarm.add_external_address(addr);
            self.record_listen_addrs();
        }
    }

    /// AutoNAT v1: a server's word that it reached an address counts once servers at two
    /// public IPs gave it ([`Reach::vouched`](super::reach::Reach::vouched)).
    pub(super) fn on_autonat_v1_event(&mut self, event: autonat::v1::Event) {
        match event {
            autonat::v1::Event::OutboundProbe(autonat::v1::OutboundProbeEvent::Response {
                peer,
                address,
                ..
            }) => {
                tracing::debug!(target: "node", %peer, %address, "AutoNAT v1: reached");
                let Some(ip) = self.peers.ip(&peer) else {
                    return;
                };
                if self.reach.vouched(address.clone(), ip) {
                    self.accept_external(address);
                }
            }
            autonat::v1::Event::StatusChanged { new, .. } => {
                tracing::info!(target: "node", "AutoNAT v1: {new:?}");
                if new == autonat::v1::NatStatus::Private {
                    self.reach.tested(false, None);
                }
            }
            other => tracing::debug!(target: "node", "AutoNAT v1: {other:?}"),
        }
        self.follow_reachability();
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
                tracing::info!(target: "node", addr = %external_addr, "port mapped by the router (UPnP)");
                self.accept_external(external_addr);
                self.follow_reachability();
            }
            upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                tracing::info!(target: "node", addr = %external_addr, "the router's port mapping expired (UPnP)");
                self.reach.expired(&external_addr);
                self.record_listen_addrs();
                self.follow_reachability();
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
    /// libp2p-relay 0.22 tells every connection it knows of when its status changes, relayed
    /// ones too, whose handler cannot take the message: their task panics and leaves a
    /// connection that looks open and carries nothing (found in review: a home whose router
    /// started forwarding its port lost its relayed link to the other member for good). So the
    /// status changes only while this node has no relayed connection; until then it waits.
    ///
    /// [`Reach`]: super::reach::Reach
    pub(super) fn follow_reachability(&mut self) {
        let serve = self.relay_serve && self.reach.reachability() == Reachability::Public;
        if serve == self.relay_serving || self.peers.any_relayed() {
            return;
        }
        let status = if serve {
            relay::Status::Enable
        } else {
            relay::Status::Disable
        };
        self.swarm.behaviour_mut().relay.set_status(Some(status));
        self.relay_serving = serve;
        tracing::info!(target: "node", "{} a relay", if serve { "offering" } else { "no longer offering" });
    }

    /// Sends a join request now, or holds it until the DHT finds the inviter (a ticket made
    /// while its node was stopped, or before it knew an address of its own, names the node
    /// only).
    pub(super) fn send_join(&mut self, node: NodeId, flow: FlowId, request: JoinRequest) {
        let Some(peer) = super::peer_of(&node) else {
            return;
        };
        let addrs = self.peers.addrs(&peer);
        if addrs.is_empty() && !self.swarm.is_connected(&peer) {
            self.hold_join(peer, node, flow, request);
            return;
        }
        let sent = self.joins_sent.entry((node, flow)).or_insert_with(|| SentJoin {
            request: request.clone(),
            asked_dht: false,
            resent: false,
        });
        sent.request = request.clone();
        let id = self.swarm.behaviour_mut().join.send_request_with_addresses(
            &peer,
            Frame::Message(request),
            addrs,
        );
        self.join.sent.insert(id, (node, flow));
    }

    /// A join request could not reach the inviter at the addresses known: the first time, it
    /// waits for the DHT (true); the second, it fails (false).
    pub(super) fn join_again(&mut self, node: &NodeId, flow: &FlowId) -> bool {
        let key = (*node, *flow);
        let Some(sent) = self.joins_sent.get_mut(&key) else {
            return false;
        };
        if sent.asked_dht {
            return false;
        }
        sent.asked_dht = true;
        let request = sent.request.clone();
        let Some(peer) = super::peer_of(node) else {
            return false;
        };
        tracing::info!(target: "node", %node, "the ticket's addresses did not answer; asking the DHT");
        // Asked now, whatever the last lookup: the addresses known are stale.
        self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        self.hold_join(peer, *node, *flow, request);
        true
    }

    /// A join request's connection closed while another to the inviter is open: the first
    /// time, it is sent again (true); the second, it fails (false). (Independent of
    /// [`Runtime::join_again`]: a join that waited for the DHT may still go over a relay whose
    /// connection closes once a hole is punched.)
    pub(super) fn join_resend(&mut self, node: &NodeId, flow: &FlowId) -> bool {
        let Some(peer) = super::peer_of(node) else {
            return false;
        };
        if !self.swarm.is_connected(&peer) {
            return false;
        }
        let Some(sent) = self.joins_sent.get_mut(&(*node, *flow)) else {
            return false;
        };
        if sent.resent {
            return false;
        }
        sent.resent = true;
        let request = sent.request.clone();
        tracing::info!(target: "node", %node, "the join's connection closed; sending it again");
        self.send_join(*node, *flow, request);
        true
    }

    fn hold_join(&mut self, peer: PeerId, node: NodeId, flow: FlowId, request: JoinRequest) {
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
    }

    /// Sends the held join requests whose inviter is now connected; dials the others (by the
    /// addresses the DHT may have brought meanwhile) and asks the DHT again as often as it is
    /// asked; drops those older than a join may take.
    pub(super) fn send_waiting_joins(&mut self, now: Instant) {
        let peers: Vec<PeerId> = self.joins_waiting.keys().copied().collect();
        for peer in peers {
            if self.swarm.is_connected(&peer) {
                for w in self.joins_waiting.remove(&peer).unwrap_or_default() {
                    self.send_join(w.node, w.flow, w.request);
                }
                continue;
            }
            let Some(list) = self.joins_waiting.get_mut(&peer) else {
                continue;
            };
            list.retain(|w| now.duration_since(w.since) < super::JOIN_TIMEOUT);
            if list.is_empty() {
                self.joins_waiting.remove(&peer);
                continue;
            }
            if !self.peers.addrs(&peer).is_empty() {
                self.dial(peer);
            }
            if self.peers.lookup_due(peer, now) {
                self.swarm.behaviour_mut().kad.get_closest_peers(peer);
            }
        }
    }
}
