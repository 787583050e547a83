//! `flow show`'s sync state of a member, between engines whose messages the test delivers:
//! late requests with older heads do not make an in-sync member look behind.

use super::*;

/// Routes every sync request among `es` (and its answer back) until none is left.
fn settle(es: &mut [&mut Engine]) {
    loop {
        let mut moved = false;
        for i in 0..es.len() {
            let from = *es[i].node_id();
            for io in drain(es[i]) {
                if let Io::Sync {
                    peer,
                    flow,
                    request,
                } = io
                {
                    if let Some(j) = es.iter().position(|e| *e.node_id() == peer) {
                        moved = true;
                        let response = es[j].handle_sync_request(&from, request);
                        es[i].handle_sync_response(&peer, &flow, response);
                    }
                }
            }
        }
        if !moved {
            break;
        }
    }
}

fn comment_on(e: &mut Engine, flow: &FlowId, text: &str) {
    let edit = Edit::Comment {
        text: text.into(),
        step: None,
    };
    e.repo().edit(flow.as_str(), &edit).unwrap();
    e.local_change(flow);
}

/// What `e` shows of `peer`'s sync state on `flow`.
fn in_sync(e: &mut Engine, flow: &FlowId, peer: &NodeId) -> Option<bool> {
    let sync = e.member_sync(flow);
    let m = sync.iter().find(|m| m.node_id == peer.as_str()).unwrap();
    m.in_sync
}

/// A request that left a peer before it had our heads, and arrives after our own conversation
/// with it found both sides at the same heads, tells nothing new: the peer shows as in sync.
/// (It showed as out of sync for good: the view took the heads of whichever conversation moved
/// last, and nothing restarts a conversation that is in sync.)
#[test]
fn a_late_request_with_older_heads_does_not_make_a_peer_in_sync_look_behind() {
    let mut a = engine("author");
    let (flow, _) = flow_with_others(&mut a, "peer", 2);
    let peer = |seed| Engine::new(Repo::new(MemStore::new(), Identity::from_seed(seed, "Peer")));
    let (mut b, mut c) = (peer("peer-0"), peer("peer-1"));
    let (ai, bi, ci) = (*a.node_id(), *b.node_id(), *c.node_id());
    for e in [&mut a, &mut b, &mut c] {
        e.set_now(1, 0);
    }
    // B and C each talk to A only.
    a.peer_connected(bi, 1);
    a.peer_connected(ci, 1);
    b.peer_connected(ai, 1);
    c.peer_connected(ai, 1);
    // A offers them the flow; they accept it and sync.
    settle(&mut [&mut a, &mut b, &mut c]);
    b.accept(flow.as_str()).unwrap();
    c.accept(flow.as_str()).unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(a.heads(&flow), b.heads(&flow));
    assert_eq!(in_sync(&mut a, &flow, &bi), Some(true));
    // B comments; its request to A is held up on the way.
    for e in [&mut a, &mut b, &mut c] {
        e.set_now(10, 0);
    }
    comment_on(&mut b, &flow, "from B");
    let mut held = None;
    for io in drain(&mut b) {
        if let Io::Sync { peer, request, .. } = io {
            assert_eq!(peer, ai);
            held = Some(request);
        }
    }
    let held = held.expect("B sent its comment to A");
    // C comments; A gets it, passes it to B and gets B's comment in return: A and B are at the
    // same heads, and A's own conversation with B knows it.
    for e in [&mut a, &mut b, &mut c] {
        e.set_now(11, 0);
    }
    comment_on(&mut c, &flow, "from C");
    settle(&mut [&mut a, &mut b, &mut c]);
    // (A passes on what it receives by announcing it; here anti-entropy does.)
    for t in [6_000, 12_000, 18_000] {
        for e in [&mut a, &mut b, &mut c] {
            e.set_now(t, 0);
            e.tick(t);
        }
        settle(&mut [&mut a, &mut b, &mut c]);
    }
    assert_eq!(a.heads(&flow), b.heads(&flow));
    assert_eq!(in_sync(&mut a, &flow, &bi), Some(true));
    // B's request arrives now, with the heads B had before C's comment.
    for e in [&mut a, &mut b, &mut c] {
        e.set_now(19_000, 0);
    }
    let answer = a.handle_sync_request(&bi, held);
    b.handle_sync_response(&ai, &flow, answer);
    settle(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(a.heads(&flow), b.heads(&flow));
    assert_eq!(in_sync(&mut a, &flow, &bi), Some(true), "A shows B in sync");
    assert_eq!(in_sync(&mut b, &flow, &ai), Some(true), "B shows A in sync");
    // And it stays so: anti-entropy finds nothing to repair.
    for e in [&mut a, &mut b, &mut c] {
        e.set_now(60_000, 0);
        e.tick(60_000);
    }
    settle(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(in_sync(&mut a, &flow, &bi), Some(true));
    assert_eq!(in_sync(&mut a, &flow, &ci), Some(true));
}
