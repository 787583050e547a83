//! Whole-network scenarios the tests and the benchmark both run.

use std::time::Instant;

use super::{Config, Net};
use crate::flow::{Edit, Role};

/// What [`one_flow`] measured. Times are virtual milliseconds.
#[derive(Clone, Debug)]
pub struct Report {
    pub nodes: usize,
    /// Peers each node knew at the start.
    pub known: usize,
    /// Until every member held the flow.
    pub spread_ms: u64,
    /// Connections open once the flow had spread (the engines' member links).
    pub links: usize,
    /// Changes measured, made at the same moment by as many members.
    pub writers: usize,
    /// From a change to each other node holding it.
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Received per node per change (sync requests and answers, gossip).
    pub bytes_in_mean: u64,
    pub bytes_in_max: u64,
    pub messages_in_mean: f64,
    /// Wall time of the whole run (s).
    pub wall_secs: f64,
    /// The flow's heads at the end (the same on every node) and all bytes every node received.
    pub heads: Vec<automerge::ChangeHash>,
    pub bytes_in_total: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} nodes, each knowing {} peers: flow held by all after {} ms (virtual), {} links; \
             {} concurrent changes reached every node: p50 {} ms, p99 {} ms, max {} ms; \
             received per node per change: {} bytes mean, {} max, {:.1} messages; \
             {:.1} s of wall time",
            self.nodes,
            self.known,
            self.spread_ms,
            self.links,
            self.writers,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.bytes_in_mean,
            self.bytes_in_max,
            self.messages_in_mean,
            self.wall_secs,
        )
    }
}

/// The nearest-rank `p`-th percentile of sorted values; 0 for none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Node 0 starts a flow with `n - 1` other members (added by node id, accepted by their users
/// as the offers arrive), every node knowing `known` random peers and the next node; once
/// every member holds the flow, `writers` members each add a comment at the same moment.
/// Panics if the flow does not reach every member, a change does not reach every node, the
/// nodes do not end at the same heads, or anyone is penalized.
pub fn one_flow(n: usize, known: usize, writers: usize, seed: u64) -> Report {
    let wall = Instant::now();
    let cfg = Config {
        seed,
        latency_ms: (10, 80),
        ..Config::default()
    };
    let mut net = Net::new(n, cfg);
    net.clock(0);
    let flow = net.nodes[0]
        .repo()
        .create_flow("Season vote", "Choose the kit", Role::Customer)
        .expect("a flow");
    for i in 1..n {
        let node_id = net.ids[i].to_string();
        let add = Edit::AddMember {
            node_id,
            role: Role::Contributor,
            name: Some(format!("Member {i}")),
        };
        net.nodes[0]
            .repo()
            .edit(flow.as_str(), &add)
            .expect("a member added");
    }
    net.nodes[0].local_change(&flow);
    net.connect_random(known);

    let holding = |net: &mut Net| {
        net.nodes
            .iter_mut()
            .map(|e| e.repo().holds(&flow).unwrap_or(false))
            .filter(|held| *held)
            .count()
    };
    let mut checks = 0u64;
    let spread_ms = net
        .run_until(600_000, |net| {
            let held = holding(net);
            checks += 1;
            if checks.is_multiple_of(10) {
                let sent: u64 = net.traffic.iter().map(|t| t.messages_out).sum();
                eprintln!(
                    "sim: {} ms, {held} of {n} hold the flow, {} links, {sent} messages, {:.1} s",
                    net.now,
                    net.links(),
                    wall.elapsed().as_secs_f64()
                );
            }
            held == n
        })
        .unwrap_or_else(|| {
            panic!(
                "after 600 s of virtual time {} of {n} nodes hold the flow",
                holding(&mut net)
            )
        });
    let links = net.links();
    eprintln!(
        "sim: spread in {spread_ms} ms, {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    // Let the joining traffic die down before measuring changes.
    net.run_for(30_000);
    eprintln!("sim: quiet, {:.1} s", wall.elapsed().as_secs_f64());
    assert!(net.converged(&flow), "every node at the same heads");

    eprintln!("sim: created, {:.1} s", wall.elapsed().as_secs_f64());
    let before = net.traffic.clone();
    for w in 0..writers {
        let who = 1 + (w * (n - 1)) / writers.max(1);
        let comment = Edit::Comment {
            text: format!("Member {who} votes blue"),
            step: None,
        };
        net.edit(who, &flow, &comment).expect("a comment");
    }
    let all: Vec<usize> = (0..n).collect();
    let took = net.run_until(120_000, |net| net.delays(&all).iter().all(Option::is_some));
    let mut delays: Vec<u64> = net.delays(&all).into_iter().flatten().collect();
    assert_eq!(
        delays.len(),
        writers * n,
        "every change reached every node (within {took:?} ms)"
    );
    net.run_for(10_000);
    assert!(net.converged(&flow), "every node at the same heads");
    assert!(net.penalties.is_empty(), "{:?}", net.penalties);
    delays.sort_unstable();
    let heads = net.heads(&flow)[0].clone().unwrap_or_default();
    let bytes_in_total = net.traffic.iter().map(|t| t.bytes_in).sum();

    let received: Vec<(u64, u64)> = net
        .traffic
        .iter()
        .zip(&before)
        .map(|(a, b)| (a.bytes_in - b.bytes_in, a.messages_in - b.messages_in))
        .collect();
    let per_change = |v: u64| v / writers.max(1) as u64;
    Report {
        nodes: n,
        known,
        spread_ms,
        links,
        writers,
        p50_ms: percentile(&delays, 50.0),
        p99_ms: percentile(&delays, 99.0),
        max_ms: delays.last().copied().unwrap_or(0),
        bytes_in_mean: per_change(received.iter().map(|r| r.0).sum::<u64>() / n as u64),
        bytes_in_max: per_change(received.iter().map(|r| r.0).max().unwrap_or(0)),
        messages_in_mean: received.iter().map(|r| r.1).sum::<u64>() as f64
            / n as f64
            / writers.max(1) as f64,
        wall_secs: wall.elapsed().as_secs_f64(),
        heads,
        bytes_in_total,
    }
}
