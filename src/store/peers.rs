//! The address book and the `meta` table.

use super::*;

/// The address book and the `meta` key-value table.
pub trait Peers {
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Records that `node` was reachable at `addrs` at `now` (its failures start over).
    fn saw_peer(&self, node: &str, addrs: &[String], now: i64) -> Result<(), StoreError>;

    /// Counts a failed attempt to reach `node` (kept across restarts, for backoff); a node not
    /// in the book is not added.
    fn peer_failed(&self, node: &str) -> Result<(), StoreError>;

    /// The address book, most recently seen first (ties by node id).
    fn peers(&self) -> Result<Vec<PeerRow>, StoreError>;

    /// Forgets all but the `keep` nodes seen last (the book would otherwise keep a row for every
    /// node that ever connected); how many it forgot.
    fn forget_peers(&self, keep: usize) -> Result<usize, StoreError>;
}

impl Peers for Writer<'_> {
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    fn saw_peer(&self, node: &str, addrs: &[String], now: i64) -> Result<(), StoreError> {
        let addrs = serde_json::to_string(addrs).expect("strings serialize");
        self.conn.execute(
            "INSERT INTO peers (node, addrs, last_seen, failures) VALUES (?1, ?2, ?3, 0)
             ON CONFLICT(node) DO UPDATE SET addrs = excluded.addrs,
                 last_seen = excluded.last_seen, failures = 0",
            params![node, addrs, now],
        )?;
        Ok(())
    }

    fn peer_failed(&self, node: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE peers SET failures = failures + 1 WHERE node = ?1",
            params![node],
        )?;
        Ok(())
    }

    fn peers(&self) -> Result<Vec<PeerRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT node, addrs, last_seen, failures FROM peers ORDER BY last_seen DESC, node",
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

    fn forget_peers(&self, keep: usize) -> Result<usize, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        Ok(self.conn.execute(
            "DELETE FROM peers WHERE node NOT IN
                 (SELECT node FROM peers ORDER BY last_seen DESC, node LIMIT ?1)",
            params![keep],
        )?)
    }
}
