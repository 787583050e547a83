//! How a flow stands under the removal rule ([`auth::removal`]): what fell, the heads of what
//! stands, worked out once per change of the document and kept.

use super::*;

/// How a flow stands under the removal rule ([`auth::removal`]).
#[derive(Clone, Debug, Default)]
pub struct Standing {
    /// The document's heads this was worked out at.
    pub(super) at: Vec<automerge::ChangeHash>,
    /// Accepted changes that fell: by a member removed concurrently, or built on such a change.
    pub fallen: HashSet<automerge::ChangeHash>,
    /// The heads of what stands; `None` when nothing fell (the document's own heads).
    pub heads: Option<Vec<automerge::ChangeHash>>,
    /// The effective removals standing, by target key (for answering removed members).
    pub(super) removals: Vec<Removal>,
}

/// Works out how `doc` stands given the removals among its changes.
pub(super) fn standing_of(doc: &Automerge, removals: Vec<Removal>) -> Standing {
    let at = doc.get_heads();
    if removals.is_empty() {
        return Standing {
            at,
            ..Standing::default()
        };
    }
    let graph = removal::graph_of(doc);
    let fallen = removal::fallen(&graph, &removals);
    let heads = (!fallen.is_empty()).then(|| removal::standing_heads(&graph, &fallen));
    let removals = removals
        .into_iter()
        .filter(|r| !fallen.contains(&r.change))
        .collect();
    Standing {
        at,
        fallen,
        heads,
        removals,
    }
}

/// How `doc` stands now that `added` (dependencies first) joined it, worked out from how it
/// stood at `before` without a pass over the flow — when nothing the removal rule looks at can
/// have changed: none of `added` touched the members (the caller knows), none is by a member an
/// effective removal removed, and none builds on a fallen change. `None`: work it out afresh.
pub(super) fn standing_after(
    prev: Option<&Standing>,
    before: &[automerge::ChangeHash],
    doc: &Automerge,
    added: &[&Change],
) -> Option<Standing> {
    let prev = prev.filter(|p| p.at == before)?;
    let targets: HashSet<[u8; 32]> = prev.removals.iter().map(|r| r.target).collect();
    for c in added {
        if c.deps().iter().any(|d| prev.fallen.contains(d)) {
            return None;
        }
        let key = crate::identity::actor_key(c.actor_id().to_bytes());
        if key.is_some_and(|k| targets.iter().any(|t| t[..] == *k)) {
            return None;
        }
    }
    let heads = prev.heads.as_ref().map(|h| {
        let mut heads = h.clone();
        for c in added {
            heads.retain(|x| !c.deps().contains(x));
            heads.push(c.hash());
        }
        heads.sort();
        heads
    });
    Some(Standing {
        at: doc.get_heads(),
        fallen: prev.fallen.clone(),
        heads,
        removals: prev.removals.clone(),
    })
}

/// Reads `doc` as it stands.
pub(super) fn stands<'a>(doc: &'a Automerge, standing: &'a Standing) -> Reader<'a, Automerge> {
    match &standing.heads {
        Some(h) => Reader::at(doc, h),
        None => Reader::now(doc),
    }
}

/// Finds the removals `accepted` make and records them; returns every removal of the flow.
pub(super) fn record_removals(
    w: &impl Tables,
    flow: &FlowId,
    doc: &Automerge,
    accepted: &[(&Change, &NodeId)],
) -> Result<Vec<Removal>> {
    let new: Vec<Removal> = accepted
        .iter()
        .flat_map(|(c, a)| removal::removals_in(doc, c, a))
        .collect();
    w.insert_removals(flow, &new)?;
    Ok(w.removals(flow)?)
}

impl<S: Storage> Repo<S> {
    /// How the flow stands under the removal rule: what fell, and the heads of the rest.
    pub fn standing(&mut self, flow: &FlowId) -> Result<&Standing> {
        let heads = self.doc(flow)?.get_heads();
        if self.standing.get(flow).is_none_or(|s| s.at != heads) {
            let removals = self.store.reader().removals(flow)?;
            let st = standing_of(&self.docs[flow], removals);
            self.standing.insert(*flow, st);
        }
        Ok(&self.standing[flow])
    }

    /// The heads of the effective removals of `node` from `flow`, if it was removed: what a
    /// removed member is still told of the flow (its history up to its removal).
    pub fn removal_of(
        &mut self,
        flow: &FlowId,
        node: &NodeId,
    ) -> Result<Option<Vec<automerge::ChangeHash>>> {
        if !self.holds(flow)? {
            return Ok(None);
        }
        let st = self.standing(flow)?;
        let mut heads: Vec<_> = st
            .removals
            .iter()
            .filter(|r| &r.target == node.public_key())
            .map(|r| r.change)
            .collect();
        heads.sort();
        heads.dedup();
        Ok((!heads.is_empty()).then_some(heads))
    }

    /// The document as it stands (without fallen changes), saved: what `flow export
    /// --format automerge` writes, loadable by any Automerge with the flow's standing heads.
    pub fn save_standing(&mut self, flow: &FlowId) -> Result<Vec<u8>> {
        let heads = self.standing(flow)?.heads.clone();
        let doc = self.doc(flow)?;
        Ok(match heads {
            Some(h) => doc
                .fork_at(&h)
                .map_err(|e| Error::Invalid(e.to_string()))?
                .save(),
            None => doc.save(),
        })
    }
}
