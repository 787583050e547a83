//! Node identity: one ed25519 key per node.
//!
//! The same key is the node's libp2p identity (its [`NodeId`] is the libp2p `PeerId` of the key)
//! and the Automerge actor id of every change it makes (the 32-byte public key). So every change
//! names the key that must have signed it.
//!
//! The key lives in `identity.key` in the data dir, mode 0600, as a small JSON document holding
//! the secret key (hex), the node's display name, the node id the key gives and a checksum over
//! all three, so a damaged file is refused instead of silently becoming another node (version 2;
//! version 1 files, without node id or checksum, still load). Like ssh, a key file that group or
//! others may read or write is refused, and so is a data dir group or others may write to
//! (they could replace the key).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name of the key inside the data dir.
pub const KEY_FILE: &str = "identity.key";

/// Test-only: when set, `coflow init` derives the key from this string instead of the OS random
/// generator, so transcripts and tests get the same node ids on every run. Never use it for a
/// real node: anyone who knows the string knows the key.
pub const TEST_SEED_ENV: &str = "COFLOW_TEST_KEY_SEED";

/// Domain separation for change signatures: a signature over a change hash is a signature over
/// `CHANGE_SIG_DOMAIN || hash`, so it can never be confused with a signature made by the same key
/// for another purpose (such as the libp2p Noise handshake).
pub const CHANGE_SIG_DOMAIN: &[u8] = b"coflow/change/v1\0";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no identity in {0}: run `coflow init --name NAME` first")]
    Missing(PathBuf),
    #[error("an identity already exists in {0}; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("the key file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "permissions {mode:04o} for {path} are too open: the key must be readable and writable by \
         its owner only (chmod 600 {path})"
    )]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error(
        "permissions {mode:04o} for the data dir {path} are too open: others could replace the \
         key (chmod go-w {path})"
    )]
    DirTooOpen { path: PathBuf, mode: u32 },
    #[error("cannot access the key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node name must not be empty")]
    EmptyName,
    #[error("no randomness available from the operating system: {0}")]
    Random(String),
}

/// A node's public identity, printed as the libp2p `PeerId` (base58, `12D3KooW…`). `Copy`: the
/// key and its printed form are kept inline, so passing one around allocates nothing and
/// printing it encodes nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    key: [u8; 32],
    text: Printed,
}

/// A node id's base58 form, inline (an ed25519 peer id prints as 52 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Printed {
    len: u8,
    bytes: [u8; PRINTED_MAX],
}

const PRINTED_MAX: usize = 56;

/// The protobuf encoding of an ed25519 public key, before its 32 bytes (libp2p's `PublicKey`:
/// key type 1, then the key as a 32-byte field), and the identity multihash of that encoding,
/// which is an ed25519 key's `PeerId`.
const KEY_PROTOBUF_PREFIX: [u8; 4] = [0x08, 0x01, 0x12, 0x20];
const PEER_ID_PREFIX: [u8; 2] = [0x00, 0x24];

impl NodeId {
    /// The node id of a 32-byte ed25519 public key; `None` if the bytes are not a valid key.
    pub fn from_public_key(bytes: &[u8]) -> Option<NodeId> {
        let key: [u8; 32] = bytes.try_into().ok()?;
        VerifyingKey::from_bytes(&key).ok()?;
        let public = libp2p_identity::ed25519::PublicKey::try_from_bytes(&key).ok()?;
        let peer = libp2p_identity::PublicKey::from(public).to_peer_id().to_base58();
        let mut text = Printed {
            len: peer.len() as u8,
            bytes: [0; PRINTED_MAX],
        };
        text.bytes.get_mut(..peer.len())?.copy_from_slice(peer.as_bytes());
        Some(NodeId { key, text })
    }

    /// The node id of a libp2p peer, read from the key its `PeerId` carries (no base58 round
    /// trip); `None` if it is not an ed25519 key.
    pub fn from_peer_id(peer: &libp2p_identity::PeerId) -> Option<NodeId> {
        let bytes = peer.to_bytes();
        let key = bytes
            .strip_prefix(&PEER_ID_PREFIX)?
            .strip_prefix(&KEY_PROTOBUF_PREFIX)?;
        NodeId::from_public_key(key)
    }

    /// This node id as a libp2p `PeerId` (built from the key, not parsed from text).
    pub fn peer_id(&self) -> libp2p_identity::PeerId {
        let mut bytes = Vec::with_capacity(38);
        bytes.extend_from_slice(&PEER_ID_PREFIX);
        bytes.extend_from_slice(&KEY_PROTOBUF_PREFIX);
        bytes.extend_from_slice(&self.key);
        libp2p_identity::PeerId::from_bytes(&bytes).expect("an ed25519 key's peer id")
    }

    /// The 32-byte public key (also the Automerge actor id of this node's changes).
    pub fn public_key(&self) -> &[u8; 32] {
        &self.key
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.key).expect("NodeId holds a validated key")
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text.bytes[..self.text.len as usize]).expect("base58 is ASCII")
    }
}

impl FromStr for NodeId {
    type Err = String;

    /// Parses a printed node id. Only ed25519 peer ids qualify: other key types cannot sign
    /// coflow changes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let peer =
            libp2p_identity::PeerId::from_str(s).map_err(|_| format!("'{s}' is not a node id"))?;
        let mh = peer.as_ref();
        // An ed25519 peer id is the identity multihash of the protobuf-encoded public key.
        if mh.code() != 0 {
            return Err(format!("'{s}' is not an ed25519 node id"));
        }
        let public = libp2p_identity::PublicKey::try_decode_protobuf(mh.digest())
            .map_err(|_| format!("'{s}' is not an ed25519 node id"))?;
        let ed = public
            .try_into_ed25519()
            .map_err(|_| format!("'{s}' is not an ed25519 node id"))?;
        NodeId::from_public_key(&ed.to_bytes()).ok_or_else(|| format!("'{s}' is not a node id"))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.as_str())
    }
}

#[cfg(feature = "testkit")]
thread_local! {
    static SEEDED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Makes this thread's random ids (flow, step and comment ids, incarnations, invite secrets)
/// come from a generator seeded with `seed` instead of the operating system (`None`: from the
/// operating system again), so that a simulation's changes, and so its run, are the same every
/// time. With `testkit` only.
#[cfg(feature = "testkit")]
pub fn seed_random(seed: Option<u64>) {
    SEEDED.set(seed.map(|s| s | 1));
}

/// Fills `buf` with random bytes: the operating system's (or, in a `testkit` build after
/// [`seed_random`], the seeded generator's).
pub fn random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    #[cfg(feature = "testkit")]
    if let Some(mut x) = SEEDED.get() {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        SEEDED.set(Some(x));
        return Ok(());
    }
    getrandom::fill(buf)
}

/// This node's secret key and name.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    node_id: NodeId,
    name: String,
}

/// The key file's current version: with `node_id` and `checksum`.
const KEY_FILE_VERSION: u32 = 2;

/// Domain separation for the key file checksum.
const KEY_CHECKSUM_DOMAIN: &[u8] = b"coflow/key-file/v2\0";

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    /// Version 2 on: the node id of `secret_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    secret_key: String,
    name: String,
    /// Version 2 on: see [`key_checksum`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum: Option<String>,
}

/// SHA-256 (hex) over the domain, the node id, the secret key and the name, each
/// length-prefixed: any changed character of the file's fields changes it.
fn key_checksum(node_id: &str, secret_key: &str, name: &str) -> String {
    let mut h = Sha256::new();
    h.update(KEY_CHECKSUM_DOMAIN);
    for field in [node_id, secret_key, name] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex(&h.finalize())
}

/// Refuses a key file group or others may read or write, and a data dir others may write.
#[cfg(unix)]
fn check_permissions(
    home: &Path,
    key: &Path,
    key_meta: &fs::Metadata,
) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = key_meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::KeyTooOpen {
            path: key.to_path_buf(),
            mode,
        });
    }
    let dir = fs::metadata(home).map_err(|source| IdentityError::Io {
        path: home.to_path_buf(),
        source,
    })?;
    let mode = dir.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(IdentityError::DirTooOpen {
            path: home.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path, _: &Path, _: &fs::Metadata) -> Result<(), IdentityError> {
    Ok(())
}

impl Identity {
    /// An identity from a 32-byte secret key.
    pub fn from_secret(secret: [u8; 32], name: &str) -> Identity {
        let signing = SigningKey::from_bytes(&secret);
        let node_id = NodeId::from_public_key(signing.verifying_key().as_bytes())
            .expect("a fresh ed25519 key is a valid key");
        Identity {
            signing,
            node_id,
            name: name.to_string(),
        }
    }

    /// A deterministic identity derived from a seed string (tests and transcripts only).
    pub fn from_seed(seed: &str, name: &str) -> Identity {
        let secret: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
        Identity::from_secret(secret, name)
    }

    /// A fresh identity from the operating system's random generator.
    pub fn generate(name: &str) -> Result<Identity, IdentityError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Identity::from_secret(secret, name))
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    #[cfg(any(test, feature = "testkit"))]
    /// The node's base Automerge actor id: its public key alone. Changes made before
    /// incarnations existed use it; it is still a valid actor for this node.
    pub fn actor(&self) -> automerge::ActorId {
        automerge::ActorId::from(self.node_id.public_key().as_slice())
    }

    /// A fresh actor id for one incarnation of this node: its public key followed by
    /// [`INCARNATION_LEN`] random bytes. Automerge wants each actor to write one linear
    /// sequence of changes; a node restored from a backup, or one key running on two machines,
    /// would reuse sequence numbers under one actor and split the flow. Each process that writes
    /// takes its own incarnation, so none of them can collide, and the author is still read
    /// from the actor id itself ([`actor_key`]) and checked against the change's signature.
    pub fn new_incarnation(&self) -> automerge::ActorId {
        let mut actor = Vec::with_capacity(32 + INCARNATION_LEN);
        actor.extend_from_slice(self.node_id.public_key());
        let mut suffix = [0u8; INCARNATION_LEN];
        if random(&mut suffix).is_err() {
            // No randomness: the time in nanoseconds still differs between two processes.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            suffix = nanos.to_le_bytes();
        }
        actor.extend_from_slice(&suffix);
        automerge::ActorId::from(actor)
    }

    /// Signs a change hash (with the change domain prefix).
    pub fn sign_change(&self, hash: &automerge::ChangeHash) -> [u8; 64] {
        self.signing.sign(&change_message(hash)).to_bytes()
    }

    /// The libp2p keypair of the same key.
    pub fn libp2p_keypair(&self) -> libp2p_identity::Keypair {
        let mut secret = self.signing.to_bytes();
        libp2p_identity::Keypair::ed25519_from_bytes(&mut secret)
            .expect("32 bytes are a valid ed25519 secret")
    }

    /// A new identity for `coflow init` (from [`TEST_SEED_ENV`] when that is set), not saved.
    pub fn fresh(name: &str) -> Result<Identity, IdentityError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(IdentityError::EmptyName);
        }
        match std::env::var(TEST_SEED_ENV) {
            Ok(seed) if !seed.is_empty() => Ok(Identity::from_seed(&seed, name)),
            _ => Identity::generate(name),
        }
    }

    #[cfg(test)]
    /// Writes a new key file into `home`; refuses to overwrite an existing one.
    pub fn create(home: &Path, name: &str) -> Result<Identity, IdentityError> {
        let identity = Identity::fresh(name)?;
        identity.save(home)?;
        Ok(identity)
    }

    /// Writes this identity as the key of `home` (refuses to overwrite one).
    pub fn save(&self, home: &Path) -> Result<(), IdentityError> {
        let path = home.join(KEY_FILE);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        create_data_dir(home).map_err(io)?;
        let node_id = self.node_id.to_string();
        let secret_key = hex(&self.signing.to_bytes());
        let body = serde_json::to_vec_pretty(&KeyFile {
            version: KEY_FILE_VERSION,
            checksum: Some(key_checksum(&node_id, &secret_key, &self.name)),
            node_id: Some(node_id),
            secret_key,
            name: self.name.clone(),
        })
        .expect("key file serializes");
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists(home.to_path_buf())
            } else {
                io(e)
            }
        })?;
        file.write_all(&body).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// Reads the key file from `home`, refusing one that is damaged or that others may read.
    pub fn load(home: &Path) -> Result<Identity, IdentityError> {
        let path = home.join(KEY_FILE);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::Missing(home.to_path_buf()))
            }
            Err(e) => return Err(io(e)),
        };
        check_permissions(home, &path, &meta)?;
        let bytes = fs::read(&path).map_err(io)?;
        let corrupt = |reason: &str| IdentityError::Corrupt {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let file: KeyFile =
            serde_json::from_slice(&bytes).map_err(|_| corrupt("not a coflow key file"))?;
        if file.version != 1 && file.version != KEY_FILE_VERSION {
            return Err(corrupt(&format!("unknown version {}", file.version)));
        }
        let secret = unhex(&file.secret_key)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| corrupt("the secret key is not 32 bytes of hex"))?;
        let identity = Identity::from_secret(secret, &file.name);
        if file.version == 1 {
            return Ok(identity);
        }
        let (Some(node_id), Some(checksum)) = (&file.node_id, &file.checksum) else {
            return Err(corrupt("its node id or checksum is missing"));
        };
        if *checksum != key_checksum(node_id, &file.secret_key, &file.name) {
            return Err(corrupt(
                "its checksum does not match its contents (the file was changed or damaged); \
                 restore it from a backup",
            ));
        }
        if identity.node_id.as_str() != node_id {
            return Err(corrupt(&format!(
                "its secret key does not belong to node {node_id}"
            )));
        }
        Ok(identity)
    }

    /// The key file's version in `home` (1: no checksum), for `coflow doctor`.
    pub fn key_file_version(home: &Path) -> Option<u32> {
        let bytes = fs::read(home.join(KEY_FILE)).ok()?;
        serde_json::from_slice::<KeyFile>(&bytes)
            .ok()
            .map(|f| f.version)
    }
}

/// Creates the data dir `home` (and missing parents) if it does not exist. It holds the key and
/// every flow, so a new one is its owner's alone (0700); an existing one keeps its mode.
pub fn create_data_dir(home: &Path) -> std::io::Result<()> {
    let mut dir = fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        dir.mode(0o700);
    }
    dir.create(home)
}

/// Bytes an incarnation adds after the node key in an actor id.
pub const INCARNATION_LEN: usize = 8;

/// The node key an actor id names: the 32-byte key alone (a base actor), or followed by an
/// incarnation of [`INCARNATION_LEN`] bytes. Any other length names no node.
pub fn actor_key(actor: &[u8]) -> Option<&[u8]> {
    match actor.len() {
        32 => Some(actor),
        n if n == 32 + INCARNATION_LEN => Some(&actor[..32]),
        _ => None,
    }
}

/// The node that an actor id names, if it names one.
pub fn actor_node(actor: &automerge::ActorId) -> Option<NodeId> {
    actor_key(actor.to_bytes()).and_then(NodeId::from_public_key)
}

/// The exact bytes a change signature covers.
pub fn change_message(hash: &automerge::ChangeHash) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CHANGE_SIG_DOMAIN.len() + 32);
    msg.extend_from_slice(CHANGE_SIG_DOMAIN);
    msg.extend_from_slice(&hash.0);
    msg
}

/// Domain separation for deriving an invite's key from its ticket secret.
pub const INVITE_KEY_DOMAIN: &[u8] = b"coflow/invite-key/v1\0";

/// Domain separation for a joiner's proof that it holds an invite's ticket.
pub const INVITE_PROOF_DOMAIN: &[u8] = b"coflow/invite-proof/v1\0";

/// The key of an invite, derived from the secret its ticket carries. The document records only
/// the public half; the ticket holder signs with the secret half to prove it holds the ticket,
/// without the secret ever leaving its node.
pub struct InviteKey(SigningKey);

impl InviteKey {
    pub fn from_secret(secret: &[u8]) -> InviteKey {
        let mut h = Sha256::new();
        h.update(INVITE_KEY_DOMAIN);
        h.update(secret);
        InviteKey(SigningKey::from_bytes(&h.finalize().into()))
    }

    /// The 32-byte public key the document records for the invite.
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// The proof that admits `joiner`, and only `joiner`, to `flow` by this invite.
    pub fn prove(&self, flow: &[u8], invite: &[u8], joiner: &NodeId) -> [u8; 64] {
        self.0
            .sign(&invite_proof_message(flow, invite, joiner))
            .to_bytes()
    }
}

/// What a joiner signs with an invite's key: the flow id (16 bytes), the invite id (8 bytes) and
/// the joiner's public key (32 bytes), after [`INVITE_PROOF_DOMAIN`].
pub fn invite_proof_message(flow: &[u8], invite: &[u8], joiner: &NodeId) -> Vec<u8> {
    let mut msg =
        Vec::with_capacity(INVITE_PROOF_DOMAIN.len() + 2 + flow.len() + invite.len() + 32);
    msg.extend_from_slice(INVITE_PROOF_DOMAIN);
    // Lengths first, so no two (flow, invite) pairs give the same message.
    msg.push(flow.len() as u8);
    msg.extend_from_slice(flow);
    msg.push(invite.len() as u8);
    msg.extend_from_slice(invite);
    msg.extend_from_slice(joiner.public_key());
    msg
}

/// Whether `proof` shows that whoever asked for `joiner` to be admitted to `flow` by `invite`
/// holds the secret behind `public_key`. Weak keys and non-canonical signatures are refused.
pub fn verify_invite_proof(
    public_key: &[u8],
    flow: &[u8],
    invite: &[u8],
    joiner: &NodeId,
    proof: &[u8],
) -> bool {
    let Ok(key) = <[u8; 32]>::try_from(public_key) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else {
        return false;
    };
    let Ok(sig) = <[u8; 64]>::try_from(proof) else {
        return false;
    };
    !key.is_weak()
        && flow.len() <= u8::MAX as usize
        && invite.len() <= u8::MAX as usize
        && key
            .verify_strict(
                &invite_proof_message(flow, invite, joiner),
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .is_ok()
}

pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_and_peer_id_convert_without_text() {
        let alice = Identity::from_seed("alice", "Alice");
        let peer = alice.libp2p_keypair().public().to_peer_id();
        assert_eq!(alice.node_id().peer_id(), peer);
        assert_eq!(NodeId::from_peer_id(&peer).as_ref(), Some(alice.node_id()));
        assert_eq!(alice.node_id().as_str(), peer.to_base58());
        // A peer id that is not an ed25519 key's (here a hash of something) is no node id.
        assert_eq!(NodeId::from_peer_id(&libp2p_identity::PeerId::random()), None);
    }

    #[test]
    fn node_id_round_trips_through_text() {
        let alice = Identity::from_seed("alice", "Alice");
        let text = alice.node_id().to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        let parsed: NodeId = text.parse().unwrap();
        assert_eq!(&parsed, alice.node_id());
        assert_eq!(
            alice.libp2p_keypair().public().to_peer_id().to_base58(),
            text
        );
    }

    #[test]
    fn an_invite_proof_admits_only_the_joiner_it_names() {
        let key = InviteKey::from_secret(&[5u8; 16]);
        let public = key.public_key();
        let (flow, invite) = ([1u8; 16], [2u8; 8]);
        let bob = Identity::from_seed("bob", "Bob");
        let eve = Identity::from_seed("eve", "Eve");
        let proof = key.prove(&flow, &invite, bob.node_id());
        assert!(verify_invite_proof(
            &public,
            &flow,
            &invite,
            bob.node_id(),
            &proof
        ));
        assert!(!verify_invite_proof(
            &public,
            &flow,
            &invite,
            eve.node_id(),
            &proof
        ));
        assert!(!verify_invite_proof(
            &public,
            &[9; 16],
            &invite,
            bob.node_id(),
            &proof
        ));
        assert!(!verify_invite_proof(
            &public,
            &flow,
            &[9; 8],
            bob.node_id(),
            &proof
        ));
        let other = InviteKey::from_secret(&[6u8; 16]).public_key();
        assert!(!verify_invite_proof(
            &other,
            &flow,
            &invite,
            bob.node_id(),
            &proof
        ));
        assert!(!verify_invite_proof(
            &public,
            &flow,
            &invite,
            bob.node_id(),
            &proof[..63]
        ));
        // The key is not the secret, nor its plain hash.
        assert_ne!(public.as_slice(), Sha256::digest([5u8; 16]).as_slice());
    }

    #[test]
    fn bad_node_ids_are_refused() {
        assert!("".parse::<NodeId>().is_err());
        assert!("hello".parse::<NodeId>().is_err());
        // A valid peer id of a non-ed25519 key type (sha256 multihash) is refused.
        let mut sha256_multihash = vec![0x12, 0x20];
        sha256_multihash.extend_from_slice(&[7u8; 32]);
        let sha_peer = libp2p_identity::PeerId::from_bytes(&sha256_multihash)
            .unwrap()
            .to_base58();
        assert!(sha_peer.parse::<NodeId>().is_err());
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::create(dir.path(), "Tailor").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            Identity::create(dir.path(), "Other"),
            Err(IdentityError::Exists(_))
        ));
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(loaded.node_id(), id.node_id());
        assert_eq!(loaded.name(), "Tailor");
    }

    #[test]
    fn one_changed_character_of_the_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::from_seed("tailor", "Tailor");
        id.save(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let text = fs::read_to_string(&path).unwrap();
        let secret = hex(&id.signing.to_bytes());
        // Change one digit of the secret key, then one letter of the name.
        let digit = if secret.as_bytes()[10] == b'0' {
            "1"
        } else {
            "0"
        };
        let mut bad_secret = secret.clone();
        bad_secret.replace_range(10..11, digit);
        for (from, to) in [(secret.as_str(), bad_secret.as_str()), ("Tailor", "Tailer")] {
            fs::write(&path, text.replace(from, to)).unwrap();
            let err = Identity::load(dir.path()).err().expect("refused");
            assert!(
                matches!(&err, IdentityError::Corrupt { reason, .. } if reason.contains("checksum")),
                "{err}"
            );
        }
        fs::write(&path, &text).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap().node_id(), id.node_id());
    }

    #[test]
    fn a_version_1_key_file_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::from_seed("tailor", "Tailor");
        // Exactly what the version 1 code wrote.
        let v1 = format!(
            "{{\n  \"version\": 1,\n  \"secret_key\": \"{}\",\n  \"name\": \"Tailor\"\n}}",
            hex(&id.signing.to_bytes())
        );
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, v1).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(loaded.node_id(), id.node_id());
        assert_eq!(loaded.name(), "Tailor");
        assert_eq!(Identity::key_file_version(dir.path()), Some(1));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_or_data_dir_others_may_touch_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        Identity::from_seed("tailor", "Tailor")
            .save(dir.path())
            .unwrap();
        let path = dir.path().join(KEY_FILE);
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Identity::load(dir.path())
                .err()
                .expect("refused")
                .to_string();
            let want = format!("permissions {mode:04o} for {} are too open", path.display());
            assert!(err.contains(&want), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        Identity::load(dir.path()).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = Identity::load(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("permissions 0777 for the data dir"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Identity::load(dir.path()).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_new_data_dir_is_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("a").join("home");
        Identity::from_seed("tailor", "Tailor").save(&home).unwrap();
        let mode = fs::metadata(&home).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, b"garbage").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = Identity::load(dir.path()).err().unwrap();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
