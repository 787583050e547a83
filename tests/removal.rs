//! Removal that takes effect (SECURITY.md, "Removal"): a removed member's changes concurrent
//! with its removal fall, with everything built on them, on every node and in every arrival
//! order; conflicting removals are settled by seniority; a restored copy of a data dir writes
//! under its own incarnation and rejoins without splitting the flow.

mod common;

use coflow::auth::SignedChange;
use coflow::flow::{Edit, Role};
use coflow::identity::Identity;
use coflow::repo::Repo;
use coflow::store::Store;
use common::{alice, carl, dana, eve, olga, oscar};

fn node(who: &Identity) -> Repo {
    Repo::new(Store::in_memory().unwrap(), who.clone())
}

/// Everything `from` holds of `flow` that `to` does not, received by `to`. Returns how many
/// changes `to` refused.
fn send(from: &Repo, to: &mut Repo, flow: &coflow::flow::FlowId) -> usize {
    let changes: Vec<SignedChange> = from.signed_changes(flow).unwrap();
    let out = to.receive(flow, &changes).unwrap();
    assert!(
        out.pending.is_empty(),
        "nothing waits: {:?}",
        out.pending.len()
    );
    out.rejected.len()
}

fn member(who: &Identity, role: Role) -> Edit {
    Edit::AddMember {
        node_id: who.node_id().to_string(),
        role,
        name: Some(who.name().to_string()),
    }
}

fn remove(who: &Identity) -> Edit {
    Edit::RemoveMember {
        member: who.node_id().to_string(),
    }
}

fn comment(text: &str) -> Edit {
    Edit::Comment {
        text: text.into(),
        step: None,
    }
}

fn comments(repo: &mut Repo, flow: &str) -> Vec<String> {
    let mut c: Vec<String> = repo
        .show(flow)
        .unwrap()
        .flow
        .comments
        .into_iter()
        .map(|c| c.text)
        .collect();
    c.sort();
    c
}

/// What a flow shows, to compare nodes: heads, members (with removal), steps, comments.
fn shown(repo: &mut Repo, flow: &str) -> String {
    let v = repo.show(flow).unwrap();
    let mut members: Vec<String> = v
        .flow
        .members
        .iter()
        .map(|m| format!("{}:{}:{}", m.name, m.role, m.removed))
        .collect();
    members.sort();
    let mut steps: Vec<String> = v.flow.steps.iter().map(|s| s.title.clone()).collect();
    steps.sort();
    let mut heads = v.heads.clone();
    heads.sort();
    format!("{heads:?} {members:?} {steps:?} {:?}", comments(repo, flow))
}

/// Alice (customer) with Olga (owner) and Carl (contributor), all in sync.
fn tailor() -> (Repo, Repo, Repo, coflow::flow::FlowId) {
    let mut a = node(&alice());
    let flow = a
        .create_flow("Navy suit", "A suit", Role::Customer)
        .unwrap();
    a.edit(flow.as_str(), &member(&olga(), Role::Owner))
        .unwrap();
    a.edit(flow.as_str(), &member(&carl(), Role::Contributor))
        .unwrap();
    let (mut o, mut c) = (node(&olga()), node(&carl()));
    assert_eq!(send(&a, &mut o, &flow), 0);
    assert_eq!(send(&a, &mut c, &flow), 0);
    (a, o, c, flow)
}

#[test]
fn a_change_made_after_the_removal_unknown_to_its_author_falls_in_either_order() {
    let (mut a, mut o, mut c, flow) = tailor();
    a.edit(flow.as_str(), &remove(&carl())).unwrap();
    // Carl never hears of it (content goes to members only) and comments.
    c.edit(flow.as_str(), &comment("still here")).unwrap();
    // Alice gets the comment after her removal; Olga before it.
    assert_eq!(send(&c, &mut o, &flow), 0);
    assert_eq!(comments(&mut o, flow.as_str()), ["still here"]);
    assert_eq!(send(&c, &mut a, &flow), 0, "valid, not refused: it falls");
    assert_eq!(send(&a, &mut o, &flow), 0);
    assert_eq!(send(&o, &mut a, &flow), 0);
    for r in [&mut a, &mut o] {
        assert!(
            comments(r, flow.as_str()).is_empty(),
            "the removed member's comment fell"
        );
        let v = r.show(flow.as_str()).unwrap();
        assert_eq!(v.fallen.len(), 1);
        assert!(v.flow.members.iter().any(|m| m.name == "Carl" && m.removed));
    }
    assert_eq!(shown(&mut a, flow.as_str()), shown(&mut o, flow.as_str()));
    // Carl's node receives the flow up to the removal and sees itself removed; his own comment
    // falls there too, and he can no longer edit.
    assert_eq!(send(&a, &mut c, &flow), 0);
    assert!(comments(&mut c, flow.as_str()).is_empty());
    assert_eq!(shown(&mut c, flow.as_str()), shown(&mut a, flow.as_str()));
    let err = c.edit(flow.as_str(), &comment("and again")).unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");
}

#[test]
fn work_built_on_a_fallen_change_falls_with_it_and_its_author_writes_on() {
    let (mut a, mut o, mut c, flow) = tailor();
    a.edit(flow.as_str(), &remove(&carl())).unwrap();
    c.edit(flow.as_str(), &comment("from the removed")).unwrap();
    send(&c, &mut o, &flow);
    // Olga builds on Carl's comment before she learns of the removal.
    o.edit(
        flow.as_str(),
        &Edit::AddStep {
            title: "Cut".into(),
            detail: None,
            assignee: None,
            customer_involved: false,
            due: None,
        },
    )
    .unwrap();
    assert_eq!(send(&a, &mut o, &flow), 0);
    let v = o.show(flow.as_str()).unwrap();
    assert!(
        v.flow.steps.is_empty(),
        "Olga's step built on the fallen comment"
    );
    assert_eq!(v.fallen.len(), 2);
    // Her node tells her which of hers fell, and what it did.
    assert_eq!(v.fallen_mine.len(), 1, "{:?}", v.fallen_mine);
    assert!(
        v.fallen_mine[0].summary.contains("Cut"),
        "{:?}",
        v.fallen_mine
    );
    assert!(v.fallen.contains(&v.fallen_mine[0].hash));
    // Alice's node, which made none of them, lists none as its own.
    assert!(a.show(flow.as_str()).unwrap().fallen_mine.is_empty());
    // She makes it again, on the flow as it stands, and everyone takes it.
    o.edit(
        flow.as_str(),
        &Edit::AddStep {
            title: "Cut again".into(),
            detail: None,
            assignee: None,
            customer_involved: false,
            due: None,
        },
    )
    .unwrap();
    assert_eq!(send(&o, &mut a, &flow), 0);
    assert_eq!(shown(&mut a, flow.as_str()), shown(&mut o, flow.as_str()));
    let steps: Vec<String> = a
        .show(flow.as_str())
        .unwrap()
        .flow
        .steps
        .into_iter()
        .map(|s| s.title)
        .collect();
    assert_eq!(steps, ["Cut again"]);
}

#[test]
fn a_removed_owner_cannot_bring_in_a_second_identity() {
    // Review A.1: a removed owner added a second key of his as owner, which re-added him.
    let mut a = node(&alice());
    let flow = a
        .create_flow("Navy suit", "A suit", Role::Customer)
        .unwrap();
    a.edit(flow.as_str(), &member(&oscar(), Role::Owner))
        .unwrap();
    let mut os = node(&oscar());
    send(&a, &mut os, &flow);
    a.edit(flow.as_str(), &remove(&oscar())).unwrap();
    os.edit(flow.as_str(), &member(&eve(), Role::Owner))
        .unwrap();
    let mut ev = node(&eve());
    send(&os, &mut ev, &flow);
    ev.edit(flow.as_str(), &comment("Oscar (back)")).unwrap();
    assert_eq!(send(&ev, &mut a, &flow), 0);
    let v = a.show(flow.as_str()).unwrap();
    assert!(v.flow.comments.is_empty());
    assert!(
        v.flow.role_of(eve().node_id().as_str()).is_none(),
        "Eve never became a member"
    );
    assert!(v.flow.role_of(oscar().node_id().as_str()).is_none());
    assert_eq!(v.fallen.len(), 2);
}

#[test]
fn the_more_senior_of_two_conflicting_removals_wins() {
    // Olga (owner) removes Dana while Alice (customer) removes Olga: Alice's removal stands,
    // so Olga's falls and Dana stays.
    let (mut a, mut o, _, flow) = tailor();
    a.edit(flow.as_str(), &member(&dana(), Role::Contributor))
        .unwrap();
    send(&a, &mut o, &flow);
    a.edit(flow.as_str(), &remove(&olga())).unwrap();
    o.edit(flow.as_str(), &remove(&dana())).unwrap();
    send(&o, &mut a, &flow);
    send(&a, &mut o, &flow);
    for r in [&mut a, &mut o] {
        let f = r.show(flow.as_str()).unwrap().flow;
        assert_eq!(
            f.role_of(dana().node_id().as_str()),
            Some(Role::Contributor)
        );
        assert_eq!(f.role_of(olga().node_id().as_str()), None);
    }
    assert_eq!(shown(&mut a, flow.as_str()), shown(&mut o, flow.as_str()));
}

#[test]
fn two_owners_removing_each_other_agree_everywhere_on_one() {
    let mut a = node(&alice());
    let flow = a.create_flow("Club", "A season", Role::Customer).unwrap();
    a.edit(flow.as_str(), &member(&olga(), Role::Owner))
        .unwrap();
    a.edit(flow.as_str(), &member(&oscar(), Role::Owner))
        .unwrap();
    let (mut o, mut s) = (node(&olga()), node(&oscar()));
    send(&a, &mut o, &flow);
    send(&a, &mut s, &flow);
    o.edit(flow.as_str(), &remove(&oscar())).unwrap();
    s.edit(flow.as_str(), &remove(&olga())).unwrap();
    // Different orders on the three nodes.
    send(&o, &mut a, &flow);
    send(&s, &mut a, &flow);
    send(&s, &mut o, &flow);
    send(&o, &mut s, &flow);
    let views: Vec<String> = [&mut a, &mut o, &mut s]
        .into_iter()
        .map(|r| shown(r, flow.as_str()))
        .collect();
    assert_eq!(views[0], views[1]);
    assert_eq!(views[0], views[2]);
    let f = a.show(flow.as_str()).unwrap().flow;
    let standing = [olga(), oscar()]
        .iter()
        .filter(|w| f.role_of(w.node_id().as_str()).is_some())
        .count();
    assert_eq!(standing, 1, "exactly one of the two removals takes effect");
}

#[test]
fn a_restored_data_dir_rejoins_without_splitting_the_flow() {
    let home = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let id = Identity::generate("Alice").unwrap();
    let flow = {
        let mut a = Repo::init(home.path(), id.clone()).unwrap();
        let flow = a
            .create_flow("Navy suit", "A suit", Role::Customer)
            .unwrap();
        a.edit(flow.as_str(), &member(&olga(), Role::Owner))
            .unwrap();
        flow
    };
    for f in std::fs::read_dir(home.path()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), backup.path().join(f.file_name())).unwrap();
    }
    let mut o = node(&olga());
    {
        let mut a = Repo::open(home.path()).unwrap();
        a.edit(flow.as_str(), &comment("one")).unwrap();
        a.edit(flow.as_str(), &comment("two")).unwrap();
        assert_eq!(send(&a, &mut o, &flow), 0);
    }
    // The data dir is put back from the backup; Alice writes again, unaware of "one", "two".
    let mut restored = Repo::open(backup.path()).unwrap();
    assert_eq!(restored.identity().node_id(), id.node_id());
    restored
        .edit(flow.as_str(), &comment("after the restore"))
        .unwrap();
    assert_eq!(
        send(&restored, &mut o, &flow),
        0,
        "no duplicate sequence numbers"
    );
    assert_eq!(send(&o, &mut restored, &flow), 0);
    assert_eq!(
        comments(&mut restored, flow.as_str()),
        ["after the restore", "one", "two"]
    );
    assert_eq!(
        shown(&mut restored, flow.as_str()),
        shown(&mut o, flow.as_str())
    );
}
