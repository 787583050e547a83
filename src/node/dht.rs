//! The DHT (Kademlia): joining it, provider records for the flows held here, and lookups of
//! members this node cannot reach by the addresses it knows.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use libp2p::{kad, PeerId};

use super::{Runtime, DHT_RETRY};
use crate::flow::FlowId;

#[derive(Default)]
pub(crate) struct Dht {
    /// Flows announced in the DHT (provider records under their tags), and when we last asked
    /// the DHT for a flow's providers.
    provided: HashSet<FlowId>,
    provider_queries: HashMap<FlowId, Instant>,
    last_bootstrap: Option<Instant>,
}

impl Runtime {
    pub(super) fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer, addresses, ..
            } => {
                for a in addresses.iter() {
                    self.learn_addr(peer, a.clone());
                }
                self.reach_if_member(peer);
            }
            kad::Event::OutboundQueryProgressed { result, .. } => self.on_kad_result(result),
            _ => {}
        }
    }

    fn on_kad_result(&mut self, result: kad::QueryResult) {
        match result {
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
        }
    }

    /// Dials `peer` if this node wants to reach it and is not connected yet.
    fn reach_if_member(&mut self, peer: PeerId) {
        if self.wanted.contains(&peer) && !self.swarm.is_connected(&peer) {
            self.peers.clear_backoff(&peer);
            self.dial(peer);
        }
    }

    /// Uses the DHT: join it, announce the flows held here under their tags, and look up
    /// members this node cannot reach by the addresses it knows. Flows are looked at when
    /// `flows` names them (their members or connections changed) and, with `sweep`, all of
    /// them (a new flow is provided, a lonely one asked about again after [`DHT_RETRY`]).
    pub(super) fn use_dht(&mut self, flows: &[FlowId], sweep: bool) {
        let now = Instant::now();
        let kad = &mut self.swarm.behaviour_mut().kad;
        if self
            .dht
            .last_bootstrap
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
            && kad.bootstrap().is_ok()
        {
            self.dht.last_bootstrap = Some(now);
        }
        let flows: Vec<FlowId> = if sweep {
            self.dht
                .provider_queries
                .retain(|_, t| now.duration_since(*t) <= DHT_RETRY);
            self.engine.repo().flow_ids().unwrap_or_default()
        } else {
            let repo = self.engine.repo();
            flows
                .iter()
                .filter(|f| matches!(repo.holds(f), Ok(true)))
                .copied()
                .collect()
        };
        for flow in &flows {
            if self.dht.provided.insert(*flow) {
                let key = kad::RecordKey::new(&crate::wire::flow_tag(flow));
                let _ = self.swarm.behaviour_mut().kad.start_providing(key);
            }
        }
        for peer in self.wanted_unconnected() {
            if self.peers.lookup_due(peer, now) {
                self.swarm.behaviour_mut().kad.get_closest_peers(peer);
            }
        }
        // Flows with no member connected: ask who provides them.
        for flow in flows {
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
            let asked = self
                .dht
                .provider_queries
                .get(&flow)
                .is_some_and(|t| now.duration_since(*t) <= DHT_RETRY);
            if lonely && !asked {
                self.dht.provider_queries.insert(flow, now);
                let key = kad::RecordKey::new(&crate::wire::flow_tag(&flow));
                self.swarm.behaviour_mut().kad.get_providers(key);
            }
        }
    }
}
