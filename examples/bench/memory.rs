//! Memory per idle flow and cold start, each measured in a fresh child process (this same
//! binary, `--child ...`) so one measurement's heap does not blur the next.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use automerge::Automerge;
use coflow::cluster::InProcessNode;
use coflow::identity::Identity;
use coflow::repo::Repo;
use coflow::store::{Changes, Flows, Storage, Store};

use crate::gen::{seed_home_bulk, FlowGen};

/// This process's resident set size in bytes (`VmRSS` in /proc/self/status).
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Writes `n` idle flows (genesis, a second member, four steps, six comments: 12 changes each)
/// into a fresh data dir.
pub fn make_idle_flows(home: &Path, n: usize) -> usize {
    let me = Identity::from_seed("bench-idle-owner", "Owner");
    let other = Identity::from_seed("bench-idle-other", "Other");
    let flows: Vec<FlowGen> = (0..n)
        .map(|i| {
            let mut g = FlowGen::new(&me, &format!("Idle flow {i}"));
            g.add_member(&me, &other);
            for s in 0..4 {
                g.edit(
                    &me,
                    &coflow::flow::Edit::AddStep {
                        title: format!("Step {s}"),
                        detail: None,
                        assignee: None,
                        customer_involved: s == 0,
                        due: None,
                    },
                );
            }
            g.comments(&me, 6);
            g
        })
        .collect();
    let bytes = flows.iter().map(|f| f.signed_bytes()).sum::<usize>();
    seed_home_bulk(home, &me, &flows);
    // As after the node's first run: every flow's summary is stored (a store from before
    // summaries gets them once, the first time each flow is asked for).
    let mut repo = Repo::open(home).expect("the repository");
    for f in &flows {
        repo.summary(&f.id).expect("a summary");
    }
    bytes / n.max(1)
}

pub struct Held {
    pub rss_per_flow: f64,
    pub ms: f64,
}

/// Runs `--child WHAT HOME N` and reads its answer: RSS growth in bytes and time in ms.
pub fn child(what: &str, home: &Path, n: usize) -> Held {
    let out = Command::new(std::env::current_exe().expect("this binary"))
        .args(["--child", what])
        .arg(home)
        .arg(n.to_string())
        .output()
        .expect("the child runs");
    assert!(
        out.status.success(),
        "child {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .split_whitespace()
        .map(|p| p.parse::<f64>().expect("a number"));
    let (grew, ms) = (parts.next().expect("rss"), parts.next().expect("ms"));
    Held {
        rss_per_flow: grew / n as f64,
        ms,
    }
}

/// In the child: `node` starts a node on the data dir and waits until it answers (it has then
/// read every flow's heads and members, from the flows' stored summaries); `automerge` loads the same stored
/// bytes into plain Automerge documents; `list` opens the repository and lists its flows with
/// what each waits on its user for. Prints RSS growth (bytes) and time (ms).
pub fn run_child(what: &str, home: &Path, n: usize) {
    match what {
        "node" => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            let before = rss();
            let start = Instant::now();
            let node = InProcessNode::start(rt.handle(), home, "Owner", vec![]).expect("starts");
            let ms = start.elapsed().as_secs_f64() * 1e3;
            // Let the first anti-entropy tick pass (it reads every flow's heads).
            std::thread::sleep(Duration::from_millis(1500));
            let grew = rss().saturating_sub(before);
            drop(node);
            println!("{grew} {ms}");
        }
        "automerge" => {
            let store = Store::open(home).expect("the store");
            let reader = store.reader();
            let stored: Vec<Vec<u8>> = reader
                .flow_ids()
                .expect("flows")
                .iter()
                .map(|f| {
                    reader
                        .changes_after(f, 0)
                        .expect("changes")
                        .into_iter()
                        .flat_map(|c| c.signed.bytes)
                        .collect()
                })
                .collect();
            assert_eq!(stored.len(), n);
            let before = rss();
            let start = Instant::now();
            let docs: Vec<Automerge> = stored
                .iter()
                .map(|b| Automerge::load(b).expect("loads"))
                .collect();
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let grew = rss().saturating_sub(before);
            assert!(docs.iter().all(|d| d.get_changes(&[]).len() == 12));
            println!("{grew} {ms}");
        }
        "list" => {
            // `flow list` on a node's first call: every flow's document is loaded to tell
            // what waits on its user.
            let mut repo = Repo::open(home).expect("the repository");
            let before = rss();
            let start = Instant::now();
            let listed = repo.list().expect("lists");
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let grew = rss().saturating_sub(before);
            assert_eq!(listed.len(), n);
            println!("{grew} {ms}");
        }
        other => panic!("unknown child '{other}'"),
    }
}
