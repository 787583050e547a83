//! The accept path for received changes: verify → authorize → apply → persist under the
//! store's write lock, for a flow held, joined, or offered to this node ([`consent`]).

use super::*;

impl<S: Storage> Repo<S> {
    /// Runs changes received from elsewhere through verify → authorize → apply and stores the
    /// accepted ones. The flow must already exist here, unless the batch holds its genesis.
    /// A flow this node is joining, or one a test or benchmark seeds, is taken as held.
    pub fn receive(&mut self, flow_id: &FlowId, batch: &[SignedChange]) -> Result<Outcome> {
        if self.offered.contains(flow_id) {
            // Joining a flow offered earlier is consent.
            self.accept(flow_id.as_str())?;
        }
        Ok(self.take(flow_id, batch, None)?.0)
    }

    /// Like [`Repo::receive`], for changes peer `from` sent unasked about a flow this node
    /// does not hold: kept as an offer ([`consent`]) if they make this node a current member
    /// and there is room. Nothing more is kept for a flow already offered.
    pub fn receive_offer(
        &mut self,
        flow_id: &FlowId,
        batch: &[SignedChange],
        from: &str,
    ) -> Result<(Outcome, Offered)> {
        if self.offered.contains(flow_id) {
            return Ok((Outcome::default(), Offered::Waiting));
        }
        self.take(flow_id, batch, Some(from))
    }

    pub(super) fn take(
        &mut self,
        flow_id: &FlowId,
        batch: &[SignedChange],
        offer: Option<&str>,
    ) -> Result<(Outcome, Offered)> {
        crash_point("receive");
        let now = self.now();
        let me = self.identity.node_id().to_string();
        let Repo {
            store,
            docs,
            roles,
            standing,
            ..
        } = self;
        let memo = roles.entry(*flow_id).or_default();
        let mut fate = Offered::NotMember;
        // Everything below reads and writes documents holding what a peer sent. Automerge
        // trusts its input more than a node can: a panic in it (applying, judging, summarizing,
        // saving) ends this batch as an error, the transaction rolled back and the flow's
        // caches dropped, never the node.
        let guarded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.write(|w| {
            let known = w.has_flow(flow_id)?;
            if !known {
                match offer {
                    Some(_) if w.declined_members(flow_id)?.is_some() => {
                        fate = Offered::Declined;
                        return Ok(Outcome::default());
                    }
                    None => w.forget_declined(flow_id)?,
                    Some(_) => {}
                }
            }
            let doc = match docs.entry(*flow_id) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(if known {
                    load_doc(w, flow_id)?
                } else {
                    Automerge::new()
                }),
            };
            let before = doc.get_heads();
            let out = auth::accept_with(
                doc,
                flow_id,
                batch,
                || {
                    if known {
                        load_doc(w, flow_id)
                    } else {
                        Ok(Automerge::new())
                    }
                },
                memo,
            )?;
            if out.accepted.is_empty() {
                return Ok(out);
            }
            crash_point("applied");
            let nothing = Outcome {
                known: out.known,
                ..Outcome::default()
            };
            if let (false, Some(from)) = (known, offer) {
                if Reader::now(&*doc).role_of(&me).is_none() {
                    return Ok(nothing);
                }
                if let Err(full) = consent::room_for_offer(w, from) {
                    tracing::warn!(target: "repo", flow = %flow_id, %from, "not keeping an offered flow: {full}");
                    fate = Offered::NoRoom;
                    return Ok(nothing);
                }
            }
            if !known {
                let genesis = out
                    .accepted
                    .iter()
                    .find(|v| v.change.deps().is_empty())
                    .expect("a new flow's first accepted change is its genesis");
                w.insert_flow(flow_id, &genesis.hash().0, "", FlowStatus::Open.as_str(), now)?;
                if let Some(from) = offer {
                    w.mark_offered(flow_id, from)?;
                    fate = Offered::Kept;
                }
            }
            let rows: Vec<_> = out
                .accepted
                .iter()
                .map(|v| (v.hash().0.to_vec(), v.bytes.clone(), v.signature.to_vec()))
                .collect();
            // Only a change that touched the members map can remove a member.
            let accepted: Vec<_> = out
                .accepted
                .iter()
                .filter(|v| out.touched_members.contains(&v.hash()))
                .map(|v| (&v.change, &v.author))
                .collect();
            let added: Vec<&Change> = out.accepted.iter().map(|v| &v.change).collect();
            let st = match standing_after(standing.get(flow_id), &before, doc, &added) {
                Some(st) if accepted.is_empty() => st,
                _ => standing_of(doc, record_removals(w, flow_id, doc, &accepted)?),
            };
            persist(w, flow_id, doc, &st, &rows, now)?;
            crash_point("stored");
            standing.insert(*flow_id, st);
            Ok(out)
        })));
        let result = match guarded {
            Ok(result) => result,
            Err(_) => {
                tracing::error!(target: "repo", flow = %flow_id, "Automerge panicked on a received batch; nothing of it was stored");
                self.roles.remove(flow_id);
                self.standing.remove(flow_id);
                Err(Error::Invalid(
                    "the received changes crash Automerge; nothing of them was stored".into(),
                ))
            }
        };
        // Read again from the store next time it is asked for (`persist` wrote it).
        self.summaries.remove(flow_id);
        if fate == Offered::Kept && result.is_ok() {
            self.offered.insert(*flow_id);
        }
        if matches!(&result, Ok(out) if !out.accepted.is_empty()) {
            if self.store.in_group() {
                self.group_received = true;
            } else {
                crash_point("committed");
            }
        }
        match &result {
            Ok(out) if !out.accepted.is_empty() || self.holds_in_store(flow_id) => {}
            // Nothing stored for a flow this node does not hold: keep no empty document (nor
            // a memo, so peers naming flows at random cannot grow this node's memory).
            Ok(_) => {
                self.docs.remove(flow_id);
                self.roles.remove(flow_id);
            }
            Err(_) => {
                self.docs.remove(flow_id);
            }
        }
        result.map(|out| (out, fate))
    }

    pub(super) fn holds_in_store(&self, flow: &FlowId) -> bool {
        self.store.reader().has_flow(flow).unwrap_or(false)
    }
}
