//! Gossip: flow topics, who subscribes to them, announcing new heads, and judging received
//! announcements (passed on only once this node holds what they name).

use super::*;

/// How long a received announcement waits for its changes to arrive before it is dropped
/// unforwarded (gossip keeps a message for validation about 10 s; see `net.rs`).
pub const ANNOUNCE_PATIENCE_MS: u64 = 8_000;

/// Most announcements waiting for their changes at once; beyond it the oldest is dropped.
pub const MAX_WAITING_ANNOUNCEMENTS: usize = 1024;

/// An announcement held back until this node has the changes it names.
pub(super) struct Waiting {
    pub(super) id: Vec<u8>,
    pub(super) via: NodeId,
    pub(super) flow: FlowId,
    pub(super) heads: Vec<ChangeHash>,
    pub(super) since: u64,
}

impl<S: Storage> Engine<S> {
    /// The gossip topic of a flow held here.
    pub(super) fn topic(&mut self, flow: &FlowId) -> String {
        if let Some(t) = self.topic_of.get(flow) {
            return t.clone();
        }
        let t = wire::flow_topic(flow);
        self.topic_of.insert(*flow, t.clone());
        self.topics.insert(t.clone(), *flow);
        t
    }

    /// The flow held here as a member whose topic this is, if any. The map is filled as flows
    /// arrive ([`Engine::absorb`]), are announced, and by [`Engine::member_topics`] (the runtime
    /// calls it at start, on every tick and when a flow is created), so a relayed message costs
    /// one lookup, not a scan of the store.
    pub(super) fn flow_of_topic(&self, topic: &str) -> Option<FlowId> {
        self.topics.get(topic).copied()
    }

    pub(super) fn announce(&mut self, flow: &FlowId) {
        let heads = self.heads(flow);
        if heads.is_empty() {
            return;
        }
        let topic = self.topic(flow);
        self.stats.announcements_sent += 1;
        self.stats.announcement_bytes += wire::encode_announce(&heads).len() as u64;
        self.out.announce(topic, heads);
    }

    /// The gossip topics this node subscribes to: those of the flows it holds as a member.
    pub fn member_topics(&mut self) -> Vec<String> {
        let me = self.me;
        let mut out = Vec::new();
        for flow in self.repo.flow_ids().unwrap_or_default() {
            if self.is_member(&flow, &me) {
                out.push(self.topic(&flow));
            }
        }
        out
    }

    /// The flow's gossip topic, if this node holds it as a member (see [`Engine::member_topics`]).
    pub fn member_topic(&mut self, flow: &FlowId) -> Option<String> {
        let me = self.me;
        (self.holds(flow) && self.is_member(flow, &me)).then(|| self.topic(flow))
    }

    /// A peer was seen subscribed to a flow's topic: gossip reaches it.
    pub fn peer_subscribed(&mut self, peer: &NodeId, topic: &str) {
        // Not proof that it holds the flow: a node relays topics it is not a member of (a member
        // added a moment ago relays before it has the flow).
        if let Some(flow) = self.flow_of_topic(topic) {
            self.subscribers
                .entry(flow)
                .or_default()
                .insert(*peer);
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
            self.out.validate(id, *via, verdict);
        }
    }

    pub(super) fn judge_announcement(
        &mut self,
        id: &[u8],
        via: &NodeId,
        source: Option<&NodeId>,
        topic: &str,
        data: &[u8],
    ) -> Option<Verdict> {
        let me = self.me;
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
        if self
            .holders
            .entry(flow)
            .or_default()
            .insert(*source)
        {
            self.changed.insert(flow);
        }
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
            self.out.dial(source);
            // Meanwhile ask a connected member (any other than `via` first).
            let candidates: Vec<NodeId> = self
                .connected
                .keys()
                .filter(|p| *p != via)
                .cloned()
                .chain(std::iter::once(*via))
                .collect();
            let member = candidates.into_iter().find(|p| self.is_member(&flow, p));
            if let Some(p) = member {
                self.want(&p, &flow, &missing);
            }
        }
        if self.waiting.len() >= MAX_WAITING_ANNOUNCEMENTS {
            if let Some(old) = self.waiting.pop_front() {
                self.out.validate(old.id, old.via, Verdict::Ignore);
            }
        }
        self.waiting.push_back(Waiting {
            id: id.to_vec(),
            via: *via,
            flow,
            heads: missing,
            since: self.now,
        });
        None
    }

    /// Changes arrived in `flow`: pass on the announcements they complete. Returns whether any
    /// announcement named them.
    pub(super) fn settle_waiting(&mut self, flow: &FlowId) -> bool {
        if !self.waiting.iter().any(|w| w.flow == *flow) {
            return false;
        }
        let waiting = std::mem::take(&mut self.waiting);
        let mut settled = false;
        for w in waiting {
            if w.flow == *flow && self.missing(flow, &w.heads).is_empty() {
                settled = true;
                self.out.validate(w.id, w.via, Verdict::Accept);
            } else {
                self.waiting.push_back(w);
            }
        }
        settled
    }
}
