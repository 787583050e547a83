//! The two request-response protocols, sync and join, routed by one function: requests are
//! answered after the turn's commit (unless their peer is being closed, is over its budget, or
//! sent something unreadable), responses and failures go back to the engine.

use std::collections::HashMap;

use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::PeerId;

use super::{node_of, Runtime};
use crate::flow::FlowId;
use crate::identity::NodeId;
use crate::wire::{self, Codec, Frame, JoinRequest, JoinResponse, SyncRequest, SyncResponse};

/// What differs between the request-response protocols.
pub(super) trait Protocol {
    type Request: prost::Message + Default + Clone + Send + 'static;
    type Response: prost::Message + Default + Clone + Send + 'static;
    /// The answer to a request that is not read, and what a held answer becomes when the
    /// turn's commit fails; `None`: no answer at all.
    fn refused() -> Option<Self::Response>;
    fn answer(rt: &mut Runtime, peer: &NodeId, request: Self::Request) -> Self::Response;
    fn response(rt: &mut Runtime, peer: &NodeId, flow: &FlowId, response: Self::Response);
    fn failed(rt: &mut Runtime, peer: &NodeId, flow: &FlowId, error: OutboundFailure);
    /// The protocol's behaviour in the swarm, and its lane.
    fn parts(rt: &mut Runtime) -> (&mut Behaviour<Self>, &mut Lane<Self::Response>);
}

type Behaviour<P> =
    request_response::Behaviour<Codec<<P as Protocol>::Request, <P as Protocol>::Response>>;

/// One protocol's traffic: the requests this node sent, by id (to whom, about which flow), and
/// the answers that wait for the turn's commit.
#[derive(Default)]
pub(super) struct Lane<Response> {
    pub(super) sent: HashMap<OutboundRequestId, (NodeId, FlowId)>,
    held: Vec<(ResponseChannel<Response>, Response)>,
}

/// Automerge sync of one flow.
pub(super) struct Sync;

/// A join by invite ticket.
pub(super) struct Join;

impl Protocol for Sync {
    type Request = SyncRequest;
    type Response = SyncResponse;
    fn refused() -> Option<SyncResponse> {
        Some(SyncResponse {
            result: Some(wire::sync_response::Result::Unavailable(true)),
        })
    }
    fn answer(rt: &mut Runtime, peer: &NodeId, request: SyncRequest) -> SyncResponse {
        rt.engine.handle_sync_request(peer, request)
    }
    fn response(rt: &mut Runtime, peer: &NodeId, flow: &FlowId, response: SyncResponse) {
        rt.engine.handle_sync_response(peer, flow, response);
    }
    fn failed(rt: &mut Runtime, peer: &NodeId, flow: &FlowId, error: OutboundFailure) {
        tracing::debug!(target: "node", %peer, %flow, "sync request failed: {error}");
        rt.engine.sync_failed(peer, flow);
    }
    fn parts(rt: &mut Runtime) -> (&mut Behaviour<Self>, &mut Lane<SyncResponse>) {
        (&mut rt.swarm.behaviour_mut().sync, &mut rt.sync)
    }
}

impl Protocol for Join {
    type Request = JoinRequest;
    type Response = JoinResponse;
    fn refused() -> Option<JoinResponse> {
        None
    }
    fn answer(rt: &mut Runtime, peer: &NodeId, request: JoinRequest) -> JoinResponse {
        let response = rt.engine.handle_join_request(peer, request);
        rt.refresh_members();
        response
    }
    fn response(rt: &mut Runtime, peer: &NodeId, flow: &FlowId, response: JoinResponse) {
        rt.joins_sent.remove(&(*peer, *flow));
        rt.engine.handle_join_response(peer, flow, response);
    }
    fn failed(rt: &mut Runtime, peer: &NodeId, flow: &FlowId, error: OutboundFailure) {
        // The ticket's addresses may be old (made while the inviter's node was stopped): once,
        // the request waits for the DHT to find the inviter instead of failing.
        if matches!(error, OutboundFailure::DialFailure) && rt.join_again(peer, flow) {
            return;
        }
        // The connection it went over closed (a relayed one, once a hole is punched): once,
        // it goes again over the one still open. The inviter answers a joiner that got in with
        // its first request as joined.
        if matches!(error, OutboundFailure::ConnectionClosed) && rt.join_resend(peer, flow) {
            return;
        }
        rt.joins_sent.remove(&(*peer, *flow));
        rt.engine.join_failed(peer, flow, error.to_string());
    }
    fn parts(rt: &mut Runtime) -> (&mut Behaviour<Self>, &mut Lane<JoinResponse>) {
        (&mut rt.swarm.behaviour_mut().join, &mut rt.join)
    }
}

type Event<P> = request_response::Event<Frame<<P as Protocol>::Request>, <P as Protocol>::Response>;

impl Runtime {
    pub(super) fn on_rr_event<P: Protocol>(&mut self, event: Event<P>) {
        match event {
            request_response::Event::Message { peer, message, .. } => {
                let Some(node) = node_of(&peer) else { return };
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => self.on_request::<P>(peer, &node, request, channel),
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some((node, flow)) = P::parts(self).1.sent.remove(&request_id) {
                            P::response(self, &node, &flow, response);
                        }
                    }
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((node, flow)) = P::parts(self).1.sent.remove(&request_id) {
                    P::failed(self, &node, &flow, error);
                }
            }
            request_response::Event::ResponseSent { peer, .. }
            | request_response::Event::InboundFailure { peer, .. } => self.answered(peer),
        }
    }

    /// Answers a request after the turn's commit; a peer being closed or over its budget is
    /// not read, and one that sent something unreadable is penalized.
    fn on_request<P: Protocol>(
        &mut self,
        peer: PeerId,
        node: &NodeId,
        request: Frame<P::Request>,
        channel: ResponseChannel<P::Response>,
    ) {
        let response = if self.peers.closing(&peer) || !self.within_budget(peer) {
            P::refused()
        } else {
            match request {
                Frame::Malformed(why) => {
                    self.engine
                        .penalize_peer(node, format!("sent an unreadable request: {why}"));
                    P::refused()
                }
                Frame::Message(request) => Some(P::answer(self, node, request)),
            }
        };
        if let Some(response) = response {
            P::parts(self).1.held.push((channel, response));
            self.held.peers.insert(peer);
        }
    }

    /// Whether `peer` may make another request now; a peer over its budget is penalized.
    fn within_budget(&mut self, peer: PeerId) -> bool {
        let ok = self.peers.within_budget(peer, std::time::Instant::now());
        if !ok {
            if let Some(node) = node_of(&peer) {
                self.engine
                    .penalize_peer(&node, "too many requests".to_string());
            }
        }
        ok
    }

    /// An answer to `peer` went out (or could not): if it was penalized, it is blocked shortly
    /// (see [`super::peers::PeerBook::answered`]).
    pub(super) fn answered(&mut self, peer: PeerId) {
        self.peers.answered(&peer, std::time::Instant::now());
    }

    /// Blocks the penalized peers now due (their answer went out, or the grace is over).
    pub(super) fn close_due(&mut self) {
        for peer in self.peers.due_closings(std::time::Instant::now()) {
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        }
    }

    /// Sends the answers the turn held, or, if its commit `failed`, what a refused request gets.
    pub(super) fn send_held<P: Protocol>(&mut self, failed: bool) {
        let (behaviour, lane) = P::parts(self);
        for (channel, response) in std::mem::take(&mut lane.held) {
            let response = if failed { P::refused() } else { Some(response) };
            if let Some(response) = response {
                let _ = behaviour.send_response(channel, response);
            }
        }
    }
}
