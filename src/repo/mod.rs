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
use crate::flow::{
    self, flow_id_of_genesis, new_flow_ops, Edit, Flow, FlowId, FlowStatus, Reader, Role,
};
use crate::identity::{
    hex, unhex, verify_invite_proof, Identity, IdentityError, InviteKey, NodeId, KEY_FILE,
};
use crate::store::{Changes, Flows, Peers, Storage, Store, StoreError, Tables};

mod accept;
mod consent;
mod invite;
mod open;
mod standing;
mod summary;
mod views;
pub use consent::{Listed, Offer, Offered};
#[cfg(feature = "testkit")]
pub use consent::{MAX_OFFERS, MAX_OFFERS_PER_PEER};
pub use invite::{Invitation, RedeemError};
pub use standing::Standing;
use standing::{record_removals, standing_after, standing_of, stands};
pub use summary::Summary;
pub use views::{FlowView, LogEntry, MemberSync, VerifyReport};

/// Write a snapshot once this many changes have accumulated since the last one.
pub const SNAPSHOT_EVERY: i64 = 256;

/// Test-only crash switch (built with the `testkit` feature only, as the tests build coflow):
/// when `COFLOW_CRASH_AT` names this point, the process aborts here, as
/// a power cut would stop it. The points, in order, on the receive path: `receive` (a batch
/// arrived), `applied` (verified, authorized and applied in memory), `stored` (written inside
/// the open transaction), `committed` (durable, before anything is advertised).
pub fn crash_point(label: &str) {
    if !cfg!(feature = "testkit") {
        return;
    }
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

pub use crate::clock::system_clock;
#[cfg(feature = "testkit")]
pub use crate::clock::system_clock_ms;

/// The result of a local edit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EditOutcome {
    pub flow: FlowId,
    pub change: String,
    pub summary: String,
    /// The id of the step, decision or comment the edit created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

pub struct Repo<S: Storage = Store> {
    store: S,
    identity: Identity,
    /// The actor id of this process's changes: the node key and an incarnation of its own
    /// ([`Identity::new_incarnation`]), so that a restored copy of this data dir, or the same
    /// key on another machine, never writes under the same (actor, seq) as this one.
    actor: automerge::ActorId,
    /// The repository's own clock (seconds since the Unix epoch), for what it does with no
    /// engine around it (the CLI's edits while no node runs); see [`Repo::now`].
    clock: fn() -> i64,
    /// The time the engine gave ([`Repo::set_now`]), used instead of `clock` while set.
    given: Option<i64>,
    /// Documents loaded so far. Each is exactly what the store holds for its flow: any write
    /// that fails drops the cached copy, which is then loaded again.
    docs: HashMap<FlowId, Automerge>,
    /// Summaries of held flows read since their last change ([`Summary`]).
    summaries: HashMap<FlowId, Summary>,
    /// Per flow, roles known from changes judged earlier (see [`auth::RoleMemo`]).
    roles: HashMap<FlowId, auth::RoleMemo>,
    /// Per flow, what fell by the removal rule and where the rest stands, as of the document's
    /// heads it was worked out at.
    standing: HashMap<FlowId, Standing>,
    /// Whether received changes were stored in the open group (for the crash point that
    /// follows their commit).
    group_received: bool,
    /// Flows offered to this node and not accepted yet ([`consent`]): stored, not held.
    offered: HashSet<FlowId>,
    /// A flow was declined in the open group: clear the write-ahead log once it commits.
    wipe_log_after_commit: bool,
}

/// Makes `edit` as one change on `doc` (under the actor it has), from the flow as `doc` reads
/// now: the change's hash, the change, and what the edit produced.
fn make_edit(
    doc: &mut Automerge,
    edit: &Edit,
    flow: &FlowId,
    me: &NodeId,
    now: i64,
) -> Result<(automerge::ChangeHash, Change, flow::Applied)> {
    // Not the comments: a flow's comments grow without bound, and no edit reads them.
    let current = Reader::now(&*doc).flow_without_comments(flow.as_str());
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

/// Meta key holding the node id of the key the store belongs to: a key file replaced by another
/// (or damaged into another, as a version 1 file without checksum can be) is refused instead of
/// making this node's store someone else's.
pub const META_NODE_ID: &str = "node_id";

/// Meta key under which the node records the addresses it listens on (for tickets).
pub const META_LISTEN_ADDRS: &str = "listen_addrs";

/// Loads a flow's document from the store: latest snapshot plus the changes stored after it.
/// The stored changes came from peers: a panic inside Automerge while loading them is an error
/// (the flow is reported corrupt), not the end of the node.
pub fn load_doc(w: &impl Tables, flow: &FlowId) -> Result<Automerge> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load_unguarded(w, flow))).unwrap_or_else(
        |_| {
            Err(Error::Corrupt {
                flow: flow.to_string(),
                reason: "loading it crashes Automerge".into(),
            })
        },
    )
}

fn load_unguarded(w: &impl Tables, flow: &FlowId) -> Result<Automerge> {
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
    w: &impl Tables,
    flow: &FlowId,
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
    w.set_summary(flow, &Summary::of(doc, standing).encode())?;
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

impl<S: Storage> Repo<S> {
    pub fn new(store: S, identity: Identity) -> Repo<S> {
        let offered = consent::store_offered(&store);
        Repo {
            store,
            actor: identity.new_incarnation(),
            identity,
            clock: system_clock,
            given: None,
            docs: HashMap::new(),
            summaries: HashMap::new(),
            roles: HashMap::new(),
            standing: HashMap::new(),
            group_received: false,
            offered,
            wipe_log_after_commit: false,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Opens a group commit: every write until [`Repo::commit_group`] shares one durable commit.
    /// Whatever is written meanwhile is not durable yet: its effects must not be made known
    /// (replies, acknowledged heads) before the commit.
    pub fn begin_group(&mut self) -> Result<()> {
        Ok(self.store.begin_group()?)
    }

    /// Whether the open group has written anything (its commit will cost an fsync); for tests.
    #[cfg(feature = "testkit")]
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
                self.summaries.clear();
                self.offered = consent::store_offered(&self.store);
                Err(e.into())
            }
        }
    }

    /// The time of what the repository does now, in seconds since the Unix epoch: the time its
    /// engine gave ([`Repo::set_now`]) if it has one, else its own clock.
    pub fn now(&self) -> i64 {
        self.given.unwrap_or_else(self.clock)
    }

    /// The time the engine runs at, for everything done until it gives another (`None`: back to
    /// the repository's own clock). The engine calls it with the time its caller gave it, so
    /// nothing the engine has the repository do reads a clock.
    pub fn set_now(&mut self, secs: Option<i64>) {
        self.given = secs;
    }

    /// Whether this node holds the flow.
    pub fn holds(&self, flow: &FlowId) -> Result<bool> {
        if self.offered.contains(flow) {
            return Ok(false);
        }
        // A cached summary or document means held (both go when a flow is declined); only
        // otherwise ask the store, so the per-message member checks cost no query.
        Ok(self.summaries.contains_key(flow)
            || self.docs.contains_key(flow)
            || self.store.reader().has_flow(flow)?)
    }

    /// The flow's document (loaded once, then kept). A flow the store does not have is an
    /// error, not an empty document (which, kept, would make the flow look held).
    pub fn doc(&mut self, flow: &FlowId) -> Result<&Automerge> {
        if !self.docs.contains_key(flow) {
            if !self.holds_in_store(flow) {
                return Err(Error::Invalid(format!("no flow {flow} here")));
            }
            let doc = load_doc(&self.store.reader(), flow)?;
            self.docs.insert(*flow, doc);
        }
        Ok(&self.docs[flow])
    }

    /// The flow's document, mutable, for the sync engine to update a sync state with a message
    /// that carries no changes (Automerge's API wants `&mut` for that). Nothing else may write
    /// through it: changes enter only through [`Repo::edit`] and [`Repo::receive`].
    pub fn doc_for_sync(&mut self, flow: &FlowId) -> Result<&mut Automerge> {
        self.doc(flow)?;
        Ok(self.docs.get_mut(flow).expect("just loaded"))
    }

    /// The signature stored with a change of `flow`.
    pub fn signature(&self, flow: &FlowId, hash: &automerge::ChangeHash) -> Result<Option<Vec<u8>>> {
        Ok(self.store.reader().signature(flow, &hash.0)?)
    }

    /// A stored change of `flow` with its signature.
    pub fn signed_change(
        &self,
        flow: &FlowId,
        hash: &automerge::ChangeHash,
    ) -> Result<Option<SignedChange>> {
        Ok(self.store.reader().signed_change(flow, &hash.0)?)
    }

    /// The flow's current (not removed) members.
    pub fn members(&mut self, flow: &FlowId) -> Result<Vec<(String, Role)>> {
        Ok(self.current_members(flow)?.to_vec())
    }

    /// The role of `node` in `flow` if it is a current member (no copy of the member list).
    pub fn role_of(&mut self, flow: &FlowId, node: &str) -> Result<Option<Role>> {
        Ok(self
            .current_members(flow)?
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, r)| *r))
    }

    fn current_members(&mut self, flow: &FlowId) -> Result<&[(String, Role)]> {
        // The sync engine asks this for every message and peer: it reads the flow's summary,
        // not its document.
        Ok(self.summary(flow)?.map_or(&[], |s| s.members.as_slice()))
    }

    /// Ids of every flow held here.
    pub fn flow_ids(&self) -> Result<Vec<FlowId>> {
        Ok(self.store.reader().flow_ids()?)
    }

    #[cfg(feature = "testkit")]
    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The full id of the flow a prefix names: one held here or offered to this node.
    pub fn resolve(&self, prefix: &str) -> Result<FlowId> {
        let ids = self.store.reader().all_flow_ids()?;
        flow::resolve_prefix("flow", prefix, ids.iter().map(FlowId::as_str))?
            .parse()
            .map_err(Error::Invalid)
    }

    pub fn load(&self, flow: &FlowId) -> Result<Automerge> {
        load_doc(&self.store.reader(), flow)
    }

    /// Starts a flow with the caller as its only member.
    pub fn create_flow(&mut self, title: &str, need: &str, role: Role) -> Result<FlowId> {
        let me = self.identity.clone();
        // A genesis of its own: two flows started alike in the same second by this process
        // would otherwise be one change, and one flow id.
        let actor = self.identity.new_incarnation();
        let now = self.now();
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
                w.insert_flow(&id, &hash.0, title.trim(), FlowStatus::Open.as_str(), now)?;
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
                self.docs.insert(id, doc);
                id
            })
    }

    /// Makes one local edit, checked by the same policy as any received change.
    pub fn edit(&mut self, flow_prefix: &str, edit: &Edit) -> Result<EditOutcome> {
        let id = self.resolve_held(flow_prefix)?;
        let me = self.identity.clone();
        let now = self.now();
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
        self.summaries.remove(&id);
        let Repo {
            store,
            docs,
            actor,
            standing: cache,
            ..
        } = self;
        let result = store.write(|w| {
            let doc = match docs.entry(id) {
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
                    flow: id,
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

    /// Every stored change of a flow, with its signature, dependencies first.
    pub fn signed_changes(&self, flow: &FlowId) -> Result<Vec<SignedChange>> {
        Ok(self
            .store
            .reader()
            .changes_after(flow, 0)?
            .into_iter()
            .map(|c| c.signed)
            .collect())
    }
}
