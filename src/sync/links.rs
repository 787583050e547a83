//! Member links: which members this node should be connected to (enough for a gossip mesh,
//! and the few responsible for bringing a flow to a member not known to hold it).

use super::*;

/// A node keeps connections to at least this many members of each flow it holds (when it can
/// find them): enough for a gossip mesh, far fewer than a full mesh.
pub const MIN_MEMBER_LINKS: usize = 4;

/// How many members are responsible for bringing a flow to a member not known to hold it yet.
pub const DELIVERERS: usize = 3;

/// A deterministic pseudo-random order of `candidates` with respect to `subject`: everyone who
/// knows the same candidates computes the same order.
pub(super) fn rendezvous(subject: &NodeId, candidates: &mut [NodeId]) {
    use sha2::Digest;
    candidates.sort_by_cached_key(|c| {
        let mut h = sha2::Sha256::new();
        h.update(subject.public_key());
        h.update(c.public_key());
        h.finalize()
    });
}

impl<S: Storage> Engine<S> {
    /// Members this node should connect to, for the runtime to dial: `must` are members not
    /// known to hold a flow whose delivery falls to this node (it is among the [`DELIVERERS`]
    /// holders a deterministic order picks for them); `more` are, per flow with fewer than
    /// [`MIN_MEMBER_LINKS`] members connected, how many more to connect and the candidates in
    /// order of preference.
    pub fn reach_plan(&mut self) -> (Vec<NodeId>, Vec<(usize, Vec<NodeId>)>) {
        let me = self.me.clone();
        let mut must = Vec::new();
        let mut more = Vec::new();
        for flow in self.repo.flow_ids().unwrap_or_default() {
            let members = self.member_ids(&flow);
            if !members.contains(&me) {
                continue;
            }
            let holders = self.holders.get(&flow).cloned().unwrap_or_default();
            let mut connected = 0;
            let mut candidates = Vec::new();
            for m in members.iter().filter(|m| **m != me) {
                if self.connected.contains_key(m) {
                    connected += 1;
                    continue;
                }
                if !holders.contains(m) {
                    let mut deliverers: Vec<NodeId> = holders
                        .iter()
                        .filter(|h| *h != m)
                        .cloned()
                        .chain(std::iter::once(me.clone()))
                        .collect();
                    rendezvous(m, &mut deliverers);
                    if deliverers.iter().take(DELIVERERS).any(|d| *d == me) {
                        must.push(m.clone());
                    }
                }
                candidates.push(m.clone());
            }
            if connected < MIN_MEMBER_LINKS && !candidates.is_empty() {
                // Holders first (they can serve the flow), each group in this node's own order.
                rendezvous(&me, &mut candidates);
                candidates.sort_by_key(|c| !holders.contains(c));
                more.push((MIN_MEMBER_LINKS - connected, candidates));
            }
        }
        must.sort();
        must.dedup();
        (must, more)
    }
}
