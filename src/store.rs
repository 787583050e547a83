//! The durable store: one SQLite file (`coflow.db`) in the data dir.
//!
//! WAL journal, `synchronous=FULL`: a transaction that returned from `COMMIT` is on disk. Every
//! accepted change is kept with its signature, forever (compaction never drops one); snapshots
//! (`Automerge::save`) make loading fast. Writers take the database's write lock up front
//! (`BEGIN IMMEDIATE`), so two processes editing at once run one after the other.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::auth::SignedChange;

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "coflow.db";

/// The schema version this code reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 4;

/// How long a writer waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do when a node's database is gone: said by every error that finds none.
const NO_STORE_HINT: &str = "if it was lost, restore it from a backup (with the data dir's \
     other files); to start this node over with no flows, run `coflow init --new-store`";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database {path} is damaged or is not a coflow store ({reason})")]
    Damaged { path: PathBuf, reason: String },
    #[error("this node's database {path} is missing: {NO_STORE_HINT}")]
    Missing { path: PathBuf },
    #[error("this node's database {path} is empty: {NO_STORE_HINT}")]
    Empty { path: PathBuf },
    #[error("the database {path} already holds a coflow store; refusing to replace it")]
    Exists { path: PathBuf },
    #[error("cannot write to {path} ({reason}): coflow needs to write its data dir and database")]
    ReadOnly { path: PathBuf, reason: String },
    #[error(
        "the database {path} has schema version {found}; this coflow knows up to {SCHEMA_VERSION}"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error("the database is locked by another coflow process; try again")]
    Busy,
    #[error("the disk is full (or the database reached its size limit): nothing was written")]
    Full,
    #[error("the disk failed while writing ({0}): nothing was acknowledged")]
    Disk(String),
    #[error("storage error: {0}")]
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy
            }
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full,
            Some(rusqlite::ErrorCode::SystemIoFailure) => StoreError::Disk(e.to_string()),
            _ => StoreError::Sql(e),
        }
    }
}

/// Refuses a path this process may not write (a read-only data dir or file system), with the
/// operating system's reason, instead of SQLite's "unable to open database file".
fn writable(path: &Path) -> Result<(), StoreError> {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK).map_err(|e| StoreError::ReadOnly {
        path: path.to_path_buf(),
        reason: std::io::Error::from(e).to_string(),
    })
}

/// One row of the `flows` table: what `flow list` shows without loading documents.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowRow {
    pub id: String,
    pub title: String,
    pub status: String,
    pub updated_at: i64,
}

/// A stored change with its insertion sequence number.
#[derive(Clone, Debug)]
pub struct StoredChange {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub signed: SignedChange,
}

pub struct Store {
    conn: Connection,
    /// Set while a group transaction is open: `total_changes` at its start.
    group: Option<u64>,
}

const MIGRATION_1: &str = "
CREATE TABLE flows (
    id          TEXT PRIMARY KEY,
    genesis     BLOB NOT NULL,
    title       TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    flow        TEXT NOT NULL REFERENCES flows(id),
    hash        BLOB NOT NULL,
    bytes       BLOB NOT NULL,
    signature   BLOB NOT NULL,
    UNIQUE (flow, hash)
);
CREATE TABLE snapshots (
    flow        TEXT PRIMARY KEY REFERENCES flows(id),
    upto_seq    INTEGER NOT NULL,
    doc         BLOB NOT NULL
);
CREATE TABLE meta (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
CREATE TABLE peers (
    node        TEXT PRIMARY KEY,
    addrs       TEXT NOT NULL,
    last_seen   INTEGER NOT NULL,
    failures    INTEGER NOT NULL DEFAULT 0
);
";

/// A flow's changes in the order they were stored: the newest, and those after a snapshot, are
/// found without reading the flow's other changes.
const MIGRATION_2: &str = "
CREATE INDEX changes_by_flow_seq ON changes (flow, seq);
";

/// The removals among a flow's accepted changes (the removal rule reads them for every batch;
/// decoding every change to find them again would cost a pass over the history). Stores from
/// schema 2 are indexed once, by the repository, when first opened.
const MIGRATION_3: &str = "
CREATE TABLE removals (
    flow        TEXT NOT NULL REFERENCES flows(id),
    change      BLOB NOT NULL,
    target      BLOB NOT NULL,
    rank        INTEGER NOT NULL,
    PRIMARY KEY (flow, change, target)
);
";

/// Consent (SECURITY.md, "Consent"): a flow a peer offered this node, by adding it as a member,
/// is kept `pending` (its first message only) until the user accepts it; a declined flow keeps
/// only its id and the members it had, whose further offers are turned away.
const MIGRATION_4: &str = "
ALTER TABLE flows ADD COLUMN consent TEXT NOT NULL DEFAULT 'accepted';
ALTER TABLE flows ADD COLUMN offered_by TEXT NOT NULL DEFAULT '';
CREATE TABLE declined (
    flow        TEXT PRIMARY KEY,
    members     TEXT NOT NULL,
    at          INTEGER NOT NULL
);
";

/// How many declined flows a store remembers; the oldest is forgotten first.
pub const MAX_DECLINED: usize = 1024;

/// Meta key set once every flow's removals are in the `removals` table.
pub const META_REMOVALS_INDEXED: &str = "removals_indexed";

/// One row of the address book.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerRow {
    pub node: String,
    pub addrs: Vec<String>,
    pub last_seen: i64,
    pub failures: i64,
}

impl Store {
    /// Opens the existing store in `home`. A database that is missing or empty (no coflow
    /// schema) is refused, never silently replaced by an empty store: next to an existing key it
    /// means the node's flows were lost, and starting empty would hide that.
    pub fn open(home: &Path) -> Result<Store, StoreError> {
        Store::open_with(home, false)
    }

    /// Creates an empty store in `home` (`coflow init`); refuses to replace one that holds a
    /// coflow schema. A missing or zero-length database file counts as none.
    pub fn create(home: &Path) -> Result<Store, StoreError> {
        Store::open_with(home, true)
    }

    /// Both need the data dir to exist (`Repo::init` creates it).
    fn open_with(home: &Path, create: bool) -> Result<Store, StoreError> {
        let path = home.join(DB_FILE);
        let found = match std::fs::metadata(&path) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(StoreError::Damaged {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        // SQLite needs to write the data dir too (the WAL and its index), even to read.
        writable(home)?;
        if found {
            writable(&path)?;
        } else if !create {
            return Err(StoreError::Missing { path });
        }
        let damaged = |e: rusqlite::Error| StoreError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut flags = rusqlite::OpenFlags::default();
        if !create {
            flags.remove(rusqlite::OpenFlags::SQLITE_OPEN_CREATE);
        }
        let conn = Connection::open_with_flags(&path, flags).map_err(damaged)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Before anything writes: is there a coflow store in the file?
        let has_schema: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master) OR \
                 (SELECT user_version FROM pragma_user_version) > 0",
                [],
                |r| r.get(0),
            )
            .map_err(damaged)?;
        match (create, has_schema) {
            (false, false) => return Err(StoreError::Empty { path }),
            (true, true) => return Err(StoreError::Exists { path }),
            _ => {}
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| match StoreError::from(e) {
                StoreError::Sql(e) => damaged(e),
                other => other,
            })?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Test-only: a database size limit, so tests can see what a full disk does.
        if let Ok(pages) = std::env::var("COFLOW_TEST_MAX_PAGES") {
            if let Ok(pages) = pages.parse::<i64>() {
                conn.pragma_update(None, "max_page_count", pages)?;
            }
        }
        let mut store = Store { conn, group: None };
        store.migrate(&path)?;
        Ok(store)
    }

    /// A store that lives in memory only (simulations and tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        let mut store = Store {
            conn: Connection::open_in_memory()?,
            group: None,
        };
        store.migrate(Path::new(":memory:"))?;
        Ok(store)
    }

    fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
            });
        }
        if version < 1 {
            tx.execute_batch(MIGRATION_1)?;
            tx.pragma_update(None, "user_version", 1)?;
        }
        if version < 2 {
            tx.execute_batch(MIGRATION_2)?;
            tx.pragma_update(None, "user_version", 2)?;
        }
        if version < 3 {
            tx.execute_batch(MIGRATION_3)?;
            if version < 1 {
                // A new store has no flows, so nothing to index.
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, '1')",
                    params![META_REMOVALS_INDEXED],
                )?;
            }
            tx.pragma_update(None, "user_version", 3)?;
        }
        if version < 4 {
            tx.execute_batch(MIGRATION_4)?;
            tx.pragma_update(None, "user_version", 4)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` inside a write transaction (taking the write lock first) and commits it durably.
    /// Nothing `f` wrote is kept if it fails. Inside a group ([`Store::begin_group`]) it runs
    /// in a savepoint of the group's transaction instead, and is durable when the group commits.
    pub fn write<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&Writer<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        if self.group.is_some() {
            let sp = self.conn.savepoint().map_err(StoreError::from)?;
            let out = f(&Writer { conn: &sp })?;
            sp.commit().map_err(StoreError::from)?;
            return Ok(out);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let out = f(&Writer { conn: &tx })?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// Opens a group: one transaction that every write joins until [`Store::commit_group`], so
    /// that many writes cost one commit (one fsync). Does nothing if a group is open.
    pub fn begin_group(&mut self) -> Result<(), StoreError> {
        if self.group.is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.group = Some(self.conn.total_changes());
        }
        Ok(())
    }

    /// Whether a group is open.
    pub fn in_group(&self) -> bool {
        self.group.is_some()
    }

    /// Whether the open group has written anything.
    pub fn group_wrote(&self) -> bool {
        self.group
            .is_some_and(|start| self.conn.total_changes() != start)
    }

    /// Commits the open group durably; if that fails, nothing written in it is kept.
    pub fn commit_group(&mut self) -> Result<(), StoreError> {
        if self.group.take().is_some() {
            if let Err(e) = self.conn.execute_batch("COMMIT") {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Empties the write-ahead log into the database and truncates it, so that content deleted
    /// with [`Writer::decline_flow`] (overwritten in the database) is not left in old log
    /// frames either. Only outside a transaction; readers in other processes can make it
    /// incomplete, and it is then done again by a later call.
    pub fn wipe_log(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// SQLite's `PRAGMA integrity_check` over the whole database file (every table and index,
    /// not only the rows a flow's verification reads): the problems it found, none if the file
    /// is sound. A database too damaged to run the check is one problem.
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let run = || -> rusqlite::Result<Vec<String>> {
            let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        };
        match run() {
            Ok(rows) if rows == ["ok"] => Ok(Vec::new()),
            Ok(rows) => Ok(rows),
            Err(e) => match StoreError::from(e) {
                StoreError::Sql(e) => Ok(vec![e.to_string()]),
                other => Err(other),
            },
        }
    }

    /// Read access outside a write transaction.
    pub fn reader(&self) -> Writer<'_> {
        Writer { conn: &self.conn }
    }
}

/// Queries and writes on an open connection (inside a transaction for writes).
pub struct Writer<'a> {
    conn: &'a Connection,
}

impl Writer<'_> {
    pub fn insert_flow(
        &self,
        id: &str,
        genesis: &[u8],
        title: &str,
        status: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO flows (id, genesis, title, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![id, genesis, title, status, now],
        )?;
        Ok(())
    }

    pub fn update_flow(
        &self,
        id: &str,
        title: &str,
        status: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE flows SET title = ?2, status = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, title, status, now],
        )?;
        Ok(())
    }

    /// The flows this node holds (accepted), oldest first.
    pub fn flows(&self) -> Result<Vec<FlowRow>, StoreError> {
        Ok(self
            .flow_rows("accepted")?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// The flows offered to this node and not yet accepted, oldest first, each with the node
    /// that offered it.
    pub fn offers(&self) -> Result<Vec<(FlowRow, String)>, StoreError> {
        self.flow_rows("pending")
    }

    fn flow_rows(&self, consent: &str) -> Result<Vec<(FlowRow, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, title, status, updated_at, offered_by FROM flows WHERE consent = ?1
             ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([consent], |r| {
            Ok((
                FlowRow {
                    id: r.get(0)?,
                    title: r.get(1)?,
                    status: r.get(2)?,
                    updated_at: r.get(3)?,
                },
                r.get(4)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether the store has this flow, held or offered (one indexed lookup).
    pub fn has_flow(&self, flow: &str) -> Result<bool, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM flows WHERE id = ?1")?;
        Ok(stmt.exists([flow])?)
    }

    /// The flows this node holds (accepted).
    pub fn flow_ids(&self) -> Result<Vec<String>, StoreError> {
        self.ids("SELECT id FROM flows WHERE consent = 'accepted'")
    }

    /// Every flow in the store: held, and offered but not yet accepted.
    pub fn all_flow_ids(&self) -> Result<Vec<String>, StoreError> {
        self.ids("SELECT id FROM flows")
    }

    /// The flows offered to this node and not yet accepted.
    pub fn pending_ids(&self) -> Result<Vec<String>, StoreError> {
        self.ids("SELECT id FROM flows WHERE consent = 'pending'")
    }

    fn ids(&self, sql: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a flow just stored as offered by `by`, waiting for this node's user.
    pub fn mark_offered(&self, flow: &str, by: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE flows SET consent = 'pending', offered_by = ?2 WHERE id = ?1",
            params![flow, by],
        )?;
        Ok(())
    }

    /// The user accepted an offered flow: it is held from now on.
    pub fn accept_flow(&self, flow: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE flows SET consent = 'accepted', offered_by = '' WHERE id = ?1",
            params![flow],
        )?;
        Ok(())
    }

    /// The user declined an offered flow: everything stored for it goes, and its id and
    /// `members` are remembered (the [`MAX_DECLINED`] most recent declines).
    pub fn decline_flow(&self, flow: &str, members: &[String], now: i64) -> Result<(), StoreError> {
        // What a stranger sent is overwritten, not only unlinked ([`Store::wipe_log`] then
        // clears the log).
        self.conn.pragma_update(None, "secure_delete", true)?;
        let deleted = self.delete_flow(flow);
        self.conn.pragma_update(None, "secure_delete", false)?;
        deleted?;
        self.conn.execute(
            "INSERT OR REPLACE INTO declined (flow, members, at) VALUES (?1, ?2, ?3)",
            params![flow, members.join(" "), now],
        )?;
        self.conn.execute(
            "DELETE FROM declined WHERE flow NOT IN
             (SELECT flow FROM declined ORDER BY at DESC, flow LIMIT ?1)",
            params![MAX_DECLINED as i64],
        )?;
        Ok(())
    }

    fn delete_flow(&self, flow: &str) -> Result<(), StoreError> {
        for table in ["removals", "snapshots", "changes"] {
            self.conn.execute(
                &format!("DELETE FROM {table} WHERE flow = ?1"),
                params![flow],
            )?;
        }
        self.conn
            .execute("DELETE FROM flows WHERE id = ?1", params![flow])?;
        Ok(())
    }

    /// The members a declined flow had when it was declined; `None` if it was not declined.
    pub fn declined_members(&self, flow: &str) -> Result<Option<Vec<String>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT members FROM declined WHERE flow = ?1")?;
        let members: Option<String> = stmt.query_row([flow], |r| r.get(0)).optional()?;
        Ok(members.map(|m| m.split_whitespace().map(str::to_string).collect()))
    }

    /// Forgets that a flow was declined (its user joined it after all).
    pub fn forget_declined(&self, flow: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM declined WHERE flow = ?1", params![flow])?;
        Ok(())
    }

    /// Appends changes (already verified and accepted) to a flow. Changes it already holds are
    /// skipped. Returns how many were new.
    pub fn insert_changes<'c>(
        &self,
        flow: &str,
        changes: impl IntoIterator<Item = (&'c [u8], &'c [u8], &'c [u8])>,
    ) -> Result<usize, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO changes (flow, hash, bytes, signature) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut n = 0;
        for (hash, bytes, sig) in changes {
            n += stmt.execute(params![flow, hash, bytes, sig])?;
        }
        Ok(n)
    }

    /// Records removals made by accepted changes of `flow`.
    pub fn insert_removals(
        &self,
        flow: &str,
        removals: &[crate::auth::removal::Removal],
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO removals (flow, change, target, rank) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for r in removals {
            stmt.execute(params![flow, &r.change.0[..], &r.target[..], r.rank])?;
        }
        Ok(())
    }

    /// The removals among `flow`'s accepted changes.
    pub fn removals(&self, flow: &str) -> Result<Vec<crate::auth::removal::Removal>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT change, target, rank FROM removals WHERE flow = ?1")?;
        let rows = stmt.query_map(params![flow], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, u8>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (change, target, rank) = row?;
            let (Ok(change), Ok(target)) = (
                <[u8; 32]>::try_from(change.as_slice()),
                <[u8; 32]>::try_from(target.as_slice()),
            ) else {
                return Err(StoreError::from(rusqlite::Error::InvalidColumnType(
                    0,
                    "removal".into(),
                    rusqlite::types::Type::Blob,
                )));
            };
            out.push(crate::auth::removal::Removal {
                change: automerge::ChangeHash(change),
                target,
                rank,
            });
        }
        Ok(out)
    }

    /// The flow's changes stored after `seq`, in insertion order (dependencies first).
    pub fn changes_after(&self, flow: &str, seq: i64) -> Result<Vec<StoredChange>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, hash, bytes, signature FROM changes WHERE flow = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![flow, seq], |r| {
            Ok(StoredChange {
                seq: r.get(0)?,
                hash: r.get(1)?,
                signed: SignedChange {
                    bytes: r.get(2)?,
                    signature: r.get(3)?,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn change_count(&self, flow: &str) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM changes WHERE flow = ?1",
            params![flow],
            |r| r.get(0),
        )?)
    }

    pub fn last_seq(&self, flow: &str) -> Result<i64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT coalesce(max(seq), 0) FROM changes WHERE flow = ?1")?;
        Ok(stmt.query_row(params![flow], |r| r.get(0))?)
    }

    /// How many of the flow's changes were stored after `seq`.
    pub fn count_after(&self, flow: &str, seq: i64) -> Result<i64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT count(*) FROM changes WHERE flow = ?1 AND seq > ?2")?;
        Ok(stmt.query_row(params![flow, seq], |r| r.get(0))?)
    }

    /// The latest snapshot: `(seq of the last change it includes, saved document)`.
    pub fn snapshot(&self, flow: &str) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT upto_seq, doc FROM snapshots WHERE flow = ?1",
                params![flow],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The sequence number the flow's snapshot covers, without reading the snapshot.
    pub fn snapshot_seq(&self, flow: &str) -> Result<Option<i64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT upto_seq FROM snapshots WHERE flow = ?1")?;
        Ok(stmt.query_row(params![flow], |r| r.get(0)).optional()?)
    }

    /// The signature stored with a change.
    pub fn signature(&self, flow: &str, hash: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT signature FROM changes WHERE flow = ?1 AND hash = ?2")?;
        Ok(stmt
            .query_row(params![flow, hash], |r| r.get(0))
            .optional()?)
    }

    /// A stored change with its signature, by hash.
    pub fn signed_change(
        &self,
        flow: &str,
        hash: &[u8],
    ) -> Result<Option<SignedChange>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bytes, signature FROM changes WHERE flow = ?1 AND hash = ?2")?;
        Ok(stmt
            .query_row(params![flow, hash], |r| {
                Ok(SignedChange {
                    bytes: r.get(0)?,
                    signature: r.get(1)?,
                })
            })
            .optional()?)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Records that `node` was reachable at `addrs` just now.
    pub fn saw_peer(&self, node: &str, addrs: &[String], now: i64) -> Result<(), StoreError> {
        let addrs = serde_json::to_string(addrs).expect("strings serialize");
        self.conn.execute(
            "INSERT INTO peers (node, addrs, last_seen, failures) VALUES (?1, ?2, ?3, 0)
             ON CONFLICT(node) DO UPDATE SET addrs = excluded.addrs,
                 last_seen = excluded.last_seen, failures = 0",
            params![node, addrs, now],
        )?;
        Ok(())
    }

    /// Counts a failed attempt to reach `node` (kept across restarts, for backoff).
    pub fn peer_failed(&self, node: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE peers SET failures = failures + 1 WHERE node = ?1",
            params![node],
        )?;
        Ok(())
    }

    pub fn peers(&self) -> Result<Vec<PeerRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT node, addrs, last_seen, failures FROM peers ORDER BY last_seen DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            let addrs: String = r.get(1)?;
            Ok(PeerRow {
                node: r.get(0)?,
                addrs: serde_json::from_str(&addrs).unwrap_or_default(),
                last_seen: r.get(2)?,
                failures: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn put_snapshot(&self, flow: &str, upto_seq: i64, doc: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO snapshots (flow, upto_seq, doc) VALUES (?1, ?2, ?3)
             ON CONFLICT(flow) DO UPDATE SET upto_seq = excluded.upto_seq, doc = excluded.doc",
            params![flow, upto_seq, doc],
        )?;
        Ok(())
    }
}
