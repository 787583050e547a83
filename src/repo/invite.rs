//! Invites: recording one (the document keeps only the public key of the ticket's secret) and
//! redeeming one for a joiner who proves it holds the ticket.

use super::*;

/// An invite just made: the change, and the ticket to hand to the invitee.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invitation {
    #[serde(flatten)]
    pub edit: EditOutcome,
    pub ticket: String,
    pub expires_at: i64,
}

/// Why a member node does not admit a joiner. Everything short of a valid proof of the ticket is
/// [`RedeemError::Unknown`], so a stranger learns nothing from a refusal: not whether this node
/// holds the flow, nor whether the invite exists, nor what state it is in.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// No such flow here (or this node is not a member of it), no such invite, an invite made
    /// by an earlier version, or a proof that does not verify.
    #[error("unknown flow or invite")]
    Unknown,
    #[error("the invite was revoked")]
    Revoked,
    #[error("the invite has expired")]
    Expired,
    #[error("the invite has been used up")]
    UsedUp,
    #[error("the joining node is already a member of the flow")]
    AlreadyMember,
    #[error("the joining node was removed from the flow; only a manager can restore it")]
    Removed,
    /// The node could not record the admission.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl<S: Storage> Repo<S> {
    /// Records an invite in the flow and returns the ticket that redeems it. The ticket holds
    /// a fresh secret; the document holds only the public key derived from it.
    pub fn invite(
        &mut self,
        flow_prefix: &str,
        role: Role,
        expires_in: i64,
        uses: i64,
    ) -> Result<Invitation> {
        if expires_in <= 0 {
            return Err(Error::Invalid("an invite must expire in the future".into()));
        }
        let mut secret = [0u8; 16];
        crate::identity::random(&mut secret).map_err(|e| Error::Invalid(e.to_string()))?;
        let expires_at = self.now() + expires_in;
        let edit = self.edit(
            flow_prefix,
            &Edit::CreateInvite {
                role,
                public_key: hex(&InviteKey::from_secret(&secret).public_key()),
                expires_at,
                uses,
            },
        )?;
        let mut addrs = self
            .store
            .reader()
            .meta(META_LISTEN_ADDRS)?
            .and_then(|a| serde_json::from_str::<Vec<String>>(&a).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|a| a.parse().ok())
            .collect::<Vec<libp2p::Multiaddr>>();
        if addrs.is_empty() {
            // No address known yet (the node never ran): the ticket still names the node, and
            // the joiner looks it up in the DHT.
            let me = self.identity().node_id().peer_id();
            addrs.push(libp2p::Multiaddr::empty().with(libp2p::multiaddr::Protocol::P2p(me)));
        }
        let ticket = crate::wire::InviteTicket {
            flow: edit.flow,
            invite: edit.id.clone().expect("an invite has an id"),
            secret,
            addrs,
        };
        Ok(Invitation {
            edit,
            ticket: ticket.encode(),
            expires_at,
        })
    }

    /// Admits `joiner` to a flow with an invite, if `proof` is the joiner's proof that it
    /// holds the ticket ([`InviteKey::prove`]). The proof is checked before anything about the
    /// invite is looked at: without it, every refusal is [`RedeemError::Unknown`], the same as
    /// for a flow this node does not hold.
    pub fn redeem(
        &mut self,
        flow: &FlowId,
        invite: &str,
        proof: &[u8],
        joiner: &NodeId,
        name: &str,
    ) -> std::result::Result<EditOutcome, RedeemError> {
        let Some(invite_bytes) = unhex(invite) else {
            return Err(RedeemError::Unknown);
        };
        // Until the proof verifies, even this node's own trouble reading the flow answers as
        // an unknown flow would: a stranger must not tell a held flow from any other.
        if !matches!(self.holds(flow), Ok(true)) {
            return Err(RedeemError::Unknown);
        }
        let now = self.now();
        let me = *self.identity.node_id();
        let current = match self.standing(flow) {
            Ok(_) => stands(&self.docs[flow], &self.standing[flow]).flow_without_comments(flow.as_str()),
            Err(e) => {
                tracing::warn!(target: "repo", %flow, "cannot read the flow to judge a join: {e}");
                return Err(RedeemError::Unknown);
            }
        };
        if current.role_of(me.as_str()).is_none() {
            return Err(RedeemError::Unknown);
        }
        let inv = current
            .invites
            .iter()
            .find(|i| i.id == invite)
            .filter(|i| {
                verify_invite_proof(&i.public_key, flow.as_bytes(), &invite_bytes, joiner, proof)
            })
            .ok_or(RedeemError::Unknown)?;
        // The joiner holds the ticket: it may know why it cannot get in. One that is in
        // already (its first request got in, and the answer was lost with its connection) is
        // told so before anything its own redemption changed (a use, say).
        match current.member(joiner.as_str()) {
            Some(m) if m.removed => return Err(RedeemError::Removed),
            Some(_) => return Err(RedeemError::AlreadyMember),
            None => {}
        }
        if inv.revoked {
            return Err(RedeemError::Revoked);
        }
        if inv.uses_left <= 0 {
            return Err(RedeemError::UsedUp);
        }
        if inv.expires_at > 0 && now >= inv.expires_at {
            return Err(RedeemError::Expired);
        }
        Ok(self.edit(
            flow.as_str(),
            &Edit::Redeem {
                invite: invite.to_string(),
                proof: hex(proof),
                joiner: joiner.to_string(),
                name: name.to_string(),
            },
        )?)
    }
}
