//! Every input a fuzzer ever found to crash a target (kept in `tests/fuzz-crashers/<target>/`)
//! must now be handled cleanly, and so must a short, deterministic burst of mutated inputs per
//! target (a smoke test of the same entry points the cargo-fuzz targets in `fuzz/` drive).

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-crashers")
        .join(target);
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            f(&data);
            n += 1;
        }
    }
    n
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `seed` with a few random bytes flipped, inserted, dropped or overwritten.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..(1 + self.next() % 4) {
            let at = if v.is_empty() {
                0
            } else {
                (self.next() as usize) % v.len()
            };
            match self.next() % 4 {
                0 if !v.is_empty() => v[at] ^= 1 << (self.next() % 8),
                1 => v.insert(at, self.next() as u8),
                2 if !v.is_empty() => {
                    v.remove(at);
                }
                _ if !v.is_empty() => v[at] = self.next() as u8,
                _ => v.push(self.next() as u8),
            }
        }
        v
    }
}

fn valid_ticket() -> Vec<u8> {
    coflow::wire::InviteTicket {
        flow: "00112233445566778899aabbccddeeff".parse().unwrap(),
        invite: "0102030405060708".into(),
        secret: [7; 16],
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
    }
    .encode()
    .into_bytes()
}

/// A real change (a contributor adding a step), as bytes.
fn valid_change() -> Vec<u8> {
    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::ReadDoc;
    let mut doc = automerge::Automerge::new();
    let mut tx = doc.transaction();
    let steps = tx
        .put_object(automerge::ROOT, "steps", automerge::ObjType::List)
        .unwrap();
    let s = tx
        .insert_object(&steps, 0, automerge::ObjType::Map)
        .unwrap();
    tx.put(&s, "title", "a step").unwrap();
    let h = tx
        .commit_with(CommitOptions::default().with_time(3))
        .0
        .unwrap();
    doc.get_change_by_hash(&h).unwrap().bytes().into_owned()
}

fn burst(seeds: &[Vec<u8>], rounds: usize, f: fn(&[u8])) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..rounds {
        let seed = &seeds[i % seeds.len()];
        f(&rng.mutate(seed));
    }
}

#[test]
fn tickets() {
    replay("ticket", coflow::fuzz::ticket);
    burst(
        &[valid_ticket(), b"coflow1".to_vec(), vec![]],
        5_000,
        coflow::fuzz::ticket,
    );
}

#[test]
fn sync_messages() {
    replay("sync_message", coflow::fuzz::sync_message);
    use automerge::sync::SyncDoc;
    use prost::Message;
    let am = automerge::Automerge::new()
        .generate_sync_message(&mut automerge::sync::State::new())
        .unwrap()
        .encode();
    let req = coflow::wire::SyncRequest {
        message: Some(coflow::wire::SyncMessage {
            flow: vec![1; 16],
            automerge: am.clone(),
            changes: vec![coflow::wire::SignedChange {
                change: valid_change(),
                signature: vec![0; 64],
            }],
            session: 3,
            everyone_told: false,
        }),
    }
    .encode_to_vec();
    let announce = coflow::wire::encode_announce(&[automerge::ChangeHash([7; 32])]);
    burst(&[req, am, announce], 5_000, coflow::fuzz::sync_message);
}

#[test]
fn receive_path() {
    replay("receive", coflow::fuzz::receive);
    let change = coflow::fuzz::seed_change();
    // The unmutated seed is accepted: mutations start from a change that reaches the policy.
    let mut ok = vec![1u8];
    ok.extend_from_slice(&change);
    coflow::fuzz::receive(&ok);
    let mut signed_mode = vec![1u8];
    signed_mode.extend_from_slice(&change);
    let mut raw_mode = vec![0u8];
    raw_mode.extend_from_slice(&[0; 64]);
    raw_mode.extend_from_slice(&change);
    burst(&[signed_mode, raw_mode], 3_000, coflow::fuzz::receive);
}

/// The inputs that crash Automerge, and the seed, through a repository's whole accept path
/// (storing included): each is refused or stored, and the node's flow still loads.
#[test]
fn receive_path_through_the_store() {
    assert!(
        replay("receive", coflow::fuzz::receive_stored) > 0,
        "crashers to replay"
    );
    let mut ok = vec![1u8];
    ok.extend_from_slice(&coflow::fuzz::seed_change());
    coflow::fuzz::receive_stored(&ok);
}
