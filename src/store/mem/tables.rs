//! The tables of a [`MemStore`](super::MemStore): flows, changes and peers, each write
//! recording how to undo it.

use super::*;

impl Flows for MemWriter<'_> {
    fn insert_flow(
        &self,
        id: &FlowId,
        _genesis: &[u8],
        title: &str,
        status: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut t = self.rows_mut();
        if t.flows.contains_key(id) {
            return Err(constraint(
                rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
                "UNIQUE constraint failed: flows.id",
            ));
        }
        let rowid = t.next_rowid;
        t.next_rowid += 1;
        t.flows.insert(
            *id,
            FlowEntry {
                rowid,
                title: title.into(),
                status: status.into(),
                created_at: now,
                updated_at: now,
                offered_by: None,
                summary: String::new(),
            },
        );
        self.store
            .wrote([Undo::NextRowid(rowid), Undo::Flow(*id, None)]);
        Ok(())
    }

    fn update_flow(
        &self,
        id: &FlowId,
        title: &str,
        status: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut t = self.rows_mut();
        if let Some(f) = t.flows.get_mut(id) {
            let title = std::mem::replace(&mut f.title, title.into());
            let status = std::mem::replace(&mut f.status, status.into());
            let at = std::mem::replace(&mut f.updated_at, now);
            self.store
                .wrote([Undo::FlowRow(*id, title, status, at)]);
        }
        Ok(())
    }

    fn flows(&self) -> Result<Vec<FlowRow>, StoreError> {
        Ok(self
            .rows()
            .rows_of(false)
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    fn offers(&self) -> Result<Vec<(FlowRow, String)>, StoreError> {
        Ok(self.rows().rows_of(true))
    }

    fn has_flow(&self, flow: &FlowId) -> Result<bool, StoreError> {
        Ok(self.rows().flows.contains_key(flow))
    }

    fn flow_ids(&self) -> Result<Vec<FlowId>, StoreError> {
        Ok(self.rows().ids_where(|f| f.offered_by.is_none()))
    }

    fn flow_ids_after(&self, after: Option<&FlowId>, limit: usize) -> Result<Vec<FlowId>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let rows = self.rows();
        Ok(rows
            .flows
            .range((after.map_or(Unbounded, Excluded), Unbounded))
            .filter(|(_, f)| f.offered_by.is_none())
            .map(|(id, _)| *id)
            .take(limit)
            .collect())
    }

    fn all_flow_ids(&self) -> Result<Vec<FlowId>, StoreError> {
        // SQLite reads these from the primary key's index: in id order.
        Ok(self.rows().flows.keys().copied().collect())
    }

    fn pending_ids(&self) -> Result<Vec<FlowId>, StoreError> {
        Ok(self.rows().ids_where(|f| f.offered_by.is_some()))
    }

    fn mark_offered(&self, flow: &FlowId, by: &str) -> Result<(), StoreError> {
        self.set_offered(flow, Some(by.into()));
        Ok(())
    }

    fn accept_flow(&self, flow: &FlowId) -> Result<(), StoreError> {
        self.set_offered(flow, None);
        Ok(())
    }

    fn decline_flow(&self, flow: &FlowId, members: &[String], now: i64) -> Result<(), StoreError> {
        self.delete_flow(flow);
        let mut t = self.rows_mut();
        let old = t
            .declined
            .insert(*flow, (members.join(" "), now));
        self.store.wrote([Undo::Declined(*flow, old)]);
        // Keep the most recent (by `at`, then id): forget the oldest, highest id first.
        while t.declined.len() > MAX_DECLINED {
            let oldest = t
                .declined
                .iter()
                .min_by(|a, b| a.1 .1.cmp(&b.1 .1).then_with(|| b.0.cmp(a.0)))
                .map(|(k, _)| *k)
                .expect("not empty");
            let old = t.declined.remove(&oldest);
            self.store.wrote([Undo::Declined(oldest, old)]);
        }
        Ok(())
    }

    fn declined_members(&self, flow: &FlowId) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self
            .rows()
            .declined
            .get(flow)
            .map(|(m, _)| m.split_whitespace().map(str::to_string).collect()))
    }

    fn forget_declined(&self, flow: &FlowId) -> Result<(), StoreError> {
        let old = self.rows_mut().declined.remove(flow);
        if old.is_some() {
            self.store.wrote([Undo::Declined(*flow, old)]);
        }
        Ok(())
    }

    fn set_summary(&self, flow: &FlowId, summary: &str) -> Result<(), StoreError> {
        if let Some(f) = self.rows_mut().flows.get_mut(flow) {
            let old = std::mem::replace(&mut f.summary, summary.into());
            self.store.wrote([Undo::Summary(*flow, old)]);
        }
        Ok(())
    }

    fn summary(&self, flow: &FlowId) -> Result<Option<String>, StoreError> {
        Ok(self
            .rows()
            .flows
            .get(flow)
            .map(|f| f.summary.clone())
            .filter(|s| !s.is_empty()))
    }
}

impl MemWriter<'_> {
    fn set_offered(&self, flow: &FlowId, by: Option<String>) {
        if let Some(f) = self.rows_mut().flows.get_mut(flow) {
            let old = std::mem::replace(&mut f.offered_by, by);
            self.store.wrote([Undo::Offered(*flow, old)]);
        }
    }
}

impl Changes for MemWriter<'_> {
    fn insert_changes<'c>(
        &self,
        flow: &FlowId,
        changes: impl IntoIterator<Item = (&'c [u8], &'c [u8], &'c [u8])>,
    ) -> Result<usize, StoreError> {
        let mut t = self.rows_mut();
        let mut n = 0;
        for (hash, bytes, sig) in changes {
            if !t.flows.contains_key(flow) {
                return Err(no_flow());
            }
            // As SQLite's AUTOINCREMENT does, a change skipped as stored already uses up a number.
            let seq = t.next_seq;
            t.next_seq += 1;
            let c = t.changes.entry(*flow).or_default();
            if c.by_hash.contains_key(hash) {
                self.store.wrote([Undo::NextSeq(seq)]);
                continue;
            }
            c.by_hash.insert(hash.to_vec(), c.rows.len());
            c.rows.push(StoredChange {
                seq,
                hash: hash.to_vec(),
                signed: SignedChange {
                    bytes: bytes.to_vec(),
                    signature: sig.to_vec(),
                },
            });
            self.store
                .wrote([Undo::NextSeq(seq), Undo::Appended(*flow)]);
            n += 1;
        }
        Ok(n)
    }

    fn insert_removals(&self, flow: &FlowId, removals: &[Removal]) -> Result<(), StoreError> {
        let mut t = self.rows_mut();
        for r in removals {
            if !t.flows.contains_key(flow) {
                return Err(no_flow());
            }
            let key = (r.change.0, r.target);
            let of_flow = t.removals.entry(*flow).or_default();
            if of_flow.contains_key(&key) {
                continue;
            }
            of_flow.insert(key, r.rank);
            self.store.wrote([Undo::Removal(*flow, key)]);
        }
        Ok(())
    }

    fn removals(&self, flow: &FlowId) -> Result<Vec<Removal>, StoreError> {
        Ok(self
            .rows()
            .removals
            .get(flow)
            .into_iter()
            .flatten()
            .map(|(&(change, target), &rank)| Removal {
                change: automerge::ChangeHash(change),
                target,
                rank,
            })
            .collect())
    }

    fn changes_after(&self, flow: &FlowId, seq: i64) -> Result<Vec<StoredChange>, StoreError> {
        let t = self.rows();
        let Some(c) = t.changes.get(flow) else {
            return Ok(Vec::new());
        };
        let from = c.rows.partition_point(|r| r.seq <= seq);
        Ok(c.rows[from..].to_vec())
    }

    fn last_seq(&self, flow: &FlowId) -> Result<i64, StoreError> {
        let t = self.rows();
        Ok(t.changes
            .get(flow)
            .and_then(|c| c.rows.last())
            .map_or(0, |r| r.seq))
    }

    fn count_after(&self, flow: &FlowId, seq: i64) -> Result<i64, StoreError> {
        let t = self.rows();
        let Some(c) = t.changes.get(flow) else {
            return Ok(0);
        };
        Ok((c.rows.len() - c.rows.partition_point(|r| r.seq <= seq)) as i64)
    }

    fn snapshot(&self, flow: &FlowId) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(self.rows().snapshots.get(flow).cloned())
    }

    fn snapshot_seq(&self, flow: &FlowId) -> Result<Option<i64>, StoreError> {
        Ok(self.rows().snapshots.get(flow).map(|(seq, _)| *seq))
    }

    fn signature(&self, flow: &FlowId, hash: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .signed_change(flow, hash)?
            .map(|c| c.signature))
    }

    fn signed_change(&self, flow: &FlowId, hash: &[u8]) -> Result<Option<SignedChange>, StoreError> {
        let t = self.rows();
        Ok(t.changes
            .get(flow)
            .and_then(|c| c.by_hash.get(hash).map(|&i| c.rows[i].signed.clone())))
    }

    fn put_snapshot(&self, flow: &FlowId, upto_seq: i64, doc: &[u8]) -> Result<(), StoreError> {
        let mut t = self.rows_mut();
        if !t.flows.contains_key(flow) {
            return Err(no_flow());
        }
        let old = t.snapshots.insert(*flow, (upto_seq, doc.to_vec()));
        self.store.wrote([Undo::Snapshot(*flow, old)]);
        Ok(())
    }
}

impl Peers for MemWriter<'_> {
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.rows().meta.get(key).cloned())
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let old = self.rows_mut().meta.insert(key.into(), value.into());
        self.store.wrote([Undo::Meta(key.into(), old)]);
        Ok(())
    }

    fn saw_peer(&self, node: &str, addrs: &[String], now: i64) -> Result<(), StoreError> {
        let row = PeerRow {
            node: node.into(),
            addrs: addrs.to_vec(),
            last_seen: now,
            failures: 0,
        };
        let old = self.rows_mut().peers.insert(node.into(), row);
        self.store.wrote([Undo::Peer(node.into(), old)]);
        Ok(())
    }

    fn peer_failed(&self, node: &str) -> Result<(), StoreError> {
        if let Some(p) = self.rows_mut().peers.get_mut(node) {
            let old = p.clone();
            p.failures += 1;
            self.store.wrote([Undo::Peer(node.into(), Some(old))]);
        }
        Ok(())
    }

    fn peers(&self) -> Result<Vec<PeerRow>, StoreError> {
        let mut rows: Vec<PeerRow> = self.rows().peers.values().cloned().collect();
        rows.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.node.cmp(&b.node)));
        Ok(rows)
    }

    fn forget_peers(&self, keep: usize) -> Result<usize, StoreError> {
        let mut rows: Vec<(i64, String)> = (self.rows().peers.values())
            .map(|p| (p.last_seen, p.node.clone()))
            .collect();
        // Most recently seen first, ties by node id: as the SQLite store orders them.
        rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let gone: Vec<String> = (rows.into_iter().enumerate())
            .filter(|(i, _)| *i >= keep)
            .map(|(_, (_, node))| node)
            .collect();
        for node in &gone {
            let old = self.rows_mut().peers.remove(node);
            self.store.wrote([Undo::Peer(node.clone(), old)]);
        }
        Ok(gone.len())
    }
}
