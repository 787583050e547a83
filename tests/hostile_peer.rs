//! A hostile peer of our own, outside the node's process (issue #12, deliverable 9): a libp2p
//! swarm in the test that speaks `/coflow/sync/1` and `/coflow/join/2` in raw frames to real
//! `coflow node` processes on 127.0.0.1, as a stranger, as a member and as a removed member, for
//! the rules of SECURITY.md not yet tried against a real process elsewhere (tests/hostile.rs
//! covers forged signatures, a non-member's change, floods and malformed frames;
//! tests/removal_e2e.rs an honest removed member; tests/text.rs escaping).
//!
//! Each case was run once against the rule it checks broken in `src` (not committed), and
//! failed: case 1 with a non-member's message judged by `absorb` instead of
//! `absorb_as_stranger` (the holder answers a change naming a real head `unavailable`), and
//! with the revoked check before the proof check in `Repo::redeem` (the join answers differ);
//! case 2 with the removed member's message absorbed before the removal answer (its change is
//! stored, and falls); case 3 with every equivocation proving malice (the relays penalize each
//! other); case 4 with the size and text limits off (the changes are taken); case 5 with the
//! proof check skipped (a copied proof is not refused as unknown); case 6 with one actor per
//! key instead of an incarnation per process (the nodes never converge).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use automerge::{ChangeHash, ReadDoc};
use coflow::api::{Call, Reply};
use coflow::flow::{limit, Reader};
use coflow::identity::{unhex, Identity, InviteKey};
use coflow::wire::{self, join_response, sync_response, InviteTicket};
use common::peer::{
    can_stay_connected, comment, edit_at, export, hash_of, runtime, sync_request, Answer,
    HostilePeer,
};
use common::procs::{converged, eventually, shared_flow, Participant};
use libp2p::Multiaddr;
use serde_json::Value;

fn addr(p: &Participant) -> Multiaddr {
    p.addr().parse().unwrap()
}

fn show(p: &Participant, flow: &str) -> Value {
    p.json(&["flow", "show", flow])
}

fn comment_texts(p: &Participant, flow: &str) -> Vec<String> {
    show(p, flow)["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

fn member_ids(p: &Participant, flow: &str) -> Vec<String> {
    let mut ids: Vec<String> = show(p, flow)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Whether `p`'s node penalized the peer `who` (a node id), by its logs.
fn penalized(p: &Participant, who: &str) -> bool {
    p.logs()
        .lines()
        .any(|l| (l.contains("penalizing peer") || l.contains("blocking peer")) && l.contains(who))
}

fn any_penalty(p: &Participant) -> bool {
    let logs = p.logs();
    logs.contains("penalizing peer") || logs.contains("blocking peer")
}

struct Invitation {
    id: String,
    ticket: InviteTicket,
}

/// `p` invites someone to `flow` as a contributor, with extra `flow invite` arguments.
fn invite(p: &Participant, flow: &str, extra: &[&str]) -> Invitation {
    let mut args = vec!["flow", "invite", flow, "--role", "contributor"];
    args.extend_from_slice(extra);
    let v = p.json(&args);
    Invitation {
        id: v["id"].as_str().unwrap().to_string(),
        ticket: InviteTicket::decode(v["ticket"].as_str().unwrap()).unwrap(),
    }
}

fn join_request(flow: &[u8], invite: &[u8], proof: Vec<u8>) -> wire::JoinRequest {
    wire::JoinRequest {
        flow: flow.to_vec(),
        invite: invite.to_vec(),
        name: "Sam".into(),
        proof,
    }
}

fn refusal(a: &Answer) -> String {
    match a.join().result {
        Some(join_response::Result::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn heads_of(p: &Participant, flow: &str) -> Vec<String> {
    p.heads(flow).expect("the node holds the flow")
}

/// Case 1: A stranger cannot tell a node that holds flow F (as a member) from one that does not:
/// the same sync and join requests get byte-identical answers from both, and neither cuts the
/// stranger off. (Before 2026-12-01 the holder judged a change naming a real head against the
/// flow — "not a member" — and blocked the stranger, and it answered a join for a revoked
/// invite "the invite was revoked" where the other said "unknown flow or invite": REVIEW §A.5.)
#[test]
fn a_stranger_gets_the_same_bytes_from_a_node_holding_the_flow_and_one_that_does_not() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let mut bob = Participant::new(root.path(), "Bob");
    let mut zed = Participant::new(root.path(), "Zed");
    for p in [&mut alice, &mut bob, &mut zed] {
        p.start(&[]);
    }
    let flow = alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let expired = invite(&alice, &flow, &["--expires", "1s"]);
    let expired_made = Instant::now();
    let live = invite(&alice, &flow, &["--uses", "5"]);
    let revoked = invite(&alice, &flow, &[]);
    alice.json(&["flow", "invite", "revoke", &flow, &revoked.id]);
    let used = invite(&alice, &flow, &["--uses", "1"]);
    let bob_joined = bob.json(&["flow", "join", &used.ticket.encode()]);
    assert_eq!(bob_joined["id"], flow.as_str(), "{bob_joined}");
    alice.json(&["comment", &flow, "Fitting on Tuesday"]);
    converged(&flow, &[&alice, &bob]);
    // The expired invite's time is up (expiry has a resolution of a second).
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(expired_made.elapsed()));

    let heads = heads_of(&alice, &flow);
    let members = member_ids(&alice, &flow);
    let doc = export(&alice, &flow);
    let head: ChangeHash = heads[0].parse().unwrap();
    let bob_id = bob.id();
    let bob_proof = member_proof(&doc, &bob_id);

    let sam = Identity::from_seed("hostile-stranger", "Sam");
    let actor = sam.new_incarnation();
    let on_head = edit_at(&doc, &[head], &flow, &actor, &sam, comment("Let me in"));
    assert_eq!(
        automerge::Change::from_bytes(on_head.change.clone())
            .unwrap()
            .deps(),
        &[head],
        "the change names a real head of the flow"
    );
    let syncs = [
        (
            "a sync request without changes",
            sync_request(&flow, &automerge::Automerge::new(), vec![], 1),
        ),
        (
            "a change naming a real head",
            sync_request(
                &flow,
                &automerge::Automerge::new(),
                vec![on_head.clone()],
                2,
            ),
        ),
        (
            "a change naming a real head, and a sync message advertising the flow's heads",
            sync_request(&flow, &doc, vec![on_head.clone()], 3),
        ),
    ];

    let flow_bytes = unhex(&flow).unwrap();
    let invite_bytes = |i: &Invitation| unhex(&i.id).unwrap();
    // A proof by a key that is not the invite's (a stranger without the ticket).
    let wrong_key = InviteKey::from_secret(&[7; 16]);
    let bad = |i: &Invitation| wrong_key.prove(&flow_bytes, &invite_bytes(i), sam.node_id());
    let joins = [
        (
            "an unknown invite",
            join_request(&flow_bytes, &[1, 2, 3, 4, 5, 6, 7, 8], bad(&live).to_vec()),
        ),
        (
            "a live invite with a bad proof",
            join_request(&flow_bytes, &invite_bytes(&live), bad(&live).to_vec()),
        ),
        (
            "a live invite with no proof",
            join_request(&flow_bytes, &invite_bytes(&live), vec![]),
        ),
        (
            "an expired invite with a bad proof",
            join_request(&flow_bytes, &invite_bytes(&expired), bad(&expired).to_vec()),
        ),
        (
            "a revoked invite with a bad proof",
            join_request(&flow_bytes, &invite_bytes(&revoked), bad(&revoked).to_vec()),
        ),
        (
            "a used-up invite with a bad proof",
            join_request(&flow_bytes, &invite_bytes(&used), bad(&used).to_vec()),
        ),
        (
            "a used-up invite with the proof it was redeemed with (read from the document)",
            join_request(&flow_bytes, &invite_bytes(&used), bob_proof),
        ),
        (
            "a flow nobody holds",
            join_request(&[0x5a; 16], &invite_bytes(&live), bad(&live).to_vec()),
        ),
    ];
    // What the ticket's holder proves: told why it cannot get in, by the holder only.
    let holder_proof = |i: &Invitation| {
        InviteKey::from_secret(&i.ticket.secret)
            .prove(&flow_bytes, &invite_bytes(i), sam.node_id())
            .to_vec()
    };
    let ticket_holder = [
        (
            "expired",
            join_request(&flow_bytes, &invite_bytes(&expired), holder_proof(&expired)),
        ),
        (
            "revoked",
            join_request(&flow_bytes, &invite_bytes(&revoked), holder_proof(&revoked)),
        ),
        (
            "used up",
            join_request(&flow_bytes, &invite_bytes(&used), holder_proof(&used)),
        ),
    ];

    let (holder_addr, other_addr) = (addr(&alice), addr(&zed));
    runtime().block_on(async {
        let mut at_holder = HostilePeer::connect(&sam, &holder_addr)
            .await
            .expect("a stranger may connect");
        let mut at_other = HostilePeer::connect(&sam, &other_addr)
            .await
            .expect("a stranger may connect");
        for (what, req) in &syncs {
            let (h, o) = (at_holder.sync(req).await, at_other.sync(req).await);
            assert_eq!(h.bytes(), o.bytes(), "{what}: the answers differ");
            assert!(h.message().changes.is_empty(), "{what}: no content");
            assert_eq!(
                (at_holder.closed, at_other.closed),
                (false, false),
                "{what}: a stranger is not cut off for it, by either node"
            );
        }
        let unknown = "unknown flow or invite";
        for (what, req) in &joins {
            let (h, o) = (at_holder.join(req).await, at_other.join(req).await);
            assert_eq!(h.bytes(), o.bytes(), "{what}: the answers differ");
            assert_eq!(refusal(&h), unknown, "{what}");
            assert_eq!(
                (at_holder.closed, at_other.closed),
                (false, false),
                "{what}: a stranger is not cut off for it, by either node"
            );
        }
        // The documented exception: whoever proves it holds the ticket is told why by a node
        // holding the flow; the other node still knows nothing.
        for (why, req) in &ticket_holder {
            let (h, o) = (at_holder.join(req).await, at_other.join(req).await);
            assert_eq!(refusal(&o), unknown, "{why}: the other node knows nothing");
            assert!(
                refusal(&h).contains(why.split(' ').next().unwrap()),
                "the ticket holder is told the invite is {why}: {}",
                refusal(&h)
            );
        }
        assert!(at_holder.idle(Duration::from_millis(500)).await);
        assert!(at_other.idle(Duration::from_millis(500)).await);
        drop((at_holder, at_other));
        assert!(can_stay_connected(&sam, &holder_addr).await);
        assert!(can_stay_connected(&sam, &other_addr).await);
    });

    // Nothing was kept by either node, and the stranger was admitted nowhere.
    assert_eq!(heads_of(&alice, &flow), heads);
    assert_eq!(member_ids(&alice, &flow), members);
    assert!(!comment_texts(&alice, &flow).contains(&"Let me in".to_string()));
    assert_eq!(zed.json(&["flow", "list"]), serde_json::json!([]));
    let sam_id = sam.node_id().to_string();
    assert!(!penalized(&alice, &sam_id), "{}", alice.logs());
    assert!(!penalized(&zed, &sam_id), "{}", zed.logs());
}

/// A bytes field of an entry of one of the flow's maps (members, invites), as a member reads it.
fn bytes_field(doc: &automerge::Automerge, map: &str, entry: &str, key: &str) -> Vec<u8> {
    let (_, container) = doc.get(automerge::ROOT, map).unwrap().expect("the map");
    let (_, obj) = doc.get(&container, entry).unwrap().expect("the entry");
    match doc.get(&obj, key).unwrap() {
        Some((automerge::Value::Scalar(s), _)) => match s.as_ref() {
            automerge::ScalarValue::Bytes(b) => b.clone(),
            other => panic!("{key} is not bytes: {other:?}"),
        },
        other => panic!("no {key}: {other:?}"),
    }
}

/// The invite proof stored with a member admitted by invite (what every member can read).
fn member_proof(doc: &automerge::Automerge, node: &str) -> Vec<u8> {
    bytes_field(doc, coflow::flow::field::MEMBERS, node, "invite_proof")
}

/// The customer's flow with `who` added by node id as a contributor; every node listed holds
/// the same heads.
fn with_member(customer: &Participant, who: &[&Identity], others: &[&Participant]) -> String {
    let flow = if others.is_empty() {
        customer.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]
            .as_str()
            .unwrap()
            .to_string()
    } else {
        shared_flow(customer, others)
    };
    for h in who {
        customer.json(&[
            "member",
            "add",
            &flow,
            h.node_id().as_str(),
            "--role",
            "contributor",
            "--name",
            h.name(),
        ]);
    }
    let mut all = vec![customer];
    all.extend_from_slice(others);
    converged(&flow, &all);
    flow
}

/// Case 2: A removed member who pretends not to know: H, added by node id and removed, signs new
/// changes properly on the heads before its removal. Nothing it sends is taken (heads still,
/// nothing shown or stored), it is answered with the history up to and including its removal
/// and nothing later, and it is not penalized — twice. (Before the removal rule, REVIEW §A.1,
/// such a change was concurrent with the removal and accepted.)
#[test]
fn a_removed_member_who_lies_is_told_of_its_removal_and_nothing_it_sends_is_taken() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    alice.start(&[]);
    let hal = Identity::from_seed("hostile-hal", "Hal");
    let hal_id = hal.node_id().to_string();
    let flow = with_member(&alice, &[&hal], &[]);
    alice.json(&["comment", &flow, "Before the removal"]);
    let before = export(&alice, &flow);
    let before_heads = before.get_heads();
    alice.json(&["member", "remove", &flow, &hal_id]);
    let removal_heads = export(&alice, &flow).get_heads();
    alice.json(&["comment", &flow, "After the removal"]);
    let heads = heads_of(&alice, &flow);
    let a = addr(&alice);
    let actor = hal.new_incarnation();
    let lie = edit_at(
        &before,
        &before_heads,
        &flow,
        &actor,
        &hal,
        comment("I never left"),
    );
    let again = edit_at(
        &before,
        &before_heads,
        &flow,
        &actor,
        &hal,
        comment("Still here, honest"),
    );

    let (first, second) = runtime().block_on(async {
        let mut h = HostilePeer::connect(&hal, &a).await.expect("connects");
        // As a node that holds the flow up to before its removal would say it.
        let first = h
            .sync(&sync_request(&flow, &before, vec![lie.clone()], 1))
            .await;
        assert!(h.idle(Duration::from_millis(500)).await, "not cut off");
        drop(h);
        // A second, separate attempt, from nothing (its whole history is asked for).
        let mut h = HostilePeer::connect(&hal, &a)
            .await
            .expect("connects again");
        let second = h
            .sync(&sync_request(
                &flow,
                &automerge::Automerge::new(),
                vec![again.clone()],
                2,
            ))
            .await;
        assert!(h.idle(Duration::from_millis(500)).await, "not cut off");
        drop(h);
        assert!(can_stay_connected(&hal, &a).await, "not blocked");
        (first, second)
    });

    // Its answers: the history up to its removal, which its own node would apply.
    let mut learned = before.clone();
    learned.apply_changes(first.changes()).unwrap();
    let mut from_nothing = automerge::Automerge::new();
    from_nothing.apply_changes(second.changes()).unwrap();
    for (what, doc) in [("first", &learned), ("second", &from_nothing)] {
        let mut got = doc.get_heads();
        got.sort();
        let mut want = removal_heads.clone();
        want.sort();
        assert_eq!(got, want, "{what} answer: the history up to its removal");
        let seen = Reader::now(doc).flow(&flow);
        assert!(
            seen.member(&hal_id).is_some_and(|m| m.removed),
            "{what} answer: it shows the removal"
        );
        let texts: Vec<&str> = seen.comments.iter().map(|c| c.text.as_str()).collect();
        assert!(texts.contains(&"Before the removal"), "{what}: {texts:?}");
        assert!(
            !texts.contains(&"After the removal"),
            "{what} answer: nothing written after the removal"
        );
    }

    // Nothing it sent was taken.
    assert_eq!(heads_of(&alice, &flow), heads);
    let v = show(&alice, &flow);
    let texts = comment_texts(&alice, &flow);
    assert!(!texts
        .iter()
        .any(|t| t == "I never left" || t == "Still here, honest"));
    for c in [&lie, &again] {
        let h = hash_of(c).to_string();
        assert!(!v["fallen"].to_string().contains(&h), "not even stored");
    }
    assert!(!penalized(&alice, &hal_id), "{}", alice.logs());
}

/// Case 3: An equivocation relayed by honest nodes: member H signs two changes with one actor and
/// sequence number and gives one to A, the other to B, while A and B cannot reach each other.
/// Once they can, they sync: each keeps the version it saw first and refuses the other without
/// blaming the relay (SECURITY.md, "Equivocation by a member": the relays are not penalized),
/// and the work each builds on its version stays on its side (it needs the version the other
/// node refused, and that node does not ask for it again), with nobody penalized. (Before
/// 2026-11-30 the relay of the second version was blocked: one lying member set honest nodes
/// against each other, REVIEW §A.3.)
#[test]
fn honest_nodes_relaying_an_equivocation_do_not_penalise_each_other() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let mut bob = Participant::new(root.path(), "Bob");
    let faults = [("COFLOW_TEST_FAULTS", "1")];
    alice.start_with(&[], &faults);
    bob.start_with(&[], &faults);
    let hal = Identity::from_seed("hostile-hal", "Hal");
    let flow = with_member(&alice, &[&hal], &[&bob]);
    let (alice_id, bob_id) = (alice.id(), bob.id());
    let doc = export(&alice, &flow);
    let heads = doc.get_heads();
    let actor = hal.new_incarnation();
    let one = edit_at(&doc, &heads, &flow, &actor, &hal, comment("Version one"));
    let two = edit_at(&doc, &heads, &flow, &actor, &hal, comment("Version two"));
    let (c1, c2) = (
        automerge::Change::from_bytes(one.change.clone()).unwrap(),
        automerge::Change::from_bytes(two.change.clone()).unwrap(),
    );
    assert_eq!((c1.actor_id(), c1.seq()), (c2.actor_id(), c2.seq()));
    assert_eq!(c1.deps(), c2.deps());
    assert_ne!(c1.hash(), c2.hash());

    alice
        .call(Call::TestPartition {
            peers: vec![bob_id.clone()],
        })
        .unwrap();
    bob.call(Call::TestPartition {
        peers: vec![alice_id.clone()],
    })
    .unwrap();
    let (a, b) = (addr(&alice), addr(&bob));
    runtime().block_on(async {
        for (to, change) in [(&a, &one), (&b, &two)] {
            let mut h = HostilePeer::connect(&hal, to).await.expect("connects");
            let answer = h
                .sync(&sync_request(&flow, &doc, vec![change.clone()], 1))
                .await;
            answer.message();
        }
    });
    eventually(
        "each node holds the version it was sent",
        &[&alice, &bob],
        || {
            comment_texts(&alice, &flow).contains(&"Version one".to_string())
                && comment_texts(&bob, &flow).contains(&"Version two".to_string())
        },
    );
    alice.call(Call::TestHeal).unwrap();
    bob.call(Call::TestHeal).unwrap();

    // They sync: each is offered the other's version and refuses it, blaming nobody.
    eventually(
        "each has refused the other version",
        &[&alice, &bob],
        || {
            [(&alice, c2.hash()), (&bob, c1.hash())]
                .iter()
                .all(|(p, h)| {
                    p.logs().lines().any(|l| {
                        l.contains("refused a change without blaming its sender")
                            && l.contains(&h.to_string())
                            && l.contains("equivocation")
                    })
                })
        },
    );
    // Work built on each version stays on its side: each node offers its later comment to the
    // other, which cannot take it (it builds on the version it refused, which it does not ask
    // for again).
    let sent = |p: &Participant| match p.call(Call::Stats).unwrap() {
        Reply::Stats(s) => s.changes_sent,
        other => panic!("{other:?}"),
    };
    let (alice_sent, bob_sent) = (sent(&alice), sent(&bob));
    alice.json(&["comment", &flow, "Alice, after"]);
    bob.json(&["comment", &flow, "Bob, after"]);
    eventually(
        "each has offered its later work to the other",
        &[&alice, &bob],
        || sent(&alice) > alice_sent && sent(&bob) > bob_sent,
    );
    // What is not taken can only be seen over time: two anti-entropy rounds.
    std::thread::sleep(Duration::from_millis(
        2 * coflow::sync::ANTI_ENTROPY_MS + 1000,
    ));
    let a_texts = comment_texts(&alice, &flow);
    let b_texts = comment_texts(&bob, &flow);
    assert!(a_texts.contains(&"Version one".into()) && !a_texts.contains(&"Version two".into()));
    assert!(b_texts.contains(&"Version two".into()) && !b_texts.contains(&"Version one".into()));
    assert!(a_texts.contains(&"Alice, after".into()) && !a_texts.contains(&"Bob, after".into()));
    assert!(b_texts.contains(&"Bob, after".into()) && !b_texts.contains(&"Alice, after".into()));
    // Nobody penalized the other, and they are still connected.
    assert!(!penalized(&alice, &bob_id), "{}", alice.logs());
    assert!(!penalized(&bob, &alice_id), "{}", bob.logs());
    let connected = |p: &Participant, other: &str| {
        show(p, &flow)["sync"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["node_id"] == other && m["connected"] == true)
    };
    assert!(connected(&alice, &bob_id) && connected(&bob, &alice_id));
}

/// Case 4: Limits from a member: a properly signed comment of `LONG_TEXT + 1` characters, and a
/// change over `CHANGE_BYTES`, are refused — heads still, nothing shown — and, since an honest
/// node never makes or passes on either (a local edit over a limit is refused before it is
/// stored), the sender is penalized (`Rejection::TooLarge` and the policy's `Forbidden` both
/// prove malice). (Before the limits, REVIEW §A.7, a 7.5 MiB comment was accepted.)
#[test]
fn a_member_over_the_limits_is_refused_and_penalised() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    alice.start(&[]);
    let hal = Identity::from_seed("hostile-hal", "Hal");
    let hugo = Identity::from_seed("hostile-hugo", "Hugo");
    let flow = with_member(&alice, &[&hal, &hugo], &[]);
    let doc = export(&alice, &flow);
    let heads = doc.get_heads();
    let shown = heads_of(&alice, &flow);

    let long_text = "x".repeat(limit::LONG_TEXT + 1);
    let long = edit_at(
        &doc,
        &heads,
        &flow,
        &hal.new_incarnation(),
        &hal,
        comment(&long_text),
    );
    // Comments each within the text limit, of text that does not compress, together over the
    // change limit.
    let mut rng = common::Rng(0x9e37_79b9_7f4a_7c15);
    let mut noise = || -> String {
        (0..limit::LONG_TEXT)
            .map(|_| char::from(b'a' + rng.below(26) as u8))
            .collect()
    };
    let texts: Vec<String> = (0..60).map(|_| noise()).collect();
    let hugo_id = *hugo.node_id();
    let big = common::peer::change_at(
        &doc,
        &heads,
        &flow,
        &hugo.new_incarnation(),
        &hugo,
        |tx, current| {
            for t in &texts {
                comment(t)
                    .apply(tx, current, &hugo_id, common::NOW)
                    .unwrap();
            }
        },
    );
    assert!(
        big.change.len() > limit::CHANGE_BYTES,
        "{}",
        big.change.len()
    );
    assert!(big.change.len() < wire::MAX_SYNC_MESSAGE / 2);

    let a = addr(&alice);
    runtime().block_on(async {
        for (who, change) in [(&hal, &long), (&hugo, &big)] {
            let mut h = HostilePeer::connect(who, &a).await.expect("connects");
            let answer = h
                .sync(&sync_request(&flow, &doc, vec![change.clone()], 1))
                .await;
            // The node answers `unavailable`, then disconnects (the block waits for the answer
            // to go out, so the stream is not reset under it).
            assert!(
                matches!(answer, Answer::Bytes(_)),
                "{}: {answer:?}",
                who.name()
            );
            assert_eq!(
                answer.sync().result,
                Some(sync_response::Result::Unavailable(true)),
                "{}",
                who.name()
            );
            assert!(!h.idle(Duration::from_secs(2)).await, "disconnected");
            assert!(!can_stay_connected(who, &a).await, "kept out");
        }
    });
    assert_eq!(heads_of(&alice, &flow), shown);
    let texts_now = comment_texts(&alice, &flow);
    assert!(texts_now.is_empty(), "{texts_now:?}");
    let logs = alice.logs();
    assert!(
        penalized(&alice, hal.node_id().as_str()) && logs.contains("over the limit"),
        "{logs}"
    );
    assert!(
        penalized(&alice, hugo.node_id().as_str()) && logs.contains("a change may have at most"),
        "{logs}"
    );
}

/// Case 5: Invite abuse over `/coflow/join/2`: a single-use invite redeemed by two hostile
/// identities admits only the first; and what a member can read in the document (the invite's
/// public key, the proof a colleague was admitted with) redeems nothing. (REVIEW §A.4: the
/// redeeming change used to store the ticket's secret, and an observer who read it joined as
/// owner.) Checked against broken rules: with the proof check skipped in `Repo::redeem`, the
/// copied proof is no longer refused as unknown (the policy then refuses the redeeming change,
/// and the answer is "could not record the join"); a second use of a single-use invite is
/// refused twice over, by `redeem` ("used up") and by the policy in the change's past.
#[test]
fn invites_cannot_be_reused_or_redeemed_from_the_document() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let mut bob = Participant::new(root.path(), "Bob");
    alice.start(&[]);
    bob.start(&[]);
    let flow = alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let flow_bytes = unhex(&flow).unwrap();
    let once = invite(&alice, &flow, &["--uses", "1"]);
    let jo = Identity::from_seed("hostile-jo", "Jo");
    let jim = Identity::from_seed("hostile-jim", "Jim");
    let proof = |inv: &Invitation, who: &Identity| {
        InviteKey::from_secret(&inv.ticket.secret)
            .prove(&flow_bytes, &unhex(&inv.id).unwrap(), who.node_id())
            .to_vec()
    };
    let a = addr(&alice);
    runtime().block_on(async {
        let mut j = HostilePeer::connect(&jo, &a).await.unwrap();
        let first = j
            .join(&join_request(
                &flow_bytes,
                &unhex(&once.id).unwrap(),
                proof(&once, &jo),
            ))
            .await;
        assert_eq!(
            first.join().result,
            Some(join_response::Result::Joined(true))
        );
        let mut j = HostilePeer::connect(&jim, &a).await.unwrap();
        let second = j
            .join(&join_request(
                &flow_bytes,
                &unhex(&once.id).unwrap(),
                proof(&once, &jim),
            ))
            .await;
        assert!(refusal(&second).contains("used up"), "{}", refusal(&second));
        // Jo's request once more, as a node whose first answer was lost with its connection
        // sends it again: it is told it is in, and nothing more is written.
        let heads = heads_of(&alice, &flow);
        let mut j = HostilePeer::connect(&jo, &a).await.unwrap();
        let again = j
            .join(&join_request(
                &flow_bytes,
                &unhex(&once.id).unwrap(),
                proof(&once, &jo),
            ))
            .await;
        assert_eq!(
            again.join().result,
            Some(join_response::Result::Joined(true))
        );
        assert_eq!(
            heads_of(&alice, &flow),
            heads,
            "a second answer writes nothing"
        );
    });
    let mut expected = vec![alice.id(), jo.node_id().to_string()];
    expected.sort();
    assert_eq!(member_ids(&alice, &flow), expected, "only the first joined");

    // A two-use invite, one use redeemed by Bob's real node.
    let twice = invite(&alice, &flow, &["--uses", "2"]);
    bob.json(&["flow", "join", &twice.ticket.encode()]);
    converged(&flow, &[&alice, &bob]);
    let heads = heads_of(&alice, &flow);
    let twice_id = unhex(&twice.id).unwrap();
    runtime().block_on(async {
        // Jo, a member now, syncs the flow like any member and reads it.
        let mut j = HostilePeer::connect(&jo, &a).await.unwrap();
        let doc = j.pull(&flow).await;
        let mut pulled: Vec<String> = doc.get_heads().iter().map(|h| h.to_string()).collect();
        pulled.sort();
        assert_eq!(pulled, heads, "the member learned the whole flow");
        let bobs_proof = member_proof(&doc, &bob.id());
        let public_key = invite_public_key(&doc, &twice.id);
        assert_eq!(
            public_key,
            InviteKey::from_secret(&twice.ticket.secret)
                .public_key()
                .to_vec()
        );
        // Jim, Jo's accomplice, tries what Jo could read.
        let mut j = HostilePeer::connect(&jim, &a).await.unwrap();
        let mut public_key_twice = public_key.clone();
        public_key_twice.extend_from_slice(&public_key);
        for (what, attempt) in [
            ("Bob's proof", bobs_proof),
            ("the public key where a proof goes", public_key_twice),
            ("no proof", vec![]),
        ] {
            let answer = j.join(&join_request(&flow_bytes, &twice_id, attempt)).await;
            assert_eq!(refusal(&answer), "unknown flow or invite", "{what}");
        }
    });
    assert_eq!(heads_of(&alice, &flow), heads);
    let mut expected = vec![alice.id(), bob.id(), jo.node_id().to_string()];
    expected.sort();
    assert_eq!(member_ids(&alice, &flow), expected);
    let uses_left = show(&alice, &flow)["invites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == twice.id.as_str())
        .map(|i| i["uses_left"].clone());
    assert_eq!(uses_left, Some(serde_json::json!(1)));
}

fn invite_public_key(doc: &automerge::Automerge, id: &str) -> Vec<u8> {
    bytes_field(doc, coflow::flow::field::INVITES, id, "public_key")
}

/// Copies a data dir's files (not the node logs) from `from` to `to`.
fn copy_store(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("node-") && name.ends_with(".log")
            || !entry.file_type().unwrap().is_file()
        {
            continue;
        }
        std::fs::copy(entry.path(), to.join(&name)).unwrap();
    }
}

/// Removes a data dir's files other than the node logs.
fn clear_store(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if !(name.starts_with("node-") && name.ends_with(".log")) {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

/// Case 6: A node restored from a backup: B's data dir is copied while stopped, B writes on, the
/// copy is put back and B writes more (offline and online). Each process writes under its own
/// incarnation, so no (actor, seq) is reused: every node converges on the same heads with every
/// comment, and nobody is penalized. (Before incarnations, REVIEW §A.2, the peers logged
/// "duplicate seq" for the restored node, blocked it, and the flow stayed split.)
#[test]
fn a_node_restored_from_a_backup_converges_and_nobody_is_penalised() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let mut bob = Participant::new(root.path(), "Bob");
    let mut carol = Participant::new(root.path(), "Carol");
    for p in [&mut alice, &mut bob, &mut carol] {
        p.start(&[]);
    }
    let flow = shared_flow(&alice, &[&bob, &carol]);
    bob.json(&["comment", &flow, "Bob 1"]);
    converged(&flow, &[&alice, &bob, &carol]);

    bob.stop();
    let backup = root.path().join("bob-backup");
    std::fs::create_dir(&backup).unwrap();
    copy_store(&bob.home, &backup);
    bob.restart_same_port(&[]);
    bob.json(&["comment", &flow, "Bob 2"]);
    bob.json(&["comment", &flow, "Bob 3"]);
    converged(&flow, &[&alice, &bob, &carol]);

    bob.stop();
    clear_store(&bob.home);
    copy_store(&backup, &bob.home);
    assert!(
        !comment_texts(&bob, &flow).contains(&"Bob 2".to_string()),
        "the backup is older"
    );
    bob.json(&["comment", &flow, "Bob 4, offline"]);
    bob.restart_same_port(&[]);
    bob.json(&["comment", &flow, "Bob 5"]);
    alice.json(&["comment", &flow, "Alice 1"]);
    converged(&flow, &[&alice, &bob, &carol]);

    for p in [&alice, &bob, &carol] {
        let texts = comment_texts(p, &flow);
        for t in [
            "Bob 1",
            "Bob 2",
            "Bob 3",
            "Bob 4, offline",
            "Bob 5",
            "Alice 1",
        ] {
            assert!(
                texts.contains(&t.to_string()),
                "{} lacks {t}: {texts:?}",
                p.name
            );
        }
        assert_eq!(
            show(p, &flow)["fallen"],
            serde_json::json!([]),
            "{}",
            p.name
        );
        assert!(!any_penalty(p), "{}: {}", p.name, p.logs());
        assert!(!p.logs().contains("duplicate seq"), "{}", p.name);
    }
}
