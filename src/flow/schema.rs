//! The flow document's schema: the name of every field, and the shape of every object.
//!
//! This is a contract shared with every other implementation: a node that writes these fields
//! with these types, and no others, writes documents every coflow node accepts (subject to the
//! role policy, [`crate::auth::policy`]), and reads every document they write. The policy
//! refuses any field or object not named here, a field of the wrong type, and a field changed
//! where the schema says it is fixed.
//!
//! One Automerge document per flow. Types below are Automerge's: *str* a string scalar, *int* a
//! signed integer scalar, *bool* a boolean, *bytes* a byte string, *null* the null scalar, *map*
//! and *list* objects. "str | null" is a field that holds either. Node ids are the base58 text
//! of a node's libp2p `PeerId` (an ed25519 key, `12D3KooW…`). Other ids are chosen by the node
//! that makes the object: coflow makes 16 lower-case hex digits (8 random bytes); an invite's id
//! must be lower-case hex, since a ticket carries it as bytes.
//!
//! # The root ([`root`])
//!
//! | field | type | |
//! |---|---|---|
//! | `schema` | int | the schema version, [`super::SCHEMA_VERSION`] (1) |
//! | `title` | str | not empty |
//! | `need` | str | the customer's need in their own words; not empty |
//! | `status` | str | a [`super::FlowStatus`]: `open`, `fulfilled`, `closed`; a flow starts `open` |
//! | `created_at` | int | seconds since the Unix epoch |
//! | `members` | map | node id → [member](member) |
//! | `invites` | map | invite id → [invite](invite) |
//! | `steps` | list | of [step](step) maps, in order |
//! | `decisions` | map | decision id → [decision](decision) |
//! | `comments` | list | of [comment](comment) maps, in order |
//!
//! A flow's id is not a field: it is derived from the hash of the genesis change
//! ([`super::flow_id_of_genesis`]). The genesis (the change with no dependencies) puts the
//! root fields, makes the five containers (empty), and makes its author the only member, with
//! the role `customer` or `owner`. Afterwards `schema` and `created_at` are fixed, and the
//! containers are never replaced; members, invites and decisions are never deleted; steps may
//! be deleted (by a manager), comments never.
//!
//! # Objects
//!
//! - **member** ([`member`]): `name` str (may be empty), `role` str (a [`super::Role`]:
//!   `customer`, `owner`, `contributor`, `observer`), `added_by` str (the node id of the change's
//!   author), `added_at` int (seconds), `removed` bool (`false` when made). A member admitted by
//!   an invite also holds `invite` str (the invite's id) and `invite_proof` bytes (64: the
//!   joiner's signature with the invite's key, [`crate::identity::InviteKey`]); members
//!   admitted by earlier versions hold `invite_secret` str (the ticket's secret, hex) instead.
//!   Afterwards only `removed`, `role` and `name` change.
//! - **invite** ([`invite`]): `role` str (a role), `public_key` bytes (32: the key derived from
//!   the ticket's secret), `expires_at` int (seconds; 0 for never), `uses_left` int,
//!   `created_by` str (author's node id), `revoked` bool. Invites made by earlier versions hold
//!   `secret_hash` bytes (32: SHA-256 of the ticket's secret) instead of `public_key`.
//!   Afterwards only `revoked` changes, and `uses_left`: a redemption counts it down by one in
//!   the change that makes the member.
//! - **step** ([`step`]): `id` str (not empty), `title` str (not empty), `detail` str, `status`
//!   str (a [`super::StepStatus`]: `todo`, `active`, `waiting`, `done`, `skipped`), `assignee`
//!   str | null (a node id), `customer_involved` bool, `due` str | null (free text, such as a
//!   date), `created_by` str (author's node id). Afterwards `id` and `created_by` are fixed,
//!   and `detail` may also be put as null (read as empty).
//! - **decision** ([`decision`]): `question` str (not empty), `options` list of str (at least
//!   two, distinct; fixed once made), `step` str | null (a step's id), `who` str (a
//!   [`super::Who`]: `customer`, `members`), `mode` str (a [`super::Mode`]: `choice`, `vote`),
//!   `choices` map (node id → the option that member chose, str; each member writes only its
//!   own entry), `outcome` str | null (`null` when made), `closed` bool (`false` when made),
//!   `created_by` str (author's node id). In `choice` mode a choice settles the decision: the
//!   change that puts it also sets `outcome` to that option (the policy refuses any other
//!   outcome there) and `closed` to `true`. In `vote` mode choices are tallied (a changed vote
//!   replaces the old one) until the decision is closed, with the leading option (ties: the one
//!   listed first) as `outcome`, or null with no votes. Afterwards only `outcome`, `closed`
//!   (never back to `false`) and `choices` change.
//! - **comment** ([`comment`]): `id` str (not empty), `author` str (author's node id), `at`
//!   int (seconds), `step` str | null (a step's id), `text` str (not empty). Afterwards only
//!   `text` changes, and only by its author.
//!
//! Texts are bounded ([`super::limit`]): `need`, `detail` and `text` to
//! [`super::limit::LONG_TEXT`] characters, every other string to
//! [`super::limit::SHORT_TEXT`]. A change is at most [`super::limit::CHANGE_BYTES`] bytes.

/// Fields of the root map.
pub mod root {
    pub const SCHEMA: &str = "schema";
    pub const TITLE: &str = "title";
    pub const NEED: &str = "need";
    pub const STATUS: &str = "status";
    pub const CREATED_AT: &str = "created_at";
    pub const MEMBERS: &str = "members";
    pub const INVITES: &str = "invites";
    pub const STEPS: &str = "steps";
    pub const DECISIONS: &str = "decisions";
    pub const COMMENTS: &str = "comments";
}

/// Fields of a member (a map in `members`, under its node id).
pub mod member {
    pub const NAME: &str = "name";
    pub const ROLE: &str = "role";
    pub const ADDED_BY: &str = "added_by";
    pub const ADDED_AT: &str = "added_at";
    pub const REMOVED: &str = "removed";
    /// The id of the invite that admitted the member.
    pub const INVITE: &str = "invite";
    /// The joiner's signature with the invite's key.
    pub const INVITE_PROOF: &str = "invite_proof";
    /// The ticket's secret: how invites made by earlier versions were redeemed.
    pub const INVITE_SECRET: &str = "invite_secret";
}

/// Fields of an invite (a map in `invites`, under its id).
pub mod invite {
    pub const ROLE: &str = "role";
    pub const PUBLIC_KEY: &str = "public_key";
    /// What invites made by earlier versions hold instead of a public key.
    pub const SECRET_HASH: &str = "secret_hash";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const USES_LEFT: &str = "uses_left";
    pub const CREATED_BY: &str = "created_by";
    pub const REVOKED: &str = "revoked";
}

/// Fields of a step (a map in the `steps` list).
pub mod step {
    pub const ID: &str = "id";
    pub const TITLE: &str = "title";
    pub const DETAIL: &str = "detail";
    pub const STATUS: &str = "status";
    pub const ASSIGNEE: &str = "assignee";
    pub const CUSTOMER_INVOLVED: &str = "customer_involved";
    pub const DUE: &str = "due";
    pub const CREATED_BY: &str = "created_by";
}

/// Fields of a decision (a map in `decisions`, under its id).
pub mod decision {
    pub const QUESTION: &str = "question";
    /// A list of option strings.
    pub const OPTIONS: &str = "options";
    pub const STEP: &str = "step";
    pub const WHO: &str = "who";
    pub const MODE: &str = "mode";
    /// A map of node id → chosen option.
    pub const CHOICES: &str = "choices";
    pub const OUTCOME: &str = "outcome";
    pub const CLOSED: &str = "closed";
    pub const CREATED_BY: &str = "created_by";
}

/// Fields of a comment (a map in the `comments` list).
pub mod comment {
    pub const ID: &str = "id";
    pub const AUTHOR: &str = "author";
    pub const AT: &str = "at";
    pub const STEP: &str = "step";
    pub const TEXT: &str = "text";
}
