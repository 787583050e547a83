//! The role policy, evaluated in a change's causal past.
//!
//! [`authorize`] judges one change that has already been applied to `doc`. Everything it reads
//! about the flow it reads *as of the change's dependencies* (Automerge's historical reads), so
//! the verdict depends only on the change and its causal history: every honest node that holds
//! the change reaches the same verdict, whatever else it holds, and documents converge.
//!
//! The change's operations are walked one by one. Each operation targets an object; the object's
//! place in the schema (the root, a member, a step, a decision's choices…) is found from its
//! path in the causal past, or, for objects this change creates, from the operation that made
//! them. Every (place, field, value) is then checked against the author's role. Anything the
//! schema has no place for is rejected.

use std::collections::HashMap;

use sha2::Digest;

use automerge::legacy::{self, ElementId, Key, ObjectId, OpType};
use automerge::{Automerge, ChangeHash, ObjId, ObjType, Prop, ReadDoc, ScalarValue, ROOT};

use crate::flow::{field, schema, FlowStatus, Mode, Reader, Role, StepStatus, Who};
use crate::identity::NodeId;

mod members;
mod place;
mod rules;

use place::{place_name, Place, Target};

/// Why a change was refused by the policy. The text is shown to users as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

fn deny<T>(msg: impl Into<String>) -> Result<T, Forbidden> {
    Err(Forbidden(msg.into()))
}

/// Roles already known from judging earlier changes: for a change that touched no member, its
/// author's role right after it is the role it was judged with. A chain of changes by one author
/// (each depending on the one before) then reads the members in the past once, not once per
/// change. Every entry is a fact about a change and its history, so it never goes stale.
#[derive(Default)]
pub struct RoleMemo {
    after: HashMap<ChangeHash, (NodeId, Role)>,
}

impl RoleMemo {
    /// Entries kept before the memo starts afresh (a chain needs only its latest one).
    const MAX: usize = 64;

    fn role(&self, deps: &[ChangeHash], author: &NodeId) -> Option<Role> {
        match deps {
            [d] => self
                .after
                .get(d)
                .filter(|(a, _)| a == author)
                .map(|(_, r)| *r),
            _ => None,
        }
    }

    fn record(&mut self, hash: ChangeHash, author: &NodeId, role: Role) {
        if self.after.len() >= Self::MAX {
            self.after.clear();
        }
        self.after.insert(hash, (*author, role));
    }
}

/// Judges `change`, which must already be applied to `doc`, against the policy.
pub fn authorize(
    doc: &Automerge,
    change: &automerge::Change,
    author: &NodeId,
) -> Result<(), Forbidden> {
    authorize_with(doc, change, author, &mut RoleMemo::default()).map(|_| ())
}

/// [`authorize`], reading the author's role from `memo` where it can, and adding to it.
pub fn authorize_with(
    doc: &Automerge,
    change: &automerge::Change,
    author: &NodeId,
    memo: &mut RoleMemo,
) -> Result<Judged, Forbidden> {
    if change.author().is_some() {
        return deny("changes must not carry an Automerge author record");
    }
    let expanded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
        .map_err(|_| Forbidden("the change's operations cannot be decoded".into()))?;
    let deps = change.deps().to_vec();
    let genesis = deps.is_empty();
    let role = if genesis {
        genesis_role(&expanded, author)?
    } else if let Some(r) = memo.role(&deps, author) {
        r
    } else {
        match Reader::at(doc, &deps).role_of(author.as_str()) {
            Some(r) => r,
            None => return deny("the author is not a member of this flow"),
        }
    };
    let mut judge = Judge {
        doc,
        deps: &deps,
        me: author.as_str(),
        actor: change.actor_id().clone(),
        start_op: change.start_op().get(),
        role,
        genesis,
        targets: HashMap::new(),
        members_created: Vec::new(),
        new_members: HashMap::new(),
        uses_left_puts: Vec::new(),
        invite_edits: Vec::new(),
        time: change.timestamp(),
        my_choices: HashMap::new(),
        choice_outcomes: Vec::new(),
        touched_members: false,
    };
    for (i, op) in expanded.operations.iter().enumerate() {
        judge.op(judge.start_op + i as u64, op)?;
    }
    let touched_members = judge.touched_members;
    judge.finish()?;
    if !touched_members {
        memo.record(change.hash(), author, role);
    }
    Ok(Judged { touched_members })
}

/// What judging an accepted change found out about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judged {
    /// Whether the change touched the members map (only such a change can remove a member).
    pub touched_members: bool,
}

/// The role a genesis change gives its author (it must make its author the only member).
fn genesis_role(change: &legacy::Change, author: &NodeId) -> Result<Role, Forbidden> {
    let start = change.start_op.get();
    let member_op = change.operations.iter().enumerate().find(|(_, op)| {
        matches!(op.action, OpType::Make(ObjType::Map))
            && matches!(&op.key, Key::Map(k) if k.as_str() == author.as_str())
    });
    let Some((i, _)) = member_op else {
        return deny("a new flow must make its author a member");
    };
    let member = legacy::OpId(start + i as u64, change.actor_id.clone());
    let role = change
        .operations
        .iter()
        .find_map(|op| match (&op.obj, &op.key, &op.action) {
            (ObjectId::Id(id), Key::Map(k), OpType::Put(ScalarValue::Str(s)))
                if *id == member && k.as_str() == schema::member::ROLE =>
            {
                s.parse::<Role>().ok()
            }
            _ => None,
        });
    match role {
        Some(r @ (Role::Customer | Role::Owner)) => Ok(r),
        _ => deny("a flow's creator must be its customer or its owner"),
    }
}

#[derive(Default)]
struct NewMember {
    role: Option<Role>,
    invite: Option<String>,
    /// The joiner's signature with the invite's key (see [`crate::identity::InviteKey`]).
    proof: Option<Vec<u8>>,
    /// The ticket's secret itself: how invites made by earlier versions were redeemed.
    legacy_secret: Option<String>,
}

struct Judge<'a> {
    doc: &'a Automerge,
    deps: &'a [ChangeHash],
    me: &'a str,
    actor: automerge::ActorId,
    start_op: u64,
    role: Role,
    genesis: bool,
    targets: HashMap<(u64, automerge::ActorId), Target>,
    members_created: Vec<String>,
    /// fields of the members this change creates
    new_members: HashMap<String, NewMember>,
    /// (invite id, new uses_left) written by this change
    uses_left_puts: Vec<(String, i64)>,
    /// The invite of every operation on an invite that existed before this change.
    invite_edits: Vec<String>,
    time: i64,
    /// decision object → option chosen by the author in this change
    my_choices: HashMap<ObjId, String>,
    /// (decision object, outcome) set on choice-mode decisions in this change
    choice_outcomes: Vec<(ObjId, String)>,
    /// Whether an operation targets the members map or a member.
    touched_members: bool,
}

fn str_value(op: &legacy::Op) -> Option<&str> {
    match &op.action {
        OpType::Put(ScalarValue::Str(s)) => Some(s.as_str()),
        _ => None,
    }
}

fn expect_str<'o>(op: &'o legacy::Op, what: &str) -> Result<&'o str, Forbidden> {
    str_value(op).ok_or_else(|| Forbidden(format!("{what} must be a string")))
}

fn expect_opt_str<'o>(op: &'o legacy::Op, what: &str) -> Result<Option<&'o str>, Forbidden> {
    match &op.action {
        OpType::Put(ScalarValue::Null) => Ok(None),
        OpType::Put(ScalarValue::Str(s)) => Ok(Some(s.as_str())),
        _ => deny(format!("{what} must be a string or null")),
    }
}

fn expect_bool(op: &legacy::Op, what: &str) -> Result<bool, Forbidden> {
    match &op.action {
        OpType::Put(ScalarValue::Boolean(b)) => Ok(*b),
        _ => deny(format!("{what} must be true or false")),
    }
}

fn expect_int(op: &legacy::Op, what: &str) -> Result<i64, Forbidden> {
    match &op.action {
        OpType::Put(ScalarValue::Int(i)) => Ok(*i),
        _ => deny(format!("{what} must be an integer")),
    }
}

fn expect_parse<T: std::str::FromStr<Err = String>>(
    op: &legacy::Op,
    what: &str,
) -> Result<T, Forbidden> {
    expect_str(op, what)?.parse().map_err(Forbidden)
}

fn expect_node(op: &legacy::Op, what: &str) -> Result<(), Forbidden> {
    if let Some(s) = expect_opt_str(op, what)? {
        s.parse::<NodeId>().map_err(Forbidden)?;
    }
    Ok(())
}

fn map_key(op: &legacy::Op) -> Result<&str, Forbidden> {
    match &op.key {
        Key::Map(k) => Ok(k.as_str()),
        Key::Seq(_) => deny("a list operation on a map"),
    }
}

fn non_empty(op: &legacy::Op, what: &str) -> Result<(), Forbidden> {
    if expect_str(op, what)?.trim().is_empty() {
        deny(format!("the {what} must not be empty"))
    } else {
        Ok(())
    }
}

fn article(role: Role) -> String {
    match role {
        Role::Owner | Role::Observer => format!("an {role}"),
        _ => format!("a {role}"),
    }
}
