//! Behind real NAT: node processes in Linux network namespaces (`coflow::cluster::nat`), two
//! homes behind home routers and a public node, member of nothing, that both homes know. Each
//! node is this benchmark run again as the `coflow` CLI (`--coflow`), inside its namespace.
//! Measured: how long a member added at one home (once both homes hold a reservation on the
//! public node, which waits for AutoNAT's verdict first: printed) takes to hold the flow at
//! the other, and one edit's latency from home to home, relayed (random-port routers: no hole
//! can be punched) and direct (port-preserving routers, once punched), each next to the same
//! between two nodes on the public host, with no NAT. Needs root; without, it says why and measures nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use coflow::api::{Call, Reply};
use coflow::cluster::nat::{listen, netns_command, NatKind, NatWorld, PUBLIC_ADDR};
use coflow::cluster::{unexpected, Member, ProcessNode};
use coflow::flow::{Edit, Role};

use crate::live::{max_seq, quantile, reader};

/// How long the network may take to do anything here (finding the other home through the
/// public node, a relay reservation, a hole punch).
const PATIENCE: Duration = Duration::from_secs(60);

/// What one world measured; `Err` says why a number is missing.
pub struct World {
    pub reach_ms: Result<f64, String>,
    /// Median of the edits' latencies, with the link they crossed as A's node reported it.
    pub live_ms: Result<(f64, String), String>,
}

pub struct Nat {
    pub preserving: World,
    pub random: World,
    /// The same between two nodes on the public host.
    pub base_reach_ms: f64,
    pub base_live_ms: f64,
}

/// Runs both worlds, `samples` edits each; Err(reason) if no world can be made here.
pub fn nat(root: &Path, samples: usize) -> Result<Nat, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no path to this benchmark: {e}"))?;
    let preserving = NatWorld::create(NatKind::PortPreserving)?;
    let (base_reach_ms, base_live_ms) = baseline(&exe, &preserving, &root.join("base"), samples);
    let preserving = homes(
        &exe,
        &preserving,
        &root.join("preserving"),
        samples,
        "direct",
    );
    let random = NatWorld::create(NatKind::RandomPorts)?;
    let random = homes(&exe, &random, &root.join("random"), samples, "relayed");
    Ok(Nat {
        preserving,
        random,
        base_reach_ms,
        base_live_ms,
    })
}

/// Two nodes on the public host, the second bootstrapped to the first.
fn baseline(exe: &Path, world: &NatWorld, root: &Path, samples: usize) -> (f64, f64) {
    let p = node(exe, world.public(), root, "Q1", 4002, None);
    let q = node(exe, world.public(), root, "Q2", 4003, Some(&p));
    let flow = flow(&p);
    let reach = reach(&p, &q, &flow).expect("two nodes on one host meet");
    let live = live(&p, &q, &flow, samples).expect("an edit between two nodes on one host");
    (reach, live)
}

/// The public node and the two homes; A adds B to a flow, then edits it `samples` times once
/// its link to B is `link` (or after [`PATIENCE`], whatever it is then: the note says).
fn homes(exe: &Path, world: &NatWorld, root: &Path, samples: usize, link: &str) -> World {
    let kind = world.kind();
    crate::step(&format!(
        "nat: {kind:?} routers, the public node and two homes"
    ));
    let p = node(exe, world.public(), root, "P", 4001, None);
    let started = Instant::now();
    let a = node(exe, world.home(0), root, "A", 0, Some(&p));
    let b = node(exe, world.home(1), root, "B", 0, Some(&p));
    // From a cold start, the homes first learn they are not reachable (AutoNAT) and reserve a
    // circuit on P; the member is added once both can be reached through it.
    let reserved = [&a, &b].iter().try_for_each(|h| reserved_on(h, &p));
    match &reserved {
        Ok(()) => crate::step(&format!(
            "nat: {kind:?}: both homes reachable through P {:.0} ms after they started",
            started.elapsed().as_secs_f64() * 1e3
        )),
        Err(e) => crate::step(&format!("nat: {kind:?}: {e}")),
    }
    let flow = flow(&a);
    let reach_ms = reach(&a, &b, &flow);
    let live_ms = match &reach_ms {
        Ok(_) => {
            let start = Instant::now();
            let mut seen = link_to(&a, b.node_id());
            while seen != link && start.elapsed() < PATIENCE {
                std::thread::sleep(Duration::from_millis(200));
                seen = link_to(&a, b.node_id());
            }
            live(&a, &b, &flow, samples).map(|ms| (ms, seen))
        }
        Err(e) => Err(format!("no edits measured: {e}")),
    };
    drop((a, b, p));
    World { reach_ms, live_ms }
}

/// Waits until `home` holds a reservation on `relay` (its `status` says so).
fn reserved_on(home: &ProcessNode, relay: &ProcessNode) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(Reply::Status(s)) = home.call(Call::Status) {
            if s.relays.iter().any(|r| r == relay.node_id()) {
                return Ok(());
            }
        }
        if start.elapsed() > PATIENCE {
            return Err(format!("{} holds no reservation on the relay", home.name()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `name`'s node in `ns` on TCP `port` (0: any), bootstrapped to `boot` (on the public
/// host, at [`PUBLIC_ADDR`]).
fn node(
    exe: &Path,
    ns: &str,
    root: &Path,
    name: &str,
    port: u16,
    boot: Option<&ProcessNode>,
) -> ProcessNode {
    let mut c: Command = netns_command(ns, exe);
    c.args(["--coflow", "node", "--no-mdns", "--no-web"]);
    for l in listen(port) {
        c.args(["--listen", &l]);
    }
    if let Some(boot) = boot {
        let port = tcp_port(boot);
        let addr = format!("/ip4/{PUBLIC_ADDR}/tcp/{port}/p2p/{}", boot.node_id());
        c.args(["--bootstrap", &addr]);
    }
    let home = root.join(name.to_lowercase());
    std::fs::create_dir_all(&home).expect("a data dir");
    ProcessNode::spawn(c, &home, name).unwrap_or_else(|e| panic!("{name}'s node: {e}"))
}

/// The TCP port `node` listens on.
fn tcp_port(node: &ProcessNode) -> u16 {
    let Ok(Reply::Status(s)) = node.call(Call::Status) else {
        panic!("{} does not answer", node.name());
    };
    s.listen
        .iter()
        .find_map(|a| {
            let parts: Vec<&str> = a.split('/').collect();
            let i = parts.iter().position(|p| *p == "tcp")?;
            parts.get(i + 1)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("{} listens on no TCP port: {:?}", node.name(), s.listen))
}

fn flow(owner: &ProcessNode) -> String {
    match owner.call(Call::FlowNew {
        title: "Suit".into(),
        need: "A suit".into(),
        role: Role::Owner,
    }) {
        Ok(Reply::Created { id }) => id,
        other => panic!("a new flow: {other:?}"),
    }
}

/// `a` adds `b` to `flow` by node id; the time until `b` holds it, having accepted the offer.
fn reach(a: &ProcessNode, b: &ProcessNode, flow: &str) -> Result<f64, String> {
    let start = Instant::now();
    a.edit(
        flow,
        Edit::AddMember {
            node_id: b.node_id().to_string(),
            role: Role::Customer,
            name: Some(b.name().to_string()),
        },
    )
    .map_err(|e| e.to_string())?;
    b.accept_offer(flow, PATIENCE).map_err(|e| e.to_string())?;
    while b.show(flow).is_err() {
        if start.elapsed() > PATIENCE {
            return Err(format!("{} did not hold the flow in time", b.name()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// The median time, over `samples` comments by `a` one at a time (after one to warm up), from
/// the edit call to the change being durable at `b`.
fn live(a: &ProcessNode, b: &ProcessNode, flow: &str, samples: usize) -> Result<f64, String> {
    let db_b = reader(b.home());
    let mut ms = Vec::new();
    for i in 0..=samples {
        let before = max_seq(&db_b);
        let start = Instant::now();
        a.edit(
            flow,
            Edit::Comment {
                text: format!("edit {i}"),
                step: None,
            },
        )
        .map_err(|e| e.to_string())?;
        while max_seq(&db_b) == before {
            if start.elapsed() > PATIENCE {
                return Err(format!("edit {i} did not reach {} in time", b.name()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if i > 0 {
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ms.sort_by(f64::total_cmp);
    Ok(quantile(&ms, 0.5))
}

/// How `a` reaches peer `b` ("direct", "relayed", "absent"; "unknown" from a node that does
/// not say).
fn link_to(a: &ProcessNode, b: &str) -> String {
    let peers = match a.call(Call::Peers) {
        Ok(Reply::Peers(p)) => p,
        Ok(other) => panic!("{:?}", unexpected(other)),
        Err(e) => panic!("{}'s peers: {e}", a.name()),
    };
    let json = serde_json::to_value(&peers).expect("peers as JSON");
    json.as_array()
        .into_iter()
        .flatten()
        .find(|p| p["node_id"] == b)
        .and_then(|p| p["link"].as_str())
        .unwrap_or("unknown")
        .to_string()
}
