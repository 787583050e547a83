//! What a change did, read from its operations.
//!
//! A change's message is free text its author chose: it is never evidence of what the change
//! did. [`History::describe`] reads the change's operations instead, finds the place in the flow
//! each one touches (from the object's path in the document, or from the operation that made
//! the object in the same change) and says what it did there: "added step", "marked step done",
//! "set status fulfilled". Every object's place is worked out once per [`History`], so describing
//! a whole history costs time in proportion to its operations.

use std::collections::HashMap;

use automerge::legacy::{self, Key, ObjectId, OpType};
use automerge::{ActorId, Automerge, Change, ObjId, Prop, ReadDoc, ScalarValue};

use super::{field, schema, Reader};

/// One thing a change did. Strings are the document's raw values (escape them to print).
#[derive(Clone, Debug, PartialEq)]
pub enum Did {
    /// The genesis.
    Started {
        title: String,
    },
    SetTitle {
        title: String,
    },
    SetNeed,
    SetStatus {
        status: String,
    },
    /// A member record was made (with the name and role it was made with).
    AddedMember {
        node: String,
        name: String,
        role: String,
        by_invite: bool,
    },
    RemovedMember {
        node: String,
    },
    RestoredMember {
        node: String,
    },
    ChangedRole {
        node: String,
        role: String,
    },
    Renamed {
        node: String,
        name: String,
    },
    Invited {
        role: String,
    },
    RevokedInvite {
        id: String,
    },
    AddedStep {
        title: String,
    },
    DeletedStep,
    MarkedStep {
        title: String,
        status: String,
    },
    /// `to` is a node id, or `None` for "unassigned".
    Assigned {
        title: String,
        to: Option<String>,
    },
    RetitledStep {
        title: String,
    },
    EditedStep {
        title: String,
        field: String,
    },
    /// `step` is the step's id.
    Commented {
        step: Option<String>,
        text: String,
    },
    EditedComment {
        text: String,
    },
    OpenedDecision {
        question: String,
    },
    Chose {
        question: String,
        option: String,
    },
    Voted {
        question: String,
        option: String,
    },
    ClosedDecision {
        question: String,
        outcome: Option<String>,
    },
    /// Anything else (a change the policy lets through but no edit of this version writes).
    Other {
        what: String,
    },
}

/// Where in the flow an object sits.
#[derive(Clone, Debug, PartialEq)]
enum Place {
    Root,
    Members,
    Member(String),
    Invites,
    Invite(String),
    Steps,
    Step(ObjId),
    Decisions,
    Decision(ObjId),
    Options,
    Choices(ObjId),
    Comments,
    Comment(ObjId),
    Unknown,
}

/// Describes the changes of one document; remembers the places of objects it has seen.
pub struct History<'a> {
    doc: &'a Automerge,
    places: HashMap<(u64, ActorId), Place>,
}

fn str_of(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

fn put_str(op: &legacy::Op) -> Option<String> {
    match &op.action {
        OpType::Put(v) => str_of(v),
        _ => None,
    }
}

fn put_bool(op: &legacy::Op) -> Option<bool> {
    match &op.action {
        OpType::Put(ScalarValue::Boolean(b)) => Some(*b),
        _ => None,
    }
}

fn map_key(op: &legacy::Op) -> Option<&str> {
    match &op.key {
        Key::Map(k) => Some(k.as_str()),
        Key::Seq(_) => None,
    }
}

impl<'a> History<'a> {
    pub fn new(doc: &'a Automerge) -> Self {
        History {
            doc,
            places: HashMap::new(),
        }
    }

    fn exid(&self, id: &legacy::OpId) -> Option<ObjId> {
        self.doc
            .import(&format!("{}@{}", id.0, id.1.to_hex_string()))
            .ok()
            .map(|(o, _)| o)
    }

    /// The place of an object that existed before the change (from its path in the document:
    /// an object's parent and key never change).
    fn place_of(&mut self, obj: &ObjectId) -> Place {
        let id = match obj {
            ObjectId::Root => return Place::Root,
            ObjectId::Id(id) => id,
        };
        let key = (id.0, id.1.clone());
        if let Some(p) = self.places.get(&key) {
            return p.clone();
        }
        let place = self.find_place(id).unwrap_or(Place::Unknown);
        self.places.insert(key, place.clone());
        place
    }

    fn find_place(&self, id: &legacy::OpId) -> Option<Place> {
        let obj = self.exid(id)?;
        let path = self.doc.parents(&obj).ok()?.path();
        let key = |i: usize| match path.get(i) {
            Some((_, Prop::Map(k))) => Some(k.to_string()),
            _ => None,
        };
        Some(match (path.len(), key(0).as_deref()) {
            (1, Some(field::MEMBERS)) => Place::Members,
            (2, Some(field::MEMBERS)) => Place::Member(key(1)?),
            (1, Some(field::INVITES)) => Place::Invites,
            (2, Some(field::INVITES)) => Place::Invite(key(1)?),
            (1, Some(field::STEPS)) => Place::Steps,
            (2, Some(field::STEPS)) => Place::Step(obj),
            (1, Some(field::DECISIONS)) => Place::Decisions,
            (2, Some(field::DECISIONS)) => Place::Decision(obj),
            (3, Some(field::DECISIONS)) => match key(2).as_deref() {
                Some(schema::decision::OPTIONS) => Place::Options,
                Some(schema::decision::CHOICES) => Place::Choices(path[2].0.clone()),
                _ => Place::Unknown,
            },
            (1, Some(field::COMMENTS)) => Place::Comments,
            (2, Some(field::COMMENTS)) => Place::Comment(obj),
            _ => Place::Unknown,
        })
    }

    /// The place of an object the change itself makes, from its parent's place.
    fn new_place(&self, parent: &Place, op: &legacy::Op, obj: Option<ObjId>) -> Place {
        let key = map_key(op);
        match (parent, key, obj) {
            (Place::Root, Some(field::MEMBERS), _) => Place::Members,
            (Place::Root, Some(field::INVITES), _) => Place::Invites,
            (Place::Root, Some(field::STEPS), _) => Place::Steps,
            (Place::Root, Some(field::DECISIONS), _) => Place::Decisions,
            (Place::Root, Some(field::COMMENTS), _) => Place::Comments,
            (Place::Members, Some(k), _) => Place::Member(k.to_string()),
            (Place::Invites, Some(k), _) => Place::Invite(k.to_string()),
            (Place::Steps, None, Some(o)) => Place::Step(o),
            (Place::Decisions, Some(_), Some(o)) => Place::Decision(o),
            (Place::Decision(_), Some(schema::decision::OPTIONS), _) => Place::Options,
            (Place::Decision(d), Some(schema::decision::CHOICES), _) => Place::Choices(d.clone()),
            (Place::Comments, None, Some(o)) => Place::Comment(o),
            _ => Place::Unknown,
        }
    }

    fn step_title(&self, step: &ObjId) -> String {
        Reader::now(self.doc).string(step, schema::step::TITLE)
    }

    fn question(&self, decision: &ObjId) -> String {
        Reader::now(self.doc).string(decision, schema::decision::QUESTION)
    }

    /// What `change` did, in the order its operations did it.
    pub fn describe(&mut self, change: &Change) -> Vec<Did> {
        let Ok(expanded) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
        else {
            return vec![Did::Other {
                what: "made a change that cannot be decoded".into(),
            }];
        };
        let genesis = change.deps().is_empty();
        let start = expanded.start_op.get();
        let actor = expanded.actor_id.clone();
        let mut did: Vec<Did> = Vec::new();
        // Objects made by this change: their index in `did` (if they are a thing of their own).
        let mut made: HashMap<u64, usize> = HashMap::new();
        // Per decision touched: the choice, outcome and closing this change wrote.
        let mut choice: Vec<(ObjId, String)> = Vec::new();
        let mut outcome: Vec<(ObjId, Option<String>)> = Vec::new();
        let mut closed: Vec<ObjId> = Vec::new();
        let mut redeemed = false;
        let other = |what: &str| Did::Other { what: what.into() };
        for (i, op) in expanded.operations.iter().enumerate() {
            let counter = start + i as u64;
            let new_obj = match &op.obj {
                ObjectId::Id(id) if id.1 == actor && id.0 >= start => Some(id.0),
                _ => None,
            };
            let place = self.place_of(&op.obj);
            if let OpType::Make(_) = op.action {
                let id = legacy::OpId(counter, actor.clone());
                let obj = self.exid(&id);
                let p = self.new_place(&place, op, obj);
                let entry = match &p {
                    Place::Member(node) if !genesis => Some(Did::AddedMember {
                        node: node.clone(),
                        name: String::new(),
                        role: String::new(),
                        by_invite: false,
                    }),
                    Place::Invite(_) => Some(Did::Invited {
                        role: String::new(),
                    }),
                    Place::Step(_) => Some(Did::AddedStep {
                        title: String::new(),
                    }),
                    Place::Decision(_) => Some(Did::OpenedDecision {
                        question: String::new(),
                    }),
                    Place::Comment(_) => Some(Did::Commented {
                        step: None,
                        text: String::new(),
                    }),
                    Place::Unknown => Some(other("made an object outside the flow's schema")),
                    _ => None,
                };
                if let Some(e) = entry {
                    made.insert(counter, did.len());
                    did.push(e);
                }
                self.places.insert((counter, actor.clone()), p);
                continue;
            }
            // A field of an object this change made: fill in what it was made with.
            if let Some(n) = new_obj {
                if let Some(&at) = made.get(&n) {
                    let value = put_str(op);
                    match (&mut did[at], map_key(op), value) {
                        (Did::AddedMember { name, .. }, Some(schema::member::NAME), Some(v)) => *name = v,
                        (Did::AddedMember { role, .. }, Some(schema::member::ROLE), Some(v)) => *role = v,
                        (Did::AddedMember { by_invite, .. }, Some(schema::member::INVITE), _) => {
                            *by_invite = true
                        }
                        (Did::Invited { role }, Some(schema::invite::ROLE), Some(v)) => *role = v,
                        (Did::AddedStep { title }, Some(schema::step::TITLE), Some(v)) => *title = v,
                        (Did::OpenedDecision { question }, Some(schema::decision::QUESTION), Some(v)) => {
                            *question = v
                        }
                        (Did::Commented { text, .. }, Some(schema::comment::TEXT), Some(v)) => *text = v,
                        (Did::Commented { step, .. }, Some(schema::comment::STEP), v) => *step = v,
                        _ => {}
                    }
                }
                // Other fields of new objects (options, the choices map, ids, times) say
                // nothing more than the object's creation.
                if !matches!(place, Place::Unknown) {
                    continue;
                }
            }
            let key = map_key(op).unwrap_or("");
            let deleted = matches!(op.action, OpType::Delete);
            match place {
                Place::Root if genesis => {
                    if key == field::TITLE {
                        did.push(Did::Started {
                            title: put_str(op).unwrap_or_default(),
                        });
                    }
                }
                Place::Root => did.push(match (key, put_str(op)) {
                    (field::TITLE, Some(title)) => Did::SetTitle { title },
                    (field::NEED, _) => Did::SetNeed,
                    (field::STATUS, Some(status)) => Did::SetStatus { status },
                    _ => Did::Other {
                        what: format!("changed the flow's '{key}'"),
                    },
                }),
                Place::Member(node) => did.push(match (key, put_bool(op), put_str(op)) {
                    (schema::member::REMOVED, Some(true), _) => Did::RemovedMember { node },
                    (schema::member::REMOVED, Some(false), _) => Did::RestoredMember { node },
                    (schema::member::ROLE, _, Some(role)) => Did::ChangedRole { node, role },
                    (schema::member::NAME, _, Some(name)) => Did::Renamed { node, name },
                    _ => Did::Other {
                        what: format!("changed '{key}' of member {}", super::short_id(&node)),
                    },
                }),
                Place::Invite(id) => match (key, put_bool(op)) {
                    (schema::invite::REVOKED, Some(true)) => did.push(Did::RevokedInvite { id }),
                    (schema::invite::USES_LEFT, _) => redeemed = true,
                    _ => did.push(Did::Other {
                        what: format!("changed '{key}' of invite {id}"),
                    }),
                },
                Place::Steps if deleted => did.push(Did::DeletedStep),
                Place::Step(s) => {
                    let title = self.step_title(&s);
                    did.push(match key {
                        schema::step::STATUS => Did::MarkedStep {
                            title,
                            status: put_str(op).unwrap_or_default(),
                        },
                        schema::step::ASSIGNEE => Did::Assigned {
                            title,
                            to: put_str(op),
                        },
                        schema::step::TITLE => Did::RetitledStep {
                            title: put_str(op).unwrap_or_default(),
                        },
                        _ => Did::EditedStep {
                            title,
                            field: key.to_string(),
                        },
                    })
                }
                Place::Decision(d) => match (key, put_bool(op)) {
                    (schema::decision::OUTCOME, _) => outcome.push((d, put_str(op))),
                    (schema::decision::CLOSED, Some(true)) => closed.push(d),
                    _ => did.push(Did::Other {
                        what: format!("changed '{key}' of decision '{}'", self.question(&d)),
                    }),
                },
                Place::Choices(d) => match put_str(op) {
                    Some(o) => choice.push((d, o)),
                    None => did.push(Did::Other {
                        what: format!("withdrew a choice in '{}'", self.question(&d)),
                    }),
                },
                Place::Comment(c) => did.push(match key {
                    schema::comment::TEXT => Did::EditedComment {
                        text: put_str(op).unwrap_or_default(),
                    },
                    _ => Did::Other {
                        what: format!(
                            "changed '{key}' of a comment: {}",
                            Reader::now(self.doc).string(&c, schema::comment::TEXT)
                        ),
                    },
                }),
                _ => did.push(other(
                    "changed something no longer in the flow, or outside its schema",
                )),
            }
        }
        // A redeemed invite counts a use down: part of the admission, unless nobody was admitted.
        if redeemed
            && !did.iter().any(|d| {
                matches!(
                    d,
                    Did::AddedMember {
                        by_invite: true,
                        ..
                    }
                )
            })
        {
            did.push(other("changed the uses left of an invite"));
        }
        for (d, option) in &choice {
            let question = self.question(d);
            let decided = outcome
                .iter()
                .any(|(o, v)| o == d && v.as_deref() == Some(option.as_str()));
            did.push(if decided {
                Did::Chose {
                    question,
                    option: option.clone(),
                }
            } else {
                Did::Voted {
                    question,
                    option: option.clone(),
                }
            });
        }
        let chosen = |d: &ObjId| choice.iter().any(|(c, _)| c == d);
        for (d, o) in &outcome {
            if chosen(d) && o.is_some() {
                continue;
            }
            did.push(Did::ClosedDecision {
                question: self.question(d),
                outcome: o.clone(),
            });
        }
        for d in &closed {
            if !outcome.iter().any(|(o, _)| o == d) {
                did.push(Did::ClosedDecision {
                    question: self.question(d),
                    outcome: None,
                });
            }
        }
        did.dedup();
        if did.is_empty() {
            did.push(other("made a change with no visible effect"));
        }
        did
    }
}
