//! Delivery: what each engine's output does on the network, and each message's arrival.

use prost::Message;

use super::*;

impl<S: Storage> Net<S> {
    /// Sends a message over the network, counting its bytes; loss turns a request into a
    /// failure its sender hears of after the timeout.
    pub(super) fn send(&mut self, from: usize, to: usize, msg: Msg, bytes: usize) {
        self.traffic[from].messages_out += 1;
        self.traffic[from].bytes_out += bytes as u64;
        if self.cut.contains(&pair(from, to)) || self.chance(self.cfg.drop_percent) {
            self.dropped += 1;
            self.lost(from, to, msg);
            return;
        }
        let at = self.now + self.latency();
        self.schedule(at, Packet { from, to, msg });
    }

    /// What the sender of a lost message hears: a request (or the answer to it) failed.
    pub(super) fn lost(&mut self, from: usize, to: usize, msg: Msg) {
        let at = self.now + self.cfg.timeout_ms;
        let failed = match msg {
            Msg::Request { flow, .. } => Some((from, to, flow, false)),
            Msg::Response { flow, .. } => Some((to, from, flow, false)),
            Msg::JoinRequest { flow, .. } => Some((from, to, flow, true)),
            Msg::JoinResponse { flow, .. } => Some((to, from, flow, true)),
            Msg::Gossip { .. } | Msg::Failed { .. } | Msg::Dial => None,
        };
        if let Some((requester, peer, flow, join)) = failed {
            let msg = Msg::Failed { flow, join };
            self.schedule(
                at,
                Packet {
                    from: peer,
                    to: requester,
                    msg,
                },
            );
        }
    }

    /// `x` subscribes to `topic`: peer `y` hears of it, and the two may form a mesh link.
    pub(super) fn tell_subscribed(&mut self, x: usize, y: usize, topic: &str) {
        let id = self.ids[x];
        self.nodes[y].peer_subscribed(&id, topic);
        if self.subscribed[y].contains(topic) {
            for (owner, peer) in [(x, y), (y, x)] {
                let mesh = self.mesh.entry((owner, topic.to_string())).or_default();
                if mesh.len() < self.cfg.mesh && !mesh.contains(&peer) {
                    mesh.push(peer);
                }
            }
        }
    }

    /// Subscribes `node` to the topics of the flows it is now a member of.
    pub(super) fn refresh_topics(&mut self, node: usize) {
        for topic in self.nodes[node].member_topics() {
            if self.subscribed[node].insert(topic.clone()) {
                for y in self.peers[node].clone() {
                    self.tell_subscribed(node, y, &topic);
                }
            }
        }
    }

    /// Moves every node's pending output onto the network.
    pub fn collect(&mut self) {
        for node in 0..self.nodes.len() {
            self.collect_from(node);
        }
    }

    /// Moves `node`'s pending output onto the network.
    pub fn collect_from(&mut self, from: usize) {
        let mut any = false;
        while let Some(io) = self.nodes[from].next_io() {
            any = true;
            self.output(from, io);
        }
        if any {
            self.refresh_topics(from);
        }
    }

    pub(super) fn output(&mut self, from: usize, io: Io) {
        match io {
            Io::Sync {
                peer,
                flow,
                request,
            } => {
                let Some(to) = self.index(&peer) else { return };
                let bytes = request.encoded_len();
                self.send(from, to, Msg::Request { flow, request }, bytes);
            }
            Io::Join {
                peer,
                flow,
                request,
            } => {
                let Some(to) = self.index(&peer) else { return };
                let bytes = request.encoded_len();
                self.send(from, to, Msg::JoinRequest { flow, request }, bytes);
            }
            Io::Penalize { peer, reason } => {
                if let Some(whom) = self.index(&peer) {
                    self.penalties.push((whom, reason));
                    self.disconnect(from, whom);
                }
            }
            Io::Announce { topic, heads } => {
                let id = self.gossip.len() as u64;
                self.gossip.push(GossipMsg {
                    source: from,
                    topic: topic.clone(),
                    data: wire::encode_announce(&heads),
                });
                self.seen.insert((from, id));
                // Flood publishing: to every connected peer subscribed to the topic.
                let to: Vec<usize> = self.peers[from]
                    .iter()
                    .copied()
                    .filter(|p| self.subscribed[*p].contains(&topic))
                    .collect();
                self.forward(from, id, to);
            }
            Io::Validate { id, via, verdict } => {
                let Ok(id) = <[u8; 8]>::try_from(id.as_slice()).map(u64::from_le_bytes) else {
                    return;
                };
                if verdict != Verdict::Accept || id as usize >= self.gossip.len() {
                    return;
                }
                let via = self.index(&via);
                let g = &self.gossip[id as usize];
                let (source, topic) = (g.source, g.topic.clone());
                let to: Vec<usize> = self
                    .mesh
                    .get(&(from, topic))
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|p| Some(*p) != via && *p != source)
                    .collect();
                self.forward(from, id, to);
            }
            Io::Dial { peer } => {
                if let Some(to) = self.index(&peer) {
                    self.dial(from, to);
                }
            }
            Io::Event(Event::Offered { flow, .. }) if self.cfg.accept_offers => {
                // The user's answer: accepting a flow starts syncing it with connected members.
                if self.nodes[from].accept(flow.as_str()).is_ok() {
                    self.refresh_topics(from);
                    self.arrivals(from, &flow);
                }
            }
            Io::Event(event) => {
                if let Event::FlowUpdated { flow, .. } = &event {
                    self.arrivals(from, flow);
                }
                self.events.push((from, event));
            }
        }
    }

    pub(super) fn forward(&mut self, from: usize, id: u64, to: Vec<usize>) {
        let g = &self.gossip[id as usize];
        let bytes = g.data.len() + g.topic.len() + GOSSIP_OVERHEAD;
        for peer in to {
            self.send(from, peer, Msg::Gossip { id }, bytes);
        }
    }

    /// Delivers the next message in virtual time; false when nothing is in flight.
    pub fn step(&mut self) -> bool {
        let Some(Reverse((at, key))) = self.queue.pop() else {
            return false;
        };
        let packet = self.packets.remove(&key).expect("scheduled");
        self.now = self.now.max(at);
        self.deliver(packet);
        true
    }

    pub(super) fn deliver(&mut self, Packet { from, to, msg }: Packet) {
        let counted = !matches!(msg, Msg::Failed { .. } | Msg::Dial);
        if counted && self.cut.contains(&pair(from, to)) {
            // The link was cut while the message was in flight.
            self.dropped += 1;
            self.lost(from, to, msg);
            return;
        }
        self.clock(to);
        let from_id = self.ids[from];
        let dup = counted && self.chance(self.cfg.dup_percent);
        if counted {
            self.delivered += 1;
            self.duplicated += dup as u64;
            self.traffic[to].messages_in += 1 + dup as u64;
        }
        match msg {
            Msg::Request { flow, request } => {
                self.traffic[to].bytes_in += request.encoded_len() as u64 * (1 + dup as u64);
                if dup {
                    let _ = self.nodes[to].handle_sync_request(&from_id, request.clone());
                }
                let response = self.nodes[to].handle_sync_request(&from_id, request);
                let bytes = response.encoded_len();
                self.collect_from(to);
                self.send(to, from, Msg::Response { flow, response }, bytes);
            }
            Msg::Response { flow, response } => {
                self.traffic[to].bytes_in += response.encoded_len() as u64 * (1 + dup as u64);
                if dup {
                    self.nodes[to].handle_sync_response(&from_id, &flow, response.clone());
                }
                self.nodes[to].handle_sync_response(&from_id, &flow, response);
            }
            Msg::JoinRequest { flow, request } => {
                self.traffic[to].bytes_in += request.encoded_len() as u64;
                let response = self.nodes[to].handle_join_request(&from_id, request);
                let bytes = response.encoded_len();
                self.collect_from(to);
                self.send(to, from, Msg::JoinResponse { flow, response }, bytes);
            }
            Msg::JoinResponse { flow, response } => {
                self.traffic[to].bytes_in += response.encoded_len() as u64;
                self.nodes[to].handle_join_response(&from_id, &flow, response);
            }
            Msg::Gossip { id } => {
                let g = &self.gossip[id as usize];
                self.traffic[to].bytes_in +=
                    (g.data.len() + g.topic.len() + GOSSIP_OVERHEAD) as u64 * (1 + dup as u64);
                if !self.seen.insert((to, id)) {
                    return; // a copy of a message this node has seen
                }
                self.announcements += 1;
                let source = self.ids[g.source];
                let (topic, data) = (g.topic.clone(), g.data.clone());
                self.nodes[to].handle_announcement(
                    id.to_le_bytes().to_vec(),
                    &from_id,
                    Some(&source),
                    &topic,
                    &data,
                );
            }
            Msg::Failed { flow, join } => {
                if join {
                    let reason = "no answer".to_string();
                    self.nodes[to].join_failed(&from_id, &flow, reason);
                } else {
                    self.nodes[to].sync_failed(&from_id, &flow);
                }
            }
            Msg::Dial => {
                if !self.cut.contains(&pair(from, to)) {
                    self.connect(from, to);
                }
            }
        }
        self.collect_from(to);
    }
}
