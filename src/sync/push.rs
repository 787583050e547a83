//! Push: a local change in a small flow whose members are all connected goes straight to each
//! of them; otherwise it is announced.

use super::*;

/// A local change in a flow of at most this many other members, all connected, is pushed to
/// each of them instead of being announced: the common small flow (a customer, a business, a
/// few suppliers). Measured (BENCHMARKS.md): with 19 others pushing cost the same sync bytes per
/// change as gossip and cut p99 from 633 to 152 ms, but with 24 others voting at once it cost
/// seven to ten times gossip's bytes (297 KB per vote against 31-43 KB), and with 49 others
/// more again.
pub const PUSH_TO_ALL_MAX: usize = 8;

impl<S: Storage> Engine<S> {
    /// A change was made here. When every other member is connected and there are at most
    /// [`PUSH_TO_ALL_MAX`] of them, it is pushed to each of them and not announced. Otherwise the new heads are announced on the flow's gossip topic
    /// (members fetch them from whoever announced or passed the announcement on), and the change
    /// is pushed at once to connected members the announcement may not bring it to: those not
    /// seen subscribed, and those not known to hold the flow (they would only relay it).
    pub fn local_change(&mut self, flow: &FlowId) {
        self.touch(flow);
        self.changed.insert(*flow);
        let me = self.me;
        let others: Vec<NodeId> = self
            .member_ids(flow)
            .into_iter()
            .filter(|m| *m != me)
            .collect();
        if !others.is_empty()
            && others.len() <= PUSH_TO_ALL_MAX
            && others.iter().all(|m| self.connected.contains_key(m))
        {
            // Every other member is a direct peer: the change is pushed to each, and nothing
            // is announced (an announcement would have them fetch what the push brings). This
            // is the common case of a small flow, and costs one exchange per member.
            self.told_all.insert(*flow);
            for m in others {
                self.sync_with(&m, flow);
            }
            return;
        }
        self.told_all.remove(flow);
        let subscribed = self.subscribers.get(flow).cloned().unwrap_or_default();
        let holders = self.holders.get(flow).cloned().unwrap_or_default();
        let peers: Vec<NodeId> = self
            .connected
            .keys()
            .filter(|p| !(subscribed.contains(*p) && holders.contains(*p)))
            .cloned()
            .collect();
        for peer in peers {
            if self.is_member(flow, &peer) {
                self.sync_with(&peer, flow);
            }
        }
        self.announce(flow);
    }
}
