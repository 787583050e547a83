//! Pulls: fetching announced heads, one peer at a time per flow, with the other announcers
//! queued behind it.

use super::*;

/// Most announced heads queued per announcer behind a fetch (the fetch that follows brings
/// everything the announcer has anyway).
pub const MAX_QUEUED_HEADS: usize = 256;

impl<S: Storage> Engine<S> {
    /// Which of `heads` this node does not have.
    pub(super) fn missing(&mut self, flow: &FlowId, heads: &[ChangeHash]) -> Vec<ChangeHash> {
        match self.repo.doc(flow) {
            Ok(doc) => heads
                .iter()
                .filter(|h| doc.get_change_meta_by_hash(h).is_none())
                .copied()
                .collect(),
            Err(_) => heads.to_vec(),
        }
    }

    /// Fetches `heads` of `flow` from `peer`: now, if no fetch for this flow is under way (or
    /// it is from the same peer); otherwise once the current one ends.
    pub(super) fn want(&mut self, peer: &NodeId, flow: &FlowId, heads: &[ChangeHash]) {
        match self.pulling.get(flow) {
            Some(p) if p != peer => {
                let queue = self.queued.entry(*flow).or_default();
                match queue.iter_mut().find(|(q, _)| q == peer) {
                    Some((_, hs)) => {
                        for h in heads {
                            if !hs.contains(h) && hs.len() < MAX_QUEUED_HEADS {
                                hs.push(*h);
                            }
                        }
                    }
                    None => queue.push((*peer, heads.to_vec())),
                }
                return;
            }
            _ => {
                self.pulling.insert(*flow, *peer);
            }
        }
        let now = self.now;
        let c = self
            .clients
            .entry((*peer, *flow))
            .or_insert_with(|| Conversation::fresh(1, now, None));
        for h in heads {
            if !c.wanted.contains(h) {
                c.wanted.push(*h);
            }
        }
        self.sync_with(peer, flow);
    }

    /// The fetch from `peer` for `flow` ended (the conversation came to rest, failed, or the
    /// peer left): start the next one for heads still missing.
    pub(super) fn pull_ended(&mut self, peer: &NodeId, flow: &FlowId) {
        if self.pulling.get(flow) != Some(peer) {
            return;
        }
        self.pulling.remove(flow);
        let mut queue = Vec::new();
        for (p, heads) in self.queued.remove(flow).unwrap_or_default() {
            let missing = self.missing(flow, &heads);
            // What arrived meanwhile, and announcers that left, are dropped (anti-entropy and
            // later announcements cover the rest).
            if !missing.is_empty() && self.connected.contains_key(&p) {
                queue.push((p, missing));
            }
        }
        if queue.is_empty() {
            return;
        }
        let (next, heads) = queue.remove(0);
        if !queue.is_empty() {
            self.queued.insert(*flow, queue);
        }
        self.want(&next, flow, &heads);
    }

    /// Ends every fetch from `peer` (it left, or was penalized).
    pub(super) fn pulls_from_ended(&mut self, peer: &NodeId) {
        let flows: Vec<FlowId> = self
            .pulling
            .iter()
            .filter(|(_, p)| *p == peer)
            .map(|(f, _)| *f)
            .collect();
        for flow in flows {
            self.pull_ended(peer, &flow);
        }
    }
}
