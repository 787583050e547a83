//! Flows for the benchmark, made of signed changes exactly as nodes make and accept them.
//!
//! Content is written op by op the way `Edit::Comment` writes it (reading the whole flow before
//! each of thousands of edits would make generating the history quadratic); every change passes
//! the role policy when a node receives it.

use std::path::Path;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{Automerge, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use coflow::auth::SignedChange;
use coflow::flow::{self, Edit, FlowId, Reader, Role};
use coflow::identity::Identity;
use coflow::repo::Repo;
use coflow::store::{Changes, Flows, Storage, Store, StoreError};

/// The time every generated change claims (the policy only checks it is an integer).
pub const NOW: i64 = 1_795_000_000;

/// A flow being written, with every change signed by its author.
pub struct FlowGen {
    pub id: FlowId,
    pub doc: Automerge,
    pub changes: Vec<SignedChange>,
    pub hashes: Vec<automerge::ChangeHash>,
    comments: ObjId,
    made: u64,
}

impl FlowGen {
    /// A new flow whose customer is `creator`.
    pub fn new(creator: &Identity, title: &str) -> FlowGen {
        let mut doc = Automerge::new().with_actor(creator.actor());
        let mut tx = doc.transaction();
        flow::new_flow_ops(
            &mut tx,
            creator.node_id(),
            creator.name(),
            title,
            "A need to benchmark",
            Role::Customer,
            NOW,
        )
        .expect("a valid genesis");
        tx.commit_with(CommitOptions::default().with_message("started the flow".to_string()));
        let genesis = doc.get_last_local_change().expect("just committed");
        let id = flow::flow_id_of_genesis(&genesis.hash());
        let comments = match doc.get(ROOT, flow::field::COMMENTS) {
            Ok(Some((Value::Object(ObjType::List), obj))) => obj,
            other => panic!("a new flow has a comments list, not {other:?}"),
        };
        let mut gen = FlowGen {
            id,
            doc,
            changes: Vec::new(),
            hashes: Vec::new(),
            comments,
            made: 0,
        };
        gen.push_last(creator);
        gen
    }

    fn push_last(&mut self, who: &Identity) {
        let mut change = self.doc.get_last_local_change().expect("just committed");
        let hash = change.hash();
        self.changes.push(SignedChange {
            bytes: change.bytes().into_owned(),
            signature: who.sign_change(&hash).to_vec(),
        });
        self.hashes.push(hash);
    }

    /// An edit through the flow schema (reads the whole flow: use for the few structural ones).
    pub fn edit(&mut self, who: &Identity, edit: &Edit) {
        self.doc.set_actor(who.actor());
        let current = Reader::now(&self.doc).flow(self.id.as_str());
        let mut tx = self.doc.transaction();
        let applied = edit
            .apply(&mut tx, &current, who.node_id(), NOW)
            .expect("a valid edit");
        tx.commit_with(
            CommitOptions::default()
                .with_message(applied.summary)
                .with_time(NOW),
        );
        self.push_last(who);
    }

    pub fn add_member(&mut self, by: &Identity, member: &Identity) {
        self.edit(
            by,
            &Edit::AddMember {
                node_id: member.node_id().to_string(),
                role: Role::Contributor,
                name: Some(member.name().to_string()),
            },
        );
    }

    /// A comment by `who` (six ops); returns the comment's object.
    pub fn comment(&mut self, who: &Identity, text: &str) -> ObjId {
        self.doc.set_actor(who.actor());
        self.made += 1;
        let mut tx = self.doc.transaction();
        let at = tx.length(&self.comments);
        let c = tx
            .insert_object(&self.comments, at, ObjType::Map)
            .expect("insert");
        tx.put(&c, flow::schema::comment::ID, format!("{:016x}", self.made))
            .expect("put");
        tx.put(&c, flow::schema::comment::AUTHOR, who.node_id().as_str())
            .expect("put");
        tx.put(&c, flow::schema::comment::AT, NOW).expect("put");
        tx.put(&c, flow::schema::comment::STEP, ScalarValue::Null)
            .expect("put");
        tx.put(&c, flow::schema::comment::TEXT, text).expect("put");
        tx.commit_with(
            CommitOptions::default()
                .with_message(format!("commented: {text}"))
                .with_time(NOW),
        );
        self.push_last(who);
        c
    }

    /// `who` edits the text of some of their own comments (one op each).
    pub fn retext(&mut self, who: &Identity, comments: &[ObjId], text: &str) {
        self.doc.set_actor(who.actor());
        let mut tx = self.doc.transaction();
        for c in comments {
            tx.put(c, flow::schema::comment::TEXT, text).expect("put");
        }
        tx.commit_with(
            CommitOptions::default()
                .with_message("edited a comment".to_string())
                .with_time(NOW),
        );
        self.push_last(who);
    }

    /// `n` comments by `who`.
    pub fn comments(&mut self, who: &Identity, n: usize) {
        for i in 0..n {
            self.comment(who, &format!("comment number {i}"));
        }
    }

    /// An editing trace of about `ops` operations in small changes: every fourth change adds a
    /// comment (6 ops), the others retype the author's three latest comments (one op each), as
    /// keystrokes would. Returns the number of ops written.
    pub fn trace(&mut self, who: &Identity, ops: usize) -> usize {
        let mut recent: Vec<ObjId> = Vec::new();
        let mut written = 0;
        let mut typed = String::new();
        let mut i = 0usize;
        while written < ops {
            if i.is_multiple_of(4) || recent.is_empty() {
                typed.clear();
                recent.push(self.comment(who, "t"));
                if recent.len() > 3 {
                    recent.remove(0);
                }
                written += 6;
            } else {
                // Type a character, or delete one now and then.
                if i.is_multiple_of(7) && typed.len() > 1 {
                    typed.pop();
                } else {
                    typed.push((b'a' + (i % 26) as u8) as char);
                }
                self.retext(who, &recent.clone(), &format!("t{typed}"));
                written += recent.len();
            }
            i += 1;
        }
        written
    }

    /// Total bytes of the signed changes (change bytes plus signature).
    pub fn signed_bytes(&self) -> usize {
        self.changes
            .iter()
            .map(|c| c.bytes.len() + c.signature.len())
            .sum()
    }
}

/// A data dir holding `identity`, with each flow received through the accept path.
pub fn seed_home(home: &Path, identity: &Identity, flows: &[&FlowGen]) -> Repo {
    let mut repo = Repo::init(home, identity.clone()).expect("a repository");
    for f in flows {
        let out = repo.receive(&f.id, &f.changes).expect("received");
        assert_eq!(
            out.accepted.len(),
            f.changes.len(),
            "every generated change is accepted: {:?}",
            out.rejected.first()
        );
    }
    repo
}

/// A data dir holding `identity` and many flows, written straight into the store in one
/// transaction (the rows the accept path would write; used where seeding must be fast).
pub fn seed_home_bulk(home: &Path, identity: &Identity, flows: &[FlowGen]) {
    drop(Repo::init(home, identity.clone()).expect("a repository"));
    let mut store = Store::open(home).expect("a store");
    store
        .write(|w| {
            for f in flows {
                w.insert_flow(
                    &f.id,
                    &f.hashes[0].0,
                    "Idle flow",
                    flow::FlowStatus::Open.as_str(),
                    NOW,
                )?;
                w.insert_changes(
                    &f.id,
                    f.hashes
                        .iter()
                        .zip(&f.changes)
                        .map(|(h, c)| (&h.0[..], &c.bytes[..], &c.signature[..])),
                )?;
            }
            Ok::<_, StoreError>(())
        })
        .expect("seeded");
}
