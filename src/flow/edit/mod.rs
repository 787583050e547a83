//! Typed edits of a flow document.
//!
//! An [`Edit`] is what a user asks for (with ids given as prefixes); [`Edit::apply`] checks the
//! input against the current document and writes the operations into an Automerge transaction.
//! It does not decide who may do what: the authorization policy ([`crate::auth`]) judges the
//! resulting change, exactly as it judges changes received from peers.

use automerge::transaction::Transactable;
use automerge::{ObjType, ScalarValue, ROOT};
use serde::{Deserialize, Serialize};

use super::*;
use crate::identity::NodeId;

mod apply;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EditError {
    #[error("{0}")]
    Invalid(String),
    #[error("no {what} matches '{prefix}'")]
    NotFound { what: &'static str, prefix: String },
    #[error("'{prefix}' matches {} {what}s ({}); give more characters", .candidates.len(), listed(.candidates))]
    Ambiguous {
        what: &'static str,
        prefix: String,
        /// Every id the prefix matches.
        candidates: Vec<String>,
    },
    #[error("document error: {0}")]
    Document(String),
}

impl From<automerge::AutomergeError> for EditError {
    fn from(e: automerge::AutomergeError) -> Self {
        EditError::Document(e.to_string())
    }
}

/// An edit a user asks for. Serializable: the control API carries it as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Edit {
    SetTitle {
        title: String,
    },
    SetNeed {
        need: String,
    },
    SetStatus {
        status: FlowStatus,
    },
    AddMember {
        node_id: String,
        role: Role,
        name: Option<String>,
    },
    RemoveMember {
        member: String,
    },
    AddStep {
        title: String,
        detail: Option<String>,
        assignee: Option<String>,
        customer_involved: bool,
        due: Option<String>,
    },
    SetStepStatus {
        step: String,
        status: StepStatus,
    },
    AssignStep {
        step: String,
        assignee: Option<String>,
    },
    Comment {
        text: String,
        step: Option<String>,
    },
    NewDecision {
        question: String,
        options: Vec<String>,
        who: Who,
        mode: Mode,
        step: Option<String>,
    },
    Choose {
        decision: String,
        option: String,
    },
    CloseDecision {
        decision: String,
    },
    /// Records an invite; the caller keeps the secret (only the public key derived from it is
    /// in the document).
    CreateInvite {
        role: Role,
        /// hex of the invite's 32-byte public key ([`crate::identity::InviteKey`])
        public_key: String,
        expires_at: i64,
        uses: i64,
    },
    RevokeInvite {
        invite: String,
    },
    /// Adds `joiner` with the invite's role, using up one use. `proof` (hex of 64 bytes) is the
    /// joiner's signature with the invite's key over (flow, invite, joiner): every node checks
    /// it against the invite's public key, and it admits nobody but `joiner`.
    Redeem {
        invite: String,
        proof: String,
        joiner: String,
        name: String,
    },
}

/// What applying an edit produced: a one-line summary (the change message) and the id of any
/// object it created.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub summary: String,
    pub created: Option<String>,
}

/// Picks the one candidate starting with `prefix` (an exact match always wins).
pub fn resolve_prefix<'a>(
    what: &'static str,
    prefix: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Result<String, EditError> {
    let prefix = prefix.trim();
    let not_found = || EditError::NotFound {
        what,
        prefix: prefix.to_string(),
    };
    if prefix.is_empty() {
        return Err(not_found());
    }
    let mut matches: Vec<&str> = Vec::new();
    // Hex ids (flows, steps, decisions, invites) that match only when case is ignored (typed in
    // capitals), in case nothing matches as typed. Node ids are base58, where case matters.
    let mut caseless: Vec<&str> = Vec::new();
    for c in candidates {
        if c == prefix {
            return Ok(c.to_string());
        }
        if c.starts_with(prefix) {
            if !matches.contains(&c) {
                matches.push(c);
            }
        } else if is_lower_hex(c)
            && c.len() >= prefix.len()
            && c[..prefix.len()].eq_ignore_ascii_case(prefix)
            && !caseless.contains(&c)
        {
            caseless.push(c);
        }
    }
    if matches.is_empty() {
        matches = caseless;
    }
    match matches.len() {
        0 => Err(not_found()),
        1 => Ok(matches[0].to_string()),
        _ => Err(EditError::Ambiguous {
            what,
            prefix: prefix.to_string(),
            candidates: matches.into_iter().map(str::to_string).collect(),
        }),
    }
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Most candidates an ambiguous prefix's error names.
const LISTED_CANDIDATES: usize = 8;

/// The candidates an ambiguous prefix matched, as the error names them (peer text escaped).
fn listed(candidates: &[String]) -> String {
    let mut list: Vec<String> = (candidates.iter().take(LISTED_CANDIDATES))
        .map(|c| crate::text::one_line(c).into_owned())
        .collect();
    if candidates.len() > LISTED_CANDIDATES {
        list.push(format!("and {} more", candidates.len() - LISTED_CANDIDATES));
    }
    list.join(", ")
}

fn non_empty(what: &str, s: &str) -> Result<String, EditError> {
    let s = s.trim();
    if s.is_empty() {
        Err(EditError::Invalid(format!("the {what} must not be empty")))
    } else {
        Ok(s.to_string())
    }
}

/// A fresh random id for a step, decision, comment or invite.
pub fn new_id() -> String {
    let mut b = [0u8; 8];
    crate::identity::random(&mut b).expect("the OS random generator works");
    crate::identity::hex(&b)
}

fn opt_str(v: &Option<String>) -> ScalarValue {
    match v {
        Some(s) => ScalarValue::Str(s.as_str().into()),
        None => ScalarValue::Null,
    }
}

/// Writes a new flow's genesis: the root fields, the containers, and its author as the only
/// member with `role` (customer or owner).
pub fn new_flow_ops<T: Transactable>(
    tx: &mut T,
    author: &NodeId,
    name: &str,
    title: &str,
    need: &str,
    role: Role,
    now: i64,
) -> Result<(), EditError> {
    let title = non_empty("title", title)?;
    let need = non_empty("need", need)?;
    if !matches!(role, Role::Customer | Role::Owner) {
        return Err(EditError::Invalid(
            "a flow's creator is its customer or its owner".into(),
        ));
    }
    tx.put(ROOT, field::SCHEMA, SCHEMA_VERSION)?;
    tx.put(ROOT, field::TITLE, title)?;
    tx.put(ROOT, field::NEED, need)?;
    tx.put(ROOT, field::STATUS, FlowStatus::Open.as_str())?;
    tx.put(ROOT, field::CREATED_AT, now)?;
    let members = tx.put_object(ROOT, field::MEMBERS, ObjType::Map)?;
    tx.put_object(ROOT, field::INVITES, ObjType::Map)?;
    tx.put_object(ROOT, field::STEPS, ObjType::List)?;
    tx.put_object(ROOT, field::DECISIONS, ObjType::Map)?;
    tx.put_object(ROOT, field::COMMENTS, ObjType::List)?;
    put_member(tx, &members, author.as_str(), name, role, author, now)?;
    Ok(())
}

/// Makes the member record of `node_id` in `members` and returns it.
fn put_member<T: Transactable>(
    tx: &mut T,
    members: &automerge::ObjId,
    node_id: &str,
    name: &str,
    role: Role,
    added_by: &NodeId,
    now: i64,
) -> Result<automerge::ObjId, EditError> {
    let m = tx.put_object(members, node_id, ObjType::Map)?;
    tx.put(&m, schema::member::NAME, name)?;
    tx.put(&m, schema::member::ROLE, role.as_str())?;
    tx.put(&m, schema::member::ADDED_BY, added_by.as_str())?;
    tx.put(&m, schema::member::ADDED_AT, now)?;
    tx.put(&m, schema::member::REMOVED, false)?;
    Ok(m)
}

/// Finds a current member by exact name, or by node id (or a unique prefix of one). A name that
/// more than one current member could be taken for (the same, or a look-alike, see
/// [`name_key`]) names none of them: the error lists them with their roles and node id
/// suffixes, so the user can pick one by its id.
fn resolve_member(flow: &Flow, who: &str) -> Result<String, EditError> {
    let current = |m: &&Member| !m.removed;
    let alike: Vec<&Member> = flow
        .members_named(who)
        .into_iter()
        .filter(current)
        .collect();
    let exact: Vec<&Member> = alike.iter().copied().filter(|m| m.name == who).collect();
    if alike.len() > 1 && (!exact.is_empty() || resolve_prefix_ids(flow, who).is_err()) {
        let list: Vec<String> = alike
            .iter()
            .map(|m| format!("{} ({}, {})", m.name, m.role, short_id(&m.node_id)))
            .collect();
        return Err(EditError::Invalid(format!(
            "'{who}' could be any of {} members: {}; give a node id (or its first characters) instead",
            alike.len(),
            list.join(", ")
        )));
    }
    if let [m] = exact.as_slice() {
        return Ok(m.node_id.clone());
    }
    resolve_prefix_ids(flow, who)
}

fn resolve_prefix_ids(flow: &Flow, who: &str) -> Result<String, EditError> {
    resolve_prefix(
        "member",
        who,
        flow.members
            .iter()
            .filter(|m| !m.removed)
            .map(|m| m.node_id.as_str()),
    )
}

/// The first line of `s`, cut to `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line.to_string()
    }
}
