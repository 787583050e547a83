//! Property: the verdict on every change depends only on its causal history.
//!
//! Random members (and a stranger) make random edits — many of them forbidden — on their own
//! diverging copies, merging each other's work now and then. The resulting changes are then
//! delivered to fresh nodes in different orders and batchings. Every node must accept exactly the
//! same changes and end with the same heads and the same flow.

mod common;

use std::collections::{BTreeSet, HashSet};

use automerge::transaction::CommitOptions;
use automerge::{Automerge, Change, ChangeHash, ReadDoc};
use coflow::auth::{self, SignedChange};
use coflow::flow::{Edit, FlowStatus, Mode, Reader, Role, StepStatus, Who};
use coflow::identity::Identity;
use common::*;
use proptest::prelude::*;

fn edit_for(kind: u8, arg: u8, flow: &coflow::flow::Flow, people: &[Identity]) -> Option<Edit> {
    let step = |i: u8| {
        flow.steps
            .get(i as usize % flow.steps.len().max(1))
            .map(|s| s.id.clone())
    };
    let person = |i: u8| people[i as usize % people.len()].node_id().to_string();
    Some(match kind % 11 {
        0 | 1 => Edit::AddStep {
            title: format!("step {arg}"),
            detail: None,
            assignee: (arg.is_multiple_of(3)).then(|| person(arg)),
            customer_involved: arg.is_multiple_of(2),
            due: None,
        },
        2 | 3 => Edit::SetStepStatus {
            step: step(arg)?,
            status: StepStatus::ALL[arg as usize % StepStatus::ALL.len()],
        },
        4 => Edit::AssignStep {
            step: step(arg)?,
            assignee: Some(person(arg / 3)),
        },
        5 => Edit::Comment {
            text: format!("comment {arg}"),
            step: None,
        },
        6 => Edit::SetTitle {
            title: format!("title {arg}"),
        },
        7 => Edit::SetStatus {
            status: FlowStatus::ALL[arg as usize % 3],
        },
        8 => Edit::RemoveMember {
            member: person(arg),
        },
        9 => Edit::NewDecision {
            question: format!("question {arg}"),
            options: vec!["a".into(), "b".into()],
            who: if arg.is_multiple_of(2) {
                Who::Customer
            } else {
                Who::Members
            },
            mode: if arg.is_multiple_of(3) {
                Mode::Vote
            } else {
                Mode::Choice
            },
            step: None,
        },
        _ => Edit::Choose {
            decision: flow
                .decisions
                .get(arg as usize % flow.decisions.len().max(1))?
                .id
                .clone(),
            option: if arg.is_multiple_of(2) {
                "a".into()
            } else {
                "b".into()
            },
        },
    })
}

/// Builds a history: each participant edits its own copy; `merge` steps copy another's changes.
fn history(script: &[(u8, u8, u8, u8)]) -> (String, Vec<SignedChange>) {
    let people = vec![alice(), olga(), carl(), oscar(), eve()];
    let sim = Sim::tailor();
    let mut all: Vec<SignedChange> = sim.log.clone();
    let mut views: Vec<Automerge> = people
        .iter()
        .map(|p| sim.doc.fork().with_actor(p.actor()))
        .collect();
    for &(who, action, kind, arg) in script {
        let w = who as usize % people.len();
        if action % 4 == 0 {
            // Merge another participant's view into this one (raw: views are not judged).
            let other = (w + 1 + arg as usize) % people.len();
            let mut theirs = views[other].fork();
            views[w].merge(&mut theirs).unwrap();
            continue;
        }
        let flow = Reader::now(&views[w]).flow(&sim.flow_id);
        let Some(edit) = edit_for(kind, arg, &flow, &people) else {
            continue;
        };
        let me = people[w].node_id().clone();
        let mut tx = views[w].transaction();
        if edit.apply(&mut tx, &flow, &me, NOW).is_err() {
            tx.rollback();
            continue;
        }
        let Some(hash) = tx.commit_with(CommitOptions::default().with_time(NOW)).0 else {
            continue;
        };
        all.push(sign(&people[w], &views[w], hash));
    }
    (sim.flow_id, all)
}

struct Node {
    doc: Automerge,
    accepted: BTreeSet<ChangeHash>,
}

fn deliver(flow_id: &str, node: &mut Node, batch: &[SignedChange]) -> Vec<SignedChange> {
    let before = node.doc.clone();
    let out = auth::accept(&mut node.doc, flow_id, batch, || {
        Ok::<_, ()>(before.clone())
    })
    .unwrap();
    node.accepted.extend(out.accepted.iter().map(|v| v.hash()));
    out.pending
        .iter()
        .map(|v| {
            let mut c = v.change.clone();
            SignedChange {
                bytes: c.bytes().into_owned(),
                signature: v.signature.to_vec(),
            }
        })
        .collect()
}

fn hash_of(c: &SignedChange) -> ChangeHash {
    Change::from_bytes(c.bytes.clone()).unwrap().hash()
}

/// Delivers the changes in a random order that respects dependencies, in random batch sizes.
fn deliver_shuffled(flow_id: &str, changes: &[SignedChange], seed: u64) -> Node {
    let mut node = Node {
        doc: Automerge::new(),
        accepted: BTreeSet::new(),
    };
    let deps: Vec<(ChangeHash, Vec<ChangeHash>)> = changes
        .iter()
        .map(|c| {
            let ch = Change::from_bytes(c.bytes.clone()).unwrap();
            (ch.hash(), ch.deps().to_vec())
        })
        .collect();
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut sent: HashSet<ChangeHash> = HashSet::new();
    let mut left: Vec<usize> = (0..changes.len()).collect();
    let mut waiting: Vec<SignedChange> = Vec::new();
    while !left.is_empty() {
        let ready: Vec<usize> = left
            .iter()
            .copied()
            .filter(|&i| deps[i].1.iter().all(|d| sent.contains(d)))
            .collect();
        let take = 1 + (next() as usize % 4).min(ready.len() - 1);
        let mut batch: Vec<SignedChange> = std::mem::take(&mut waiting);
        for _ in 0..take {
            let pick = ready[next() as usize % ready.len()];
            if sent.insert(deps[pick].0) {
                batch.push(changes[pick].clone());
                left.retain(|&i| i != pick);
            }
        }
        waiting = deliver(flow_id, &mut node, &batch);
    }
    node
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn verdicts_depend_only_on_causal_history(
        script in prop::collection::vec((0u8..5, 0u8..8, any::<u8>(), any::<u8>()), 10..60),
        seeds in (any::<u64>(), any::<u64>()),
    ) {
        let (flow_id, changes) = history(&script);
        // One node receives everything at once, two more in random orders and batch sizes.
        let mut whole = Node { doc: Automerge::new(), accepted: BTreeSet::new() };
        let left = deliver(&flow_id, &mut whole, &changes);
        prop_assert!(left.is_empty() || left.iter().all(|c| !whole.accepted.contains(&hash_of(c))));
        for seed in [seeds.0, seeds.1] {
            let node = deliver_shuffled(&flow_id, &changes, seed);
            prop_assert_eq!(&node.accepted, &whole.accepted);
            let mut a = node.doc.get_heads();
            let mut b = whole.doc.get_heads();
            a.sort();
            b.sort();
            prop_assert_eq!(a, b);
            prop_assert_eq!(
                Reader::now(&node.doc).flow(&flow_id),
                Reader::now(&whole.doc).flow(&flow_id)
            );
        }
        // Nothing a stranger wrote was accepted.
        let eve = eve().actor();
        for h in &whole.accepted {
            let c = whole.doc.get_change_by_hash(h).unwrap();
            prop_assert_ne!(c.actor_id(), &eve);
        }
    }
}

#[test]
fn the_sim_history_has_both_verdicts() {
    // A fixed script whose history holds accepted and refused changes, so the property above
    // is not vacuous.
    let script: Vec<(u8, u8, u8, u8)> = (0..60u8)
        .map(|i| (i % 5, 1 + i % 3, i.wrapping_mul(7), i.wrapping_mul(13)))
        .collect();
    let (flow_id, changes) = history(&script);
    let mut node = Node {
        doc: Automerge::new(),
        accepted: BTreeSet::new(),
    };
    deliver(&flow_id, &mut node, &changes);
    assert!(node.accepted.len() > 10, "accepted {}", node.accepted.len());
    assert!(
        node.accepted.len() < changes.len(),
        "some changes must be refused"
    );
    let _ = Role::Customer;
}
