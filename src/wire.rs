//! Wire messages (generated from `proto/coflow.proto`), their size limits, the request-response
//! codec of `/coflow/sync/1` and `/coflow/join/2`, and tickets.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use prost::Message as _;

use crate::auth::SignedChange as Signed;
use crate::flow::FlowId;

#[allow(clippy::all, missing_docs)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/coflow.v1.rs"));
}

pub use pb::{
    join_response, sync_response, Announce, JoinRequest, JoinResponse, SignedChange, SyncMessage,
    SyncRequest, SyncResponse, Ticket,
};

/// The sync protocol's name.
pub const SYNC_PROTOCOL: &str = "/coflow/sync/1";
/// The join protocol's name.
pub const JOIN_PROTOCOL: &str = "/coflow/join/2";

/// Largest sync message accepted or sent (a sync message may carry many changes).
pub const MAX_SYNC_MESSAGE: usize = 8 * 1024 * 1024;
/// Largest join message.
pub const MAX_JOIN_MESSAGE: usize = 4 * 1024;
/// Most changes one sync message may carry.
pub const MAX_CHANGES_PER_MESSAGE: usize = 20_000;
/// Largest gossip message (an announcement of at most [`MAX_ANNOUNCED_HEADS`] heads, signed).
pub const MAX_GOSSIP_MESSAGE: usize = 4 * 1024;
/// Most heads one announcement names.
pub const MAX_ANNOUNCED_HEADS: usize = 32;

impl From<&Signed> for SignedChange {
    fn from(s: &Signed) -> Self {
        SignedChange {
            change: s.bytes.clone(),
            signature: s.signature.clone(),
        }
    }
}

impl From<SignedChange> for Signed {
    fn from(s: SignedChange) -> Self {
        Signed {
            bytes: s.change,
            signature: s.signature,
        }
    }
}

/// An inbound request as read off a stream: a message, or what was wrong with the bytes. A
/// malformed or oversized request is not a stream error (libp2p would only log it): it reaches
/// the node, which penalizes the sender.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame<T> {
    Message(T),
    Malformed(String),
}

/// Length-prefixed (unsigned varint) protobuf framing with a size cap, for request-response.
#[derive(Clone, Debug)]
pub struct Codec<Req, Resp> {
    max: usize,
    _marker: std::marker::PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Codec<Req, Resp> {
    pub fn new(max: usize) -> Self {
        Codec {
            max,
            _marker: std::marker::PhantomData,
        }
    }
}

/// Reads one length-prefixed frame. `Ok(Err(reason))` is a frame that breaks the rules (an
/// oversized length); `Err` is the stream failing.
async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Result<Vec<u8>, String>> {
    let mut len: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await?;
        len |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        if shift >= 56 {
            return Ok(Err("a length prefix that never ends".into()));
        }
    }
    if len as usize > max {
        return Ok(Err(format!(
            "a message of {len} bytes, over the limit of {max}"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    io.read_exact(&mut buf).await?;
    Ok(Ok(buf))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes exceeds the limit of {max}",
                bytes.len()
            ),
        ));
    }
    let mut prefix = Vec::with_capacity(10);
    let mut n = bytes.len() as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            prefix.push(b);
            break;
        }
        prefix.push(b | 0x80);
    }
    io.write_all(&prefix).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> io::Result<M> {
    M::decode(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl<Req, Resp> libp2p::request_response::Codec for Codec<Req, Resp>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    type Protocol = libp2p::StreamProtocol;
    type Request = Frame<Req>;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Frame<Req>>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(match read_frame(io, self.max).await? {
            Ok(bytes) => match Req::decode(bytes.as_slice()) {
                Ok(m) => Frame::Message(m),
                Err(e) => Frame::Malformed(format!("a request that is not protobuf: {e}")),
            },
            Err(reason) => Frame::Malformed(reason),
        })
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_frame(io, self.max)
            .await?
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        decode(&bytes)
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Frame<Req>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Frame::Message(m) => write_frame(io, &m.encode_to_vec(), self.max).await,
            Frame::Malformed(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a malformed request is never sent",
            )),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &resp.encode_to_vec(), self.max).await
    }
}

/// A flow's opaque tag: what may be shown to non-members (DHT provider records, and later
/// gossip topics) in place of the flow id, from which the id cannot be recovered.
pub fn flow_tag(flow: &FlowId) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"coflow/flow-tag/v1\0");
    h.update(flow.as_bytes());
    h.finalize().to_vec()
}

/// The gossip topic of a flow: its tag in hex, so the topic says nothing of the flow either.
pub fn flow_topic(flow: &FlowId) -> String {
    format!("coflow/{}", crate::identity::hex(&flow_tag(flow)))
}

/// Encodes an announcement of `heads` (at most [`MAX_ANNOUNCED_HEADS`] of them are kept).
pub fn encode_announce(heads: &[automerge::ChangeHash]) -> Vec<u8> {
    use prost::Message;
    Announce {
        heads: heads
            .iter()
            .take(MAX_ANNOUNCED_HEADS)
            .map(|h| h.0.to_vec())
            .collect(),
    }
    .encode_to_vec()
}

/// Decodes a peer's announcement; anything but 1..=[`MAX_ANNOUNCED_HEADS`] 32-byte hashes is
/// malformed.
pub fn decode_announce(bytes: &[u8]) -> Result<Vec<automerge::ChangeHash>, String> {
    use prost::Message;
    let a = Announce::decode(bytes).map_err(|e| format!("malformed announcement: {e}"))?;
    if a.heads.is_empty() || a.heads.len() > MAX_ANNOUNCED_HEADS {
        return Err(format!("an announcement of {} heads", a.heads.len()));
    }
    a.heads
        .iter()
        .map(|h| {
            automerge::ChangeHash::try_from(h.as_slice())
                .map_err(|_| "an announced head that is not a 32-byte hash".to_string())
        })
        .collect()
}

/// The prefix of every ticket.
pub const TICKET_PREFIX: &str = "coflow1";
const TICKET_VERSION: u32 = 2;
/// Tickets of invites whose secret's hash, not a public key, is in the document.
const LEGACY_TICKET_VERSION: u32 = 1;
/// Longest ticket accepted (characters).
pub const MAX_TICKET: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TicketError {
    #[error("not a coflow ticket (it must start with '{TICKET_PREFIX}')")]
    Prefix,
    #[error("the ticket is too long")]
    TooLong,
    #[error("the ticket is damaged (bad base32)")]
    Base32,
    #[error("the ticket is damaged (bad contents)")]
    Decode,
    #[error("the ticket has version {0}; this coflow reads version {TICKET_VERSION}")]
    Version(u32),
    #[error(
        "the ticket is from an older coflow, whose invites can no longer be redeemed: ask for a new invite"
    )]
    Legacy,
    #[error("the ticket is damaged: {0}")]
    Field(&'static str),
}

/// A decoded, checked ticket.
#[derive(Clone, Debug, PartialEq)]
pub struct InviteTicket {
    pub flow: FlowId,
    pub invite: String,
    pub secret: [u8; 16],
    pub addrs: Vec<libp2p::Multiaddr>,
}

impl InviteTicket {
    pub fn encode(&self) -> String {
        let t = Ticket {
            version: TICKET_VERSION,
            flow: self.flow.as_bytes().to_vec(),
            invite: crate::identity::unhex(&self.invite).unwrap_or_default(),
            secret: self.secret.to_vec(),
            addrs: self.addrs.iter().map(|a| a.to_vec()).collect(),
        };
        format!(
            "{TICKET_PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&t.encode_to_vec())
                .to_lowercase()
        )
    }

    pub fn decode(s: &str) -> Result<InviteTicket, TicketError> {
        let s = s.trim();
        if s.len() > MAX_TICKET {
            return Err(TicketError::TooLong);
        }
        let body = s.strip_prefix(TICKET_PREFIX).ok_or(TicketError::Prefix)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_uppercase().as_bytes())
            .map_err(|_| TicketError::Base32)?;
        let t = Ticket::decode(bytes.as_slice()).map_err(|_| TicketError::Decode)?;
        if t.version == LEGACY_TICKET_VERSION {
            return Err(TicketError::Legacy);
        }
        if t.version != TICKET_VERSION {
            return Err(TicketError::Version(t.version));
        }
        let flow = FlowId::from_bytes(&t.flow).ok_or(TicketError::Field("flow id"))?;
        if t.invite.len() != 8 {
            return Err(TicketError::Field("invite id"));
        }
        let secret: [u8; 16] = t
            .secret
            .as_slice()
            .try_into()
            .map_err(|_| TicketError::Field("secret"))?;
        let addrs = t
            .addrs
            .into_iter()
            .map(|a| libp2p::Multiaddr::try_from(a).map_err(|_| TicketError::Field("address")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(InviteTicket {
            flow,
            invite: crate::identity::hex(&t.invite),
            secret,
            addrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_damage_is_detected() {
        let t = InviteTicket {
            flow: "00112233445566778899aabbccddeeff".parse().unwrap(),
            invite: "0102030405060708".into(),
            secret: [9; 16],
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
        };
        let s = t.encode();
        assert!(s.starts_with("coflow1"));
        assert_eq!(InviteTicket::decode(&s).unwrap(), t);
        assert_eq!(InviteTicket::decode("hello"), Err(TicketError::Prefix));
        assert_eq!(InviteTicket::decode("coflow1!!!"), Err(TicketError::Base32));
        let truncated = &s[..s.len() - 10];
        assert!(InviteTicket::decode(truncated).is_err());
        assert_eq!(
            InviteTicket::decode(&"coflow1a".repeat(1000)),
            Err(TicketError::TooLong)
        );
        // Tickets of other versions are refused by version; version 1 (invites checked against
        // a hash of the secret, which this version no longer redeems) with its own message.
        let versioned = |version: u32| {
            let mut pb = Ticket::decode(
                data_encoding::BASE32_NOPAD
                    .decode(s[TICKET_PREFIX.len()..].to_uppercase().as_bytes())
                    .unwrap()
                    .as_slice(),
            )
            .unwrap();
            pb.version = version;
            format!(
                "{TICKET_PREFIX}{}",
                data_encoding::BASE32_NOPAD
                    .encode(&pb.encode_to_vec())
                    .to_lowercase()
            )
        };
        assert_eq!(InviteTicket::decode(&versioned(2)).unwrap(), t);
        assert_eq!(
            InviteTicket::decode(&versioned(1)),
            Err(TicketError::Legacy)
        );
        assert_eq!(
            InviteTicket::decode(&versioned(3)),
            Err(TicketError::Version(3))
        );
    }

    #[test]
    fn announcements_are_bounded_and_checked() {
        use automerge::ChangeHash;
        use prost::Message;
        let heads: Vec<ChangeHash> = (0..40u8).map(|i| ChangeHash([i; 32])).collect();
        // At most MAX_ANNOUNCED_HEADS go out, and they come back as sent.
        let bytes = encode_announce(&heads);
        assert_eq!(
            decode_announce(&bytes).unwrap(),
            heads[..MAX_ANNOUNCED_HEADS]
        );
        assert!(bytes.len() < MAX_GOSSIP_MESSAGE);
        let raw = |heads: Vec<Vec<u8>>| Announce { heads }.encode_to_vec();
        assert!(decode_announce(&raw(vec![])).is_err(), "no heads");
        assert!(
            decode_announce(&raw(vec![vec![1; 32]; 33])).is_err(),
            "too many"
        );
        assert!(
            decode_announce(&raw(vec![vec![1; 31]])).is_err(),
            "not a hash"
        );
        assert!(decode_announce(b"\xff\xff\xff").is_err(), "not protobuf");
        // The topic names the flow's tag, never its id.
        let flow: FlowId = "00112233445566778899aabbccddeeff".parse().unwrap();
        let other: FlowId = "ffeeddccbbaa99887766554433221100".parse().unwrap();
        assert!(!flow_topic(&flow).contains(flow.as_str()));
        assert_ne!(flow_topic(&flow), flow_topic(&other));
    }
}
