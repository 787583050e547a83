//! Consent (SECURITY.md, "Consent"): a flow someone else put this node into waits until its
//! user accepts it.
//!
//! A flow this node created, or joined with a ticket, is held from the start. A flow that
//! arrives because a member added this node by node id is *offered*: its first message is
//! verified, judged and stored, but the flow is not held — nothing more is taken for it, it is
//! not synced, served or announced, and it cannot be edited — until `coflow flow accept`. A
//! declined flow is deleted; its id and the members it had are remembered, and their further
//! offers of it are turned away. At most [`MAX_OFFERS`] flows wait at once, at most
//! [`MAX_OFFERS_PER_PEER`] of them sent by any one node, each one message (at most
//! [`crate::wire::MAX_SYNC_MESSAGE`]) of changes.

use serde::{Deserialize, Serialize};

use super::{load_doc, Repo};
use crate::error::{Error, Result};
use crate::flow::{Flow, FlowId, Reader, Role};
use crate::store::{FlowRow, Flows, Storage, Tables};

/// How many offered flows wait for their user at most; further offers are not kept.
pub const MAX_OFFERS: usize = 16;
/// How many of the waiting offers one node may have sent.
pub const MAX_OFFERS_PER_PEER: usize = 2;

/// What became of changes a peer sent unasked about a flow this node does not hold
/// ([`Repo::receive_offer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// They do not make this node a current member (or none was accepted): nothing kept.
    NotMember,
    /// Kept: the flow waits for this node's user.
    Kept,
    /// They make this node a member, but [`MAX_OFFERS`] or [`MAX_OFFERS_PER_PEER`] is reached:
    /// nothing kept.
    NoRoom,
    /// The flow was offered before and waits: nothing more kept.
    Waiting,
    /// This node's user declined the flow: nothing kept.
    Declined,
}

/// Who offered a flow to this node, and as what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// The member who added this node (node id).
    pub by: String,
    /// That member's name in the flow (raw: escape it for display).
    pub by_name: String,
    pub by_role: Option<Role>,
    /// This node's role in the flow.
    pub role: Option<Role>,
}

/// One line of `flow list`: a held flow, or one offered and waiting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Listed {
    #[serde(flatten)]
    pub row: FlowRow,
    /// Whether the flow waits for this node's user to accept or decline it.
    #[serde(default)]
    pub pending: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Offer>,
    /// What the flow waits on this node's user for ([`crate::flow::Flow::waiting_on`]).
    #[serde(default)]
    pub waiting: Vec<crate::flow::Waiting>,
}

/// The offered flows in `store`.
pub(super) fn store_offered(store: &impl Storage) -> std::collections::HashSet<FlowId> {
    match store.reader().pending_ids() {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            tracing::error!(target: "repo", "cannot read the offered flows: {e}");
            Default::default()
        }
    }
}

/// Whether one more offer from `from` may be kept; `Err` says why not.
pub(super) fn room_for_offer(w: &impl Tables, from: &str) -> std::result::Result<(), String> {
    let offers = w
        .offers()
        .map_err(|e| format!("cannot read the offers: {e}"))?;
    if offers.len() >= MAX_OFFERS {
        return Err(format!(
            "{MAX_OFFERS} offered flows already wait for this node's user"
        ));
    }
    if offers.iter().filter(|(_, by)| by == from).count() >= MAX_OFFERS_PER_PEER {
        return Err(format!(
            "{MAX_OFFERS_PER_PEER} flows offered by this peer already wait for this node's user"
        ));
    }
    Ok(())
}

/// The offer `flow` makes to `me`: who added it, and as what.
pub(super) fn offer_in(flow: &Flow, me: &str) -> Offer {
    let mine = flow.member(me);
    let by = mine.map(|m| m.added_by.clone()).unwrap_or_default();
    let adder = flow.member(&by);
    Offer {
        by_name: adder.map(|m| m.name.clone()).unwrap_or_default(),
        by_role: adder.map(|m| m.role),
        role: mine.map(|m| m.role),
        by,
    }
}

impl<S: Storage> Repo<S> {
    /// The flows held here, then those offered and waiting, each oldest first.
    pub fn list(&mut self) -> Result<Vec<Listed>> {
        let mut out: Vec<Listed> = self
            .store
            .reader()
            .flows()?
            .into_iter()
            .map(|row| Listed {
                row,
                pending: false,
                offer: None,
                waiting: Vec::new(),
            })
            .collect();
        let me = self.identity.node_id().to_string();
        let ids: Vec<FlowId> = out.iter().map(|l| l.row.id).collect();
        for (listed, waiting) in out.iter_mut().zip(self.waiting(&ids)?) {
            listed.waiting = waiting;
        }
        let reader = self.store.reader();
        for (row, _) in reader.offers()? {
            let flow = Reader::now(&load_doc(&reader, &row.id)?).flow(row.id.as_str());
            out.push(Listed {
                offer: Some(offer_in(&flow, &me)),
                pending: true,
                row,
                waiting: Vec::new(),
            });
        }
        Ok(out)
    }

    #[cfg(feature = "testkit")]
    /// Whether `flow` was offered to this node and waits for its user.
    pub fn is_offered(&self, flow: &FlowId) -> bool {
        self.offered.contains(flow)
    }

    /// The full id of the flow a prefix names, if this node holds it: an offered flow must be
    /// accepted before it is changed.
    pub(super) fn resolve_held(&self, prefix: &str) -> Result<FlowId> {
        let id = self.resolve(prefix)?;
        if self.offered.contains(&id) {
            return Err(Error::Invalid(format!(
                "flow {id} was offered to you and waits for your answer: `coflow flow accept \
                 {short}` to take part, or `coflow flow decline {short}`",
                short = &id.as_str()[..8]
            )));
        }
        Ok(id)
    }

    /// The full id of an offered flow a prefix names.
    fn resolve_offered(&self, prefix: &str) -> Result<FlowId> {
        let id = match self.resolve(prefix) {
            Ok(id) => id,
            Err(e) => {
                let declined = match prefix.parse() {
                    Ok(flow) => self.store.reader().declined_members(&flow)?.is_some(),
                    Err(_) => false,
                };
                if declined {
                    return Err(Error::Invalid(format!(
                        "you declined flow {prefix} and its content was deleted: to take part \
                         after all, ask a member for an invite ticket (`coflow flow join TICKET`)"
                    )));
                }
                return Err(e);
            }
        };
        if !self.offered.contains(&id) {
            return Err(Error::Invalid(format!(
                "flow {id} is already held here: only a flow offered to you and not yet \
                 accepted can be accepted or declined"
            )));
        }
        Ok(id)
    }

    /// Accepts an offered flow (`coflow flow accept`): from now on it is held like any other,
    /// and syncs. Returns its id.
    pub fn accept(&mut self, prefix: &str) -> Result<FlowId> {
        let id = self.resolve_offered(prefix)?;
        self.store.write(|w| w.accept_flow(&id))?;
        self.offered.remove(&id);
        Ok(id)
    }

    /// Declines an offered flow (`coflow flow decline`): what was stored for it is deleted, and
    /// offers of it by the members it had are turned away from now on. Returns its id.
    pub fn decline(&mut self, prefix: &str) -> Result<FlowId> {
        let id = self.resolve_offered(prefix)?;
        let now = self.now();
        let offered_by = self
            .store
            .reader()
            .offers()?
            .into_iter()
            .find(|(row, _)| row.id == id)
            .map(|(_, by)| by);
        let mut members: Vec<String> = Reader::now(self.doc(&id)?)
            .members()
            .into_iter()
            .map(|m| m.node_id)
            .collect();
        members.extend(offered_by);
        members.sort();
        members.dedup();
        self.store.write(|w| w.decline_flow(&id, &members, now))?;
        if self.store.in_group() {
            self.wipe_log_after_commit = true;
        } else {
            self.wipe_log();
        }
        self.docs.remove(&id);
        self.roles.remove(&id);
        self.standing.remove(&id);
        self.summaries.remove(&id);
        self.offered.remove(&id);
        Ok(id)
    }

    /// For a flow offered to this node (waiting, or declined): whether `peer` is one of its
    /// members (such a peer is told the flow is not served here, so that it stops offering it).
    /// `None` for any other flow.
    pub fn offer_member(&mut self, flow: &FlowId, peer: &str) -> Option<bool> {
        if self.offered.contains(flow) {
            return Some(
                self.doc(flow)
                    .map(|d| Reader::now(d).members().iter().any(|m| m.node_id == peer))
                    .unwrap_or(false),
            );
        }
        match self.store.reader().declined_members(flow) {
            Ok(Some(members)) => Some(members.iter().any(|m| m == peer)),
            _ => None,
        }
    }

    /// [`Storage::wipe_log`], logged if it fails (the content is already gone from the database).
    pub(super) fn wipe_log(&self) {
        if let Err(e) = self.store.wipe_log() {
            tracing::warn!(target: "repo", "cannot clear the write-ahead log after a decline: {e}");
        }
    }
}
