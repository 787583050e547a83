//! The durable store: one SQLite file (`coflow.db`) in the data dir, behind the [`Storage`]
//! trait that the repository and the sync engine are generic over (with `testkit`, `MemStore`
//! implements it in memory, for simulations and tests).
//!
//! WAL journal, `synchronous=FULL`: a transaction that returned from `COMMIT` is on disk. Every
//! accepted change is kept with its signature, forever (compaction never drops one); snapshots
//! (`Automerge::save`) make loading fast. Writers take the database's write lock up front
//! (`BEGIN IMMEDIATE`), so two processes editing at once run one after the other.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::auth::SignedChange;
use crate::flow::FlowId;

mod changes;
mod flows;
#[cfg(any(test, feature = "testkit"))]
mod mem;
mod peers;
mod schema;

pub use changes::Changes;
pub use flows::Flows;
#[cfg(any(test, feature = "testkit"))]
pub use mem::MemStore;
pub use peers::Peers;

/// What the repository keeps: the SQLite [`Store`], or `MemStore` (built with `testkit` only) in
/// tests and simulations.
///
/// Reads and writes go through a [`Tables`] handle. [`Storage::write`] runs a closure in a
/// transaction: nothing it wrote is kept if it fails. A group ([`Storage::begin_group`]) is one
/// transaction that every write joins (each then in a savepoint of its own, rolled back alone if
/// it fails) until [`Storage::commit_group`]. A write through [`Storage::reader`] is kept at once
/// outside a group, and joins the group inside one.
pub trait Storage {
    /// The handle reads and writes go through.
    type Writer<'a>: Tables
    where
        Self: 'a;

    /// Access outside a write transaction.
    fn reader(&self) -> Self::Writer<'_>;

    /// Runs `f` inside a write transaction and commits it durably. Nothing `f` wrote is kept if
    /// it fails. Inside a group it runs in a savepoint of the group's transaction instead, and
    /// is durable when the group commits.
    fn write<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&Self::Writer<'_>) -> Result<T, E>,
    ) -> Result<T, E>;

    /// Opens a group: one transaction that every write joins until [`Storage::commit_group`],
    /// so that many writes cost one commit (one fsync). Does nothing if a group is open.
    fn begin_group(&mut self) -> Result<(), StoreError>;

    /// Whether a group is open.
    fn in_group(&self) -> bool;

    /// Whether the open group has written anything; for tests.
    #[cfg(feature = "testkit")]
    fn group_wrote(&self) -> bool;

    /// Commits the open group durably; if that fails, nothing written in it is kept.
    fn commit_group(&mut self) -> Result<(), StoreError>;

    /// Makes sure content deleted with [`Flows::decline_flow`] is not left in old log frames
    /// either. Only outside a transaction.
    fn wipe_log(&self) -> Result<(), StoreError>;

    /// The problems a check of the whole store found; none if it is sound.
    fn integrity_check(&self) -> Result<Vec<String>, StoreError>;
}

/// Every table of a store: what a [`Storage::Writer`] reads and writes.
pub trait Tables: Flows + Changes + Peers {}

impl<T: Flows + Changes + Peers> Tables for T {}

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "coflow.db";

/// The schema version this code reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 5;

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
    pub id: FlowId,
    pub title: String,
    pub status: String,
    pub updated_at: i64,
}

/// A stored change with its insertion sequence number (the benchmark reads `seq` and `hash`).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
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

/// Queries and writes on an open connection (inside a transaction for writes).
pub struct Writer<'a> {
    conn: &'a Connection,
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

    #[cfg(any(test, feature = "testkit"))]
    /// A store that lives in memory only (simulations and tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        let mut store = Store {
            conn: Connection::open_in_memory()?,
            group: None,
        };
        store.migrate(Path::new(":memory:"))?;
        Ok(store)
    }
}

impl Storage for Store {
    type Writer<'a> = Writer<'a>;

    fn reader(&self) -> Writer<'_> {
        Writer { conn: &self.conn }
    }

    /// Takes the write lock first (`BEGIN IMMEDIATE`).
    fn write<T, E: From<StoreError>>(
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

    fn begin_group(&mut self) -> Result<(), StoreError> {
        if self.group.is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.group = Some(self.conn.total_changes());
        }
        Ok(())
    }

    fn in_group(&self) -> bool {
        self.group.is_some()
    }

    #[cfg(feature = "testkit")]
    fn group_wrote(&self) -> bool {
        self.group
            .is_some_and(|start| self.conn.total_changes() != start)
    }

    fn commit_group(&mut self) -> Result<(), StoreError> {
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
    /// (overwritten in the database) is not left in old log frames either. Readers in other
    /// processes can make it incomplete, and it is then done again by a later call.
    fn wipe_log(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// SQLite's `PRAGMA integrity_check` over the whole database file (every table and index,
    /// not only the rows a flow's verification reads). A database too damaged to run the
    /// check is one problem.
    fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
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
}
