//! Where an operation lands in the flow's schema: the object it targets, found from its path in
//! the change's causal past or from the operation of this change that made it.

use super::*;

/// Where an object sits in the flow schema.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Place {
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
pub(super) struct Target {
    pub(super) place: Place,
    pub(super) obj: ObjId,
    pub(super) new: bool,
}

pub(super) fn place_name(p: &Place) -> Option<&'static str> {
    match p {
        Place::Members => Some(field::MEMBERS),
        Place::Invites => Some(field::INVITES),
        Place::Steps => Some(field::STEPS),
        Place::Decisions => Some(field::DECISIONS),
        Place::Comments => Some(field::COMMENTS),
        _ => None,
    }
}

impl<'a> Judge<'a> {
    pub(super) fn before(&self) -> Reader<'a> {
        Reader::at(self.doc, self.deps)
    }

    pub(super) fn is_new(&self, id: &legacy::OpId) -> bool {
        id.1 == self.actor && id.0 >= self.start_op
    }

    pub(super) fn exid(&self, id: &legacy::OpId) -> Result<ObjId, Forbidden> {
        self.doc
            .import(&format!("{}@{}", id.0, id.1.to_hex_string()))
            .map(|(o, _)| o)
            .map_err(|_| Forbidden("the change refers to an unknown object".into()))
    }

    /// The object an operation targets.
    pub(super) fn target(&mut self, obj: &ObjectId) -> Result<Target, Forbidden> {
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
    pub(super) fn place_in_past(&self, obj: &ObjId) -> Result<Place, Forbidden> {
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
                Some(schema::decision::OPTIONS) => Place::Options,
                Some(schema::decision::CHOICES) => Place::Choices {
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
    pub(super) fn visible_in_past(
        &self,
        path: &[(ObjId, Prop)],
        obj: &ObjId,
        place: &Place,
    ) -> bool {
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

    pub(super) fn needs(&self, ok: bool, msg: &str) -> Result<(), Forbidden> {
        if ok {
            Ok(())
        } else {
            deny(format!("{} {}", article(self.role), msg))
        }
    }
}
