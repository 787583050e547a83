//! Human and JSON output of CLI results.

use std::io::Write;

use serde::Serialize;
use serde_json::json;

use crate::api::{PeerInfo, Reply, Status};
use crate::error::Result;
use crate::flow::{short_id, Mode};
use crate::repo::{EditOutcome, FlowView, Listed, LogEntry, Offer, VerifyReport};
use crate::text::{self, clip, lines, one_line};

pub struct Out {
    pub json: bool,
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub(super) fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub(super) fn emit_json(value: &impl Serialize) {
    let mut s = serde_json::to_string_pretty(value).expect("output serializes");
    s.push('\n');
    emit(&s);
}

pub(super) fn time(secs: i64) -> String {
    // UTC, without pulling in a date library: days since the epoch → civil date.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}Z")
}

impl Out {
    pub fn id(&self, node_id: &str, name: &str) -> Result<()> {
        if self.json {
            emit_json(&json!({"node_id": node_id, "name": name}));
        } else {
            emit(&format!("{}\t{}\n", one_line(node_id), one_line(name)));
        }
        Ok(())
    }

    pub fn config(&self, c: &crate::config::Config) -> Result<()> {
        if self.json {
            emit_json(c);
        } else {
            emit(&c.to_toml());
        }
        Ok(())
    }

    /// Prints any reply of the control API.
    pub fn reply(&self, reply: Reply) -> Result<()> {
        match reply {
            Reply::Id { node_id, name } => self.id(&node_id, &name),
            Reply::Status(s) => self.status(&s),
            Reply::Peers(p) => self.peers(&p),
            Reply::Created { id } | Reply::Joined { id } => self.created_flow(&id),
            Reply::Accepted { id } => {
                if !self.json {
                    eprintln!(
                        "accepted: this node now holds the flow and syncs it with its members"
                    );
                }
                self.created_flow(&id)
            }
            Reply::Declined { id } => {
                if !self.json {
                    eprintln!(
                        "declined: what this node had of the flow is deleted, and its members' \
                         further offers of it are turned away"
                    );
                }
                self.created_flow(&id)
            }
            Reply::Flows(rows) => self.flows(&rows),
            Reply::Flow(view) => self.flow(&view),
            Reply::Log(entries) => self.log(&entries),
            Reply::Verify(report) => self.verify(&report),
            Reply::Edited(e) => self.edited(&e),
            Reply::Invited(i) => {
                if self.json {
                    emit_json(&i);
                } else {
                    eprintln!(
                        "invite {} ({}) expires {}; give this ticket to the invitee:",
                        one_line(i.edit.id.as_deref().unwrap_or("")),
                        one_line(&i.edit.summary),
                        time(i.expires_at)
                    );
                    emit(&format!("{}\n", one_line(&i.ticket)));
                }
                Ok(())
            }
            Reply::Stats(s) => {
                if self.json {
                    emit_json(&s);
                } else {
                    emit(&format!(
                        "sync requests sent: {} ({} bytes)\nsync responses sent: {} ({} bytes)\n\
                         changes sent: {}\nchanges accepted: {}\nchanges rejected: {}\n\
                         announcements published: {}\nannouncements received: {}\n\
                         announcements relayed for flows not held: {}\n",
                        s.requests_sent,
                        s.request_bytes,
                        s.responses_sent,
                        s.response_bytes,
                        s.changes_sent,
                        s.changes_accepted,
                        s.changes_rejected,
                        s.announcements_sent,
                        s.announcements_received,
                        s.announcements_relayed,
                    ));
                }
                Ok(())
            }
            Reply::Export { .. } | Reply::Done => Ok(()),
        }
    }

    fn status(&self, s: &Status) -> Result<()> {
        if self.json {
            emit_json(s);
        } else {
            let mut t = format!(
                "node {} ({})\n{}\npeers: {}\nflows: {}\n",
                one_line(&s.node_id),
                one_line(&s.name),
                if s.running { "running" } else { "not running" },
                s.peers,
                s.flows
            );
            for a in &s.listen {
                t.push_str(&format!("listening on {}\n", one_line(a)));
            }
            if let Some(url) = &s.web {
                // The token stays out of a screen others may see: `coflow open` uses it.
                let page = url.split("/login").next().unwrap_or_default();
                t.push_str(&format!("page: {} (`coflow open`)\n", one_line(page)));
            }
            if s.setup {
                t.push_str("no key yet: choose a name on the page\n");
            }
            if s.running && !s.setup {
                t.push_str(match s.reachability {
                    crate::node::Reachability::Public => "reachable from outside",
                    crate::node::Reachability::Private => {
                        "not reachable from outside (behind a NAT or firewall)"
                    }
                    crate::node::Reachability::Unknown => "reachability not known yet",
                });
                for a in &s.external {
                    t.push_str(&format!("; at {}", one_line(a)));
                }
                t.push('\n');
                for r in &s.relays {
                    t.push_str(&format!("reachable through relay {}\n", one_line(r)));
                }
            }
            emit(&t);
        }
        Ok(())
    }

    fn peers(&self, peers: &[PeerInfo]) -> Result<()> {
        if self.json {
            emit_json(&peers);
        } else {
            let mut t = String::new();
            for p in peers {
                // The name is what the peer calls itself: never more than a hint.
                t.push_str(&format!(
                    "{}  {:<12} {:<9} {}\n",
                    one_line(&p.node_id),
                    text::name(&p.name),
                    match p.link {
                        crate::api::Link::Direct => "direct",
                        crate::api::Link::Relayed => "relayed",
                        crate::api::Link::Absent => "",
                    },
                    one_line(p.addrs.first().map(|s| s.as_str()).unwrap_or(""))
                ));
            }
            emit(&t);
        }
        Ok(())
    }

    pub fn created_flow(&self, id: &str) -> Result<()> {
        if self.json {
            emit_json(&json!({ "id": id }));
        } else {
            emit(&format!("{id}\n"));
        }
        Ok(())
    }

    pub fn edited(&self, e: &EditOutcome) -> Result<()> {
        if self.json {
            emit_json(e);
        } else {
            match &e.id {
                Some(id) => emit(&format!("{}\n", one_line(id))),
                None => eprintln!("{}", one_line(&e.summary)),
            }
        }
        Ok(())
    }

    pub fn flows(&self, rows: &[Listed]) -> Result<()> {
        if self.json {
            let v: Vec<_> = rows
                .iter()
                .map(|l| {
                    let r = &l.row;
                    let mut v = json!({
                        "id": r.id, "title": r.title, "status": r.status, "pending": l.pending,
                    });
                    if let Some(offer) = &l.offer {
                        v["offer"] = json!(offer);
                    }
                    v["waiting"] = json!(l.waiting);
                    v
                })
                .collect();
            emit_json(&v);
        } else {
            let mut s = String::new();
            // What waits on this node's user first.
            let mut held: Vec<&Listed> = rows.iter().filter(|l| !l.pending).collect();
            held.sort_by_key(|l| l.waiting.is_empty());
            for l in held {
                let r = &l.row;
                let waits = match l.waiting.len() {
                    0 => String::new(),
                    n => format!("  ({n} waiting on you)"),
                };
                s.push_str(&format!(
                    "{}  {:<9}  {}{waits}\n",
                    one_line(r.id.as_str()),
                    one_line(&r.status),
                    clip(&r.title, 200)
                ));
            }
            let offers: Vec<&Listed> = rows.iter().filter(|l| l.pending).collect();
            if !offers.is_empty() {
                if !s.is_empty() {
                    s.push('\n');
                }
                s.push_str(
                    "Offered to you, waiting for your answer \
                     (`coflow flow accept FLOW` or `coflow flow decline FLOW`):\n",
                );
            }
            for l in offers {
                s.push_str(&format!(
                    "{}  {:<9}  {}\n    {}\n",
                    one_line(l.row.id.as_str()),
                    "offered",
                    clip(&l.row.title, 200),
                    l.offer.as_ref().map(offered).unwrap_or_default()
                ));
            }
            emit(&s);
        }
        Ok(())
    }

    pub fn flow(&self, v: &FlowView) -> Result<()> {
        if self.json {
            emit_json(v);
            return Ok(());
        }
        let f = &v.flow;
        let mut s = format!(
            "{}  [{}]\n{}\nNeed: {}\n\nMembers:\n",
            clip(&f.title, 200),
            f.status,
            one_line(&f.id),
            lines(&f.need, "      ")
        );
        if let Some(offer) = &v.offer {
            s.insert_str(
                0,
                &format!(
                    "This flow was offered to you and waits for your answer: {}.\n\
                     `coflow flow accept {id}` to take part (it then syncs with its members), \
                     `coflow flow decline {id}` to delete it. Until then this is only the first \
                     part its sender sent, and you cannot change it.\n\n",
                    offered(offer),
                    id = &f.id[..8.min(f.id.len())]
                ),
            );
        }
        if v.removed_here {
            s.insert_str(
                0,
                "This node was removed from this flow: it keeps the history up to its removal \
                 and can no longer change it.\n\n",
            );
        }
        if !v.waiting_on_me.is_empty() {
            let mut w = String::from("Waiting on you:\n");
            for x in &v.waiting_on_me {
                w.push_str(&format!("  - {}\n", clip(&x.text, 200)));
            }
            w.push('\n');
            s.insert_str(0, &w);
        }
        let clashing = f.clashing_names();
        for m in f.members.iter().filter(|m| !m.removed) {
            let sync = v.sync.iter().find(|x| x.node_id == m.node_id).map(|x| {
                let state = match (x.connected, x.in_sync) {
                    (_, Some(true)) => "in sync",
                    (true, _) if x.not_serving => "has not accepted this flow yet",
                    (true, _) => "connected, syncing",
                    (false, _) => "offline",
                };
                let link = match x.link {
                    crate::api::Link::Direct => "; direct",
                    crate::api::Link::Relayed => "; through a relay",
                    crate::api::Link::Absent => "",
                };
                match x.last_heard {
                    Some(t) => format!("  ({state}{link}; last heard {})", time(t)),
                    None => format!("  ({state}{link})"),
                }
            });
            let clash = if clashing.contains(&m.node_id) {
                format!("  {}", text::SAME_NAME)
            } else {
                String::new()
            };
            s.push_str(&format!(
                "  {:<32} {}{}{}\n",
                text::member(m),
                one_line(&m.node_id),
                sync.unwrap_or_default(),
                clash
            ));
        }
        s.push_str("\nSteps:\n");
        if f.steps.is_empty() {
            s.push_str("  (none yet)\n");
        }
        for (i, st) in f.steps.iter().enumerate() {
            let who = st
                .assignee
                .as_deref()
                .map(|a| text::person_marked(f, &clashing, a))
                .unwrap_or_default();
            let customer = if st.customer_involved {
                " (with the customer)"
            } else {
                ""
            };
            s.push_str(&format!(
                "  {}. [{:<7}] {}{}  {}  {}\n",
                i + 1,
                st.status,
                clip(&st.title, 200),
                customer,
                who,
                one_line(&st.id)
            ));
        }
        if !f.decisions.is_empty() {
            s.push_str("\nDecisions:\n");
            for d in &f.decisions {
                let state = match (&d.outcome, d.closed) {
                    (Some(o), _) => format!("→ {}", clip(o, 200)),
                    (None, true) => "closed, no outcome".to_string(),
                    (None, false) => format!("open ({} decides)", d.who),
                };
                s.push_str(&format!(
                    "  {}  {}  {}\n",
                    one_line(&d.id),
                    clip(&d.question, 200),
                    state
                ));
                if d.mode == Mode::Vote {
                    for (o, n) in d.tally() {
                        s.push_str(&format!("      {n:>4}  {}\n", clip(&o, 200)));
                    }
                } else {
                    let options: Vec<String> = d.options.iter().map(|o| clip(o, 200)).collect();
                    s.push_str(&format!("      options: {}\n", options.join(" / ")));
                }
            }
        }
        if !f.comments.is_empty() {
            s.push_str("\nComments:\n");
            for c in &f.comments {
                s.push_str(&format!(
                    "  {} {}: {}\n",
                    time(c.at),
                    text::person_marked(f, &clashing, &c.author),
                    lines(&c.text, "      ")
                ));
            }
        }
        if !v.fallen.is_empty() {
            s.push_str(&format!(
                "\n{} change(s) fell with a member's removal (made by the removed member after its \
                 removal, or built on such a change): they are kept, not part of the flow; \
                 `flow log` marks them.\n",
                v.fallen.len()
            ));
        }
        if !v.fallen_mine.is_empty() {
            s.push_str(
                "Of these, your own (they built on a removed member's work; make them again if \
                 they still matter):\n",
            );
            for e in &v.fallen_mine {
                s.push_str(&format!("  {}  {}\n", &e.hash[..12], e.summary));
            }
        }
        s.push_str(&format!(
            "\nHeads: {}\n",
            v.heads
                .iter()
                .map(|h| &h[..12])
                .collect::<Vec<_>>()
                .join(" ")
        ));
        emit(&s);
        Ok(())
    }

    pub fn log(&self, entries: &[LogEntry]) -> Result<()> {
        if self.json {
            emit_json(&entries);
            return Ok(());
        }
        let mut s = String::new();
        for e in entries {
            // Who signed it, as the flow's member records know them.
            let who = match e.role {
                Some(role) => format!(
                    "{} ({role}, {}){}",
                    text::name(&e.name),
                    short_id(&e.author),
                    if e.name_clash { " ⚠ same name" } else { "" }
                ),
                None => format!("{} (not a member)", short_id(&e.author)),
            };
            s.push_str(&format!(
                "{}  {}  {:<28}  {}{}\n",
                one_line(e.hash.get(..12).unwrap_or(&e.hash)),
                time(e.at),
                who,
                one_line(&e.summary),
                if e.fallen {
                    "  [fell: its author was removed, or it built on such a change]"
                } else {
                    ""
                }
            ));
        }
        emit(&s);
        Ok(())
    }

    pub fn doctor(&self, r: &super::doctor::Report) {
        if self.json {
            emit_json(r);
        } else {
            let mut s = String::new();
            for c in &r.checks {
                let mark = if c.ok { "ok  " } else { "FAIL" };
                s.push_str(&format!("{mark}  {:<6}  {}\n", c.check, c.detail));
            }
            emit(&s);
        }
    }

    pub fn verify(&self, r: &VerifyReport) -> Result<()> {
        if self.json {
            emit_json(r);
        } else {
            let mut s = format!(
                "{} changes: {} valid, {} invalid{}\n",
                r.changes,
                r.valid,
                r.invalid,
                if r.heads_match {
                    ""
                } else {
                    " (heads differ from the stored document)"
                }
            );
            for p in &r.problems {
                s.push_str(&format!("  {}\n", one_line(p)));
            }
            if r.store_ok {
                s.push_str("database integrity: ok\n");
            } else {
                s.push_str("database integrity: FAILED\n");
                for p in &r.integrity {
                    s.push_str(&format!("  {p}\n"));
                }
            }
            emit(&s);
        }
        Ok(())
    }
}

/// Who offered a flow and as what: "added you as contributor: Alice (customer, 1a2b3c4d)".
fn offered(o: &Offer) -> String {
    let role = o
        .role
        .map(|r| r.to_string())
        .unwrap_or_else(|| "member".into());
    let by = match o.by_role {
        Some(r) => format!("{} ({r}, {})", text::name(&o.by_name), short_id(&o.by)),
        None => format!("node {}", short_id(&o.by)),
    };
    format!("{by} added you as {role}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_time() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::time(1_780_000_000), "2026-05-28 20:26:40Z");
    }
}
