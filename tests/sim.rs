//! Whole-network behaviour of the sync engine with no sockets: several engines with in-memory
//! stores on the shared simulator ([`coflow::sim`]), which delivers messages in random order,
//! duplicates some and drops others. Every node must end with the same heads and the same flow.

mod common;

use coflow::flow::{Edit, FlowId, Reader, Role};
use coflow::identity::{Identity, NodeId};
use coflow::repo::Repo;
use coflow::sim;
use coflow::store::Store;
use coflow::sync::{Engine, Io, Verdict};
use coflow::wire;

/// The shared simulator ([`coflow::sim`]) as these tests drive it: messages arrive in an order
/// set by random latencies, the tests tick the engines themselves (without the dials a runtime
/// makes on its tick), and may turn loss and duplication on and off.
struct Net(sim::Net);

impl std::ops::Deref for Net {
    type Target = sim::Net;
    fn deref(&self) -> &sim::Net {
        &self.0
    }
}

impl std::ops::DerefMut for Net {
    fn deref_mut(&mut self) -> &mut sim::Net {
        &mut self.0
    }
}

impl Net {
    fn new(n: usize, seed: u64) -> Net {
        let cfg = sim::Config {
            seed,
            // Tests accept offers themselves (`offer_and_accept`), checking them first.
            accept_offers: false,
            // A lost message is noticed by the next delivery, not after a long wait.
            timeout_ms: 1,
            // Some tests set the repositories' clocks themselves.
            unix_ms: None,
            ..sim::Config::default()
        };
        Net(sim::Net::new(n, cfg))
    }

    /// Delivers until nothing is in flight; a conversation that never rests fails the test.
    fn drain(&mut self) {
        self.0.drain_within(10_000);
    }

    fn tick(&mut self) {
        self.0.now += coflow::sync::ANTI_ENTROPY_MS;
        let now = self.0.now;
        for n in &mut self.0.nodes {
            n.tick(now);
        }
        self.collect();
    }

    /// Runs until every queue is empty, ticking so anti-entropy repairs losses.
    fn settle(&mut self, flow: &FlowId, max_rounds: usize) -> usize {
        self.settle_lossy(flow, max_rounds, 0)
    }

    /// Like `settle`, but the network keeps losing and duplicating for the first `lossy` rounds.
    fn settle_lossy(&mut self, flow: &FlowId, max_rounds: usize, lossy: usize) -> usize {
        let (drops, dups) = (self.cfg.drop_percent, self.cfg.dup_percent);
        for round in 0..max_rounds {
            if round == lossy {
                self.cfg.drop_percent = 0;
                self.cfg.dup_percent = 0;
            }
            let mut steps = 0;
            while self.step() {
                steps += 1;
                assert!(steps < 1_000_000, "runaway message storm");
            }
            if round >= lossy && self.converged(flow) {
                self.cfg.drop_percent = drops;
                self.cfg.dup_percent = dups;
                return round;
            }
            self.tick();
        }
        panic!("no convergence after {max_rounds} anti-entropy rounds");
    }
}

/// The first sync request of a node that holds nothing of `flow`, carrying `changes`.
fn first_request(flow: &FlowId, changes: Vec<wire::SignedChange>) -> wire::SyncRequest {
    use automerge::sync::SyncDoc;
    wire::SyncRequest {
        message: Some(wire::SyncMessage {
            flow: coflow::identity::unhex(flow.as_str()).unwrap(),
            automerge: automerge::Automerge::new()
                .generate_sync_message(&mut automerge::sync::State::new())
                .unwrap()
                .encode(),
            changes,
            session: 1,
            everyone_told: false,
        }),
    }
}

impl Net {
    /// Node `from` offers `flow` to node `to` the way a member does after adding it by node
    /// id (everything it holds, in one sync request), and `to`'s user accepts it (SECURITY.md,
    /// "Consent"). The offer itself is answered "not served here", so the offering side rests.
    fn offer_and_accept(&mut self, flow: &FlowId, from: usize, to: usize) {
        let req = self.offer(flow, from);
        let from_id = self.ids[from];
        let resp = self.nodes[to].handle_sync_request(&from_id, req);
        assert_eq!(
            resp.result,
            Some(wire::sync_response::Result::Unavailable(true)),
            "an offered flow is not served before it is accepted"
        );
        assert!(self.nodes[to].repo().is_offered(flow));
        self.nodes[to].accept(flow.as_str()).unwrap();
        self.collect();
    }

    /// The first sync request of node `from` about `flow` to a node that holds none of it.
    fn offer(&mut self, flow: &FlowId, from: usize) -> wire::SyncRequest {
        let changes: Vec<wire::SignedChange> = self.nodes[from]
            .repo()
            .signed_changes(flow)
            .unwrap()
            .iter()
            .map(Into::into)
            .collect();
        first_request(flow, changes)
    }
}

/// Node 0 starts a flow and adds nodes `1..=members` as contributors, by node id; each accepts
/// it.
fn flow_with_members(net: &mut Net, members: usize) -> FlowId {
    let flow = net.nodes[0]
        .repo()
        .create_flow("T", "N", Role::Customer)
        .unwrap();
    for i in 1..=members {
        let node_id = net.ids[i].to_string();
        edit(
            net,
            0,
            &flow,
            Edit::AddMember {
                node_id,
                role: Role::Contributor,
                name: None,
            },
        );
    }
    for i in 1..=members {
        net.offer_and_accept(&flow, 0, i);
    }
    flow
}

fn edit(net: &mut Net, who: usize, flow: &FlowId, e: Edit) {
    net.nodes[who].repo().edit(flow.as_str(), &e).unwrap();
    net.nodes[who].local_change(flow);
    net.collect();
}

/// Node 0 starts a flow and adds the others by node id; members edit concurrently while the
/// network reorders, duplicates and drops; after healing, all hold the same flow.
fn run(seed: u64, nodes: usize, drop_percent: u64, dup_percent: u64) {
    let mut net = Net::new(nodes, seed);
    let flow = net.nodes[0]
        .repo()
        .create_flow(
            "Club season",
            "Decide the season's strategy",
            Role::Customer,
        )
        .unwrap();
    for i in 1..nodes {
        let node_id = net.ids[i].to_string();
        let role = if i == 1 {
            Role::Owner
        } else {
            Role::Contributor
        };
        edit(
            &mut net,
            0,
            &flow,
            Edit::AddMember {
                node_id,
                role,
                name: Some(format!("Node {i}")),
            },
        );
    }
    for i in 1..nodes {
        net.offer_and_accept(&flow, 0, i);
    }
    net.connect_all();
    net.settle(&flow, 20);

    net.cfg.drop_percent = drop_percent;
    net.cfg.dup_percent = dup_percent;
    let mut made = 0;
    for round in 0..40 {
        let who = (net.rand() % nodes as u64) as usize;
        edit(
            &mut net,
            who,
            &flow,
            common::add_step(&format!("step {round} by {who}"), None),
        );
        made += 1;
        if net.rand().is_multiple_of(3) {
            edit(
                &mut net,
                who,
                &flow,
                Edit::Comment {
                    text: format!("comment {round}"),
                    step: None,
                },
            );
            made += 1;
        }
        for _ in 0..(net.rand() % 6) {
            net.step();
        }
    }
    // The network stays lossy for a few anti-entropy rounds after the last edit; only the
    // engines' periodic repair can then finish the job.
    let rounds = net.settle_lossy(&flow, 50, 3);
    net.cfg.drop_percent = 0;
    net.cfg.dup_percent = 0;

    let flows: Vec<_> = net
        .nodes
        .iter_mut()
        .map(|n| {
            let doc = n.repo().doc(&flow).unwrap().clone();
            Reader::now(&doc).flow(flow.as_str())
        })
        .collect();
    for f in &flows {
        assert_eq!(f, &flows[0]);
    }
    let steps = flows[0].steps.len();
    let comments = flows[0].comments.len();
    assert_eq!(steps + comments, made, "every edit reached every node");
    assert!(
        net.penalties.is_empty(),
        "honest nodes penalize no one: {:?}",
        net.penalties
    );
    if drop_percent > 0 {
        assert!(net.dropped > 0, "faults were injected");
    }
    println!(
        "seed {seed}: {nodes} nodes, {made} edits, delivered {}, dropped {}, duplicated {}, healed in {rounds} anti-entropy rounds",
        net.delivered, net.dropped, net.duplicated
    );
}

#[test]
fn five_nodes_converge_with_reordering() {
    run(7, 5, 0, 0);
}

#[test]
fn five_nodes_converge_despite_drops_and_duplicates() {
    for seed in [1, 2, 3] {
        run(seed, 5, 20, 10);
    }
}

#[test]
fn a_non_member_learns_nothing() {
    let mut net = Net::new(3, 11);
    let flow = flow_with_members(&mut net, 1);
    net.connect_all();
    net.settle_pairs(&flow);
    assert!(net.nodes[1].repo().holds(&flow).unwrap());
    assert!(
        !net.nodes[2].repo().holds(&flow).unwrap(),
        "the outsider holds nothing"
    );
    // The outsider asks outright: it gets the same answer as for a flow nobody holds.
    let outsider = net.ids[2];
    let ask = |flow: &FlowId| first_request(flow, vec![]);
    let held = net.nodes[0].handle_sync_request(&outsider, ask(&flow));
    let unknown = net.nodes[0].handle_sync_request(
        &outsider,
        ask(&"00000000000000000000000000000000".parse().unwrap()),
    );
    let strip = |r: wire::SyncResponse| match r.result {
        Some(wire::sync_response::Result::Message(mut m)) => {
            m.flow.clear();
            assert!(m.changes.is_empty(), "no content for outsiders");
            Some(m)
        }
        other => panic!("unexpected answer {other:?}"),
    };
    assert_eq!(strip(held), strip(unknown));
}

impl Net {
    /// Settles without requiring every node to hold the flow.
    fn settle_pairs(&mut self, _flow: &FlowId) {
        for _ in 0..5 {
            while self.step() {}
            self.tick();
        }
        while self.step() {}
    }
}

#[test]
fn queue_is_bounded_by_the_protocol() {
    // The conversation for one edit among five nodes stays small.
    let mut net = Net::new(5, 3);
    let flow = flow_with_members(&mut net, 4);
    net.connect_all();
    net.settle(&flow, 10);
    let before = net.delivered;
    edit(&mut net, 2, &flow, common::add_step("one more", None));
    net.settle(&flow, 3);
    let used = net.delivered - before;
    assert!(used <= 80, "one edit took {used} messages");
}

#[test]
fn a_lossless_network_needs_no_anti_entropy() {
    // Every push must go out on its own: with nothing lost, draining the network without a
    // single tick leaves every node with every change. Edits land while requests are in flight,
    // and only one side writes, so nothing else carries its news.
    for seed in [5, 6, 7] {
        let mut net = Net::new(2, seed);
        let flow = flow_with_members(&mut net, 1);
        net.connect_all();
        while net.step() {}
        assert!(net.converged(&flow), "membership spread without ticks");
        for round in 0..30 {
            edit(
                &mut net,
                0,
                &flow,
                common::add_step(&format!("s{round}"), None),
            );
            for _ in 0..(net.rand() % 3) {
                net.step();
            }
        }
        while net.step() {}
        assert!(
            net.converged(&flow),
            "every edit reached every node without anti-entropy"
        );
    }
}

/// What a member does with gossip announcements: one from a non-member is dropped without
/// blame, a malformed one is rejected, one naming heads it holds is passed on at once, and one
/// naming heads it lacks is held back — and a fetch from its sender started — until the
/// changes have arrived.
#[test]
fn announcements_are_judged_before_they_are_passed_on() {
    let mut net = Net::new(3, 9);
    let flow = flow_with_members(&mut net, 1);
    net.connect_all();
    while net.step() {}
    assert!(net.nodes[1].repo().holds(&flow).unwrap());
    let topic = wire::flow_topic(&flow);
    let (member, outsider) = (net.ids[0], net.ids[2]);
    let ours = net.nodes[1].repo().doc(&flow).unwrap().get_heads();

    // Node 1's output, with its fetches from node 0 answered at once.
    fn verdicts(net: &mut Net, member: &NodeId, flow: &FlowId) -> Vec<Verdict> {
        let me = net.ids[1];
        let mut out = Vec::new();
        while let Some(io) = net.nodes[1].next_io() {
            match io {
                Io::Validate { verdict, .. } => out.push(verdict),
                Io::Sync { peer, request, .. } => {
                    assert_eq!(&peer, member, "fetches from the announcer");
                    let response = net.nodes[0].handle_sync_request(&me, request);
                    net.nodes[1].handle_sync_response(member, flow, response);
                }
                _ => {}
            }
        }
        out
    }
    let data = wire::encode_announce(&ours);
    net.nodes[1].handle_announcement(vec![1], &outsider, Some(&outsider), &topic, &data);
    assert_eq!(
        verdicts(&mut net, &member, &flow),
        vec![Verdict::Ignore],
        "a non-member's"
    );
    net.nodes[1].handle_announcement(vec![2], &member, Some(&member), &topic, b"\xff\x01junk");
    assert_eq!(
        verdicts(&mut net, &member, &flow),
        vec![Verdict::Reject],
        "a malformed one"
    );
    net.nodes[1].handle_announcement(vec![3], &member, Some(&member), &topic, &data);
    assert_eq!(
        verdicts(&mut net, &member, &flow),
        vec![Verdict::Accept],
        "heads it holds"
    );

    // Node 0 makes a change without telling anyone; then node 1 hears it announced, and passes
    // the announcement on only after fetching the change.
    net.nodes[0]
        .repo()
        .edit(flow.as_str(), &common::add_step("quiet", None))
        .unwrap();
    while net.nodes[0].next_io().is_some() {}
    let news = net.nodes[0].repo().doc(&flow).unwrap().get_heads();
    assert!(!news.iter().all(|h| ours.contains(h)));
    let data = wire::encode_announce(&news);
    net.nodes[1].handle_announcement(vec![4], &member, Some(&member), &topic, &data);
    let mut fetches = Vec::new();
    while let Some(io) = net.nodes[1].next_io() {
        match io {
            Io::Sync { peer, request, .. } => fetches.push((peer, request)),
            Io::Validate { .. } => panic!("passed on before the changes arrived"),
            _ => {}
        }
    }
    assert_eq!(fetches.len(), 1, "one fetch, from the announcer");
    let (peer, request) = fetches.pop().unwrap();
    assert_eq!(peer, member);
    let me = net.ids[1];
    let response = net.nodes[0].handle_sync_request(&me, request);
    net.nodes[1].handle_sync_response(&member, &flow, response);
    assert_eq!(verdicts(&mut net, &member, &flow), vec![Verdict::Accept]);
    let theirs = net.nodes[1].repo().doc(&flow).unwrap().get_heads();
    assert_eq!(theirs, news, "the fetch brought the change");
    assert!(net.penalties.is_empty(), "{:?}", net.penalties);
}

/// A change in a flow whose members are all connected to its author is pushed to each of them
/// and announced by no one; when a member is out of reach, the author announces it too.
#[test]
fn a_small_connected_flow_is_told_by_push_alone() {
    let mut net = Net::new(3, 11);
    let flow = flow_with_members(&mut net, 2);
    net.connect_all();
    while net.step() {}
    assert!(net.converged(&flow));
    let before = net.announcements;
    let ann_before: u64 = net.nodes.iter().map(|n| n.stats.announcements_sent).sum();
    edit(&mut net, 0, &flow, common::add_step("Pushed", None));
    while net.step() {}
    assert!(net.converged(&flow), "the push reached both members");
    let ann_after: u64 = net.nodes.iter().map(|n| n.stats.announcements_sent).sum();
    assert_eq!(
        ann_after, ann_before,
        "nobody announced a change everyone was told of"
    );
    assert_eq!(net.announcements, before);

    // Node 2 drops off: node 0's next change is announced (and still pushed to node 1).
    let gone = net.ids[2];
    net.nodes[0].peer_disconnected(&gone);
    let sent = net.nodes[0].stats.announcements_sent;
    edit(&mut net, 0, &flow, common::add_step("Announced", None));
    assert_eq!(net.nodes[0].stats.announcements_sent, sent + 1);
}

/// A member removed while its node is up never receives its removal as content; whatever it
/// writes afterwards falls on every node, no honest node is penalized, and its own node learns
/// of the removal from the members it keeps talking to.
#[test]
fn a_removed_member_learns_of_its_removal_and_writes_nothing_that_stands() {
    let mut net = Net::new(3, 17);
    let flow = flow_with_members(&mut net, 2);
    net.connect_all();
    while net.step() {}
    assert!(net.converged(&flow));
    let removed = net.ids[2].to_string();
    edit(
        &mut net,
        0,
        &flow,
        Edit::RemoveMember {
            member: removed.clone(),
        },
    );
    while net.step() {}
    edit(
        &mut net,
        2,
        &flow,
        Edit::Comment {
            text: "written after my removal".into(),
            step: None,
        },
    );
    for _ in 0..5 {
        net.drain();
        net.tick();
    }
    for i in 0..3 {
        let view = net.nodes[i].repo().show(flow.as_str()).unwrap();
        assert!(
            view.flow.comments.is_empty(),
            "node {i} shows the removed member's comment"
        );
        let me = view.flow.members.iter().find(|m| m.node_id == removed);
        assert!(
            me.is_some_and(|m| m.removed),
            "node {i} knows of the removal"
        );
    }
    let shown: Vec<Vec<String>> = (0..3)
        .map(|i| net.nodes[i].repo().show(flow.as_str()).unwrap().heads)
        .collect();
    assert_eq!(shown[0], shown[1]);
    assert_eq!(
        shown[0], shown[2],
        "the removed node stands where the others do"
    );
    assert!(net.penalties.is_empty(), "{:?}", net.penalties);
    let err = net.nodes[2]
        .repo()
        .edit(flow.as_str(), &common::add_step("more", None))
        .unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");
}

/// A member signs two changes with the same actor and sequence number and gives one to each
/// of two nodes. When those two sync, neither blames the other: the relay did nothing wrong.
#[test]
fn an_equivocation_passed_on_by_an_honest_relay_blames_nobody() {
    let mut net = Net::new(3, 23);
    let flow = flow_with_members(&mut net, 2);
    net.connect_all();
    while net.step() {}
    assert!(net.converged(&flow));
    // Node 2 is the equivocator: two changes on the same heads under one actor.
    let liar = Identity::from_seed("sim-node-2", "Node 2");
    let doc = net.nodes[0].repo().doc(&flow).unwrap().clone();
    let current = Reader::now(&doc).flow(flow.as_str());
    let mut versions = Vec::new();
    for title in ["one", "another"] {
        let mut fork = doc.fork().with_actor(liar.actor());
        let mut tx = fork.transaction();
        common::add_step(title, None)
            .apply(&mut tx, &current, liar.node_id(), common::NOW)
            .unwrap();
        let hash = tx.commit().0.unwrap();
        versions.push(common::sign(&liar, &fork, hash));
    }
    for (node, version) in [(0, &versions[0]), (1, &versions[1])] {
        let out = net.nodes[node]
            .repo()
            .receive(&flow, std::slice::from_ref(version))
            .unwrap();
        assert_eq!(out.accepted.len(), 1);
        net.nodes[node].local_change(&flow);
    }
    net.collect();
    for _ in 0..3 {
        net.drain();
        net.tick();
    }
    let honest: Vec<_> = net.penalties.iter().filter(|(p, _)| *p != 2).collect();
    assert!(
        honest.is_empty(),
        "an honest relay was penalized: {honest:?}"
    );
}

static JOIN_CLOCK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(common::NOW);

fn join_clock() -> i64 {
    JOIN_CLOCK.load(std::sync::atomic::Ordering::SeqCst)
}

/// A stranger (here without the ticket) asking a member node to redeem an invite gets the same
/// bytes back whatever the invite's state, and the same as for a flow the node does not hold;
/// the holder of the ticket, whose proof verifies, is told why it cannot get in.
#[test]
fn a_stranger_learns_nothing_from_a_join_refusal() {
    use coflow::identity::{unhex, InviteKey};
    use prost::Message;
    use wire::{InviteTicket, JoinRequest};
    let alice = Identity::from_seed("join-alice", "Alice");
    let alice_id = *alice.node_id();
    let mut node =
        Engine::new(Repo::new(Store::in_memory().unwrap(), alice).with_clock(join_clock));
    let flow = node.repo().create_flow("T", "N", Role::Customer).unwrap();
    let invite = |node: &mut Engine, expires_in: i64| {
        let i = node
            .repo()
            .invite(flow.as_str(), Role::Observer, expires_in, 1)
            .unwrap();
        let mut t = InviteTicket::decode(&i.ticket).unwrap();
        t.addrs.push(
            format!("/ip4/127.0.0.1/tcp/9/p2p/{alice_id}")
                .parse()
                .unwrap(),
        );
        t
    };
    let live = invite(&mut node, 3600);
    let revoked = invite(&mut node, 3600);
    node.repo()
        .edit(
            flow.as_str(),
            &Edit::RevokeInvite {
                invite: revoked.invite.clone(),
            },
        )
        .unwrap();
    let expiring = invite(&mut node, 10);
    // Bob holds a ticket and joins the honest way: his node sends a proof, never the secret.
    let used = invite(&mut node, 3600);
    let bob = Identity::from_seed("join-bob", "Bob");
    let mut bob_node = Engine::new(Repo::new(Store::in_memory().unwrap(), bob.clone()));
    bob_node.start_join(&used, "Bob").unwrap();
    let request = std::iter::from_fn(|| bob_node.next_io())
        .find_map(|io| match io {
            Io::Join { request, .. } => Some(request),
            _ => None,
        })
        .expect("Bob's node asks Alice's");
    let sent = request.encode_to_vec();
    assert!(
        !sent.windows(16).any(|w| w == used.secret),
        "the secret stays home"
    );
    let answer = node.handle_join_request(bob.node_id(), request);
    assert_eq!(
        answer.result,
        Some(wire::join_response::Result::Joined(true))
    );
    assert_eq!(
        node.repo().role_of(&flow, bob.node_id().as_str()).unwrap(),
        Some(Role::Observer)
    );
    JOIN_CLOCK.store(common::NOW + 100, std::sync::atomic::Ordering::SeqCst);

    let eve = Identity::from_seed("join-eve", "Eve");
    let heads = node.repo().doc(&flow).unwrap().get_heads();
    // What Eve can send: a proof with a secret of her guessing (or none at all).
    let ask = |node: &mut Engine, flow: &FlowId, invite: &str, proof: Vec<u8>| {
        node.handle_join_request(
            eve.node_id(),
            JoinRequest {
                flow: unhex(flow.as_str()).unwrap(),
                invite: unhex(invite).unwrap(),
                proof,
                name: "Eve".into(),
            },
        )
        .encode_to_vec()
    };
    let guess = |flow: &FlowId, invite: &str| {
        InviteKey::from_secret(&[0; 16])
            .prove(
                &unhex(flow.as_str()).unwrap(),
                &unhex(invite).unwrap(),
                eve.node_id(),
            )
            .to_vec()
    };
    let unknown_flow: &FlowId = &"00000000000000000000000000000000".parse().unwrap();
    let answers = [
        (
            "a flow not held",
            ask(
                &mut node,
                unknown_flow,
                &live.invite,
                guess(unknown_flow, &live.invite),
            ),
        ),
        (
            "an unknown invite",
            ask(
                &mut node,
                &flow,
                "0000000000000000",
                guess(&flow, "0000000000000000"),
            ),
        ),
        (
            "a revoked invite",
            ask(
                &mut node,
                &flow,
                &revoked.invite,
                guess(&flow, &revoked.invite),
            ),
        ),
        (
            "an expired invite",
            ask(
                &mut node,
                &flow,
                &expiring.invite,
                guess(&flow, &expiring.invite),
            ),
        ),
        (
            "a used-up invite",
            ask(&mut node, &flow, &used.invite, guess(&flow, &used.invite)),
        ),
        (
            "a live invite, bad proof",
            ask(&mut node, &flow, &live.invite, guess(&flow, &live.invite)),
        ),
        (
            "a live invite, no proof",
            ask(&mut node, &flow, &live.invite, vec![]),
        ),
        // Bob's own proof does not admit Eve.
        (
            "a live invite, another's proof",
            ask(&mut node, &flow, &used.invite, {
                InviteKey::from_secret(&used.secret)
                    .prove(
                        &unhex(flow.as_str()).unwrap(),
                        &unhex(&used.invite).unwrap(),
                        bob.node_id(),
                    )
                    .to_vec()
            }),
        ),
    ];
    let expected = wire::JoinResponse {
        result: Some(wire::join_response::Result::Refused(
            "unknown flow or invite".into(),
        )),
    }
    .encode_to_vec();
    for (state, answer) in &answers {
        assert_eq!(answer, &expected, "{state}");
    }
    assert_eq!(
        node.repo().doc(&flow).unwrap().get_heads(),
        heads,
        "nothing was written"
    );

    // Whoever holds a ticket proves it, and learns why the invite no longer admits anyone.
    let holder = |node: &mut Engine, t: &InviteTicket| {
        let proof = InviteKey::from_secret(&t.secret)
            .prove(
                &unhex(flow.as_str()).unwrap(),
                &unhex(&t.invite).unwrap(),
                eve.node_id(),
            )
            .to_vec();
        match node
            .handle_join_request(
                eve.node_id(),
                JoinRequest {
                    flow: unhex(flow.as_str()).unwrap(),
                    invite: unhex(&t.invite).unwrap(),
                    proof,
                    name: "Eve".into(),
                },
            )
            .result
        {
            Some(wire::join_response::Result::Refused(why)) => why,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(holder(&mut node, &revoked), "the invite was revoked");
    assert_eq!(holder(&mut node, &expiring), "the invite has expired");
    assert_eq!(holder(&mut node, &used), "the invite has been used up");
    assert_eq!(node.repo().doc(&flow).unwrap().get_heads(), heads);
}

/// A stranger that learned a head of a flow (gossip carries hashes) sends a change building on
/// it: a node holding the flow treats it exactly as a node that does not — the same answer,
/// nothing kept, no penalty — and a forged change costs the stranger the same either way.
#[test]
fn a_stranger_sending_changes_learns_nothing() {
    let mut net = Net::new(3, 29);
    let flow = flow_with_members(&mut net, 1);
    net.connect_all();
    net.settle_pairs(&flow);
    let stranger = Identity::from_seed("sim-node-2", "Node 2");
    let doc = net.nodes[0].repo().doc(&flow).unwrap().clone();
    let heads = doc.get_heads();
    let current = Reader::now(&doc).flow(flow.as_str());
    let mut fork = doc.fork().with_actor(stranger.actor());
    let mut tx = fork.transaction();
    common::add_step("mine now", None)
        .apply(&mut tx, &current, stranger.node_id(), common::NOW)
        .unwrap();
    let hash = tx.commit().0.unwrap();
    let change = common::sign(&stranger, &fork, hash);
    let ask = |flow: &FlowId, c: &coflow::auth::SignedChange| {
        first_request(
            flow,
            vec![wire::SignedChange {
                change: c.bytes.clone(),
                signature: c.signature.clone(),
            }],
        )
    };
    let strip = |r: wire::SyncResponse| match r.result {
        Some(wire::sync_response::Result::Message(mut m)) => {
            m.flow.clear();
            Some(m)
        }
        other => panic!("unexpected answer {other:?}"),
    };
    let who = net.ids[2];
    let unknown_flow: &FlowId = &"00000000000000000000000000000000".parse().unwrap();
    let held = net.nodes[0].handle_sync_request(&who, ask(&flow, &change));
    net.collect();
    let penalties_held = net.penalties.len();
    let unknown = net.nodes[0].handle_sync_request(&who, ask(unknown_flow, &change));
    net.collect();
    assert_eq!(strip(held), strip(unknown));
    assert_eq!(penalties_held, 0, "{:?}", net.penalties);
    assert!(net.penalties.is_empty(), "{:?}", net.penalties);
    assert_eq!(net.nodes[0].repo().doc(&flow).unwrap().get_heads(), heads);
    // A forged signature is refused and penalized alike.
    let mut forged = change.clone();
    forged.signature[0] ^= 1;
    let held = net.nodes[0].handle_sync_request(&who, ask(&flow, &forged));
    let unknown = net.nodes[0].handle_sync_request(&who, ask(unknown_flow, &forged));
    net.collect();
    assert_eq!(held, unknown);
    assert_eq!(net.penalties.len(), 2, "{:?}", net.penalties);
    assert_eq!(net.nodes[0].repo().doc(&flow).unwrap().get_heads(), heads);
}

/// A member removed while a conversation with it is under way is told nothing written after
/// its removal: the conversation ends with the answer in flight.
#[test]
fn a_conversation_under_way_ends_when_its_peer_is_removed() {
    let mut net = Net::new(3, 31);
    let flow = flow_with_members(&mut net, 2);
    net.connect_all();
    net.drain();
    assert!(net.converged(&flow));
    // Node 0 pushes a change to both; before node 2's answer comes back, node 2 is removed and
    // node 0 writes something node 2 must not see.
    edit(&mut net, 0, &flow, common::add_step("before", None));
    let removed = net.ids[2].to_string();
    net.nodes[0]
        .repo()
        .edit(flow.as_str(), &Edit::RemoveMember { member: removed })
        .unwrap();
    net.nodes[0]
        .repo()
        .edit(
            flow.as_str(),
            &Edit::Comment {
                text: "after the removal".into(),
                step: None,
            },
        )
        .unwrap();
    net.drain();
    let comments = net.nodes[2]
        .repo()
        .show(flow.as_str())
        .unwrap()
        .flow
        .comments;
    assert!(comments.is_empty(), "the removed node got {comments:?}");
}

/// SECURITY.md, "Consent": a flow a member put this node into by node id waits for its user.
/// Until then the node keeps only the first message, takes nothing more, cannot edit the flow,
/// and the offering node's conversation rests. Accepted, the whole flow arrives and the node
/// writes; declined, what it had is deleted and the members' further offers are turned away.
/// Nobody is penalized.
#[test]
fn an_offered_flow_waits_for_its_user_and_a_declined_one_stays_away() {
    let mut net = Net::new(3, 29);
    let flow = net.nodes[0]
        .repo()
        .create_flow("T", "N", Role::Customer)
        .unwrap();
    net.connect_all();
    for i in [1, 2] {
        let node_id = net.ids[i].to_string();
        edit(
            &mut net,
            0,
            &flow,
            Edit::AddMember {
                node_id,
                role: Role::Contributor,
                name: None,
            },
        );
    }
    for _ in 0..3 {
        net.drain();
        net.tick();
    }
    net.drain();
    let customer = net.ids[0].to_string();
    let comment = Edit::Comment {
        text: "mine".into(),
        step: None,
    };
    for i in [1, 2] {
        let node = &mut net.nodes[i];
        assert!(
            node.repo().is_offered(&flow),
            "node {i} was offered the flow"
        );
        assert!(!node.repo().holds(&flow).unwrap());
        let listed = node.repo().list().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].pending);
        let offer = listed[0].offer.as_ref().unwrap();
        assert_eq!(offer.by, customer);
        assert_eq!(offer.by_role, Some(Role::Customer));
        assert_eq!(offer.role, Some(Role::Contributor));
        let err = node
            .repo()
            .edit(flow.as_str(), &comment)
            .unwrap_err()
            .to_string();
        assert!(err.contains("waits for your answer"), "{err}");
        assert!(node.repo().show(flow.as_str()).unwrap().offer.is_some());
        assert!(node.member_topics().is_empty(), "no topic for an offer");
    }
    // A stranger asking about the offered flow is answered as about a flow nobody holds.
    let stranger = *Identity::from_seed("sim-stranger", "Stranger").node_id();
    let strip = |r: wire::SyncResponse| match r.result {
        Some(wire::sync_response::Result::Message(mut m)) => {
            m.flow.clear();
            m
        }
        other => panic!("unexpected answer {other:?}"),
    };
    let about_offer = net.nodes[1].handle_sync_request(&stranger, first_request(&flow, vec![]));
    let about_nothing = net.nodes[1].handle_sync_request(
        &stranger,
        first_request(&"00000000000000000000000000000000".parse().unwrap(), vec![]),
    );
    assert_eq!(strip(about_offer), strip(about_nothing));

    // The customer's node shows both as not having accepted the flow yet.
    let waiting: Vec<bool> = net.nodes[0]
        .member_sync(&flow)
        .iter()
        .map(|m| m.not_serving)
        .collect();
    assert_eq!(waiting, [true, true]);

    // The customer writes on; the offered nodes take nothing more.
    let offered_at = net.heads(&flow)[1].clone();
    edit(&mut net, 0, &flow, common::add_step("while waiting", None));
    for _ in 0..3 {
        net.drain();
        net.tick();
    }
    net.drain();
    assert_eq!(
        net.heads(&flow)[1],
        offered_at,
        "nothing more before accepting"
    );
    assert_ne!(net.heads(&flow)[0], offered_at);

    // Node 1 accepts: the rest arrives, and what it writes reaches the customer.
    net.nodes[1].accept(flow.as_str()).unwrap();
    net.collect();
    net.drain();
    assert_eq!(
        net.heads(&flow)[1],
        net.heads(&flow)[0],
        "accepted: caught up"
    );
    let accepted = net.ids[1].to_string();
    let shown = net.nodes[0].member_sync(&flow);
    let one = shown.iter().find(|m| m.node_id == accepted).unwrap();
    assert!(!one.not_serving, "node 1 took part: {shown:?}");
    assert!(!net.nodes[1].member_topics().is_empty());
    edit(&mut net, 1, &flow, comment.clone());
    net.drain();
    assert_eq!(net.heads(&flow)[1], net.heads(&flow)[0]);
    assert_eq!(
        net.nodes[0]
            .repo()
            .show(flow.as_str())
            .unwrap()
            .flow
            .comments
            .len(),
        1
    );

    // Node 2 declines: nothing of the flow is left, and it stays away.
    net.nodes[2].decline(flow.as_str()).unwrap();
    assert_eq!(net.heads(&flow)[2], None, "declined: nothing kept");
    for who in [0, 1] {
        edit(
            &mut net,
            who,
            &flow,
            common::add_step(&format!("after {who}"), None),
        );
    }
    for _ in 0..3 {
        net.drain();
        net.tick();
    }
    net.drain();
    let node = &mut net.nodes[2];
    assert_eq!(node.repo().doc(&flow).ok().map(|d| d.get_heads()), None);
    assert!(!node.repo().is_offered(&flow));
    assert!(node.repo().list().unwrap().is_empty());
    let err = node.accept(flow.as_str()).unwrap_err().to_string();
    assert!(err.contains("you declined flow"), "{err}");
    assert!(net.penalties.is_empty(), "{:?}", net.penalties);
}

/// Offers are bounded: at most `MAX_OFFERS_PER_PEER` from one sender and `MAX_OFFERS` in all
/// wait at once; the rest are not kept, and nobody is penalized for offering. Declining one
/// makes room. Each offer, kept or not, is answered "not served here", so honest offering nodes
/// rest instead of asking again at once.
#[test]
fn offers_are_bounded_per_sender_and_in_all() {
    use coflow::repo::{MAX_OFFERS, MAX_OFFERS_PER_PEER};
    let mut net = Net::new(1, 31);
    let me = net.ids[0].to_string();
    let mut made = Vec::new();
    for s in 0..10 {
        let sender = Identity::from_seed(&format!("offer-sender-{s}"), "Your Bank");
        let mut repo = Repo::new(Store::in_memory().unwrap(), sender.clone());
        for _ in 0..3 {
            let flow = repo
                .create_flow("Your Bank", "Confirm your account", Role::Owner)
                .unwrap();
            let add = Edit::AddMember {
                node_id: me.clone(),
                role: Role::Contributor,
                name: None,
            };
            repo.edit(flow.as_str(), &add).unwrap();
            let changes: Vec<wire::SignedChange> = repo
                .signed_changes(&flow)
                .unwrap()
                .iter()
                .map(Into::into)
                .collect();
            made.push((*sender.node_id(), flow, changes));
        }
    }
    let offer =
        |net: &mut Net, (sender, flow, changes): &(NodeId, FlowId, Vec<wire::SignedChange>)| {
            let resp =
                net.nodes[0].handle_sync_request(sender, first_request(flow, changes.clone()));
            assert_eq!(
                resp.result,
                Some(wire::sync_response::Result::Unavailable(true)),
                "an offer, kept or not, is not served"
            );
        };
    for m in &made {
        offer(&mut net, m);
    }
    net.collect();
    assert!(net.penalties.is_empty(), "{:?}", net.penalties);
    let kept = |net: &mut Net| -> Vec<FlowId> {
        net.nodes[0]
            .repo()
            .list()
            .unwrap()
            .into_iter()
            .map(|l| {
                assert!(l.pending);
                l.row.id
            })
            .collect()
    };
    let offers = kept(&mut net);
    assert_eq!(offers.len(), MAX_OFFERS);
    let count = |offers: &[FlowId], sender: &NodeId| {
        made.iter()
            .filter(|(s, f, _)| s == sender && offers.contains(f))
            .count()
    };
    for (sender, _, _) in &made {
        assert!(count(&offers, sender) <= MAX_OFFERS_PER_PEER);
    }
    // A turned-away offer from a sender with room left is kept once another is declined.
    let waiting = made
        .iter()
        .find(|(s, f, _)| !offers.contains(f) && count(&offers, s) < MAX_OFFERS_PER_PEER)
        .expect("an offer turned away only because every slot was taken");
    offer(&mut net, waiting);
    assert_eq!(kept(&mut net), offers, "still full");
    net.nodes[0].decline(offers[0].as_str()).unwrap();
    offer(&mut net, waiting);
    let now = kept(&mut net);
    assert_eq!(now.len(), MAX_OFFERS);
    assert!(now.contains(&waiting.1) && !now.contains(&offers[0]));
    net.collect();
    assert!(net.penalties.is_empty(), "{:?}", net.penalties);
}
