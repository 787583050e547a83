//! The flow document: its schema and typed reads over an Automerge document.
//!
//! One Automerge document per flow. The root map holds `schema`, `title`, `need`, `status`,
//! `created_at`, and the containers `members` (map node id → member), `invites` (map invite id →
//! invite), `steps` (list of step maps with stable ids), `decisions` (map id → decision) and
//! `comments` (list). Field names are a contract shared with every other implementation:
//! [`schema`] names every one and describes each object's shape.
//!
//! A flow's id is not a field: it is derived from the hash of the flow's genesis change
//! (see [`flow_id_of_genesis`]), so no one can forge a second genesis for an existing flow.

mod edit;
mod history;
mod id;
mod read;
pub mod schema;
mod waits;

pub use edit::{new_flow_ops, new_id, resolve_prefix, Applied, Edit, EditError};
pub use history::{Did, History};
pub use id::FlowId;
pub use read::{invisible, Reader};
/// The root's field names ([`schema::root`]), by their older name.
pub use schema::root as field;
pub use waits::Waiting;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Current document schema version.
pub const SCHEMA_VERSION: i64 = 1;

/// Limits on what a flow holds, enforced by the policy when a change is made here (one clear
/// error) and when one is received (refused).
pub mod limit {
    /// Characters in a long text: the need, a comment, a step's detail.
    pub const LONG_TEXT: usize = 10_000;
    /// Characters in any other text: titles, names, questions, options, dates, ids.
    pub const SHORT_TEXT: usize = 500;
    /// Bytes in one change as Automerge encodes it. A sync message carries up to 8 MiB, so any
    /// change fits in one, and a catch-up of many spans several messages.
    pub const CHANGE_BYTES: usize = 256 * 1024;

    /// The longest text a field (or, for list elements, `""`) may hold.
    pub fn text_for(key: &str) -> usize {
        match key {
            super::schema::root::NEED | super::schema::comment::TEXT | super::schema::step::DETAIL => {
                LONG_TEXT
            }
            _ => SHORT_TEXT,
        }
    }
}

/// The flow id: the first 16 bytes of the genesis change hash.
pub fn flow_id_of_genesis(hash: &automerge::ChangeHash) -> FlowId {
    FlowId::of_genesis(hash)
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "'{}' is not a valid {}; expected one of: {}",
                        other,
                        stringify!($name).to_lowercase(),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

string_enum!(
    /// A member's role in one flow.
    Role { Customer = "customer", Owner = "owner", Contributor = "contributor", Observer = "observer" }
);
string_enum!(
    /// The flow's overall status.
    FlowStatus { Open = "open", Fulfilled = "fulfilled", Closed = "closed" }
);
string_enum!(
    /// A step's status.
    StepStatus { Todo = "todo", Active = "active", Waiting = "waiting", Done = "done", Skipped = "skipped" }
);
string_enum!(
    /// Who may choose in a decision.
    Who { Customer = "customer", Members = "members" }
);
string_enum!(
    /// `choice`: the first eligible choice decides; `vote`: choices are tallied until closed.
    Mode { Choice = "choice", Vote = "vote" }
);
string_enum!(
    /// What a flow waits on a member for ([`Waiting`]): a decision, a step, or confirming the
    /// need fulfilled. Not a document field: the control API and the page carry it.
    WaitKind { Decision = "decision", Step = "step", Fulfil = "fulfil" }
);

impl Role {
    /// Customers and owners manage the flow (members, invites, title, need, close/reopen).
    pub fn manages(self) -> bool {
        matches!(self, Role::Customer | Role::Owner)
    }

    /// Customers, owners and contributors edit steps and open decisions.
    pub fn edits_steps(self) -> bool {
        !matches!(self, Role::Observer)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    pub name: String,
    pub role: Role,
    pub added_by: String,
    pub added_at: i64,
    pub removed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invite {
    pub id: String,
    pub role: Role,
    /// The public key derived from the ticket's secret: a joiner proves it holds the ticket
    /// by signing with the secret half ([`crate::identity::InviteKey`]).
    #[serde(skip)]
    pub public_key: Vec<u8>,
    /// Invites made by earlier versions hold the SHA-256 of the ticket's secret instead (and no
    /// public key); they were redeemed by writing the secret itself into the document. Such
    /// redemptions in history still verify; this node makes none.
    #[serde(skip)]
    pub secret_hash: Vec<u8>,
    pub expires_at: i64,
    pub uses_left: i64,
    pub created_by: String,
    pub revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    pub title: String,
    pub detail: String,
    pub status: StepStatus,
    pub assignee: Option<String>,
    pub customer_involved: bool,
    pub due: Option<String>,
    pub created_by: String,
}

/// Serialized with its `tally` (votes per option, in option order) alongside its fields.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Decision {
    pub id: String,
    pub question: String,
    pub options: Vec<String>,
    pub step: Option<String>,
    pub who: Who,
    pub mode: Mode,
    /// node id → chosen option (one entry per member: a changed vote replaces the old one).
    pub choices: BTreeMap<String, String>,
    pub outcome: Option<String>,
    pub closed: bool,
    pub created_by: String,
}

impl Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Decision", 11)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("question", &self.question)?;
        st.serialize_field("options", &self.options)?;
        st.serialize_field("step", &self.step)?;
        st.serialize_field("who", &self.who)?;
        st.serialize_field("mode", &self.mode)?;
        st.serialize_field("choices", &self.choices)?;
        let tally: Vec<serde_json::Value> = self
            .tally()
            .into_iter()
            .map(|(option, votes)| serde_json::json!({ "option": option, "votes": votes }))
            .collect();
        st.serialize_field("tally", &tally)?;
        st.serialize_field("outcome", &self.outcome)?;
        st.serialize_field("closed", &self.closed)?;
        st.serialize_field("created_by", &self.created_by)?;
        st.end()
    }
}

impl Decision {
    /// Votes per option, in the order of `options`.
    pub fn tally(&self) -> Vec<(String, usize)> {
        self.options
            .iter()
            .map(|o| (o.clone(), self.choices.values().filter(|c| *c == o).count()))
            .collect()
    }

    /// The option with the most votes; ties go to the option listed first.
    pub fn leader(&self) -> Option<String> {
        let tally = self.tally();
        let best = tally.iter().map(|(_, n)| *n).max().filter(|n| *n > 0)?;
        tally.into_iter().find(|(_, n)| *n == best).map(|(o, _)| o)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    pub id: String,
    pub author: String,
    pub at: i64,
    pub step: Option<String>,
    pub text: String,
}

/// A typed snapshot of a flow document at some heads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub id: String,
    pub schema: i64,
    pub title: String,
    pub need: String,
    pub status: FlowStatus,
    pub created_at: i64,
    pub members: Vec<Member>,
    pub invites: Vec<Invite>,
    pub steps: Vec<Step>,
    pub decisions: Vec<Decision>,
    pub comments: Vec<Comment>,
}

impl Flow {
    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == node_id)
    }

    /// The role of a current (not removed) member.
    pub fn role_of(&self, node_id: &str) -> Option<Role> {
        self.member(node_id).filter(|m| !m.removed).map(|m| m.role)
    }

    /// A member's display name, or a short form of the node id.
    pub fn name_of(&self, node_id: &str) -> String {
        match self.member(node_id) {
            Some(m) if !m.name.is_empty() => m.name.clone(),
            _ => short_id(node_id),
        }
    }
}

/// A short, readable form of a node id for narration and diagrams.
pub fn short_id(node_id: &str) -> String {
    let tail: String = node_id.chars().rev().take(6).collect();
    format!("…{}", tail.chars().rev().collect::<String>())
}
