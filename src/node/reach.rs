//! [`Reach`]: whether others can dial this node, and the relays it is reachable through when
//! they cannot. A small state machine with no I/O: the runtime feeds it what the swarm reports
//! (confirmed external addresses, AutoNAT results, relays seen, reservations made and lost) and
//! carries out the [`Action`]s it returns.
//!
//! rust-libp2p has no AutoRelay: the application picks relays. A node reserves a circuit on up
//! to [`MAX_RELAYS`] relays while it is not known to be reachable: once AutoNAT reported an
//! address of its unreachable, or [`GRACE`] after its first connection with no address
//! confirmed (behind a NAT, AutoNAT can run out of addresses to test and say nothing more). It
//! gives its reservations up once an address is confirmed. A relay is any peer that advertises
//! the relay protocol on a direct connection, which rust-libp2p's relay server does only once it
//! has a confirmed external address; a relay whose reservation failed or closed is tried again
//! after [`RETRY`].

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// Most relays a node that is not reachable holds a reservation on.
pub const MAX_RELAYS: usize = 2;
/// How long a node with connections but no confirmed address waits for AutoNAT before it
/// reserves on relays anyway.
pub const GRACE: Duration = Duration::from_secs(15);
/// How long a relay whose reservation failed or closed waits before it is asked again.
pub const RETRY: Duration = Duration::from_secs(30);
/// AutoNAT v1 servers, at different public IPs, that must say they reached an address.
pub const V1_QUORUM: usize = 2;
/// Addresses with AutoNAT v1 answers kept (past it they are forgotten, and counted again).
const MAX_VOUCHED: usize = 16;

/// Whether peers can dial this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// An address of this node was confirmed reachable from outside (AutoNAT, UPnP, or given).
    Public,
    /// A peer could not dial this node back, and no address is confirmed.
    Private,
    /// Not known yet.
    Unknown,
}

/// What the runtime is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Listen through this relay: `listen_on(addr)`, an address ending in `/p2p-circuit`.
    Reserve { relay: PeerId, addr: Multiaddr },
    /// Give this relay listener up.
    Release(ListenerId),
}

struct Reservation {
    relay: PeerId,
    accepted: bool,
}

pub(crate) struct Reach {
    /// Addresses confirmed reachable from outside.
    external: BTreeSet<Multiaddr>,
    /// AutoNAT v1 answers: per address, the IPs of the servers that said they reached it.
    vouches: HashMap<Multiaddr, BTreeSet<std::net::IpAddr>>,
    /// An AutoNAT test of one of this node's addresses failed since the last that succeeded.
    refused: bool,
    /// When this node first had a connection (the start of [`GRACE`]).
    first_connection: Option<Instant>,
    /// Peers offering a relay, each with an address this node reaches it at directly, and
    /// whether it is preferred.
    relays: HashMap<PeerId, (Multiaddr, bool)>,
    /// Relay listeners, accepted or still asking.
    reservations: HashMap<ListenerId, Reservation>,
    /// Relays not to ask again before the time given.
    resting: HashMap<PeerId, Instant>,
    /// This node's own order of relays that are not preferred ([`salted`]).
    salt: u64,
}

/// `peer` mixed with `salt`: an order of node ids no one else can predict.
fn salted(salt: u64, peer: &PeerId) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    salt.hash(&mut h);
    peer.hash(&mut h);
    h.finish()
}

impl Default for Reach {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // A random key per process (the standard library seeds each `RandomState` so).
        let salt = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Reach {
            external: BTreeSet::new(),
            vouches: HashMap::new(),
            refused: false,
            first_connection: None,
            relays: HashMap::new(),
            reservations: HashMap::new(),
            resting: HashMap::new(),
            salt,
        }
    }
}

impl Reach {
    pub fn reachability(&self) -> Reachability {
        if !self.external.is_empty() {
            Reachability::Public
        } else if self.refused {
            Reachability::Private
        } else {
            Reachability::Unknown
        }
    }

    /// Confirmed external addresses.
    pub fn external(&self) -> impl Iterator<Item = &Multiaddr> {
        self.external.iter()
    }

    /// Relays holding a reservation for this node.
    pub fn relays(&self) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .reservations
            .values()
            .filter(|r| r.accepted)
            .map(|r| r.relay)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn connected(&mut self, now: Instant) {
        self.first_connection.get_or_insert(now);
    }

    /// `addr` is reachable from outside, on evidence that cannot be faked by one peer: an
    /// AutoNAT v2 dial-back (it carries a nonce) from a server on a public address, the router's
    /// mapping (UPnP), or the user's word. Only a public address makes this node reachable from
    /// outside: a peer on the same LAN reaching it says nothing about the internet, and a
    /// circuit is a relay's. True if `addr` is new as external.
    pub fn confirmed(&mut self, addr: Multiaddr) -> bool {
        if !is_public(&addr) {
            return false;
        }
        self.refused = false;
        self.external.insert(without_peer(addr))
    }

    /// An AutoNAT v1 server at `server` (its IP) says it reached this node at `addr`. A v1
    /// answer is the server's word alone, so it counts once servers at [`V1_QUORUM`] different
    /// public IP addresses have said so: one lying peer cannot make a node behind a NAT give
    /// its relays up. True once that many have: then [`Reach::confirmed`] takes it.
    pub fn vouched(&mut self, addr: Multiaddr, server: std::net::IpAddr) -> bool {
        let addr = without_peer(addr);
        if !is_public(&addr) || !is_public(&Multiaddr::from(server)) {
            return false;
        }
        if self.vouches.len() >= MAX_VOUCHED && !self.vouches.contains_key(&addr) {
            self.vouches.clear();
        }
        let servers = self.vouches.entry(addr.clone()).or_default();
        servers.insert(server);
        servers.len() >= V1_QUORUM
    }

    /// Whether `addr` is taken as external.
    pub fn is_external(&self, addr: &Multiaddr) -> bool {
        self.external.contains(&without_peer(addr.clone()))
    }

    pub fn expired(&mut self, addr: &Multiaddr) {
        self.external.remove(&without_peer(addr.clone()));
    }

    /// An AutoNAT test of one of this node's addresses came back; a failed one (`addr`, when
    /// known) is no longer external (the port forward went, the laptop moved).
    pub fn tested(&mut self, reachable: bool, addr: Option<&Multiaddr>) {
        if !reachable {
            self.refused = true;
            if let Some(addr) = addr {
                let addr = without_peer(addr.clone());
                self.external.remove(&addr);
                self.vouches.remove(&addr);
            }
        }
    }

    /// A peer told (identify) whether it offers a relay; `direct`: an address this node has a
    /// direct connection to it at, if any. `preferred`: a node this node has reason to trust
    /// with its circuits (a bootstrap node, a member of its flows), asked before any other:
    /// anyone can offer a relay, and make node ids that sort first.
    pub fn relay_offered(
        &mut self,
        peer: PeerId,
        offers: bool,
        direct: Option<Multiaddr>,
        preferred: bool,
    ) {
        match (offers, direct) {
            (true, Some(addr)) => {
                self.relays.insert(peer, (addr, preferred));
            }
            _ => {
                self.relays.remove(&peer);
            }
        }
    }

    /// The connection to a peer closed: it is no relay for this node until it is seen again.
    pub fn disconnected(&mut self, peer: &PeerId) {
        self.relays.remove(peer);
    }

    /// A reservation was accepted by `relay`.
    pub fn accepted(&mut self, relay: &PeerId) {
        for r in self.reservations.values_mut() {
            if r.relay == *relay {
                r.accepted = true;
            }
        }
    }

    /// A listener closed; if it was a relay's, that relay rests a while.
    pub fn listener_closed(&mut self, id: ListenerId, now: Instant) {
        if let Some(r) = self.reservations.remove(&id) {
            self.resting.insert(r.relay, now + RETRY);
        }
    }

    /// A reservation the runtime could not even start.
    pub fn reserve_failed(&mut self, relay: PeerId, now: Instant) {
        self.resting.insert(relay, now + RETRY);
    }

    /// The runtime started listening through a relay (after [`Action::Reserve`]).
    pub fn reserving(&mut self, id: ListenerId, relay: PeerId) {
        self.reservations.insert(
            id,
            Reservation {
                relay,
                accepted: false,
            },
        );
    }

    /// What to do now.
    pub fn plan(&mut self, now: Instant) -> Vec<Action> {
        self.resting.retain(|_, until| *until > now);
        if self.reachability() == Reachability::Public {
            return self
                .reservations
                .keys()
                .map(|id| Action::Release(*id))
                .collect();
        }
        let waited = self
            .first_connection
            .is_some_and(|t| now.duration_since(t) >= GRACE);
        if !(self.refused || waited) {
            return Vec::new();
        }
        let held: Vec<PeerId> = self.reservations.values().map(|r| r.relay).collect();
        let mut candidates: Vec<(&PeerId, &Multiaddr, bool)> = self
            .relays
            .iter()
            .filter(|(p, _)| !held.contains(p) && !self.resting.contains_key(p))
            .map(|(p, (a, preferred))| (p, a, *preferred))
            .collect();
        // Preferred relays first; then in an order of this node's own (the same on every call):
        // not by node id, which anyone can make sort first.
        let salt = self.salt;
        candidates.sort_by_key(|(p, _, preferred)| (!preferred, salted(salt, p)));
        candidates
            .into_iter()
            .take(MAX_RELAYS.saturating_sub(held.len()))
            .map(|(relay, addr, _)| Action::Reserve {
                relay: *relay,
                addr: circuit_listen_addr(addr, relay),
            })
            .collect()
    }
}

/// Whether an address is a direct one on a public IP: not through a relay, and not loopback,
/// private (RFC 1918, IPv6 unique local), link-local, shared (CGNAT, 100.64.0.0/10),
/// benchmarking (198.18.0.0/15), reserved (0/8, 240/4), multicast, IPv4-mapped or NAT64, or
/// unspecified. The documentation ranges count as public: the NAT tests' "internet" is one.
pub fn is_public(addr: &Multiaddr) -> bool {
    if crate::net::is_relayed(addr) {
        return false;
    }
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19)))
        }
        Some(Protocol::Ip6(ip)) => {
            let s = ip.segments();
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // IPv4-mapped, and the NAT64 prefix: IPv4 in disguise.
                || ip.to_ipv4_mapped().is_some()
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
        // A DNS name given by the user (`external`): taken as public.
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}

/// `addr` without a trailing `/p2p/…` (AutoNAT v1 confirms addresses with one).
fn without_peer(mut addr: Multiaddr) -> Multiaddr {
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}

/// The address to listen on through `relay` reached at `addr`: `addr/p2p/RELAY/p2p-circuit`.
fn circuit_listen_addr(addr: &Multiaddr, relay: &PeerId) -> Multiaddr {
    let mut base: Multiaddr = addr
        .iter()
        .take_while(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    base.push(Protocol::P2p(*relay));
    base.push(Protocol::P2pCircuit);
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([n; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn reserves(actions: &[Action]) -> Vec<PeerId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reserve { relay, .. } => Some(*relay),
                Action::Release(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_node_refused_by_autonat_reserves_on_two_relays_and_gives_them_up_once_reachable() {
        let t0 = Instant::now();
        let mut r = Reach::default();
        r.connected(t0);
        for n in 1..=3 {
            r.relay_offered(peer(n), true, Some(addr("/ip4/10.0.0.1/tcp/4001")), false);
        }
        assert_eq!(r.reachability(), Reachability::Unknown);
        assert!(r.plan(t0).is_empty(), "no reservation while it may be reachable");
        r.tested(false, None);
        assert_eq!(r.reachability(), Reachability::Private);
        let first = r.plan(t0);
        assert_eq!(reserves(&first).len(), MAX_RELAYS);
        let Action::Reserve { relay, addr: a } = &first[0] else {
            panic!("{first:?}")
        };
        assert_eq!(
            a.to_string(),
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit")
        );
        for (i, a) in first.iter().enumerate() {
            let Action::Reserve { relay, .. } = a else {
                unreachable!()
            };
            r.reserving(ListenerId::next(), *relay);
            if i == 0 {
                r.accepted(relay);
            }
        }
        assert_eq!(r.relays(), vec![*relay]);
        assert!(r.plan(t0).is_empty(), "two held (one still asking): no more");
        r.confirmed(addr(&format!("/ip4/198.51.100.7/tcp/4001/p2p/{relay}")));
        assert_eq!(r.reachability(), Reachability::Public);
        let external: Vec<String> = r.external().map(|a| a.to_string()).collect();
        assert_eq!(external, vec!["/ip4/198.51.100.7/tcp/4001".to_string()]);
        let release = r.plan(t0);
        assert_eq!(release.len(), MAX_RELAYS);
        assert!(release.iter().all(|a| matches!(a, Action::Release(_))));
    }

    #[test]
    fn preferred_relays_are_asked_before_any_other() {
        let t0 = Instant::now();
        let mut r = Reach::default();
        r.connected(t0);
        r.tested(false, None);
        let mut ids: Vec<PeerId> = (1..=4).map(peer).collect();
        ids.sort();
        // The two that sort last are the preferred ones.
        for (i, p) in ids.iter().enumerate() {
            r.relay_offered(*p, true, Some(addr("/ip4/10.0.0.1/tcp/4001")), i >= 2);
        }
        let mut chosen = reserves(&r.plan(t0));
        chosen.sort();
        assert_eq!(chosen, ids[2..].to_vec());
    }

    #[test]
    fn one_lying_autonat_v1_server_cannot_make_a_node_public_and_a_failed_test_ends_it() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let mut r = Reach::default();
        r.tested(false, None);
        let lie = addr("/ip4/203.0.113.66/tcp/4444");
        // One server, however often it says so.
        assert!(!r.vouched(lie.clone(), ip("198.51.100.66")));
        assert!(!r.vouched(lie.clone(), ip("198.51.100.66")));
        // A second on the LAN does not count.
        assert!(!r.vouched(lie.clone(), ip("192.168.1.5")));
        assert_eq!(r.reachability(), Reachability::Private);
        assert!(!r.is_external(&lie));
        // Two at different public IPs do.
        assert!(r.vouched(lie.clone(), ip("198.51.100.21")));
        assert!(r.confirmed(lie.clone()));
        assert_eq!(r.reachability(), Reachability::Public);
        assert!(r.is_external(&lie));
        // A failed dial-back of it ends it.
        r.tested(false, Some(&lie));
        assert_eq!(r.reachability(), Reachability::Private);
        assert!(!r.is_external(&lie));
    }

    #[test]
    fn with_autonat_silent_the_node_reserves_after_the_grace_period() {
        let t0 = Instant::now();
        let mut r = Reach::default();
        r.relay_offered(peer(1), true, Some(addr("/ip4/10.0.0.1/tcp/4001")), false);
        assert!(r.plan(t0 + GRACE * 2).is_empty(), "no connection yet");
        r.connected(t0);
        assert!(r.plan(t0 + GRACE - Duration::from_millis(1)).is_empty());
        assert_eq!(reserves(&r.plan(t0 + GRACE)), vec![peer(1)]);
    }

    #[test]
    fn a_relay_that_failed_rests_and_only_direct_offers_count() {
        let t0 = Instant::now();
        let mut r = Reach::default();
        r.connected(t0);
        r.tested(false, None);
        // Offered over a relayed connection only: no relay for us.
        r.relay_offered(peer(2), true, None, true);
        assert!(r.plan(t0).is_empty());
        r.relay_offered(peer(1), true, Some(addr("/ip4/10.0.0.1/udp/4001/quic-v1")), false);
        let id = ListenerId::next();
        assert_eq!(reserves(&r.plan(t0)), vec![peer(1)]);
        r.reserving(id, peer(1));
        r.accepted(&peer(1));
        r.listener_closed(id, t0);
        assert!(r.relays().is_empty());
        assert!(r.plan(t0 + RETRY - Duration::from_millis(1)).is_empty());
        assert_eq!(reserves(&r.plan(t0 + RETRY)), vec![peer(1)]);
        // A relay that stops offering (or disconnects) is not asked.
        r.relay_offered(peer(1), false, None, false);
        assert!(r.plan(t0 + RETRY).is_empty());
        // A relayed address is never an external address, nor one a LAN peer reached.
        r.confirmed(addr("/ip4/198.51.100.1/tcp/4001/p2p-circuit"));
        for lan in [
            "/ip4/192.168.1.2/tcp/4001",
            "/ip4/10.1.2.3/tcp/4001",
            "/ip4/100.64.0.9/udp/4001/quic-v1",
            "/ip4/127.0.0.1/tcp/4001",
            "/ip6/fe80::1/tcp/4001",
            "/ip6/fd00::1/tcp/4001",
        ] {
            r.confirmed(addr(lan));
        }
        assert_eq!(r.reachability(), Reachability::Private);
        assert!(is_public(&addr("/ip6/2001:db8::1/tcp/4001")));
        for bogon in [
            "/ip4/0.1.2.3/tcp/1",
            "/ip4/240.0.0.1/tcp/1",
            "/ip4/198.18.0.1/tcp/1",
            "/ip4/224.0.0.1/udp/1/quic-v1",
            "/ip6/::ffff:198.51.100.1/tcp/1",
            "/ip6/64:ff9b::1/tcp/1",
            "/ip6/ff02::1/tcp/1",
        ] {
            assert!(!is_public(&addr(bogon)), "{bogon}");
        }
        assert!(is_public(&addr("/ip4/100.128.0.1/tcp/4001")));
    }
}
