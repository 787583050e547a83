//! The schema and its migrations: `PRAGMA user_version` says which have run.

use super::*;

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

/// Each held flow's heads and current members (`repo::Summary`, JSON), written with every
/// change, so the engine's ticks read no document. Empty for flows stored before: filled the
/// first time they are asked for.
const MIGRATION_5: &str = "
ALTER TABLE flows ADD COLUMN summary TEXT NOT NULL DEFAULT '';
";

impl Store {
    pub(super) fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
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
        if version < 5 {
            tx.execute_batch(MIGRATION_5)?;
            tx.pragma_update(None, "user_version", 5)?;
        }
        tx.commit()?;
        Ok(())
    }
}
