//! Unit tests of single parts of the engine, with virtual time: the engine's clock is whatever
//! `tick` and `peer_connected` are given.

use super::*;
use crate::flow::{Edit, Role};
use crate::identity::Identity;
use crate::store::Store;

fn engine(seed: &str) -> Engine {
    let id = Identity::from_seed(seed, seed);
    Engine::new(Repo::new(Store::in_memory().unwrap(), id))
}

fn drain(e: &mut Engine) -> Vec<Io> {
    std::iter::from_fn(|| e.next_io()).collect()
}

/// A ticket naming `via` (no such node needs to exist: the engine only asks).
fn ticket(via: &NodeId) -> wire::InviteTicket {
    wire::InviteTicket {
        flow: "0123456789abcdef0123456789abcdef".into(),
        invite: "00112233".into(),
        secret: [7; 16],
        addrs: vec![format!("/ip4/127.0.0.1/tcp/1/p2p/{via}").parse().unwrap()],
    }
}

#[test]
fn a_join_nobody_answers_fails_at_its_deadline_and_is_forgotten() {
    let mut e = engine("joiner");
    let member = Identity::from_seed("member", "Member").node_id().clone();
    e.tick(1_000);
    let t = ticket(&member);
    let via = e.start_join(&t, "Joiner").unwrap();
    assert_eq!(via, vec![member.clone()]);
    let asked = drain(&mut e);
    assert!(
        matches!(&asked[..], [Io::Join { peer, .. }] if *peer == member),
        "{asked:?}"
    );
    e.tick(1_000 + JOIN_PATIENCE_MS - 1);
    assert!(e.is_joining(&t.flow), "still within its patience");
    assert!(!drain(&mut e)
        .iter()
        .any(|io| matches!(io, Io::Event(Event::JoinFailed { .. }))));
    e.tick(1_000 + JOIN_PATIENCE_MS);
    assert!(!e.is_joining(&t.flow), "expired");
    let failed: Vec<String> = drain(&mut e)
        .into_iter()
        .filter_map(|io| match io {
            Io::Event(Event::JoinFailed { flow, reason }) => Some(format!("{flow}: {reason}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        [format!("{}: no member node answered in time", t.flow)]
    );
}

#[test]
fn a_join_refused_by_every_member_fails_at_once() {
    let mut e = engine("joiner");
    let member = Identity::from_seed("member", "Member").node_id().clone();
    let t = ticket(&member);
    e.start_join(&t, "Joiner").unwrap();
    drain(&mut e);
    e.join_failed(&member, &t.flow, "refused".into());
    assert!(!e.is_joining(&t.flow));
    assert!(drain(&mut e).iter().any(
        |io| matches!(io, Io::Event(Event::JoinFailed { reason, .. }) if reason == "refused")
    ));
}

/// A flow of this node and `others` other members, all connected; what a local change then
/// sends: (sync requests, announcements).
fn one_local_change(others: usize) -> (usize, usize) {
    let mut e = engine("author");
    let flow = e.repo().create_flow("T", "N", Role::Customer).unwrap();
    let ids: Vec<NodeId> = (0..others)
        .map(|i| {
            Identity::from_seed(&format!("other-{i}"), "Other")
                .node_id()
                .clone()
        })
        .collect();
    for id in &ids {
        let add = Edit::AddMember {
            node_id: id.to_string(),
            role: Role::Contributor,
            name: None,
        };
        e.repo().edit(&flow, &add).unwrap();
    }
    for id in &ids {
        e.peer_connected(id.clone(), 1);
    }
    // Each conversation has a request in flight; answering "nothing to say" lets it rest, so
    // the change below starts new exchanges.
    for io in drain(&mut e) {
        if let Io::Sync { peer, flow, .. } = io {
            e.handle_sync_response(&peer, &flow, wire::SyncResponse { result: None });
        }
    }
    drain(&mut e);
    e.repo()
        .edit(
            &flow,
            &Edit::Comment {
                text: "news".into(),
                step: None,
            },
        )
        .unwrap();
    e.local_change(&flow);
    let out = drain(&mut e);
    let syncs = out
        .iter()
        .filter(|io| matches!(io, Io::Sync { .. }))
        .count();
    let announced = out
        .iter()
        .filter(|io| matches!(io, Io::Announce { .. }))
        .count();
    (syncs, announced)
}

#[test]
fn a_small_connected_flow_is_pushed_to_all_and_a_larger_one_announced() {
    assert_eq!(
        one_local_change(PUSH_TO_ALL_MAX),
        (PUSH_TO_ALL_MAX, 0),
        "at the threshold: pushed to each, not announced"
    );
    let (_, announced) = one_local_change(PUSH_TO_ALL_MAX + 1);
    assert_eq!(announced, 1, "above it: announced");
}
