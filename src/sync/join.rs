//! Joins: redeeming an invite with a ticket (asking the members it names, with a proof of the
//! ticket's secret), and admitting a joiner who proves it holds one.

use super::*;

/// How long a join waits for an answer from the members its ticket names (the runtime's own
/// deadline for the waiting command is the same): after it, the join has failed and its state
/// is dropped.
pub const JOIN_PATIENCE_MS: u64 = 60_000;

pub(super) struct Joining {
    pub(super) via: Vec<NodeId>,
    pub(super) refusals: Vec<String>,
    /// When it started (engine time).
    pub(super) since: u64,
}

impl<S: Storage> Engine<S> {
    /// Starts joining a flow with a ticket: asks each peer named in it to redeem the invite.
    /// Returns the peers to ask (the runtime dials them with the ticket's addresses).
    pub fn start_join(&mut self, ticket: &wire::InviteTicket, name: &str) -> Result<Vec<NodeId>> {
        if matches!(self.repo.holds(&ticket.flow), Ok(true))
            && self.is_member(&ticket.flow, &self.me.clone())
        {
            return Err(Error::Invalid(
                "this node is already a member of that flow".into(),
            ));
        }
        let mut via: Vec<NodeId> = Vec::new();
        for addr in &ticket.addrs {
            if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                if let Ok(node) = peer.to_base58().parse::<NodeId>() {
                    if !via.contains(&node) && node != self.me {
                        via.push(node);
                    }
                }
            }
        }
        if via.is_empty() {
            return Err(Error::Invalid(
                "the ticket names no member node to ask (it has no addresses)".into(),
            ));
        }
        let (flow, invite) = (
            ticket.flow.as_bytes().to_vec(),
            crate::identity::unhex(&ticket.invite).unwrap_or_default(),
        );
        // The secret never leaves this node: the request carries a proof that admits only us.
        let proof = InviteKey::from_secret(&ticket.secret).prove(&flow, &invite, &self.me);
        let request = JoinRequest {
            flow,
            invite,
            proof: proof.to_vec(),
            name: name.to_string(),
        };
        for peer in &via {
            self.out.join(peer, &ticket.flow, request.clone());
        }
        self.joining.insert(
            ticket.flow,
            Joining {
                via: via.clone(),
                refusals: Vec::new(),
                since: self.now,
            },
        );
        Ok(via)
    }

    /// A member node's answer to our join request.
    pub fn handle_join_response(&mut self, peer: &NodeId, flow: &FlowId, response: JoinResponse) {
        match response.result {
            Some(join_response::Result::Joined(_)) => {
                tracing::info!(target: "sync", %peer, %flow, "invite redeemed; fetching the flow");
                self.sync_with(peer, flow);
            }
            Some(join_response::Result::Refused(reason)) => self.join_refused(peer, flow, reason),
            None => self.join_refused(peer, flow, "no answer".into()),
        }
    }

    /// A join request of ours failed to reach `peer`.
    pub fn join_failed(&mut self, peer: &NodeId, flow: &FlowId, reason: String) {
        self.join_refused(peer, flow, reason);
    }

    pub(super) fn join_refused(&mut self, peer: &NodeId, flow: &FlowId, reason: String) {
        let Some(j) = self.joining.get_mut(flow) else {
            return;
        };
        j.refusals.push(format!("{peer}: {reason}"));
        if j.refusals.len() >= j.via.len() {
            let j = self.joining.remove(flow).expect("present");
            let reason = if j.via.len() == 1 {
                reason
            } else {
                j.refusals.join("; ")
            };
            self.out.event(Event::JoinFailed {
                flow: *flow,
                reason,
            });
        }
    }

    pub(super) fn finish_join(&mut self, flow: &FlowId) {
        if self.joining.contains_key(flow) && self.is_member(flow, &self.me.clone()) {
            self.joining.remove(flow);
            self.changed.insert(*flow);
            self.out.event(Event::Joined {
                flow: *flow,
            });
        }
    }

    /// Joins that got no answer in [`JOIN_PATIENCE_MS`] fail.
    pub(super) fn expire_joins(&mut self, now: u64) {
        let late: Vec<FlowId> = self
            .joining
            .iter()
            .filter(|(_, j)| now.saturating_sub(j.since) >= JOIN_PATIENCE_MS)
            .map(|(f, _)| *f)
            .collect();
        for flow in late {
            self.joining.remove(&flow);
            self.out.event(Event::JoinFailed {
                flow,
                reason: "no member node answered in time".into(),
            });
        }
    }

    #[cfg(test)]
    /// Whether a join of `flow` is under way.
    pub fn is_joining(&self, flow: &FlowId) -> bool {
        self.joining.contains_key(flow)
    }

    /// A peer asks to redeem an invite: check its proof and admit the peer. Until the proof
    /// verifies, every refusal is the same bytes (see [`RedeemError::Unknown`]): a flow not held
    /// here, one this node is not a member of, an unknown invite and a bad proof look alike.
    pub fn handle_join_request(&mut self, peer: &NodeId, request: JoinRequest) -> JoinResponse {
        let refuse = |why: &RedeemError| JoinResponse {
            result: Some(join_response::Result::Refused(why.to_string())),
        };
        let Some(flow) = flow_id(&request.flow) else {
            return refuse(&RedeemError::Unknown);
        };
        let name: String = request.name.chars().take(64).collect();
        match self
            .repo
            .redeem(&flow, &hex(&request.invite), &request.proof, peer, &name)
        {
            Ok(_) => {
                self.local_change(&flow);
                JoinResponse {
                    result: Some(join_response::Result::Joined(true)),
                }
            }
            // A request sent again (the answer to the first was lost): it is in.
            Err(RedeemError::AlreadyMember) => JoinResponse {
                result: Some(join_response::Result::Joined(true)),
            },
            Err(RedeemError::Failed(e)) => {
                tracing::warn!(target: "sync", %flow, "cannot admit {peer}: {e}");
                JoinResponse {
                    result: Some(join_response::Result::Refused(
                        "the member node could not record the join".into(),
                    )),
                }
            }
            Err(why) => refuse(&why),
        }
    }
}
