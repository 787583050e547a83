//! What the engine asks its runtime to do ([`Io`]), and what it tells local observers
//! ([`Event`]).

use super::*;

/// What the engine asks its runtime to do.
#[derive(Debug)]
pub enum Io {
    /// Send a `/coflow/sync/1` request; its answer comes back through
    /// [`Engine::handle_sync_response`] (or [`Engine::sync_failed`]).
    Sync {
        peer: NodeId,
        flow: FlowId,
        request: wire::SyncRequest,
    },
    /// Send a `/coflow/join/2` request to a peer named in a ticket.
    Join {
        peer: NodeId,
        flow: FlowId,
        request: JoinRequest,
    },
    /// The peer sent something invalid: disconnect it and keep it away for a while.
    Penalize { peer: NodeId, reason: String },
    /// Announce new heads on a flow's gossip topic (no content).
    Announce {
        topic: String,
        heads: Vec<ChangeHash>,
    },
    /// What gossip should do with a received announcement (by its gossip message id).
    Validate {
        id: Vec<u8>,
        via: NodeId,
        verdict: Verdict,
    },
    /// Connect to this peer: it announced changes this node lacks and is not connected.
    Dial { peer: NodeId },
    /// Something happened that local observers may care about.
    Event(Event),
}

/// The fate of a received announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on: this node holds the heads it names, or relays the topic without holding it.
    Accept,
    /// Drop it without blame (from a non-member; its changes never came).
    Ignore,
    /// Drop it and blame the sender (malformed).
    Reject,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Changes from `from` were accepted into `flow`.
    FlowUpdated { flow: FlowId, from: NodeId },
    /// A join finished: this node now holds the flow as a member.
    Joined { flow: FlowId },
    /// Every peer refused or failed the join.
    JoinFailed { flow: FlowId, reason: String },
    /// `from` added this node to `flow`: it waits for this node's user to accept it.
    Offered { flow: FlowId, from: NodeId },
}

/// The engine's outgoing queue, written through one typed method per kind of [`Io`] (as
/// heartwood's `Outbox`), drained by the runtime with [`Engine::next_io`].
#[derive(Default)]
pub(super) struct Outbox {
    queue: VecDeque<Io>,
}

impl Outbox {
    pub(super) fn sync(&mut self, peer: &NodeId, flow: &FlowId, request: wire::SyncRequest) {
        self.queue.push_back(Io::Sync {
            peer: *peer,
            flow: *flow,
            request,
        });
    }

    pub(super) fn join(&mut self, peer: &NodeId, flow: &FlowId, request: JoinRequest) {
        self.queue.push_back(Io::Join {
            peer: *peer,
            flow: *flow,
            request,
        });
    }

    pub(super) fn penalize(&mut self, peer: &NodeId, reason: String) {
        self.queue.push_back(Io::Penalize {
            peer: *peer,
            reason,
        });
    }

    pub(super) fn announce(&mut self, topic: String, heads: Vec<ChangeHash>) {
        self.queue.push_back(Io::Announce { topic, heads });
    }

    pub(super) fn validate(&mut self, id: Vec<u8>, via: NodeId, verdict: Verdict) {
        self.queue.push_back(Io::Validate { id, via, verdict });
    }

    pub(super) fn dial(&mut self, peer: &NodeId) {
        self.queue.push_back(Io::Dial { peer: *peer });
    }

    pub(super) fn event(&mut self, event: Event) {
        self.queue.push_back(Io::Event(event));
    }

    pub(super) fn next(&mut self) -> Option<Io> {
        self.queue.pop_front()
    }

    /// Drops everything not yet sent (a commit failed: nothing of it may go out).
    pub(super) fn clear(&mut self) {
        self.queue.clear();
    }
}
