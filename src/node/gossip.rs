//! Gossip: the topics subscribed as a member and as a relay, who subscribes to what, and
//! announcements received.

use std::collections::{HashMap, HashSet};

use libp2p::{gossipsub, PeerId};

use super::{node_of, Runtime, MAX_RELAYED_TOPICS};
use crate::flow::FlowId;
use crate::net;

#[derive(Default)]
pub(crate) struct Topics {
    /// Gossip topics subscribed as a member, and as a relay (a topic two or more connected
    /// peers subscribe to, for a flow this node is not a member of).
    member: HashSet<String>,
    relayed: HashSet<String>,
    /// Which connected peers subscribe to which topics.
    peers: HashMap<String, HashSet<PeerId>>,
}

impl Topics {
    /// `peer` is no longer connected: it subscribes to nothing here.
    pub(crate) fn peer_gone(&mut self, peer: &PeerId) {
        for peers in self.peers.values_mut() {
            peers.remove(peer);
        }
        self.peers.retain(|_, peers| !peers.is_empty());
    }

    /// The topics to relay: those of flows this node is not a member of that the most
    /// connected peers (two at least) share, up to [`MAX_RELAYED_TOPICS`].
    fn relay_choice(&self) -> HashSet<String> {
        let mut shared: Vec<(&String, usize)> = self
            .peers
            .iter()
            .map(|(t, peers)| (t, peers.len()))
            .filter(|(t, n)| *n >= 2 && !self.member.contains(*t))
            .collect();
        shared.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        shared
            .into_iter()
            .take(MAX_RELAYED_TOPICS)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

impl Runtime {
    /// Subscribes to the gossip topics of the flows held here as a member, and relays topics
    /// that two or more connected peers share.
    pub(super) fn refresh_topics(&mut self) {
        let topics: HashSet<String> = self.engine.member_topics().into_iter().collect();
        let added = topics.difference(&self.topics.member).cloned().collect();
        let gone = self.topics.member.difference(&topics).cloned().collect();
        self.change_topics(added, gone);
    }

    /// Like [`Runtime::refresh_topics`], for the flows in `flows` only (those whose members
    /// changed): costs what changed, not every flow held. The relayed topics are chosen again
    /// every time (from the topics connected peers subscribe to, not from the flows held).
    pub(super) fn refresh_topics_of(&mut self, flows: &[FlowId]) {
        let (mut added, mut gone) = (Vec::new(), Vec::new());
        for flow in flows {
            match self.engine.member_topic(flow) {
                Some(t) if !self.topics.member.contains(&t) => added.push(t),
                Some(_) => {}
                None => {
                    let t = crate::wire::flow_topic(flow);
                    if self.topics.member.contains(&t) {
                        gone.push(t);
                    }
                }
            }
        }
        if !added.is_empty() || !gone.is_empty() {
            self.change_topics(added, gone);
        } else {
            self.choose_relays();
        }
    }

    /// Subscribes to `added` and leaves `gone` as a member, then chooses the relayed topics.
    fn change_topics(&mut self, added: Vec<String>, gone: Vec<String>) {
        let gossip = &mut self.swarm.behaviour_mut().gossip;
        let state = &mut self.topics;
        let mut seen = Vec::new();
        for t in &added {
            if let Err(e) = net::subscribe(gossip, t) {
                tracing::warn!(target: "node", topic = %t, "cannot subscribe: {e}");
            }
            // Peers that subscribed before this node held the flow.
            for p in state.peers.get(t).into_iter().flatten() {
                seen.push((*p, t.clone()));
            }
        }
        for t in &gone {
            if !state.relayed.contains(t) {
                gossip.unsubscribe(&gossipsub::IdentTopic::new(t.clone()));
            }
            state.member.remove(t);
        }
        for t in added {
            state.relayed.remove(&t);
            state.member.insert(t);
        }
        for (peer, topic) in seen {
            if let Some(node) = node_of(&peer) {
                self.engine.peer_subscribed(&node, &topic);
            }
        }
        self.choose_relays();
    }

    /// Relays the topics that two or more connected peers share (see [`Topics::relay_choice`]).
    fn choose_relays(&mut self) {
        let gossip = &mut self.swarm.behaviour_mut().gossip;
        let state = &mut self.topics;
        let relay = state.relay_choice();
        for t in relay.difference(&state.relayed) {
            tracing::debug!(target: "node", topic = %t, "relaying a topic");
            let _ = net::subscribe(gossip, t);
        }
        for t in state.relayed.difference(&relay) {
            gossip.unsubscribe(&gossipsub::IdentTopic::new(t.clone()));
        }
        state.relayed = relay;
    }

    pub(super) fn on_gossip_event(&mut self, event: gossipsub::Event) {
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
                self.topics
                    .peers
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
                if let Some(peers) = self.topics.peers.get_mut(topic.as_str()) {
                    peers.remove(&peer_id);
                    if peers.is_empty() {
                        self.topics.peers.remove(topic.as_str());
                    }
                }
            }
            _ => {}
        }
    }
}
