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

use crate::flow::{field, FlowStatus, Mode, Reader, Role, StepStatus, Who};
use crate::identity::NodeId;

/// Why a change was refused by the policy. The text is shown to users as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

fn deny<T>(msg: impl Into<String>) -> Result<T, Forbidden> {
    Err(Forbidden(msg.into()))
}

/// Where an object sits in the flow schema.
#[derive(Clone, Debug, PartialEq)]
enum Place {
    Root,
    Members,
    Member { node: String },
    Invites,
    Invite { id: String },
    Steps,
    Step,
    Decisions,
    Decision,
    Options,
    Choices { decision: ObjId },
    Comments,
    Comment,
}

/// An object an operation targets: its place, its id, and whether this change created it.
#[derive(Clone, Debug)]
struct Target {
    place: Place,
    obj: ObjId,
    new: bool,
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
        self.after.insert(hash, (author.clone(), role));
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
                if *id == member && k.as_str() == "role" =>
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

impl<'a> Judge<'a> {
    fn before(&self) -> Reader<'a> {
        Reader::at(self.doc, self.deps)
    }

    fn is_new(&self, id: &legacy::OpId) -> bool {
        id.1 == self.actor && id.0 >= self.start_op
    }

    fn exid(&self, id: &legacy::OpId) -> Result<ObjId, Forbidden> {
        self.doc
            .import(&format!("{}@{}", id.0, id.1.to_hex_string()))
            .map(|(o, _)| o)
            .map_err(|_| Forbidden("the change refers to an unknown object".into()))
    }

    /// The object an operation targets.
    fn target(&mut self, obj: &ObjectId) -> Result<Target, Forbidden> {
        let id = match obj {
            ObjectId::Root => {
                return Ok(Target {
                    place: Place::Root,
                    obj: ROOT,
                    new: false,
                })
            }
            ObjectId::Id(id) => id,
        };
        let key = (id.0, id.1.clone());
        if let Some(t) = self.targets.get(&key) {
            return Ok(t.clone());
        }
        if self.is_new(id) {
            // Objects this change creates are registered by the op that makes them, which
            // always precedes the ops inside them.
            return deny("the change refers to an object it has not created");
        }
        let obj = self.exid(id)?;
        let place = self.place_in_past(&obj)?;
        let t = Target {
            place,
            obj,
            new: false,
        };
        self.targets.insert(key, t.clone());
        Ok(t)
    }

    /// The place of an existing object, from its path as of the change's dependencies. An object
    /// that is not visible there (deleted, overwritten, or not in the causal past) has no place.
    ///
    /// An object's parent and key never change, so the keys of its path are read from the
    /// current document, where Automerge finds a list element's index from its index columns.
    /// Only visibility depends on the past, and that is checked step by step
    /// ([`Judge::visible_in_past`]), not through Automerge's path in the past: that one counts a
    /// list element's index by scanning the list, so every edit of a comment cost a scan of all
    /// comments, and it panics for a list element deleted or absent there.
    fn place_in_past(&self, obj: &ObjId) -> Result<Place, Forbidden> {
        let gone =
            || Forbidden("the change edits an object that does not exist in its past".into());
        let path = self.doc.parents(obj).map_err(|_| gone())?.path();
        let key = |i: usize| match path.get(i) {
            Some((_, Prop::Map(k))) => Some(k.as_str()),
            _ => None,
        };
        let place = match (path.len(), key(0)) {
            (1, Some(field::MEMBERS)) => Place::Members,
            (2, Some(field::MEMBERS)) => Place::Member {
                node: key(1).ok_or_else(gone)?.to_string(),
            },
            (1, Some(field::INVITES)) => Place::Invites,
            (2, Some(field::INVITES)) => Place::Invite {
                id: key(1).ok_or_else(gone)?.to_string(),
            },
            (1, Some(field::STEPS)) => Place::Steps,
            (2, Some(field::STEPS)) => Place::Step,
            (1, Some(field::DECISIONS)) => Place::Decisions,
            (2, Some(field::DECISIONS)) => Place::Decision,
            (3, Some(field::DECISIONS)) => match key(2) {
                Some("options") => Place::Options,
                Some("choices") => Place::Choices {
                    decision: path[2].0.clone(),
                },
                _ => return deny("the change edits an object outside the flow schema"),
            },
            (1, Some(field::COMMENTS)) => Place::Comments,
            (2, Some(field::COMMENTS)) => Place::Comment,
            _ => return deny("the change edits an object outside the flow schema"),
        };
        if self.visible_in_past(&path, obj, &place) {
            Ok(place)
        } else {
            Err(gone())
        }
    }

    /// Whether every step of `path` (root first, ending at `obj`) is visible as of the change's
    /// dependencies.
    ///
    /// A map entry is visible when it is the value its key holds there. A comment (an element of
    /// the comments list) is never deleted or replaced, since the policy refuses both, so it is
    /// visible wherever it exists; and it exists as of the dependencies when one of its fields
    /// does, since every accepted operation on an object comes causally after the object's
    /// creation. (A comment with no field there is taken as absent: honest edits create comments
    /// with their fields, and an edit of it would be refused anyway, for want of an author.) A
    /// step can be deleted: it is looked for among the steps listed as of the dependencies.
    fn visible_in_past(&self, path: &[(ObjId, Prop)], obj: &ObjId, place: &Place) -> bool {
        let children = path
            .iter()
            .skip(1)
            .map(|(o, _)| o)
            .chain(std::iter::once(obj));
        path.iter()
            .zip(children)
            .all(|((parent, prop), child)| match prop {
                Prop::Map(k) => matches!(
                    self.doc.get_at(parent, k.as_str(), self.deps),
                    Ok(Some((_, id))) if id == *child
                ),
                Prop::Seq(_) if *place == Place::Comment => {
                    self.doc.keys_at(child, self.deps).next().is_some()
                }
                Prop::Seq(_) => self
                    .doc
                    .list_range_at(parent, .., self.deps)
                    .any(|item| item.id() == *child),
            })
    }

    fn needs(&self, ok: bool, msg: &str) -> Result<(), Forbidden> {
        if ok {
            Ok(())
        } else {
            deny(format!("{} {}", article(self.role), msg))
        }
    }

    fn op(&mut self, counter: u64, op: &legacy::Op) -> Result<(), Forbidden> {
        if matches!(
            op.action,
            OpType::Increment(_) | OpType::MarkBegin(_) | OpType::MarkEnd(_)
        ) {
            return deny("counters and marks have no place in a flow");
        }
        if let OpType::Put(ScalarValue::Str(text)) = &op.action {
            let key = match &op.key {
                Key::Map(k) => k.as_str(),
                Key::Seq(_) => "",
            };
            let max = crate::flow::limit::text_for(key);
            let len = text.chars().count();
            if len > max {
                let what = if key.is_empty() {
                    "a list element"
                } else {
                    key
                };
                return deny(format!(
                    "{what} of {len} characters is over the limit of {max}"
                ));
            }
        }
        let t = self.target(&op.obj)?;
        self.touched_members |= matches!(t.place, Place::Members | Place::Member { .. });
        if let OpType::Make(typ) = op.action {
            let place = self.create(&t, op, typ)?;
            let obj = self.exid(&legacy::OpId(counter, self.actor.clone()))?;
            self.targets.insert(
                (counter, self.actor.clone()),
                Target {
                    place,
                    obj,
                    new: true,
                },
            );
            return Ok(());
        }
        match t.place.clone() {
            Place::Root => self.root(op),
            Place::Member { node } => self.member(&t, &node, op),
            Place::Invite { id } => self.invite(&t, &id, op),
            Place::Steps => self.steps_list(op),
            Place::Step => self.step(&t, op),
            Place::Decision => self.decision(&t, op),
            Place::Options => {
                if t.new && op.insert && str_value(op).is_some() {
                    Ok(())
                } else {
                    deny("a decision's options cannot change once it is open")
                }
            }
            Place::Choices { decision } => self.choice(&decision, op),
            Place::Comments => deny("comments cannot be deleted or replaced"),
            Place::Comment => self.comment(&t, op),
            Place::Members | Place::Invites | Place::Decisions => {
                deny("members, invites and decisions are added whole, never replaced or deleted")
            }
        }
    }

    /// An operation that makes an object: where may it go?
    fn create(
        &mut self,
        parent: &Target,
        op: &legacy::Op,
        typ: ObjType,
    ) -> Result<Place, Forbidden> {
        let place = match (&parent.place, &op.key, typ) {
            (Place::Root, Key::Map(k), _) if self.genesis => match (k.as_str(), typ) {
                (field::MEMBERS, ObjType::Map) => Place::Members,
                (field::INVITES, ObjType::Map) => Place::Invites,
                (field::STEPS, ObjType::List) => Place::Steps,
                (field::DECISIONS, ObjType::Map) => Place::Decisions,
                (field::COMMENTS, ObjType::List) => Place::Comments,
                _ => return deny("a new flow has no such container"),
            },
            (Place::Members, Key::Map(k), ObjType::Map) => {
                let node = k.to_string();
                node.parse::<NodeId>().map_err(Forbidden)?;
                if self.genesis {
                    if node != self.me || !self.members_created.is_empty() {
                        return deny("a new flow's only member is its creator");
                    }
                } else if self.before().role_of(&node).is_some() {
                    return deny(format!("{node} is already a member"));
                } else if self.members_created.contains(&node) {
                    return deny(format!("the change adds {node} twice"));
                }
                // Who may add this member (a manager, or anyone redeeming an invite) is decided
                // in `finish`, once the member's fields are known.
                self.members_created.push(node.clone());
                Place::Member { node }
            }
            (Place::Invites, Key::Map(k), ObjType::Map) => {
                self.needs(self.role.manages(), "cannot manage invites")?;
                Place::Invite { id: k.to_string() }
            }
            (Place::Steps, Key::Seq(_), ObjType::Map) if op.insert => {
                self.needs(self.role.edits_steps(), "cannot add steps")?;
                Place::Step
            }
            (Place::Decisions, Key::Map(_), ObjType::Map) => {
                self.needs(self.role.edits_steps(), "cannot open decisions")?;
                Place::Decision
            }
            (Place::Decision, Key::Map(k), ObjType::List) if parent.new && k == "options" => {
                Place::Options
            }
            (Place::Decision, Key::Map(k), ObjType::Map) if parent.new && k == "choices" => {
                Place::Choices {
                    decision: parent.obj.clone(),
                }
            }
            (Place::Comments, Key::Seq(_), ObjType::Map) if op.insert => Place::Comment,
            _ => return deny("the change creates an object where the flow schema has none"),
        };
        Ok(place)
    }

    fn root(&mut self, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if self.genesis {
            return match key {
                field::SCHEMA | field::CREATED_AT => expect_int(op, key).map(|_| ()),
                field::TITLE | field::NEED => non_empty(op, key),
                field::STATUS => match expect_parse::<FlowStatus>(op, key)? {
                    FlowStatus::Open => Ok(()),
                    _ => deny("a new flow starts open"),
                },
                _ => deny(format!("a new flow has no field '{key}'")),
            };
        }
        match key {
            field::TITLE | field::NEED => {
                self.needs(self.role.manages(), &format!("cannot edit the {key}"))?;
                non_empty(op, key)
            }
            field::STATUS => {
                let status = expect_parse::<FlowStatus>(op, key)?;
                let was = self.before().parse::<FlowStatus>(&ROOT, field::STATUS);
                if status == FlowStatus::Fulfilled {
                    self.needs(
                        self.role == Role::Customer,
                        "cannot confirm the need fulfilled: only a customer can",
                    )
                } else if was == Some(FlowStatus::Fulfilled) {
                    self.needs(
                        self.role == Role::Customer,
                        "cannot overrule the customer's confirmation that the need is fulfilled",
                    )
                } else {
                    self.needs(self.role.manages(), "cannot close or reopen the flow")
                }
            }
            _ => deny(format!("the field '{key}' cannot be changed")),
        }
    }

    fn member(&mut self, t: &Target, node: &str, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if t.new {
            let entry = self.new_members.entry(node.to_string()).or_default();
            return match key {
                "name" => expect_str(op, key).map(|_| ()),
                "role" => {
                    entry.role = Some(expect_parse::<Role>(op, key)?);
                    Ok(())
                }
                "invite" => {
                    entry.invite = Some(expect_str(op, key)?.to_string());
                    Ok(())
                }
                "invite_proof" => match &op.action {
                    OpType::Put(ScalarValue::Bytes(b)) if b.len() == 64 => {
                        entry.proof = Some(b.clone());
                        Ok(())
                    }
                    _ => deny("an invite proof must be 64 bytes"),
                },
                "invite_secret" => {
                    entry.legacy_secret = Some(expect_str(op, key)?.to_string());
                    Ok(())
                }
                "added_by" => match expect_str(op, key)? {
                    s if s == self.me => Ok(()),
                    _ => deny("added_by must name the change's author"),
                },
                "added_at" => expect_int(op, key).map(|_| ()),
                "removed" => match expect_bool(op, key)? {
                    false => Ok(()),
                    true => deny("a new member cannot start removed"),
                },
                _ => deny(format!("a member has no field '{key}'")),
            };
        }
        let target = self
            .before()
            .member(node)
            .ok_or_else(|| Forbidden(format!("{node} is not a member")))?;
        let is_self = node == self.me;
        let on_customer = target.role == Role::Customer;
        match key {
            "removed" => {
                if expect_bool(op, key)? {
                    if is_self {
                        return Ok(());
                    }
                    if on_customer {
                        return deny("a customer can only be removed by themself");
                    }
                    self.needs(self.role.manages(), "cannot remove other members")
                } else {
                    self.needs(self.role.manages(), "cannot restore members")?;
                    self.needs(
                        !on_customer || self.role == Role::Customer,
                        "cannot restore a customer: only a customer can",
                    )
                }
            }
            "role" => {
                let role = expect_parse::<Role>(op, key)?;
                if on_customer && !is_self {
                    return deny("a customer's role can only be changed by themself");
                }
                self.needs(is_self || self.role.manages(), "cannot change roles")?;
                if is_self && !self.role.manages() && role != Role::Observer {
                    // Contributors and observers may step down, never up.
                    return deny(format!(
                        "{} cannot raise their own role",
                        article(self.role)
                    ));
                }
                self.needs(
                    role != Role::Customer || self.role == Role::Customer,
                    "cannot make anyone a customer: only a customer can",
                )
            }
            "name" => {
                expect_str(op, key)?;
                if is_self {
                    return Ok(());
                }
                self.needs(self.role.manages(), "cannot rename other members")?;
                self.needs(
                    !on_customer || self.role == Role::Customer,
                    "cannot rename a customer",
                )
            }
            _ => deny(format!("a member's '{key}' cannot be changed")),
        }
    }

    fn invite(&mut self, t: &Target, id: &str, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if !t.new {
            self.invite_edits.push(id.to_string());
            if key == "uses_left" {
                // Managers set it; anyone else only by redeeming the invite (`finish` decides).
                let left = expect_int(op, key)?;
                self.uses_left_puts.push((id.to_string(), left));
                return Ok(());
            }
        }
        self.needs(self.role.manages(), "cannot manage invites")?;
        if t.new {
            return match key {
                "role" => {
                    let role = expect_parse::<Role>(op, key)?;
                    self.needs(
                        role != Role::Customer || self.may_bring_a_customer(),
                        "cannot invite a customer: only a customer can",
                    )
                }
                "public_key" => match &op.action {
                    OpType::Put(ScalarValue::Bytes(b)) if b.len() == 32 => Ok(()),
                    _ => deny("an invite's public key must be 32 bytes"),
                },
                // Invites made by earlier versions; kept so their history still verifies.
                "secret_hash" => match &op.action {
                    OpType::Put(ScalarValue::Bytes(b)) if b.len() == 32 => Ok(()),
                    _ => deny("secret_hash must be 32 bytes"),
                },
                "expires_at" | "uses_left" => expect_int(op, key).map(|_| ()),
                "created_by" => match expect_str(op, key)? {
                    s if s == self.me => Ok(()),
                    _ => deny("created_by must name the change's author"),
                },
                "revoked" => expect_bool(op, key).map(|_| ()),
                _ => deny(format!("an invite has no field '{key}'")),
            };
        }
        match key {
            "revoked" => expect_bool(op, key).map(|_| ()),
            _ => deny(format!("an invite's '{key}' cannot be changed")),
        }
    }

    fn steps_list(&mut self, op: &legacy::Op) -> Result<(), Forbidden> {
        match (&op.action, &op.key) {
            (OpType::Delete, Key::Seq(ElementId::Id(_))) => {
                self.needs(self.role.manages(), "cannot delete steps")
            }
            _ => deny("steps are maps inserted whole"),
        }
    }

    fn step(&mut self, t: &Target, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        self.needs(self.role.edits_steps(), "cannot edit steps")?;
        if t.new {
            return match key {
                "id" | "title" => non_empty(op, key),
                "detail" => expect_str(op, key).map(|_| ()),
                "status" => expect_parse::<StepStatus>(op, key).map(|_| ()),
                "assignee" => expect_node(op, key),
                "customer_involved" => expect_bool(op, key).map(|_| ()),
                "due" => expect_opt_str(op, key).map(|_| ()),
                "created_by" => match expect_str(op, key)? {
                    s if s == self.me => Ok(()),
                    _ => deny("created_by must name the change's author"),
                },
                _ => deny(format!("a step has no field '{key}'")),
            };
        }
        let assignee = self.before().str(&t.obj, "assignee");
        let mine_or_free = assignee.as_deref().is_none_or(|a| a == self.me);
        match key {
            "status" => {
                expect_parse::<StepStatus>(op, key)?;
                self.needs(
                    self.role.manages() || mine_or_free,
                    "cannot move a step assigned to someone else",
                )
            }
            "assignee" => {
                expect_node(op, key)?;
                self.needs(
                    self.role.manages() || mine_or_free,
                    "cannot reassign a step assigned to someone else",
                )
            }
            "title" => non_empty(op, key),
            "detail" | "due" => expect_opt_str(op, key).map(|_| ()),
            "customer_involved" => expect_bool(op, key).map(|_| ()),
            _ => deny(format!("a step's '{key}' cannot be changed")),
        }
    }

    fn decision(&mut self, t: &Target, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if t.new {
            return match key {
                "question" => non_empty(op, key),
                "step" => expect_opt_str(op, key).map(|_| ()),
                "who" => expect_parse::<Who>(op, key).map(|_| ()),
                "mode" => expect_parse::<Mode>(op, key).map(|_| ()),
                "outcome" => match expect_opt_str(op, key)? {
                    None => Ok(()),
                    Some(_) => deny("a new decision has no outcome yet"),
                },
                "closed" => match expect_bool(op, key)? {
                    false => Ok(()),
                    true => deny("a new decision starts open"),
                },
                "created_by" => match expect_str(op, key)? {
                    s if s == self.me => Ok(()),
                    _ => deny("created_by must name the change's author"),
                },
                _ => deny(format!("a decision has no field '{key}'")),
            };
        }
        let before = self.before();
        let d = before.read_decision("", &t.obj);
        if d.closed {
            return deny(format!("the decision '{}' is closed", d.question));
        }
        match key {
            "outcome" => {
                let outcome = expect_opt_str(op, key)?;
                if let Some(o) = outcome {
                    if !d.options.iter().any(|x| x == o) {
                        return deny(format!("'{o}' is not an option of '{}'", d.question));
                    }
                }
                self.may_settle(&d)?;
                if d.mode == Mode::Choice {
                    match outcome {
                        Some(o) => self.choice_outcomes.push((t.obj.clone(), o.to_string())),
                        None => return deny("a choice is settled by choosing an option"),
                    }
                }
                Ok(())
            }
            "closed" => {
                if !expect_bool(op, key)? {
                    return deny("a closed decision cannot be reopened");
                }
                self.may_settle(&d)
            }
            _ => deny(format!("a decision's '{key}' cannot be changed")),
        }
    }

    /// May the author settle (set the outcome of, close) this decision?
    fn may_settle(&self, d: &crate::flow::Decision) -> Result<(), Forbidden> {
        match (d.who, d.mode) {
            (Who::Customer, _) => self.needs(
                self.role == Role::Customer,
                "cannot settle a decision that is the customer's to make",
            ),
            (Who::Members, Mode::Choice) => Ok(()),
            (Who::Members, Mode::Vote) => {
                self.needs(self.role.manages(), "cannot close a members' vote")
            }
        }
    }

    fn choice(&mut self, decision: &ObjId, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if key != self.me {
            return deny("members choose only for themselves");
        }
        let before = self.before();
        let d = before.read_decision("", decision);
        if d.question.is_empty() {
            return deny("choices are made on decisions that already exist");
        }
        if d.closed {
            return deny(format!("the decision '{}' is closed", d.question));
        }
        if d.who == Who::Customer {
            self.needs(
                self.role == Role::Customer,
                &format!(
                    "cannot choose in '{}': it is the customer's decision",
                    d.question
                ),
            )?;
        }
        match &op.action {
            OpType::Delete => Ok(()),
            _ => {
                let option = expect_str(op, "a choice")?;
                if !d.options.iter().any(|o| o == option) {
                    return deny(format!("'{option}' is not an option of '{}'", d.question));
                }
                self.my_choices.insert(decision.clone(), option.to_string());
                Ok(())
            }
        }
    }

    fn comment(&mut self, t: &Target, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if t.new {
            return match key {
                "id" => non_empty(op, key),
                "author" => match expect_str(op, key)? {
                    s if s == self.me => Ok(()),
                    _ => deny("a comment's author must be the change's author"),
                },
                "at" => expect_int(op, key).map(|_| ()),
                "step" => expect_opt_str(op, key).map(|_| ()),
                "text" => non_empty(op, key),
                _ => deny(format!("a comment has no field '{key}'")),
            };
        }
        match key {
            "text" => {
                let author = self.before().str(&t.obj, "author");
                if author.as_deref() != Some(self.me) {
                    return deny("only a comment's author can edit it");
                }
                non_empty(op, key)
            }
            _ => deny(format!("a comment's '{key}' cannot be changed")),
        }
    }

    fn finish(self) -> Result<(), Forbidden> {
        if self.genesis {
            if self.members_created != [self.me.to_string()] {
                return deny("a new flow's only member is its creator");
            }
            for c in [
                field::MEMBERS,
                field::INVITES,
                field::STEPS,
                field::DECISIONS,
                field::COMMENTS,
            ] {
                if !self
                    .targets
                    .values()
                    .any(|t| place_name(&t.place) == Some(c))
                {
                    return deny(format!("a new flow must create its {c}"));
                }
            }
        }
        if !self.genesis {
            self.check_new_members()?;
        }
        for (decision, outcome) in &self.choice_outcomes {
            if self.my_choices.get(decision) != Some(outcome) {
                return deny("a choice's outcome must be the option its chooser picks");
            }
        }
        Ok(())
    }
}

impl Judge<'_> {
    /// Each member this change adds is added by a manager, or by any member redeeming a valid
    /// invite for exactly that member (the joiner's proof, in the change, lets every node check
    /// it). A change redeems at most one invite, for one member, using up exactly one use.
    fn check_new_members(&self) -> Result<(), Forbidden> {
        let mut redeemed: Option<&str> = None;
        for node in &self.members_created {
            let m = self.new_members.get(node);
            let role = m
                .and_then(|m| m.role)
                .ok_or_else(|| Forbidden("a new member must have a role".into()))?;
            match m.map(|m| (&m.invite, &m.proof, &m.legacy_secret)) {
                Some((Some(invite), proof, secret)) if proof.is_some() || secret.is_some() => {
                    if redeemed.is_some() {
                        return deny("one change redeems one invite for one member");
                    }
                    let proof = match (proof, secret) {
                        (Some(p), None) => Proof::Signature(p),
                        (None, Some(s)) => Proof::LegacySecret(s),
                        _ => return deny("an invite is redeemed with one proof"),
                    };
                    self.check_redemption(node, invite, proof, role)?;
                    redeemed = Some(invite);
                }
                Some((None, None, None)) | None => {
                    self.needs(self.role.manages(), "cannot add members")?;
                    self.needs(
                        role != Role::Customer || self.may_bring_a_customer(),
                        "cannot make anyone a customer: only a customer can",
                    )?;
                }
                _ => return deny("an invite redemption needs the invite and the joiner's proof"),
            }
        }
        for (invite, left) in &self.uses_left_puts {
            // The redeemed invite's count was checked with the redemption.
            if redeemed != Some(invite.as_str()) {
                self.needs(self.role.manages(), "cannot manage invites")?;
                if *left < 0 {
                    return deny("an invite's uses cannot be negative");
                }
            }
        }
        Ok(())
    }

    /// A customer may bring in another customer; an owner may bring in the first one, while
    /// the flow (in the change's causal past) has no customer — otherwise a flow started by its
    /// owner could never get its customer.
    fn may_bring_a_customer(&self) -> bool {
        match self.role {
            Role::Customer => true,
            Role::Owner => {
                let before = self.before();
                let members = before.container(field::MEMBERS);
                !members.is_some_and(|m| {
                    before
                        .map_maps(&m)
                        .iter()
                        .any(|(node, _)| before.role_of(node) == Some(Role::Customer))
                })
            }
            _ => false,
        }
    }

    /// Checks the redemption of `invite` for `node`, all of it as of the change's dependencies:
    /// the invite is live, the proof admits this node, the role is the invite's, and the change
    /// moves `uses_left` from n to n − 1 with one put and does nothing else to the invite.
    fn check_redemption(
        &self,
        node: &str,
        invite: &str,
        proof: Proof<'_>,
        role: Role,
    ) -> Result<(), Forbidden> {
        let before = self.before();
        let inv = before
            .container(field::INVITES)
            .and_then(|m| before.obj(&m, invite, ObjType::Map))
            .map(|o| before.read_invite(invite, &o))
            .ok_or_else(|| Forbidden(format!("there is no invite {invite}")))?;
        if before.member(node).is_some() {
            // Not even a removed member: its old proof is in the document for anyone to copy.
            return deny("an invite admits only someone who has never been a member");
        }
        if inv.revoked {
            return deny("the invite was revoked");
        }
        if inv.uses_left <= 0 {
            return deny("the invite has been used up");
        }
        if inv.expires_at > 0 && self.time >= inv.expires_at {
            return deny("the invite has expired");
        }
        match proof {
            Proof::Signature(sig) if !inv.public_key.is_empty() => {
                let joiner: NodeId = node.parse().map_err(Forbidden)?;
                let invite_bytes = crate::identity::unhex(invite)
                    .filter(|b| crate::identity::hex(b) == invite)
                    .ok_or_else(|| {
                        Forbidden("the invite's id is not one a ticket can name".into())
                    })?;
                let flow = self.flow_id_in_past()?;
                if !crate::identity::verify_invite_proof(
                    &inv.public_key,
                    &flow,
                    &invite_bytes,
                    &joiner,
                    sig,
                ) {
                    return deny("the joiner's proof does not match the invite");
                }
            }
            Proof::Signature(_) => {
                return deny("this invite was made by an older version and takes its secret");
            }
            Proof::LegacySecret(_) if !inv.public_key.is_empty() => {
                return deny("this invite is redeemed with the joiner's proof, never its secret");
            }
            Proof::LegacySecret(secret) => {
                let secret = crate::identity::unhex(secret).unwrap_or_default();
                if <[u8; 32]>::from(sha2::Sha256::digest(&secret)).as_slice()
                    != inv.secret_hash.as_slice()
                {
                    return deny("the invite's secret does not match");
                }
            }
        }
        if role != inv.role {
            return deny("a redeemed invite gives exactly the invite's role");
        }
        let puts: Vec<i64> = self
            .uses_left_puts
            .iter()
            .filter(|(i, _)| i == invite)
            .map(|(_, left)| *left)
            .collect();
        if puts != [inv.uses_left - 1] {
            return deny("redeeming an invite must use it up by one, with one write");
        }
        if self.invite_edits.iter().filter(|i| *i == invite).count() != 1 {
            return deny("a change that redeems an invite changes nothing else about it");
        }
        Ok(())
    }

    /// The flow's id, from its genesis: the change that made the members map (only a genesis
    /// can make it), found from the map's id in the change's past.
    fn flow_id_in_past(&self) -> Result<Vec<u8>, Forbidden> {
        let before = self.before();
        before
            .container(field::MEMBERS)
            .and_then(|m| self.doc.hash_for_opid(&m))
            .and_then(|genesis| crate::identity::unhex(&crate::flow::flow_id_of_genesis(&genesis)))
            .ok_or_else(|| Forbidden("the flow's beginning is not in the change's past".into()))
    }
}

/// How a redemption shows it holds the ticket.
enum Proof<'a> {
    /// The joiner's signature with the invite's key.
    Signature(&'a [u8]),
    /// The ticket's secret, hex (invites made by earlier versions).
    LegacySecret(&'a str),
}

fn place_name(p: &Place) -> Option<&'static str> {
    match p {
        Place::Members => Some(field::MEMBERS),
        Place::Invites => Some(field::INVITES),
        Place::Steps => Some(field::STEPS),
        Place::Decisions => Some(field::DECISIONS),
        Place::Comments => Some(field::COMMENTS),
        _ => None,
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
