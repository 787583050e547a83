//! Taking in a peer's sync message: its signed changes through the accept path (or, for a
//! stranger, judged against an empty document), the rest to the conversation's sync state; and
//! penalizing what proves malice.

use super::*;

/// What [`Engine::absorb`] made of a message.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Absorbed {
    /// Its changes and sync state went through the conversation.
    Synced,
    /// Its changes offered this node a flow it does not hold ([`crate::repo::Offered`]): kept
    /// as an offer, or not kept (no room, declined); the conversation goes no further.
    Offer,
}

impl<S: Storage> Engine<S> {
    /// Applies a received sync message: its signed changes through the accept path, the rest
    /// to the session's sync state. An `Err` is a reason to penalize the sender.
    pub(super) fn absorb(
        &mut self,
        peer: &NodeId,
        flow: &FlowId,
        message: SyncMessage,
        state: &mut sync::State,
    ) -> Result<Absorbed, String> {
        self.last_heard.insert(*peer, self.unix_secs());
        let everyone_told = message.everyone_told;
        let (am, batch) = unpack(message)?;
        if !am.heads.is_empty()
            && self.is_member(flow, peer)
            && self
                .holders
                .entry(*flow)
                .or_default()
                .insert(*peer)
        {
            self.changed.insert(*flow);
        }
        if !batch.is_empty() {
            let held = matches!(self.repo.holds(flow), Ok(true));
            let received = if held || self.joining.contains_key(flow) {
                self.repo.receive(flow, &batch).map(|out| (out, None))
            } else {
                self.repo
                    .receive_offer(flow, &batch, peer.as_str())
                    .map(|(out, fate)| (out, Some(fate)))
            };
            let (out, fate) = match received {
                Ok(received) => received,
                Err(e) => {
                    // A local storage failure is not the peer's fault; anti-entropy retries.
                    tracing::error!(target: "sync", %flow, "cannot store received changes: {e}");
                    return Ok(Absorbed::Synced);
                }
            };
            tracing::debug!(target: "sync", %peer, %flow, accepted = out.accepted.len(), pending = out.pending.len(), rejected = out.rejected.len(), known = out.known, "received changes");
            self.stats.changes_accepted += out.accepted.len() as u64;
            let hashes = out.accepted.iter().map(|c| c.hash().to_string());
            if self.repo.store().in_group() {
                self.uncommitted.extend(hashes);
            } else {
                self.arrived(hashes.collect());
            }
            self.stats.changes_rejected += out.rejected.len() as u64;
            match fate {
                None | Some(Offered::NotMember) => {}
                Some(fate) => {
                    if fate == Offered::Kept {
                        tracing::info!(target: "sync", %peer, %flow, "a flow was offered to this node");
                        self.out.event(Event::Offered {
                            flow: *flow,
                            from: *peer,
                        });
                    }
                    blame(peer, &out.rejected)?;
                    return Ok(Absorbed::Offer);
                }
            }
            if !out.accepted.is_empty() {
                // Its heads (and perhaps members) changed: other conversations about it may
                // need a restart.
                self.touch(flow);
                self.changed.insert(*flow);
                self.out.event(Event::FlowUpdated {
                    flow: *flow,
                    from: *peer,
                });
                self.finish_join(flow);
                self.topic(flow);
                // Pass on the announcements these changes complete. News no announcement named
                // (pushed by its author, or carried over from a partition or an offline edit)
                // is announced by this node, so it spreads by gossip rather than by waiting
                // for anti-entropy.
                if !self.settle_waiting(flow) && !everyone_told {
                    self.announce(flow);
                }
            }
            blame(peer, &out.rejected)?;
            if !out.rejected.is_empty() {
                // Remembered with their dependencies (the batch parsed once, not per change).
                let deps: HashMap<ChangeHash, Vec<ChangeHash>> = batch
                    .iter()
                    .filter_map(|c| crate::auth::parse_change(&c.bytes).ok())
                    .map(|c| (c.hash(), c.deps().to_vec()))
                    .collect();
                for (hash, why) in &out.rejected {
                    tracing::warn!(target: "sync", %peer, %flow, change = ?hash, "refused a change without blaming its sender: {why}");
                    if let Some((h, d)) = hash.and_then(|h| deps.get(&h).map(|d| (h, d))) {
                        if self.refused.len() >= MAX_REFUSED {
                            self.refused.clear();
                        }
                        self.refused.insert(h, d.clone());
                    }
                }
            }
        }
        // The message carries no changes: this only updates the sync state.
        let result = match self.repo.holds(flow) {
            Ok(true) => match self.repo.doc_for_sync(flow) {
                Ok(doc) => guarded(|| doc.receive_sync_message(state, am)),
                Err(_) => Some(Ok(())),
            },
            _ => guarded(|| Automerge::new().receive_sync_message(state, am)),
        };
        let Some(result) = result else {
            *state = sync::State::new();
            return Err("a sync message that crashes the sync state machine".into());
        };
        // Never switch to whole-document messages: every change must carry its signature.
        state.their_capabilities = None;
        if let Some(theirs) = state.their_heads.as_mut() {
            unrefused(theirs, &self.refused);
        }
        result
            .map(|()| Absorbed::Synced)
            .map_err(|e| format!("bad sync message: {e}"))
    }

    /// What [`Engine::absorb`] does with a message about a flow this node does not hold, for a
    /// message from a non-member about a flow it does hold: the changes are verified and judged
    /// as if nothing of the flow were held (so what depends on the flow's history waits, and is
    /// dropped), nothing is stored, and the sync state is an empty document's. An `Err` is a
    /// reason to penalize the sender, as it would be for an unknown flow.
    pub(super) fn absorb_as_stranger(
        &mut self,
        peer: &NodeId,
        flow: &FlowId,
        message: SyncMessage,
    ) -> Result<(), String> {
        self.last_heard.insert(*peer, self.unix_secs());
        let (am, batch) = unpack(message)?;
        if !batch.is_empty() {
            let out = crate::auth::accept(&mut Automerge::new(), flow, &batch, || {
                Ok::<_, std::convert::Infallible>(Automerge::new())
            })
            .unwrap_or_else(|never| match never {});
            self.stats.changes_rejected += out.rejected.len() as u64;
            blame(peer, &out.rejected)?;
        }
        match guarded(|| Automerge::new().receive_sync_message(&mut sync::State::new(), am)) {
            None => Err("a sync message that crashes the sync state machine".into()),
            Some(r) => r.map_err(|e| format!("bad sync message: {e}")),
        }
    }

    /// The runtime caught `peer` misbehaving below the protocol (flooding, unreadable bytes).
    pub fn penalize_peer(&mut self, peer: &NodeId, reason: String) {
        self.penalize(peer, reason);
    }

    pub(super) fn penalize(&mut self, peer: &NodeId, reason: String) {
        tracing::warn!(target: "sync", %peer, "penalizing peer: {reason}");
        self.clients.retain(|(p, _), _| p != peer);
        self.servers.retain(|(p, _), _| p != peer);
        self.pulls_from_ended(peer);
        self.out.penalize(peer, reason);
    }
}
