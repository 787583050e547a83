//! In-process sync: coflow's engines wired to each other with no sockets (every message encoded
//! and counted as it would go on the wire), and plain Automerge sync for the baselines.

use automerge::sync::{self, SyncDoc};
use automerge::Automerge;
use coflow::identity::NodeId;
use coflow::repo::Repo;
use coflow::sync::{Engine, Event, Io};
use prost::Message;

/// Engines that deliver each other's requests at once, in order.
pub struct Net {
    pub nodes: Vec<Engine>,
    ids: Vec<NodeId>,
    /// Protobuf-encoded bytes of every request and response delivered.
    pub bytes: u64,
    pub messages: u64,
    announced: u64,
    now: u64,
}

impl Net {
    pub fn new(repos: Vec<Repo>) -> Net {
        let nodes: Vec<Engine> = repos.into_iter().map(Engine::new).collect();
        let ids = nodes.iter().map(|e| e.node_id().clone()).collect();
        Net {
            nodes,
            ids,
            bytes: 0,
            messages: 0,
            announced: 0,
            now: 1,
        }
    }

    /// Connects two nodes and runs until nothing is left to say.
    pub fn connect(&mut self, a: usize, b: usize) {
        let (ia, ib) = (self.ids[a].clone(), self.ids[b].clone());
        self.nodes[a].peer_connected(ib, self.now);
        self.nodes[b].peer_connected(ia, self.now);
        self.run();
    }

    /// Delivers messages until every node is quiet.
    pub fn run(&mut self) {
        // Every node hears of every other node's topic subscriptions, as gossipsub would tell
        // connected peers: gossip reaches them, so changes are announced rather than pushed.
        for a in 0..self.nodes.len() {
            for topic in self.nodes[a].member_topics() {
                for b in (0..self.nodes.len()).filter(|b| *b != a) {
                    let id = self.ids[a].clone();
                    self.nodes[b].peer_subscribed(&id, &topic);
                }
            }
        }
        loop {
            let mut moved = false;
            for from in 0..self.nodes.len() {
                while let Some(io) = self.nodes[from].next_io() {
                    match io {
                        Io::Sync {
                            peer,
                            flow,
                            request,
                        } => {
                            moved = true;
                            let to = self
                                .ids
                                .iter()
                                .position(|i| *i == peer)
                                .expect("a node of this net");
                            self.bytes += request.encoded_len() as u64;
                            let response =
                                self.nodes[to].handle_sync_request(&self.ids[from], request);
                            self.bytes += response.encoded_len() as u64;
                            self.messages += 2;
                            let by = self.ids[to].clone();
                            self.nodes[from].handle_sync_response(&by, &flow, response);
                        }
                        Io::Penalize { peer, reason } => {
                            panic!("an honest peer {peer} was penalized: {reason}")
                        }
                        Io::Announce { topic, heads } => {
                            // Gossip, delivered to every other node. Counted: the payload, the
                            // topic, and what gossipsub adds to a signed message (author id,
                            // sequence number, signature); not its protobuf framing.
                            moved = true;
                            let data = coflow::wire::encode_announce(&heads);
                            let source = self.ids[from].clone();
                            for to in (0..self.nodes.len()).filter(|t| *t != from) {
                                self.bytes += (data.len() + topic.len() + 38 + 8 + 64) as u64;
                                self.messages += 1;
                                self.announced += 1;
                                self.nodes[to].handle_announcement(
                                    self.announced.to_le_bytes().to_vec(),
                                    &source,
                                    Some(&source),
                                    &topic,
                                    &data,
                                );
                            }
                        }
                        Io::Event(Event::Offered { flow, .. }) => {
                            // A member added this node by node id: its user accepts at once
                            // (SECURITY.md, "Consent"), and the rest of the flow follows.
                            moved = true;
                            self.nodes[from]
                                .accept(&flow)
                                .expect("the offer is accepted");
                        }
                        Io::Validate { .. } | Io::Dial { .. } => {}
                        Io::Join { .. } | Io::Event(_) => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }
}

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
