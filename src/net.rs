//! The libp2p side: transports (TCP + Noise + Yamux, QUIC, and circuits through a relay), and
//! the protocols composed into one behaviour — identify, ping, mDNS, Kademlia, gossipsub (head
//! announcements), `/coflow/sync/1`, `/coflow/join/2`, a block list for penalized peers,
//! connection limits, and what reaches across NATs: AutoNAT v2 (client and server), circuit
//! relay v2 (server and client), DCUtR (hole punching) and UPnP.

use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, noise,
    ping, relay, tcp, upnp, yamux, Multiaddr, StreamProtocol, Swarm,
};

use crate::wire::{self, Codec, JoinRequest, JoinResponse, SyncRequest, SyncResponse};

/// coflow's own Kademlia DHT (not the IPFS one): provider records under opaque flow tags and
/// peer routing by node id.
pub const KAD_PROTOCOL: &str = "/coflow/kad/1.0.0";

/// Identify's protocol version string.
pub const PROTOCOL_VERSION: &str = "/coflow/1";

/// Connection limits (total, per direction, per peer). Three per peer: two members behind NATs
/// that dial each other through a relay at the same moment hold two relayed connections, and the
/// hole punched after must still fit (the relayed ones are closed once it is open).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_established: u32,
    pub max_incoming: u32,
    pub max_pending_incoming: u32,
    pub max_per_peer: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_established: 256,
            max_incoming: 192,
            max_pending_incoming: 32,
            max_per_peer: 3,
        }
    }
}

/// What this node offers as a relay to others (circuit relay v2). It serves only while
/// AutoNAT (or UPnP, or the user) has confirmed an external address: a node behind a NAT is no
/// use as a relay.
///
/// rust-libp2p's defaults are for coordinating a hole punch (2 min and 128 KiB a circuit);
/// coflow's circuits also carry a flow's traffic between members whose NATs cannot be punched
/// through, so a circuit lasts an hour and carries up to 64 MiB each way (then the members dial
/// again, for a new one): a flow's traffic is far less, and a stranger using the relay for
/// bulk data is cut off.
/// Relayed bytes are Noise ciphertext between the two members: the relay holds no flow
/// content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Offer a relay at all (once reachable).
    pub serve: bool,
    pub max_reservations: usize,
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    pub max_circuit_duration: Duration,
    /// Bytes a circuit may carry each way; 0: no limit.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            serve: true,
            max_reservations: 128,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 64 << 20,
        }
    }
}

/// The protocol a relay advertises (identify) when it serves circuits.
pub const RELAY_HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// How the swarm is built ([`build`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct NetOptions {
    pub mdns: bool,
    /// Ask the router for a port mapping (UPnP IGD).
    pub upnp: bool,
    pub limits: Limits,
    pub relay: RelayLimits,
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossip: gossipsub::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub sync: request_response::Behaviour<Codec<SyncRequest, SyncResponse>>,
    pub join: request_response::Behaviour<Codec<JoinRequest, JoinResponse>>,
    /// Tests whether this node's addresses are reachable from outside, by asking peers it
    /// dialed to dial them back from another port (AutoNAT v2).
    pub autonat: autonat::v2::client::Behaviour,
    /// Dials back the addresses peers that dialed this node ask about.
    pub autonat_server: autonat::v2::server::Behaviour,
    /// AutoNAT v1, client and server: a v2 server answers only over a connection its client
    /// dialed, so a public node that others dial and that dials no one (a relay known only as
    /// the others' bootstrap) could never be told it is reachable. v1 asks any connected peer.
    pub autonat_v1: autonat::v1::Behaviour,
    pub relay: relay::Behaviour,
    pub relay_client: relay::client::Behaviour,
    pub dcutr: dcutr::Behaviour,
    pub upnp: Toggle<upnp::tokio::Behaviour>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the network: {0}")]
pub struct NetError(pub String);

/// Why the node cannot listen on an address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct ListenError {
    pub addr: Multiaddr,
    pub reason: String,
}

/// Starts listening on `addr`; refuses an address and port another socket already listens on.
///
/// libp2p-tcp sets `SO_REUSEPORT` on every listening socket (its `do_listen` always creates the
/// socket for `PortUse::Reuse`, and its `Config` has no switch): an outbound dial with
/// `PortUse::Reuse` (hole punching needs it) binds to the listen port, which the kernel allows
/// only if the listener shares its port too. Linux then also lets any other process of the same
/// user bind that address and port with `SO_REUSEPORT`, and spreads inbound connections over
/// both, so a second node on an occupied port would start and quietly take some of the first
/// one's connections. Before handing the address to libp2p, it is bound once without
/// `SO_REUSEPORT` (only `SO_REUSEADDR`, which still conflicts with any listener on the port but
/// not with old connections in TIME_WAIT): if that fails, another socket listens there. Port 0 asks the kernel for a free port and needs no check. Two nodes starting in the
/// same instant can both pass the check; one started after another cannot.
pub fn listen(swarm: &mut Swarm<Behaviour>, addr: &Multiaddr) -> Result<(), ListenError> {
    let refuse = |reason: String| ListenError {
        addr: addr.clone(),
        reason,
    };
    if let Some(socket) = tcp_socket_addr(addr).filter(|s| s.port() != 0) {
        probe(socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => refuse(format!(
                "{e}: another process listens on port {}",
                socket.port()
            )),
            _ => refuse(e.to_string()),
        })?;
    }
    swarm
        .listen_on(addr.clone())
        .map(|_| ())
        .map_err(|e| refuse(error_chain(&e)))
}

/// Binds and listens on `addr` as libp2p-tcp does (`SO_REUSEADDR`, IPv6 only for an IPv6
/// address) but without `SO_REUSEPORT`, then closes the socket.
fn probe(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1)
}

/// The IP address and TCP port of a `/ip4|ip6/…/tcp/…` address (`/p2p/…` may follow).
fn tcp_socket_addr(addr: &Multiaddr) -> Option<std::net::SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match (parts.next()?, parts.next()) {
        (Protocol::Tcp(port), None | Some(Protocol::P2p(_))) => Some((ip, port).into()),
        _ => None,
    }
}

/// An error and its sources as one line: libp2p's `TransportError::Other` prints nothing of
/// its own and keeps the reason (such as the OS error) in its source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        "the transport gave no reason".into()
    } else {
        parts.join(": ")
    }
}

/// Gossipsub for head announcements: signed by their author (so a member checks the author is
/// a member), validated by the application before they are passed on (a member passes one on
/// only once it holds the heads it names), small, and with peer scoring on.
fn gossip(
    key: &libp2p::identity::Keypair,
) -> Result<gossipsub::Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(wire::MAX_GOSSIP_MESSAGE)
        // Keep messages ~10 s for validation: a member holds an announcement back until it has
        // synced the changes it names.
        .history_length(10)
        .build()?;
    let mut behaviour =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)?;
    // Many nodes behind one address is normal on a LAN or loopback; elsewhere the default
    // penalty for crowding on one IP stays.
    let mut params = gossipsub::PeerScoreParams::default();
    params.ip_colocation_factor_whitelist.extend([
        std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ]);
    behaviour.with_peer_score(params, gossipsub::PeerScoreThresholds::default())?;
    Ok(behaviour)
}

/// How much rejected announcements cost their forwarder: the count squared times this. With
/// [`PeerScoreThresholds`]'s defaults and no credit, one brings the peer to -10 (the gossip
/// threshold), two to -40 (no more gossip with it), three to -90 (past the graylist threshold
/// of -80: its messages are ignored). The count decays to nothing over
/// [`INVALID_DELIVERY_MEMORY`].
///
/// [`PeerScoreThresholds`]: gossipsub::PeerScoreThresholds
pub const INVALID_DELIVERY_WEIGHT: f64 = -10.0;

/// How long a rejected announcement counts against its forwarder.
pub const INVALID_DELIVERY_MEMORY: Duration = Duration::from_secs(3600);

/// Score parameters of a flow topic. rust-libp2p counts a `Reject` against the forwarder only
/// for topics in `PeerScoreParams::topics`, so each topic gets these when subscribed.
/// Announcements are rare (one per edit), so the mesh delivery-rate penalties are off: a mesh
/// peer that delivers few messages is not failing. Time in the mesh and first deliveries earn a
/// little credit (at most +3 and +10), less than three rejected messages cost.
pub fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: gossipsub::score_parameter_decay(Duration::from_secs(600)),
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_DELIVERY_WEIGHT,
        invalid_message_deliveries_decay: gossipsub::score_parameter_decay(INVALID_DELIVERY_MEMORY),
        ..gossipsub::TopicScoreParams::default()
    }
}

/// Subscribes to a flow topic with its score parameters (see [`topic_score_params`]).
pub fn subscribe(gossip: &mut gossipsub::Behaviour, topic: &str) -> Result<bool, String> {
    let topic = gossipsub::IdentTopic::new(topic);
    gossip
        .set_topic_params(topic.clone(), topic_score_params())
        .map_err(str::to_string)?;
    gossip.subscribe(&topic).map_err(|e| e.to_string())
}

/// Builds the swarm for a node key.
pub fn build(
    keypair: libp2p::identity::Keypair,
    options: NetOptions,
) -> Result<Swarm<Behaviour>, NetError> {
    let NetOptions {
        mdns: mdns_on,
        upnp: upnp_on,
        limits,
        relay: relay_limits,
    } = options;
    let err = |e: &dyn std::fmt::Display| NetError(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| err(&e))?
        .with_quic()
        .with_dns()
        .map_err(|e| err(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| err(&e))?
        .with_behaviour(|key, relay_client| {
            let peer = key.public().to_peer_id();
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
            } else {
                None
            };
            let gossip = gossip(key)?;
            let rr = |timeout| {
                request_response::Config::default()
                    .with_request_timeout(timeout)
                    .with_max_concurrent_streams(8)
            };
            Ok(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(limits.max_established))
                        .with_max_established_incoming(Some(limits.max_incoming))
                        .with_max_pending_incoming(Some(limits.max_pending_incoming))
                        .with_max_established_per_peer(Some(limits.max_per_peer)),
                ),
                // Peers hear of new addresses (a relay's circuit, one AutoNAT confirmed) at
                // once: the DHT hands out what they hear.
                identify: identify::Behaviour::new(
                    identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
                        .with_push_listen_addr_updates(true),
                ),
                // Every 10 s, 10 s to answer: a dead link is closed after two (`node::peers`).
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(Duration::from_secs(10))
                        .with_timeout(Duration::from_secs(10)),
                ),
                kad: kad::Behaviour::with_config(
                    peer,
                    kad::store::MemoryStore::new(peer),
                    kad::Config::new(StreamProtocol::new(KAD_PROTOCOL)),
                ),
                gossip,
                mdns: Toggle::from(mdns),
                sync: request_response::Behaviour::with_codec(
                    Codec::new(wire::MAX_SYNC_MESSAGE),
                    [(
                        StreamProtocol::new(wire::SYNC_PROTOCOL),
                        ProtocolSupport::Full,
                    )],
                    rr(Duration::from_secs(30)),
                ),
                join: request_response::Behaviour::with_codec(
                    Codec::new(wire::MAX_JOIN_MESSAGE),
                    [(
                        StreamProtocol::new(wire::JOIN_PROTOCOL),
                        ProtocolSupport::Full,
                    )],
                    rr(Duration::from_secs(20)),
                ),
                autonat: autonat::v2::client::Behaviour::default(),
                autonat_server: autonat::v2::server::Behaviour::default(),
                autonat_v1: autonat::v1::Behaviour::new(
                    peer,
                    autonat::v1::Config {
                        // Soon and often, until two servers agreed (`node::reach`).
                        boot_delay: Duration::from_secs(2),
                        retry_interval: Duration::from_secs(5),
                        throttle_server_period: Duration::from_secs(5),
                        // Peers on private addresses count: what is reachable from where is
                        // judged by [`crate::node`] (only a public address makes a node
                        // reachable from outside).
                        only_global_ips: false,
                        ..autonat::v1::Config::default()
                    },
                ),
                relay: relay::Behaviour::new(peer, relay_config(&relay_limits)),
                relay_client,
                dcutr: dcutr::Behaviour::new(peer),
                upnp: Toggle::from(upnp_on.then(upnp::tokio::Behaviour::default)),
            })
        })
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    let mut swarm = swarm;
    // Every node serves the DHT: there is no special server role, and on a LAN or loopback no
    // node could otherwise confirm it is reachable.
    swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    // Off until the node decides otherwise (`node::nat`): the relay's own rule would turn it
    // on for a circuit address through another relay.
    swarm
        .behaviour_mut()
        .relay
        .set_status(Some(relay::Status::Disable));
    Ok(swarm)
}

/// The relay server's configuration from coflow's limits; the rate limits stay rust-libp2p's
/// (per peer and per IP address: a reservation or circuit every minute or two, 30 to 60 an
/// hour).
fn relay_config(limits: &RelayLimits) -> relay::Config {
    relay::Config {
        max_reservations: limits.max_reservations,
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer,
        max_circuit_duration: limits.max_circuit_duration,
        max_circuit_bytes: limits.max_circuit_bytes,
        ..relay::Config::default()
    }
}

/// Whether an address goes through a relay (`…/p2p-circuit…`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;

    fn node(seed: u8) -> Swarm<Behaviour> {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap();
        build(key, NetOptions::default()).unwrap()
    }

    /// A forwarder of an announcement the application rejects loses exactly the invalid
    /// delivery penalty (less the time-in-mesh credit it earned meanwhile).
    #[tokio::test]
    async fn a_rejected_announcement_lowers_the_forwarders_score() {
        let topic = "coflow-test-topic";
        let mut alice = node(1);
        let mut bob = node(2);
        let bob_id = *bob.local_peer_id();
        let alice_id = *alice.local_peer_id();
        subscribe(&mut alice.behaviour_mut().gossip, topic).unwrap();
        subscribe(&mut bob.behaviour_mut().gossip, topic).unwrap();
        alice
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let run = async {
            let mut dialed = false;
            let mut published = false;
            loop {
                tokio::select! {
                    event = alice.select_next_some() => match event {
                        SwarmEvent::NewListenAddr { address, .. } if !dialed => {
                            dialed = true;
                            bob.dial(address).unwrap();
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Gossip(
                            gossipsub::Event::Message { propagation_source, message_id, .. },
                        )) => {
                            assert_eq!(propagation_source, bob_id);
                            let gossip = &mut alice.behaviour_mut().gossip;
                            let started = std::time::Instant::now();
                            let score = gossip.peer_score(&bob_id).unwrap();
                            gossip.report_message_validation_result(
                                &message_id,
                                &propagation_source,
                                gossipsub::MessageAcceptance::Reject,
                            );
                            let after = gossip.peer_score(&bob_id).unwrap();
                            return (score, after, started.elapsed());
                        }
                        _ => {}
                    },
                    event = bob.select_next_some() => {
                        if let SwarmEvent::Behaviour(BehaviourEvent::Gossip(
                            gossipsub::Event::Subscribed { peer_id, .. },
                        )) = event {
                            if peer_id == alice_id && !published {
                                published = true;
                                bob.behaviour_mut()
                                    .gossip
                                    .publish(gossipsub::IdentTopic::new(topic), b"not an announcement".to_vec())
                                    .unwrap();
                            }
                        }
                    }
                }
            }
        };
        let (before, after, elapsed) = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the announcement arrives");
        let drop = before - after;
        // Between the two readings only the invalid delivery changed, and the time-in-mesh
        // credit grew by at most its rate times the time between them.
        let credit = 0.01 * elapsed.as_secs_f64();
        assert!(
            drop <= -INVALID_DELIVERY_WEIGHT + 1e-9
                && drop >= -INVALID_DELIVERY_WEIGHT - credit - 1e-9,
            "score {before} -> {after}"
        );
    }
}
