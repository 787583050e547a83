//! The control socket: a Unix socket serving `POST /v1/call` (HTTP/1.1, axum), whose calls
//! the runtime executes in its turns, and the calls it answers itself.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::post;
use libp2p::multiaddr::Protocol;
use libp2p::PeerId;
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::{now_secs, peer_of, Pending, Runtime, JOIN_TIMEOUT};
use crate::api::{self, Call, PeerInfo, Reply, Status};
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::store::{Peers, Storage};
use crate::web::http::{self, Calls};
use crate::web::Change;
use crate::wire::InviteTicket;

/// Most control connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;

/// Binds the control socket at `path`, readable and writable by this user only.
pub(super) fn bind(path: &Path) -> Result<UnixListener> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(io_error)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_error)?;
    Ok(listener)
}

/// Serves control connections, handing their calls to the runtime over `calls`, until `stop`
/// turns true. The socket's mode (0600) is its authentication.
pub(super) async fn serve_api(listener: UnixListener, calls: Calls, mut stop: watch::Receiver<bool>) {
    let app = axum::Router::new()
        .route("/v1/call", post(http::call))
        .fallback(|| async { http::failure(StatusCode::NOT_FOUND, "unknown endpoint") })
        .layer(DefaultBodyLimit::max(api::MAX_BODY))
        .with_state(calls);
    let served = axum::serve(http::Bounded::new(listener, MAX_CONNECTIONS, None), app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = served {
        tracing::warn!(target: "node", "the control socket's server stopped: {e}");
    }
}

impl Runtime {
    pub(super) fn on_call(&mut self, call: Call, reply: Pending) {
        let result = match call {
            Call::Status => Ok(Reply::Status(self.status())),
            Call::Peers => Ok(Reply::Peers(self.peers())),
            Call::Stats => Ok(Reply::Stats(Box::new(self.engine.stats.clone()))),
            Call::TestPartition { peers } => self.test_partition(&peers),
            Call::TestHeal => self.test_heal(),
            Call::Join { ticket } => {
                self.start_join(&ticket, reply);
                return;
            }
            Call::FlowAccept { flow } => self.engine.accept(&flow).map(|id| {
                self.refresh_members();
                self.refresh_topics();
                self.held.changes.push(Change::Flows);
                self.held.changes.push(Change::Flow(id));
                Reply::Accepted { id: id.to_string() }
            }),
            Call::FlowDecline { flow } => self.engine.decline(&flow).map(|id| {
                self.held.changes.push(Change::Flows);
                Reply::Declined { id: id.to_string() }
            }),
            Call::FlowShow { flow } => api::execute(self.engine.repo(), Call::FlowShow { flow })
                .map(|r| match r {
                    Reply::Flow(mut view) => {
                        if let Ok(flow) = view.flow.id.parse() {
                            view.sync = self.engine.member_sync(&flow);
                        }
                        for m in &mut view.sync {
                            m.link = m
                                .node_id
                                .parse::<NodeId>()
                                .ok()
                                .and_then(|n| peer_of(&n))
                                .map(|p| self.peers.link(&p))
                                .unwrap_or_default();
                        }
                        Reply::Flow(view)
                    }
                    other => other,
                }),
            other => self.execute(other),
        };
        self.held.replies.push((reply, result));
    }

    /// Executes a call on the store, and tells the engine of the local change it made.
    fn execute(&mut self, call: Call) -> Result<Reply> {
        let touched = matches!(&call, Call::Edit { .. } | Call::Invite { .. });
        let result = api::execute(self.engine.repo(), call);
        match &result {
            Ok(Reply::Edited(e)) if touched => {
                self.engine.local_change(&e.flow);
                self.refresh_members();
                self.held.changes.push(Change::Flow(e.flow));
            }
            Ok(Reply::Created { id }) => {
                let id = id.parse().map_err(Error::Invalid)?;
                self.refresh_topics();
                self.use_dht(&[id], false);
                self.held.changes.push(Change::Flows);
            }
            Ok(Reply::Invited(i)) if touched => {
                self.engine.local_change(&i.edit.flow);
                self.held.changes.push(Change::Flow(i.edit.flow));
            }
            _ => {}
        }
        result
    }

    fn status(&mut self) -> Status {
        Status {
            running: true,
            node_id: self.engine.node_id().to_string(),
            name: self.engine.repo().identity().name().to_string(),
            listen: self
                .listen
                .iter()
                .map(|a| format!("{a}/p2p/{}", self.swarm.local_peer_id()))
                .collect(),
            peers: self.swarm.connected_peers().count(),
            flows: self.engine.repo().flow_ids().map(|f| f.len()).unwrap_or(0),
            web: self.web.as_ref().and_then(|l| l.url().ok()),
            setup: false,
            reachability: self.reach.reachability(),
            external: self.reach.external().map(|a| a.to_string()).collect(),
            relays: self
                .reach
                .relays()
                .iter()
                .map(|p| p.to_base58())
                .collect(),
        }
    }

    fn start_join(&mut self, ticket: &str, reply: Pending) {
        let ticket = match InviteTicket::decode(ticket) {
            Ok(t) => t,
            Err(e) => {
                let _ = reply.send(Err(Error::Invalid(e.to_string())));
                return;
            }
        };
        let name = self.engine.repo().identity().name().to_string();
        match self.engine.start_join(&ticket, &name) {
            Ok(via) => {
                for addr in &ticket.addrs {
                    // A circuit address names the relay too: only the last `/p2p` goes.
                    let mut base = addr.clone();
                    if let Some(Protocol::P2p(peer)) = base.pop() {
                        if !base.is_empty() {
                            self.learn_addr(peer, base);
                        }
                    }
                }
                for node in via {
                    if let Some(p) = peer_of(&node) {
                        self.peers.clear_backoff(&p);
                    }
                }
                self.pending_joins
                    .entry(ticket.flow)
                    .or_default()
                    .push((reply, Instant::now() + JOIN_TIMEOUT));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn peers(&mut self) -> Vec<PeerInfo> {
        let names = self.member_names();
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let book = self
            .engine
            .repo()
            .store()
            .reader()
            .peers()
            .unwrap_or_default();
        let mut out: Vec<PeerInfo> = connected
            .iter()
            .map(|p| PeerInfo {
                node_id: p.to_base58(),
                name: names.get(&p.to_base58()).cloned().unwrap_or_default(),
                addrs: self.peers.addr_strings(p),
                connected: true,
                link: self.peers.link(p),
                last_seen: Some(now_secs()),
            })
            .collect();
        for row in book {
            if !out.iter().any(|p| p.node_id == row.node) {
                out.push(PeerInfo {
                    name: names.get(&row.node).cloned().unwrap_or_default(),
                    node_id: row.node,
                    addrs: row.addrs,
                    connected: false,
                    link: crate::api::Link::Absent,
                    last_seen: Some(row.last_seen),
                });
            }
        }
        out
    }

    fn member_names(&mut self) -> HashMap<String, String> {
        let mut names = HashMap::new();
        let repo = self.engine.repo();
        // From each flow's summary: no document is loaded for it.
        for flow in repo.flow_ids().unwrap_or_default() {
            if let Ok(Some(summary)) = repo.summary(&flow) {
                names.extend(summary.names.iter().cloned());
            }
        }
        names
    }
}
