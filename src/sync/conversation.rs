//! Conversations: one Automerge sync session per (peer, flow) and side (client for those this
//! node starts, server for those a peer starts), a strict request/response alternation; how a
//! node answers members, strangers, removed members and offering peers.

use super::*;

/// How a node answers a sync request.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Talk {
    /// The peer is a member (or the flow is being joined through it): a real sync session.
    Member,
    /// This node holds the flow but the peer is not a member: answer exactly as if the flow
    /// were unknown here, and take nothing from the peer.
    Outsider,
    /// This node does not hold the flow: answer as an empty document, and keep what the peer
    /// sends only if it makes this node a member (someone added it by node id), as an offer.
    Unknown,
    /// The flow was offered to this node (it waits for its user, or was declined) and the peer
    /// is one of its members: take nothing, and say the flow is not served here, so that the
    /// peer's side of the conversation rests.
    Waiting,
}

/// One side of a conversation about one flow with one peer. Conversations we start use a
/// client state; conversations the peer starts use a server state. Each is a strict
/// request/response alternation, which is what Automerge's sync protocol expects.
pub(super) struct Conversation {
    pub(super) state: sync::State,
    pub(super) session: u64,
    /// (client side) a request of ours is on the way.
    pub(super) awaiting: bool,
    pub(super) last_activity: u64,
    /// Heads the peer announced that this node lacks: asked for on the next turn.
    pub(super) wanted: Vec<ChangeHash>,
}

impl Conversation {
    /// A fresh conversation that keeps the heads both sides are known to share.
    pub(super) fn fresh(session: u64, now: u64, previous: Option<&Conversation>) -> Conversation {
        let mut state = sync::State::new();
        if let Some(p) = previous {
            state.shared_heads = p.state.shared_heads.clone();
        }
        Conversation {
            state,
            session,
            awaiting: false,
            last_activity: now,
            wanted: Vec::new(),
        }
    }
}

impl<S: Storage> Engine<S> {
    /// How this node talks about `flow` with `peer`.
    pub(super) fn talk(&mut self, flow: &FlowId, peer: &NodeId) -> Talk {
        if self.joining.get(flow).is_some_and(|j| j.via.contains(peer)) {
            return Talk::Member;
        }
        match self.repo.holds(flow) {
            Ok(true) if self.is_member(flow, peer) => Talk::Member,
            Ok(true) => Talk::Outsider,
            _ => match self.repo.offer_member(flow, peer.as_str()) {
                Some(true) => Talk::Waiting,
                // Not held: the removal answer below finds nothing to tell.
                Some(false) => Talk::Outsider,
                None => Talk::Unknown,
            },
        }
    }

    /// Our next sync message for `flow`, from the given state (an empty document's if the flow
    /// is not held here).
    pub(super) fn generate(&mut self, flow: &FlowId, state: &mut sync::State) -> Option<SyncMessage> {
        let mut lacking = Vec::new();
        let message = match self.repo.holds(flow) {
            Ok(true) => match self.repo.doc(flow) {
                Ok(doc) => {
                    lacking = lacking_changes(doc, state);
                    // Automerge would build every change the peer lacks, on every round, to
                    // send them all at once; they are read from the store instead, as many as
                    // a message carries. Marking them sent keeps Automerge from building them.
                    let hidden: Vec<ChangeHash> = lacking
                        .iter()
                        .filter(|h| state.sent_hashes.insert(**h))
                        .copied()
                        .collect();
                    let message = guarded(|| doc.generate_sync_message(state));
                    for h in &hidden {
                        state.sent_hashes.remove(h);
                    }
                    message
                }
                Err(e) => {
                    tracing::warn!(target: "sync", %flow, "cannot load flow: {e}");
                    return None;
                }
            },
            _ => guarded(|| Automerge::new().generate_sync_message(state)),
        };
        let Some(message) = message else {
            // What the peer told us earlier broke the state machine: start the session afresh.
            *state = sync::State::new();
            return None;
        };
        let message = message?;
        let built = if lacking.is_empty() {
            to_wire(&self.repo, flow, message, state)
        } else {
            from_store(&self.repo, flow, message, &lacking, state)
        };
        match built {
            Ok(w) => {
                self.stats.changes_sent += w.changes.len() as u64;
                Some(w)
            }
            Err(e) => {
                tracing::warn!(target: "sync", %flow, "cannot build a sync message: {e}");
                None
            }
        }
    }

    /// Continues (or starts) our conversation about `flow` with `peer`.
    pub(super) fn sync_with(&mut self, peer: &NodeId, flow: &FlowId) {
        self.touch(flow);
        let now = self.now;
        let key = (*peer, *flow);
        let mut client = self
            .clients
            .remove(&key)
            .unwrap_or_else(|| Conversation::fresh(1, now, None));
        let me = self.me;
        let removed = |e: &mut Engine<S>, who: &NodeId| {
            !e.joining.contains_key(flow) && e.holds(flow) && !e.is_member(flow, who)
        };
        if removed(self, &me) || self.talk(flow, peer) == Talk::Outsider {
            // This node was removed (it learned so from a member): it has nothing to ask for.
            // Or the peer was removed while a conversation with it was under way: it is told
            // nothing more (it learns of its removal when it asks, see `removal_answer`).
            tracing::debug!(target: "sync", %peer, %flow, "not both members: nothing to sync");
            self.clients.insert(key, client);
            self.pull_ended(peer, flow);
            return;
        }
        if client.awaiting {
            tracing::debug!(target: "sync", %peer, %flow, "request in flight; news waits for its answer");
        } else {
            if !client.wanted.is_empty() {
                // The peer announced heads we lack: tell the sync state it has them, so our
                // next message asks for them.
                let wanted = std::mem::take(&mut client.wanted);
                let missing = self.missing(flow, &wanted);
                if !missing.is_empty() {
                    let mut theirs = client.state.their_heads.clone().unwrap_or_default();
                    for h in missing {
                        if !theirs.contains(&h) {
                            theirs.push(h);
                        }
                    }
                    client.state.their_heads = Some(theirs);
                }
            }
            // Same heads on both sides means the same history: nothing to say. (Automerge would
            // still send our new heads once more after we received changes.)
            let ours = self.heads(flow);
            let in_sync =
                client.state.their_heads.as_ref().map(|h| sorted(h.clone())) == Some(ours.clone());
            let told = sorted(client.state.last_sent_heads.clone()) == ours;
            let lacking = client
                .state
                .their_heads
                .clone()
                .map(|theirs| self.missing(flow, &theirs));
            let generated = if in_sync {
                None
            } else {
                self.generate(flow, &mut client.state)
                    // Nothing to send, nothing to ask for, and the peer was told our heads: the
                    // heads differ only by changes one side refuses (an equivocation), and
                    // saying so again would go on for ever.
                    .filter(|w| !(w.changes.is_empty() && told && lacking == Some(Vec::new())))
            };
            tracing::debug!(target: "sync", %peer, %flow, sends = generated.is_some(), changes = generated.as_ref().map_or(0, |w| w.changes.len()), "client turn");
            if let Some(mut wire) = generated {
                wire.session = client.session;
                wire.everyone_told = self.told_all.contains(flow) && !wire.changes.is_empty();
                client.awaiting = true;
                client.last_activity = now;
                let request = wire::SyncRequest {
                    message: Some(wire),
                };
                self.stats.requests_sent += 1;
                self.stats.request_bytes += prost::Message::encoded_len(&request) as u64;
                self.out.sync(peer, flow, request);
            } else {
                // The conversation is at rest: a fetch from this peer is over.
                self.clients.insert(key, client);
                self.pull_ended(peer, flow);
                return;
            }
        }
        self.clients.insert(key, client);
    }

    /// A peer's sync request: absorb it, and answer with our next message for that flow.
    pub fn handle_sync_request(
        &mut self,
        peer: &NodeId,
        request: wire::SyncRequest,
    ) -> wire::SyncResponse {
        let response = self.answer(peer, request);
        self.stats.responses_sent += 1;
        self.stats.response_bytes += prost::Message::encoded_len(&response) as u64;
        response
    }

    pub(super) fn answer(
        &mut self,
        peer: &NodeId,
        request: wire::SyncRequest,
    ) -> wire::SyncResponse {
        let unavailable = wire::SyncResponse {
            result: Some(sync_response::Result::Unavailable(true)),
        };
        let Some(message) = request.message else {
            return unavailable;
        };
        let Some(flow) = flow_id(&message.flow) else {
            return unavailable;
        };
        let talk = self.talk(&flow, peer);
        if talk == Talk::Waiting {
            // Nothing is taken; what proves malice still counts against the sender.
            if let Err(reason) = self.absorb_as_stranger(peer, &flow, message) {
                self.penalize(peer, reason);
            }
            return unavailable;
        }
        if talk == Talk::Outsider {
            if let Ok(Some(upto)) = self.repo.removal_of(&flow, peer) {
                return self.removal_answer(&flow, message, &upto);
            }
            // Treated exactly as a message about a flow this node does not hold: judged against
            // an empty document, nothing kept, the same answer. Judging it against the flow
            // held here would tell a stranger that knows a head of it (from gossip) that this
            // node holds the flow ("not a member" instead of "waits for its dependencies").
            if let Err(reason) = self.absorb_as_stranger(peer, &flow, message) {
                self.penalize(peer, reason);
                return unavailable;
            }
            return self.empty_answer(&flow);
        }
        let key = (*peer, flow);
        if talk == Talk::Member {
            // It syncs the flow with us: it serves it now.
            self.unserved.remove(&key);
        }
        let now = self.now;
        let previous = self.servers.remove(&key);
        let mut server = match previous {
            Some(s) if s.session == message.session => s,
            other => Conversation::fresh(message.session, now, other.as_ref()),
        };
        server.last_activity = now;
        let absorbed = match self.absorb(peer, &flow, message, &mut server.state) {
            Ok(absorbed) => absorbed,
            Err(reason) => {
                self.penalize(peer, reason);
                return unavailable;
            }
        };
        if talk == Talk::Unknown {
            if absorbed == Absorbed::Offer {
                // The peer offered this flow (kept or not): its side rests, and offers again
                // at its next anti-entropy round, until this node's user accepts.
                return unavailable;
            }
            if self.talk(&flow, peer) != Talk::Member {
                // Still not ours: nothing was kept, and the answer says nothing about the flow.
                return self.empty_answer(&flow);
            }
        }
        let reply = self.generate(&flow, &mut server.state);
        tracing::debug!(target: "sync", %peer, %flow, replies = reply.is_some(), changes = reply.as_ref().map_or(0, |w| w.changes.len()), "server turn");
        self.servers.insert(key, server);
        wire::SyncResponse {
            result: reply.map(sync_response::Result::Message),
        }
    }

    /// The answer to a member removed from `flow`: the flow's history up to its removal
    /// (`upto`), so that its node learns of the removal even though no member sends it content
    /// any more. Nothing it sends is taken: it is no longer a member, and what it wrote
    /// concurrently with its removal falls anyway (an honest member that did not know is not
    /// penalized for sending it).
    pub(super) fn removal_answer(
        &mut self,
        flow: &FlowId,
        message: SyncMessage,
        upto: &[ChangeHash],
    ) -> wire::SyncResponse {
        let unavailable = wire::SyncResponse {
            result: Some(sync_response::Result::Unavailable(true)),
        };
        let Ok((am, _)) = unpack(message) else {
            return unavailable;
        };
        let Ok(Some(Ok(mut past))) = self.repo.doc(flow).map(|d| guarded(|| d.fork_at(upto)))
        else {
            return unavailable;
        };
        let past = &mut past;
        let mut state = sync::State::new();
        let reply = match guarded(|| past.receive_sync_message(&mut state, am)) {
            Some(Ok(())) => guarded(|| past.generate_sync_message(&mut state)).flatten(),
            _ => None,
        };
        let wire = reply.and_then(|m| to_wire(&self.repo, flow, m, &mut state).ok());
        tracing::debug!(target: "sync", %flow, changes = wire.as_ref().map_or(0, |w| w.changes.len()), "told a removed member of its removal");
        wire::SyncResponse {
            result: wire.map(sync_response::Result::Message),
        }
    }

    /// The answer about a flow this node does not hold — also given to non-members about a flow
    /// it does hold, so the two cannot be told apart.
    pub(super) fn empty_answer(&mut self, flow: &FlowId) -> wire::SyncResponse {
        let reply = Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .map(|m| carrying(flow, m, Vec::new()));
        wire::SyncResponse {
            result: reply.map(sync_response::Result::Message),
        }
    }

    /// The answer to one of our sync requests.
    pub fn handle_sync_response(
        &mut self,
        peer: &NodeId,
        flow: &FlowId,
        response: wire::SyncResponse,
    ) {
        let key = (*peer, *flow);
        let Some(mut client) = self.clients.remove(&key) else {
            return; // a conversation we have since dropped
        };
        if !client.awaiting {
            // Not an answer we are waiting for (a duplicate, or from an abandoned session).
            self.clients.insert(key, client);
            return;
        }
        client.awaiting = false;
        client.last_activity = self.now;
        match response.result {
            Some(sync_response::Result::Message(m)) => {
                self.unserved.remove(&key);
                if flow_id(&m.flow).as_ref() != Some(flow) {
                    self.penalize(peer, "answered about another flow".into());
                    return;
                }
                if let Err(reason) = self.absorb(peer, flow, m, &mut client.state) {
                    self.penalize(peer, reason);
                    return;
                }
                self.clients.insert(key, client);
                // Keep the conversation going until neither side has anything to say.
                self.sync_with(peer, flow);
            }
            Some(sync_response::Result::Unavailable(_)) => {
                tracing::debug!(target: "sync", %peer, %flow, "peer does not serve this flow");
                // Nothing of ours is in flight any more: a later fetch from this peer may ask.
                client.state.in_flight = false;
                if self.unserved.len() >= MAX_UNSERVED {
                    self.unserved.clear();
                }
                self.unserved.insert(key);
                self.clients.insert(key, client);
                self.touch(flow);
                self.pull_ended(peer, flow);
            }
            // The peer had nothing to say. News that arrived while we waited goes out now;
            // with no news, Automerge has nothing to send and the conversation rests.
            None => {
                self.clients.insert(key, client);
                self.sync_with(peer, flow);
            }
        }
    }

    /// One of our sync requests failed (timeout, disconnect): let the next tick retry.
    pub fn sync_failed(&mut self, peer: &NodeId, flow: &FlowId) {
        if let Some(c) = self.clients.get_mut(&(*peer, *flow)) {
            c.awaiting = false;
            // The message is lost, not in flight: without this, Automerge would hold back the
            // next one (a fetch of announced heads) until anti-entropy restarted the session.
            c.state.in_flight = false;
        }
        self.touch(flow);
        self.pull_ended(peer, flow);
    }
}
