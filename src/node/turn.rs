//! The end of a turn: commit what its inputs wrote, then send what they produced (held
//! responses and replies, and the engine's [`Io`]).

use std::collections::HashSet;
use std::time::Instant;

use libp2p::{gossipsub, PeerId};

use super::rr::{self, Join};
use super::{peer_of, Pending, Runtime};
use crate::api::Reply;
use crate::error::{Error, Result};
use crate::sync::{Event, Io, Verdict};
use crate::web::Change;
use crate::wire::Frame;

/// Replies that wait for the turn's commit (responses wait in their [`rr::Lane`]).
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) replies: Vec<(Pending, Result<Reply>)>,
    /// The peers the held responses go to.
    pub(crate) peers: HashSet<PeerId>,
    /// What the page is told once the turn committed.
    pub(crate) changes: Vec<Change>,
}

impl Runtime {
    /// Ends a turn: commits what its inputs wrote, then sends what they produced. If the commit
    /// fails nothing of the turn was stored, so nothing that tells of it is sent: sync
    /// responses say the flow is unavailable, join responses are dropped, API calls get the
    /// error, and the engine forgets its unsent messages (see [`crate::sync::Engine::commit`]).
    pub(super) fn end_turn(&mut self, grouped: bool) {
        // The fsync blocks this thread, which is the turns' own (see the module doc of `node`).
        let committed = if grouped {
            self.engine.commit()
        } else {
            Ok(())
        };
        let mut held = std::mem::take(&mut self.held);
        if let Err(e) = &committed {
            for (_, result) in &mut held.replies {
                *result = Err(Error::Invalid(format!("the store could not commit: {e}")));
            }
        }
        self.send_held::<rr::Sync>(committed.is_err());
        self.send_held::<Join>(committed.is_err());
        for (reply, result) in held.replies {
            let _ = reply.send(result);
        }
        if committed.is_ok() {
            for change in held.changes {
                // Nobody listening is no error.
                let _ = self.changes.send(change);
            }
        }
        self.answering = held.peers;
        self.drain();
        self.answering.clear();
    }

    /// Executes what the engine asked for.
    fn drain(&mut self) {
        while let Some(io) = self.engine.next_io() {
            self.on_io(io);
        }
    }

    fn on_io(&mut self, io: Io) {
        match io {
            Io::Announce { topic, heads } => {
                let data = crate::wire::encode_announce(&heads);
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .publish(gossipsub::IdentTopic::new(topic), data)
                {
                    tracing::debug!(target: "node", "announcement not sent: {e}");
                }
            }
            Io::Sync {
                peer,
                flow,
                request,
            } => {
                let Some(p) = peer_of(&peer) else { return };
                let id = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&p, Frame::Message(request));
                self.sync.sent.insert(id, (peer, flow));
            }
            Io::Join {
                peer,
                flow,
                request,
            } => self.send_join(peer, flow, request),
            Io::Penalize { peer, reason } => {
                let Some(p) = peer_of(&peer) else { return };
                let ban = self.peers.ban(p, Instant::now());
                tracing::warn!(target: "node", %peer, ?ban, "blocking peer: {reason}");
                if self.answering.contains(&p) {
                    // Blocked once the answer just handed out has gone.
                    self.peers.close_after_answer(p, Instant::now());
                } else {
                    self.swarm.behaviour_mut().blocked.block_peer(p);
                }
            }
            Io::Validate { id, via, verdict } => {
                let Some(p) = peer_of(&via) else { return };
                let acceptance = match verdict {
                    Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                    Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                    Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                };
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .report_message_validation_result(
                        &gossipsub::MessageId::new(&id),
                        &p,
                        acceptance,
                    );
            }
            Io::Dial { peer } => {
                if let Some(p) = peer_of(&peer) {
                    self.wanted.insert(p);
                    if !self.swarm.is_connected(&p) {
                        self.dial(p);
                    }
                }
            }
            Io::Event(event) => self.on_engine_event(event),
        }
    }

    fn on_engine_event(&mut self, event: Event) {
        match event {
            Event::Joined { flow } => {
                tracing::info!(target: "node", %flow, "joined");
                let _ = self.changes.send(Change::Flows);
                let _ = self.changes.send(Change::Flow(flow));
                self.refresh_members();
                self.refresh_topics();
                for (tx, _) in self.pending_joins.remove(&flow).unwrap_or_default() {
                    let _ = tx.send(Ok(Reply::Joined { id: flow.to_string() }));
                }
            }
            Event::JoinFailed { flow, reason } => {
                for (tx, _) in self.pending_joins.remove(&flow).unwrap_or_default() {
                    let _ = tx.send(Err(Error::Invalid(format!("cannot join: {reason}"))));
                }
            }
            Event::Offered { flow, from } => {
                tracing::info!(target: "node", %flow, peer = %from, "a member added this node to a flow: it waits for `coflow flow accept` (or `decline`)");
                let _ = self.changes.send(Change::Flows);
            }
            Event::FlowUpdated { flow, from } => {
                // Membership changes it brings are acted on at the next tick: doing it
                // for every batch received cost a busy node a tenth of its time.
                tracing::info!(target: "node", %flow, peer = %from, "received changes");
                let _ = self.changes.send(Change::Flow(flow));
            }
        }
    }
}
