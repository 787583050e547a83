//! Counters for tests and benchmarks, and the per-member sync view of `flow show`.

use super::*;

pub use crate::repo::MemberSync;

/// Most recent arrivals kept in [`Stats::arrivals`].
pub const MAX_ARRIVALS: usize = 10_000;

/// Counters for tests and benchmarks (the `Stats` control call).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Sync requests sent, and their encoded bytes.
    pub requests_sent: u64,
    pub request_bytes: u64,
    /// Sync responses sent, and their encoded bytes.
    pub responses_sent: u64,
    pub response_bytes: u64,
    /// Signed changes sent in sync messages (either direction).
    pub changes_sent: u64,
    pub changes_accepted: u64,
    pub changes_rejected: u64,
    /// Announcements published by this node, and their payload bytes (gossip's own framing and
    /// signature come on top); announcements delivered to this node (gossip drops duplicates
    /// before they get here).
    pub announcements_sent: u64,
    pub announcement_bytes: u64,
    pub announcements_received: u64,
    /// Announcements passed on for flows this node relays without holding them.
    pub announcements_relayed: u64,
    /// The last [`MAX_ARRIVALS`] changes received from peers: hash (hex) and when they were
    /// durable here (Unix milliseconds).
    pub arrivals: VecDeque<Arrival>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Arrival {
    pub hash: String,
    pub at_ms: i64,
}
