//! Anti-entropy: each tick restarts a few quiet conversations whose peer is not known to hold
//! this node's heads, so a lost message or a missed change is repaired.

use super::*;

/// A (peer, flow) session with no message for this long is refreshed on the next tick, so a
/// lost message or a missed change is repaired (anti-entropy).
pub const ANTI_ENTROPY_MS: u64 = 5_000;

/// How many conversations per flow anti-entropy restarts on one tick.
pub const ANTI_ENTROPY_PEERS: usize = 2;

impl<S: Storage> Engine<S> {
    /// Anti-entropy: start missing conversations, and restart quiet ones whose peer is not known
    /// to have our heads (a message was lost, or a change was missed).
    pub fn tick(&mut self, now: u64) {
        self.now = now;
        self.expire_joins(now);
        // Announcements whose changes never came are dropped, not passed on.
        while self
            .waiting
            .front()
            .is_some_and(|w| now.saturating_sub(w.since) >= ANNOUNCE_PATIENCE_MS)
        {
            let w = self.waiting.pop_front().expect("present");
            self.out.validate(w.id, w.via, Verdict::Ignore);
        }
        // Each flow's heads and members are read once per tick, not once per peer.
        let flows: Vec<(String, Vec<automerge::ChangeHash>, Vec<String>)> = self
            .repo
            .flow_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|flow| {
                let heads = self.heads(&flow);
                let members = self
                    .repo
                    .members(&flow)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                (flow, heads, members)
            })
            .collect();
        let peers: Vec<NodeId> = self.connected.keys().cloned().collect();
        for (flow, ours, members) in &flows {
            // Conversations due a restart, the quietest first; only a few per tick, so that
            // after a burst of news a dense mesh is not swamped with repairs all at once.
            let mut due: Vec<(u64, NodeId)> = Vec::new();
            for peer in &peers {
                if !members.iter().any(|m| m == peer.as_str()) {
                    continue;
                }
                match self.clients.get(&(peer.clone(), flow.clone())) {
                    None => due.push((0, peer.clone())),
                    Some(c)
                        if now.saturating_sub(c.last_activity) >= ANTI_ENTROPY_MS
                            && c.state.their_heads.as_ref().map(|h| sorted(h.clone()))
                                != Some(ours.clone()) =>
                    {
                        due.push((c.last_activity, peer.clone()))
                    }
                    Some(_) => {}
                }
            }
            due.sort();
            for (_, peer) in due.into_iter().take(ANTI_ENTROPY_PEERS) {
                let key = (peer.clone(), flow.clone());
                let previous = self.clients.remove(&key);
                let session = previous.as_ref().map_or(1, |c| c.session + 1);
                self.clients
                    .insert(key, Conversation::fresh(session, now, previous.as_ref()));
                self.sync_with(&peer, flow);
            }
        }
    }
}
