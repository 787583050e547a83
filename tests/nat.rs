//! Behind real NAT: node processes in Linux network namespaces (`coflow::cluster::nat`), two
//! homes behind home routers and one public node that is a member of nothing. The homes know
//! only the public node's address; they must find each other through it, reach each other
//! through it as a relay, punch a hole when their routers allow it, and never leave content
//! with it. Root only: elsewhere each test prints why it skips.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coflow::cluster::nat::{listen, NatKind, NatWorld, PUBLIC_ADDR};
use common::procs::Participant;
use serde_json::Value;

/// The public node's port inside its own namespace (TCP, and UDP for QUIC).
const PUBLIC_PORT: u16 = 4001;

/// How long the network may take here: finding each other through the public node, AutoNAT,
/// a relay reservation, and hole punching take several round trips and retries.
const NAT_PATIENCE: Duration = Duration::from_secs(60);

/// What only the flow's members may hold: none of it may be found in the public node's files.
const NEED: &str = "A charcoal suit with the lining in Hopsack 7f3a";
const FROM_TAILOR: &str = "First fitting on Tuesday, the tailor's note 91c2";
const FROM_CUSTOMER: &str = "Tuesday suits me, the customer's note 5e7d";
const LATER: &str = "Lapels narrowed as asked, the tailor's note b04e";

/// A world for the probes of the harness tests, which run `python3` in it.
fn probe_world(kind: NatKind) -> Option<NatWorld> {
    if let Err(e) = Command::new("python3").arg("-V").output() {
        eprintln!("skipping: cannot run python3: {e}");
        return None;
    }
    world(kind)
}

fn world(kind: NatKind) -> Option<NatWorld> {
    match NatWorld::create(kind) {
        Ok(w) => Some(w),
        Err(reason) => {
            eprintln!("skipping: {reason}");
            None
        }
    }
}

/// A TCP listener in namespace `ns` that answers each connection with the address it came
/// from (`IP:PORT`) and closes it: what a public server observes of a client behind NAT.
const ECHO_ADDR: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, a = s.accept()
    c.sendall(("%s:%d" % a).encode())
    c.close()
"#;

/// Connects to `sys.argv[1]:sys.argv[2]` (from source port `sys.argv[3]` if given) within
/// two seconds and prints what the listener answered; exit 1 if it cannot connect.
const PROBE: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(2)
if len(sys.argv) > 3:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[3])))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print(s.recv(100).decode())
except Exception as e:
    print(e)
    sys.exit(1)
"#;

/// Runs [`ECHO_ADDR`] in `ns` on `port`; returns once it listens. Killed when dropped (and by
/// the world's drop in any case).
struct Echo(Child);

impl Echo {
    fn start(world: &NatWorld, ns: &str, port: u16) -> Echo {
        let mut child = world
            .command(ns, "python3")
            .args(["-c", ECHO_ADDR, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "the listener in {ns} did not start");
        Echo(child)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// From namespace `ns`, a TCP connection to `addr:port`: Ok(the address the listener saw) or
/// Err(why not).
fn probe(
    world: &NatWorld,
    ns: &str,
    addr: &str,
    port: u16,
    from_port: Option<u16>,
) -> Result<String, String> {
    let mut c = world.command(ns, "python3");
    c.args(["-c", PROBE, addr, &port.to_string()]);
    if let Some(p) = from_port {
        c.arg(p.to_string());
    }
    let out = c.stdin(Stdio::null()).output().expect("python3 runs");
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}

/// The harness itself: a home reaches the public host, seen at its router's address; nothing
/// reaches a home unasked, even a host that routes the home's LAN to its router; one home
/// cannot reach the other. A port-preserving router keeps the source port.
#[test]
fn the_world_is_a_real_nat() {
    let Some(world) = probe_world(NatKind::PortPreserving) else {
        return;
    };
    let _public = Echo::start(&world, world.public(), 5000);
    let _home0 = Echo::start(&world, world.home(0), 5001);
    let _home1 = Echo::start(&world, world.home(1), 5002);

    let seen = probe(&world, world.home(0), PUBLIC_ADDR, 5000, Some(40123)).unwrap();
    assert_eq!(seen, format!("{}:40123", world.router_wan(0)));
    // The other home gets out too, from its own router.
    let seen = probe(&world, world.home(1), PUBLIC_ADDR, 5000, None).unwrap();
    assert!(
        seen.starts_with(&format!("{}:", world.router_wan(1))),
        "{seen}"
    );

    // The public host routes home 0's LAN to router 0, as a neighbour on the internet could:
    // the router's firewall, not a missing route, is what keeps it out.
    let added = world
        .command(world.public(), "ip")
        .args([
            "route",
            "add",
            &world.home_lan(0),
            "via",
            &world.router_wan(0),
        ])
        .status()
        .unwrap();
    assert!(added.success());
    for (from, addr, port) in [
        (world.public(), world.home_addr(0), 5001),
        (world.public(), world.router_wan(0), 5001),
        (world.home(0), world.home_addr(1), 5002),
        (world.home(0), world.router_wan(1), 5002),
    ] {
        let r = probe(&world, from, &addr, port, None);
        eprintln!("{from} to {addr}:{port}: {r:?}");
        assert!(r.is_err(), "{from} reached {addr}:{port}: {r:?}");
    }
    // A connection home 0 opened is answered (the router lets established traffic back in).
    let seen = probe(&world, world.home(0), PUBLIC_ADDR, 5000, Some(40124)).unwrap();
    assert_eq!(seen, format!("{}:40124", world.router_wan(0)));
}

/// A random-port router maps the same source port to a different port: what the public host
/// observes of a home is no address another home could punch to.
#[test]
fn a_random_port_nat_does_not_keep_the_source_port() {
    let Some(world) = probe_world(NatKind::RandomPorts) else {
        return;
    };
    let _public = Echo::start(&world, world.public(), 5000);
    let _public2 = Echo::start(&world, world.public(), 5003);
    let first = probe(&world, world.home(0), PUBLIC_ADDR, 5000, Some(40125)).unwrap();
    let second = probe(&world, world.home(0), PUBLIC_ADDR, 5003, Some(40125)).unwrap();
    let wan = world.router_wan(0);
    for seen in [&first, &second] {
        let (ip, _) = seen.split_once(':').unwrap();
        assert_eq!(ip, wan);
    }
    // One port in ~28,000 could be drawn by chance; both draws matching the source port is
    // beyond chance.
    assert!(
        first != format!("{wan}:40125") || second != format!("{wan}:40125"),
        "both connections kept source port 40125"
    );
}

/// One side of a hole punch from a home: `udp` sends to `sys.argv[2]:sys.argv[3]` from the
/// same port for three seconds and prints `heard` if anything came back; `tcp` connects from
/// the same port within five seconds (a simultaneous open when the other side does the same)
/// and prints `connected`.
const PUNCH: &str = r#"
import socket, sys, time
proto, peer = sys.argv[1], (sys.argv[2], int(sys.argv[3]))
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", peer[1]))
    s.settimeout(0.1)
    heard = False
    end = time.time() + 3
    while time.time() < end:
        s.sendto(b"punch", peer)
        try:
            s.recvfrom(100)
            heard = True
        except socket.timeout:
            pass
    print("heard" if heard else "silence")
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", peer[1]))
    s.settimeout(5)
    try:
        s.connect(peer)
        print("connected")
    except Exception as e:
        print(e)
"#;

/// Both homes punch at once, each to the other's router on the same port (what each would
/// have learnt of the other from the public host, were the mapping kept); what each printed.
fn punch(world: &NatWorld, proto: &str, port: u16) -> [String; 2] {
    let side = |i: usize| {
        world
            .command(world.home(i), "python3")
            .args([
                "-c",
                PUNCH,
                proto,
                &world.router_wan(1 - i),
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs")
    };
    let (a, b) = (side(0), side(1));
    [a, b].map(|c| {
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// Through port-preserving routers the two homes punch a hole, in UDP (as QUIC would) and in
/// TCP (a simultaneous open, as DCUtR does); through random-port routers neither gets through.
#[test]
fn only_port_preserving_nats_let_two_homes_punch_a_hole() {
    for kind in [NatKind::PortPreserving, NatKind::RandomPorts] {
        let Some(world) = probe_world(kind) else {
            return;
        };
        let udp = punch(&world, "udp", 41000);
        let tcp = punch(&world, "tcp", 42000);
        eprintln!("{kind:?}: udp {udp:?}, tcp {tcp:?}");
        if kind == NatKind::PortPreserving {
            assert_eq!(udp, ["heard", "heard"], "{kind:?}");
            assert_eq!(tcp, ["connected", "connected"], "{kind:?}");
        } else {
            assert_eq!(udp, ["silence", "silence"], "{kind:?}");
            assert!(tcp.iter().all(|t| t != "connected"), "{kind:?}: {tcp:?}");
        }
    }
}

/// Nodes started in a world: the public node P first, then the tailor at home 0 and the
/// customer at home 1, each given only P's address. Fields drop in order: the nodes, then the
/// world (killing anything left in it), then the data dirs.
struct Homes {
    p: Participant,
    a: Participant,
    b: Participant,
    world: NatWorld,
    _root: tempfile::TempDir,
}

impl Homes {
    fn start(kind: NatKind) -> Option<Homes> {
        let world = world(kind)?;
        let root = tempfile::tempdir().unwrap();
        let mut p =
            Participant::new(root.path(), "Public").in_netns(world.public(), &listen(PUBLIC_PORT));
        p.start(&[]);
        let boot = format!("/ip4/{PUBLIC_ADDR}/tcp/{PUBLIC_PORT}/p2p/{}", p.id());
        let mut a = Participant::new(root.path(), "Tailor").in_netns(world.home(0), &listen(0));
        let mut b = Participant::new(root.path(), "Customer").in_netns(world.home(1), &listen(0));
        a.start(std::slice::from_ref(&boot));
        b.start(std::slice::from_ref(&boot));
        let homes = Homes {
            p,
            a,
            b,
            world,
            _root: root,
        };
        let (a_id, b_id) = (homes.a.id(), homes.b.id());
        homes.eventually("P is connected to both homes", || {
            let peers = homes.p.json(&["peers"]);
            seen(connected(&peers, &a_id) && connected(&peers, &b_id), peers)
        });
        eprintln!("nat: the world is up; P is connected to both homes");
        Some(homes)
    }

    /// Waits up to [`NAT_PATIENCE`] until `f` holds (Ok), or fails with `what`, what `f` saw
    /// last (its Err) and the three nodes' logs.
    fn eventually(&self, what: &str, mut f: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + NAT_PATIENCE;
        loop {
            let last = match f() {
                Ok(()) => return,
                Err(last) => last,
            };
            if Instant::now() > deadline {
                self.fail(&format!(
                    "timed out waiting until {what}; last seen: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Fails the test with `why`, after the three nodes' logs.
    fn fail(&self, why: &str) -> ! {
        for n in [&self.p, &self.a, &self.b] {
            eprintln!("==== {} ====\n{}", n.name, n.logs());
        }
        panic!("{why}");
    }

    /// Waits until A's link to B is `link` (`why` it should be, for the failure message).
    fn link_becomes(&self, link: &str, why: &str) {
        self.eventually(&format!("A's link to B is {link} ({why})"), || {
            let to_b = self.a_to_b();
            seen(to_b["link"] == link, to_b)
        });
    }

    /// A's entry for B in A's `peers` (null if there is none).
    fn a_to_b(&self) -> Value {
        find(&self.a.json(&["peers"]), &self.b.id())
    }

    /// What the public node can tell of its place and the homes' (the NAT contract of
    /// `status`): it is public, A is private and holds a reservation on it as a relay.
    fn check_reachability(&self) {
        let p_id = self.p.id();
        self.eventually("P finds itself public", || {
            let s = self.p.json(&["status"]);
            seen(s["reachability"] == "public", s)
        });
        for home in [&self.a, &self.b] {
            let what = format!(
                "{} finds itself private, with a reservation on P",
                home.name
            );
            self.eventually(&what, || {
                let s = home.json(&["status"]);
                let on_p = s["relays"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|id| id == p_id.as_str()));
                seen(s["reachability"] == "private" && on_p, s)
            });
        }
        eprintln!("nat: P is public; both homes are private with a reservation on P");
    }

    /// A starts a flow, invites B as its customer; B joins and holds it; an edit each way
    /// arrives. Returns the flow id.
    fn converge(&self) -> String {
        let a = &self.a;
        let b = &self.b;
        let flow = a.json(&["flow", "new", "Suit", "--need", NEED, "--as", "owner"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let ticket = a.json(&["flow", "invite", &flow, "--role", "customer"])["ticket"]
            .as_str()
            .unwrap()
            .to_string();
        let (ok, _, err) = b.run(&["--json", "flow", "join", &ticket]);
        if !ok {
            self.fail(&format!("B could not join: {err}"));
        }
        self.eventually("B holds the flow", || {
            seen(b.heads(&flow).is_some(), b.json(&["flow", "list"]))
        });
        eprintln!("nat: B joined and holds the flow");
        a.json(&["comment", &flow, FROM_TAILOR]);
        self.arrives(b, &flow, FROM_TAILOR);
        b.json(&["comment", &flow, FROM_CUSTOMER]);
        self.arrives(a, &flow, FROM_CUSTOMER);
        assert_eq!(b.json(&["flow", "show", &flow])["need"], NEED);
        eprintln!("nat: an edit each way arrived");
        flow
    }

    /// Waits until `to` shows the comment `text` on `flow`.
    fn arrives(&self, to: &Participant, flow: &str, text: &str) {
        self.eventually(&format!("{text:?} reaches {}", to.name), || {
            let comments = to.comments(flow);
            seen(comments.iter().any(|c| c == text), format!("{comments:?}"))
        });
    }

    /// P is a member of nothing and holds nothing: no flow, and not one of the flow's texts
    /// in any file of its data dir (the database, its write-ahead log, its logs).
    fn check_public_holds_nothing(&self, texts: &[&str]) {
        assert_eq!(self.p.json(&["flow", "list"]), serde_json::json!([]));
        for file in files(&self.p.home) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            for text in texts {
                assert!(
                    !contains(&bytes, text.as_bytes()),
                    "P's {} holds {text:?}",
                    file.display()
                );
            }
        }
    }
}

/// Ok if `ok`, else Err(what was seen), for [`Homes::eventually`].
fn seen(ok: bool, what: impl std::fmt::Display) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

/// Node `id`'s entry in a `peers` list (null if there is none).
fn find(peers: &Value, id: &str) -> Value {
    peers
        .as_array()
        .and_then(|l| l.iter().find(|p| p["node_id"] == id))
        .cloned()
        .unwrap_or(Value::Null)
}

fn connected(peers: &Value, id: &str) -> bool {
    find(peers, id)["connected"] == true
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Port-preserving routers: the homes meet through P, converge over P as a relay, and then
/// punch a hole: A's link to B becomes direct, in `peers` and in the flow's sync state.
#[test]
fn homes_behind_port_preserving_nats_converge_and_punch_through() {
    let Some(homes) = Homes::start(NatKind::PortPreserving) else {
        return;
    };
    homes.check_reachability();
    let flow = homes.converge();
    homes.link_becomes("direct", "a hole punched");
    let sync = homes.a.json(&["flow", "show", &flow])["sync"].clone();
    assert_eq!(find(&sync, &homes.b.id())["link"], "direct", "{sync}");
    homes.check_public_holds_nothing(&[NEED, FROM_TAILOR, FROM_CUSTOMER]);
}

/// Random-port routers: no hole can be punched, so the homes converge and keep working over P
/// as a relay: the link stays relayed, and an edit ten seconds later still arrives.
#[test]
fn homes_behind_random_port_nats_stay_relayed_and_work() {
    let Some(homes) = Homes::start(NatKind::RandomPorts) else {
        return;
    };
    homes.check_reachability();
    let flow = homes.converge();
    assert_eq!(homes.a_to_b()["link"], "relayed", "{}", homes.a_to_b());
    std::thread::sleep(Duration::from_secs(10));
    homes.a.json(&["comment", &flow, LATER]);
    homes.arrives(&homes.b, &flow, LATER);
    assert_eq!(homes.a_to_b()["link"], "relayed", "{}", homes.a_to_b());
    homes.check_public_holds_nothing(&[NEED, FROM_TAILOR, FROM_CUSTOMER, LATER]);
}

/// After the hole is punched, the path between the two homes dies (a router drops all traffic
/// to and from the other home's router, as when a mapping is dropped): the direct connection
/// answers no ping and is closed, the homes reach each other through the relay again, and an
/// edit made after the path died arrives.
#[test]
fn when_the_punched_path_dies_the_homes_fall_back_to_the_relay() {
    let Some(homes) = Homes::start(NatKind::PortPreserving) else {
        return;
    };
    homes.check_reachability();
    let flow = homes.converge();
    homes.link_becomes("direct", "a hole punched");
    let other = homes.world.router_wan(1);
    for rule in [["-d", other.as_str()], ["-s", other.as_str()]] {
        let out = homes
            .world
            .command(homes.world.router(0), "iptables")
            .args(["-I", "FORWARD", rule[0], rule[1], "-j", "DROP"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    homes.a.json(&["comment", &flow, LATER]);
    homes.arrives(&homes.b, &flow, LATER);
    homes.link_becomes("relayed", "the relay carries it again");
    homes.check_public_holds_nothing(&[NEED, FROM_TAILOR, FROM_CUSTOMER, LATER]);
}
