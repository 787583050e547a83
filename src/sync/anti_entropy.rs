//! Anti-entropy: each tick restarts a few quiet conversations whose peer is not known to hold
//! this node's heads, so a lost message or a missed change is repaired.
//!
//! A tick costs what changed, not every held flow: it looks at the flows that are due (see
//! [`Engine::touch`]: a conversation about them moved, their heads or members changed, a member
//! connected; or a quiet conversation of theirs comes of age) and at most
//! [`ANTI_ENTROPY_FLOWS_PER_TICK`] more, taken in turn from every held flow (a rotating
//! cursor, moved on at most once per [`RECHECK_MS`]), so a flow nothing marked still gets
//! looked at every `⌈flows / ANTI_ENTROPY_FLOWS_PER_TICK⌉` seconds of a node ticking every
//! second.

use super::*;
use crate::store::Flows;

/// A (peer, flow) session with no message for this long is refreshed on the next tick, so a
/// lost message or a missed change is repaired (anti-entropy).
pub const ANTI_ENTROPY_MS: u64 = 5_000;

/// How many conversations per flow anti-entropy restarts on one tick.
pub const ANTI_ENTROPY_PEERS: usize = 2;

/// How many held flows a tick looks at besides those due, taken in turn: with this many flows
/// or fewer, every tick looks at every flow.
pub const ANTI_ENTROPY_FLOWS_PER_TICK: usize = 64;

/// How soon after something happened to a flow anti-entropy looks at it (the next tick of a
/// node ticking every second).
pub const RECHECK_MS: u64 = 1_000;

/// When anti-entropy next looks at which flows.
#[derive(Default)]
pub(super) struct Schedule {
    /// (when, flow), with `at` below as its index: each flow at most once.
    queue: std::collections::BTreeSet<(u64, FlowId)>,
    at: HashMap<FlowId, u64>,
    /// The last flow the rotation looked at, and when (engine time).
    pub(super) cursor: Option<FlowId>,
    rotated: Option<u64>,
}

impl Schedule {
    /// Looks at `flow` no later than `when`.
    pub(super) fn by(&mut self, flow: &FlowId, when: u64) {
        match self.at.get(flow) {
            Some(t) if *t <= when => {}
            Some(t) => {
                self.queue.remove(&(*t, *flow));
                self.queue.insert((when, *flow));
                self.at.insert(*flow, when);
            }
            None => {
                self.queue.insert((when, *flow));
                self.at.insert(*flow, when);
            }
        }
    }

    /// The flows due by `now`, taken off the schedule.
    fn take_due(&mut self, now: u64) -> Vec<FlowId> {
        let mut out = Vec::new();
        while let Some((t, _)) = self.queue.first() {
            if *t > now {
                break;
            }
            let (_, flow) = self.queue.pop_first().expect("present");
            self.at.remove(&flow);
            out.push(flow);
        }
        out
    }

    /// Takes `flow` off the schedule (it is being looked at).
    fn forget(&mut self, flow: &FlowId) {
        if let Some(t) = self.at.remove(flow) {
            self.queue.remove(&(t, *flow));
        }
    }

    /// The earliest time a flow is due.
    pub(super) fn next(&self) -> Option<u64> {
        self.queue.first().map(|(t, _)| *t)
    }
}

impl<S: Storage> Engine<S> {
    /// Something happened to `flow` (a conversation about it moved, its heads or members
    /// changed, a member connected): anti-entropy looks at it on a tick [`RECHECK_MS`] from now.
    pub(super) fn touch(&mut self, flow: &FlowId) {
        self.schedule.by(flow, self.now.saturating_add(RECHECK_MS));
    }

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
        let mut flows = self.schedule.take_due(now);
        // The rotation goes on at most once per RECHECK_MS, however often the caller ticks.
        if self
            .schedule
            .rotated
            .is_none_or(|t| now.saturating_sub(t) >= RECHECK_MS)
        {
            self.schedule.rotated = Some(now);
            let mut seen: HashSet<FlowId> = flows.iter().copied().collect();
            for flow in self.rotation() {
                if seen.insert(flow) {
                    flows.push(flow);
                }
            }
        }
        for flow in flows {
            self.anti_entropy(&flow, now);
        }
    }

    /// The next [`ANTI_ENTROPY_FLOWS_PER_TICK`] held flows after the cursor, round the end.
    pub(super) fn rotation(&mut self) -> Vec<FlowId> {
        let reader = self.repo.store().reader();
        let after = self.schedule.cursor;
        let mut batch = reader
            .flow_ids_after(after.as_ref(), ANTI_ENTROPY_FLOWS_PER_TICK)
            .unwrap_or_default();
        if let Some(after) = after.filter(|_| batch.len() < ANTI_ENTROPY_FLOWS_PER_TICK) {
            let more = reader
                .flow_ids_after(None, ANTI_ENTROPY_FLOWS_PER_TICK - batch.len())
                .unwrap_or_default();
            batch.extend(more.into_iter().filter(|f| *f <= after));
        }
        self.schedule.cursor = batch.last().copied();
        batch
    }

    /// One flow's anti-entropy; schedules the flow again for when a quiet conversation of it
    /// comes of age, or for the next tick if more were due than one tick restarts.
    fn anti_entropy(&mut self, flow: &FlowId, now: u64) {
        // Looked at now: what it is due for next follows from what is found.
        self.schedule.forget(flow);
        if !self.holds(flow) {
            return;
        }
        let ours = self.heads(flow);
        let me = self.me;
        let members: Vec<NodeId> = self
            .member_ids(flow)
            .into_iter()
            .filter(|m| *m != me && self.connected.contains_key(m))
            .collect();
        // Conversations due a restart, the quietest first; only a few per tick, so that after
        // a burst of news a dense mesh is not swamped with repairs all at once.
        let mut due: Vec<(u64, NodeId)> = Vec::new();
        let mut later: Option<u64> = None;
        for peer in members {
            match self.clients.get(&(peer, *flow)) {
                None => due.push((0, peer)),
                Some(c)
                    if c.state.their_heads.as_ref().map(|h| sorted(h.clone()))
                        != Some(ours.clone()) =>
                {
                    if now.saturating_sub(c.last_activity) >= ANTI_ENTROPY_MS {
                        due.push((c.last_activity, peer))
                    } else {
                        let at = c.last_activity + ANTI_ENTROPY_MS;
                        later = Some(later.map_or(at, |l| l.min(at)));
                    }
                }
                Some(_) => {}
            }
        }
        due.sort();
        if due.len() > ANTI_ENTROPY_PEERS {
            self.schedule.by(flow, now.saturating_add(RECHECK_MS));
        }
        if let Some(at) = later {
            self.schedule.by(flow, at);
        }
        for (_, peer) in due.into_iter().take(ANTI_ENTROPY_PEERS) {
            let key = (peer, *flow);
            let previous = self.clients.remove(&key);
            let session = previous.as_ref().map_or(1, |c| c.session + 1);
            self.clients
                .insert(key, Conversation::fresh(session, now, previous.as_ref()));
            self.sync_with(&peer, flow);
        }
    }

    /// The earliest time (on the clock [`Engine::tick`] is given) at which a tick has work this
    /// engine knows of: a join's deadline, an announcement's patience running out, a flow due
    /// for anti-entropy (something happened to it, or a quiet conversation comes of age). `None`:
    /// nothing is due. Anti-entropy's rotation through every held flow is not in it: the caller
    /// ticks now and then regardless (the node at least every `node::TICK`).
    pub fn next_wake(&self) -> Option<u64> {
        let joins = self
            .joining
            .values()
            .map(|j| j.since.saturating_add(join::JOIN_PATIENCE_MS));
        let announcements = self
            .waiting
            .front()
            .map(|w| w.since.saturating_add(ANNOUNCE_PATIENCE_MS));
        joins
            .chain(announcements)
            .chain(self.schedule.next())
            .min()
    }
}
