//! [`PeerBook`]: everything the runtime keeps per peer (known addresses, dial backoff, bans,
//! penalized peers waiting to be blocked, request budgets, DHT lookups), with the decisions
//! made from it. Every map is bounded: entries that no longer change a decision are dropped at
//! each tick, and what a peer that is not connected leaves behind is forgotten after
//! [`FORGET_AFTER`] (the address book is also capped at [`MAX_BOOK_PEERS`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use crate::api::Link;

use super::{DHT_RETRY, MAX_BAN};

/// Inbound requests a peer may send in a burst, and per second after that.
pub const REQUEST_BURST: f64 = 400.0;
pub const REQUESTS_PER_SECOND: f64 = 200.0;

/// Longest a penalized peer waits to be blocked while its last answer goes out.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a penalized peer's connection stays up after its last answer went out.
const LINGER: Duration = Duration::from_millis(200);

/// Pings in a row with no answer after which a connection is closed (see
/// [`PeerBook::pinged`]).
pub const PINGS_UNANSWERED: u32 = 2;

/// Addresses kept per peer (the oldest goes first).
const ADDRS_PER_PEER: usize = 8;

/// Most peers whose addresses are kept in memory: any peer can make PeerIds for nothing and
/// have them learnt (identify, the DHT, mDNS). Past it, the peer heard of least recently that
/// is not connected is dropped; the store's address book still has it.
const MAX_BOOK_PEERS: usize = 4096;

/// How long a peer that is not connected keeps its failed dials and its ban count after the
/// last of them: an hour, the longest ban, so a peer that behaved for that long starts over.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// A token bucket: how many requests a peer may still send right now.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * REQUESTS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(REQUEST_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled: then it is the same as a new one.
    fn full(&self, now: Instant) -> bool {
        now.duration_since(self.at).as_secs_f64() * REQUESTS_PER_SECOND >= REQUEST_BURST
    }
}

/// A peer's known addresses, and when it was last heard of.
struct Addrs {
    list: Vec<Multiaddr>,
    seen: Instant,
}

/// A peer's penalties: blocked until `until` while `blocked`, and how often penalized.
struct Ban {
    until: Instant,
    blocked: bool,
    count: u32,
}

#[derive(Default)]
pub(crate) struct PeerBook {
    /// Known addresses of peers (address book, identify, mDNS, tickets).
    addrs: HashMap<PeerId, Addrs>,
    /// Next allowed dial and consecutive failures, per peer.
    backoff: HashMap<PeerId, (Instant, u32)>,
    bans: HashMap<PeerId, Ban>,
    /// Penalized peers not blocked yet: the answer to their last request is on its way (the
    /// block closes the connection, which would reset the stream under it). Blocked once it
    /// is sent, or at the deadline; meanwhile their requests are answered `unavailable`.
    closing: HashMap<PeerId, Instant>,
    /// Inbound request budget per peer.
    budgets: HashMap<PeerId, Bucket>,
    /// When we last asked the DHT for a peer's addresses.
    lookups: HashMap<PeerId, Instant>,
    /// Open connections per peer: through a relay or not, and the address dialed, if this
    /// node dialed.
    conns: HashMap<PeerId, Vec<Conn>>,
}

/// One open connection to a peer.
struct Conn {
    id: ConnectionId,
    relayed: bool,
    dialed: Option<Multiaddr>,
    /// The peer's IP address on this connection (none if relayed).
    ip: Option<std::net::IpAddr>,
    /// Pings in a row that got no answer.
    unanswered: u32,
}

impl PeerBook {
    /// Records `addr` for `peer`; true if it is new. At [`MAX_BOOK_PEERS`], a new peer takes
    /// the place of the one heard of least recently that is not `connected`.
    pub(crate) fn learn_addr(
        &mut self,
        peer: PeerId,
        addr: &Multiaddr,
        now: Instant,
        connected: impl Fn(&PeerId) -> bool,
    ) -> bool {
        if !self.addrs.contains_key(&peer) && self.addrs.len() >= MAX_BOOK_PEERS {
            let oldest = self
                .addrs
                .iter()
                .filter(|(p, _)| !connected(p))
                .min_by_key(|(_, a)| a.seen)
                .map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.addrs.remove(&p);
            }
        }
        let known = self.addrs.entry(peer).or_insert(Addrs {
            list: Vec::new(),
            seen: now,
        });
        known.seen = now;
        if known.list.contains(addr) {
            return false;
        }
        known.list.push(addr.clone());
        if known.list.len() > ADDRS_PER_PEER {
            known.list.remove(0);
        }
        true
    }

    pub(crate) fn addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.addrs
            .get(peer)
            .map(|a| a.list.clone())
            .unwrap_or_default()
    }

    pub(crate) fn addr_strings(&self, peer: &PeerId) -> Vec<String> {
        self.addrs
            .get(peer)
            .map(|a| a.list.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default()
    }

    /// Whether `peer` is blocked for misbehaving.
    pub(crate) fn banned(&self, peer: &PeerId) -> bool {
        self.bans.get(peer).is_some_and(|b| b.blocked)
    }

    /// Whether `peer` may be dialed now: not banned and not backing off.
    pub(crate) fn may_dial(&self, peer: &PeerId, now: Instant) -> bool {
        !self.banned(peer) && self.backoff.get(peer).is_none_or(|(next, _)| *next <= now)
    }

    /// A dial to `peer` started: until its outcome is known, do not try again for a while.
    pub(crate) fn dialing(&mut self, peer: PeerId, now: Instant) {
        let failures = self.backoff.get(&peer).map_or(0, |(_, f)| *f);
        self.backoff
            .insert(peer, (now + Duration::from_secs(2), failures));
    }

    /// A dial to `peer` failed: wait longer before the next one.
    pub(crate) fn dial_failed(&mut self, peer: PeerId, now: Instant) {
        let failures = self.backoff.get(&peer).map_or(0, |(_, f)| *f) + 1;
        self.backoff
            .insert(peer, (now + redial_wait(failures), failures));
    }

    /// `peer` failed `failures` times in a row before a restart: it is not hammered after it.
    pub(crate) fn failed_before(&mut self, peer: PeerId, failures: u32, now: Instant) {
        self.backoff
            .insert(peer, (now + redial_wait(failures), failures));
    }

    /// Lets `peer` be dialed right away (it connected, or is worth trying now).
    pub(crate) fn clear_backoff(&mut self, peer: &PeerId) {
        self.backoff.remove(peer);
    }

    /// Penalizes `peer` once more: how long it is to be blocked (doubling, up to [`MAX_BAN`]).
    pub(crate) fn ban(&mut self, peer: PeerId, now: Instant) -> Duration {
        let count = self.bans.get(&peer).map_or(0, |b| b.count) + 1;
        let ban = (Duration::from_secs(30) * 2u32.saturating_pow(count.min(7))).min(MAX_BAN);
        self.bans.insert(
            peer,
            Ban {
                until: now + ban,
                blocked: true,
                count,
            },
        );
        ban
    }

    /// Bans whose time is up: their peers may be unblocked (the count is kept, for a longer
    /// ban next time).
    pub(crate) fn lift_bans(&mut self, now: Instant) -> Vec<PeerId> {
        let mut lifted = Vec::new();
        for (peer, ban) in self.bans.iter_mut() {
            if ban.blocked && ban.until <= now {
                ban.blocked = false;
                lifted.push(*peer);
            }
        }
        lifted
    }

    /// `peer` is to be blocked once the answer just handed out has gone.
    pub(crate) fn close_after_answer(&mut self, peer: PeerId, now: Instant) {
        self.closing.insert(peer, now + CLOSE_GRACE);
    }

    /// Whether `peer` is penalized and waits to be blocked.
    pub(crate) fn closing(&self, peer: &PeerId) -> bool {
        self.closing.contains_key(peer)
    }

    /// An answer to `peer` went out: if it is to be blocked, that happens [`LINGER`] from now
    /// (closing the connection at once can still cut off the stream's end on its way).
    pub(crate) fn answered(&mut self, peer: &PeerId, now: Instant) {
        if let Some(deadline) = self.closing.get_mut(peer) {
            *deadline = (*deadline).min(now + LINGER);
        }
    }

    /// The penalized peers due to be blocked now, no longer waiting.
    pub(crate) fn due_closings(&mut self, now: Instant) -> Vec<PeerId> {
        let due: Vec<PeerId> = self
            .closing
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &due {
            self.closing.remove(p);
        }
        due
    }

    /// When the next penalized peer is due to be blocked.
    pub(crate) fn next_closing(&self) -> Option<Instant> {
        self.closing.values().min().copied()
    }

    /// Takes one request from `peer`'s budget; false if it has none left.
    pub(crate) fn within_budget(&mut self, peer: PeerId, now: Instant) -> bool {
        self.budgets
            .entry(peer)
            .or_insert(Bucket {
                tokens: REQUEST_BURST,
                at: now,
            })
            .take(now)
    }

    /// Whether to ask the DHT for `peer`'s addresses now; if so, the lookup is recorded.
    pub(crate) fn lookup_due(&mut self, peer: PeerId, now: Instant) -> bool {
        let due = self
            .lookups
            .get(&peer)
            .is_none_or(|t| now.duration_since(*t) > DHT_RETRY);
        if due {
            self.lookups.insert(peer, now);
        }
        due
    }

    /// A connection to `peer` opened; `dialed`: the address this node dialed, if it did.
    /// `remote`: the peer's address on it.
    pub(crate) fn opened(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        remote: &Multiaddr,
        relayed: bool,
        dialed: Option<Multiaddr>,
    ) {
        let ip = match remote.iter().next() {
            _ if relayed => None,
            Some(libp2p::multiaddr::Protocol::Ip4(ip)) => Some(ip.into()),
            Some(libp2p::multiaddr::Protocol::Ip6(ip)) => Some(ip.into()),
            _ => None,
        };
        self.conns.entry(peer).or_default().push(Conn {
            id,
            relayed,
            dialed,
            ip,
            unanswered: 0,
        });
    }

    /// A ping on connection `id` to `peer` was answered or not; true if the connection is to
    /// be closed: [`PINGS_UNANSWERED`] in a row went unanswered. A link that died (a NAT
    /// dropped its mapping, a route went) otherwise stays open for minutes while TCP retries,
    /// and what is sent over it goes nowhere; closed, the peer is dialed again, through a relay
    /// if need be.
    pub(crate) fn pinged(&mut self, peer: &PeerId, id: ConnectionId, answered: bool) -> bool {
        let Some(c) = self
            .conns
            .get_mut(peer)
            .and_then(|l| l.iter_mut().find(|c| c.id == id))
        else {
            return false;
        };
        c.unanswered = if answered { 0 } else { c.unanswered + 1 };
        c.unanswered >= PINGS_UNANSWERED
    }

    /// The peer's IP address on a direct connection, if it has one open.
    pub(crate) fn ip(&self, peer: &PeerId) -> Option<std::net::IpAddr> {
        self.conns.get(peer)?.iter().find_map(|c| c.ip)
    }

    pub(crate) fn closed(&mut self, peer: &PeerId, id: ConnectionId) {
        if let Some(list) = self.conns.get_mut(peer) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                self.conns.remove(peer);
            }
        }
    }

    /// How this node is connected to `peer`: directly if any connection is direct.
    pub(crate) fn link(&self, peer: &PeerId) -> Link {
        match self.conns.get(peer) {
            Some(list) if list.iter().any(|c| !c.relayed) => Link::Direct,
            Some(list) if !list.is_empty() => Link::Relayed,
            _ => Link::Absent,
        }
    }

    /// Whether any connection open is relayed.
    pub(crate) fn any_relayed(&self) -> bool {
        self.conns.values().flatten().any(|c| c.relayed)
    }

    /// The connection `id` to `peer`, if this node dialed it directly: the address dialed.
    pub(crate) fn dialed_directly(&self, peer: &PeerId, id: ConnectionId) -> Option<Multiaddr> {
        self.conns
            .get(peer)?
            .iter()
            .find(|c| c.id == id && !c.relayed)?
            .dialed
            .clone()
    }

    /// Relayed connections to `peer` while a direct one is open (a hole was punched): the relay
    /// need not carry them any more.
    pub(crate) fn superseded_relayed(&self, peer: &PeerId) -> Vec<ConnectionId> {
        match self.conns.get(peer) {
            Some(list) if list.iter().any(|c| !c.relayed) => list
                .iter()
                .filter(|c| c.relayed)
                .map(|c| c.id)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Drops what no longer changes a decision (full budgets, lookups older than
    /// [`DHT_RETRY`]), and the backoff and ban count of peers that are not `connected`,
    /// [`FORGET_AFTER`] after they last mattered.
    pub(crate) fn prune(&mut self, now: Instant, connected: impl Fn(&PeerId) -> bool) {
        let stale = |at: Instant| now.saturating_duration_since(at) > FORGET_AFTER;
        self.budgets.retain(|_, b| !b.full(now));
        self.lookups
            .retain(|_, t| now.duration_since(*t) <= DHT_RETRY);
        self.backoff
            .retain(|p, (next, _)| !stale(*next) || connected(p));
        self.bans
            .retain(|p, b| b.blocked || !stale(b.until) || connected(p));
    }
}

/// How long to wait before dialing a peer again after `failures` failed attempts in a row:
/// 2 s, 4 s, 8 s, 16 s, then every 32 s. Kept short: a member that comes back should be found
/// again quickly (the long chaos tier took two minutes to reconverge with a 4-minute cap).
fn redial_wait(failures: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(failures.clamp(1, 5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{n}")
            .parse()
            .expect("valid multiaddr")
    }

    #[test]
    fn the_address_book_keeps_connected_peers_and_drops_the_oldest_other() {
        let mut book = PeerBook::default();
        let start = Instant::now();
        let peers: Vec<PeerId> = (0..MAX_BOOK_PEERS).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            let at = start + Duration::from_millis(i as u64);
            assert!(book.learn_addr(*p, &addr(1), at, |_| false));
        }
        let (connected, oldest) = (peers[0], peers[1]);
        let late = start + Duration::from_secs(60);
        let newcomer = PeerId::random();
        assert!(book.learn_addr(newcomer, &addr(1), late, |p| *p == connected));
        assert_eq!(book.addrs.len(), MAX_BOOK_PEERS);
        assert_eq!(book.addrs(&connected), vec![addr(1)]);
        assert!(book.addrs(&oldest).is_empty());
        assert_eq!(book.addrs(&newcomer), vec![addr(1)]);
        // A known address is not new; a peer keeps its last eight.
        assert!(!book.learn_addr(newcomer, &addr(1), late, |_| false));
        for n in 2..=10 {
            assert!(book.learn_addr(newcomer, &addr(n), late, |_| false));
        }
        assert_eq!(
            book.addrs(&newcomer),
            (3..=10).map(addr).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_refilled_budget_and_an_old_lookup_are_dropped_as_they_decide_nothing() {
        let mut book = PeerBook::default();
        let (peer, now) = (PeerId::random(), Instant::now());
        for _ in 0..REQUEST_BURST as usize {
            assert!(book.within_budget(peer, now));
        }
        assert!(!book.within_budget(peer, now));
        assert!(book.lookup_due(peer, now));
        assert!(!book.lookup_due(peer, now));
        book.prune(now + Duration::from_secs(1), |_| false);
        assert_eq!((book.budgets.len(), book.lookups.len()), (1, 1));
        let later = now + Duration::from_secs(11);
        book.prune(later, |_| false);
        assert!(book.budgets.is_empty() && book.lookups.is_empty());
        assert!(book.within_budget(peer, later) && book.lookup_due(peer, later));
    }

    #[test]
    fn a_disconnected_peer_starts_over_an_hour_after_its_last_failure_and_ban() {
        let mut book = PeerBook::default();
        let (gone, here, now) = (PeerId::random(), PeerId::random(), Instant::now());
        for p in [gone, here] {
            book.dial_failed(p, now);
            book.dial_failed(p, now);
            assert_eq!(book.ban(p, now), Duration::from_secs(60));
            assert_eq!(book.ban(p, now), Duration::from_secs(120));
        }
        assert!(!book.may_dial(&gone, now + Duration::from_secs(3)));
        let lifted = now + Duration::from_secs(120);
        assert_eq!(book.lift_bans(lifted).len(), 2);
        assert!(book.may_dial(&gone, lifted) && !book.banned(&gone));
        // Within the hour after the last failed dial (due again at 4 s) nothing is forgotten.
        book.prune(now + Duration::from_secs(4) + FORGET_AFTER, |p| *p == here);
        assert_eq!(book.backoff.len() + book.bans.len(), 4);
        book.prune(lifted + FORGET_AFTER + Duration::from_secs(1), |p| {
            *p == here
        });
        assert_eq!(book.ban(gone, lifted), Duration::from_secs(60));
        assert_eq!(book.ban(here, lifted), Duration::from_secs(240));
        assert!(!book.backoff.contains_key(&gone) && book.backoff.contains_key(&here));
    }
}
