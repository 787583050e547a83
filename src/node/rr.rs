//! The two request-response protocols, sync and join, routed by one function: requests are
//! answered after the turn's commit (unless their peer is being closed, is over its budget, or
//! sent something unreadable), responses and failures go back to the engine.

use std::collections::HashMap;

use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::{PeerId, Swarm};

use super::turn::Held;
use super::{node_of, Runtime};
use crate::identity::NodeId;
use crate::net::Behaviour;
use crate::wire::{self, Codec, Frame, JoinRequest, JoinResponse, SyncRequest, SyncResponse};

/// What differs between the request-response protocols.
pub(super) trait Protocol {
    type Request: prost::Message + Default + Clone + Send + 'static;
    type Response: prost::Message + Default + Clone + Send + 'static;
    /// The answer to a request that is not read, and what a held answer becomes when the
    /// turn's commit fails; `None`: no answer at all.
    fn refused() -> Option<Self::Response>;
    fn behaviour(
        swarm: &mut Swarm<Behaviour>,
    ) -> &mut request_response::Behaviour<Codec<Self::Request, Self::Response>>;
    /// The requests this node sent, by id: to whom, about which flow.
    fn sent(rt: &mut Runtime) -> &mut HashMap<OutboundRequestId, (NodeId, String)>;
    fn held(held: &mut Held) -> &mut Vec<(ResponseChannel<Self::Response>, Self::Response)>;
    fn answer(rt: &mut Runtime, peer: &NodeId, request: Self::Request) -> Self::Response;
    fn response(rt: &mut Runtime, peer: &NodeId, flow: &str, response: Self::Response);
    fn failed(rt: &mut Runtime, peer: &NodeId, flow: &str, error: OutboundFailure);
}

/// Automerge sync of one flow.
pub(super) struct Sync;

/// A join by invite ticket.
pub(super) struct Join;

/// The answer that a flow is unavailable here.
pub(super) fn unavailable() -> SyncResponse {
    SyncResponse {
        result: Some(wire::sync_response::Result::Unavailable(true)),
    }
}

impl Protocol for Sync {
    type Request = SyncRequest;
    type Response = SyncResponse;
    fn refused() -> Option<SyncResponse> {
        Some(unavailable())
    }
    fn behaviour(
        swarm: &mut Swarm<Behaviour>,
    ) -> &mut request_response::Behaviour<Codec<SyncRequest, SyncResponse>> {
        &mut swarm.behaviour_mut().sync
    }
    fn sent(rt: &mut Runtime) -> &mut HashMap<OutboundRequestId, (NodeId, String)> {
        &mut rt.sync_requests
    }
    fn held(held: &mut Held) -> &mut Vec<(ResponseChannel<SyncResponse>, SyncResponse)> {
        &mut held.sync
    }
    fn answer(rt: &mut Runtime, peer: &NodeId, request: SyncRequest) -> SyncResponse {
        rt.engine.handle_sync_request(peer, request)
    }
    fn response(rt: &mut Runtime, peer: &NodeId, flow: &str, response: SyncResponse) {
        rt.engine.handle_sync_response(peer, flow, response);
    }
    fn failed(rt: &mut Runtime, peer: &NodeId, flow: &str, error: OutboundFailure) {
        tracing::debug!(target: "node", %peer, %flow, "sync request failed: {error}");
        rt.engine.sync_failed(peer, flow);
    }
}

impl Protocol for Join {
    type Request = JoinRequest;
    type Response = JoinResponse;
    fn refused() -> Option<JoinResponse> {
        None
    }
    fn behaviour(
        swarm: &mut Swarm<Behaviour>,
    ) -> &mut request_response::Behaviour<Codec<JoinRequest, JoinResponse>> {
        &mut swarm.behaviour_mut().join
    }
    fn sent(rt: &mut Runtime) -> &mut HashMap<OutboundRequestId, (NodeId, String)> {
        &mut rt.join_requests
    }
    fn held(held: &mut Held) -> &mut Vec<(ResponseChannel<JoinResponse>, JoinResponse)> {
        &mut held.join
    }
    fn answer(rt: &mut Runtime, peer: &NodeId, request: JoinRequest) -> JoinResponse {
        let response = rt.engine.handle_join_request(peer, request);
        rt.refresh_members();
        response
    }
    fn response(rt: &mut Runtime, peer: &NodeId, flow: &str, response: JoinResponse) {
        rt.engine.handle_join_response(peer, flow, response);
    }
    fn failed(rt: &mut Runtime, peer: &NodeId, flow: &str, error: OutboundFailure) {
        rt.engine.join_failed(peer, flow, error.to_string());
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
                        if let Some((node, flow)) = P::sent(self).remove(&request_id) {
                            P::response(self, &node, &flow, response);
                        }
                    }
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((node, flow)) = P::sent(self).remove(&request_id) {
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
            P::held(&mut self.held).push((channel, response));
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

    /// An answer to `peer` went out (or could not): block it now if it was penalized.
    pub(super) fn answered(&mut self, peer: PeerId) {
        if self.peers.answered(&peer) {
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        }
    }

    /// Sends the responses a turn held, or, if its commit `failed`, what a refused request gets.
    pub(super) fn send_held<P: Protocol>(
        &mut self,
        held: Vec<(ResponseChannel<P::Response>, P::Response)>,
        failed: bool,
    ) {
        for (channel, response) in held {
            let response = if failed { P::refused() } else { Some(response) };
            if let Some(response) = response {
                let _ = P::behaviour(&mut self.swarm).send_response(channel, response);
            }
        }
    }
}
