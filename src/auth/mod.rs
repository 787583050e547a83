//! Signed changes: verify → authorize → apply, one path for local and received changes.
//!
//! A change is accepted only if (1) its signature verifies under the key in its actor id, (2) all
//! its dependencies are accepted, and (3) in the flow's state at its dependencies its author is a
//! member whose role permits everything the change touches ([`policy`]). A genesis change (no
//! dependencies) is accepted only if it is the one the flow id names and it makes its author the
//! only member. Rejected changes never enter the document.

pub mod policy;
pub mod removal;

use std::collections::HashSet;

use automerge::{Automerge, Change, ChangeHash};
use ed25519_dalek::{Signature, VerifyingKey};

pub use policy::{authorize, authorize_with, Forbidden, RoleMemo};

use crate::flow::{flow_id_of_genesis, FlowId};
use crate::identity::{change_message, NodeId};

/// A change as stored and sent: Automerge's bytes and the author's signature over its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedChange {
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

/// A change whose signature has been checked.
#[derive(Clone, Debug)]
pub struct Verified {
    pub change: Change,
    /// The change's bytes as received (stored as they are: re-encoding a parsed change would
    /// compress it again).
    pub bytes: Vec<u8>,
    pub signature: [u8; 64],
    pub author: NodeId,
}

impl Verified {
    pub fn hash(&self) -> ChangeHash {
        self.change.hash()
    }
}

/// Why a change was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the change cannot be decoded: {0}")]
    Malformed(String),
    #[error("the change's actor id is not an ed25519 public key")]
    BadActor,
    #[error("the signature does not verify under the change's actor key")]
    BadSignature,
    #[error("the change starts another flow than this one")]
    WrongGenesis,
    #[error("it depends on a rejected change")]
    DependsOnRejected,
    #[error("the change is {0} bytes; a change may have at most {max}", max = crate::flow::limit::CHANGE_BYTES)]
    TooLarge(usize),
    #[error("the document refused it: {0}")]
    Refused(String),
    /// Another change with the same author incarnation and sequence number is held: its author
    /// signed two different changes in one place of its history. A relay passing on the other
    /// version did nothing wrong.
    #[error(
        "{0} signed another change with the same incarnation and sequence number (equivocation)"
    )]
    Equivocation(NodeId),
    #[error("{0}")]
    Forbidden(#[from] Forbidden),
}

impl Rejection {
    /// Whether `sender`, by sending this change, proves itself malicious. An honest node only
    /// passes on changes it accepted, and every honest node reaches the same verdict on a
    /// change from its history alone, so a forged, undecodable or forbidden change can only
    /// come from a liar. Not so for an equivocation, unless its author sends it: a relay may
    /// hold the other version, accepted first (an honest node never equivocates, since every
    /// process writes under an incarnation of its own). Nor for a change that builds on a
    /// rejected one: the rejected one is judged by itself.
    pub fn proves_malice(&self, sender: &NodeId) -> bool {
        match self {
            Rejection::Equivocation(author) => author == sender,
            Rejection::DependsOnRejected => false,
            _ => true,
        }
    }
}

type Decoded = (Change, NodeId, VerifyingKey, Signature);

/// Parses change bytes from a peer. Automerge's parser can panic on crafted input; that is
/// turned into an error like any other malformed change.
pub fn parse_change(bytes: &[u8]) -> Result<Change, String> {
    let bytes = bytes.to_vec();
    match std::panic::catch_unwind(|| Change::from_bytes(bytes)) {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the change's bytes crash the parser".into()),
    }
}

/// Authors already decoded in this batch (a key decodes by point decompression, several times
/// over through `NodeId`: once per author, not once per change). `None`: not a usable key.
type Authors = std::collections::HashMap<Vec<u8>, Option<(NodeId, VerifyingKey)>>;

// A rejection names its equivocator inline (a `NodeId` is 89 bytes); rejections are rare.
#[allow(clippy::result_large_err)]
fn decode(
    sc: &SignedChange,
    authors: &mut Authors,
) -> Result<Decoded, (Option<ChangeHash>, Rejection)> {
    if sc.bytes.len() > crate::flow::limit::CHANGE_BYTES {
        return Err((None, Rejection::TooLarge(sc.bytes.len())));
    }
    let change = parse_change(&sc.bytes).map_err(|e| (None, Rejection::Malformed(e)))?;
    let hash = change.hash();
    let actor = change.actor_id().to_bytes();
    let author = (*authors
        .entry(actor.to_vec())
        .or_insert_with(|| {
            crate::identity::actor_key(actor)
                .and_then(NodeId::from_public_key)
                .map(|n| (n.verifying_key(), n))
                .filter(|(k, _)| !k.is_weak())
                .map(|(k, n)| (n, k))
        }))
        .ok_or((Some(hash), Rejection::BadActor))?;
    let sig = <[u8; 64]>::try_from(sc.signature.as_slice())
        .map(|b| Signature::from_bytes(&b))
        .map_err(|_| (Some(hash), Rejection::BadSignature))?;
    Ok((change, author.0, author.1, sig))
}

/// Verified changes, rejected ones, and how many were already held.
type VerifiedNew = (Vec<Verified>, Vec<(Option<ChangeHash>, Rejection)>, usize);

/// Checks many signatures at once (batch verification), falling back to one by one to find the
/// bad ones when the batch fails, for the changes `held` does not already know; those are counted, not
/// checked (the same change often arrives over several conversations).
fn verify_new(batch: &[SignedChange], held: impl Fn(&ChangeHash) -> bool + Sync) -> VerifiedNew {
    // A large batch (a catch-up) is split in two, parsed and checked on two threads.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if batch.len() < PARALLEL_VERIFY_MIN || threads < 2 {
        return verify_serial(batch, &held);
    }
    let (a, b) = batch.split_at(batch.len() / 2);
    let (mut first, second) = std::thread::scope(|s| {
        let other = s.spawn(|| verify_serial(b, &held));
        let first = verify_serial(a, &held);
        (first, other.join())
    });
    match second {
        Ok((verified, rejected, known)) => {
            first.0.extend(verified);
            first.1.extend(rejected);
            first.2 += known;
            first
        }
        // Parsing is guarded against panics; should the other thread panic anyway, its half
        // is refused, not trusted.
        Err(_) => {
            first.1.extend(b.iter().map(|_| {
                (
                    None,
                    Rejection::Malformed("the change could not be checked".into()),
                )
            }));
            first
        }
    }
}

/// Batches at least this large are verified on two threads.
const PARALLEL_VERIFY_MIN: usize = 512;

fn verify_serial(batch: &[SignedChange], held: &impl Fn(&ChangeHash) -> bool) -> VerifiedNew {
    let mut decoded = Vec::with_capacity(batch.len());
    let mut indexes = Vec::with_capacity(batch.len());
    let mut rejected = Vec::new();
    let mut known = 0;
    let mut authors = Authors::new();
    for (i, sc) in batch.iter().enumerate() {
        match decode(sc, &mut authors) {
            Ok(d) if held(&d.0.hash()) => known += 1,
            Ok(d) => {
                decoded.push(d);
                indexes.push(i);
            }
            Err(r) => rejected.push(r),
        }
    }
    let messages: Vec<Vec<u8>> = decoded
        .iter()
        .map(|(c, _, _, _)| change_message(&c.hash()))
        .collect();
    let msg_refs: Vec<&[u8]> = messages.iter().map(|m| m.as_slice()).collect();
    let sigs: Vec<Signature> = decoded.iter().map(|(_, _, _, s)| *s).collect();
    let keys: Vec<VerifyingKey> = decoded.iter().map(|(_, _, k, _)| *k).collect();
    let all_good =
        !decoded.is_empty() && ed25519_dalek::verify_batch(&msg_refs, &sigs, &keys).is_ok();
    let mut verified = Vec::with_capacity(decoded.len());
    for (i, (change, author, _, sig)) in decoded.into_iter().enumerate() {
        if all_good || keys[i].verify_strict(&messages[i], &sig).is_ok() {
            verified.push(Verified {
                change,
                bytes: batch[indexes[i]].bytes.clone(),
                signature: sig.to_bytes(),
                author,
            });
        } else {
            rejected.push((Some(change.hash()), Rejection::BadSignature));
        }
    }
    (verified, rejected, known)
}

/// What became of a batch of received changes.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Accepted and applied, in an order where every change follows its dependencies.
    pub accepted: Vec<Verified>,
    pub rejected: Vec<(Option<ChangeHash>, Rejection)>,
    /// Verified, but waiting for dependencies this node does not hold yet.
    pub pending: Vec<Verified>,
    /// Changes this node already held.
    pub known: usize,
    /// The accepted changes that touched the members map (the only ones that can remove one).
    pub touched_members: Vec<ChangeHash>,
}

/// Applies changes, turning a panic inside Automerge into an error. Automerge trusts its input
/// more than a node can: a well-signed but malformed change can make it panic, and one peer must
/// not be able to bring a node down that way. After an error the document must be reloaded.
pub fn apply_guarded(doc: &mut Automerge, changes: Vec<Change>) -> Result<(), Rejection> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.apply_changes(changes))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(automerge::AutomergeError::DuplicateSeqNumber(_, actor))) => {
            match crate::identity::actor_node(&actor) {
                Some(author) => Err(Rejection::Equivocation(author)),
                None => Err(Rejection::BadActor),
            }
        }
        Ok(Err(e)) => Err(Rejection::Refused(e.to_string())),
        Err(_) => Err(Rejection::Refused(
            "the document cannot take this change (Automerge panicked)".into(),
        )),
    }
}

fn holds(doc: &Automerge, hash: &ChangeHash) -> bool {
    doc.get_change_meta_by_hash(hash).is_some()
}

/// Runs a batch through verify → order → apply → authorize on `doc`.
///
/// On return `doc` holds exactly its previous changes plus `accepted`. Changes are applied in one
/// batch (Automerge is much faster that way); if any of them is then refused, `reload` must give
/// back the document as it was before the call, and the accepted ones are applied to it again.
pub fn accept<E>(
    doc: &mut Automerge,
    flow_id: &FlowId,
    batch: &[SignedChange],
    reload: impl FnMut() -> Result<Automerge, E>,
) -> Result<Outcome, E> {
    accept_with(doc, flow_id, batch, reload, &mut RoleMemo::default())
}

/// [`accept`], with a memo of roles kept across batches of the same flow (see [`RoleMemo`]).
pub fn accept_with<E>(
    doc: &mut Automerge,
    flow_id: &FlowId,
    batch: &[SignedChange],
    mut reload: impl FnMut() -> Result<Automerge, E>,
    memo: &mut RoleMemo,
) -> Result<Outcome, E> {
    let (verified, rejected, known) = verify_new(batch, |h| holds(doc, h));
    let mut out = Outcome {
        rejected,
        known,
        ..Outcome::default()
    };
    let mut seen = HashSet::new();
    let mut todo = Vec::new();
    for v in verified {
        let hash = v.hash();
        if !seen.insert(hash) || holds(doc, &hash) {
            out.known += 1;
        } else if v.change.deps().is_empty() && flow_id_of_genesis(&hash) != *flow_id {
            out.rejected.push((Some(hash), Rejection::WrongGenesis));
        } else {
            todo.push(v);
        }
    }

    // Order the batch so each change follows its dependencies; set aside the ones that wait.
    let mut ready: Vec<Verified> = Vec::new();
    let mut ready_set: HashSet<ChangeHash> = HashSet::new();
    loop {
        let before = todo.len();
        let mut waiting = Vec::new();
        for v in todo {
            if v.change
                .deps()
                .iter()
                .all(|d| ready_set.contains(d) || holds(doc, d))
            {
                ready_set.insert(v.hash());
                ready.push(v);
            } else {
                waiting.push(v);
            }
        }
        todo = waiting;
        if todo.len() == before || todo.is_empty() {
            break;
        }
    }
    out.pending = todo;
    if ready.is_empty() {
        reject_dependents_of_rejected(&mut out);
        return Ok(out);
    }

    let mut refused: HashSet<ChangeHash> = HashSet::new();
    let mut accepted: Vec<Verified> = Vec::new();
    let mut tainted = false;
    let mut touched = HashSet::new();
    let mut judge = |doc: &Automerge, v: &Verified, refused: &HashSet<ChangeHash>| {
        if v.change.deps().iter().any(|d| refused.contains(d)) {
            Err(Rejection::DependsOnRejected)
        } else {
            // The policy reads the document through Automerge at the change's past; a panic
            // there, on whatever a peer sent, refuses the change instead of ending the node.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                authorize_with(doc, &v.change, &v.author, memo)
            }))
            .unwrap_or_else(|_| Err(Forbidden("the change cannot be judged".into())))
            .map_err(Rejection::from)
            .map(|judged| {
                if judged.touched_members {
                    touched.insert(v.hash());
                }
            })
        }
    };
    if apply_guarded(doc, ready.iter().map(|v| v.change.clone()).collect()).is_ok() {
        for v in ready {
            match judge(doc, &v, &refused) {
                Ok(()) => accepted.push(v),
                Err(r) => {
                    tainted = true;
                    refused.insert(v.hash());
                    out.rejected.push((Some(v.hash()), r));
                }
            }
        }
        if tainted {
            *doc = reload()?;
            reapply(doc, &mut accepted, &mut out, &mut reload)?;
        }
    } else {
        // The document refused the batch as a whole: find the culprits one change at a time.
        *doc = reload()?;
        for v in ready {
            let verdict = match apply_guarded(doc, vec![v.change.clone()]) {
                Ok(()) => judge(doc, &v, &refused),
                Err(r) => Err(r),
            };
            match verdict {
                Ok(()) => accepted.push(v),
                Err(r) => {
                    refused.insert(v.hash());
                    out.rejected.push((Some(v.hash()), r));
                    *doc = reload()?;
                    reapply(doc, &mut accepted, &mut out, &mut reload)?;
                }
            }
        }
    }
    out.touched_members = accepted
        .iter()
        .map(|v| v.hash())
        .filter(|h| touched.contains(h))
        .collect();
    out.accepted = accepted;
    reject_dependents_of_rejected(&mut out);
    Ok(out)
}

/// Applies again, to a document reloaded from before the batch, the changes already accepted.
/// Guarded like every Automerge call on a peer's bytes. These changes applied to this very
/// document a moment ago, so a failure would be Automerge's; should it happen, the document is
/// reloaded and the whole batch refused rather than trusted (nothing of it is stored).
fn reapply<E>(
    doc: &mut Automerge,
    accepted: &mut Vec<Verified>,
    out: &mut Outcome,
    reload: &mut impl FnMut() -> Result<Automerge, E>,
) -> Result<(), E> {
    if let Err(r) = apply_guarded(doc, accepted.iter().map(|v| v.change.clone()).collect()) {
        tracing::error!(target: "auth", "changes accepted once do not apply again: {r}");
        *doc = reload()?;
        out.rejected
            .extend(accepted.drain(..).map(|v| (Some(v.hash()), r.clone())));
    }
    Ok(())
}

/// A waiting change that builds on a rejected one can never be accepted: reject it now rather
/// than keep it waiting.
fn reject_dependents_of_rejected(out: &mut Outcome) {
    let mut bad: HashSet<ChangeHash> = out.rejected.iter().filter_map(|(h, _)| *h).collect();
    loop {
        let (doomed, waiting): (Vec<Verified>, Vec<Verified>) = std::mem::take(&mut out.pending)
            .into_iter()
            .partition(|v| v.change.deps().iter().any(|d| bad.contains(d)));
        out.pending = waiting;
        if doomed.is_empty() {
            return;
        }
        for v in doomed {
            bad.insert(v.hash());
            out.rejected
                .push((Some(v.hash()), Rejection::DependsOnRejected));
        }
    }
}
