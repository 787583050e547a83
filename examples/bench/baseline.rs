//! Plain Automerge sync, for the baselines (coflow's own engines run on the shared simulator,
//! `coflow::sim`).

use automerge::sync::{self, SyncDoc};
use automerge::Automerge;

/// Plain Automerge sync between two documents until both are quiet, every message encoded and
/// decoded as a transport would. Returns the encoded bytes exchanged.
pub fn automerge_sync(
    a: &mut Automerge,
    sa: &mut sync::State,
    b: &mut Automerge,
    sb: &mut sync::State,
) -> u64 {
    let mut bytes = 0u64;
    loop {
        let mut quiet = true;
        if let Some(m) = a.generate_sync_message(sa) {
            let wire = m.encode();
            bytes += wire.len() as u64;
            let m = sync::Message::decode(&wire).expect("decodes");
            b.receive_sync_message(sb, m).expect("received");
            quiet = false;
        }
        if let Some(m) = b.generate_sync_message(sb) {
            let wire = m.encode();
            bytes += wire.len() as u64;
            let m = sync::Message::decode(&wire).expect("decodes");
            a.receive_sync_message(sa, m).expect("received");
            quiet = false;
        }
        if quiet {
            return bytes;
        }
    }
}
