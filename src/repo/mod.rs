//! The local repository: identity + store + the accept path, with no network.
//!
//! Every write goes through one place: load the flow's document under the store's write lock,
//! make or receive changes, run them through [`auth`] (verify → authorize → apply), persist the
//! accepted ones with their signatures, commit. A command returns only after that commit.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use automerge::transaction::CommitOptions;
use automerge::{Automerge, Change, ReadDoc};
use serde::{Deserialize, Serialize};

use crate::auth::removal::{self, Removal};
use crate::auth::{self, Outcome, SignedChange};
use crate::error::{Error, Result};
use crate::flow::{self, flow_id_of_genesis, new_flow_ops, Edit, Flow, Reader, Role};
use crate::identity::{
    hex, unhex, verify_invite_proof, Identity, IdentityError, InviteKey, NodeId, KEY_FILE,
};
use crate::store::{Store, StoreError, Writer};

mod consent;
pub use consent::{Listed, Offer, Offered, MAX_OFFERS, MAX_OFFERS_PER_PEER};

/// Write a snapshot once this many changes have accumulated since the last one.
pub const SNAPSHOT_EVERY: i64 = 256;

/// Test-only crash switch: when `COFLOW_CRASH_AT` names this point, the process aborts here, as
/// a power cut would stop it. The points, in order, on the receive path: `receive` (a batch
/// arrived), `applied` (verified, authorized and applied in memory), `stored` (written inside
/// the open transaction), `committed` (durable, before anything is advertised).
pub fn crash_point(label: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("COFLOW_CRASH_AT").ok())
        .as_deref()
        == Some(label)
    {
        eprintln!("crash switch: aborting at '{label}'");
        std::process::abort();
    }
}

pub use crate::clock::{system_clock, system_clock_ms};

/// Per member of a flow: is this node in sync with them, and when did it last hear from them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct MemberSync {
    pub node_id: String,
    pub connected: bool,
    /// `None` until this node has exchanged sync messages with them.
    pub in_sync: Option<bool>,
    /// Unix seconds of their last sync message, if any.
    pub last_heard: Option<i64>,
}

/// The result of a local edit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EditOutcome {
    pub flow: String,
    pub change: String,
    pub summary: String,
    /// The id of the step, decision or comment the edit created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A flow as `flow show` reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowView {
    #[serde(flatten)]
    pub flow: Flow,
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
fn own_fallen(doc: &Automerge, standing: &Standing, flow: &Flow, me: &NodeId) -> Vec<FallenEdit> {
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
                summary: crate::cli::text::summary(flow, &dids),
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

pub struct Repo {
    store: Store,
    identity: Identity,
    /// The actor id of this process's changes: the node key and an incarnation of its own
    /// ([`Identity::new_incarnation`]), so that a restored copy of this data dir, or the same
    /// key on another machine, never writes under the same (actor, seq) as this one.
    actor: automerge::ActorId,
    clock: fn() -> i64,
    /// Documents loaded so far. Each is exactly what the store holds for its flow: any write
    /// that fails drops the cached copy, which is then loaded again.
    docs: HashMap<String, Automerge>,
    /// Each flow's current members, as of the heads they were read at.
    members_at: HashMap<String, MembersAt>,
    /// Per flow, roles known from changes judged earlier (see [`auth::RoleMemo`]).
    roles: HashMap<String, auth::RoleMemo>,
    /// Per flow, what fell by the removal rule and where the rest stands, as of the document's
    /// heads it was worked out at.
    standing: HashMap<String, Standing>,
    /// Whether received changes were stored in the open group (for the crash point that
    /// follows their commit).
    group_received: bool,
    /// Flows offered to this node and not accepted yet ([`consent`]): stored, not held.
    offered: HashSet<String>,
    /// A flow was declined in the open group: clear the write-ahead log once it commits.
    wipe_log_after_commit: bool,
}

/// A flow's current members (node id, role), and the heads they were read at.
type MembersAt = (Vec<automerge::ChangeHash>, Vec<(String, Role)>);

/// How a flow stands under the removal rule ([`auth::removal`]).
#[derive(Clone, Debug, Default)]
pub struct Standing {
    /// The document's heads this was worked out at.
    at: Vec<automerge::ChangeHash>,
    /// Accepted changes that fell: by a member removed concurrently, or built on such a change.
    pub fallen: HashSet<automerge::ChangeHash>,
    /// The heads of what stands; `None` when nothing fell (the document's own heads).
    pub heads: Option<Vec<automerge::ChangeHash>>,
    /// The effective removals standing, by target key (for answering removed members).
    removals: Vec<Removal>,
}

/// Works out how `doc` stands given the removals among its changes.
fn standing_of(doc: &Automerge, removals: Vec<Removal>) -> Standing {
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
fn standing_after(
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

/// Makes `edit` as one change on `doc` (under the actor it has), from the flow as `doc` reads
/// now: the change's hash, the change, and what the edit produced.
fn make_edit(
    doc: &mut Automerge,
    edit: &Edit,
    flow: &str,
    me: &NodeId,
    now: i64,
) -> Result<(automerge::ChangeHash, Change, flow::Applied)> {
    // Not the comments: a flow's comments grow without bound, and no edit reads them.
    let current = Reader::now(&*doc).flow_without_comments(flow);
    let mut tx = doc.transaction();
    let applied = edit.apply(&mut tx, &current, me, now)?;
    let (hash, _) = tx.commit_with(
        CommitOptions::default()
            .with_message(applied.summary.clone())
            .with_time(now),
    );
    let hash = hash.ok_or_else(|| Error::Invalid("the edit changes nothing".into()))?;
    let change = doc.get_change_by_hash(&hash).expect("just committed");
    Ok((hash, change, applied))
}

/// Reads `doc` as it stands.
fn stands<'a>(doc: &'a Automerge, standing: &'a Standing) -> Reader<'a, Automerge> {
    match &standing.heads {
        Some(h) => Reader::at(doc, h),
        None => Reader::now(doc),
    }
}

/// Finds the removals `accepted` make and records them; returns every removal of the flow.
fn record_removals(
    w: &Writer<'_>,
    flow: &str,
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

/// Meta key holding the node id of the key the store belongs to: a key file replaced by another
/// (or damaged into another, as a version 1 file without checksum can be) is refused instead of
/// making this node's store someone else's.
pub const META_NODE_ID: &str = "node_id";

/// Meta key under which the node records the addresses it listens on (for tickets).
pub const META_LISTEN_ADDRS: &str = "listen_addrs";

/// Loads a flow's document from the store: latest snapshot plus the changes stored after it.
pub fn load_doc(w: &Writer<'_>, flow: &str) -> Result<Automerge> {
    let corrupt = |reason: String| Error::Corrupt {
        flow: flow.to_string(),
        reason,
    };
    let (upto, mut doc) = match w.snapshot(flow)? {
        Some((upto, bytes)) => (
            upto,
            Automerge::load(&bytes).map_err(|e| corrupt(e.to_string()))?,
        ),
        None => (0, Automerge::new()),
    };
    let changes = w
        .changes_after(flow, upto)?
        .into_iter()
        .map(|c| Change::from_bytes(c.signed.bytes).map_err(|e| corrupt(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    doc.apply_changes(changes)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(doc)
}

/// Stores accepted changes and refreshes the flow's summary row and snapshot.
fn persist(
    w: &Writer<'_>,
    flow: &str,
    doc: &Automerge,
    standing: &Standing,
    changes: &[(Vec<u8>, Vec<u8>, Vec<u8>)],
    now: i64,
) -> Result<()> {
    w.insert_changes(
        flow,
        changes
            .iter()
            .map(|(h, b, s)| (h.as_slice(), b.as_slice(), s.as_slice())),
    )?;
    let r = stands(doc, standing);
    let title = r.string(&automerge::ROOT, flow::field::TITLE);
    let status = r.string(&automerge::ROOT, flow::field::STATUS);
    w.update_flow(flow, &title, &status, now)?;
    // Sequence numbers count the changes of every flow: count this flow's own.
    let upto = w.snapshot_seq(flow)?.unwrap_or(0);
    if w.count_after(flow, upto)? >= SNAPSHOT_EVERY {
        w.put_snapshot(flow, w.last_seq(flow)?, &doc.save())?;
    }
    Ok(())
}

fn row(change: &mut Change, signature: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        change.hash().0.to_vec(),
        change.bytes().into_owned(),
        signature.to_vec(),
    )
}

impl Repo {
    /// Opens the repository in `home`: the key and the store must both exist, and the store
    /// must be this key's (see [`META_NODE_ID`]).
    pub fn open(home: &Path) -> Result<Repo> {
        let identity = Identity::load(home)?;
        let store = Store::open(home)?;
        Repo::bound(store, identity, home)
    }

    /// Creates a node's data dir (`coflow init`): an empty store, then the key file. Refuses a
    /// data dir that has a key, or a database but no key (restore the key instead).
    pub fn init(home: &Path, identity: Identity) -> Result<Repo> {
        if home.join(KEY_FILE).exists() {
            return Err(IdentityError::Exists(home.to_path_buf()).into());
        }
        crate::identity::create_data_dir(home).map_err(|source| Error::Io {
            path: home.to_path_buf(),
            source,
        })?;
        let store = Store::create(home).map_err(|e| match e {
            StoreError::Exists { path } => Error::Invalid(format!(
                "{} holds a coflow store but there is no key next to it: restore {KEY_FILE} \
                 from a backup (a new key would not be this node)",
                path.display()
            )),
            e => e.into(),
        })?;
        identity.save(home)?;
        Repo::bound(store, identity, home)
    }

    /// An empty store next to an existing key (`coflow init --new-store`), for a node whose
    /// database was lost and will not be restored. Refuses to replace a store.
    pub fn new_store(home: &Path) -> Result<Repo> {
        let identity = Identity::load(home)?;
        let store = Store::create(home)?;
        Repo::bound(store, identity, home)
    }

    /// The repository of `store` and `identity`, once the store is known to be this key's. A
    /// store from before the binding is bound now.
    fn bound(store: Store, identity: Identity, home: &Path) -> Result<Repo> {
        let me = identity.node_id().as_str();
        match store.reader().meta(META_NODE_ID)? {
            Some(owner) if owner != me => {
                return Err(Error::Invalid(format!(
                    "the key in {} is node {me}, but the database in {} belongs to node {owner}: \
                     the key file was replaced or damaged; restore it from a backup",
                    home.join(KEY_FILE).display(),
                    home.display()
                )))
            }
            Some(_) => {}
            None => store.reader().set_meta(META_NODE_ID, me)?,
        }
        let mut repo = Repo::new(store, identity);
        repo.index_removals()?;
        Ok(repo)
    }

    /// Records the removals in every flow of a store made before removals were recorded
    /// (schema 2), once.
    fn index_removals(&mut self) -> Result<()> {
        if self
            .store
            .reader()
            .meta(crate::store::META_REMOVALS_INDEXED)?
            .is_some()
        {
            return Ok(());
        }
        self.store.write(|w| {
            for flow in w.flow_ids()? {
                let doc = load_doc(w, &flow)?;
                let mut found = Vec::new();
                for node in removal::graph_of(&doc) {
                    let Some(change) = doc.get_change_by_hash(&node.hash) else {
                        continue;
                    };
                    if let Some(author) = crate::identity::actor_node(change.actor_id()) {
                        found.extend(removal::removals_in(&doc, &change, &author));
                    }
                }
                w.insert_removals(&flow, &found)?;
            }
            w.set_meta(crate::store::META_REMOVALS_INDEXED, "1")?;
            Ok::<_, Error>(())
        })
    }

    pub fn new(store: Store, identity: Identity) -> Repo {
        let offered = consent::store_offered(&store);
        Repo {
            store,
            actor: identity.new_incarnation(),
            identity,
            clock: system_clock,
            docs: HashMap::new(),
            members_at: HashMap::new(),
            roles: HashMap::new(),
            standing: HashMap::new(),
            group_received: false,
            offered,
            wipe_log_after_commit: false,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Opens a group commit: every write until [`Repo::commit_group`] shares one durable commit.
    /// Whatever is written meanwhile is not durable yet: its effects must not be made known
    /// (replies, acknowledged heads) before the commit.
    pub fn begin_group(&mut self) -> Result<()> {
        Ok(self.store.begin_group()?)
    }

    /// Whether the open group has written anything (its commit will cost an fsync).
    pub fn group_wrote(&self) -> bool {
        self.store.group_wrote()
    }

    /// Commits the open group. If that fails nothing in it was stored, and every document in
    /// memory, which may hold its changes, is dropped (loaded again from the store when needed).
    pub fn commit_group(&mut self) -> Result<()> {
        let received = std::mem::take(&mut self.group_received);
        match self.store.commit_group() {
            Ok(()) => {
                if received {
                    crash_point("committed");
                }
                if std::mem::take(&mut self.wipe_log_after_commit) {
                    self.wipe_log();
                }
                Ok(())
            }
            Err(e) => {
                self.docs.clear();
                self.members_at.clear();
                self.offered = consent::store_offered(&self.store);
                Err(e.into())
            }
        }
    }

    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Whether this node holds the flow.
    pub fn holds(&self, flow: &str) -> Result<bool> {
        if self.offered.contains(flow) {
            return Ok(false);
        }
        Ok(self.docs.contains_key(flow) || self.store.reader().has_flow(flow)?)
    }

    /// The flow's document (loaded once, then kept). A flow the store does not have is an
    /// error, not an empty document (which, kept, would make the flow look held).
    pub fn doc(&mut self, flow: &str) -> Result<&Automerge> {
        if !self.docs.contains_key(flow) {
            if !self.holds_in_store(flow) {
                return Err(Error::Invalid(format!("no flow {flow} here")));
            }
            let doc = load_doc(&self.store.reader(), flow)?;
            self.docs.insert(flow.to_string(), doc);
        }
        Ok(&self.docs[flow])
    }

    /// The flow's document, mutable, for the sync engine to update a sync state with a message
    /// that carries no changes (Automerge's API wants `&mut` for that). Nothing else may write
    /// through it: changes enter only through [`Repo::edit`] and [`Repo::receive`].
    pub fn doc_for_sync(&mut self, flow: &str) -> Result<&mut Automerge> {
        self.doc(flow)?;
        Ok(self.docs.get_mut(flow).expect("just loaded"))
    }

    /// How the flow stands under the removal rule: what fell, and the heads of the rest.
    pub fn standing(&mut self, flow: &str) -> Result<&Standing> {
        let heads = self.doc(flow)?.get_heads();
        if self.standing.get(flow).is_none_or(|s| s.at != heads) {
            let removals = self.store.reader().removals(flow)?;
            let st = standing_of(&self.docs[flow], removals);
            self.standing.insert(flow.to_string(), st);
        }
        Ok(&self.standing[flow])
    }

    /// The heads of the effective removals of `node` from `flow`, if it was removed: what a
    /// removed member is still told of the flow (its history up to its removal).
    pub fn removal_of(
        &mut self,
        flow: &str,
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
    pub fn save_standing(&mut self, flow: &str) -> Result<Vec<u8>> {
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

    /// The signature stored with a change of `flow`.
    pub fn signature(&self, flow: &str, hash: &automerge::ChangeHash) -> Result<Option<Vec<u8>>> {
        Ok(self.store.reader().signature(flow, &hash.0)?)
    }

    /// A stored change of `flow` with its signature.
    pub fn signed_change(
        &self,
        flow: &str,
        hash: &automerge::ChangeHash,
    ) -> Result<Option<SignedChange>> {
        Ok(self.store.reader().signed_change(flow, &hash.0)?)
    }

    /// The flow's current (not removed) members.
    pub fn members(&mut self, flow: &str) -> Result<Vec<(String, Role)>> {
        Ok(self.current_members(flow)?.to_vec())
    }

    /// The role of `node` in `flow` if it is a current member (no copy of the member list).
    pub fn role_of(&mut self, flow: &str, node: &str) -> Result<Option<Role>> {
        Ok(self
            .current_members(flow)?
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, r)| *r))
    }

    fn current_members(&mut self, flow: &str) -> Result<&[(String, Role)]> {
        // A flow not held here has no members here; loading it would cache an empty document
        // and make the flow look held.
        if !self.holds(flow)? {
            return Ok(&[]);
        }
        // The sync engine asks this for every message and peer: read only the members map, and
        // only when the document has changed since the last answer (same heads, same members).
        let heads = self.doc(flow)?.get_heads();
        if self.members_at.get(flow).is_none_or(|(at, _)| *at != heads) {
            self.standing(flow)?;
            let members: Vec<(String, Role)> = stands(&self.docs[flow], &self.standing[flow])
                .members()
                .into_iter()
                .filter(|m| !m.removed)
                .map(|m| (m.node_id, m.role))
                .collect();
            self.members_at.insert(flow.to_string(), (heads, members));
        }
        Ok(&self.members_at[flow].1)
    }

    /// Ids of every flow held here.
    pub fn flow_ids(&self) -> Result<Vec<String>> {
        Ok(self.store.reader().flow_ids()?)
    }

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
        getrandom::fill(&mut secret).map_err(|e| Error::Invalid(e.to_string()))?;
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
        let addrs = self
            .store
            .reader()
            .meta(META_LISTEN_ADDRS)?
            .and_then(|a| serde_json::from_str::<Vec<String>>(&a).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let ticket = crate::wire::InviteTicket {
            flow: edit.flow.clone(),
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
        flow: &str,
        invite: &str,
        proof: &[u8],
        joiner: &NodeId,
        name: &str,
    ) -> std::result::Result<EditOutcome, RedeemError> {
        let (Some(flow_bytes), Some(invite_bytes)) = (unhex(flow), unhex(invite)) else {
            return Err(RedeemError::Unknown);
        };
        // Until the proof verifies, even this node's own trouble reading the flow answers as
        // an unknown flow would: a stranger must not tell a held flow from any other.
        if !matches!(self.holds(flow), Ok(true)) {
            return Err(RedeemError::Unknown);
        }
        let now = self.now();
        let me = self.identity.node_id().clone();
        let current = match self.standing(flow) {
            Ok(_) => stands(&self.docs[flow], &self.standing[flow]).flow_without_comments(flow),
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
                verify_invite_proof(&i.public_key, &flow_bytes, &invite_bytes, joiner, proof)
            })
            .ok_or(RedeemError::Unknown)?;
        // The joiner holds the ticket: it may know why it cannot get in.
        if inv.revoked {
            return Err(RedeemError::Revoked);
        }
        if inv.uses_left <= 0 {
            return Err(RedeemError::UsedUp);
        }
        if inv.expires_at > 0 && now >= inv.expires_at {
            return Err(RedeemError::Expired);
        }
        match current.member(joiner.as_str()) {
            Some(m) if m.removed => return Err(RedeemError::Removed),
            Some(_) => return Err(RedeemError::AlreadyMember),
            None => {}
        }
        Ok(self.edit(
            flow,
            &Edit::Redeem {
                invite: invite.to_string(),
                proof: hex(proof),
                joiner: joiner.to_string(),
                name: name.to_string(),
            },
        )?)
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The full id of the flow a prefix names: one held here or offered to this node.
    pub fn resolve(&self, prefix: &str) -> Result<String> {
        let ids = self.store.reader().all_flow_ids()?;
        Ok(flow::resolve_prefix(
            "flow",
            prefix,
            ids.iter().map(|s| s.as_str()),
        )?)
    }

    pub fn load(&self, flow: &str) -> Result<Automerge> {
        load_doc(&self.store.reader(), flow)
    }

    /// Starts a flow with the caller as its only member.
    pub fn create_flow(&mut self, title: &str, need: &str, role: Role) -> Result<String> {
        let me = self.identity.clone();
        // A genesis of its own: two flows started alike in the same second by this process
        // would otherwise be one change, and one flow id.
        let actor = self.identity.new_incarnation();
        let now = (self.clock)();
        self.store
            .write(|w| {
                let mut doc = Automerge::new().with_actor(actor);
                let mut tx = doc.transaction();
                new_flow_ops(&mut tx, me.node_id(), me.name(), title, need, role, now)?;
                let (hash, _) = tx.commit_with(
                    CommitOptions::default()
                        .with_message(format!("started the flow '{}'", title.trim()))
                        .with_time(now),
                );
                let hash = hash.ok_or_else(|| Error::Invalid("nothing to create".into()))?;
                let mut change = doc.get_change_by_hash(&hash).expect("just committed");
                auth::authorize(&doc, &change, me.node_id())?;
                let id = flow_id_of_genesis(&hash);
                w.insert_flow(&id, &hash.0, title.trim(), "open", now)?;
                let sig = me.sign_change(&hash);
                persist(
                    w,
                    &id,
                    &doc,
                    &Standing::default(),
                    &[row(&mut change, &sig)],
                    now,
                )?;
                Ok((id, doc))
            })
            .map(|(id, doc)| {
                self.docs.insert(id.clone(), doc);
                id
            })
    }

    /// Makes one local edit, checked by the same policy as any received change.
    pub fn edit(&mut self, flow_prefix: &str, edit: &Edit) -> Result<EditOutcome> {
        let id = self.resolve_held(flow_prefix)?;
        let me = self.identity.clone();
        let now = (self.clock)();
        let standing = self.standing(&id)?.clone();
        if let Some(fallen_mine) = standing.fallen.iter().find(|h| {
            self.docs[&id]
                .get_change_meta_by_hash(h)
                .is_some_and(|m| *m.actor == self.actor)
        }) {
            // A change of this incarnation fell: the flow as it stands lacks it, so writing on
            // from there under the same actor would reuse its sequence number and op ids.
            tracing::info!(target: "repo", flow = %id, fallen = %fallen_mine, "a change of ours fell; writing under a new incarnation");
            self.actor = self.identity.new_incarnation();
        }
        let Repo {
            store,
            docs,
            actor,
            standing: cache,
            ..
        } = self;
        let result = store.write(|w| {
            let doc = match docs.entry(id.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(load_doc(w, &id)?),
            };
            let (hash, change, applied) = match &standing.heads {
                // Nothing fell: edit the document itself.
                None => {
                    doc.set_actor(actor.clone());
                    make_edit(doc, edit, &id, me.node_id(), now)?
                }
                // Something fell: the edit builds on the flow as it stands, made on a copy at
                // those heads and then added to the document.
                Some(heads) => {
                    let mut fork = doc
                        .fork_at(heads)
                        .map_err(|e| Error::Invalid(e.to_string()))?
                        .with_actor(actor.clone());
                    let made = make_edit(&mut fork, edit, &id, me.node_id(), now)?;
                    auth::apply_guarded(doc, vec![made.1.clone()])
                        .map_err(|r| Error::Invalid(r.to_string()))?;
                    made
                }
            };
            let (summary, created) = (applied.summary, applied.created);
            let mut change = change;
            let size = change.bytes().len();
            if size > flow::limit::CHANGE_BYTES {
                return Err(Error::Invalid(format!(
                    "the edit is too large: {size} bytes, and a change may have at most {}",
                    flow::limit::CHANGE_BYTES
                )));
            }
            auth::authorize(doc, &change, me.node_id())?;
            // `standing` was worked out at the heads the edit was made on.
            let removes = !removal::removals_in(doc, &change, me.node_id()).is_empty();
            let st = match standing_after(Some(&standing), &standing.at, doc, &[&change]) {
                Some(st) if !removes => st,
                _ => standing_of(
                    doc,
                    record_removals(w, &id, doc, &[(&change, me.node_id())])?,
                ),
            };
            let sig = me.sign_change(&hash);
            persist(w, &id, doc, &st, &[row(&mut change, &sig)], now)?;
            Ok((
                EditOutcome {
                    flow: id.clone(),
                    change: hex(&hash.0),
                    summary,
                    id: created,
                },
                st,
            ))
        });
        match result {
            Ok((outcome, st)) => {
                cache.insert(id, st);
                Ok(outcome)
            }
            Err(e) => {
                docs.remove(&id);
                Err(e)
            }
        }
    }

    /// Runs changes received from elsewhere through verify → authorize → apply and stores the
    /// accepted ones. The flow must already exist here, unless the batch holds its genesis.
    /// A flow this node is joining, or one a test or benchmark seeds, is taken as held.
    pub fn receive(&mut self, flow_id: &str, batch: &[SignedChange]) -> Result<Outcome> {
        if self.offered.contains(flow_id) {
            // Joining a flow offered earlier is consent.
            self.accept(flow_id)?;
        }
        Ok(self.take(flow_id, batch, None)?.0)
    }

    /// Like [`Repo::receive`], for changes peer `from` sent unasked about a flow this node
    /// does not hold: kept as an offer ([`consent`]) if they make this node a current member
    /// and there is room. Nothing more is kept for a flow already offered.
    pub fn receive_offer(
        &mut self,
        flow_id: &str,
        batch: &[SignedChange],
        from: &str,
    ) -> Result<(Outcome, Offered)> {
        if self.offered.contains(flow_id) {
            return Ok((Outcome::default(), Offered::Waiting));
        }
        self.take(flow_id, batch, Some(from))
    }

    fn take(
        &mut self,
        flow_id: &str,
        batch: &[SignedChange],
        offer: Option<&str>,
    ) -> Result<(Outcome, Offered)> {
        crash_point("receive");
        let now = (self.clock)();
        let me = self.identity.node_id().to_string();
        let Repo {
            store,
            docs,
            roles,
            standing,
            ..
        } = self;
        let memo = roles.entry(flow_id.to_string()).or_default();
        let mut fate = Offered::NotMember;
        let result = store.write(|w| {
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
            let doc = match docs.entry(flow_id.to_string()) {
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
                w.insert_flow(flow_id, &genesis.hash().0, "", "open", now)?;
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
            standing.insert(flow_id.to_string(), st);
            Ok(out)
        });
        if fate == Offered::Kept && result.is_ok() {
            self.offered.insert(flow_id.to_string());
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

    fn holds_in_store(&self, flow: &str) -> bool {
        self.store.reader().has_flow(flow).unwrap_or(false)
    }

    /// Every stored change of a flow, with its signature, dependencies first.
    pub fn signed_changes(&self, flow: &str) -> Result<Vec<SignedChange>> {
        Ok(self
            .store
            .reader()
            .changes_after(flow, 0)?
            .into_iter()
            .map(|c| c.signed)
            .collect())
    }

    pub fn show(&mut self, prefix: &str) -> Result<FlowView> {
        let id = self.resolve(prefix)?;
        self.standing(&id)?;
        let (doc, standing) = (&self.docs[&id], &self.standing[&id]);
        let flow = stands(doc, standing).flow(&id);
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
                last_heard: seen.get(&m.node_id).copied(),
            })
            .collect();
        let removed_here = flow.member(&me).is_some_and(|m| m.removed);
        let offer = self
            .offered
            .contains(&id)
            .then(|| consent::offer_in(&flow, &me));
        Ok(FlowView {
            flow,
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
        let flow = stands(doc, standing).flow(&id);
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
                    summary: crate::cli::text::summary(&flow, &history.describe(c)),
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
