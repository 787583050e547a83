//! Signed changes, the removals among them, and snapshots.

use super::*;

/// Signed changes with their insertion order, the removals among them, and snapshots.
pub trait Changes {
    /// Appends changes (already verified and accepted) to a stored flow, each `(hash, bytes,
    /// signature)`, numbered in insertion order. Changes it already holds are skipped. Returns
    /// how many were new. A flow not stored is an error.
    fn insert_changes<'c>(
        &self,
        flow: &FlowId,
        changes: impl IntoIterator<Item = (&'c [u8], &'c [u8], &'c [u8])>,
    ) -> Result<usize, StoreError>;

    /// Records removals made by accepted changes of `flow` (one already recorded is skipped).
    fn insert_removals(
        &self,
        flow: &FlowId,
        removals: &[crate::auth::removal::Removal],
    ) -> Result<(), StoreError>;

    /// The removals among `flow`'s accepted changes.
    fn removals(&self, flow: &FlowId) -> Result<Vec<crate::auth::removal::Removal>, StoreError>;

    /// The flow's changes stored after `seq`, in insertion order (dependencies first).
    fn changes_after(&self, flow: &FlowId, seq: i64) -> Result<Vec<StoredChange>, StoreError>;

    /// The sequence number of the flow's newest change; 0 if it has none. Sequence numbers
    /// count the changes of every flow and are never reused once committed.
    fn last_seq(&self, flow: &FlowId) -> Result<i64, StoreError>;

    /// How many of the flow's changes were stored after `seq`.
    fn count_after(&self, flow: &FlowId, seq: i64) -> Result<i64, StoreError>;

    /// The latest snapshot: `(seq of the last change it includes, saved document)`.
    fn snapshot(&self, flow: &FlowId) -> Result<Option<(i64, Vec<u8>)>, StoreError>;

    /// The sequence number the flow's snapshot covers, without reading the snapshot.
    fn snapshot_seq(&self, flow: &FlowId) -> Result<Option<i64>, StoreError>;

    /// The signature stored with a change.
    fn signature(&self, flow: &FlowId, hash: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// A stored change with its signature, by hash.
    fn signed_change(&self, flow: &FlowId, hash: &[u8]) -> Result<Option<SignedChange>, StoreError>;

    /// Stores the flow's snapshot, replacing the one it had. A flow not stored is an error.
    fn put_snapshot(&self, flow: &FlowId, upto_seq: i64, doc: &[u8]) -> Result<(), StoreError>;
}

impl Changes for Writer<'_> {
    fn insert_changes<'c>(
        &self,
        flow: &FlowId,
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

    fn insert_removals(
        &self,
        flow: &FlowId,
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

    fn removals(&self, flow: &FlowId) -> Result<Vec<crate::auth::removal::Removal>, StoreError> {
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

    fn changes_after(&self, flow: &FlowId, seq: i64) -> Result<Vec<StoredChange>, StoreError> {
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

    fn last_seq(&self, flow: &FlowId) -> Result<i64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT coalesce(max(seq), 0) FROM changes WHERE flow = ?1")?;
        Ok(stmt.query_row(params![flow], |r| r.get(0))?)
    }

    fn count_after(&self, flow: &FlowId, seq: i64) -> Result<i64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT count(*) FROM changes WHERE flow = ?1 AND seq > ?2")?;
        Ok(stmt.query_row(params![flow, seq], |r| r.get(0))?)
    }

    fn snapshot(&self, flow: &FlowId) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT upto_seq, doc FROM snapshots WHERE flow = ?1",
                params![flow],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn snapshot_seq(&self, flow: &FlowId) -> Result<Option<i64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT upto_seq FROM snapshots WHERE flow = ?1")?;
        Ok(stmt.query_row(params![flow], |r| r.get(0)).optional()?)
    }

    fn signature(&self, flow: &FlowId, hash: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT signature FROM changes WHERE flow = ?1 AND hash = ?2")?;
        Ok(stmt
            .query_row(params![flow, hash], |r| r.get(0))
            .optional()?)
    }

    fn signed_change(
        &self,
        flow: &FlowId,
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

    fn put_snapshot(&self, flow: &FlowId, upto_seq: i64, doc: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO snapshots (flow, upto_seq, doc) VALUES (?1, ?2, ?3)
             ON CONFLICT(flow) DO UPDATE SET upto_seq = excluded.upto_seq, doc = excluded.doc",
            params![flow, upto_seq, doc],
        )?;
        Ok(())
    }
}
