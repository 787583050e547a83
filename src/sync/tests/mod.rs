//! Unit tests of single parts of the engine, with virtual time: the engine's clock is whatever
//! `tick` and `peer_connected` are given.

use super::*;
use crate::flow::{Edit, Role};
use crate::identity::Identity;
use crate::store::MemStore;

/// The engines here keep their store in memory.
type Engine = super::Engine<MemStore>;

fn engine(seed: &str) -> Engine {
    let id = Identity::from_seed(seed, seed);
    Engine::new(Repo::new(MemStore::new(), id))
}

fn drain(e: &mut Engine) -> Vec<Io> {
    std::iter::from_fn(|| e.next_io()).collect()
}

/// A ticket naming `via` (no such node needs to exist: the engine only asks).
fn ticket(via: &NodeId) -> wire::InviteTicket {
    wire::InviteTicket {
        flow: "0123456789abcdef0123456789abcdef".parse().unwrap(),
        invite: "00112233".into(),
        secret: [7; 16],
        addrs: vec![format!("/ip4/127.0.0.1/tcp/1/p2p/{via}").parse().unwrap()],
    }
}

#[test]
fn a_join_nobody_answers_fails_at_its_deadline_and_is_forgotten() {
    let mut e = engine("joiner");
    let member = *Identity::from_seed("member", "Member").node_id();
    e.tick(1_000);
    let t = ticket(&member);
    let via = e.start_join(&t, "Joiner").unwrap();
    assert_eq!(via, vec![member]);
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
    let member = *Identity::from_seed("member", "Member").node_id();
    let t = ticket(&member);
    e.start_join(&t, "Joiner").unwrap();
    drain(&mut e);
    e.join_failed(&member, &t.flow, "refused".into());
    assert!(!e.is_joining(&t.flow));
    assert!(drain(&mut e).iter().any(
        |io| matches!(io, Io::Event(Event::JoinFailed { reason, .. }) if reason == "refused")
    ));
}

/// A flow `e`'s node starts, with `n` other members added by node id (seeded from `seed`).
fn flow_with_others(e: &mut Engine, seed: &str, n: usize) -> (FlowId, Vec<NodeId>) {
    let flow = e.repo().create_flow("T", "N", Role::Customer).unwrap();
    let ids: Vec<NodeId> = (0..n)
        .map(|i| {
            *Identity::from_seed(&format!("{seed}-{i}"), "Peer")
                .node_id()
        })
        .collect();
    for id in &ids {
        let add = Edit::AddMember {
            node_id: id.to_string(),
            role: Role::Contributor,
            name: None,
        };
        e.repo().edit(flow.as_str(), &add).unwrap();
    }
    (flow, ids)
}

/// A flow of this node and `others` other members, all connected; what a local change then
/// sends: (sync requests, announcements).
fn one_local_change(others: usize) -> (usize, usize) {
    let mut e = engine("author");
    let (flow, ids) = flow_with_others(&mut e, "other", others);
    for id in &ids {
        e.peer_connected(*id, 1);
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
            flow.as_str(),
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

/// A node holding a flow with `n` other members (node ids returned), all connected, every
/// conversation at rest.
fn member_of_flow(n: usize) -> (Engine, FlowId, Vec<NodeId>) {
    let mut e = engine("member");
    let (flow, ids) = flow_with_others(&mut e, "peer", n);
    e.member_topics();
    for id in &ids {
        e.peer_connected(*id, 1);
    }
    rest(&mut e);
    (e, flow, ids)
}

/// Answers every sync request in the outbox with "not served here", which lets each
/// conversation rest at once (the peers stand for nodes that do not hold the flow yet); returns
/// what else went out.
fn rest(e: &mut Engine) -> Vec<Io> {
    let unavailable = wire::SyncResponse {
        result: Some(sync_response::Result::Unavailable(true)),
    };
    let mut other = Vec::new();
    loop {
        let out = drain(e);
        if out.is_empty() {
            return other;
        }
        for io in out {
            match io {
                Io::Sync { peer, flow, .. } => {
                    e.handle_sync_response(&peer, &flow, unavailable.clone())
                }
                io => other.push(io),
            }
        }
    }
}

fn unknown_head(i: u8) -> ChangeHash {
    ChangeHash([i; 32])
}

fn verdicts(out: &[Io]) -> Vec<(Vec<u8>, Verdict)> {
    out.iter()
        .filter_map(|io| match io {
            Io::Validate { id, verdict, .. } => Some((id.clone(), *verdict)),
            _ => None,
        })
        .collect()
}

fn syncs_to(out: &[Io]) -> Vec<NodeId> {
    out.iter()
        .filter_map(|io| match io {
            Io::Sync { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

#[test]
fn an_announcement_of_missing_heads_waits_for_them_and_is_dropped_after_its_patience() {
    let (mut e, flow, ids) = member_of_flow(2);
    let topic = wire::flow_topic(&flow);
    e.tick(10_000);
    rest(&mut e);
    let data = wire::encode_announce(&[unknown_head(1)]);
    e.handle_announcement(vec![1], &ids[0], Some(&ids[0]), &topic, &data);
    let out = drain(&mut e);
    assert!(
        verdicts(&out).is_empty(),
        "held back while the heads are missing"
    );
    assert_eq!(
        syncs_to(&out),
        vec![ids[0]],
        "fetched from the announcer"
    );
    e.tick(10_000 + ANNOUNCE_PATIENCE_MS - 1);
    assert!(
        verdicts(&rest(&mut e)).is_empty(),
        "still within its patience"
    );
    e.tick(10_000 + ANNOUNCE_PATIENCE_MS);
    assert_eq!(
        verdicts(&rest(&mut e)),
        [(vec![1], Verdict::Ignore)],
        "dropped unforwarded: its changes never came"
    );
    // One naming heads this node holds passes at once; one from a non-member is ignored.
    let ours = e.repo().doc(&flow).unwrap().get_heads();
    let held = wire::encode_announce(&ours);
    e.handle_announcement(vec![2], &ids[1], Some(&ids[1]), &topic, &held);
    let stranger = *Identity::from_seed("stranger", "S").node_id();
    e.handle_announcement(vec![3], &ids[1], Some(&stranger), &topic, &held);
    assert_eq!(
        verdicts(&drain(&mut e)),
        [(vec![2], Verdict::Accept), (vec![3], Verdict::Ignore)]
    );
}

#[test]
fn waiting_announcements_are_bounded_and_the_oldest_goes_first() {
    let (mut e, flow, ids) = member_of_flow(1);
    let topic = wire::flow_topic(&flow);
    for i in 0..=MAX_WAITING_ANNOUNCEMENTS {
        let data = wire::encode_announce(&[unknown_head((i % 250) as u8 + 1)]);
        let id = (i as u32).to_le_bytes().to_vec();
        e.handle_announcement(id, &ids[0], Some(&ids[0]), &topic, &data);
    }
    let dropped = verdicts(&drain(&mut e));
    assert_eq!(
        dropped,
        [(0u32.to_le_bytes().to_vec(), Verdict::Ignore)],
        "one over the bound: the oldest is dropped"
    );
}

#[test]
fn one_fetch_per_flow_at_a_time_and_the_next_announcer_after_it() {
    let (mut e, flow, ids) = member_of_flow(2);
    let topic = wire::flow_topic(&flow);
    let (a, b) = (&ids[0], &ids[1]);
    e.handle_announcement(
        vec![1],
        a,
        Some(a),
        &topic,
        &wire::encode_announce(&[unknown_head(1)]),
    );
    let first = drain(&mut e);
    assert_eq!(syncs_to(&first), vec![*a]);
    e.handle_announcement(
        vec![2],
        b,
        Some(b),
        &topic,
        &wire::encode_announce(&[unknown_head(2)]),
    );
    assert!(
        syncs_to(&drain(&mut e)).is_empty(),
        "B's heads wait behind the fetch from A"
    );
    // The fetch from A ends without the heads: the fetch from B starts.
    let unavailable = wire::SyncResponse {
        result: Some(sync_response::Result::Unavailable(true)),
    };
    e.handle_sync_response(a, &flow, unavailable);
    assert_eq!(syncs_to(&drain(&mut e)), vec![*b]);
}

#[test]
fn anti_entropy_restarts_at_most_a_few_quiet_conversations_per_tick() {
    let n = ANTI_ENTROPY_PEERS + 3;
    let (mut e, _flow, _ids) = member_of_flow(n);
    // Every conversation is quiet and no peer is known to hold this node's heads (they said
    // nothing): each tick past the quiet time restarts ANTI_ENTROPY_PEERS of them.
    e.tick(1 + ANTI_ENTROPY_MS);
    let restarted = syncs_to(&drain(&mut e));
    assert_eq!(restarted.len(), ANTI_ENTROPY_PEERS, "{restarted:?}");
    let unique: HashSet<&NodeId> = restarted.iter().collect();
    assert_eq!(unique.len(), ANTI_ENTROPY_PEERS);
}

#[test]
fn member_links_ask_for_enough_members_and_holders_come_first() {
    let mut e = engine("member");
    let (flow, ids) = flow_with_others(&mut e, "link", MIN_MEMBER_LINKS + 3);
    e.member_topics();
    // One member is connected; the last one announced, so it is known to hold the flow.
    e.peer_connected(ids[0], 1);
    rest(&mut e);
    let holder = *ids.last().unwrap();
    let topic = wire::flow_topic(&flow);
    let heads = e.repo().doc(&flow).unwrap().get_heads();
    e.handle_announcement(
        vec![9],
        &ids[0],
        Some(&holder),
        &topic,
        &wire::encode_announce(&heads),
    );
    drain(&mut e);
    let (_must, more) = e.reach_plan();
    assert_eq!(more.len(), 1);
    let (wanted, candidates) = &more[0];
    assert_eq!(
        *wanted,
        MIN_MEMBER_LINKS - 1,
        "enough to reach MIN_MEMBER_LINKS"
    );
    assert_eq!(
        candidates.len(),
        ids.len() - 1,
        "every member not connected"
    );
    assert_eq!(
        candidates[0], holder,
        "a member known to hold the flow first"
    );
    assert!(!candidates.contains(&ids[0]));
}

#[test]
fn after_a_lost_request_the_next_fetch_goes_out_at_once() {
    let (mut e, flow, ids) = member_of_flow(1);
    let topic = wire::flow_topic(&flow);
    let a = &ids[0];
    e.handle_announcement(
        vec![1],
        a,
        Some(a),
        &topic,
        &wire::encode_announce(&[unknown_head(1)]),
    );
    assert_eq!(syncs_to(&drain(&mut e)), vec![*a]);
    // The request times out; A announces again: the fetch is asked for now, not after an
    // anti-entropy round.
    e.sync_failed(a, &flow);
    e.handle_announcement(
        vec![2],
        a,
        Some(a),
        &topic,
        &wire::encode_announce(&[unknown_head(2)]),
    );
    assert_eq!(syncs_to(&drain(&mut e)), vec![*a]);
}

/// Runs every exchange between `a` and `b` until both outboxes are empty.
fn exchange(a: &mut Engine, b: &mut Engine) {
    while one_way(a, b) | one_way(b, a) {}
}

/// Delivers `from`'s sync requests to `to` and the answers back; whether there were any.
fn one_way(from: &mut Engine, to: &mut Engine) -> bool {
    let (from_id, to_id) = (*from.node_id(), *to.node_id());
    let mut moved = false;
    for io in drain(from) {
        if let Io::Sync {
            peer,
            flow,
            request,
        } = io
        {
            if peer == to_id {
                moved = true;
                let response = to.handle_sync_request(&from_id, request);
                from.handle_sync_response(&peer, &flow, response);
            }
        }
    }
    moved
}

#[test]
fn arrivals_and_what_the_repository_does_are_stamped_with_the_time_given() {
    let mut a = engine("author");
    let (_flow, ids) = flow_with_others(&mut a, "given", 1);
    let mut b = Engine::new(Repo::new(
        MemStore::new(),
        Identity::from_seed("given-0", "Peer"),
    ));
    assert_eq!(*b.node_id(), ids[0]);
    // A wall-clock time no clock of this machine shows now.
    let unix_ms = 1_234_567_890_123;
    a.set_now(5, unix_ms);
    b.set_now(5, unix_ms);
    assert_eq!(b.repo().now(), unix_ms / 1000, "the repository runs at the time given");
    a.peer_connected(*b.node_id(), 5);
    exchange(&mut a, &mut b);
    let arrivals: Vec<i64> = b.stats.arrivals.iter().map(|x| x.at_ms).collect();
    assert!(!arrivals.is_empty(), "the flow's changes arrived at B");
    assert!(arrivals.iter().all(|at| *at == unix_ms), "{arrivals:?}");
    assert_eq!(b.last_heard.get(a.node_id()), Some(&(unix_ms / 1000)));
}

#[test]
fn next_wake_reports_a_joins_deadline_and_nothing_once_it_passed() {
    let mut e = engine("joiner");
    e.set_now(1_000, 0);
    assert_eq!(e.next_wake(), None, "nothing to do");
    let member = *Identity::from_seed("member", "Member").node_id();
    e.start_join(&ticket(&member), "Joiner").unwrap();
    drain(&mut e);
    assert_eq!(e.next_wake(), Some(1_000 + JOIN_PATIENCE_MS));
    e.tick(1_000 + JOIN_PATIENCE_MS);
    drain(&mut e);
    assert_eq!(e.next_wake(), None);
}

#[test]
fn next_wake_reports_an_announcements_patience() {
    let mut e = engine("member");
    let flow = e.repo().create_flow("T", "N", Role::Customer).unwrap();
    let announcer = *Identity::from_seed("announcer", "A").node_id();
    e.set_now(3_000, 0);
    e.waiting.push_back(Waiting {
        id: vec![1],
        via: announcer,
        flow,
        heads: vec![unknown_head(1)],
        since: 3_000,
    });
    assert_eq!(e.next_wake(), Some(3_000 + ANNOUNCE_PATIENCE_MS));
}

#[test]
fn next_wake_reports_when_a_quiet_conversation_comes_of_age() {
    // Every conversation rests at engine time 1, its peer not known to hold our heads.
    let (mut e, _flow, _ids) = member_of_flow(1);
    assert_eq!(e.next_wake(), Some(1 + RECHECK_MS), "a member connected: looked at soon");
    e.tick(1 + RECHECK_MS);
    assert!(syncs_to(&drain(&mut e)).is_empty(), "not quiet long enough yet");
    assert_eq!(e.next_wake(), Some(1 + ANTI_ENTROPY_MS));
    e.tick(1 + ANTI_ENTROPY_MS);
    assert_eq!(syncs_to(&drain(&mut e)).len(), 1, "restarted when it came of age");
}

#[test]
fn anti_entropy_looks_at_a_bounded_share_of_the_flows_and_at_each_in_turn() {
    let mut e = engine("many");
    let n = 2 * ANTI_ENTROPY_FLOWS_PER_TICK + 5;
    let mut all: HashSet<FlowId> = HashSet::default();
    for i in 0..n {
        all.insert(e.repo().create_flow(&format!("T{i}"), "N", Role::Customer).unwrap());
    }
    let mut seen: HashSet<FlowId> = HashSet::default();
    for _ in 0..3 {
        let batch = e.rotation();
        assert!(batch.len() <= ANTI_ENTROPY_FLOWS_PER_TICK, "{}", batch.len());
        seen.extend(batch);
    }
    assert_eq!(seen, all, "three ticks reach every one of {n} flows");
    // And round again: the fourth batch starts where the first did.
    let again = e.rotation();
    assert_eq!(again.len(), ANTI_ENTROPY_FLOWS_PER_TICK);
}

#[test]
fn ticking_more_often_does_not_rotate_more_often() {
    let mut e = engine("often");
    for i in 0..ANTI_ENTROPY_FLOWS_PER_TICK + 5 {
        e.repo()
            .create_flow(&format!("T{i}"), "N", Role::Customer)
            .unwrap();
    }
    e.tick(1_000);
    let first = e.schedule.cursor;
    assert!(first.is_some());
    e.tick(1_000 + RECHECK_MS - 1);
    assert_eq!(e.schedule.cursor, first, "too soon: the rotation waits");
    e.tick(1_000 + RECHECK_MS);
    assert_ne!(e.schedule.cursor, first, "a second on: it moves on");
}

mod in_sync;
