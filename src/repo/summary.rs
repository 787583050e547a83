//! What the sync engine asks of a held flow on every tick, message and peer — its heads and its
//! current members — kept in the store beside the flow and written with every change
//! ([`persist`](super)), so that answering it loads no document: a node with many quiet flows
//! does not hold them all in memory for its ticks.

use super::*;

/// A held flow's document heads (sorted) and current members, as the flow stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub heads: Vec<String>,
    pub members: Vec<(String, Role)>,
    /// The names members (removed ones too) gave themselves (raw), for `coflow peers`.
    #[serde(default)]
    pub names: Vec<(String, String)>,
    /// What the flow waits on this node's user for, at these heads; `None` until asked
    /// ([`Repo::waiting`]): worked out from the document then, not with every change received.
    #[serde(default)]
    pub waiting: Option<Vec<crate::flow::Waiting>>,
    /// `heads` as Automerge hashes, worked out once when the summary is made or read.
    #[serde(skip)]
    hashes: Vec<automerge::ChangeHash>,
}

impl Summary {
    /// The summary of `doc` standing as `standing` says.
    pub(super) fn of(doc: &Automerge, standing: &Standing) -> Summary {
        let mut hashes = doc.get_heads();
        hashes.sort();
        let heads: Vec<String> = hashes.iter().map(|h| hex(&h.0)).collect();
        let all = stands(doc, standing).members();
        let names = all
            .iter()
            .filter(|m| !m.name.is_empty())
            .map(|m| (m.node_id.clone(), m.name.clone()))
            .collect();
        let members = all
            .into_iter()
            .filter(|m| !m.removed)
            .map(|m| (m.node_id, m.role))
            .collect();
        Summary {
            heads,
            members,
            names,
            waiting: None,
            hashes,
        }
    }

    pub(super) fn encode(&self) -> String {
        serde_json::to_string(self).expect("a summary serializes")
    }

    /// The heads, as Automerge hashes (sorted).
    pub fn change_hashes(&self) -> &[automerge::ChangeHash] {
        &self.hashes
    }

    /// A stored summary, its hashes worked out.
    fn decode(stored: &str) -> Option<Summary> {
        let mut s: Summary = serde_json::from_str(stored).ok()?;
        s.hashes = s
            .heads
            .iter()
            .filter_map(|h| unhex(h))
            .filter_map(|b| automerge::ChangeHash::try_from(b.as_slice()).ok())
            .collect();
        s.hashes.sort();
        Some(s)
    }
}

impl<S: Storage> Repo<S> {
    /// The summary of a held flow; `None` for a flow not held here (unknown, or offered and
    /// waiting). Read from the store once after each change; a flow stored before summaries
    /// were kept is summarized from its document once, and the summary stored.
    pub fn summary(&mut self, flow: &FlowId) -> Result<Option<&Summary>> {
        if !self.holds(flow)? {
            return Ok(None);
        }
        if !self.summaries.contains_key(flow) {
            let stored = self.store.reader().summary(flow)?;
            let summary = match stored.and_then(|s| Summary::decode(&s)) {
                Some(s) => s,
                None => {
                    let standing = self.standing(flow)?.clone();
                    let s = Summary::of(&self.docs[flow], &standing);
                    self.store.write(|w| w.set_summary(flow, &s.encode()))?;
                    s
                }
            };
            self.summaries.insert(*flow, summary);
        }
        Ok(self.summaries.get(flow))
    }

    /// What each of `flows` waits on this node's user for ([`crate::flow::Flow::waiting_on`];
    /// nothing for a flow not held here), kept in the flows' summaries: a flow's document is
    /// read for it once after each change, not on every `flow list`, and what was worked out
    /// is stored in one transaction.
    pub fn waiting(&mut self, flows: &[FlowId]) -> Result<Vec<Vec<crate::flow::Waiting>>> {
        let me = self.identity.node_id().to_string();
        let mut out = Vec::with_capacity(flows.len());
        let mut fresh = Vec::new();
        for flow in flows {
            let Some(mut summary) = self.summary(flow)?.cloned() else {
                out.push(Vec::new());
                continue;
            };
            if let Some(w) = summary.waiting {
                out.push(w);
                continue;
            }
            self.standing(flow)?;
            let waiting = stands(&self.docs[flow], &self.standing[flow])
                .flow_without_comments(flow.as_str())
                .waiting_on(&me);
            summary.waiting = Some(waiting.clone());
            fresh.push((*flow, summary));
            out.push(waiting);
        }
        if !fresh.is_empty() {
            self.store.write(|w| {
                for (flow, summary) in &fresh {
                    w.set_summary(flow, &summary.encode())?;
                }
                Ok::<(), Error>(())
            })?;
            self.summaries.extend(fresh);
        }
        Ok(out)
    }
}
