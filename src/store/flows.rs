//! The `flows` table (held and offered flows) and the `declined` one.

use super::*;

/// Flows (held, offered, declined) and their summaries.
pub trait Flows {
    /// Stores a new flow, held. A flow stored already is an error (nothing is replaced).
    fn insert_flow(
        &self,
        id: &FlowId,
        genesis: &[u8],
        title: &str,
        status: &str,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Sets a stored flow's title, status and time of its last change.
    fn update_flow(&self, id: &FlowId, title: &str, status: &str, now: i64)
        -> Result<(), StoreError>;

    /// The flows this node holds (accepted), oldest first.
    fn flows(&self) -> Result<Vec<FlowRow>, StoreError>;

    /// The flows offered to this node and not yet accepted, oldest first, each with the node
    /// that offered it.
    fn offers(&self) -> Result<Vec<(FlowRow, String)>, StoreError>;

    /// Whether the store has this flow, held or offered (one indexed lookup).
    fn has_flow(&self, flow: &FlowId) -> Result<bool, StoreError>;

    /// The flows this node holds (accepted).
    fn flow_ids(&self) -> Result<Vec<FlowId>, StoreError>;

    /// At most `limit` held flows whose ids sort after `after` (from the first: `None`), in id
    /// order (anti-entropy's rotation through the held flows).
    fn flow_ids_after(&self, after: Option<&FlowId>, limit: usize) -> Result<Vec<FlowId>, StoreError>;

    /// Every flow in the store: held, and offered but not yet accepted.
    fn all_flow_ids(&self) -> Result<Vec<FlowId>, StoreError>;

    /// The flows offered to this node and not yet accepted.
    fn pending_ids(&self) -> Result<Vec<FlowId>, StoreError>;

    /// Marks a flow just stored as offered by `by`, waiting for this node's user.
    fn mark_offered(&self, flow: &FlowId, by: &str) -> Result<(), StoreError>;

    /// The user accepted an offered flow: it is held from now on.
    fn accept_flow(&self, flow: &FlowId) -> Result<(), StoreError>;

    /// The user declined an offered flow: everything stored for it goes, and its id and
    /// `members` are remembered (the [`MAX_DECLINED`] most recent declines).
    fn decline_flow(&self, flow: &FlowId, members: &[String], now: i64) -> Result<(), StoreError>;

    /// The members a declined flow had when it was declined; `None` if it was not declined.
    fn declined_members(&self, flow: &FlowId) -> Result<Option<Vec<String>>, StoreError>;

    /// Forgets that a flow was declined (its user joined it after all).
    fn forget_declined(&self, flow: &FlowId) -> Result<(), StoreError>;

    /// Stores a held flow's summary (JSON, see `repo::Summary`).
    fn set_summary(&self, flow: &FlowId, summary: &str) -> Result<(), StoreError>;

    /// A flow's stored summary; `None` if it has none yet (stored before summaries were kept).
    fn summary(&self, flow: &FlowId) -> Result<Option<String>, StoreError>;
}

impl Writer<'_> {
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

    fn ids(&self, sql: &str) -> Result<Vec<FlowId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete_flow(&self, flow: &FlowId) -> Result<(), StoreError> {
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
}

impl Flows for Writer<'_> {
    fn insert_flow(
        &self,
        id: &FlowId,
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

    fn update_flow(
        &self,
        id: &FlowId,
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

    fn flows(&self) -> Result<Vec<FlowRow>, StoreError> {
        Ok(self
            .flow_rows("accepted")?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    fn offers(&self) -> Result<Vec<(FlowRow, String)>, StoreError> {
        self.flow_rows("pending")
    }

    fn has_flow(&self, flow: &FlowId) -> Result<bool, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM flows WHERE id = ?1")?;
        Ok(stmt.exists([flow])?)
    }

    fn flow_ids(&self) -> Result<Vec<FlowId>, StoreError> {
        self.ids("SELECT id FROM flows WHERE consent = 'accepted'")
    }

    fn flow_ids_after(&self, after: Option<&FlowId>, limit: usize) -> Result<Vec<FlowId>, StoreError> {
        // One walk of the primary key (from the start: every id sorts after '').
        let after = after.map_or("", FlowId::as_str);
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM flows WHERE id > ?1 AND consent = 'accepted' ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(rusqlite::params![after, limit as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn all_flow_ids(&self) -> Result<Vec<FlowId>, StoreError> {
        self.ids("SELECT id FROM flows")
    }

    fn pending_ids(&self) -> Result<Vec<FlowId>, StoreError> {
        self.ids("SELECT id FROM flows WHERE consent = 'pending'")
    }

    fn mark_offered(&self, flow: &FlowId, by: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE flows SET consent = 'pending', offered_by = ?2 WHERE id = ?1",
            params![flow, by],
        )?;
        Ok(())
    }

    fn accept_flow(&self, flow: &FlowId) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE flows SET consent = 'accepted', offered_by = '' WHERE id = ?1",
            params![flow],
        )?;
        Ok(())
    }

    fn decline_flow(&self, flow: &FlowId, members: &[String], now: i64) -> Result<(), StoreError> {
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

    fn declined_members(&self, flow: &FlowId) -> Result<Option<Vec<String>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT members FROM declined WHERE flow = ?1")?;
        let members: Option<String> = stmt.query_row([flow], |r| r.get(0)).optional()?;
        Ok(members.map(|m| m.split_whitespace().map(str::to_string).collect()))
    }

    fn forget_declined(&self, flow: &FlowId) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM declined WHERE flow = ?1", params![flow])?;
        Ok(())
    }

    fn set_summary(&self, flow: &FlowId, summary: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE flows SET summary = ?2 WHERE id = ?1",
            params![flow, summary],
        )?;
        Ok(())
    }

    fn summary(&self, flow: &FlowId) -> Result<Option<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT summary FROM flows WHERE id = ?1")?;
        let s: Option<String> = stmt.query_row([flow], |r| r.get(0)).optional()?;
        Ok(s.filter(|s| !s.is_empty()))
    }
}
