//! Test support: named identities and an in-memory flow that members edit through the very
//! accept path a node uses (sign → verify → order → apply → authorize), with no store or network.

#![allow(dead_code)]

pub mod cli;
pub mod peer;
pub mod procs;

use automerge::transaction::{CommitOptions, Transaction};
use automerge::{Automerge, ChangeHash, ReadDoc};
use coflow::auth::{self, Rejection, SignedChange};
use coflow::flow::{flow_id_of_genesis, new_flow_ops, Edit, Flow, FlowId, Reader, Role};
use coflow::identity::Identity;

pub fn alice() -> Identity {
    Identity::from_seed("alice", "Alice")
}
pub fn olga() -> Identity {
    Identity::from_seed("olga", "Olga")
}
pub fn carl() -> Identity {
    Identity::from_seed("carl", "Carl")
}
pub fn dana() -> Identity {
    Identity::from_seed("dana", "Dana")
}
pub fn oscar() -> Identity {
    Identity::from_seed("oscar", "Oscar")
}
pub fn eve() -> Identity {
    Identity::from_seed("eve", "Eve")
}
pub fn bea() -> Identity {
    Identity::from_seed("bea", "Bea")
}

pub const NOW: i64 = 1_780_000_000;

/// Signs a change made by `who`.
pub fn sign(who: &Identity, doc: &Automerge, hash: ChangeHash) -> SignedChange {
    let mut change = doc.get_change_by_hash(&hash).expect("change exists");
    SignedChange {
        bytes: change.bytes().into_owned(),
        signature: who.sign_change(&hash).to_vec(),
    }
}

/// A flow held in memory: `doc` holds exactly the accepted changes.
#[derive(Clone)]
pub struct Sim {
    pub doc: Automerge,
    pub flow_id: FlowId,
    pub log: Vec<SignedChange>,
}

impl Sim {
    /// `creator` starts a flow as `role`.
    pub fn new(creator: &Identity, role: Role) -> Sim {
        let mut doc = Automerge::new().with_actor(creator.actor());
        let mut tx = doc.transaction();
        new_flow_ops(
            &mut tx,
            creator.node_id(),
            creator.name(),
            "Navy suit",
            "A navy three-piece suit for my wedding in May",
            role,
            NOW,
        )
        .unwrap();
        let hash = tx
            .commit_with(CommitOptions::default().with_time(NOW))
            .0
            .unwrap();
        let signed = sign(creator, &doc, hash);
        let flow_id = flow_id_of_genesis(&hash);
        let mut sim = Sim {
            doc: Automerge::new(),
            flow_id,
            log: Vec::new(),
        };
        sim.receive(&[signed]).expect("genesis accepted");
        sim
    }

    /// The tailor's flow: Alice the customer, Olga the owner, Carl a contributor, Oscar an
    /// observer, Dana a second contributor.
    pub fn tailor() -> Sim {
        let mut sim = Sim::new(&alice(), Role::Customer);
        for (who, role) in [
            (olga(), Role::Owner),
            (carl(), Role::Contributor),
            (oscar(), Role::Observer),
            (dana(), Role::Contributor),
        ] {
            sim.edit(&alice(), add_member(&who, role)).unwrap();
        }
        sim
    }

    pub fn flow(&self) -> Flow {
        Reader::now(&self.doc).flow(self.flow_id.as_str())
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        let mut h = self.doc.get_heads();
        h.sort();
        h
    }

    /// Runs signed changes through the accept path; the first rejection, if any, is the error.
    pub fn receive(&mut self, batch: &[SignedChange]) -> Result<(), Rejection> {
        let before = self.doc.clone();
        let out = auth::accept(&mut self.doc, &self.flow_id, batch, || {
            Ok::<_, ()>(before.clone())
        })
        .unwrap();
        for v in &out.accepted {
            let mut c = v.change.clone();
            self.log.push(SignedChange {
                bytes: c.bytes().into_owned(),
                signature: v.signature.to_vec(),
            });
        }
        assert!(out.pending.is_empty(), "nothing should wait in these tests");
        match out.rejected.into_iter().next() {
            Some((_, r)) => Err(r),
            None => Ok(()),
        }
    }

    /// `who` makes a change on top of `heads` with raw Automerge operations; returns it signed.
    pub fn make_at(
        &self,
        who: &Identity,
        heads: &[ChangeHash],
        f: impl FnOnce(&mut Transaction<'_>, &Flow),
    ) -> SignedChange {
        let mut fork = self.doc.fork_at(heads).unwrap().with_actor(who.actor());
        let flow = Reader::now(&fork).flow(self.flow_id.as_str());
        let mut tx = fork.transaction();
        f(&mut tx, &flow);
        let hash = tx
            .commit_with(CommitOptions::default().with_time(NOW))
            .0
            .expect("the change does something");
        sign(who, &fork, hash)
    }

    pub fn make(
        &self,
        who: &Identity,
        f: impl FnOnce(&mut Transaction<'_>, &Flow),
    ) -> SignedChange {
        self.make_at(who, &self.doc.get_heads(), f)
    }

    /// `who` makes a typed edit on top of `heads`.
    pub fn edit_change_at(&self, who: &Identity, heads: &[ChangeHash], edit: Edit) -> SignedChange {
        let id = *who.node_id();
        self.make_at(who, heads, |tx, flow| {
            edit.apply(tx, flow, &id, NOW).expect("the edit applies");
        })
    }

    pub fn edit_change(&self, who: &Identity, edit: Edit) -> SignedChange {
        self.edit_change_at(who, &self.doc.get_heads(), edit)
    }

    /// `who` makes a typed edit and the flow receives it.
    pub fn edit(&mut self, who: &Identity, edit: Edit) -> Result<(), Rejection> {
        let c = self.edit_change(who, edit);
        self.receive(&[c])
    }

    /// Like `edit`, but asserts that the flow's heads did not move when it was refused.
    pub fn refused(&mut self, who: &Identity, edit: Edit) -> Rejection {
        let heads = self.heads();
        let r = self
            .edit(who, edit)
            .expect_err("the change must be refused");
        assert_eq!(
            self.heads(),
            heads,
            "a refused change must leave the heads alone"
        );
        r
    }

    pub fn step_id(&self, title: &str) -> String {
        self.flow()
            .steps
            .iter()
            .find(|s| s.title == title)
            .map(|s| s.id.clone())
            .expect("step exists")
    }

    pub fn decision_id(&self, question: &str) -> String {
        self.flow()
            .decisions
            .iter()
            .find(|d| d.question == question)
            .map(|d| d.id.clone())
            .expect("decision exists")
    }
}

pub fn add_member(who: &Identity, role: Role) -> Edit {
    Edit::AddMember {
        node_id: who.node_id().to_string(),
        role,
        name: Some(who.name().to_string()),
    }
}

pub fn add_step(title: &str, assignee: Option<&Identity>) -> Edit {
    Edit::AddStep {
        title: title.into(),
        detail: None,
        assignee: assignee.map(|a| a.node_id().to_string()),
        customer_involved: false,
        due: None,
    }
}

/// A small deterministic generator (xorshift64) for tests that need reproducible randomness.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
