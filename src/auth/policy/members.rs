//! New members: each added by a manager, or by a member redeeming a valid invite for exactly
//! that member with the joiner's proof; a flow's first customer brought in by an owner.

use super::*;

/// How a redemption shows it holds the ticket.
pub(super) enum Proof<'a> {
    /// The joiner's signature with the invite's key.
    Signature(&'a [u8]),
    /// The ticket's secret, hex (invites made by earlier versions).
    LegacySecret(&'a str),
}

impl Judge<'_> {
    /// Each member this change adds is added by a manager, or by any member redeeming a valid
    /// invite for exactly that member (the joiner's proof, in the change, lets every node check
    /// it). A change redeems at most one invite, for one member, using up exactly one use.
    pub(super) fn check_new_members(&self) -> Result<(), Forbidden> {
        let mut redeemed: Option<&str> = None;
        for node in &self.members_created {
            let m = self.new_members.get(node);
            let role = m
                .and_then(|m| m.role)
                .ok_or_else(|| Forbidden("a new member must have a role".into()))?;
            match m.map(|m| (&m.invite, &m.proof, &m.legacy_secret)) {
                Some((Some(invite), proof, secret)) if proof.is_some() || secret.is_some() => {
                    if redeemed.is_some() {
                        return deny("one change redeems one invite for one member");
                    }
                    let proof = match (proof, secret) {
                        (Some(p), None) => Proof::Signature(p),
                        (None, Some(s)) => Proof::LegacySecret(s),
                        _ => return deny("an invite is redeemed with one proof"),
                    };
                    self.check_redemption(node, invite, proof, role)?;
                    redeemed = Some(invite);
                }
                Some((None, None, None)) | None => {
                    self.needs(self.role.manages(), "cannot add members")?;
                    self.needs(
                        role != Role::Customer || self.may_bring_a_customer(),
                        "cannot make anyone a customer: only a customer can",
                    )?;
                }
                _ => return deny("an invite redemption needs the invite and the joiner's proof"),
            }
        }
        for (invite, left) in &self.uses_left_puts {
            // The redeemed invite's count was checked with the redemption.
            if redeemed != Some(invite.as_str()) {
                self.needs(self.role.manages(), "cannot manage invites")?;
                if *left < 0 {
                    return deny("an invite's uses cannot be negative");
                }
            }
        }
        Ok(())
    }

    /// A customer may bring in another customer; an owner may bring in the first one, while
    /// the flow (in the change's causal past) has no customer — otherwise a flow started by its
    /// owner could never get its customer.
    pub(super) fn may_bring_a_customer(&self) -> bool {
        match self.role {
            Role::Customer => true,
            Role::Owner => {
                let before = self.before();
                let members = before.container(field::MEMBERS);
                !members.is_some_and(|m| {
                    before
                        .map_maps(&m)
                        .iter()
                        .any(|(node, _)| before.role_of(node) == Some(Role::Customer))
                })
            }
            _ => false,
        }
    }

    /// Checks the redemption of `invite` for `node`, all of it as of the change's dependencies:
    /// the invite is live, the proof admits this node, the role is the invite's, and the change
    /// moves `uses_left` from n to n − 1 with one put and does nothing else to the invite.
    pub(super) fn check_redemption(
        &self,
        node: &str,
        invite: &str,
        proof: Proof<'_>,
        role: Role,
    ) -> Result<(), Forbidden> {
        let before = self.before();
        let inv = before
            .container(field::INVITES)
            .and_then(|m| before.obj(&m, invite, ObjType::Map))
            .map(|o| before.read_invite(invite, &o))
            .ok_or_else(|| Forbidden(format!("there is no invite {invite}")))?;
        if before.member(node).is_some() {
            // Not even a removed member: its old proof is in the document for anyone to copy.
            return deny("an invite admits only someone who has never been a member");
        }
        if inv.revoked {
            return deny("the invite was revoked");
        }
        if inv.uses_left <= 0 {
            return deny("the invite has been used up");
        }
        if inv.expires_at > 0 && self.time >= inv.expires_at {
            return deny("the invite has expired");
        }
        match proof {
            Proof::Signature(sig) if !inv.public_key.is_empty() => {
                let joiner: NodeId = node.parse().map_err(Forbidden)?;
                let invite_bytes = crate::identity::unhex(invite)
                    .filter(|b| crate::identity::hex(b) == invite)
                    .ok_or_else(|| {
                        Forbidden("the invite's id is not one a ticket can name".into())
                    })?;
                let flow = self.flow_id_in_past()?;
                if !crate::identity::verify_invite_proof(
                    &inv.public_key,
                    &flow,
                    &invite_bytes,
                    &joiner,
                    sig,
                ) {
                    return deny("the joiner's proof does not match the invite");
                }
            }
            Proof::Signature(_) => {
                return deny("this invite was made by an older version and takes its secret");
            }
            Proof::LegacySecret(_) if !inv.public_key.is_empty() => {
                return deny("this invite is redeemed with the joiner's proof, never its secret");
            }
            Proof::LegacySecret(secret) => {
                let secret = crate::identity::unhex(secret).unwrap_or_default();
                if <[u8; 32]>::from(sha2::Sha256::digest(&secret)).as_slice()
                    != inv.secret_hash.as_slice()
                {
                    return deny("the invite's secret does not match");
                }
            }
        }
        if role != inv.role {
            return deny("a redeemed invite gives exactly the invite's role");
        }
        let puts: Vec<i64> = self
            .uses_left_puts
            .iter()
            .filter(|(i, _)| i == invite)
            .map(|(_, left)| *left)
            .collect();
        if puts != [inv.uses_left - 1] {
            return deny("redeeming an invite must use it up by one, with one write");
        }
        if self.invite_edits.iter().filter(|i| *i == invite).count() != 1 {
            return deny("a change that redeems an invite changes nothing else about it");
        }
        Ok(())
    }

    /// The flow's id, from its genesis: the change that made the members map (only a genesis
    /// can make it), found from the map's id in the change's past.
    pub(super) fn flow_id_in_past(&self) -> Result<Vec<u8>, Forbidden> {
        let before = self.before();
        before
            .container(field::MEMBERS)
            .and_then(|m| self.doc.hash_for_opid(&m))
            .map(|genesis| crate::flow::flow_id_of_genesis(&genesis).as_bytes().to_vec())
            .ok_or_else(|| Forbidden("the flow's beginning is not in the change's past".into()))
    }
}
