//! [`MemStore`]: the store's tables as plain collections, for simulations and tests (a thousand
//! nodes in one process), with the SQLite store's semantics.
//!
//! Every write made inside a transaction or a group records how to undo it; a write that fails
//! undoes its own records (back to where it started), a commit forgets them. So a failed write
//! costs what it wrote, never a copy of the store.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::auth::removal::Removal;

mod tables;

/// The store in memory. What the SQLite store refuses, it refuses with the same error (a flow
/// stored twice; a change, removal or snapshot of a flow not stored). Two stores are equal when
/// their tables are (what a write recorded to undo is not compared).
#[derive(Debug, Default)]
pub struct MemStore {
    tables: RefCell<Rows>,
    /// How to undo the writes of the open transaction or group, oldest first.
    undo: RefCell<Vec<Undo>>,
    /// Whether writes are recorded in `undo` (inside [`Storage::write`] or a group).
    logging: Cell<bool>,
    /// Rows changed since the store was made (SQLite's `total_changes`).
    changed: Cell<u64>,
    /// Set while a group is open: `changed` at its start.
    group: Option<u64>,
}

/// The tables.
#[derive(Clone, Debug, PartialEq)]
struct Rows {
    flows: BTreeMap<FlowId, FlowEntry>,
    /// The next flow's row id (SQLite's rowid: the order flows were stored in).
    next_rowid: i64,
    changes: HashMap<FlowId, FlowChanges>,
    /// The next change's sequence number (`AUTOINCREMENT`: never reused once committed).
    next_seq: i64,
    snapshots: HashMap<FlowId, (i64, Vec<u8>)>,
    removals: HashMap<FlowId, FlowRemovals>,
    declined: BTreeMap<FlowId, (String, i64)>,
    meta: BTreeMap<String, String>,
    peers: BTreeMap<String, PeerRow>,
}

/// A flow's removals, in the order of SQLite's primary key: (change, target) → rank.
type FlowRemovals = BTreeMap<([u8; 32], [u8; 32]), u8>;

#[derive(Clone, Debug, PartialEq)]
struct FlowEntry {
    /// (The genesis hash the SQLite store keeps is not: nothing reads it back.)
    rowid: i64,
    title: String,
    status: String,
    created_at: i64,
    updated_at: i64,
    /// `None` while held (accepted); the node that offered it while pending.
    offered_by: Option<String>,
    summary: String,
}

/// A flow's changes in insertion order, and where each hash is among them.
#[derive(Clone, Debug, Default, PartialEq)]
struct FlowChanges {
    rows: Vec<StoredChange>,
    by_hash: HashMap<Vec<u8>, usize>,
}

/// How to undo one write: what was there before.
#[derive(Clone, Debug)]
enum Undo {
    Flow(FlowId, Option<FlowEntry>),
    NextRowid(i64),
    /// Title, status and `updated_at` of a flow.
    FlowRow(FlowId, String, String, i64),
    Offered(FlowId, Option<String>),
    Summary(FlowId, String),
    /// The flow's last change was appended.
    Appended(FlowId),
    NextSeq(i64),
    Changes(FlowId, Option<FlowChanges>),
    Snapshot(FlowId, Option<(i64, Vec<u8>)>),
    Removal(FlowId, ([u8; 32], [u8; 32])),
    Removals(FlowId, Option<FlowRemovals>),
    Declined(FlowId, Option<(String, i64)>),
    Meta(String, Option<String>),
    Peer(String, Option<PeerRow>),
}

/// Puts back what a map had under `key`.
fn restore<K, V>(map: &mut impl MapLike<K, V>, key: K, old: Option<V>) {
    match old {
        Some(v) => map.put(key, v),
        None => map.take(&key),
    }
}

trait MapLike<K, V> {
    fn put(&mut self, k: K, v: V);
    fn take(&mut self, k: &K);
}

impl<K: Ord, V> MapLike<K, V> for BTreeMap<K, V> {
    fn put(&mut self, k: K, v: V) {
        self.insert(k, v);
    }
    fn take(&mut self, k: &K) {
        self.remove(k);
    }
}

impl<K: std::hash::Hash + Eq, V> MapLike<K, V> for HashMap<K, V> {
    fn put(&mut self, k: K, v: V) {
        self.insert(k, v);
    }
    fn take(&mut self, k: &K) {
        self.remove(k);
    }
}

impl Default for Rows {
    fn default() -> Rows {
        Rows {
            flows: BTreeMap::new(),
            next_rowid: 1,
            changes: HashMap::new(),
            next_seq: 1,
            snapshots: HashMap::new(),
            removals: HashMap::new(),
            declined: BTreeMap::new(),
            // As the SQLite store's first migration records: a new store has no flows to index.
            meta: BTreeMap::from([(META_REMOVALS_INDEXED.to_string(), "1".to_string())]),
            peers: BTreeMap::new(),
        }
    }
}

impl Rows {
    fn undo(&mut self, u: Undo) {
        match u {
            Undo::Flow(id, old) => restore(&mut self.flows, id, old),
            Undo::NextRowid(n) => self.next_rowid = n,
            Undo::FlowRow(id, title, status, at) => {
                if let Some(f) = self.flows.get_mut(&id) {
                    (f.title, f.status, f.updated_at) = (title, status, at);
                }
            }
            Undo::Offered(id, by) => {
                if let Some(f) = self.flows.get_mut(&id) {
                    f.offered_by = by;
                }
            }
            Undo::Summary(id, s) => {
                if let Some(f) = self.flows.get_mut(&id) {
                    f.summary = s;
                }
            }
            Undo::Appended(flow) => {
                if let Some(c) = self.changes.get_mut(&flow) {
                    if let Some(row) = c.rows.pop() {
                        c.by_hash.remove(&row.hash);
                    }
                    if c.rows.is_empty() {
                        self.changes.remove(&flow);
                    }
                }
            }
            Undo::NextSeq(n) => self.next_seq = n,
            Undo::Changes(flow, old) => restore(&mut self.changes, flow, old),
            Undo::Snapshot(flow, old) => restore(&mut self.snapshots, flow, old),
            Undo::Removal(flow, key) => {
                if let Some(r) = self.removals.get_mut(&flow) {
                    r.remove(&key);
                    if r.is_empty() {
                        self.removals.remove(&flow);
                    }
                }
            }
            Undo::Removals(flow, old) => restore(&mut self.removals, flow, old),
            Undo::Declined(flow, old) => restore(&mut self.declined, flow, old),
            Undo::Meta(key, old) => restore(&mut self.meta, key, old),
            Undo::Peer(node, old) => restore(&mut self.peers, node, old),
        }
    }

    fn rows_of(&self, offered: bool) -> Vec<(FlowRow, String)> {
        let mut rows: Vec<_> = self
            .flows
            .iter()
            .filter(|(_, f)| f.offered_by.is_some() == offered)
            .collect();
        // ORDER BY created_at, id (the map is in id order; the sort is stable).
        rows.sort_by_key(|(_, f)| f.created_at);
        rows.into_iter()
            .map(|(id, f)| {
                (
                    FlowRow {
                        id: *id,
                        title: f.title.clone(),
                        status: f.status.clone(),
                        updated_at: f.updated_at,
                    },
                    f.offered_by.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Ids in the order the flows were stored (SQLite's table order).
    fn ids_where(&self, keep: impl Fn(&FlowEntry) -> bool) -> Vec<FlowId> {
        let mut ids: Vec<_> = self.flows.iter().filter(|(_, f)| keep(f)).collect();
        ids.sort_by_key(|(_, f)| f.rowid);
        ids.into_iter().map(|(id, _)| *id).collect()
    }
}

/// The error SQLite gives for a broken constraint, with its message.
fn constraint(code: std::ffi::c_int, message: &str) -> StoreError {
    StoreError::Sql(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(code),
        Some(message.to_string()),
    ))
}

fn no_flow() -> StoreError {
    constraint(
        rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY,
        "FOREIGN KEY constraint failed",
    )
}

impl PartialEq for MemStore {
    fn eq(&self, other: &Self) -> bool {
        *self.tables.borrow() == *other.tables.borrow()
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// The store as the next process to open it finds it: an open group's writes (and an
    /// open transaction's) are not in it, as SQLite rolls back a transaction whose process
    /// ended. For tests and simulations of a crash; this store is left as it is.
    pub fn reopened(&self) -> MemStore {
        let mut tables = self.tables.borrow().clone();
        for u in self.undo.borrow().iter().rev() {
            tables.undo(u.clone());
        }
        MemStore {
            tables: RefCell::new(tables),
            ..MemStore::default()
        }
    }

    /// Undoes the recorded writes after the first `mark`.
    fn roll_back_to(&self, mark: usize) {
        let mut undo = self.undo.borrow_mut();
        let mut tables = self.tables.borrow_mut();
        while undo.len() > mark {
            let u = undo.pop().expect("longer than mark");
            tables.undo(u);
        }
    }

    /// Records a change of one row, and how to undo it.
    fn wrote(&self, undo: impl IntoIterator<Item = Undo>) {
        self.changed.set(self.changed.get() + 1);
        if self.logging.get() {
            self.undo.borrow_mut().extend(undo);
        }
    }
}

impl Storage for MemStore {
    type Writer<'a> = MemWriter<'a>;

    fn reader(&self) -> MemWriter<'_> {
        MemWriter { store: self }
    }

    fn write<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&MemWriter<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        // Inside a group, a savepoint: back to here if `f` fails. Outside, the whole log.
        let mark = self.undo.borrow().len();
        self.logging.set(true);
        let out = f(&MemWriter { store: self });
        if out.is_err() {
            self.roll_back_to(mark);
        }
        if self.group.is_none() {
            self.undo.borrow_mut().clear();
            self.logging.set(false);
        }
        out
    }

    fn begin_group(&mut self) -> Result<(), StoreError> {
        if self.group.is_none() {
            self.group = Some(self.changed.get());
            self.logging.set(true);
        }
        Ok(())
    }

    fn in_group(&self) -> bool {
        self.group.is_some()
    }

    #[cfg(feature = "testkit")]
    fn group_wrote(&self) -> bool {
        self.group.is_some_and(|start| self.changed.get() != start)
    }

    fn commit_group(&mut self) -> Result<(), StoreError> {
        if self.group.take().is_some() {
            self.undo.borrow_mut().clear();
            self.logging.set(false);
        }
        Ok(())
    }

    /// There is no log: what was deleted is gone.
    fn wipe_log(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Every change, snapshot and removal belongs to a stored flow, every hash is indexed, and
    /// sequence numbers rise.
    fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let t = self.tables.borrow();
        let mut problems = Vec::new();
        let orphans = t
            .changes
            .keys()
            .chain(t.snapshots.keys())
            .chain(t.removals.keys())
            .filter(|f| !t.flows.contains_key(*f));
        for flow in orphans {
            problems.push(format!("rows of flow {flow}, which is not stored"));
        }
        for (flow, c) in &t.changes {
            let rising = c.rows.windows(2).all(|w| w[0].seq < w[1].seq);
            let indexed = c.by_hash.len() == c.rows.len()
                && c.by_hash.iter().all(|(h, &i)| c.rows.get(i).is_some_and(|r| r.hash == *h));
            if !rising || !indexed || c.rows.last().is_some_and(|r| r.seq >= t.next_seq) {
                problems.push(format!("the changes of flow {flow} are out of order"));
            }
        }
        Ok(problems)
    }
}

/// Reads and writes on a [`MemStore`].
pub struct MemWriter<'a> {
    store: &'a MemStore,
}

impl MemWriter<'_> {
    fn rows(&self) -> std::cell::Ref<'_, Rows> {
        self.store.tables.borrow()
    }

    fn rows_mut(&self) -> std::cell::RefMut<'_, Rows> {
        self.store.tables.borrow_mut()
    }

    fn delete_flow(&self, flow: &FlowId) {
        let mut t = self.rows_mut();
        if let Some(removals) = t.removals.remove(flow) {
            self.store
                .wrote([Undo::Removals(*flow, Some(removals))]);
        }
        if let Some(snapshot) = t.snapshots.remove(flow) {
            self.store
                .wrote([Undo::Snapshot(*flow, Some(snapshot))]);
        }
        if let Some(changes) = t.changes.remove(flow) {
            self.store.wrote([Undo::Changes(*flow, Some(changes))]);
        }
        if let Some(entry) = t.flows.remove(flow) {
            self.store.wrote([Undo::Flow(*flow, Some(entry))]);
        }
    }
}
