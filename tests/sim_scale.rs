//! One flow with many members on the shared simulator ([`coflow::sim`]): real engines, each
//! knowing a few peers at the start, with latency. The flow must reach every member, and changes
//! made by members must reach every other ([`coflow::sim::scenario::one_flow`] checks both);
//! prints how long that took in virtual time and what each node received per change.
//!
//! `cargo test --test sim_scale` runs 60 nodes; the 1,000-node run is
//! `cargo test --release --test sim_scale -- --ignored --nocapture`.

use coflow::sim::scenario::one_flow;

#[test]
fn sixty_members_on_a_sparse_network() {
    let r = one_flow(60, 3, 3, 7);
    println!("sim: {r}");
    // Gossip must keep each node's share of a change far below a copy per other member.
    assert!(
        r.messages_in_mean < (r.nodes - 1) as f64,
        "{} messages per node per change: a full mesh",
        r.messages_in_mean
    );
    assert!(r.bytes_in_mean > 0 && r.bytes_in_max >= r.bytes_in_mean);
}

#[test]
#[ignore = "200 engines: run in release"]
fn two_hundred_members_on_a_sparse_network() {
    let r = one_flow(200, 3, 5, 11);
    println!("sim: {r}");
}

#[test]
#[ignore = "1,000 engines: run in release"]
fn a_thousand_members_on_a_sparse_network() {
    let r = one_flow(1_000, 3, 5, 11);
    println!("sim: {r}");
    assert!(
        r.messages_in_mean < (r.nodes - 1) as f64,
        "{} messages per node per change: a full mesh",
        r.messages_in_mean
    );
}

/// The simulator is deterministic: the same seed gives the same run, to the byte.
#[test]
fn a_run_is_the_same_every_time() {
    let key = |r: &coflow::sim::scenario::Report| {
        (
            r.spread_ms,
            r.links,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.bytes_in_mean,
            r.bytes_in_max,
            r.messages_in_mean.to_bits(),
            r.heads.clone(),
            r.bytes_in_total,
        )
    };
    let (a, b) = (one_flow(20, 2, 2, 5), one_flow(20, 2, 2, 5));
    assert_eq!(key(&a), key(&b), "{a}\n{b}");
    let c = one_flow(20, 2, 2, 6);
    assert_ne!(key(&a), key(&c), "another seed, another run: {a}\n{c}");
}
