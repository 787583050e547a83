//! What the CLI and the API show of a flow: the flow as it stands with each member's sync
//! state ([`FlowView`]), its history ([`LogEntry`]), and a re-check of every stored change
//! ([`VerifyReport`]).

use super::*;

/// Per member of a flow: is this node in sync with them, and when did it last hear from them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct MemberSync {
    pub node_id: String,
    pub connected: bool,
    /// `None` until this node has exchanged sync messages with them.
    pub in_sync: Option<bool>,
    /// Unix seconds of their last sync message, if any.
    pub last_heard: Option<i64>,
    /// Their node's last answer about the flow was "not served here": most often the flow was
    /// offered to them and waits for them to accept it (SECURITY.md, "Consent").
    #[serde(default)]
    pub not_serving: bool,
    /// How this node is connected to them: directly, through a relay, or not.
    #[serde(default)]
    pub link: crate::api::Link,
}

/// A flow as `flow show` reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowView {
    #[serde(flatten)]
    pub flow: Flow,
    /// This node's id.
    #[serde(default)]
    pub me: String,
    /// This node's role in the flow (none once removed).
    #[serde(default)]
    pub my_role: Option<crate::flow::Role>,
    /// What the flow waits on this node's user for ([`Flow::waiting_on`]).
    #[serde(default)]
    pub waiting_on_me: Vec<crate::flow::Waiting>,
    pub heads: Vec<String>,
    /// Per other member: connected, in sync with this node, last heard from.
    #[serde(default)]
    pub sync: Vec<MemberSync>,
    /// Changes this node holds that fell by the removal rule (their author was removed
    /// concurrently, or they build on such a change): kept, never read as part of the flow.
    #[serde(default)]
    pub fallen: Vec<String>,
    /// Whether this node was removed from the flow (it holds the history up to its removal).
    #[serde(default)]
    pub removed_here: bool,
    /// This node's own changes among [`FlowView::fallen`] (they built on a removed member's
    /// work), each with what it did: for its user to make again if it still matters.
    #[serde(default)]
    pub fallen_mine: Vec<FallenEdit>,
    /// Set while the flow waits for this node's user to accept or decline it: who added this
    /// node, and as what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Offer>,
}

/// A change of this node's that fell by the removal rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FallenEdit {
    pub hash: String,
    /// What its operations did (peer text escaped), as in `flow log`.
    pub summary: String,
}

/// This node's changes among the fallen ones, oldest first, each with what it did.
pub(super) fn own_fallen(
    doc: &Automerge,
    standing: &Standing,
    flow: &Flow,
    me: &NodeId,
) -> Vec<FallenEdit> {
    let mine = |c: &Change| crate::identity::actor_node(c.actor_id()).as_ref() == Some(me);
    let any = standing
        .fallen
        .iter()
        .any(|h| doc.get_change_by_hash(h).is_some_and(|c| mine(&c)));
    if !any {
        return Vec::new();
    }
    // A summary reads what earlier changes made (a step's title), so the history is walked
    // from the start.
    let mut history = flow::History::new(doc);
    let mut out = Vec::new();
    for c in &doc.get_changes(&[]) {
        let dids = history.describe(c);
        if standing.fallen.contains(&c.hash()) && mine(c) {
            out.push(FallenEdit {
                hash: hex(&c.hash().0),
                summary: crate::text::summary(flow, &dids),
            });
        }
    }
    out
}

/// One entry of `flow log`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntry {
    pub hash: String,
    /// The node id whose key signed the change.
    pub author: String,
    /// The author's name in the flow's member records (raw), empty if they have none.
    pub name: String,
    /// The author's role in the flow's member records, if they have one.
    #[serde(default)]
    pub role: Option<Role>,
    /// Whether another member's name could be taken for the author's.
    #[serde(default)]
    pub name_clash: bool,
    pub at: i64,
    /// What the change's operations did (never the change's own message), with the peer text
    /// in it escaped for display.
    pub summary: String,
    /// Whether the change fell by the removal rule: it is history, not part of the flow.
    #[serde(default)]
    pub fallen: bool,
}

/// The result of `flow verify`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyReport {
    pub changes: usize,
    pub valid: usize,
    pub invalid: usize,
    /// Whether the re-verified history ends at the same heads as the stored document.
    pub heads_match: bool,
    pub problems: Vec<String>,
    /// Whether SQLite's integrity check found the whole database file sound.
    pub store_ok: bool,
    /// What the integrity check found wrong (empty when `store_ok`).
    pub integrity: Vec<String>,
}

impl<S: Storage> Repo<S> {
    pub fn show(&mut self, prefix: &str) -> Result<FlowView> {
        let id = self.resolve(prefix)?;
        self.standing(&id)?;
        let (doc, standing) = (&self.docs[&id], &self.standing[&id]);
        let flow = stands(doc, standing).flow(id.as_str());
        let heads = standing
            .heads
            .clone()
            .unwrap_or_else(|| doc.get_heads())
            .iter()
            .map(|h| hex(&h.0))
            .collect();
        let mut fallen: Vec<String> = standing.fallen.iter().map(|h| hex(&h.0)).collect();
        fallen.sort();
        let fallen_mine = own_fallen(doc, standing, &flow, self.identity.node_id());
        // Offline: what the address book remembers of each member.
        let seen: HashMap<String, i64> = self
            .store
            .reader()
            .peers()?
            .into_iter()
            .map(|p| (p.node, p.last_seen))
            .collect();
        let me = self.identity.node_id().to_string();
        let sync = flow
            .members
            .iter()
            .filter(|m| !m.removed && m.node_id != me)
            .map(|m| MemberSync {
                node_id: m.node_id.clone(),
                connected: false,
                in_sync: None,
                not_serving: false,
                link: crate::api::Link::Absent,
                last_heard: seen.get(&m.node_id).copied(),
            })
            .collect();
        let removed_here = flow.member(&me).is_some_and(|m| m.removed);
        let offer = self
            .offered
            .contains(&id)
            .then(|| consent::offer_in(&flow, &me));
        let my_role = flow.role_of(&me);
        // An offered flow waits on its user for one thing: an answer (`offer`).
        let waiting_on_me = if offer.is_some() {
            Vec::new()
        } else {
            flow.waiting_on(&me)
        };
        Ok(FlowView {
            flow,
            me,
            my_role,
            waiting_on_me,
            heads,
            sync,
            fallen,
            removed_here,
            offer,
            fallen_mine,
        })
    }

    /// The flow's history, one entry per change, dependencies first. Each summary is worked
    /// out from the change's operations ([`flow::History`]); the message a change carries is
    /// its author's free text and is not shown. Authors are named from the flow's member
    /// records, never from anything in the change.
    pub fn log(&mut self, prefix: &str) -> Result<Vec<LogEntry>> {
        let id = self.resolve(prefix)?;
        self.standing(&id)?;
        let (doc, standing) = (&self.docs[&id], &self.standing[&id]);
        let flow = stands(doc, standing).flow(id.as_str());
        let mut history = flow::History::new(doc);
        let clashing = flow.clashing_names();
        Ok(doc
            .get_changes(&[])
            .iter()
            .map(|c| {
                let author = crate::identity::actor_node(c.actor_id())
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| c.actor_id().to_hex_string());
                let member = flow.member(&author);
                LogEntry {
                    hash: hex(&c.hash().0),
                    name: member.map(|m| m.name.clone()).unwrap_or_default(),
                    role: member.map(|m| m.role),
                    name_clash: clashing.contains(&author),
                    author,
                    at: c.timestamp(),
                    summary: crate::text::summary(&flow, &history.describe(c)),
                    fallen: standing.fallen.contains(&c.hash()),
                }
            })
            .collect())
    }

    /// Re-checks every stored change from scratch: signature, dependencies, and policy.
    pub fn verify(&self, prefix: &str) -> Result<VerifyReport> {
        let id = self.resolve(prefix)?;
        // Damage in pages the flow's rows do not touch (another table, an index) is damage too.
        let integrity = self.store.integrity_check()?;
        let stored = self.signed_changes(&id)?;
        let mut fresh = Automerge::new();
        let out = auth::accept(
            &mut fresh,
            &id,
            &stored,
            || Ok::<_, Error>(Automerge::new()),
        )?;
        let mut problems: Vec<String> = out
            .rejected
            .iter()
            .map(|(h, r)| match h {
                Some(h) => format!("change {}: {r}", hex(&h.0)),
                None => format!("a change: {r}"),
            })
            .collect();
        problems.extend(
            out.pending
                .iter()
                .map(|v| format!("change {}: its dependencies are missing", hex(&v.hash().0))),
        );
        let mut stored_heads = self.load(&id)?.get_heads();
        let mut fresh_heads = fresh.get_heads();
        stored_heads.sort();
        fresh_heads.sort();
        Ok(VerifyReport {
            changes: stored.len(),
            valid: out.accepted.len(),
            invalid: stored.len() - out.accepted.len(),
            heads_match: stored_heads == fresh_heads,
            problems,
            store_ok: integrity.is_empty(),
            integrity,
        })
    }
}
