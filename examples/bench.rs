//! coflow's performance, each metric next to its baseline, measured in one run.
//!
//!     cargo run --release --example bench -- [--quick | --smoke] [--json]
//!
//! On 2 cores `--quick` takes about 20 s and `--smoke` seconds (CI runs it in a debug build to
//! keep the bench working; its numbers mean little). The full tier takes about two minutes with
//! `--trace-ops 52000`; with its ~260k-op editing trace it does not finish in reasonable time
//! today (see BENCHMARKS.md). `ratio` is
//! the cost relative to the baseline: 1.0 is as fast as the baseline, lower is better. What each
//! number measures and what bounds it is in BENCHMARKS.md.

#[path = "bench/baseline.rs"]
mod baseline;
#[path = "bench/gen.rs"]
mod gen;
#[path = "bench/live.rs"]
mod live;
#[path = "bench/local.rs"]
mod local;
#[path = "bench/memory.rs"]
mod memory;
#[path = "bench/nat.rs"]
mod nat;

use std::path::{Path, PathBuf};

use coflow::identity::Identity;
use live::quantile;

/// Sizes of one tier.
struct Tier {
    name: &'static str,
    live_history: usize,
    live_samples: usize,
    catchup_changes: usize,
    trace_ops: usize,
    prop_nodes: usize,
    prop_writers: usize,
    prop_secs: f64,
    ingest_flows: usize,
    ingest_per_flow: usize,
    idle_flows: usize,
    wire_samples: usize,
}

const FULL: Tier = Tier {
    name: "full",
    live_history: 10_000,
    live_samples: 100,
    catchup_changes: 10_000,
    trace_ops: 260_000,
    prop_nodes: 20,
    prop_writers: 5,
    prop_secs: 10.0,
    ingest_flows: 100,
    ingest_per_flow: 200,
    idle_flows: 10_000,
    wire_samples: 20,
};

const QUICK: Tier = Tier {
    name: "quick",
    live_history: 2_000,
    live_samples: 40,
    catchup_changes: 2_000,
    trace_ops: 26_000,
    prop_nodes: 8,
    prop_writers: 3,
    prop_secs: 3.0,
    ingest_flows: 100,
    ingest_per_flow: 40,
    idle_flows: 1_000,
    wire_samples: 10,
};

const SMOKE: Tier = Tier {
    name: "smoke",
    live_history: 100,
    live_samples: 3,
    catchup_changes: 100,
    trace_ops: 600,
    prop_nodes: 3,
    prop_writers: 2,
    prop_secs: 0.5,
    ingest_flows: 5,
    ingest_per_flow: 10,
    idle_flows: 20,
    wire_samples: 3,
};

/// Edits timed per link in the NAT group.
const NAT_SAMPLES: usize = 10;

/// Changes per `Repo::receive` call in the ingest metric.
const INGEST_BATCH: usize = 10;
/// Each propagation writer's edits per second.
const WRITE_RATE: f64 = 10.0;

struct Metric {
    name: &'static str,
    value: f64,
    baseline: f64,
    /// Cost relative to the baseline (lower is better).
    ratio: f64,
    unit: &'static str,
    note: String,
}

impl Metric {
    /// A cost (time, bytes): ratio = value / baseline.
    fn cost(
        name: &'static str,
        value: f64,
        baseline: f64,
        unit: &'static str,
        note: String,
    ) -> Self {
        Metric {
            name,
            value,
            baseline,
            ratio: value / baseline,
            unit,
            note,
        }
    }

    /// A throughput: ratio = baseline / value.
    fn rate(
        name: &'static str,
        value: f64,
        baseline: f64,
        unit: &'static str,
        note: String,
    ) -> Self {
        Metric {
            name,
            value,
            baseline,
            ratio: baseline / value,
            unit,
            note,
        }
    }
}

fn main() {
    coflow::cluster::init_logging();
    let args: Vec<String> = std::env::args().collect();
    // `--coflow ARGS`: this run is the `coflow` CLI (a node of the NAT group, started inside a
    // network namespace; examples cannot count on the `coflow` binary being built).
    if args.get(1).is_some_and(|a| a == "--coflow") {
        let cli = <coflow::cli::Cli as clap::Parser>::parse_from(&args[1..]);
        if let Err(e) = coflow::cli::run(cli) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let what = &args[i + 1];
        let home = PathBuf::from(&args[i + 2]);
        let n = args[i + 3].parse().expect("a flow count");
        memory::run_child(what, &home, n);
        return;
    }
    let json = args.iter().any(|a| a == "--json");
    let mut tier = if args.iter().any(|a| a == "--smoke") {
        SMOKE
    } else if args.iter().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    // `--trace-ops N` overrides the size of the editing trace (its catch-up grows faster than
    // linearly; see BENCHMARKS.md).
    if let Some(n) = args
        .iter()
        .position(|a| a == "--trace-ops")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
    {
        tier.trace_ops = n;
    }
    let root = std::env::temp_dir().join(format!("coflow-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // `--workers N`: tokio worker threads shared by the in-process nodes (default 2, one per
    // core here); more lets other nodes run while one blocks in a commit.
    let workers = args
        .iter()
        .position(|a| a == "--workers")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = std::time::Instant::now();
    // `--only GROUP` (live, catchup, trace, propagation, ingest, removal, idle) runs one group, for
    // profiling. `--only nat` runs the NAT group, which runs only when asked for (it needs root).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let metrics = run(&tier, &runtime, &root, only);
    drop(runtime);
    let _ = std::fs::remove_dir_all(&root);
    if json {
        let list: Vec<serde_json::Value> = metrics
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name, "value": m.value, "baseline": m.baseline,
                    "ratio": m.ratio, "unit": m.unit, "note": m.note,
                })
            })
            .collect();
        let out = serde_json::json!({ "tier": tier.name, "metrics": list });
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    } else {
        print_table(&tier, &metrics, started.elapsed().as_secs_f64());
    }
}

/// Progress goes to stderr so `--json` output stays clean.
fn step(what: &str) {
    eprintln!("bench: {what}");
}

fn run(tier: &Tier, rt: &tokio::runtime::Runtime, root: &Path, only: Option<&str>) -> Vec<Metric> {
    let mut out = Reported(Vec::new());
    let wanted = |group: &str| only.is_none_or(|o| o == group);
    let mut live_p99 = f64::NAN;

    if wanted("live") {
        step("live: A → B over libp2p");
        let l = live::live(rt, &root.join("live"), tier.live_history, tier.live_samples);
        let size = format!(
            "{} changes in the flow, {} samples",
            tier.live_history, tier.live_samples
        );
        live_p99 = quantile(&l.ms, 0.99);
        out.push(Metric::cost(
            "live_p50",
            quantile(&l.ms, 0.5),
            quantile(&l.base_ms, 0.5),
            "ms",
            size.clone(),
        ));
        out.push(Metric::cost(
            "live_p99",
            live_p99,
            quantile(&l.base_ms, 0.99),
            "ms",
            size,
        ));
    }

    let holder = Identity::from_seed("bench-holder", "Holder");
    let newcomer = Identity::from_seed("bench-newcomer", "Newcomer");
    if wanted("catchup") {
        step("catch-up: a flow of many changes");
        let mut flow = gen::FlowGen::new(&holder, "Catch-up");
        flow.add_member(&holder, &newcomer);
        flow.comments(&holder, tier.catchup_changes.saturating_sub(2));
        let c = local::catchup(
            &root.join("catchup"),
            &holder,
            &newcomer,
            &flow,
            tier.wire_samples,
        );
        drop(flow);
        let note = format!(
            "{} changes; in-process engines, on-disk stores, no sockets, {} sync messages",
            c.changes, c.messages
        );
        out.push(Metric::cost(
            "catchup_10k",
            c.secs,
            c.base_secs,
            "s",
            note.clone(),
        ));
        out.push(Metric::cost(
            "catchup_bytes",
            c.bytes as f64,
            c.base_bytes as f64,
            "bytes",
            format!("{note}; protobuf-encoded sync messages vs Automerge's encoded sync messages"),
        ));
        out.push(Metric::cost(
            "wire_bytes",
            c.wire_per_change,
            c.signed_change_size,
            "bytes",
            format!(
                "{} live edits after the catch-up; sync requests + responses, protobuf-encoded \
             (no Noise/Yamux framing) per change vs change + signature",
                tier.wire_samples
            ),
        ));
    }

    if wanted("trace") {
        step("catch-up: an editing trace");
        let mut trace = gen::FlowGen::new(&holder, "Trace");
        trace.add_member(&holder, &newcomer);
        let ops = trace.trace(&holder, tier.trace_ops);
        let t = local::catchup(&root.join("trace"), &holder, &newcomer, &trace, 0);
        drop(trace);
        out.push(Metric::cost(
            "catchup_trace",
            t.secs,
            t.base_secs,
            "s",
            format!(
                "{ops} ops in {} changes (comment adds and retypes); in-process engines, \
                 {} sync messages",
                t.changes, t.messages
            ),
        ));
    }

    if wanted("propagation") {
        step("propagation among many nodes over libp2p");
        let p = live::propagation(
            rt,
            &root.join("prop"),
            tier.prop_nodes,
            tier.prop_writers,
            WRITE_RATE,
            tier.prop_secs,
        );
        out.push(Metric::cost(
            "propagation_p99",
            quantile(&p.ms, 0.99),
            live_p99,
            "ms",
            format!(
                "{} nodes, {} writers x {WRITE_RATE}/s for {} s: {} changes, {} not everywhere \
                 within 60 s; p50 {:.1} ms; {}-{} peers per node; per change {:.1} \
                 announcements, {:.1} sync requests, {:.0} sync bytes",
                tier.prop_nodes,
                tier.prop_writers,
                tier.prop_secs,
                p.ms.len() + p.lost,
                p.lost,
                quantile(&p.ms, 0.5),
                p.peers.0,
                p.peers.1,
                p.announcements,
                p.requests,
                p.bytes,
            ),
        ));
    }

    if wanted("ingest") {
        // As a node commits (the inputs of a turn together), and with a commit per receive.
        let group = coflow::node::MAX_INPUTS_PER_TURN;
        for (name, group, how) in [
            ("ingest", group, format!("{group} receives per commit")),
            (
                "ingest_commit_each",
                1,
                "a commit (fsync) per receive".to_string(),
            ),
        ] {
            step(&format!("{name}: Repo::receive, {how}"));
            let i = local::ingest(
                &root.join(name),
                tier.ingest_flows,
                tier.ingest_per_flow,
                INGEST_BATCH,
                group,
            );
            out.push(Metric::rate(
                name,
                i.rate,
                i.verify_rate.min(i.apply_rate),
                "changes/s",
                format!(
                    "{} changes over {} flows, {INGEST_BATCH} per receive, {how}; \
                     verify {:.0}/s, apply {:.0}/s",
                    i.changes, tier.ingest_flows, i.verify_rate, i.apply_rate
                ),
            ));
        }
    }

    if wanted("removal") {
        step("removal: Repo::receive in a flow with a removed member, and without");
        let receives = 100;
        let r = local::removal_cost(&root.join("removal"), tier.live_history, receives);
        out.push(Metric::cost(
            "removal_receive",
            r.ms,
            r.base_ms,
            "ms",
            format!(
                "one change per receive at the end of {} changes, {receives} receives in one \
                 commit; baseline: the same flow with no removal",
                tier.live_history
            ),
        ));
    }

    if wanted("idle") {
        step("idle flows: memory and cold start");
        let home = root.join("idle");
        let size = memory::make_idle_flows(&home, tier.idle_flows);
        let node = memory::child("node", &home, tier.idle_flows);
        let am = memory::child("automerge", &home, tier.idle_flows);
        let note = format!(
            "{} flows of 12 changes ({size} signed bytes each); fresh child process each",
            tier.idle_flows
        );
        out.push(Metric::cost(
            "memory_per_flow",
            node.rss_per_flow,
            am.rss_per_flow,
            "bytes",
            format!("{note}; RSS growth of a started node vs of the Automerge docs"),
        ));
        out.push(Metric::cost(
            "cold_start",
            node.ms,
            am.ms,
            "ms",
            format!("{note}; node answering vs Automerge::load of the stored bytes"),
        ));
        // The first list reads every document for what waits on its user and stores it; the
        // next (a fresh process again) reads what was stored.
        let first = memory::child("list", &home, tier.idle_flows);
        let again = memory::child("list", &home, tier.idle_flows);
        out.push(Metric::cost(
            "flow_list_first",
            first.ms,
            am.ms,
            "ms",
            format!(
                "{note}; the first `flow list` (every document read for what waits on its \
                 user) vs Automerge::load of the stored bytes"
            ),
        ));
        out.push(Metric::cost(
            "flow_list",
            again.ms,
            am.ms,
            "ms",
            format!(
                "{note}; `flow list` in a fresh process after that (what waits, as stored) vs \
                 Automerge::load of the stored bytes"
            ),
        ));
    }
    if only == Some("nat") {
        step("nat: homes behind NAT (network namespaces)");
        match nat::nat(&root.join("nat"), NAT_SAMPLES) {
            Ok(n) => nat_metrics(&mut out, &n),
            Err(reason) => step(&format!("nat: skipping: {reason}")),
        }
    }
    out.0
}

/// The NAT group's metrics; a number the run could not measure is left out, with why.
fn nat_metrics(out: &mut Reported, n: &nat::Nat) {
    let baseline = "baseline: two nodes on the public host, no NAT";
    step(&format!(
        "nat: {baseline}: reach {} ms, live {} ms",
        fmt(n.base_reach_ms),
        fmt(n.base_live_ms)
    ));
    let reach = [
        ("reach_nat_ms", &n.preserving, "port-preserving routers"),
        ("reach_nat_random_ms", &n.random, "random-port routers"),
    ];
    for (name, world, routers) in reach {
        match &world.reach_ms {
            Ok(ms) => out.push(Metric::cost(
                name,
                *ms,
                n.base_reach_ms,
                "ms",
                format!(
                    "{routers}: a member added at one home (both reachable through the \
                     public node) until the flow is held at the other; {baseline}"
                ),
            )),
            Err(e) => step(&format!("nat: {name} not measured: {e}")),
        }
    }
    let live = [
        (
            "live_nat_direct_ms",
            &n.preserving,
            "port-preserving routers",
        ),
        ("live_nat_relayed_ms", &n.random, "random-port routers"),
    ];
    for (name, world, routers) in live {
        match &world.live_ms {
            Ok((ms, link)) => out.push(Metric::cost(
                name,
                *ms,
                n.base_live_ms,
                "ms",
                format!(
                    "{routers}, link {link}: median of {NAT_SAMPLES} edits, the edit call \
                     until durable at the other home; {baseline}"
                ),
            )),
            Err(e) => step(&format!("nat: {name} not measured: {e}")),
        }
    }
}

/// The metrics so far; each is also printed to stderr as it is measured, so a run cut short
/// still shows what it measured.
struct Reported(Vec<Metric>);

impl Reported {
    fn push(&mut self, m: Metric) {
        eprintln!(
            "bench:   {} = {} {} (baseline {}, ratio {:.2}; {})",
            m.name,
            fmt(m.value),
            m.unit,
            fmt(m.baseline),
            m.ratio,
            m.note
        );
        self.0.push(m);
    }
}

fn print_table(tier: &Tier, metrics: &[Metric], secs: f64) {
    println!(
        "coflow bench, {} tier ({} cores), {secs:.0} s",
        tier.name,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<16} {:>12} {:>12} {:>8}  {:<10} note",
        "metric", "value", "baseline", "ratio", "unit"
    );
    for m in metrics {
        println!(
            "{:<16} {:>12} {:>12} {:>8.2}  {:<10} {}",
            m.name,
            fmt(m.value),
            fmt(m.baseline),
            m.ratio,
            m.unit,
            m.note
        );
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}
