//! The local repository: identity + store + the accept path, with no network.
//!
//! Every write goes through one place: load the flow's document under the store's write lock,
//! make or receive changes, run them through [`auth`] (verify → authorize → apply), persist the
//! accepted ones with their signatures, commit. A command returns only after that commit.

use std::collections::HashMap;
use std::path::Path;

use automerge::transaction::CommitOptions;
use automerge::{Automerge, Change, ReadDoc};
use serde::{Deserialize, Serialize};

use crate::auth::{self, Outcome, SignedChange};
use crate::error::{Error, Result};
use crate::flow::{self, flow_id_of_genesis, new_flow_ops, Edit, Flow, Reader, Role};
use crate::identity::{hex, Identity, NodeId};
use crate::store::{FlowRow, Store, Writer};

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

/// Seconds since the Unix epoch.
pub fn system_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn system_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
    pub sync: Vec<crate::sync::MemberSync>,
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
}

pub struct Repo {
    store: Store,
    identity: Identity,
    clock: fn() -> i64,
    /// Documents loaded so far. Each is exactly what the store holds for its flow: any write
    /// that fails drops the cached copy, which is then loaded again.
    docs: HashMap<String, Automerge>,
    /// Each flow's current members, as of the heads they were read at.
    members_at: HashMap<String, MembersAt>,
    /// Per flow, roles known from changes judged earlier (see [`auth::RoleMemo`]).
    roles: HashMap<String, auth::RoleMemo>,
    /// Whether received changes were stored in the open group (for the crash point that
    /// follows their commit).
    group_received: bool,
}

/// A flow's current members (node id, role), and the heads they were read at.
type MembersAt = (Vec<automerge::ChangeHash>, Vec<(String, Role)>);

/// An invite just made: the change, and the ticket to hand to the invitee.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invitation {
    #[serde(flatten)]
    pub edit: EditOutcome,
    pub ticket: String,
    pub expires_at: i64,
}

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
    changes: &[(Vec<u8>, Vec<u8>, Vec<u8>)],
    now: i64,
) -> Result<()> {
    w.insert_changes(
        flow,
        changes
            .iter()
            .map(|(h, b, s)| (h.as_slice(), b.as_slice(), s.as_slice())),
    )?;
    let r = Reader::now(doc);
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
    /// Opens the repository in `home` (the identity must exist).
    pub fn open(home: &Path) -> Result<Repo> {
        let identity = Identity::load(home)?;
        let store = Store::open(home)?;
        Ok(Repo::new(store, identity))
    }

    pub fn new(store: Store, identity: Identity) -> Repo {
        Repo {
            store,
            identity,
            clock: system_clock,
            docs: HashMap::new(),
            members_at: HashMap::new(),
            roles: HashMap::new(),
            group_received: false,
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
                Ok(())
            }
            Err(e) => {
                self.docs.clear();
                self.members_at.clear();
                Err(e.into())
            }
        }
    }

    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Whether this node holds the flow.
    pub fn holds(&self, flow: &str) -> Result<bool> {
        Ok(self.docs.contains_key(flow) || self.store.reader().has_flow(flow)?)
    }

    /// The flow's document (loaded once, then kept).
    pub fn doc(&mut self, flow: &str) -> Result<&Automerge> {
        if !self.docs.contains_key(flow) {
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
            let members: Vec<(String, Role)> = Reader::now(&self.docs[flow])
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

    /// Records an invite in the flow and returns the ticket that redeems it.
    pub fn invite(
        &mut self,
        flow_prefix: &str,
        role: Role,
        expires_in: i64,
        uses: i64,
    ) -> Result<Invitation> {
        use sha2::Digest;
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
                secret_hash: hex(&sha2::Sha256::digest(secret)),
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

    /// Admits `joiner` to a flow with an invite, after checking the ticket's secret.
    pub fn redeem(
        &mut self,
        flow: &str,
        invite: &str,
        secret: &[u8],
        joiner: &NodeId,
        name: &str,
    ) -> Result<EditOutcome> {
        use sha2::Digest;
        let now = self.now();
        let current = Reader::now(self.doc(flow)?).flow_without_comments(flow);
        let inv = current
            .invites
            .iter()
            .find(|i| i.id == invite)
            .ok_or_else(|| Error::Invalid("unknown invite".into()))?;
        if inv.revoked {
            return Err(Error::Invalid("the invite was revoked".into()));
        }
        if inv.uses_left <= 0 {
            return Err(Error::Invalid("the invite has been used up".into()));
        }
        if inv.expires_at > 0 && now >= inv.expires_at {
            return Err(Error::Invalid("the invite has expired".into()));
        }
        if sha2::Sha256::digest(secret).as_slice() != inv.secret_hash.as_slice() {
            return Err(Error::Invalid("the invite's secret does not match".into()));
        }
        if current.role_of(joiner.as_str()).is_some() {
            return Err(Error::Invalid("already a member".into()));
        }
        self.edit(
            flow,
            &Edit::Redeem {
                invite: invite.to_string(),
                secret: hex(secret),
                joiner: joiner.to_string(),
                name: name.to_string(),
            },
        )
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn list(&self) -> Result<Vec<FlowRow>> {
        Ok(self.store.reader().flows()?)
    }

    /// The full id of the flow a prefix names.
    pub fn resolve(&self, prefix: &str) -> Result<String> {
        let ids = self.store.reader().flow_ids()?;
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
        let now = (self.clock)();
        self.store
            .write(|w| {
                let mut doc = Automerge::new().with_actor(me.actor());
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
                persist(w, &id, &doc, &[row(&mut change, &sig)], now)?;
                Ok((id, doc))
            })
            .map(|(id, doc)| {
                self.docs.insert(id.clone(), doc);
                id
            })
    }

    /// Makes one local edit, checked by the same policy as any received change.
    pub fn edit(&mut self, flow_prefix: &str, edit: &Edit) -> Result<EditOutcome> {
        let id = self.resolve(flow_prefix)?;
        let me = self.identity.clone();
        let now = (self.clock)();
        let Repo { store, docs, .. } = self;
        let result = store.write(|w| {
            let doc = match docs.entry(id.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(load_doc(w, &id)?),
            };
            doc.set_actor(me.actor());
            // Not the comments: a flow's comments grow without bound, and no edit reads them.
            let current = Reader::now(&*doc).flow_without_comments(&id);
            let mut tx = doc.transaction();
            let applied = edit.apply(&mut tx, &current, me.node_id(), now)?;
            let (hash, _) = tx.commit_with(
                CommitOptions::default()
                    .with_message(applied.summary.clone())
                    .with_time(now),
            );
            let hash = hash.ok_or_else(|| Error::Invalid("the edit changes nothing".into()))?;
            let mut change = doc.get_change_by_hash(&hash).expect("just committed");
            auth::authorize(doc, &change, me.node_id())?;
            let sig = me.sign_change(&hash);
            persist(w, &id, doc, &[row(&mut change, &sig)], now)?;
            Ok(EditOutcome {
                flow: id.clone(),
                change: hex(&hash.0),
                summary: applied.summary,
                id: applied.created,
            })
        });
        if result.is_err() {
            docs.remove(&id);
        }
        result
    }

    /// Runs changes received from elsewhere through verify → authorize → apply and stores the
    /// accepted ones. The flow must already exist here, unless the batch holds its genesis.
    pub fn receive(&mut self, flow_id: &str, batch: &[SignedChange]) -> Result<Outcome> {
        self.receive_new(flow_id, batch, false)
    }

    /// Like [`Repo::receive`]; for a flow this node does not hold yet, `require_member` keeps it
    /// only if the accepted changes make this node a current member.
    pub fn receive_new(
        &mut self,
        flow_id: &str,
        batch: &[SignedChange],
        require_member: bool,
    ) -> Result<Outcome> {
        crash_point("receive");
        let now = (self.clock)();
        let me = self.identity.node_id().to_string();
        let Repo {
            store, docs, roles, ..
        } = self;
        let memo = roles.entry(flow_id.to_string()).or_default();
        let result = store.write(|w| {
            let known = w.has_flow(flow_id)?;
            let doc = match docs.entry(flow_id.to_string()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(if known {
                    load_doc(w, flow_id)?
                } else {
                    Automerge::new()
                }),
            };
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
            if !known && require_member && Reader::now(&*doc).role_of(&me).is_none() {
                return Ok(Outcome {
                    known: out.known,
                    ..Outcome::default()
                });
            }
            if !known {
                let genesis = out
                    .accepted
                    .iter()
                    .find(|v| v.change.deps().is_empty())
                    .expect("a new flow's first accepted change is its genesis");
                w.insert_flow(flow_id, &genesis.hash().0, "", "open", now)?;
            }
            let rows: Vec<_> = out
                .accepted
                .iter()
                .map(|v| (v.hash().0.to_vec(), v.bytes.clone(), v.signature.to_vec()))
                .collect();
            persist(w, flow_id, doc, &rows, now)?;
            crash_point("stored");
            Ok(out)
        });
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
        result
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
        let doc = self.doc(&id)?;
        let flow = Reader::now(doc).flow(&id);
        let heads = doc.get_heads().iter().map(|h| hex(&h.0)).collect();
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
            .map(|m| crate::sync::MemberSync {
                node_id: m.node_id.clone(),
                connected: false,
                in_sync: None,
                last_heard: seen.get(&m.node_id).copied(),
            })
            .collect();
        Ok(FlowView { flow, heads, sync })
    }

    /// The flow's history, one entry per change, dependencies first. Each summary is worked
    /// out from the change's operations ([`flow::History`]); the message a change carries is
    /// its author's free text and is not shown. Authors are named from the flow's member
    /// records, never from anything in the change.
    pub fn log(&mut self, prefix: &str) -> Result<Vec<LogEntry>> {
        let id = self.resolve(prefix)?;
        let doc = self.doc(&id)?;
        let flow = Reader::now(doc).flow(&id);
        let mut history = flow::History::new(doc);
        let clashing = flow.clashing_names();
        Ok(doc
            .get_changes(&[])
            .iter()
            .map(|c| {
                let author = NodeId::from_public_key(c.actor_id().to_bytes())
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
                }
            })
            .collect())
    }

    /// Re-checks every stored change from scratch: signature, dependencies, and policy.
    pub fn verify(&self, prefix: &str) -> Result<VerifyReport> {
        let id = self.resolve(prefix)?;
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
        })
    }
}
