//! Metrics over libp2p on 127.0.0.1: one change from node A to node B, and many writers among
//! many nodes. Arrival is observed in each node's own database (a read-only SQLite connection),
//! so "arrived" means applied and durable: a received change is committed after it is applied.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use automerge::{sync, Automerge, Change};
use coflow::api::{Call, Reply};
use coflow::cluster::{unexpected, InProcessNode, Member};
use coflow::flow::Edit;
use coflow::identity::{unhex, Identity};
use coflow::store::{Changes, Storage, Store, DB_FILE};
use rusqlite::{Connection, OpenFlags};

use crate::baseline::automerge_sync;
use crate::gen::{seed_home, FlowGen};

pub fn reader(home: &Path) -> Connection {
    Connection::open_with_flags(home.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("the node's database opens read-only")
}

pub fn max_seq(db: &Connection) -> i64 {
    db.query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
        r.get(0)
    })
    .expect("a query")
}

fn holds(db: &Connection, flow: &str, hash: &[u8]) -> bool {
    db.prepare_cached("SELECT 1 FROM changes WHERE flow = ?1 AND hash = ?2")
        .expect("a statement")
        .exists(rusqlite::params![flow, hash])
        .expect("a query")
}

fn comment(node: &dyn Member, flow: &str, text: String) -> coflow::Result<String> {
    match node.call(Call::Edit {
        flow: flow.to_string(),
        edit: Edit::Comment { text, step: None },
    })? {
        Reply::Edited(e) => Ok(e.change),
        other => Err(unexpected(other)),
    }
}

fn peers(node: &dyn Member) -> usize {
    match node.call(Call::Status) {
        Ok(Reply::Status(s)) => s.peers,
        _ => 0,
    }
}

/// Sorted latencies in ms: ours, and the baseline's.
pub struct Live {
    pub ms: Vec<f64>,
    pub base_ms: Vec<f64>,
}

/// A flow of `history` changes held by A and B; A makes `samples` comments, one at a time;
/// each is timed from the moment it is durable on A to the moment it is durable on B.
pub fn live(rt: &tokio::runtime::Runtime, root: &Path, history: usize, samples: usize) -> Live {
    let a_id = Identity::from_seed("bench-live-a", "A");
    let b_id = Identity::from_seed("bench-live-b", "B");
    let mut flow = FlowGen::new(&a_id, "Live");
    flow.add_member(&a_id, &b_id);
    flow.comments(&a_id, history.saturating_sub(2));
    let (home_a, home_b) = (root.join("a"), root.join("b"));
    drop(seed_home(&home_a, &a_id, &[&flow]));
    drop(seed_home(&home_b, &b_id, &[&flow]));

    let a = InProcessNode::start(rt.handle(), &home_a, "A", vec![]).expect("A starts");
    let addr = a.addr().expect("A's address").parse().expect("a multiaddr");
    let b = InProcessNode::start(rt.handle(), &home_b, "B", vec![addr]).expect("B starts");
    let (db_a, db_b) = (reader(&home_a), reader(&home_b));
    let deadline = Instant::now() + Duration::from_secs(30);
    while peers(&b) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let seq_before = max_seq(&db_a);

    let mut ms = Vec::new();
    // One warm-up change (connection and sync sessions set up), then the samples.
    for i in 0..=samples {
        let (a0, b0) = (max_seq(&db_a), max_seq(&db_b));
        let (ta, tb) = std::thread::scope(|s| {
            let edit = s.spawn(|| comment(&a, flow.id.as_str(), format!("live {i}")));
            let (mut ta, mut tb) = (None, None);
            let deadline = Instant::now() + Duration::from_secs(60);
            while tb.is_none() && Instant::now() < deadline {
                if ta.is_none() && max_seq(&db_a) > a0 {
                    ta = Some(Instant::now());
                }
                if ta.is_some() && max_seq(&db_b) > b0 {
                    tb = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            edit.join().expect("the edit thread").expect("A's edit");
            (ta, tb)
        });
        let (Some(ta), Some(tb)) = (ta, tb) else {
            panic!("a live change did not reach B within 60 s");
        };
        if i > 0 {
            ms.push((tb - ta).as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop((a, b));

    // Baseline: the same changes, synced between two plain Automerge documents that already
    // share the history.
    let store = Store::open(&home_a).expect("A's store");
    let all = store.reader().changes_after(&flow.id, 0).expect("changes");
    let parse = |c: &coflow::store::StoredChange| {
        Change::from_bytes(c.signed.bytes.clone()).expect("parses")
    };
    let (old, new): (Vec<_>, Vec<_>) = all.iter().partition(|c| c.seq <= seq_before);
    let mut d1 = Automerge::new();
    d1.apply_changes(old.iter().map(|c| parse(c)))
        .expect("applies");
    let mut d2 = Automerge::load(&d1.save()).expect("loads");
    let (mut s1, mut s2) = (sync::State::new(), sync::State::new());
    automerge_sync(&mut d1, &mut s1, &mut d2, &mut s2);
    let mut base_ms = Vec::new();
    for (i, c) in new.iter().enumerate() {
        d1.apply_changes([parse(c)]).expect("applies");
        let start = Instant::now();
        automerge_sync(&mut d1, &mut s1, &mut d2, &mut s2);
        if i > 0 {
            base_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    base_ms.sort_by(f64::total_cmp);
    Live { ms, base_ms }
}

pub struct Propagation {
    pub ms: Vec<f64>,
    pub lost: usize,
    /// Connected peers per node at the end (fewest, most).
    pub peers: (usize, usize),
    /// Over all nodes, per change written: announcements published, sync requests sent.
    pub announcements: f64,
    pub requests: f64,
    /// Over all nodes, per change written: sync request and response bytes.
    pub bytes: f64,
}

/// `nodes` nodes hold one flow; `writers` of them comment `rate` times a second for `secs`;
/// each comment is timed from its edit's return to the moment it is durable on every node.
pub fn propagation(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    nodes: usize,
    writers: usize,
    rate: f64,
    secs: f64,
) -> Propagation {
    let ids: Vec<Identity> = (0..nodes)
        .map(|i| Identity::from_seed(&format!("bench-prop-{i}"), &format!("Node {i}")))
        .collect();
    let mut flow = FlowGen::new(&ids[0], "Propagation");
    for id in &ids[1..] {
        flow.add_member(&ids[0], id);
    }
    let homes: Vec<_> = (0..nodes).map(|i| root.join(format!("n{i}"))).collect();
    for (home, id) in homes.iter().zip(&ids) {
        drop(seed_home(home, id, &[&flow]));
    }
    let mut running: Vec<InProcessNode> = Vec::new();
    for (i, home) in homes.iter().enumerate() {
        // Each knows one earlier node; the rest they find through the DHT.
        let boot = match i {
            0 => vec![],
            _ => vec![running[(i * 7919) % i]
                .addr()
                .expect("an address")
                .parse()
                .expect("a multiaddr")],
        };
        running.push(
            InProcessNode::start(rt.handle(), home, &format!("Node {i}"), boot)
                .expect("a node starts"),
        );
    }
    // Let the mesh form (every member dials every other it can find), up to 20 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && running.iter().any(|n| peers(n) + 1 < nodes) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let dbs: Vec<Connection> = homes.iter().map(|h| reader(h)).collect();
    let flow_hex = flow.id;

    let (tx, rx) = mpsc::channel::<(Vec<u8>, Instant)>();
    let per_writer = ((rate * secs).round() as usize).max(1);
    let mut ms = Vec::new();
    let mut lost = 0;
    std::thread::scope(|s| {
        for w in running.iter().take(writers) {
            let (tx, flow) = (tx.clone(), flow.id);
            s.spawn(move || {
                let start = Instant::now();
                for k in 0..per_writer {
                    let due = start + Duration::from_secs_f64(k as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let hash = comment(w, flow.as_str(), format!("{} says {k}", w.name()))
                        .expect("an edit");
                    let _ = tx.send((unhex(&hash).expect("hex"), Instant::now()));
                }
            });
        }
        drop(tx);
        // (hash, made at, which nodes have it)
        let mut pending: Vec<(Vec<u8>, Instant, Vec<bool>)> = Vec::new();
        let mut writers_done = false;
        let mut give_up = None;
        loop {
            loop {
                match rx.try_recv() {
                    Ok((h, t)) => pending.push((h, t, vec![false; nodes])),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        writers_done = true;
                        break;
                    }
                }
            }
            pending.retain_mut(|(hash, made, seen)| {
                for (i, db) in dbs.iter().enumerate() {
                    if !seen[i] && holds(db, flow_hex.as_str(), hash) {
                        seen[i] = true;
                    }
                }
                if seen.iter().all(|s| *s) {
                    ms.push(made.elapsed().as_secs_f64() * 1e3);
                    false
                } else {
                    true
                }
            });
            if writers_done {
                if pending.is_empty() {
                    break;
                }
                let limit = *give_up.get_or_insert(Instant::now() + Duration::from_secs(60));
                if Instant::now() > limit {
                    lost = pending.len();
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let counts: Vec<usize> = running.iter().map(|n| peers(n)).collect();
    let (mut announcements, mut requests, mut bytes) = (0u64, 0u64, 0u64);
    for n in &running {
        if let Ok(s) = coflow::cluster::stats(n) {
            announcements += s.announcements_sent;
            requests += s.requests_sent;
            bytes += s.request_bytes + s.response_bytes;
        }
    }
    drop(running);
    ms.sort_by(f64::total_cmp);
    let written = (ms.len() + lost).max(1) as f64;
    Propagation {
        ms,
        lost,
        peers: (
            counts.iter().copied().min().unwrap_or(0),
            counts.iter().copied().max().unwrap_or(0),
        ),
        announcements: announcements as f64 / written,
        requests: requests as f64 / written,
        bytes: bytes as f64 / written,
    }
}

/// The `q` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}
