//! Several nodes on one machine, for the demo, the examples and benchmarks.
//!
//! A [`Member`] is anything that answers control API calls for one participant: a node running
//! as its own process ([`ProcessNode`], what the demo uses), or a node running as a task in this
//! process ([`InProcessNode`], what the examples use to start dozens cheaply). Either way the
//! nodes talk real libp2p over 127.0.0.1 and each has its own data dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::{self, Call, Reply};
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::repo::FlowView;

#[cfg(feature = "testkit")]
pub mod nat;

#[cfg(feature = "testkit")]
/// Logs to stderr as `COFLOW_LOG` says (e.g. `COFLOW_LOG=sync=debug`); nothing if unset.
pub fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("COFLOW_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// How long a node may take to start answering.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// One participant's node, driven through the control API.
pub trait Member {
    fn name(&self) -> &str;
    fn node_id(&self) -> &str;
    fn home(&self) -> &Path;

    /// One control API call (through the node's socket).
    fn call(&self, call: Call) -> Result<Reply> {
        api::open(self.home())?.call(call)
    }

    /// Makes an edit; returns the id of what it created, if anything.
    fn edit(&self, flow: &str, edit: crate::flow::Edit) -> Result<Option<String>> {
        match self.call(Call::Edit {
            flow: flow.to_string(),
            edit,
        })? {
            Reply::Edited(e) => Ok(e.id),
            other => Err(unexpected(other)),
        }
    }

    fn show(&self, flow: &str) -> Result<FlowView> {
        match self.call(Call::FlowShow {
            flow: flow.to_string(),
        })? {
            Reply::Flow(v) => Ok(*v),
            other => Err(unexpected(other)),
        }
    }

    #[cfg(feature = "testkit")]
    /// Waits until `flow` is offered to this node (a member added it by node id), then accepts
    /// it, as its user would with `coflow flow accept`.
    fn accept_offer(&self, flow: &str, patience: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let offered = match self.call(Call::FlowList)? {
                Reply::Flows(rows) => rows.iter().any(|l| l.pending && l.row.id.as_str() == flow),
                other => return Err(unexpected(other)),
            };
            if offered {
                return match self.call(Call::FlowAccept {
                    flow: flow.to_string(),
                })? {
                    Reply::Accepted { .. } => Ok(()),
                    other => Err(unexpected(other)),
                };
            }
            if start.elapsed() > patience {
                return Err(Error::Invalid(format!(
                    "flow {flow} was not offered to {} in time",
                    self.name()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The flow's heads here (sorted), or nothing if this node does not hold it.
    fn heads(&self, flow: &str) -> Vec<String> {
        let mut h = self.show(flow).map(|v| v.heads).unwrap_or_default();
        h.sort();
        h
    }

    #[cfg(feature = "testkit")]
    /// The listen address to give others (with /p2p/).
    fn addr(&self) -> Result<String> {
        match self.call(Call::Status)? {
            Reply::Status(s) => s
                .listen
                .into_iter()
                .next()
                .ok_or_else(|| Error::Invalid(format!("{} listens nowhere", self.name()))),
            other => Err(unexpected(other)),
        }
    }
}

pub fn unexpected(reply: Reply) -> Error {
    Error::Invalid(format!("unexpected reply from the node: {reply:?}"))
}

/// Waits until all members hold the flow with the same heads (so every change `from` made has
/// reached every other member, along with anything made concurrently); returns how long it took.
pub fn spread(
    members: &[&dyn Member],
    from: &dyn Member,
    flow: &str,
    patience: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let heads: Vec<Vec<String>> = members.iter().map(|m| m.heads(flow)).collect();
        if !heads[0].is_empty() && heads.iter().all(|h| h == &heads[0]) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > patience {
            let states: Vec<String> = members
                .iter()
                .zip(&heads)
                .map(|(m, h)| {
                    format!(
                        "{}: {:?}",
                        m.name(),
                        h.iter().map(|h| &h[..8]).collect::<Vec<_>>()
                    )
                })
                .collect();
            return Err(Error::Invalid(format!(
                "{}'s changes did not reach everyone in time (heads: {})",
                from.name(),
                states.join("; ")
            )));
        }
        // Asking every node for its flow is not free: poll gently when there are many.
        std::thread::sleep(Duration::from_millis(2 * members.len() as u64));
    }
}

#[cfg(feature = "testkit")]
/// A node's sync counters and recent arrivals.
pub fn stats(member: &dyn Member) -> Result<crate::sync::Stats> {
    match member.call(Call::Stats)? {
        Reply::Stats(s) => Ok(*s),
        other => Err(unexpected(other)),
    }
}

#[cfg(feature = "testkit")]
/// How long changes took to reach the other members: for each write (author's node id, change
/// hash, Unix ms when the author's node acknowledged it) and each other member, the delay until
/// the change was durable there, read from the members' recent arrivals. Sorted, in ms. A
/// change a member did not record (beyond its arrival log) is left out, so callers compare the
/// number of delays with what they expect.
pub fn arrival_delays(
    members: &[&dyn Member],
    writes: &[(String, String, i64)],
) -> Result<Vec<i64>> {
    let mut delays = Vec::new();
    for m in members {
        let arrivals: std::collections::HashMap<String, i64> = stats(*m)?
            .arrivals
            .into_iter()
            .map(|a| (a.hash, a.at_ms))
            .collect();
        for (author, hash, at) in writes {
            if author == m.node_id() {
                continue;
            }
            if let Some(arrived) = arrivals.get(hash) {
                delays.push((arrived - at).max(0));
            }
        }
    }
    delays.sort_unstable();
    Ok(delays)
}

#[cfg(feature = "testkit")]
/// The `p`-th percentile (0..=100) of sorted values (nearest rank); 0 for none.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Waits until `member`'s node answers with at least one listen address.
fn wait_until_up(member: &dyn Member) -> Result<()> {
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        if let Ok(Reply::Status(s)) = member.call(Call::Status) {
            if s.running && !s.listen.is_empty() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "{}'s node did not start",
                member.name()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn create_identity(home: &Path, name: &str) -> Result<String> {
    let id = match Identity::load(home) {
        Ok(id) => id,
        Err(_) => crate::repo::Repo::init(home, Identity::fresh(name)?)?
            .identity()
            .clone(),
    };
    Ok(id.node_id().to_string())
}

/// A node running as its own `coflow node` process.
pub struct ProcessNode {
    name: String,
    home: PathBuf,
    node_id: String,
    child: Option<Child>,
}

impl ProcessNode {
    /// Creates the data dir's key if needed and starts `exe node` on 127.0.0.1.
    pub fn start(exe: &Path, home: &Path, name: &str) -> Result<ProcessNode> {
        let mut node = Command::new(exe);
        node.args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]);
        ProcessNode::spawn(node, home, name)
    }

    /// Creates the data dir's key if needed, runs `node` (a `coflow node` command line with
    /// its options, `--home` left out: it is added) and waits until the node answers. The
    /// command may be anything that ends up running the node, such as the node in another
    /// network namespace (`nat::netns_command`, with the `testkit` feature).
    pub fn spawn(mut node: Command, home: &Path, name: &str) -> Result<ProcessNode> {
        let node_id = create_identity(home, name)?;
        let log_path = home.join("node.log");
        let io = |source| Error::Io {
            path: log_path.clone(),
            source,
        };
        let log = std::fs::File::create(&log_path).map_err(io)?;
        let err = log.try_clone().map_err(io)?;
        let child = node
            .arg("--home")
            .arg(home)
            .env_remove("COFLOW_HOME")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Invalid(format!("cannot start a node: {e}")))?;
        let node = ProcessNode {
            name: name.to_string(),
            home: home.to_path_buf(),
            node_id,
            child: Some(child),
        };
        wait_until_up(&node)?;
        Ok(node)
    }

    /// Stops the node with SIGTERM (SIGKILL if it does not exit within ten seconds).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(None) = child.try_wait() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Member for ProcessNode {
    fn name(&self) -> &str {
        &self.name
    }
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn home(&self) -> &Path {
        &self.home
    }
}

#[cfg(feature = "testkit")]
/// A node running as a task on a tokio runtime in this process.
pub struct InProcessNode {
    name: String,
    home: PathBuf,
    node_id: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    runtime: tokio::runtime::Handle,
}

#[cfg(feature = "testkit")]
impl InProcessNode {
    /// Creates the data dir's key if needed and starts a node on `runtime`, listening on
    /// 127.0.0.1 and dialing `bootstrap`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        home: &Path,
        name: &str,
        bootstrap: Vec<libp2p::Multiaddr>,
    ) -> Result<InProcessNode> {
        let node_id = create_identity(home, name)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let opts = crate::node::NodeOptions {
            home: home.to_path_buf(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
            bootstrap,
            mdns: false,
            upnp: false,
            external: Vec::new(),
            limits: crate::net::Limits::default(),
            relay: crate::net::RelayLimits::default(),
            web: None,
            web_fall_back: false,
            print_url: false,
            open_page: false,
        };
        let task = runtime.spawn(crate::node::run(opts, async {
            let _ = stopped.await;
        }));
        let node = InProcessNode {
            name: name.to_string(),
            home: home.to_path_buf(),
            node_id,
            stop: Some(stop),
            task: Some(task),
            runtime: runtime.clone(),
        };
        wait_until_up(&node)?;
        Ok(node)
    }

    /// Stops the node and waits until it has shut down.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = self.runtime.block_on(task);
        }
    }
}

#[cfg(feature = "testkit")]
impl Drop for InProcessNode {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(feature = "testkit")]
impl Member for InProcessNode {
    fn name(&self) -> &str {
        &self.name
    }
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn home(&self) -> &Path {
        &self.home
    }
}
