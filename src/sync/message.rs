//! Sync messages on the wire: Automerge's sync message with its changes moved out and paired
//! with their signatures, read from the store, capped in size; and taking one apart.

use super::*;

/// Decodes a peer's Automerge sync message; a decoder panic is an error like any other.
pub fn decode_sync_message(bytes: &[u8]) -> Result<sync::Message, String> {
    guarded(|| sync::Message::decode(bytes))
        .ok_or("a sync message that crashes the decoder")?
        .map_err(|e| format!("malformed sync message: {e}"))
}

/// Runs Automerge code on peer-supplied input, turning a panic into `None`.
pub(super) fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// The flow id a wire message names: 16 bytes, or none.
pub(super) fn flow_id(bytes: &[u8]) -> Option<FlowId> {
    FlowId::from_bytes(bytes)
}

/// The changes a peer lacks, oldest first, when every head it last told us of is held here (so
/// its history is exactly those heads' ancestry), leaving out those already sent in this
/// session; empty otherwise (Automerge's sync then works out what to send from the peer's
/// summary of what it has).
pub(super) fn lacking_changes(doc: &Automerge, state: &sync::State) -> Vec<ChangeHash> {
    let Some(theirs) = &state.their_heads else {
        return Vec::new();
    };
    if !theirs
        .iter()
        .all(|h| doc.get_change_meta_by_hash(h).is_some())
    {
        return Vec::new();
    }
    // The heads are the peer's: guarded like every Automerge call on peer input.
    guarded(|| doc.get_changes_meta(theirs))
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.hash)
        .filter(|h| !state.sent_hashes.contains(h))
        .collect()
}

/// A sync message carrying the first of `lacking` (oldest first) that fit in one message, read
/// with their signatures from the store; they are recorded as sent, so the next message goes on
/// from there.
pub(super) fn from_store<S: Storage>(
    repo: &Repo<S>,
    flow: &FlowId,
    message: sync::Message,
    lacking: &[ChangeHash],
    state: &mut sync::State,
) -> Result<SyncMessage> {
    let mut changes = Vec::new();
    let mut size = 0usize;
    for hash in lacking {
        let Some(signed) = repo.signed_change(flow, hash)? else {
            continue;
        };
        if !fits(size, signed.bytes.len(), changes.len()) {
            break;
        }
        size += signed.bytes.len() + signed.signature.len();
        state.sent_hashes.insert(*hash);
        changes.push(wire::SignedChange {
            change: signed.bytes,
            signature: signed.signature,
        });
    }
    Ok(carrying(flow, message, changes))
}

/// Moves the changes out of an Automerge sync message, pairs each with its stored signature,
/// and caps the message's size; changes left out are forgotten by the sync state so they go in
/// a later message.
pub(super) fn to_wire<S: Storage>(
    repo: &Repo<S>,
    flow: &FlowId,
    message: sync::Message,
    state: &mut sync::State,
) -> Result<SyncMessage> {
    let mut changes = Vec::new();
    let mut size = 0usize;
    for chunk in message.changes.iter() {
        let decoded: Vec<Change> = match Change::from_bytes(chunk.to_vec()) {
            Ok(c) => vec![c],
            // A whole-document chunk (never requested, but handled): split it into changes.
            Err(_) => Automerge::load(chunk)
                .map(|d| d.get_changes(&[]))
                .unwrap_or_default(),
        };
        for mut change in decoded {
            let hash = change.hash();
            let bytes = change.bytes().into_owned();
            let full = !fits(size, bytes.len(), changes.len());
            match repo.signature(flow, &hash)? {
                Some(signature) if !full => {
                    size += bytes.len() + signature.len();
                    changes.push(wire::SignedChange {
                        change: bytes,
                        signature,
                    });
                }
                _ => {
                    state.sent_hashes.remove(&hash);
                }
            }
        }
    }
    Ok(carrying(flow, message, changes))
}

/// Whether a change of `bytes` bytes still fits in a message holding `count` changes of `size`
/// bytes (half the message cap: headroom for the heads, bloom filter and framing).
pub(super) fn fits(size: usize, bytes: usize, count: usize) -> bool {
    size + bytes + 100 <= wire::MAX_SYNC_MESSAGE / 2 && count < wire::MAX_CHANGES_PER_MESSAGE
}

/// Our wire message: Automerge's sync message with its change list emptied, and `changes`
/// (each with its signature) beside it.
pub(super) fn carrying(
    flow: &FlowId,
    mut message: sync::Message,
    changes: Vec<wire::SignedChange>,
) -> SyncMessage {
    message.changes = sync::ChunkList::empty();
    SyncMessage {
        flow: flow.as_bytes().to_vec(),
        automerge: message.encode(),
        changes,
        session: 0,
        everyone_told: false,
    }
}

/// A received sync message checked and taken apart: Automerge's message (which must carry no
/// changes of its own: every change travels with its signature) and the signed changes, at
/// most [`wire::MAX_CHANGES_PER_MESSAGE`]. An `Err` is a reason to penalize the sender.
pub(super) fn unpack(
    message: SyncMessage,
) -> std::result::Result<(sync::Message, Vec<SignedChange>), String> {
    let am = decode_sync_message(&message.automerge)?;
    if !am.changes.is_empty() {
        return Err("changes must travel with their signatures".into());
    }
    if message.changes.len() > wire::MAX_CHANGES_PER_MESSAGE {
        return Err("too many changes in one message".into());
    }
    Ok((am, message.changes.into_iter().map(Into::into).collect()))
}

/// Penalize only what proves `sender` malicious (see [`crate::auth::Rejection::proves_malice`]):
/// an honest relay may well pass on the other version of an equivocating member's change.
pub(super) fn blame(
    sender: &NodeId,
    rejected: &[(Option<ChangeHash>, crate::auth::Rejection)],
) -> std::result::Result<(), String> {
    match rejected.iter().find(|(_, r)| r.proves_malice(sender)) {
        Some((_, why)) => Err(format!("sent a change that was rejected: {why}")),
        None => Ok(()),
    }
}

/// Replaces every refused change among `heads` by its dependencies (transitively), keeping
/// the list free of repeats.
pub(super) fn unrefused(
    heads: &mut Vec<ChangeHash>,
    refused: &HashMap<ChangeHash, Vec<ChangeHash>>,
) {
    if !heads.iter().any(|h| refused.contains_key(h)) {
        return;
    }
    let mut out: Vec<ChangeHash> = Vec::new();
    let mut todo = std::mem::take(heads);
    let mut seen = HashSet::default();
    while let Some(h) = todo.pop() {
        if !seen.insert(h) {
            continue;
        }
        match refused.get(&h) {
            Some(deps) => todo.extend(deps.iter().copied()),
            None => out.push(h),
        }
    }
    out.sort();
    *heads = out;
}

pub(super) fn sorted(mut heads: Vec<automerge::ChangeHash>) -> Vec<automerge::ChangeHash> {
    heads.sort();
    heads
}
