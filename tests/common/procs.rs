//! Real `coflow` processes for end-to-end tests: a data dir per participant, nodes started and
//! killed as separate processes (on 127.0.0.1, or inside a network namespace of a NAT world,
//! `coflow::cluster::nat`), and the CLI contract to drive them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for the network to do something before it fails (a liveness bound,
/// not a performance assertion).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How long to wait for convergence: `PATIENCE`, or `COFLOW_TEST_PATIENCE_SECS` if set.
fn convergence_patience() -> Duration {
    std::env::var("COFLOW_TEST_PATIENCE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(PATIENCE)
}

pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("coflow")
}

pub struct Participant {
    pub name: String,
    pub home: PathBuf,
    node: Option<Child>,
    starts: u32,
    port: Option<u16>,
    listen: Vec<String>,
    /// Extra arguments for `coflow node` (such as `--web 127.0.0.1:0`).
    pub node_args: Vec<String>,
    /// The network namespace the node runs in (`None`: this process's). Only the node: CLI
    /// calls stay here and reach it over its control socket, a file in the data dir, which
    /// works across network namespaces.
    pub netns: Option<String>,
}

impl Participant {
    /// A data dir with a key derived from the name (COFLOW_TEST_KEY_SEED is test-only).
    pub fn new(root: &std::path::Path, name: &str) -> Participant {
        let p = Participant::without_key(root, name);
        let out = p
            .command()
            .env("COFLOW_TEST_KEY_SEED", format!("e2e-{name}"))
            .args(["init", "--name", name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    /// A data dir with no key yet: the node it runs starts in setup mode (`coflow up`).
    pub fn without_key(root: &std::path::Path, name: &str) -> Participant {
        let home = root.join(name.to_lowercase());
        std::fs::create_dir_all(&home).unwrap();
        Participant {
            name: name.to_string(),
            home,
            node: None,
            starts: 0,
            port: None,
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            node_args: Vec::new(),
            netns: None,
        }
    }

    /// This participant's node to run in network namespace `netns` (of a NAT world),
    /// listening on `listen` there, with no page (nobody browses inside a namespace).
    pub fn in_netns(mut self, netns: &str, listen: &[String]) -> Participant {
        self.netns = Some(netns.to_string());
        self.listen = listen.to_vec();
        self.node_args.push("--no-web".into());
        self
    }

    pub fn command(&self) -> Command {
        self.command_in(None)
    }

    /// `coflow --home HOME`, run inside network namespace `netns` if one is given.
    fn command_in(&self, netns: Option<&str>) -> Command {
        let mut c = match netns {
            Some(ns) => coflow::cluster::nat::netns_command(ns, bin()),
            None => Command::new(bin()),
        };
        c.env_remove("COFLOW_TEST_KEY_SEED")
            .env_remove("COFLOW_HOME")
            .arg("--home")
            .arg(&self.home)
            .stdin(Stdio::null());
        c
    }

    /// Runs a CLI command; returns (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Runs a command that must succeed and returns its JSON output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let (ok, out, err) = self.run(&full);
        assert!(ok, "{} {args:?} failed: {err}", self.name);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: no JSON ({e}): {out}"))
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(
            !ok,
            "{} {args:?} should have failed, printed {out}",
            self.name
        );
        err
    }

    pub fn id(&self) -> String {
        self.json(&["id"])["node_id"].as_str().unwrap().to_string()
    }

    /// Starts the node (listening on loopback only) and waits until it answers.
    pub fn start(&mut self, bootstrap: &[String]) {
        self.start_with(bootstrap, &[]);
    }

    /// Restarts the node on the loopback TCP port it had, so peers that remember it find it.
    pub fn restart_same_port(&mut self, env: &[(&str, &str)]) {
        let port = self.port.expect("started before");
        self.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}")];
        self.start_with(&[], env);
    }

    /// Starts the node listening on `addrs` instead of one loopback port.
    pub fn start_on(&mut self, addrs: &[String]) {
        self.listen = addrs.to_vec();
        self.start_with(&[], &[]);
    }

    /// Like `start`, with extra environment variables for the node process.
    pub fn start_with(&mut self, bootstrap: &[String], env: &[(&str, &str)]) {
        assert!(self.node.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let log =
            std::fs::File::create(self.home.join(format!("node-{}.log", self.starts))).unwrap();
        let mut c = self.command_in(self.netns.as_deref());
        c.args(["node", "--no-mdns"]);
        c.args(&self.node_args);
        for l in &self.listen {
            c.args(["--listen", l]);
        }
        for b in bootstrap {
            c.args(["--bootstrap", b]);
        }
        c.envs(env.iter().copied());
        c.env("COFLOW_LOG", "info,libp2p=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.node = Some(c.spawn().unwrap());
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (ok, out, _) = self.run(&["--json", "status"]);
            if ok {
                let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
                if v["running"] == true && !v["listen"].as_array().unwrap().is_empty() {
                    self.port = tcp_port(&v["listen"]);
                    return;
                }
            }
            if Instant::now() > deadline {
                let (_, _, err) = self.run(&["--json", "status"]);
                panic!("{}'s node did not start: {err}\n{}", self.name, self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `coflow up ARGS` (the node in the foreground with its web page, in setup mode while
    /// the data dir has no key) and waits for the page's login URL in `web.url`; returns it.
    pub fn start_up(&mut self, args: &[&str]) -> String {
        assert!(self.node.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let log =
            std::fs::File::create(self.home.join(format!("node-{}.log", self.starts))).unwrap();
        let url_file = self.home.join("web.url");
        let _ = std::fs::remove_file(&url_file);
        let mut c = self.command();
        c.arg("up").args(args);
        c.env("COFLOW_LOG", "info,libp2p=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.node = Some(c.spawn().unwrap());
        let deadline = Instant::now() + PATIENCE;
        let mut last = String::new();
        loop {
            // The same whole line on two reads in a row: not a file caught half written.
            let url = std::fs::read_to_string(&url_file).unwrap_or_default();
            let url = url.trim().to_string();
            if url.starts_with("http") && url == last {
                return url;
            }
            last = url;
            if let Some(status) = self.node.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{}'s `coflow up` exited ({status}):\n{}",
                    self.name,
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}'s `coflow up` wrote no web.url:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The running node's web page address, as `coflow --json status` reports it.
    pub fn web_url(&self) -> String {
        let v = self.json(&["status"]);
        v["web"]
            .as_str()
            .unwrap_or_else(|| panic!("{}'s status has no web page: {v}", self.name))
            .to_string()
    }

    /// Runs `coflow node` with `args`, which must make it exit with an error at start; returns
    /// its stderr. A node still running after `PATIENCE` fails the test.
    pub fn node_refuses(&self, args: &[&str]) -> String {
        let err_path = self.home.join("refused-node.stderr");
        let err_file = std::fs::File::create(&err_path).unwrap();
        let mut child = self
            .command()
            .arg("node")
            .args(args)
            .env("COFLOW_LOG", "info,libp2p=warn")
            .stdout(Stdio::null())
            .stderr(err_file)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}'s node {args:?} kept running; it printed:\n{}",
                    self.name,
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = std::fs::read_to_string(&err_path).unwrap();
        std::fs::remove_file(&err_path).unwrap();
        assert_eq!(
            status.code(),
            Some(1),
            "{}'s node {args:?}: {err}",
            self.name
        );
        err
    }

    /// The node's first listen address (with /p2p/).
    pub fn addr(&self) -> String {
        self.json(&["status"])["listen"][0]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Stops the node with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.node.take() {
            send_signal(child.id(), 15);
            let deadline = Instant::now() + PATIENCE;
            while child.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "{}'s node ignored SIGTERM",
                    self.name
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the node with SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.node.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Waits for the node process to exit on its own; returns whether it exited successfully.
    pub fn wait_exit(&mut self) -> bool {
        let mut child = self.node.take().expect("a node process");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                self.node = Some(child);
                panic!("{}'s node did not exit:\n{}", self.name, self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One control API call, straight to the node's socket.
    pub fn call(&self, call: coflow::api::Call) -> coflow::Result<coflow::api::Reply> {
        coflow::api::open(&self.home)?.call(call)
    }

    /// Resident memory of the node process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.node.as_ref().expect("a node process").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap()
    }

    pub fn is_running(&self) -> bool {
        self.node.is_some()
    }

    pub fn heads(&self, flow: &str) -> Option<Vec<String>> {
        let (ok, out, _) = self.run(&["--json", "flow", "show", flow]);
        if !ok {
            return None;
        }
        let v: Value = serde_json::from_str(&out).ok()?;
        let mut h: Vec<String> = v["heads"]
            .as_array()?
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        h.sort();
        Some(h)
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for i in 1..=self.starts {
            s.push_str(
                &std::fs::read_to_string(self.home.join(format!("node-{i}.log")))
                    .unwrap_or_default(),
            );
        }
        s
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        if let Some(mut child) = self.node.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The TCP port among a node's listen addresses (`/ip4/A/tcp/PORT/p2p/ID`; QUIC ones are UDP).
fn tcp_port(listen: &Value) -> Option<u16> {
    listen.as_array()?.iter().find_map(|a| {
        let parts: Vec<&str> = a.as_str()?.split('/').collect();
        let i = parts.iter().position(|p| *p == "tcp")?;
        parts.get(i + 1)?.parse().ok()
    })
}

fn send_signal(pid: u32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Waits until `f` holds, or fails the test with `what` and the nodes' logs.
pub fn eventually(what: &str, nodes: &[&Participant], mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        if Instant::now() > deadline {
            for n in nodes {
                eprintln!("==== {} ====\n{}", n.name, n.logs());
            }
            panic!("timed out waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every participant holds the flow with the same heads.
pub fn converged(flow: &str, nodes: &[&Participant]) -> Vec<String> {
    let deadline = Instant::now() + convergence_patience();
    loop {
        let all: Vec<Option<Vec<String>>> = nodes.iter().map(|n| n.heads(flow)).collect();
        if all[0].is_some() && all.iter().all(|h| h == &all[0]) {
            return all[0].clone().unwrap();
        }
        if Instant::now() > deadline {
            for (n, h) in nodes.iter().zip(&all) {
                let short: Option<Vec<&str>> =
                    h.as_ref().map(|h| h.iter().map(|x| &x[..8]).collect());
                eprintln!("==== {} heads {:?} ====\n{}", n.name, short, n.logs());
            }
            panic!("timed out waiting until all nodes hold the same heads");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Participant {
    /// The texts of the flow's comments as this node shows them, oldest first.
    pub fn comments(&self, flow: &str) -> Vec<String> {
        self.json(&["flow", "show", flow])["comments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until `flow` is offered to this node (a member added it by node id), then accepts
    /// it with `coflow flow accept`.
    pub fn accept_offer(&self, flow: &str) {
        eventually("the flow is offered", &[self], || {
            self.json(&["flow", "list"])
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == flow && f["pending"] == true)
        });
        self.json(&["flow", "accept", flow]);
    }
}

/// `owner` starts a flow "Suit"; each of `others` joins it as an owner with one shared ticket.
/// Returns the flow id once every node holds the same heads.
pub fn shared_flow(owner: &Participant, others: &[&Participant]) -> String {
    let flow = owner.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let uses = others.len().max(1).to_string();
    let ticket = owner.json(&["flow", "invite", &flow, "--role", "owner", "--uses", &uses])
        ["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    for p in others {
        p.json(&["flow", "join", &ticket]);
    }
    let mut all = vec![owner];
    all.extend_from_slice(others);
    converged(&flow, &all);
    flow
}
