//! The control API: one [`Handle`] trait, two transports.
//!
//! Every CLI command is a [`Call`] answered by a [`Reply`]. When a node runs for the data dir,
//! calls go to it as HTTP/JSON over the Unix socket `node.sock` in the data dir (mode 0600);
//! when none runs, [`Local`] answers them straight from the store. [`execute`] is the one
//! implementation of every call that needs no network; the node uses it too.
//!
//! A node holds `node.lock` exclusively while it runs; a local handle holds it shared, so a
//! node cannot start while a local command is writing, and no local command writes while a node
//! runs.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::flow::{Edit, Role};
use crate::identity::hex;
use crate::repo::{EditOutcome, FlowView, Invitation, Listed, LogEntry, Repo, VerifyReport};
use crate::store::{Peers, Storage};

/// File names in the data dir.
pub const SOCKET_FILE: &str = "node.sock";
pub const LOCK_FILE: &str = "node.lock";
/// Taken for a moment before [`LOCK_FILE`]: shared by a command on its way in, exclusively by a
/// starting node. Without it, commands whose shared locks overlap could keep a starting node
/// out for good (seen under six concurrent CLI writers).
pub const GATE_FILE: &str = "node.gate";

/// Largest request or response body on the control socket.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    Id,
    Status,
    Peers,
    FlowNew {
        title: String,
        need: String,
        role: Role,
    },
    FlowList,
    FlowShow {
        flow: String,
    },
    FlowLog {
        flow: String,
    },
    FlowVerify {
        flow: String,
    },
    FlowExport {
        flow: String,
        format: ExportFormat,
    },
    Edit {
        flow: String,
        edit: Edit,
    },
    Invite {
        flow: String,
        role: Role,
        expires_in: i64,
        uses: i64,
    },
    Join {
        ticket: String,
    },
    /// Accept a flow offered to this node (it then syncs like any other).
    FlowAccept {
        flow: String,
    },
    /// Decline a flow offered to this node (its content is deleted; further offers of it by
    /// its members are turned away).
    FlowDecline {
        flow: String,
    },
    /// Test-only fault injection (the node must run with `COFLOW_TEST_FAULTS=1`): cut this
    /// node off from the given peers — close connections and refuse new ones — until healed.
    TestPartition {
        peers: Vec<String>,
    },
    /// Test-only: undo every `TestPartition`.
    TestHeal,
    /// The sync engine's counters and recent arrivals (tests and benchmarks).
    Stats,
    /// Make this node's key with the given name: answered only by a node started (with its
    /// page) on a data dir that has no key yet (see [`Status::setup`]).
    Init {
        name: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub running: bool,
    pub node_id: String,
    pub name: String,
    pub listen: Vec<String>,
    pub peers: usize,
    pub flows: usize,
    /// The page's login URL, while the node serves it.
    #[serde(default)]
    pub web: Option<String>,
    /// The node runs without a key yet: its page asks for a name (`Call::Init`).
    #[serde(default)]
    pub setup: bool,
    /// Whether other nodes can dial this one.
    #[serde(default = "unknown")]
    pub reachability: crate::node::Reachability,
    /// Addresses of this node confirmed reachable from outside.
    #[serde(default)]
    pub external: Vec<String>,
    /// Relays (node ids) this node is reachable through: they hold a reservation for it.
    #[serde(default)]
    pub relays: Vec<String>,
}

fn unknown() -> crate::node::Reachability {
    crate::node::Reachability::Unknown
}

/// What `flow export` writes: the flow as `flow show --json` prints it (`json`), the document
/// as it stands in Automerge's binary format (`automerge`), or a process diagram (Graphviz
/// `dot`, `mermaid`). The control API and the CLI name them in lower case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Json,
    Automerge,
    Dot,
    Mermaid,
}

/// How this node is connected to a peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// A connection of their own (a hole punched through NATs counts).
    Direct,
    /// Only through a relay (end-to-end encrypted; the relay passes ciphertext).
    Relayed,
    /// Not connected.
    #[default]
    Absent,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerInfo {
    pub node_id: String,
    pub name: String,
    pub addrs: Vec<String>,
    pub connected: bool,
    #[serde(default)]
    pub link: Link,
    pub last_seen: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    Id { node_id: String, name: String },
    Status(Status),
    Peers(Vec<PeerInfo>),
    Created { id: String },
    Flows(Vec<Listed>),
    Flow(Box<FlowView>),
    Log(Vec<LogEntry>),
    Verify(VerifyReport),
    Export { hex: String },
    Edited(EditOutcome),
    Invited(Invitation),
    Joined { id: String },
    Accepted { id: String },
    Declined { id: String },
    Stats(Box<crate::sync::Stats>),
    Done,
}

/// Answers calls: the running node, or the store directly.
pub trait Handle {
    fn call(&mut self, call: Call) -> Result<Reply>;
}

/// Runs a call that needs no network against the repository.
pub fn execute(repo: &mut Repo, call: Call) -> Result<Reply> {
    Ok(match call {
        Call::Id => Reply::Id {
            node_id: repo.identity().node_id().to_string(),
            name: repo.identity().name().to_string(),
        },
        Call::FlowNew { title, need, role } => Reply::Created {
            id: repo.create_flow(&title, &need, role)?.to_string(),
        },
        Call::FlowList => Reply::Flows(repo.list()?),
        Call::FlowShow { flow } => Reply::Flow(Box::new(repo.show(&flow)?)),
        Call::FlowLog { flow } => Reply::Log(repo.log(&flow)?),
        Call::FlowVerify { flow } => Reply::Verify(repo.verify(&flow)?),
        Call::FlowExport { flow, format } => {
            let view = repo.show(&flow)?;
            let bytes = match format {
                ExportFormat::Json => {
                    let mut v = serde_json::to_vec_pretty(&view).expect("serializes");
                    v.push(b'\n');
                    v
                }
                ExportFormat::Automerge => repo.save_standing(&view.flow.id.parse().map_err(Error::Invalid)?)?,
                ExportFormat::Dot => crate::export::dot(&view.flow).into_bytes(),
                ExportFormat::Mermaid => crate::export::mermaid(&view.flow).into_bytes(),
            };
            Reply::Export { hex: hex(&bytes) }
        }
        Call::Edit { flow, edit } => Reply::Edited(repo.edit(&flow, &edit)?),
        Call::FlowAccept { flow } => Reply::Accepted {
            id: repo.accept(&flow)?.to_string(),
        },
        Call::FlowDecline { flow } => Reply::Declined {
            id: repo.decline(&flow)?.to_string(),
        },
        Call::Invite {
            flow,
            role,
            expires_in,
            uses,
        } => Reply::Invited(repo.invite(&flow, role, expires_in, uses)?),
        Call::Init { .. } => {
            return Err(Error::Invalid(
                "this node already has its key and name".into(),
            ))
        }
        Call::Status
        | Call::Peers
        | Call::Stats
        | Call::Join { .. }
        | Call::TestPartition { .. }
        | Call::TestHeal => {
            return Err(Error::Invalid(
                "that needs the network; this call is answered by the node".into(),
            ))
        }
    })
}

/// The store, used directly while no node runs.
pub struct Local {
    repo: Repo,
    _lock: File,
}

impl Handle for Local {
    fn call(&mut self, call: Call) -> Result<Reply> {
        match call {
            Call::Status => Ok(Reply::Status(Status {
                running: false,
                node_id: self.repo.identity().node_id().to_string(),
                name: self.repo.identity().name().to_string(),
                listen: Vec::new(),
                peers: 0,
                flows: self.repo.flow_ids()?.len(),
                web: None,
                setup: false,
                reachability: crate::node::Reachability::Unknown,
                external: Vec::new(),
                relays: Vec::new(),
            })),
            Call::Peers => {
                let rows = self.repo.store().reader().peers()?;
                Ok(Reply::Peers(
                    rows.into_iter()
                        .map(|p| PeerInfo {
                            name: String::new(),
                            node_id: p.node,
                            addrs: p.addrs,
                            connected: false,
                            link: Link::Absent,
                            last_seen: Some(p.last_seen),
                        })
                        .collect(),
                ))
            }
            Call::Join { .. } => Err(Error::Invalid(
                "joining needs the network: start the node first (`coflow node`)".into(),
            )),
            other => execute(&mut self.repo, other),
        }
    }
}

/// The running node, over its control socket.
pub struct Remote {
    socket: PathBuf,
}

impl Handle for Remote {
    fn call(&mut self, call: Call) -> Result<Reply> {
        let body = serde_json::to_vec(&call).expect("calls serialize");
        let timeout = match call {
            Call::Join { .. } => Duration::from_secs(90),
            _ => Duration::from_secs(60),
        };
        let (status, body) = post(&self.socket, body, timeout)
            .map_err(|e| Error::Invalid(format!("cannot talk to the node: {e}")))?;
        if status == 200 {
            serde_json::from_slice(&body)
                .map_err(|e| Error::Invalid(format!("the node sent a bad answer: {e}")))
        } else {
            #[derive(Deserialize)]
            struct Failure {
                error: String,
            }
            let msg = serde_json::from_slice::<Failure>(&body)
                .map(|f| f.error)
                .unwrap_or_else(|_| format!("the node answered with status {status}"));
            Err(Error::Remote(msg))
        }
    }
}

/// One `POST /v1/call` over the Unix socket (hyper, on a runtime of its own: the CLI has none,
/// and a caller inside one gets a thread of its own); the status code and the body.
fn post(socket: &Path, body: Vec<u8>, timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                tokio::time::timeout(timeout, exchange(socket, body))
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("no answer in time")))
            })
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(run).join().expect("the call's thread does not panic"))
    } else {
        run()
    }
}

async fn exchange(socket: &Path, body: Vec<u8>) -> std::io::Result<(u16, Vec<u8>)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::post("/v1/call")
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(std::io::Error::other)?;
    let response = tx.send_request(request).await.map_err(std::io::Error::other)?;
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .to_bytes()
        .to_vec();
    drop(tx);
    conn.abort();
    Ok((status, body))
}

/// The data dir's lock file (a node holds it exclusively, a local command shared).
pub fn lock_file(home: &Path) -> Result<File> {
    open_lock(home, LOCK_FILE)
}

/// The gate in front of [`lock_file`] (see [`GATE_FILE`]).
pub fn gate_file(home: &Path) -> Result<File> {
    open_lock(home, GATE_FILE)
}

fn open_lock(home: &Path, name: &str) -> Result<File> {
    let path = home.join(name);
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Io { path, source })
}

/// Opens a handle for `home`: the running node if there is one, else the store.
pub fn open(home: &Path) -> Result<Box<dyn Handle>> {
    let socket = home.join(SOCKET_FILE);
    for attempt in 0..50 {
        if home.join(crate::identity::KEY_FILE).exists() {
            // Through the gate: a starting node closes it, so commands arriving meanwhile wait
            // and then find the node; commands already through finish first.
            let gate = gate_file(home)?;
            if gate.try_lock_shared().is_ok() {
                let lock = lock_file(home)?;
                if lock.try_lock_shared().is_ok() {
                    drop(gate);
                    let repo = Repo::open(home)?;
                    return Ok(Box::new(Local { repo, _lock: lock }));
                }
            }
        } else {
            // No key: let Repo::open give the clear "run coflow init" error.
            Repo::open(home)?;
        }
        // A node holds the lock: talk to it (it may still be opening its socket).
        if UnixStream::connect(&socket).is_ok() {
            return Ok(Box::new(Remote { socket }));
        }
        if attempt == 49 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Invalid(
        "a node holds this data dir but its control socket does not answer".into(),
    ))
}
