//! Property: the verdict on every change depends only on its causal history.
//!
//! Random members (and a stranger) make random edits — many of them forbidden — on their own
//! diverging copies, merging each other's work now and then. The resulting changes are then
//! delivered to fresh nodes in different orders and batchings. Every node must accept exactly the
//! same changes and end with the same heads and the same flow. With an equivocation injected,
//! each node holds one version and what builds on it, the rest is the same everywhere, and no
//! relay is blamed.

mod common;

use std::collections::{BTreeSet, HashSet};

use automerge::transaction::CommitOptions;
use automerge::{Automerge, Change, ChangeHash, ReadDoc};
use coflow::auth::{self, SignedChange};
use coflow::flow::{Edit, FlowId, FlowStatus, Mode, Reader, Role, StepStatus, Who};
use coflow::identity::Identity;
use coflow::repo::Repo;
use coflow::store::Store;
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
fn history(script: &[(u8, u8, u8, u8)]) -> (FlowId, Vec<SignedChange>) {
    let people = vec![alice(), olga(), carl(), oscar(), eve()];
    let sim = Sim::tailor();
    let mut all: Vec<SignedChange> = sim.log.clone();
    let mut views: Vec<Automerge> = people
        .iter()
        .map(|p| sim.doc.fork().with_actor(p.actor()))
        .collect();
    // Each participant's last backup of its copy.
    let mut backups: Vec<Automerge> = views.clone();
    for &(who, action, kind, arg) in script {
        let w = who as usize % people.len();
        if action % 8 == 6 && kind % 2 == 0 {
            backups[w] = views[w].fork().with_actor(people[w].actor());
            continue;
        }
        if action % 8 == 7 && kind % 2 == 0 {
            // Restored from the backup: what was written since is gone from this copy, and it
            // writes on as a new incarnation, as a restored node does.
            views[w] = backups[w].fork().with_actor(people[w].new_incarnation());
            continue;
        }
        if action % 4 == 0 {
            // Merge another participant's view into this one (raw: views are not judged).
            let other = (w + 1 + arg as usize) % people.len();
            let mut theirs = views[other].fork();
            views[w].merge(&mut theirs).unwrap();
            continue;
        }
        let flow = Reader::now(&views[w]).flow(sim.flow_id.as_str());
        let Some(edit) = edit_for(kind, arg, &flow, &people) else {
            continue;
        };
        let me = *people[w].node_id();
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

fn deliver(flow_id: &FlowId, node: &mut Node, batch: &[SignedChange]) -> Vec<SignedChange> {
    let before = node.doc.clone();
    let out = auth::accept(&mut node.doc, flow_id, batch, || {
        Ok::<_, ()>(before.clone())
    })
    .unwrap();
    node.accepted.extend(out.accepted.iter().map(|v| v.hash()));
    resend(&out.pending)
}

/// Changes that waited for others, signed again for the next delivery.
fn resend(pending: &[auth::Verified]) -> Vec<SignedChange> {
    pending
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
fn deliver_shuffled(flow_id: &FlowId, changes: &[SignedChange], seed: u64) -> Node {
    let mut node = Node {
        doc: Automerge::new(),
        accepted: BTreeSet::new(),
    };
    shuffled(changes, seed, |batch| deliver(flow_id, &mut node, batch));
    node
}

/// Hands the changes to `sink` in a random order that respects dependencies, in random batch
/// sizes; `sink` gives back the changes that wait for others, to be handed over again.
fn shuffled(
    changes: &[SignedChange],
    seed: u64,
    mut sink: impl FnMut(&[SignedChange]) -> Vec<SignedChange>,
) {
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
        waiting = sink(&batch);
    }
}

/// A node with a store receiving `batch`: what waits for other changes is handed back.
fn deliver_repo(repo: &mut Repo, flow_id: &FlowId, batch: &[SignedChange]) -> Vec<SignedChange> {
    resend(&repo.receive(flow_id, batch).unwrap().pending)
}

fn fresh_repo() -> Repo {
    Repo::new(Store::in_memory().unwrap(), bea())
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
                Reader::now(&node.doc).flow(flow_id.as_str()),
                Reader::now(&whole.doc).flow(flow_id.as_str())
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// The removal rule (a removed member's concurrent changes fall) and restored copies
    /// writing as new incarnations: nodes with stores that receive the same changes in
    /// different orders and batchings hold the same flow, the same fallen changes and the
    /// same heads.
    #[test]
    fn the_flow_as_it_stands_depends_only_on_the_changes_held(
        script in prop::collection::vec((0u8..5, 0u8..8, any::<u8>(), any::<u8>()), 10..60),
        seeds in (any::<u64>(), any::<u64>()),
    ) {
        let (flow_id, changes) = history(&script);
        let mut whole = fresh_repo();
        let left = deliver_repo(&mut whole, &flow_id, &changes);
        prop_assert!(left.is_empty() || whole.holds(&flow_id).unwrap());
        let expected = whole.show(flow_id.as_str()).unwrap();
        for seed in [seeds.0, seeds.1] {
            let mut node = fresh_repo();
            shuffled(&changes, seed, |batch| {
                let waiting = deliver_repo(&mut node, &flow_id, batch);
                // Read between batches, as the engine does, so a stale summary would show.
                node.summary(&flow_id).unwrap();
                waiting
            });
            let view = node.show(flow_id.as_str()).unwrap();
            prop_assert_eq!(&view.flow, &expected.flow);
            prop_assert_eq!(&view.fallen, &expected.fallen);
            // The summary the engine reads instead of the document agrees with it.
            let summary = node.summary(&flow_id).unwrap().unwrap().clone();
            let mut doc_heads: Vec<String> = node
                .doc(&flow_id)
                .unwrap()
                .get_heads()
                .iter()
                .map(|h| coflow::identity::hex(&h.0))
                .collect();
            doc_heads.sort();
            prop_assert_eq!(&summary.heads, &doc_heads);
            let members: Vec<(String, Role)> = view
                .flow
                .members
                .iter()
                .filter(|m| !m.removed)
                .map(|m| (m.node_id.clone(), m.role))
                .collect();
            prop_assert_eq!(&summary.members, &members);
            let (mut a, mut b) = (view.heads.clone(), expected.heads.clone());
            a.sort();
            b.sort();
            prop_assert_eq!(a, b);
        }
    }
}

#[test]
fn the_removal_histories_have_fallen_changes_and_restores() {
    // Fixed scripts in which a removed member writes on, and a participant writes after a
    // restore, so the property above is not vacuous.
    let mut fell = 0;
    let mut incarnations = 0;
    for start in 0..16u8 {
        let script: Vec<(u8, u8, u8, u8)> = (0..60u8)
            .map(|i| {
                let j = i.wrapping_add(start.wrapping_mul(31));
                (j % 5, 1 + j % 7, j.wrapping_mul(7) & !1, j.wrapping_mul(13))
            })
            .collect();
        let (flow_id, changes) = history(&script);
        let mut repo = fresh_repo();
        deliver_repo(&mut repo, &flow_id, &changes);
        fell += repo.show(flow_id.as_str()).unwrap().fallen.len();
        incarnations += changes
            .iter()
            .filter(|c| {
                Change::from_bytes(c.bytes.clone())
                    .unwrap()
                    .actor_id()
                    .to_bytes()
                    .len()
                    > 32
            })
            .count();
    }
    assert!(fell > 0, "no change fell in any history");
    assert!(incarnations > 0, "no restored copy wrote");
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

/// A comment by `who` on `doc` (under `doc`'s actor), signed.
fn comment_on(doc: &mut Automerge, who: &Identity, flow_id: &FlowId, text: &str) -> SignedChange {
    let flow = Reader::now(doc).flow(flow_id.as_str());
    let mut tx = doc.transaction();
    Edit::Comment {
        text: text.into(),
        step: None,
    }
    .apply(&mut tx, &flow, who.node_id(), NOW)
    .unwrap();
    let hash = tx
        .commit_with(CommitOptions::default().with_time(NOW))
        .0
        .unwrap();
    sign(who, doc, hash)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// An equivocation: after a random history, a member signs two changes with one actor and
    /// sequence number on the same heads, another member builds on each, and a third change
    /// is concurrent with both. Whatever order and batching a node receives everything in, it
    /// holds exactly one version, with what builds on it, and never the other or what builds
    /// on that; no refusal among them proves a relay malicious (only the equivocator); the
    /// rest is the same on every node; and nodes that hold the same version hold the same
    /// heads and flow.
    #[test]
    fn an_equivocation_splits_only_what_builds_on_it(
        script in prop::collection::vec((0u8..5, 0u8..8, any::<u8>(), any::<u8>()), 10..40),
        seeds in prop::collection::vec(any::<u64>(), 3),
    ) {
        let (flow_id, mut changes) = history(&script);
        let mut whole = Node { doc: Automerge::new(), accepted: BTreeSet::new() };
        deliver(&flow_id, &mut whole, &changes);
        let flow = Reader::now(&whole.doc).flow(flow_id.as_str());
        let current: Vec<Identity> = [alice(), olga(), carl(), oscar()]
            .into_iter()
            .filter(|p| flow.member(p.node_id().as_str()).is_some_and(|m| !m.removed))
            .collect();
        prop_assume!(current.len() >= 2);
        let (liar, builder) = (&current[current.len() - 1], &current[0]);
        let mut lineages: Vec<[ChangeHash; 2]> = Vec::new();
        for text in ["one version", "another version"] {
            let mut fork = whole.doc.fork().with_actor(liar.actor());
            let version = comment_on(&mut fork, liar, &flow_id, text);
            let mut on_it = fork.fork().with_actor(builder.new_incarnation());
            let built = comment_on(&mut on_it, builder, &flow_id, &format!("on {text}"));
            lineages.push([hash_of(&version), hash_of(&built)]);
            changes.extend([version, built]);
        }
        let mut aside = whole.doc.fork().with_actor(builder.new_incarnation());
        let concurrent = comment_on(&mut aside, builder, &flow_id, "meanwhile");
        let concurrent_hash = hash_of(&concurrent);
        changes.push(concurrent);
        let equivocated: BTreeSet<ChangeHash> = lineages.iter().flatten().copied().collect();
        let relay = *bea().node_id();
        let mut nodes: Vec<(usize, Node)> = Vec::new();
        for seed in seeds {
            let mut node = Node { doc: Automerge::new(), accepted: BTreeSet::new() };
            let mut blamed = Vec::new();
            shuffled(&changes, seed, |batch| {
                let before = node.doc.clone();
                let out = auth::accept(&mut node.doc, &flow_id, batch, || Ok::<_, ()>(before.clone()))
                    .unwrap();
                node.accepted.extend(out.accepted.iter().map(|v| v.hash()));
                for (hash, why) in &out.rejected {
                    if hash.is_some_and(|h| equivocated.contains(&h)) && why.proves_malice(&relay) {
                        blamed.push(format!("{why:?}"));
                    }
                }
                resend(&out.pending)
            });
            prop_assert!(blamed.is_empty(), "a relay was blamed: {:?}", blamed);
            let held: Vec<usize> = (0..2)
                .filter(|i| node.accepted.contains(&lineages[*i][0]))
                .collect();
            prop_assert_eq!(held.len(), 1, "exactly one version is held");
            let kept = held[0];
            for (i, lineage) in lineages.iter().enumerate() {
                prop_assert_eq!(node.accepted.contains(&lineage[1]), i == kept);
            }
            prop_assert!(node.accepted.contains(&concurrent_hash));
            let rest: BTreeSet<ChangeHash> =
                node.accepted.difference(&equivocated).copied().collect();
            let mut expected = whole.accepted.clone();
            expected.insert(concurrent_hash);
            prop_assert_eq!(rest, expected);
            nodes.push((kept, node));
        }
        for (i, (kept_a, a)) in nodes.iter().enumerate() {
            for (kept_b, b) in &nodes[i + 1..] {
                if kept_a == kept_b {
                    let (mut ha, mut hb) = (a.doc.get_heads(), b.doc.get_heads());
                    ha.sort();
                    hb.sort();
                    prop_assert_eq!(ha, hb);
                    prop_assert_eq!(Reader::now(&a.doc).flow(flow_id.as_str()), Reader::now(&b.doc).flow(flow_id.as_str()));
                }
            }
        }
    }
}
