//! A members-run football club decides its season's strategy: every member runs a node, joins
//! with the club's ticket, and votes; the vote is tallied identically on every node.
//!
//!     cargo run --release --example football_club -- [--members N]     (default 24)
//!
//! Each member's node knows only one other node's address at start (a sparse network); joins
//! go through the club's node, votes spread member to member.

use std::time::{Duration, Instant};

use coflow::api::{Call, Reply};
use coflow::cluster::{self, unexpected, InProcessNode, Member};
use coflow::flow::{Edit, Mode, Role, Who};

const OPTIONS: [&str; 3] = [
    "Push for promotion",
    "Build the youth academy",
    "Pay down the debt",
];

fn main() -> coflow::Result<()> {
    coflow::cluster::init_logging();
    let mut members = 24usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--members") {
        members = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(members);
    }
    let root = std::env::temp_dir().join(format!("coflow-club-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = play(&runtime, &root, members);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn play(runtime: &tokio::runtime::Runtime, root: &std::path::Path, n: usize) -> coflow::Result<()> {
    let started = Instant::now();
    let club = InProcessNode::start(runtime.handle(), &root.join("club"), "Club", vec![])?;
    let flow = match club.call(Call::FlowNew {
        title: "Season 2027".into(),
        need: "The members decide the club's strategy for the 2027 season".into(),
        role: Role::Customer,
    })? {
        Reply::Created { id } => id,
        other => return Err(unexpected(other)),
    };
    let ticket = match club.call(Call::Invite {
        flow: flow.clone(),
        role: Role::Contributor,
        expires_in: 3600,
        uses: n as i64,
    })? {
        Reply::Invited(i) => i.ticket,
        other => return Err(unexpected(other)),
    };
    println!(
        "The club's node opened flow {} and a ticket for {n} members.",
        &flow[..8]
    );

    // Members start nodes, each knowing one earlier node, and join with the club's ticket.
    let mut nodes: Vec<InProcessNode> = Vec::new();
    let join_start = Instant::now();
    for i in 0..n {
        let known = if i == 0 {
            club.addr()?
        } else {
            nodes[(i * 7919) % nodes.len()].addr()?
        };
        let node = InProcessNode::start(
            runtime.handle(),
            &root.join(format!("member{i}")),
            &format!("Member {i}"),
            vec![known.parse().expect("a multiaddr")],
        )?;
        match node.call(Call::Join {
            ticket: ticket.clone(),
        })? {
            Reply::Joined { .. } => {}
            other => return Err(unexpected(other)),
        }
        nodes.push(node);
    }
    println!(
        "{n} members joined in {:.1} s.",
        join_start.elapsed().as_secs_f64()
    );

    let decision = club
        .edit(
            &flow,
            Edit::NewDecision {
                question: "Our strategy for the 2027 season?".into(),
                options: OPTIONS.iter().map(|o| o.to_string()).collect(),
                who: Who::Members,
                mode: Mode::Vote,
                step: None,
            },
        )?
        .expect("a decision id");
    let all: Vec<&dyn Member> = std::iter::once(&club as &dyn Member)
        .chain(nodes.iter().map(|m| m as &dyn Member))
        .collect();
    wait_for(&all, &flow, |v| !v.flow.decisions.is_empty())?;
    println!("The club asks: \"Our strategy for the 2027 season?\"");

    // Everyone votes at once; a few change their minds (a changed vote replaces the old one).
    let before: Vec<coflow::sync::Stats> = all
        .iter()
        .map(|m| cluster::stats(*m))
        .collect::<coflow::Result<_>>()?;
    let vote_start = Instant::now();
    let votes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (i, m) in nodes.iter().enumerate() {
            let (flow, decision, votes) = (flow.clone(), decision.clone(), &votes);
            s.spawn(move || -> coflow::Result<()> {
                let choose = |o: usize| -> coflow::Result<()> {
                    let edit = Edit::Choose {
                        decision: decision.clone(),
                        option: OPTIONS[o].into(),
                    };
                    let change = match m.call(Call::Edit {
                        flow: flow.clone(),
                        edit,
                    })? {
                        Reply::Edited(e) => e.change,
                        other => return Err(unexpected(other)),
                    };
                    let at = coflow::repo::system_clock_ms();
                    votes
                        .lock()
                        .expect("not poisoned")
                        .push((m.node_id().to_string(), change, at));
                    Ok(())
                };
                choose((i * 31 + 7) % 3)?;
                if i % 5 == 0 {
                    choose((i + 1) % 3)?;
                }
                Ok(())
            });
        }
    });
    let tally = |v: &coflow::repo::FlowView| -> usize { v.flow.decisions[0].choices.len() };
    wait_for(&all, &flow, |v| tally(v) == n)?;
    let spread = vote_start.elapsed();
    println!(
        "All {n} votes reached all {} nodes {:.0} ms after voting began.",
        n + 1,
        spread.as_millis()
    );
    // How long each vote took to be durable on each other node (from the nodes' own records),
    // and what it cost on the wire.
    let votes = votes.into_inner().expect("not poisoned");
    let delays = cluster::arrival_delays(&all, &votes)?;
    let after: Vec<coflow::sync::Stats> = all
        .iter()
        .map(|m| cluster::stats(*m))
        .collect::<coflow::Result<_>>()?;
    let total = |f: fn(&coflow::sync::Stats) -> u64| -> f64 {
        (after.iter().map(f).sum::<u64>() - before.iter().map(f).sum::<u64>()) as f64
            / votes.len() as f64
    };
    println!(
        "Each vote reached each other node in p50 {} ms, p99 {} ms ({} arrivals); per vote: \
         {:.0} sync messages, {:.0} sync bytes, {:.1} announcements.",
        cluster::percentile(&delays, 50.0),
        cluster::percentile(&delays, 99.0),
        delays.len(),
        total(|s| s.requests_sent + s.responses_sent),
        total(|s| s.request_bytes + s.response_bytes),
        total(|s| s.announcements_sent),
    );

    club.edit(&flow, Edit::CloseDecision { decision })?;
    wait_for(&all, &flow, |v| v.flow.decisions[0].closed)?;
    let view = nodes[n - 1].show(&flow)?;
    let d = &view.flow.decisions[0];
    println!("The vote is closed. Tally, as the last member's node sees it:");
    for (option, votes) in d.tally() {
        println!("  {votes:>4}  {option}");
    }
    println!("Outcome: {}", d.outcome.clone().unwrap_or_default());
    // Every node agrees on the outcome and the whole history verifies everywhere.
    for m in &all {
        let v = m.show(&flow)?;
        assert_eq!(
            v.flow.decisions[0].outcome,
            d.outcome,
            "{} disagrees",
            m.name()
        );
        match m.call(Call::FlowVerify { flow: flow.clone() })? {
            Reply::Verify(r) if r.invalid == 0 => {}
            other => return Err(unexpected(other)),
        }
    }
    println!(
        "{} nodes agree and every history verifies. Total run: {:.1} s.",
        n + 1,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Waits until `pred` holds on every node and all hold the same heads.
fn wait_for(
    all: &[&dyn Member],
    flow: &str,
    pred: impl Fn(&coflow::repo::FlowView) -> bool,
) -> coflow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = all
            .iter()
            .all(|m| m.show(flow).map(|v| pred(&v)).unwrap_or(false));
        let heads: Vec<Vec<String>> = all.iter().map(|m| m.heads(flow)).collect();
        if ok && heads.iter().all(|h| h == &heads[0]) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(coflow::Error::Invalid(
                "the club's nodes did not converge in time".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
