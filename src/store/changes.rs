//! Signed changes, the removals among them, and snapshots.

use super::*;

impl Writer<'_> {
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

    pub fn put_snapshot(&self, flow: &str, upto_seq: i64, doc: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO snapshots (flow, upto_seq, doc) VALUES (?1, ?2, ?3)
             ON CONFLICT(flow) DO UPDATE SET upto_seq = excluded.upto_seq, doc = excluded.doc",
            params![flow, upto_seq, doc],
        )?;
        Ok(())
    }
}
