//! The role policy (DESIGN §3), row by row, through the accept path a node uses for every
//! change. Alice is the customer, Olga the owner, Carl and Dana contributors, Oscar an observer,
//! Eve a stranger.

mod common;

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc, ScalarValue, ROOT};
use coflow::auth::{Rejection, SignedChange};
use coflow::flow::{Edit, FlowStatus, Mode, Role, StepStatus, Who};
use coflow::identity::{hex, unhex, Identity, InviteKey};
use common::*;

fn forbidden(r: Rejection) -> String {
    match r {
        Rejection::Forbidden(f) => f.0,
        other => panic!("expected a policy refusal, got: {other}"),
    }
}

/// Puts `value` at `key` of member `node`'s map, as a raw operation.
fn put_member_field(
    sim: &Sim,
    who: &Identity,
    node: &Identity,
    key: &'static str,
    value: ScalarValue,
) -> SignedChange {
    let node = node.node_id().to_string();
    sim.make(who, move |tx, _| {
        let members = tx.get(ROOT, "members").unwrap().unwrap().1;
        let m = tx.get(&members, node.as_str()).unwrap().unwrap().1;
        tx.put(&m, key, value).unwrap();
    })
}

fn new_invite(sim: &Sim, who: &Identity, role: Role) -> SignedChange {
    let me = who.node_id().to_string();
    sim.make(who, move |tx, _| {
        let invites = tx.get(ROOT, "invites").unwrap().unwrap().1;
        let i = tx.put_object(&invites, "inv1", ObjType::Map).unwrap();
        tx.put(&i, "role", role.as_str()).unwrap();
        tx.put(&i, "public_key", ScalarValue::Bytes(invite_public_key()))
            .unwrap();
        tx.put(&i, "expires_at", NOW + 3600).unwrap();
        tx.put(&i, "uses_left", 1).unwrap();
        tx.put(&i, "created_by", me.as_str()).unwrap();
        tx.put(&i, "revoked", false).unwrap();
    })
}

// --- add members, change roles, manage invites: customer yes; owner yes, but not customers ---

#[test]
fn customer_and_owner_add_members_others_cannot() {
    let mut sim = Sim::tailor();
    sim.edit(&olga(), add_member(&eve(), Role::Observer))
        .unwrap();
    let mut sim = Sim::tailor();
    sim.edit(&alice(), add_member(&eve(), Role::Contributor))
        .unwrap();
    for who in [carl(), oscar()] {
        let mut sim = Sim::tailor();
        let msg = forbidden(sim.refused(&who, add_member(&eve(), Role::Observer)));
        assert!(msg.contains("cannot add members"), "{msg}");
    }
}

#[test]
fn only_a_customer_adds_a_customer() {
    let mut sim = Sim::tailor();
    let msg = forbidden(sim.refused(&olga(), add_member(&bea(), Role::Customer)));
    assert!(msg.contains("only a customer"), "{msg}");
    sim.edit(&alice(), add_member(&bea(), Role::Customer))
        .unwrap();
    assert_eq!(
        sim.flow().role_of(bea().node_id().as_str()),
        Some(Role::Customer)
    );
}

#[test]
fn an_owner_brings_in_the_first_customer_only() {
    let mut sim = Sim::new(&olga(), Role::Owner);
    sim.edit(&olga(), add_member(&alice(), Role::Customer))
        .unwrap();
    let msg = forbidden(sim.refused(&olga(), add_member(&bea(), Role::Customer)));
    assert!(msg.contains("only a customer"), "{msg}");
    // The same goes for invites: none for a customer once the flow has one.
    let c = new_invite(&sim, &olga(), Role::Customer);
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("invite a customer"));
    let mut fresh = Sim::new(&olga(), Role::Owner);
    let c = new_invite(&fresh, &olga(), Role::Customer);
    fresh.receive(&[c]).unwrap();
}

#[test]
fn role_changes() {
    let mut sim = Sim::tailor();
    // The customer and the owner change a contributor's role.
    let c = put_member_field(&sim, &alice(), &carl(), "role", "observer".into());
    sim.receive(&[c]).unwrap();
    let c = put_member_field(&sim, &olga(), &carl(), "role", "contributor".into());
    sim.receive(&[c]).unwrap();
    // The owner cannot change the customer's role, nor make anyone a customer.
    let heads = sim.heads();
    let c = put_member_field(&sim, &olga(), &alice(), "role", "observer".into());
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("customer's role"));
    let c = put_member_field(&sim, &olga(), &carl(), "role", "customer".into());
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("only a customer"));
    // A contributor changes no one's role, and cannot promote themself.
    let c = put_member_field(&sim, &carl(), &dana(), "role", "observer".into());
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("cannot change roles"));
    let c = put_member_field(&sim, &carl(), &carl(), "role", "owner".into());
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("raise"));
    assert_eq!(sim.heads(), heads);
    // …but may step down.
    let c = put_member_field(&sim, &carl(), &carl(), "role", "observer".into());
    sim.receive(&[c]).unwrap();
}

#[test]
fn invites_are_managed_by_customers_and_owners() {
    let sim = Sim::tailor();
    for who in [alice(), olga()] {
        let mut s = Sim::tailor();
        s.receive(&[new_invite(&s, &who, Role::Contributor)])
            .unwrap();
    }
    let mut s = Sim::tailor();
    let c = new_invite(&s, &olga(), Role::Customer);
    assert!(forbidden(s.receive(&[c]).unwrap_err()).contains("invite a customer"));
    for who in [carl(), oscar()] {
        let mut s = Sim::tailor();
        let c = new_invite(&s, &who, Role::Contributor);
        assert!(forbidden(s.receive(&[c]).unwrap_err()).contains("invites"));
    }
    drop(sim);
}

// --- remove a member: customer/owner: self and non-customers; others: self ---

#[test]
fn removals() {
    let remove = |who: &Identity| Edit::RemoveMember {
        member: who.node_id().to_string(),
    };
    let mut sim = Sim::tailor();
    sim.edit(&alice(), remove(&carl())).unwrap();
    sim.edit(&olga(), remove(&dana())).unwrap();
    let msg = forbidden(sim.refused(&olga(), remove(&alice())));
    assert!(msg.contains("only be removed by themself"), "{msg}");

    let mut sim = Sim::tailor();
    assert!(forbidden(sim.refused(&carl(), remove(&dana()))).contains("cannot remove"));
    assert!(forbidden(sim.refused(&oscar(), remove(&carl()))).contains("cannot remove"));
    sim.edit(&carl(), remove(&carl())).unwrap();
    sim.edit(&oscar(), remove(&oscar())).unwrap();
    sim.edit(&olga(), remove(&olga())).unwrap();

    // A second customer cannot remove the first; a customer may leave.
    let mut sim = Sim::tailor();
    sim.edit(&alice(), add_member(&bea(), Role::Customer))
        .unwrap();
    assert!(forbidden(sim.refused(&bea(), remove(&alice()))).contains("themself"));
    sim.edit(&alice(), remove(&alice())).unwrap();
    assert_eq!(sim.flow().role_of(alice().node_id().as_str()), None);
}

/// A flow keeps someone who can manage it, as a check on a user's own edit (`Edit::apply`), not
/// as a rule of the policy: a received change by which the last manager leaves or steps down is
/// accepted, as it was before the check, so flows holding one verify alike on every version.
#[test]
fn the_last_manager_is_kept_from_leaving_by_mistake_and_the_policy_is_unchanged() {
    let leave = |sim: &Sim, who: &Identity| -> Result<(), String> {
        let id = *who.node_id();
        let mut doc = sim.doc.fork();
        let mut tx = doc.transaction();
        let edit = Edit::RemoveMember {
            member: id.to_string(),
        };
        let applied = edit.apply(&mut tx, &sim.flow(), &id, 0);
        applied.map(|_| ()).map_err(|e| e.to_string())
    };
    let last = "last customer or owner";
    // Alone in her flow, Alice's own edit is refused.
    let mut sim = Sim::new(&alice(), Role::Customer);
    assert!(leave(&sim, &alice()).unwrap_err().contains(last));
    // In the tailor's flow the owner may leave while the customer stays; then the customer is
    // the last one; contributors and observers come and go.
    let mut tailor = Sim::tailor();
    assert!(leave(&tailor, &olga()).is_ok());
    tailor
        .edit(
            &olga(),
            Edit::RemoveMember {
                member: olga().node_id().to_string(),
            },
        )
        .unwrap();
    assert!(leave(&tailor, &alice()).unwrap_err().contains(last));
    assert!(leave(&tailor, &carl()).is_ok());
    // A new owner lets her go.
    tailor
        .edit(&alice(), add_member(&bea(), Role::Owner))
        .unwrap();
    assert!(leave(&tailor, &alice()).is_ok());
    let owner = Sim::new(&olga(), Role::Owner);
    assert!(leave(&owner, &olga()).unwrap_err().contains(last));

    // The same, written as raw operations by a peer: accepted.
    let c = put_member_field(&sim, &alice(), &alice(), "removed", true.into());
    sim.receive(&[c]).unwrap();
    assert_eq!(sim.flow().role_of(alice().node_id().as_str()), None);
    let mut sim = Sim::new(&alice(), Role::Customer);
    let c = put_member_field(&sim, &alice(), &alice(), "role", "observer".into());
    sim.receive(&[c]).unwrap();
}

// --- edit title / need; close / reopen: customer and owner ---

#[test]
fn title_need_close_reopen() {
    let mut sim = Sim::tailor();
    for who in [alice(), olga()] {
        sim.edit(
            &who,
            Edit::SetTitle {
                title: format!("Suit by {}", who.name()),
            },
        )
        .unwrap();
        sim.edit(
            &who,
            Edit::SetNeed {
                need: format!("Navy, three pieces, says {}", who.name()),
            },
        )
        .unwrap();
        sim.edit(
            &who,
            Edit::SetStatus {
                status: FlowStatus::Closed,
            },
        )
        .unwrap();
        sim.edit(
            &who,
            Edit::SetStatus {
                status: FlowStatus::Open,
            },
        )
        .unwrap();
    }
    for who in [carl(), oscar()] {
        assert!(forbidden(sim.refused(
            &who,
            Edit::SetTitle {
                title: "Mine".into()
            }
        ))
        .contains("cannot edit the title"));
        assert!(forbidden(sim.refused(
            &who,
            Edit::SetNeed {
                need: "Other".into()
            }
        ))
        .contains("cannot edit the need"));
        assert!(forbidden(sim.refused(
            &who,
            Edit::SetStatus {
                status: FlowStatus::Closed
            }
        ))
        .contains("close or reopen"));
    }
}

// --- set status fulfilled: customer only, and no one overrules it ---

#[test]
fn only_the_customer_confirms_fulfilment() {
    let mut sim = Sim::tailor();
    for who in [olga(), carl(), oscar()] {
        let msg = forbidden(sim.refused(
            &who,
            Edit::SetStatus {
                status: FlowStatus::Fulfilled,
            },
        ));
        assert!(msg.contains("only a customer can"), "{msg}");
    }
    sim.edit(
        &alice(),
        Edit::SetStatus {
            status: FlowStatus::Fulfilled,
        },
    )
    .unwrap();
    assert_eq!(sim.flow().status, FlowStatus::Fulfilled);
    // The owner cannot undo the customer's confirmation.
    let msg = forbidden(sim.refused(
        &olga(),
        Edit::SetStatus {
            status: FlowStatus::Open,
        },
    ));
    assert!(msg.contains("overrule"), "{msg}");
    sim.edit(
        &alice(),
        Edit::SetStatus {
            status: FlowStatus::Open,
        },
    )
    .unwrap();
}

// --- add / edit steps; open decisions: everyone but observers ---

#[test]
fn steps_and_decisions_are_opened_by_all_but_observers() {
    let mut sim = Sim::tailor();
    for who in [alice(), olga(), carl()] {
        sim.edit(&who, add_step(&format!("Step by {}", who.name()), None))
            .unwrap();
        sim.edit(
            &who,
            Edit::NewDecision {
                question: format!("Question of {}", who.name()),
                options: vec!["Yes".into(), "No".into()],
                who: Who::Members,
                mode: Mode::Vote,
                step: None,
            },
        )
        .unwrap();
    }
    assert!(
        forbidden(sim.refused(&oscar(), add_step("Observer's step", None)))
            .contains("cannot add steps")
    );
    let msg = forbidden(sim.refused(
        &oscar(),
        Edit::NewDecision {
            question: "Q".into(),
            options: vec!["a".into(), "b".into()],
            who: Who::Members,
            mode: Mode::Vote,
            step: None,
        },
    ));
    assert!(msg.contains("cannot open decisions"), "{msg}");
    // An observer edits no step field.
    let step = sim.step_id("Step by Carl");
    let c = sim.make(&oscar(), |tx, flow| {
        let steps = tx.get(ROOT, "steps").unwrap().unwrap().1;
        let i = flow.steps.iter().position(|s| s.id == step).unwrap();
        let s = tx.get(&steps, i).unwrap().unwrap().1;
        tx.put(&s, "title", "Renamed").unwrap();
    });
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("cannot edit steps"));
    // A contributor edits a step's title.
    let c = sim.make(&carl(), |tx, flow| {
        let steps = tx.get(ROOT, "steps").unwrap().unwrap().1;
        let i = flow
            .steps
            .iter()
            .position(|s| s.title == "Step by Alice")
            .unwrap();
        let s = tx.get(&steps, i).unwrap().unwrap().1;
        tx.put(&s, "title", "Step by Alice, renamed by Carl")
            .unwrap();
    });
    sim.receive(&[c]).unwrap();
}

// --- change a step's status: contributor only if assignee or unassigned ---

#[test]
fn step_status_rules() {
    let mut sim = Sim::tailor();
    sim.edit(&olga(), add_step("Cut and baste", Some(&dana())))
        .unwrap();
    sim.edit(&olga(), add_step("Press", None)).unwrap();
    sim.edit(&olga(), add_step("Sew", Some(&carl()))).unwrap();
    let cut = sim.step_id("Cut and baste");
    let press = sim.step_id("Press");
    let sew = sim.step_id("Sew");
    let set = |step: &str, status| Edit::SetStepStatus {
        step: step.into(),
        status,
    };

    // A contributor moving a step assigned to someone else is refused, and may not take it over.
    let msg = forbidden(sim.refused(&carl(), set(&cut, StepStatus::Active)));
    assert!(msg.contains("assigned to someone else"), "{msg}");
    let take = Edit::AssignStep {
        step: cut.clone(),
        assignee: Some(carl().node_id().to_string()),
    };
    assert!(forbidden(sim.refused(&carl(), take)).contains("assigned to someone else"));
    // Their own step and an unassigned one are fine; the customer and owner move any.
    sim.edit(&carl(), set(&sew, StepStatus::Active)).unwrap();
    sim.edit(&carl(), set(&press, StepStatus::Done)).unwrap();
    sim.edit(&dana(), set(&cut, StepStatus::Active)).unwrap();
    sim.edit(&olga(), set(&cut, StepStatus::Waiting)).unwrap();
    sim.edit(&alice(), set(&cut, StepStatus::Done)).unwrap();
    assert!(
        forbidden(sim.refused(&oscar(), set(&press, StepStatus::Todo)))
            .contains("cannot edit steps")
    );
}

// --- choose in a decision: per its `who` ---

#[test]
fn customer_decisions_are_the_customers() {
    let mut sim = Sim::tailor();
    sim.edit(
        &olga(),
        Edit::NewDecision {
            question: "Which cloth?".into(),
            options: vec!["Navy wool".into(), "Navy linen".into()],
            who: Who::Customer,
            mode: Mode::Choice,
            step: None,
        },
    )
    .unwrap();
    let d = sim.decision_id("Which cloth?");
    let choose = |o: &str| Edit::Choose {
        decision: d.clone(),
        option: o.into(),
    };
    for who in [olga(), carl(), oscar()] {
        let msg = forbidden(sim.refused(&who, choose("Navy linen")));
        assert!(msg.contains("customer's decision"), "{msg}");
    }
    // The owner cannot settle it by writing the outcome either.
    let c = sim.make(&olga(), |tx, _| {
        let ds = tx.get(ROOT, "decisions").unwrap().unwrap().1;
        let o = tx.get(&ds, d.as_str()).unwrap().unwrap().1;
        tx.put(&o, "outcome", "Navy linen").unwrap();
        tx.put(&o, "closed", true).unwrap();
    });
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("customer's to make"));
    sim.edit(&alice(), choose("Navy wool")).unwrap();
    let dec = sim.flow().decisions[0].clone();
    assert_eq!(dec.outcome.as_deref(), Some("Navy wool"));
    assert!(dec.closed);
    // Closed means closed.
    assert!(forbidden(sim.refused_raw_choice(&alice(), &d, "Navy linen")).contains("closed"));
}

impl Sim {
    fn refused_raw_choice(&mut self, who: &Identity, decision: &str, option: &str) -> Rejection {
        let me = who.node_id().to_string();
        let c = self.make(who, |tx, _| {
            let ds = tx.get(ROOT, "decisions").unwrap().unwrap().1;
            let o = tx.get(&ds, decision).unwrap().unwrap().1;
            let choices = tx.get(&o, "choices").unwrap().unwrap().1;
            tx.put(&choices, me.as_str(), option).unwrap();
        });
        let heads = self.heads();
        let r = self.receive(&[c]).unwrap_err();
        assert_eq!(self.heads(), heads);
        r
    }
}

#[test]
fn members_vote_once_each_and_only_for_themselves() {
    let mut sim = Sim::tailor();
    sim.edit(
        &carl(),
        Edit::NewDecision {
            question: "Season strategy?".into(),
            options: vec!["Attack".into(), "Defend".into()],
            who: Who::Members,
            mode: Mode::Vote,
            step: None,
        },
    )
    .unwrap();
    let d = sim.decision_id("Season strategy?");
    let vote = |o: &str| Edit::Choose {
        decision: d.clone(),
        option: o.into(),
    };
    for who in [alice(), olga(), carl(), oscar()] {
        sim.edit(&who, vote("Attack")).unwrap();
    }
    sim.edit(&oscar(), vote("Defend")).unwrap(); // changed vote replaces the old one
    assert_eq!(
        sim.flow().decisions[0].tally(),
        vec![("Attack".into(), 3), ("Defend".into(), 1)]
    );
    // Voting in someone else's name is refused.
    let dana_id = dana().node_id().to_string();
    let c = sim.make(&carl(), |tx, _| {
        let ds = tx.get(ROOT, "decisions").unwrap().unwrap().1;
        let o = tx.get(&ds, d.as_str()).unwrap().unwrap().1;
        let choices = tx.get(&o, "choices").unwrap().unwrap().1;
        tx.put(&choices, dana_id.as_str(), "Defend").unwrap();
    });
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("only for themselves"));
    // A contributor cannot close the vote; the owner can.
    assert!(forbidden(sim.refused(
        &carl(),
        Edit::CloseDecision {
            decision: d.clone()
        }
    ))
    .contains("close a members' vote"));
    sim.edit(
        &olga(),
        Edit::CloseDecision {
            decision: d.clone(),
        },
    )
    .unwrap();
    assert_eq!(sim.flow().decisions[0].outcome.as_deref(), Some("Attack"));
}

// --- comment: everyone; edit own comments only ---

#[test]
fn comments() {
    let mut sim = Sim::tailor();
    for who in [alice(), olga(), carl(), oscar()] {
        sim.edit(
            &who,
            Edit::Comment {
                text: format!("Hello from {}", who.name()),
                step: None,
            },
        )
        .unwrap();
    }
    let edit_first = |sim: &Sim, who: &Identity| {
        sim.make(who, |tx, _| {
            let cs = tx.get(ROOT, "comments").unwrap().unwrap().1;
            let c = tx.get(&cs, 0).unwrap().unwrap().1;
            tx.put(&c, "text", "edited").unwrap();
        })
    };
    let c = edit_first(&sim, &olga());
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("only a comment's author"));
    let c = edit_first(&sim, &alice());
    sim.receive(&[c]).unwrap();
    assert_eq!(sim.flow().comments[0].text, "edited");
    // Comments are never deleted, and carry their true author.
    let c = sim.make(&alice(), |tx, _| {
        let cs = tx.get(ROOT, "comments").unwrap().unwrap().1;
        tx.delete(&cs, 1).unwrap();
    });
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("cannot be deleted"));
    let olga_id = olga().node_id().to_string();
    let c = sim.make(&carl(), |tx, _| {
        let cs = tx.get(ROOT, "comments").unwrap().unwrap().1;
        let n = tx.length(&cs);
        let c = tx.insert_object(&cs, n, ObjType::Map).unwrap();
        tx.put(&c, "id", "x").unwrap();
        tx.put(&c, "author", olga_id.as_str()).unwrap();
        tx.put(&c, "text", "I am Olga").unwrap();
    });
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("author"));
}

/// `change` with its dependencies replaced by `deps`, re-signed by `who`: a change that names
/// objects its (claimed) past does not have.
fn with_deps(
    change: &SignedChange,
    deps: &[automerge::ChangeHash],
    who: &Identity,
) -> SignedChange {
    let mut expanded = automerge::Change::from_bytes(change.bytes.clone())
        .unwrap()
        .decode();
    expanded.deps = deps.to_vec();
    expanded.hash = None;
    let mut forged = automerge::Change::from(expanded);
    SignedChange {
        bytes: forged.bytes().into_owned(),
        signature: who.sign_change(&forged.hash()).to_vec(),
    }
}

#[test]
fn objects_are_judged_as_of_the_changes_past() {
    let mut sim = Sim::tailor();
    let before_comment = sim.heads();
    sim.edit(
        &alice(),
        Edit::Comment {
            text: "Lapels: notch".into(),
            step: None,
        },
    )
    .unwrap();
    let retype = |sim: &Sim, who: &Identity| {
        sim.make(who, |tx, _| {
            let cs = tx.get(ROOT, "comments").unwrap().unwrap().1;
            let c = tx.get(&cs, 0).unwrap().unwrap().1;
            tx.put(&c, "text", "Lapels: peak").unwrap();
        })
    };
    // An edit of the comment whose past does not hold the comment.
    let forged = with_deps(&retype(&sim, &alice()), &before_comment, &alice());
    let heads = sim.heads();
    let msg = forbidden(sim.receive(&[forged]).unwrap_err());
    assert!(msg.contains("does not exist in its past"), "{msg}");
    assert_eq!(sim.heads(), heads);
    // The same edit with its true past is the author's to make.
    sim.receive(&[retype(&sim, &alice())]).unwrap();
    assert_eq!(sim.flow().comments[0].text, "Lapels: peak");

    // A deleted step cannot be edited after its deletion; an edit concurrent with it can.
    sim.edit(&olga(), add_step("Press", Some(&carl()))).unwrap();
    let press = sim.step_id("Press");
    let before_delete = sim.heads();
    let delete = sim.make(&olga(), |tx, _| {
        let steps = tx.get(ROOT, "steps").unwrap().unwrap().1;
        tx.delete(&steps, 0).unwrap();
    });
    sim.receive(&[delete]).unwrap();
    let done = Edit::SetStepStatus {
        step: press.clone(),
        status: StepStatus::Done,
    };
    let concurrent = sim.edit_change_at(&carl(), &before_delete, done);
    let after = sim.make(&carl(), |tx, _| {
        let steps = tx.get(ROOT, "steps").unwrap().unwrap().1;
        let deleted = tx.get_at(&steps, 0, &before_delete).unwrap().unwrap().1;
        tx.put(&deleted, "status", "done").unwrap();
    });
    let msg = forbidden(sim.receive(&[after]).unwrap_err());
    assert!(msg.contains("does not exist in its past"), "{msg}");
    sim.receive(&[concurrent]).unwrap();
}

// --- signatures, strangers, genesis, schema ---

#[test]
fn forged_signature_is_refused() {
    let mut sim = Sim::tailor();
    let mut c = sim.edit_change(&carl(), add_step("Forged", None));
    c.signature[0] ^= 1;
    let heads = sim.heads();
    assert_eq!(sim.receive(&[c]).unwrap_err(), Rejection::BadSignature);
    assert_eq!(sim.heads(), heads);
}

#[test]
fn a_change_signed_by_another_key_than_its_actor_is_refused() {
    let mut sim = Sim::tailor();
    // Made under Carl's actor id, signed by Eve.
    let c = sim.edit_change(&carl(), add_step("Not by Carl", None));
    let change = automerge::Change::from_bytes(c.bytes.clone()).unwrap();
    let forged = SignedChange {
        bytes: c.bytes,
        signature: eve().sign_change(&change.hash()).to_vec(),
    };
    assert_eq!(sim.receive(&[forged]).unwrap_err(), Rejection::BadSignature);
    // An actor id that is not an ed25519 key at all.
    let mut doc = sim
        .doc
        .fork()
        .with_actor(automerge::ActorId::from(&[1u8, 2, 3][..]));
    let mut tx = doc.transaction();
    tx.put(ROOT, "title", "x").unwrap();
    let hash = tx.commit().0.unwrap();
    let bad = sign(&eve(), &doc, hash);
    assert_eq!(sim.receive(&[bad]).unwrap_err(), Rejection::BadActor);
}

#[test]
fn a_non_member_is_refused() {
    let mut sim = Sim::tailor();
    let msg = forbidden(sim.refused(
        &eve(),
        Edit::Comment {
            text: "hi".into(),
            step: None,
        },
    ));
    assert!(msg.contains("not a member"), "{msg}");
}

#[test]
fn a_second_genesis_is_refused() {
    let mut sim = Sim::tailor();
    let other = Sim::new(&eve(), Role::Customer);
    let genesis = other.log[0].clone();
    assert_eq!(
        sim.receive(&[genesis]).unwrap_err(),
        Rejection::WrongGenesis
    );
}

#[test]
fn a_genesis_must_make_its_author_the_only_member() {
    let eve = eve();
    let alice_id = alice().node_id().to_string();
    let mut doc = automerge::Automerge::new().with_actor(eve.actor());
    let mut tx = doc.transaction();
    coflow::flow::new_flow_ops(&mut tx, eve.node_id(), "Eve", "t", "n", Role::Customer, NOW)
        .unwrap();
    let members = tx.get(ROOT, "members").unwrap().unwrap().1;
    let m = tx
        .put_object(&members, alice_id.as_str(), ObjType::Map)
        .unwrap();
    tx.put(&m, "role", "observer").unwrap();
    let hash = tx.commit().0.unwrap();
    let signed = sign(&eve, &doc, hash);
    let mut fresh = automerge::Automerge::new();
    let out = coflow::auth::accept(
        &mut fresh,
        &coflow::flow::flow_id_of_genesis(&hash),
        &[signed],
        || Ok::<_, ()>(automerge::Automerge::new()),
    )
    .unwrap();
    assert!(out.accepted.is_empty());
    assert!(matches!(&out.rejected[0].1, Rejection::Forbidden(f) if f.0.contains("only member")));
    assert!(fresh.get_heads().is_empty());
}

#[test]
fn writes_outside_the_schema_are_refused() {
    let mut sim = Sim::tailor();
    let c = sim.make(&alice(), |tx, _| {
        tx.put(ROOT, "backdoor", "x").unwrap();
    });
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("cannot be changed"));
    let c = sim.make(&alice(), |tx, _| {
        tx.put(ROOT, "status", "done-ish").unwrap();
    });
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("not a valid"));
    let c = sim.make(&alice(), |tx, _| {
        tx.put_object(ROOT, "steps", ObjType::List).unwrap();
    });
    assert!(forbidden(sim.receive(&[c]).unwrap_err()).contains("schema"));
    let c = sim.make(&alice(), |tx, _| {
        tx.put_object(ROOT, "counter", ObjType::Map).unwrap();
    });
    assert!(sim.receive(&[c]).is_err());
}

// --- membership in the causal past ---

#[test]
fn a_change_after_its_authors_removal_is_refused() {
    let mut sim = Sim::tailor();
    sim.edit(
        &alice(),
        Edit::RemoveMember {
            member: carl().node_id().to_string(),
        },
    )
    .unwrap();
    // Carl has seen his removal (it is in the change's causal past).
    let msg = forbidden(sim.refused(&carl(), add_step("After removal", None)));
    assert!(msg.contains("not a member"), "{msg}");
}

#[test]
fn a_change_concurrent_with_its_authors_removal_is_accepted() {
    let mut sim = Sim::tailor();
    let before = sim.doc.get_heads();
    sim.edit(
        &alice(),
        Edit::RemoveMember {
            member: carl().node_id().to_string(),
        },
    )
    .unwrap();
    // Carl wrote his step before he saw the removal: its causal past has him as a member.
    let concurrent = sim.edit_change_at(&carl(), &before, add_step("Written while a member", None));
    sim.receive(&[concurrent]).unwrap();
    let flow = sim.flow();
    assert!(flow
        .steps
        .iter()
        .any(|s| s.title == "Written while a member"));
    assert_eq!(flow.role_of(carl().node_id().as_str()), None);
}

#[test]
fn dependents_of_a_refused_change_are_refused_and_the_rest_of_the_batch_kept() {
    let mut sim = Sim::tailor();
    let good = sim.edit_change(&alice(), add_step("Good", None));
    // Eve's change, and a change by Olga built on top of it.
    let mut fork = sim.doc.fork();
    let bad = sim.edit_change(&eve(), add_step("Bad", None));
    fork.apply_changes([automerge::Change::from_bytes(bad.bytes.clone()).unwrap()])
        .unwrap();
    let child = {
        let olga = olga();
        let mut f = fork.fork().with_actor(olga.actor());
        let flow = coflow::flow::Reader::now(&f).flow(sim.flow_id.as_str());
        let mut tx = f.transaction();
        add_step("Child", None)
            .apply(&mut tx, &flow, olga.node_id(), NOW)
            .unwrap();
        let h = tx.commit().0.unwrap();
        sign(&olga, &f, h)
    };
    let before = sim.doc.clone();
    let out = coflow::auth::accept(&mut sim.doc, &sim.flow_id, &[bad, child, good], || {
        Ok::<_, ()>(before.clone())
    })
    .unwrap();
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(out.rejected.len(), 2);
    assert!(out
        .rejected
        .iter()
        .any(|(_, r)| *r == Rejection::DependsOnRejected));
    let titles: Vec<String> = sim.flow().steps.into_iter().map(|s| s.title).collect();
    assert_eq!(titles, vec!["Good".to_string()]);
}

#[test]
fn a_change_waiting_on_a_forged_one_is_refused_not_kept() {
    let mut sim = Sim::tailor();
    let mut forged = sim.edit_change(&carl(), add_step("Forged", None));
    // Olga builds on Carl's change (as if she had seen it), then the signature gets mangled.
    let mut fork = sim.doc.fork();
    fork.apply_changes([automerge::Change::from_bytes(forged.bytes.clone()).unwrap()])
        .unwrap();
    let olga = olga();
    let mut f = fork.with_actor(olga.actor());
    let flow = coflow::flow::Reader::now(&f).flow(sim.flow_id.as_str());
    let mut tx = f.transaction();
    add_step("On top", None)
        .apply(&mut tx, &flow, olga.node_id(), NOW)
        .unwrap();
    let h = tx.commit().0.unwrap();
    let child = sign(&olga, &f, h);
    forged.signature[3] ^= 8;
    let before = sim.doc.clone();
    let out = coflow::auth::accept(&mut sim.doc, &sim.flow_id, &[forged, child], || {
        Ok::<_, ()>(before.clone())
    })
    .unwrap();
    assert!(out.accepted.is_empty() && out.pending.is_empty());
    assert!(out
        .rejected
        .contains(&(Some(h), Rejection::DependsOnRejected)));
}

// --- invites: any member may redeem a valid one for the joiner whose proof the change carries ---

/// The secret of every ticket in these tests (the joiner's; never in the document).
const SECRET: [u8; 16] = [42; 16];

fn invite_public_key() -> Vec<u8> {
    InviteKey::from_secret(&SECRET).public_key().to_vec()
}

fn create_invite(sim: &mut Sim, who: &Identity, role: Role, expires_at: i64, uses: i64) -> String {
    let known: Vec<String> = sim.flow().invites.into_iter().map(|i| i.id).collect();
    sim.edit(
        who,
        Edit::CreateInvite {
            role,
            public_key: hex(&invite_public_key()),
            expires_at,
            uses,
        },
    )
    .unwrap();
    sim.flow()
        .invites
        .into_iter()
        .find(|i| !known.contains(&i.id))
        .unwrap()
        .id
}

/// What the holder of the ticket sends to admit `joiner`: its proof, made with the secret.
fn proof_with(secret: &[u8], flow: &str, invite: &str, joiner: &Identity) -> Vec<u8> {
    InviteKey::from_secret(secret)
        .prove(
            &unhex(flow).unwrap(),
            &unhex(invite).unwrap(),
            joiner.node_id(),
        )
        .to_vec()
}

fn proof(sim: &Sim, invite: &str, joiner: &Identity) -> Vec<u8> {
    proof_with(&SECRET, sim.flow_id.as_str(), invite, joiner)
}

fn redeem(sim: &Sim, invite: &str, joiner: &Identity) -> Edit {
    Edit::Redeem {
        invite: invite.into(),
        proof: hex(&proof(sim, invite, joiner)),
        joiner: joiner.node_id().to_string(),
        name: joiner.name().into(),
    }
}

/// A redemption written by hand, as a lying member would: adds each `(joiner, proof field,
/// proof value)` as `role`, naming `invite`, then writes each of `uses_left` to the invite in
/// turn.
fn raw_redemption(
    sim: &Sim,
    who: &Identity,
    invite: &str,
    role: &str,
    joiners: &[(&Identity, &'static str, ScalarValue)],
    uses_left: &[i64],
) -> SignedChange {
    let joiners: Vec<(String, &'static str, ScalarValue)> = joiners
        .iter()
        .map(|(j, k, v)| (j.node_id().to_string(), *k, v.clone()))
        .collect();
    let me = who.node_id().to_string();
    sim.make(who, |tx, _| {
        let members = tx.get(ROOT, "members").unwrap().unwrap().1;
        let invites = tx.get(ROOT, "invites").unwrap().unwrap().1;
        let i = tx.get(&invites, invite).unwrap().unwrap().1;
        for (node, key, value) in joiners {
            let m = tx
                .put_object(&members, node.as_str(), ObjType::Map)
                .unwrap();
            tx.put(&m, "name", "Joiner").unwrap();
            tx.put(&m, "role", role).unwrap();
            tx.put(&m, "added_by", me.as_str()).unwrap();
            tx.put(&m, "added_at", NOW).unwrap();
            tx.put(&m, "removed", false).unwrap();
            tx.put(&m, "invite", invite).unwrap();
            tx.put(&m, key, value).unwrap();
        }
        for left in uses_left {
            tx.put(&i, "uses_left", *left).unwrap();
        }
    })
}

fn proof_value(sim: &Sim, invite: &str, joiner: &Identity) -> ScalarValue {
    ScalarValue::Bytes(proof(sim, invite, joiner))
}

/// Receives `change`, which must be refused, and checks that nothing moved: heads, members,
/// invites. Returns the refusal's text.
fn refused_whole(sim: &mut Sim, change: SignedChange) -> String {
    let (heads, flow) = (sim.heads(), sim.flow());
    let msg = forbidden(sim.receive(&[change]).unwrap_err());
    assert_eq!(sim.heads(), heads, "{msg}");
    assert_eq!(sim.flow().members, flow.members, "{msg}");
    assert_eq!(sim.flow().invites, flow.invites, "{msg}");
    msg
}

/// Every scalar any accepted change ever wrote, as bytes (strings as their UTF-8).
fn every_value_written(sim: &Sim) -> Vec<Vec<u8>> {
    sim.doc
        .get_changes(&[])
        .iter()
        .flat_map(|c| c.decode().operations)
        .filter_map(|op| match op.action {
            automerge::legacy::OpType::Put(ScalarValue::Bytes(b)) => Some(b),
            automerge::legacy::OpType::Put(ScalarValue::Str(s)) => Some(s.as_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

#[test]
fn any_member_redeems_a_valid_invite_and_the_document_never_holds_the_secret() {
    let mut sim = Sim::tailor();
    let inv = create_invite(&mut sim, &olga(), Role::Contributor, NOW + 3600, 2);
    // Oscar (an observer) admits Eve and Carl admits Bea: each uses one use.
    sim.edit(&oscar(), redeem(&sim, &inv, &eve())).unwrap();
    assert_eq!(sim.flow().invites[0].uses_left, 1);
    sim.edit(&carl(), redeem(&sim, &inv, &bea())).unwrap();
    let flow = sim.flow();
    assert_eq!(
        flow.role_of(eve().node_id().as_str()),
        Some(Role::Contributor)
    );
    assert_eq!(
        flow.role_of(bea().node_id().as_str()),
        Some(Role::Contributor)
    );
    assert_eq!(flow.invites[0].uses_left, 0);
    // Used up now.
    let zed = Identity::from_seed("zed", "Zed");
    let msg = forbidden(sim.refused(&alice(), redeem(&sim, &inv, &zed)));
    assert!(msg.contains("used up"), "{msg}");
    // Nothing anyone wrote is the secret, in bytes or in hex, nor its plain hash.
    use sha2::Digest;
    let written = every_value_written(&sim);
    // (The scan sees what the redemptions wrote: the joiners' proofs.)
    assert!(written.contains(&proof(&sim, &inv, &eve())));
    assert!(written.contains(&proof(&sim, &inv, &bea())));
    for bad in [
        SECRET.to_vec(),
        hex(&SECRET).into_bytes(),
        sha2::Sha256::digest(SECRET).to_vec(),
    ] {
        assert!(!written.contains(&bad));
    }
}

/// Review A.4, first finding: one change redeemed a single-use invite for several members.
#[test]
fn one_use_admits_one_member_even_in_one_change() {
    let mut sim = Sim::tailor();
    let inv = create_invite(&mut sim, &alice(), Role::Observer, NOW + 3600, 1);
    // Both joiners hold the ticket (their proofs are valid): the count alone is wrong.
    let joiners = [
        (&eve(), "invite_proof", proof_value(&sim, &inv, &eve())),
        (&bea(), "invite_proof", proof_value(&sim, &inv, &bea())),
    ];
    let c = raw_redemption(&sim, &carl(), &inv, "observer", &joiners, &[0]);
    let msg = refused_whole(&mut sim, c);
    assert!(msg.contains("one member"), "{msg}");
    // Not with a two-use invite and one write of 1 (one use spent, two members), nor by a
    // manager.
    let inv2 = create_invite(&mut sim, &alice(), Role::Observer, NOW + 3600, 2);
    let joiners = [
        (&eve(), "invite_proof", proof_value(&sim, &inv2, &eve())),
        (&bea(), "invite_proof", proof_value(&sim, &inv2, &bea())),
    ];
    let c = raw_redemption(&sim, &alice(), &inv2, "observer", &joiners, &[1]);
    let msg = refused_whole(&mut sim, c);
    assert!(msg.contains("one member"), "{msg}");
    // One of them, alone, is admitted.
    let c = raw_redemption(&sim, &carl(), &inv2, "observer", &joiners[..1], &[1]);
    sim.receive(&[c]).unwrap();
    assert_eq!(
        sim.flow().role_of(eve().node_id().as_str()),
        Some(Role::Observer)
    );
}

/// Review A.4, second finding: a redemption that wrote `uses_left` twice (0, then 50) passed, and
/// the spent single-use ticket then admitted a stranger.
#[test]
fn a_redemption_writes_uses_left_once_and_exactly_one_less() {
    let mut sim = Sim::tailor();
    let inv = create_invite(&mut sim, &alice(), Role::Observer, NOW + 3600, 1);
    let eve_proof = [(&eve(), "invite_proof", proof_value(&sim, &inv, &eve()))];
    for writes in [&[0, 50][..], &[50, 0], &[], &[5], &[1], &[-1]] {
        let c = raw_redemption(&sim, &carl(), &inv, "observer", &eve_proof, writes);
        let msg = refused_whole(&mut sim, c);
        assert!(msg.contains("use it up by one"), "{writes:?}: {msg}");
    }
    // Automerge's transaction drops a second write of the same value, so that one is crafted
    // from the honest change's operations.
    let honest = raw_redemption(&sim, &carl(), &inv, "observer", &eve_proof, &[0]);
    let mut expanded = automerge::Change::from_bytes(honest.bytes.clone())
        .unwrap()
        .decode();
    let last = expanded.operations.last().unwrap().clone();
    assert!(matches!(&last.key, automerge::legacy::Key::Map(k) if k.as_str() == "uses_left"));
    expanded.operations.push(last);
    expanded.hash = None;
    let mut twice = automerge::Change::from(expanded);
    let twice = SignedChange {
        bytes: twice.bytes().into_owned(),
        signature: carl().sign_change(&twice.hash()).to_vec(),
    };
    let msg = refused_whole(&mut sim, twice);
    assert!(msg.contains("use it up by one"), "{msg}");
    // Nothing else about the invite may change in the redeeming change, even by a manager.
    let eve_id = eve().node_id().to_string();
    let p = proof(&sim, &inv, &eve());
    let c = sim.make(&alice(), |tx, _| {
        let members = tx.get(ROOT, "members").unwrap().unwrap().1;
        let invites = tx.get(ROOT, "invites").unwrap().unwrap().1;
        let i = tx.get(&invites, inv.as_str()).unwrap().unwrap().1;
        let m = tx
            .put_object(&members, eve_id.as_str(), ObjType::Map)
            .unwrap();
        tx.put(&m, "role", "observer").unwrap();
        tx.put(&m, "invite", inv.as_str()).unwrap();
        tx.put(&m, "invite_proof", ScalarValue::Bytes(p)).unwrap();
        tx.put(&i, "uses_left", 0).unwrap();
        tx.put(&i, "revoked", true).unwrap();
    });
    let msg = refused_whole(&mut sim, c);
    assert!(msg.contains("changes nothing else"), "{msg}");
    assert_eq!(sim.flow().invites[0].uses_left, 1);
    // The honest redemption: one write, 1 → 0. Then the spent ticket admits nobody.
    sim.edit(&carl(), redeem(&sim, &inv, &eve())).unwrap();
    assert_eq!(sim.flow().invites[0].uses_left, 0);
    let zed = Identity::from_seed("zed", "Zed");
    let zed_proof = [(&zed, "invite_proof", proof_value(&sim, &inv, &zed))];
    for writes in [&[-1][..], &[0], &[50]] {
        let c = raw_redemption(&sim, &carl(), &inv, "observer", &zed_proof, writes);
        let msg = refused_whole(&mut sim, c);
        assert!(msg.contains("used up"), "{writes:?}: {msg}");
    }
}

/// Review A.4, third finding: the redeeming change stored the ticket's secret, and an observer
/// used it to redeem the remaining use of an owner invite for its own key.
#[test]
fn nothing_in_the_document_lets_a_member_redeem_for_someone_else() {
    let mut sim = Sim::tailor();
    let inv = create_invite(&mut sim, &alice(), Role::Owner, NOW + 3600, 3);
    sim.edit(&carl(), redeem(&sim, &inv, &eve())).unwrap();
    // Oscar reads Eve's proof from the document…
    let members = sim.doc.get(ROOT, "members").unwrap().unwrap().1;
    let m = sim
        .doc
        .get(&members, eve().node_id().as_str())
        .unwrap()
        .unwrap()
        .1;
    let leaked: ScalarValue = sim
        .doc
        .get(&m, "invite_proof")
        .unwrap()
        .unwrap()
        .0
        .into_scalar()
        .unwrap();
    assert!(sim.doc.get(&m, "invite_secret").unwrap().is_none());
    // …and tries it for a second key of his, and for Bea.
    let oscar2 = Identity::from_seed("oscar-2", "Oscar");
    for who in [&oscar2, &bea()] {
        let leaked = leaked.clone();
        let c = raw_redemption(
            &sim,
            &oscar(),
            &inv,
            "owner",
            &[(who, "invite_proof", leaked)],
            &[1],
        );
        let msg = refused_whole(&mut sim, c);
        assert!(msg.contains("proof does not match"), "{msg}");
    }
    // A proof made with any other secret fails the same way.
    let wrong = ScalarValue::Bytes(proof_with(&[1; 16], sim.flow_id.as_str(), &inv, &oscar2));
    let c = raw_redemption(
        &sim,
        &oscar(),
        &inv,
        "owner",
        &[(&oscar2, "invite_proof", wrong)],
        &[1],
    );
    assert!(refused_whole(&mut sim, c).contains("proof does not match"));
    // A secret-style redemption of a proof-style invite is refused whatever the secret.
    let c = raw_redemption(
        &sim,
        &oscar(),
        &inv,
        "owner",
        &[(&oscar2, "invite_secret", hex(&SECRET).into())],
        &[1],
    );
    assert!(refused_whole(&mut sim, c).contains("never its secret"));
    // Eve's own proof cannot bring her back once she is removed (it is in the document).
    sim.edit(
        &alice(),
        Edit::RemoveMember {
            member: eve().node_id().to_string(),
        },
    )
    .unwrap();
    let c = raw_redemption(
        &sim,
        &oscar(),
        &inv,
        "owner",
        &[(&eve(), "invite_proof", leaked.clone())],
        &[1],
    );
    assert!(refused_whole(&mut sim, c).contains("never been a member"));
    assert_eq!(sim.flow().role_of(oscar2.node_id().as_str()), None);
    assert_eq!(sim.flow().invites[0].uses_left, 2);
}

/// A proof names its flow and invite too: the same key and invite id in another flow (a
/// manager there can copy both) does not make it valid there.
#[test]
fn a_proof_is_bound_to_its_flow_and_invite() {
    let mut a = Sim::tailor();
    let mut b = Sim::new(&olga(), Role::Owner);
    b.edit(&olga(), add_member(&carl(), Role::Contributor))
        .unwrap();
    let id = "0102030405060708";
    for (sim, manager) in [(&mut a, alice()), (&mut b, olga())] {
        let me = manager.node_id().to_string();
        let c = sim.make(&manager, |tx, _| {
            let invites = tx.get(ROOT, "invites").unwrap().unwrap().1;
            for id in [id, "1111111111111111"] {
                let i = tx.put_object(&invites, id, ObjType::Map).unwrap();
                tx.put(&i, "role", "observer").unwrap();
                tx.put(&i, "public_key", ScalarValue::Bytes(invite_public_key()))
                    .unwrap();
                tx.put(&i, "expires_at", NOW + 3600).unwrap();
                tx.put(&i, "uses_left", 1).unwrap();
                tx.put(&i, "created_by", me.as_str()).unwrap();
                tx.put(&i, "revoked", false).unwrap();
            }
        });
        sim.receive(&[c]).unwrap();
    }
    assert_ne!(a.flow_id, b.flow_id);
    let for_a = ScalarValue::Bytes(proof(&a, id, &eve()));
    let c = raw_redemption(
        &b,
        &carl(),
        id,
        "observer",
        &[(&eve(), "invite_proof", for_a.clone())],
        &[0],
    );
    assert!(refused_whole(&mut b, c).contains("proof does not match"));
    let c = raw_redemption(
        &a,
        &carl(),
        "1111111111111111",
        "observer",
        &[(&eve(), "invite_proof", for_a.clone())],
        &[0],
    );
    assert!(refused_whole(&mut a, c).contains("proof does not match"));
    let c = raw_redemption(
        &a,
        &carl(),
        id,
        "observer",
        &[(&eve(), "invite_proof", for_a)],
        &[0],
    );
    a.receive(&[c]).unwrap();
}

/// The known limit (SECURITY.md): two redemptions of a single-use invite made at the same heads,
/// on two member nodes that have not seen each other's, are each valid in their causal past, so
/// both are accepted. Each admits only the ticket holder its proof names; one joiner asking two
/// nodes at once is admitted once.
#[test]
fn concurrent_redemptions_of_one_use_are_each_valid() {
    let mut sim = Sim::tailor();
    let inv = create_invite(&mut sim, &alice(), Role::Observer, NOW + 3600, 1);
    let heads = sim.doc.get_heads();
    let by_carl = sim.edit_change_at(&carl(), &heads, redeem(&sim, &inv, &eve()));
    let by_dana = sim.edit_change_at(&dana(), &heads, redeem(&sim, &inv, &bea()));
    let mut other = sim.clone();
    sim.receive(&[by_carl.clone(), by_dana.clone()]).unwrap();
    other.receive(&[by_dana, by_carl]).unwrap();
    assert_eq!(sim.heads(), other.heads());
    let flow = sim.flow();
    assert_eq!(flow.role_of(eve().node_id().as_str()), Some(Role::Observer));
    assert_eq!(flow.role_of(bea().node_id().as_str()), Some(Role::Observer));
    assert_eq!(flow.invites[0].uses_left, 0);
    // Once both are known, no third redemption passes.
    let zed = Identity::from_seed("zed", "Zed");
    assert!(forbidden(sim.refused(&oscar(), redeem(&sim, &inv, &zed))).contains("used up"));
    // The same joiner through two nodes at once: one member.
    let mut sim = Sim::tailor();
    let inv = create_invite(&mut sim, &alice(), Role::Observer, NOW + 3600, 2);
    let heads = sim.doc.get_heads();
    let members = sim.flow().members.len();
    let a = sim.edit_change_at(&carl(), &heads, redeem(&sim, &inv, &eve()));
    let b = sim.edit_change_at(&dana(), &heads, redeem(&sim, &inv, &eve()));
    sim.receive(&[a, b]).unwrap();
    assert_eq!(sim.flow().members.len(), members + 1);
    assert_eq!(sim.flow().invites[0].uses_left, 1);
}

#[test]
fn bad_redemptions_are_refused() {
    let mut sim = Sim::tailor();
    let inv = create_invite(&mut sim, &alice(), Role::Observer, NOW + 10, 1);
    // Not using the invite up: Carl writes the member but leaves uses_left alone.
    let eve_proof = [(&eve(), "invite_proof", proof_value(&sim, &inv, &eve()))];
    let c = raw_redemption(&sim, &carl(), &inv, "observer", &eve_proof, &[]);
    assert!(refused_whole(&mut sim, c).contains("use it up"));
    // A role other than the invite's.
    let c = raw_redemption(&sim, &carl(), &inv, "owner", &eve_proof, &[0]);
    assert!(refused_whole(&mut sim, c).contains("invite's role"));
    // The invite without a proof, or with a malformed one.
    let c = raw_redemption(
        &sim,
        &carl(),
        &inv,
        "observer",
        &[(&eve(), "name", "Eve".into())],
        &[0],
    );
    assert!(refused_whole(&mut sim, c).contains("proof"));
    let short = [(&eve(), "invite_proof", ScalarValue::Bytes(vec![1; 63]))];
    let c = raw_redemption(&sim, &carl(), &inv, "observer", &short, &[0]);
    assert!(refused_whole(&mut sim, c).contains("64 bytes"));
    // A contributor may not touch uses_left otherwise.
    let c = sim.make(&carl(), |tx, _| {
        let invites = tx.get(ROOT, "invites").unwrap().unwrap().1;
        let i = tx.get(&invites, inv.as_str()).unwrap().unwrap().1;
        tx.put(&i, "uses_left", 100).unwrap();
    });
    assert!(refused_whole(&mut sim, c).contains("invites"));
    // Revoked, then expired.
    sim.edit(
        &alice(),
        Edit::RevokeInvite {
            invite: inv.clone(),
        },
    )
    .unwrap();
    assert!(forbidden(sim.refused(&carl(), redeem(&sim, &inv, &eve()))).contains("revoked"));
    let inv2 = create_invite(&mut sim, &alice(), Role::Observer, NOW - 1, 1);
    assert!(forbidden(sim.refused(&carl(), redeem(&sim, &inv2, &eve()))).contains("expired"));
    // Observers cannot create or revoke invites.
    assert!(
        forbidden(sim.refused(&oscar(), Edit::RevokeInvite { invite: inv2 })).contains("invites")
    );
}

// --- invites made by earlier versions: their history verifies; nothing new redeems them ---

/// An invite as earlier versions made it (the SHA-256 of the secret), and a redemption as they
/// made it (the secret itself in the new member).
fn legacy_invite(sim: &mut Sim, uses: i64) -> String {
    use sha2::Digest;
    let me = alice().node_id().to_string();
    let c = sim.make(&alice(), |tx, _| {
        let invites = tx.get(ROOT, "invites").unwrap().unwrap().1;
        let i = tx
            .put_object(&invites, "0a0b0c0d0e0f0001", ObjType::Map)
            .unwrap();
        tx.put(&i, "role", "observer").unwrap();
        tx.put(
            &i,
            "secret_hash",
            ScalarValue::Bytes(sha2::Sha256::digest(SECRET).to_vec()),
        )
        .unwrap();
        tx.put(&i, "expires_at", NOW + 3600).unwrap();
        tx.put(&i, "uses_left", uses).unwrap();
        tx.put(&i, "created_by", me.as_str()).unwrap();
        tx.put(&i, "revoked", false).unwrap();
    });
    sim.receive(&[c]).unwrap();
    "0a0b0c0d0e0f0001".into()
}

#[test]
fn redemptions_made_by_earlier_versions_still_verify_under_the_new_counting() {
    let mut sim = Sim::tailor();
    let inv = legacy_invite(&mut sim, 2);
    let secret = ScalarValue::from(hex(&SECRET));
    // Two members in one change, or two writes of uses_left: refused for these invites too.
    let both = [
        (&eve(), "invite_secret", secret.clone()),
        (&bea(), "invite_secret", secret.clone()),
    ];
    let c = raw_redemption(&sim, &carl(), &inv, "observer", &both, &[1]);
    assert!(refused_whole(&mut sim, c).contains("one member"));
    let c = raw_redemption(&sim, &carl(), &inv, "observer", &both[..1], &[1, 50]);
    assert!(refused_whole(&mut sim, c).contains("use it up by one"));
    let wrong = [(&eve(), "invite_secret", ScalarValue::from(hex(&[1; 16])))];
    let c = raw_redemption(&sim, &carl(), &inv, "observer", &wrong, &[1]);
    assert!(refused_whole(&mut sim, c).contains("secret does not match"));
    // A proof cannot redeem it (there is no key to check it against).
    let p = [(&eve(), "invite_proof", proof_value(&sim, &inv, &eve()))];
    let c = raw_redemption(&sim, &carl(), &inv, "observer", &p, &[1]);
    assert!(refused_whole(&mut sim, c).contains("older version"));
    // What an earlier version wrote, one member and one write, is accepted as before.
    let c = raw_redemption(&sim, &carl(), &inv, "observer", &both[..1], &[1]);
    sim.receive(&[c]).unwrap();
    assert_eq!(
        sim.flow().role_of(eve().node_id().as_str()),
        Some(Role::Observer)
    );
    // This version never writes such a redemption.
    let edit = Edit::Redeem {
        invite: inv,
        proof: hex(&proof(&sim, "0a0b0c0d0e0f0001", &bea())),
        joiner: bea().node_id().to_string(),
        name: "Bea".into(),
    };
    let mut doc = sim.doc.fork();
    let mut tx = doc.transaction();
    let err = edit
        .apply(&mut tx, &sim.flow(), alice().node_id(), NOW)
        .unwrap_err();
    assert!(err.to_string().contains("older coflow"), "{err}");
}

#[test]
fn roles_remembered_from_earlier_changes_follow_removals() {
    // Carl writes a chain of comments while Alice removes him. The changes reach a node in two
    // batches that share a role memo: after his first comment his role is remembered, but a
    // change made after his removal must still be refused, and one concurrent with it accepted.
    let mut judge = Sim::tailor();
    let mut view = judge.clone();
    let comment = |text: &str| Edit::Comment {
        text: text.into(),
        step: None,
    };
    let c1 = view.edit_change(&carl(), comment("One"));
    view.receive(std::slice::from_ref(&c1)).unwrap();
    let after_c1 = view.heads();
    let c2 = view.edit_change_at(
        &carl(),
        &after_c1,
        comment("Two, concurrent with my removal"),
    );
    let remove = view.edit_change_at(
        &alice(),
        &after_c1,
        Edit::RemoveMember {
            member: carl().node_id().to_string(),
        },
    );
    view.receive(&[c2.clone(), remove.clone()]).unwrap();
    let c3 = view.edit_change(&carl(), comment("Three, after my removal"));

    let mut memo = coflow::auth::RoleMemo::default();
    let mut run = |batch: &[SignedChange]| {
        let before = judge.doc.clone();
        coflow::auth::accept_with(
            &mut judge.doc,
            &judge.flow_id,
            batch,
            || Ok::<_, ()>(before.clone()),
            &mut memo,
        )
        .unwrap()
    };
    let out = run(&[c1]);
    assert_eq!(out.accepted.len(), 1);
    let out = run(&[c2.clone(), remove, c3.clone()]);
    assert_eq!(out.accepted.len(), 2, "{:?}", out.rejected);
    let refused: Vec<_> = out.rejected.iter().filter_map(|(h, _)| *h).collect();
    let c3_hash = automerge::Change::from_bytes(c3.bytes).unwrap().hash();
    assert_eq!(refused, vec![c3_hash]);
    assert!(
        matches!(&out.rejected[0].1, Rejection::Forbidden(f) if f.0.contains("not a member")),
        "{:?}",
        out.rejected
    );
    let texts: Vec<String> = judge
        .flow()
        .comments
        .iter()
        .map(|c| c.text.clone())
        .collect();
    assert_eq!(texts.len(), 2);
    assert!(texts.contains(&"Two, concurrent with my removal".to_string()));
}

#[test]
fn a_role_an_author_gives_up_is_not_remembered() {
    // Carl steps down to observer, then (on top of that) adds a step: refused, even when both
    // arrive in one batch with a role memo that knew him as a contributor a change earlier.
    let mut judge = Sim::tailor();
    let mut view = judge.clone();
    let hello = view.edit_change(
        &carl(),
        Edit::Comment {
            text: "Hello".into(),
            step: None,
        },
    );
    view.receive(std::slice::from_ref(&hello)).unwrap();
    let step_down = put_member_field(&view, &carl(), &carl(), "role", "observer".into());
    view.receive(std::slice::from_ref(&step_down)).unwrap();
    let step = view.edit_change(&carl(), add_step("Hem", None));

    let mut memo = coflow::auth::RoleMemo::default();
    let before = judge.doc.clone();
    let out = coflow::auth::accept_with(
        &mut judge.doc,
        &judge.flow_id,
        &[hello, step_down, step],
        || Ok::<_, ()>(before.clone()),
        &mut memo,
    )
    .unwrap();
    assert_eq!(out.accepted.len(), 2, "{:?}", out.rejected);
    assert!(
        matches!(&out.rejected[..], [(_, Rejection::Forbidden(f))] if f.0.contains("cannot add steps")),
        "{:?}",
        out.rejected
    );
}

#[test]
fn a_large_batch_is_checked_whole_whichever_thread_checks_each_half() {
    // Large batches are parsed and verified on two threads: a bad signature in the second half
    // is still caught, the changes that depend on it are refused, and the rest are accepted.
    let judge_start = Sim::tailor();
    let carl_id = carl().node_id().to_string();
    let mut doc = judge_start.doc.fork().with_actor(carl().actor());
    let mut batch = Vec::new();
    for i in 0..600 {
        let mut tx = doc.transaction();
        let cs = tx.get(ROOT, "comments").unwrap().unwrap().1;
        let n = tx.length(&cs);
        let c = tx.insert_object(&cs, n, ObjType::Map).unwrap();
        tx.put(&c, "id", format!("n{i}")).unwrap();
        tx.put(&c, "author", carl_id.as_str()).unwrap();
        tx.put(&c, "at", NOW).unwrap();
        tx.put(&c, "text", format!("note {i}")).unwrap();
        let hash = tx
            .commit_with(automerge::transaction::CommitOptions::default().with_time(NOW))
            .0
            .unwrap();
        batch.push(sign(&carl(), &doc, hash));
    }
    batch[450].signature[7] ^= 1;
    let bad = automerge::Change::from_bytes(batch[450].bytes.clone())
        .unwrap()
        .hash();
    let mut judge = judge_start;
    let before = judge.doc.clone();
    let out = coflow::auth::accept(&mut judge.doc, &judge.flow_id, &batch, || {
        Ok::<_, ()>(before.clone())
    })
    .unwrap();
    assert_eq!(out.accepted.len(), 450);
    assert!(out
        .rejected
        .iter()
        .any(|(h, r)| *h == Some(bad) && *r == Rejection::BadSignature));
    assert_eq!(judge.flow().comments.len(), 450);
}
