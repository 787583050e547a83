//! Member links: which members this node should be connected to (enough for a gossip mesh,
//! and the few responsible for bringing a flow to a member not known to hold it).

use super::*;

/// A node keeps connections to at least this many members of each flow it holds (when it can
/// find them): enough for a gossip mesh, far fewer than a full mesh.
pub const MIN_MEMBER_LINKS: usize = 4;

/// How many members are responsible for bringing a flow to a member not known to hold it yet.
pub const DELIVERERS: usize = 3;

/// A candidate's place in `subject`'s deterministic pseudo-random order: everyone who knows the
/// same candidates computes the same order. A cheap mix of the two keys, not a cryptographic
/// hash: keys cost nothing to make, so no hash would stop a member from choosing its place,
/// and this is computed for every pair of a flow's members on every tick (SHA-256 here took
/// 90% of a simulated 200-member network's time).
pub(super) fn rank(subject: &NodeId, candidate: &NodeId) -> u64 {
    fn mix(mut z: u64) -> u64 {
        // splitmix64's finalizer
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let word = |id: &NodeId| {
        let k = id.public_key();
        u64::from_le_bytes(k[..8].try_into().expect("8 bytes"))
            ^ u64::from_le_bytes(k[24..].try_into().expect("8 bytes"))
    };
    mix(word(subject) ^ mix(word(candidate)))
}

/// `candidates` in `subject`'s order ([`rank`]).
pub(super) fn rendezvous(subject: &NodeId, candidates: &mut [NodeId]) {
    candidates.sort_by_cached_key(|c| (rank(subject, c), *c.public_key()));
}

impl<S: Storage> Engine<S> {
    /// Members this node should connect to, for the runtime to dial: `must` are members not
    /// known to hold a flow whose delivery falls to this node (it is among the [`DELIVERERS`]
    /// holders a deterministic order picks for them); `more` are, per flow with fewer than
    /// [`MIN_MEMBER_LINKS`] members connected, how many more to connect and the candidates in
    /// order of preference.
    pub fn reach_plan(&mut self) -> (Vec<NodeId>, Vec<(usize, Vec<NodeId>)>) {
        let me = self.me;
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
                    // This node is among the member's deliverers if fewer than DELIVERERS of
                    // the holders come before it in the member's order.
                    let mine = (rank(m, &me), *me.public_key());
                    let before = holders
                        .iter()
                        .filter(|h| *h != m && (rank(m, h), *h.public_key()) < mine)
                        .take(DELIVERERS)
                        .count();
                    if before < DELIVERERS {
                        must.push(*m);
                    }
                }
                candidates.push(*m);
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
