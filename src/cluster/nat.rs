//! Real NAT for tests and benchmarks: a small world of Linux network namespaces in which two
//! homes sit behind their own home router and one public host is reachable by all.
//!
//! ```text
//!             public (198.51.100.10)
//!                    |
//!   internet: a bridge, 198.51.100.0/24 (TEST-NET-2: public, as an address must be to count)
//!          |                    |
//!   router 0 (WAN .21)    router 1 (WAN .22)      MASQUERADE, inbound only ESTABLISHED
//!          |                    |
//!   home 0 (192.168.1.10)  home 1 (192.168.2.10)
//! ```
//!
//! The routers are what a home router does with iptables: they masquerade what leaves on the
//! WAN and forward inbound packets only for connections a home opened, so a home is not
//! reachable unasked — by the other home, by the public host, or at the router's own address.
//! [`NatKind`] says whether a mapping keeps the home's source port (hole punching can work) or
//! picks a random one per connection (it cannot). Nothing here simulates: packets cross real
//! veth links and real conntrack, so what a node does here is what it does behind a real NAT.
//!
//! Making a world needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN), `ip` and `iptables`;
//! [`NatWorld::create`] says why when it cannot, and callers skip with that reason.

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The public host's address, the same in every world (worlds do not share a network).
pub const PUBLIC_ADDR: &str = "198.51.100.10";

/// Whether nodes in a world also listen on QUIC (UDP) ([`listen`]): hole punching can then use
/// UDP as well as TCP.
pub const QUIC: bool = true;

/// What a node in a world listens on: every address of its namespace, TCP `port` (and UDP
/// `port` for QUIC, if [`QUIC`]); 0 picks a free one.
pub fn listen(port: u16) -> Vec<String> {
    let mut addrs = vec![format!("/ip4/0.0.0.0/tcp/{port}")];
    if QUIC {
        addrs.push(format!("/ip4/0.0.0.0/udp/{port}/quic-v1"));
    }
    addrs
}

/// How the home routers map a home's connections to their WAN address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Plain `MASQUERADE`: the home's source port is kept when it is free, whatever the
    /// destination, so the address the public host observes is the one the other home can
    /// punch to.
    PortPreserving,
    /// `MASQUERADE --random-fully`: every connection gets a random port, so an observed
    /// address says nothing about the next mapping and hole punching fails.
    RandomPorts,
}

/// Prefix of every namespace a world makes; with the pid after it, a leftover of a run that
/// was killed is recognised and removed ([`sweep_dead_worlds`]).
const PREFIX: &str = "cfnat";

/// Worlds made by this process so far, for unique names.
static WORLDS: AtomicU32 = AtomicU32::new(0);

/// One world: an internet, a public host, two routers and the two homes behind them. Dropping
/// it kills what still runs inside and deletes the namespaces (and with them every link).
pub struct NatWorld {
    kind: NatKind,
    internet: String,
    public: String,
    routers: [String; 2],
    homes: [String; 2],
}

impl NatWorld {
    /// Makes a world whose routers both map as `kind` says. Err(reason) when this machine or
    /// user cannot (not root, no `ip` or `iptables`, namespaces refused).
    pub fn create(kind: NatKind) -> Result<NatWorld, String> {
        for tool in ["ip", "iptables"] {
            if let Err(e) = Command::new(tool).arg("-V").output() {
                return Err(format!("cannot run `{tool}`: {e}"));
            }
        }
        sweep_dead_worlds();
        let n = WORLDS.fetch_add(1, Ordering::Relaxed);
        let name = |role: &str| format!("{PREFIX}-{}-{n}-{role}", std::process::id());
        let world = NatWorld {
            kind,
            internet: name("inet"),
            public: name("pub"),
            routers: [name("r0"), name("r1")],
            homes: [name("h0"), name("h1")],
        };
        // Dropping a half-made world deletes what was made.
        world.build()?;
        Ok(world)
    }

    fn namespaces(&self) -> Vec<&str> {
        let mut all = vec![self.internet.as_str(), self.public.as_str()];
        all.extend(self.routers.iter().map(String::as_str));
        all.extend(self.homes.iter().map(String::as_str));
        all
    }

    fn build(&self) -> Result<(), String> {
        for ns in self.namespaces() {
            // A namespace of this name can only be a leftover of a dead process that had this
            // pid: this process has not used the name yet.
            remove_namespace(ns);
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let inet = self.internet.as_str();
        ip(&["-n", inet, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", inet, "link", "set", "br0", "up"])?;
        // Each veth pair is made straight into its two namespaces, so interface names only
        // need to be unique within a namespace (and short: at most 15 characters).
        self.wire(&self.public, "eth0", "to-pub", &format!("{PUBLIC_ADDR}/24"))?;
        for i in 0..2 {
            let (router, home) = (&self.routers[i], &self.homes[i]);
            self.wire(router, "wan", &format!("to-r{i}"), &format!("{}/24", router_wan(i)))?;
            veth(router, "lan", home, "eth0")?;
            addr_up(router, "lan", &format!("{}/24", lan_gateway(i)))?;
            addr_up(home, "eth0", &format!("{}/24", home_addr(i)))?;
            ip(&["-n", home, "route", "add", "default", "via", &lan_gateway(i)])?;
            self.home_router(router)?;
        }
        Ok(())
    }

    /// Connects `ns` to the internet's bridge: `dev` (with `cidr`) in `ns`, `port` on the bridge.
    fn wire(&self, ns: &str, dev: &str, port: &str, cidr: &str) -> Result<(), String> {
        let inet = self.internet.as_str();
        veth(ns, dev, inet, port)?;
        ip(&["-n", inet, "link", "set", port, "master", "br0", "up"])?;
        addr_up(ns, dev, cidr)
    }

    /// The rules of a home router in `ns`, between its `lan` and `wan`.
    fn home_router(&self, ns: &str) -> Result<(), String> {
        in_ns(ns, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        let mut masquerade = vec!["-t", "nat", "-A", "POSTROUTING", "-o", "wan"];
        masquerade.extend(["-j", "MASQUERADE"]);
        if self.kind == NatKind::RandomPorts {
            masquerade.push("--random-fully");
        }
        let established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"];
        let rules: [Vec<&str>; 6] = [
            masquerade,
            vec!["-P", "FORWARD", "DROP"],
            vec!["-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT"],
            [&["-A", "FORWARD", "-i", "wan", "-o", "lan"], &established[..], &["-j", "ACCEPT"]]
                .concat(),
            // Nothing on the router itself answers from the WAN (no RST either: an unasked
            // packet to a mapped-out port just disappears, as at most home routers).
            [&["-A", "INPUT", "-i", "wan"], &established[..], &["-j", "ACCEPT"]].concat(),
            vec!["-A", "INPUT", "-i", "wan", "-j", "DROP"],
        ];
        for rule in rules {
            in_ns(ns, "iptables", &rule)?;
        }
        Ok(())
    }

    pub fn kind(&self) -> NatKind {
        self.kind
    }

    /// The public host's namespace.
    pub fn public(&self) -> &str {
        &self.public
    }

    /// Home `i`'s namespace (0 or 1).
    pub fn home(&self, i: usize) -> &str {
        &self.homes[i]
    }

    /// Router `i`'s namespace (0 or 1).
    pub fn router(&self, i: usize) -> &str {
        &self.routers[i]
    }

    /// Home `i`'s address on its LAN.
    pub fn home_addr(&self, i: usize) -> String {
        home_addr(i)
    }

    /// Home `i`'s LAN (CIDR).
    pub fn home_lan(&self, i: usize) -> String {
        format!("192.168.{}.0/24", i + 1)
    }

    /// Router `i`'s address on the internet: where home `i`'s connections appear to come from.
    pub fn router_wan(&self, i: usize) -> String {
        router_wan(i)
    }

    /// `program` run inside namespace `ns` (as `ip netns exec NS program`); add its arguments.
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        netns_command(ns, program)
    }
}

impl Drop for NatWorld {
    fn drop(&mut self) {
        for ns in self.namespaces() {
            remove_namespace(ns);
        }
    }
}

/// `program` run inside network namespace `ns`: `ip netns exec` enters it and then executes
/// the program itself, so the child's pid is the program's (signals reach it directly).
pub fn netns_command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

fn home_addr(i: usize) -> String {
    format!("192.168.{}.10", i + 1)
}

fn lan_gateway(i: usize) -> String {
    format!("192.168.{}.1", i + 1)
}

fn router_wan(i: usize) -> String {
    format!("198.51.100.{}", 21 + i)
}

/// Runs `ip ARGS`; Err with what it printed if it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args))
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<(), String> {
    run(netns_command(ns, program).args(args))
}

fn run(c: &mut Command) -> Result<(), String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {c:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn veth(ns_a: &str, dev_a: &str, ns_b: &str, dev_b: &str) -> Result<(), String> {
    ip(&[
        "-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b,
    ])?;
    ip(&["-n", ns_b, "link", "set", dev_b, "up"])
}

fn addr_up(ns: &str, dev: &str, cidr: &str) -> Result<(), String> {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "up"])
}

/// Kills every process in `ns` and deletes it (its links go with it). Best effort: this runs
/// in `Drop`, and a namespace already gone is fine.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes the namespaces of worlds whose process is gone (a run killed before its worlds were
/// dropped), so they do not pile up.
fn sweep_dead_worlds() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `ip netns list` prints "NAME" or "NAME (id: N)".
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !alive(pid) {
            remove_namespace(name);
        }
    }
}

/// Whether process `pid` runs: it exists and is not a zombie (a killed test run lingers as one
/// until its parent reaps it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "PID (COMM) STATE ...": COMM may hold spaces and parentheses; STATE follows the last ')'.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
    })
}
