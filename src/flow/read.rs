//! Typed reads over a flow document, at its current state or at any past heads.

use automerge::{Automerge, ChangeHash, ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value, ROOT};

use super::*;

/// Reads a document as it is now (`heads == None`) or as it was at `heads`.
///
/// Readers never fail: a missing or mistyped field reads as its default. The authorization
/// policy keeps such values out of accepted documents; the reader only has to not crash on them.
pub struct Reader<'a, R: ReadDoc = Automerge> {
    doc: &'a R,
    heads: Option<&'a [ChangeHash]>,
}

impl<'a, R: ReadDoc> Reader<'a, R> {
    pub fn now(doc: &'a R) -> Self {
        Reader { doc, heads: None }
    }

    pub fn at(doc: &'a R, heads: &'a [ChangeHash]) -> Self {
        Reader {
            doc,
            heads: Some(heads),
        }
    }

    pub fn get(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<(Value<'a>, ObjId)> {
        let got = match self.heads {
            None => self.doc.get(obj, prop),
            Some(h) => self.doc.get_at(obj, prop, h),
        };
        got.ok().flatten()
    }

    pub fn obj(&self, obj: &ObjId, prop: impl Into<Prop>, typ: ObjType) -> Option<ObjId> {
        match self.get(obj, prop)? {
            (Value::Object(t), id) if t == typ => Some(id),
            _ => None,
        }
    }

    pub fn scalar(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<ScalarValue> {
        match self.get(obj, prop)? {
            (Value::Scalar(s), _) => Some(s.into_owned()),
            _ => None,
        }
    }

    pub fn str(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<String> {
        match self.scalar(obj, prop)? {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        }
    }

    pub fn string(&self, obj: &ObjId, prop: impl Into<Prop>) -> String {
        self.str(obj, prop).unwrap_or_default()
    }

    pub fn int(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<i64> {
        match self.scalar(obj, prop)? {
            ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Some(i),
            ScalarValue::Uint(u) => i64::try_from(u).ok(),
            _ => None,
        }
    }

    pub fn bool(&self, obj: &ObjId, prop: impl Into<Prop>) -> bool {
        matches!(self.scalar(obj, prop), Some(ScalarValue::Boolean(true)))
    }

    pub fn parse<T: std::str::FromStr>(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<T> {
        self.str(obj, prop)?.parse().ok()
    }

    pub fn keys(&self, obj: &ObjId) -> Vec<String> {
        match self.heads {
            None => self.doc.keys(obj).collect(),
            Some(h) => self.doc.keys_at(obj, h).collect(),
        }
    }

    pub fn len(&self, obj: &ObjId) -> usize {
        match self.heads {
            None => self.doc.length(obj),
            Some(h) => self.doc.length_at(obj, h),
        }
    }

    /// The container at a root field.
    pub fn container(&self, name: &str) -> Option<ObjId> {
        let typ = match name {
            field::STEPS | field::COMMENTS => ObjType::List,
            _ => ObjType::Map,
        };
        self.obj(&ROOT, name, typ)
    }

    /// The map objects of a list container, in order.
    pub fn list_maps(&self, list: &ObjId) -> Vec<ObjId> {
        (0..self.len(list))
            .filter_map(|i| self.obj(list, i, ObjType::Map))
            .collect()
    }

    /// `(key, map object)` for each map entry of a map container.
    pub fn map_maps(&self, map: &ObjId) -> Vec<(String, ObjId)> {
        self.keys(map)
            .into_iter()
            .filter_map(|k| self.obj(map, k.as_str(), ObjType::Map).map(|o| (k, o)))
            .collect()
    }

    pub fn member(&self, node_id: &str) -> Option<Member> {
        let members = self.container(field::MEMBERS)?;
        let m = self.obj(&members, node_id, ObjType::Map)?;
        Some(self.read_member(node_id, &m))
    }

    /// Every member, removed ones included, without reading the rest of the flow.
    pub fn members(&self) -> Vec<Member> {
        self.container(field::MEMBERS)
            .map(|m| {
                self.map_maps(&m)
                    .iter()
                    .map(|(k, o)| self.read_member(k, o))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The role of `node_id` if it is a current (not removed) member.
    pub fn role_of(&self, node_id: &str) -> Option<Role> {
        // Two fields, not the whole member: the policy asks this for every change it judges,
        // and each read in the past makes Automerge work out that past again.
        let members = self.container(field::MEMBERS)?;
        let m = self.obj(&members, node_id, ObjType::Map)?;
        if self.bool(&m, schema::member::REMOVED) {
            return None;
        }
        Some(self.parse(&m, schema::member::ROLE).unwrap_or(Role::Observer))
    }

    fn read_member(&self, node_id: &str, m: &ObjId) -> Member {
        Member {
            node_id: node_id.to_string(),
            name: self.string(m, schema::member::NAME),
            role: self.parse(m, schema::member::ROLE).unwrap_or(Role::Observer),
            added_by: self.string(m, schema::member::ADDED_BY),
            added_at: self.int(m, schema::member::ADDED_AT).unwrap_or(0),
            removed: self.bool(m, schema::member::REMOVED),
        }
    }

    pub fn read_step(&self, s: &ObjId) -> Step {
        Step {
            id: self.string(s, schema::step::ID),
            title: self.string(s, schema::step::TITLE),
            detail: self.string(s, schema::step::DETAIL),
            status: self.parse(s, schema::step::STATUS).unwrap_or(StepStatus::Todo),
            assignee: self.str(s, schema::step::ASSIGNEE),
            customer_involved: self.bool(s, schema::step::CUSTOMER_INVOLVED),
            due: self.str(s, schema::step::DUE),
            created_by: self.string(s, schema::step::CREATED_BY),
        }
    }

    pub fn read_decision(&self, id: &str, d: &ObjId) -> Decision {
        let options = self
            .obj(d, schema::decision::OPTIONS, ObjType::List)
            .map(|l| (0..self.len(&l)).filter_map(|i| self.str(&l, i)).collect())
            .unwrap_or_default();
        let choices = self
            .obj(d, schema::decision::CHOICES, ObjType::Map)
            .map(|c| {
                self.keys(&c)
                    .into_iter()
                    .filter_map(|k| self.str(&c, k.as_str()).map(|v| (k, v)))
                    .collect()
            })
            .unwrap_or_default();
        Decision {
            id: id.to_string(),
            question: self.string(d, schema::decision::QUESTION),
            options,
            step: self.str(d, schema::decision::STEP),
            who: self.parse(d, schema::decision::WHO).unwrap_or(Who::Customer),
            mode: self.parse(d, schema::decision::MODE).unwrap_or(Mode::Choice),
            choices,
            outcome: self.str(d, schema::decision::OUTCOME),
            closed: self.bool(d, schema::decision::CLOSED),
            created_by: self.string(d, schema::decision::CREATED_BY),
        }
    }

    pub fn read_invite(&self, id: &str, i: &ObjId) -> Invite {
        Invite {
            id: id.to_string(),
            role: self.parse(i, schema::invite::ROLE).unwrap_or(Role::Observer),
            public_key: match self.scalar(i, schema::invite::PUBLIC_KEY) {
                Some(ScalarValue::Bytes(b)) => b,
                _ => Vec::new(),
            },
            secret_hash: match self.scalar(i, schema::invite::SECRET_HASH) {
                Some(ScalarValue::Bytes(b)) => b,
                _ => Vec::new(),
            },
            expires_at: self.int(i, schema::invite::EXPIRES_AT).unwrap_or(0),
            uses_left: self.int(i, schema::invite::USES_LEFT).unwrap_or(0),
            created_by: self.string(i, schema::invite::CREATED_BY),
            revoked: self.bool(i, schema::invite::REVOKED),
        }
    }

    fn read_comment(&self, c: &ObjId) -> Comment {
        Comment {
            id: self.string(c, schema::comment::ID),
            author: self.string(c, schema::comment::AUTHOR),
            at: self.int(c, schema::comment::AT).unwrap_or(0),
            step: self.str(c, schema::comment::STEP),
            text: self.string(c, schema::comment::TEXT),
        }
    }

    /// The whole flow, typed.
    pub fn flow(&self, id: &str) -> Flow {
        let mut flow = self.flow_without_comments(id);
        flow.comments = self
            .container(field::COMMENTS)
            .map(|l| {
                self.list_maps(&l)
                    .iter()
                    .map(|c| self.read_comment(c))
                    .collect()
            })
            .unwrap_or_default();
        flow
    }

    /// The flow with `comments` left empty: what [`crate::flow::Edit::apply`] checks an edit
    /// against (no edit depends on existing comments), without reading what grows without bound.
    pub fn flow_without_comments(&self, id: &str) -> Flow {
        let members = self.members();
        let invites = self
            .container(field::INVITES)
            .map(|m| {
                self.map_maps(&m)
                    .iter()
                    .map(|(k, o)| self.read_invite(k, o))
                    .collect()
            })
            .unwrap_or_default();
        let steps = self
            .container(field::STEPS)
            .map(|l| {
                self.list_maps(&l)
                    .iter()
                    .map(|s| self.read_step(s))
                    .collect()
            })
            .unwrap_or_default();
        let decisions = self
            .container(field::DECISIONS)
            .map(|m| {
                self.map_maps(&m)
                    .iter()
                    .map(|(k, o)| self.read_decision(k, o))
                    .collect()
            })
            .unwrap_or_default();
        Flow {
            id: id.to_string(),
            schema: self.int(&ROOT, field::SCHEMA).unwrap_or(0),
            title: self.string(&ROOT, field::TITLE),
            need: self.string(&ROOT, field::NEED),
            status: self.parse(&ROOT, field::STATUS).unwrap_or(FlowStatus::Open),
            created_at: self.int(&ROOT, field::CREATED_AT).unwrap_or(0),
            members,
            invites,
            steps,
            decisions,
            comments: Vec::new(),
        }
    }
}

/// What two names must not share to be told apart by a reader: the name folded to lower case,
/// with invisible characters and spacing dropped, common look-alike letters (Cyrillic and Greek
/// forms of Latin ones, full-width forms) mapped to the Latin letter, and anything from the first
/// bracket on cut off (so "Carol (customer, …x7Kq)" is "Carol" too).
pub fn name_key(name: &str) -> String {
    let cut = name.find(['(', '[', '{', '<']).unwrap_or(name.len());
    let mut key = String::new();
    for c in name[..cut].chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() || c.is_control() || invisible(c) {
            continue;
        }
        let c = match c {
            // Full-width ASCII.
            '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
            _ => c,
        };
        let latin = match c {
            'А' | 'а' | 'Α' | 'α' => 'a',
            'В' | 'в' | 'Β' | 'β' => 'b',
            'С' | 'с' | 'Ϲ' | 'ϲ' => 'c',
            'Ԁ' | 'ԁ' => 'd',
            'Е' | 'е' | 'Ε' | 'ε' | 'Ё' | 'ё' => 'e',
            'Һ' | 'һ' | 'Η' => 'h',
            'І' | 'і' | 'Ι' | 'ι' | 'Ӏ' | 'ı' | 'ǀ' => 'i',
            'Ј' | 'ј' => 'j',
            'К' | 'к' | 'Κ' | 'κ' => 'k',
            'М' | 'м' | 'Μ' => 'm',
            'Н' | 'н' | 'Ν' => 'n',
            'О' | 'о' | 'Ο' | 'ο' | 'Օ' | 'օ' => 'o',
            'Р' | 'р' | 'Ρ' | 'ρ' => 'p',
            'Ԛ' | 'ԛ' => 'q',
            'Ѕ' | 'ѕ' => 's',
            'Т' | 'т' | 'Τ' | 'τ' => 't',
            'υ' | 'Υ' => 'y',
            'Ѵ' | 'ѵ' | 'ν' => 'v',
            'Ԝ' | 'ԝ' => 'w',
            'Х' | 'х' | 'Χ' | 'χ' => 'x',
            'У' | 'у' | 'Ү' | 'ү' => 'y',
            'Ζ' => 'z',
            '0' => 'o',
            '1' | 'l' | '|' => 'i',
            other => other,
        };
        key.push(latin);
    }
    key
}

/// Characters that show nothing (or nothing of their own): zero-width and joiner characters,
/// bidi controls, variation selectors, tags, fillers.
pub fn invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff9}'..='\u{fffb}' | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e0fff}')
}

impl Flow {
    /// Members (removed ones included) whose names a reader could take for `name`.
    pub fn members_named(&self, name: &str) -> Vec<&Member> {
        let key = name_key(name);
        if key.is_empty() {
            return Vec::new();
        }
        self.members
            .iter()
            .filter(|m| name_key(&m.name) == key)
            .collect()
    }

    /// The node ids of members (removed ones included) whose name a reader could take for
    /// another member's: one pass over the members, for printers that ask about many.
    pub fn clashing_names(&self) -> std::collections::HashSet<String> {
        let mut by_key: std::collections::HashMap<String, Vec<&str>> = Default::default();
        for m in &self.members {
            let key = name_key(&m.name);
            if !key.is_empty() {
                by_key.entry(key).or_default().push(&m.node_id);
            }
        }
        by_key
            .into_values()
            .filter(|ids| ids.len() > 1)
            .flatten()
            .map(str::to_string)
            .collect()
    }

    /// Whether another member of the flow (removed ones included) has a name a reader could
    /// take for this member's.
    pub fn name_clashes(&self, node_id: &str) -> bool {
        match self.member(node_id) {
            Some(m) => self
                .members_named(&m.name)
                .iter()
                .any(|o| o.node_id != node_id),
            None => false,
        }
    }
}
