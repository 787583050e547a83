//! Removal that takes effect: which accepted changes fall because their author was removed.
//!
//! The policy ([`super::policy`]) judges each change in its causal past, so a change made
//! after its author saw its removal is refused. That alone leaves a hole: a removed member
//! never receives its removal (content goes to members only), so whatever it writes is
//! *concurrent* with the removal, and the causal past of such a change still shows its author
//! a member. Round 1 accepted those changes, forever.
//!
//! The rule here closes the hole. Among the changes a node holds that pass the policy (the
//! *valid* set), a removal of member X is *effective* unless it falls itself; when it is, every
//! change by X concurrent with it (neither in its past nor in its future) falls, and so does
//! every change that depends on a fallen one. What stands is the valid set minus the fallen
//! set; since the fallen set is closed under descendants, what stands is closed under
//! ancestors, so it is the causal past of its own heads, and the flow is read at those heads.
//!
//! Removals can conflict: two owners removing each other at once would each fell the other's
//! removal. They are settled by seniority, as Keyhive settles concurrent revocations: removals
//! are taken in order of their author's role in the removal's past (customer, owner,
//! contributor, observer; a contributor or observer can only remove itself), ties broken by
//! change hash; a removal is effective unless the effective ones before it fell it. If a later
//! removal fells an earlier effective one (it fells a change that removal depends on), the
//! earlier one is set aside and the order is run again without it, until no effective removal
//! falls. Every step depends only on the valid set, so every node holding the same changes
//! reaches the same fallen set, whatever order they arrived in.
//!
//! Fallen changes stay in the store and in the document (they are valid, and a later, more
//! senior removal could make them stand again); they are never read as part of the flow.

use std::collections::{HashMap, HashSet};

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{Automerge, Change, ChangeHash, Prop, ReadDoc, ScalarValue};

/// One change as the removal rule sees it: its place in the graph and its author's key.
#[derive(Clone, Debug)]
pub struct ChangeNode {
    pub hash: ChangeHash,
    pub deps: Vec<ChangeHash>,
    pub author: Option<[u8; 32]>,
}

/// Every change of `doc`, as the removal rule sees it (Automerge's metadata: no change is
/// rebuilt).
pub fn graph_of(doc: &Automerge) -> Vec<ChangeNode> {
    doc.get_changes_meta(&[])
        .into_iter()
        .map(|m| ChangeNode {
            author: actor_key(m.actor.to_bytes()).and_then(|k| k.try_into().ok()),
            hash: m.hash,
            deps: m.deps,
        })
        .collect()
}

use crate::flow::{field, schema, Reader, Role};
use crate::identity::{actor_key, NodeId};

/// A change that marks a member removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub change: ChangeHash,
    /// The removed member's public key.
    pub target: [u8; 32],
    /// The seniority of the removal's author in the removal's past (0 = customer).
    pub rank: u8,
}

/// Seniority of a role when removals conflict: lower is more senior.
pub fn rank(role: Role) -> u8 {
    match role {
        Role::Customer => 0,
        Role::Owner => 1,
        Role::Contributor => 2,
        Role::Observer => 3,
    }
}

/// The removals `change` makes. `change` must be applied to `doc` and accepted by the policy
/// (so its author is a member in its past, and what it marks removed are existing members).
pub fn removals_in(doc: &Automerge, change: &Change, author: &NodeId) -> Vec<Removal> {
    let Ok(decoded) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
    else {
        return Vec::new();
    };
    let mut targets = Vec::new();
    for op in &decoded.operations {
        let removes = matches!(&op.key, Key::Map(k) if k == schema::member::REMOVED)
            && matches!(op.action, OpType::Put(ScalarValue::Boolean(true)));
        let ObjectId::Id(id) = &op.obj else { continue };
        if !removes {
            continue;
        }
        let Ok((obj, _)) = doc.import(&format!("{}@{}", id.0, id.1.to_hex_string())) else {
            continue;
        };
        let Ok(parents) = doc.parents(&obj) else {
            continue;
        };
        let path = parents.path();
        let node = match path.as_slice() {
            [(_, Prop::Map(members)), (_, Prop::Map(node))] if members == field::MEMBERS => node,
            _ => continue,
        };
        if let Ok(n) = node.parse::<NodeId>() {
            if !targets.contains(n.public_key()) {
                targets.push(*n.public_key());
            }
        }
    }
    if targets.is_empty() {
        return Vec::new();
    }
    let role = Reader::at(doc, change.deps())
        .role_of(author.as_str())
        .unwrap_or(Role::Observer);
    targets
        .into_iter()
        .map(|target| Removal {
            change: change.hash(),
            target,
            rank: rank(role),
        })
        .collect()
}

/// The change graph of a flow's valid changes, indexed.
struct Graph {
    index: HashMap<ChangeHash, usize>,
    hashes: Vec<ChangeHash>,
    deps: Vec<Vec<usize>>,
    children: Vec<Vec<usize>>,
    authors: Vec<Option<[u8; 32]>>,
}

impl Graph {
    fn new(changes: &[ChangeNode]) -> Graph {
        let index: HashMap<ChangeHash, usize> = changes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.hash, i))
            .collect();
        let mut deps = vec![Vec::new(); changes.len()];
        let mut children = vec![Vec::new(); changes.len()];
        for (i, c) in changes.iter().enumerate() {
            for d in &c.deps {
                if let Some(&j) = index.get(d) {
                    deps[i].push(j);
                    children[j].push(i);
                }
            }
        }
        Graph {
            index,
            hashes: changes.iter().map(|c| c.hash).collect(),
            deps,
            children,
            authors: changes.iter().map(|c| c.author).collect(),
        }
    }

    /// Everything reachable from `start` along `edges`, `start` excluded.
    fn reach(&self, start: usize, edges: &[Vec<usize>]) -> Vec<bool> {
        let mut seen = vec![false; self.hashes.len()];
        let mut stack: Vec<usize> = edges[start].clone();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i], true) {
                stack.extend(edges[i].iter().copied());
            }
        }
        seen
    }
}

/// What falls of a flow's valid changes, given the removals among them (see the module doc).
/// `changes` must hold every valid change of the flow, dependencies before dependents or not.
pub fn fallen(changes: &[ChangeNode], removals: &[Removal]) -> HashSet<ChangeHash> {
    if removals.is_empty() {
        return HashSet::new();
    }
    let g = Graph::new(changes);
    let mut order: Vec<(&Removal, usize)> = removals
        .iter()
        .filter_map(|r| g.index.get(&r.change).map(|&i| (r, i)))
        .collect();
    order.sort_by_key(|(r, _)| (r.rank, r.change));
    // What each removal fells on its own: its target's changes concurrent with it, and their
    // descendants.
    let fells: Vec<Vec<bool>> = order
        .iter()
        .map(|(r, i)| {
            let past = g.reach(*i, &g.deps);
            let future = g.reach(*i, &g.children);
            let mut fell = vec![false; g.hashes.len()];
            let mut stack: Vec<usize> = (0..g.hashes.len())
                .filter(|&c| c != *i && !past[c] && !future[c] && g.authors[c] == Some(r.target))
                .collect();
            while let Some(c) = stack.pop() {
                if !std::mem::replace(&mut fell[c], true) {
                    stack.extend(g.children[c].iter().copied());
                }
            }
            fell
        })
        .collect();
    let mut set_aside = vec![false; order.len()];
    loop {
        let mut fell = vec![false; g.hashes.len()];
        let mut effective = Vec::new();
        for (k, (_, i)) in order.iter().enumerate() {
            if set_aside[k] || fell[*i] {
                continue;
            }
            effective.push(k);
            for (f, &x) in fell.iter_mut().zip(&fells[k]) {
                *f |= x;
            }
        }
        let felled: Vec<usize> = effective
            .into_iter()
            .filter(|&k| fell[order[k].1])
            .collect();
        if felled.is_empty() {
            return (0..g.hashes.len())
                .filter(|&c| fell[c])
                .map(|c| g.hashes[c])
                .collect();
        }
        for k in felled {
            set_aside[k] = true;
        }
    }
}

/// The heads of what stands: the changes not fallen that no other standing change depends on.
pub fn standing_heads(changes: &[ChangeNode], fallen: &HashSet<ChangeHash>) -> Vec<ChangeHash> {
    let mut depended: HashSet<ChangeHash> = HashSet::new();
    for c in changes.iter().filter(|c| !fallen.contains(&c.hash)) {
        depended.extend(c.deps.iter().copied());
    }
    let mut heads: Vec<ChangeHash> = changes
        .iter()
        .map(|c| c.hash)
        .filter(|h| !fallen.contains(h) && !depended.contains(h))
        .collect();
    heads.sort();
    heads
}
