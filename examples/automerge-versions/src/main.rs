//! Same workload against two automerge versions, linked side by side via renamed deps.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Instant;

/// Counts live heap bytes, so "heap held by a loaded doc" is exact rather than RSS noise.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size() as isize, Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let q = System.realloc(p, l, n);
        if !q.is_null() {
            LIVE.fetch_add(n as isize - l.size() as isize, Relaxed);
        }
        q
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;
fn live() -> isize {
    LIVE.load(Relaxed)
}

/// Deterministic xorshift64* so both versions see the identical sequence of edits.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
fn med3(v: Vec<(f64, f64, f64)>) -> (f64, f64, f64) {
    let m = |f: fn(&(f64, f64, f64)) -> f64| median(v.iter().map(f).collect());
    (m(|x| x.0), m(|x| x.1), m(|x| x.2))
}
fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

const ACTORS: usize = 5;
const TAIL: usize = 50; // changes applied one at a time in measurement (a)
const REPS: usize = 3;

#[derive(Default, Debug)]
struct Res {
    build_ms: f64,
    apply_one_us: f64,
    batch_ms: f64,
    save_ms: f64,
    save_bytes: f64,
    load_ms: f64,
    sync: (f64, f64, f64), // (ms, bytes, messages): doc with data speaks first
    sync2: (f64, f64, f64), // same, empty peer speaks first
    heap_mb: f64,
}

macro_rules! bench {
    ($m:ident, $krate:ident) => {
        mod $m {
            use super::*;
            use $krate as am;
            use am::sync::{Message, State, SyncDoc};
            use am::transaction::Transactable;
            use am::{ActorId, Automerge, Change, ObjId, ObjType, ROOT};

            /// Root map with a "comments" list; each change either inserts one comment map
            /// (4 fields) or edits "text" of one of the author's 3 latest comments.
            /// 5 actors take turns (linear history). Returns a doc with exactly `n` changes.
            pub fn build(n: usize) -> Automerge {
                let actors: Vec<ActorId> =
                    (0..ACTORS as u8).map(|i| ActorId::from(vec![i + 1; 16])).collect();
                let mut doc = Automerge::new().with_actor(actors[0].clone());
                let mut tx = doc.transaction();
                let comments = tx.put_object(ROOT, "comments", ObjType::List).unwrap();
                let _ = tx.commit();
                let mut mine: Vec<Vec<ObjId>> = vec![vec![]; ACTORS];
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
                let mut len = 0usize;
                for i in 1..n {
                    let a = i % ACTORS;
                    doc.set_actor(actors[a].clone());
                    let mut tx = doc.transaction();
                    if mine[a].is_empty() || rng.next() % 2 == 0 {
                        let c = tx.insert_object(&comments, len, ObjType::Map).unwrap();
                        let body = "lorem ipsum ".repeat(1 + (rng.next() % 8) as usize);
                        tx.put(&c, "author", format!("actor-{a}")).unwrap();
                        tx.put(&c, "text", format!("comment {i}: {body}")).unwrap();
                        tx.put(&c, "ts", 1_700_000_000_000i64 + i as i64).unwrap();
                        tx.put(&c, "id", i as i64).unwrap();
                        len += 1;
                        mine[a].push(c);
                    } else {
                        let k = mine[a].len();
                        let pick = k - 1 - (rng.next() as usize % k.min(3));
                        tx.put(&mine[a][pick], "text", format!("edited at {i}")).unwrap();
                    }
                    let _ = tx.commit();
                }
                doc
            }

            #[allow(clippy::clone_on_copy, clippy::map_clone, clippy::redundant_clone)]
            fn all_changes(doc: &Automerge) -> Vec<Change> {
                // 0.6 returns Vec<&Change>, 0.12 returns Vec<Change>; clone works for both.
                #[allow(noop_method_call)]
                doc.get_changes(&[]).into_iter().map(|c| c.clone()).collect()
            }

            pub fn run(n: usize) -> Res {
                let t = Instant::now();
                let doc = build(n);
                let build_ms = ms(t);
                let all = all_changes(&doc);
                assert_eq!(all.len(), n);
                let (mut one, mut batch, mut save, mut bytes, mut load) = (vec![], vec![], vec![], vec![], vec![]);
                let (mut sync, mut sync2, mut heap) = (vec![], vec![], vec![]);
                for _ in 0..REPS {
                    // (a) apply the last TAIL changes one at a time onto a doc holding the rest
                    let mut base = Automerge::new();
                    base.apply_changes(all[..n - TAIL].to_vec()).unwrap();
                    let mut per = vec![];
                    for c in &all[n - TAIL..] {
                        let c = c.clone();
                        let t = Instant::now();
                        base.apply_changes([c]).unwrap();
                        per.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    assert_eq!(base.get_heads(), doc.get_heads());
                    one.push(median(per));
                    drop(base);

                    // (b) all N changes in one batch into an empty doc
                    let cs = all.clone();
                    let mut d = Automerge::new();
                    let t = Instant::now();
                    d.apply_changes(cs).unwrap();
                    batch.push(ms(t));
                    assert_eq!(d.get_heads(), doc.get_heads());
                    drop(d);

                    // (c) save / load, and live heap held by the loaded doc
                    let t = Instant::now();
                    let saved = doc.save();
                    save.push(ms(t));
                    bytes.push(saved.len() as f64);
                    let h0 = live();
                    let t = Instant::now();
                    let mut loaded = Automerge::load(&saved).unwrap();
                    load.push(ms(t));
                    heap.push((live() - h0) as f64 / 1048576.0);

                    // (d) full sync of an empty peer with the loaded doc, encoding every message;
                    // (d') the same with the empty peer sending the first message
                    for (peer_first, out) in [(false, &mut sync), (true, &mut sync2)] {
                        let (mut s1, mut s2) = (State::new(), State::new());
                        let mut peer = Automerge::new();
                        let (mut total, mut msgs) = (0usize, 0usize);
                        let t = Instant::now();
                        let mut turn = peer_first;
                        let mut quiet = 0;
                        while quiet < 2 {
                            let (from, fs, to, ts) = if turn {
                                (&mut peer, &mut s2, &mut loaded, &mut s1)
                            } else {
                                (&mut loaded, &mut s1, &mut peer, &mut s2)
                            };
                            if let Some(m) = from.generate_sync_message(fs) {
                                let b = m.encode();
                                total += b.len();
                                msgs += 1;
                                to.receive_sync_message(ts, Message::decode(&b).unwrap()).unwrap();
                                quiet = 0;
                            } else {
                                quiet += 1;
                            }
                            turn = !turn;
                        }
                        out.push((ms(t), total as f64, msgs as f64));
                        assert_eq!(peer.get_heads(), doc.get_heads());
                    }
                }
                Res {
                    build_ms,
                    apply_one_us: median(one),
                    batch_ms: median(batch),
                    save_ms: median(save),
                    save_bytes: median(bytes),
                    load_ms: median(load),
                    sync: med3(sync),
                    sync2: med3(sync2),
                    heap_mb: median(heap),
                }
            }
        }
    };
}

bench!(v06, am06);
bench!(v12, am12);

fn main() {
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N"))
        .collect();
    let ns = if ns.is_empty() { vec![2_000, 10_000] } else { ns };
    println!("median of {REPS} runs; (a) = median per-change time over the last {TAIL} changes");
    println!("| version | N | build ms | (a) apply 1 µs | (b) batch ms | (c) save ms | save bytes | load ms | (d) sync ms / bytes / msgs | (d') peer-first sync ms / bytes / msgs | (e) heap MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &ns {
        for (name, f) in [("0.6.1", v06::run as fn(usize) -> Res), ("0.12.0", v12::run)] {
            let r = f(n);
            println!(
                "| {name} | {n} | {:.0} | {:.1} | {:.1} | {:.2} | {:.0} | {:.1} | {:.1} / {:.0} / {:.0} | {:.1} / {:.0} / {:.0} | {:.2} |",
                r.build_ms, r.apply_one_us, r.batch_ms, r.save_ms, r.save_bytes, r.load_ms,
                r.sync.0, r.sync.1, r.sync.2, r.sync2.0, r.sync2.1, r.sync2.2, r.heap_mb
            );
        }
    }
}
