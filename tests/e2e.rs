//! End to end: real `coflow node` processes on 127.0.0.1, driven only through the CLI contract.

mod common;

use common::procs::{converged, eventually, shared_flow, Participant};
use serde_json::Value;

fn s(v: &Value) -> String {
    v.as_str().unwrap().to_string()
}

fn step_status(p: &Participant, flow: &str, step: &str) -> Option<String> {
    let show = p.json(&["flow", "show", flow]);
    show["steps"]
        .as_array()?
        .iter()
        .find(|x| x["id"] == step)
        .map(|x| s(&x["status"]))
}

fn members(p: &Participant, flow: &str) -> Vec<(String, String)> {
    let show = p.json(&["flow", "show", flow]);
    let mut m: Vec<(String, String)> = show["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["removed"] == false)
        .map(|m| (s(&m["name"]), s(&m["role"])))
        .collect();
    m.sort();
    m
}

/// The tailor's story across three machines: invite and join, edits at once, the customer
/// admitting the mill while the tailor is away, and the tailor catching up.
#[test]
fn three_nodes_tailor_customer_mill() {
    let root = tempfile::tempdir().unwrap();
    let mut tom = Participant::new(root.path(), "Tom");
    let mut alice = Participant::new(root.path(), "Alice");
    let mut mill = Participant::new(root.path(), "Mill");
    tom.start(&[]);
    alice.start(&[]);
    // The control socket is the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tom.home.join("node.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The tailor starts the flow as its owner and invites the customer.
    let flow = s(&tom.json(&[
        "flow",
        "new",
        "Navy suit",
        "--need",
        "A navy three-piece suit for my wedding in May",
        "--as",
        "owner",
    ])["id"]);
    let invite = tom.json(&[
        "flow",
        "invite",
        &flow,
        "--role",
        "customer",
        "--expires",
        "1h",
    ]);
    let ticket = s(&invite["ticket"]);
    assert!(ticket.starts_with("coflow1"));
    let joined = alice.json(&["flow", "join", &ticket]);
    assert_eq!(joined["id"], flow.as_str());
    // She holds the whole flow with its signed history.
    let verify = alice.json(&["flow", "verify", &flow]);
    assert_eq!(verify["invalid"], 0);
    assert_eq!(
        verify["valid"],
        tom.json(&["flow", "verify", &flow])["valid"]
    );
    assert_eq!(
        members(&alice, &flow),
        vec![
            ("Alice".into(), "customer".into()),
            ("Tom".into(), "owner".into())
        ]
    );
    // A used ticket does not work twice.
    let mut eve = Participant::new(root.path(), "Eve");
    eve.start(&[]);
    let err = eve.fails(&["flow", "join", &ticket]);
    assert!(err.contains("used up"), "{err}");
    eve.stop();

    // Both edit the same step at once; they converge.
    let step = s(&tom.json(&["step", "add", &flow, "First fitting", "--customer"])["id"]);
    eventually("Alice has the step", &[&tom, &alice], || {
        step_status(&alice, &flow, &step).is_some()
    });
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| tom.run(&["step", "start", &flow, &step]));
        let b = sc.spawn(|| alice.run(&["step", "done", &flow, &step]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.0 && b.0, "{a:?} {b:?}");
    tom.json(&["comment", &flow, "Fitting on Tuesday"]);
    alice.json(&["comment", &flow, "Tuesday suits me"]);
    converged(&flow, &[&tom, &alice]);
    assert_eq!(
        step_status(&tom, &flow, &step),
        step_status(&alice, &flow, &step)
    );
    assert_eq!(
        tom.json(&["flow", "show", &flow])["comments"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The tailor goes offline; the customer's node admits the mill on its own.
    tom.stop();
    mill.start(&[]);
    let ticket = s(&alice.json(&["flow", "invite", &flow, "--role", "contributor"])["ticket"]);
    let joined = mill.json(&["flow", "join", &ticket]);
    assert_eq!(joined["id"], flow.as_str());
    mill.json(&["comment", &flow, "The navy wool is in stock"]);

    // The tailor comes back and catches up: the mill is a member and its comment arrived.
    tom.start(&[]);
    let heads = converged(&flow, &[&tom, &alice, &mill]);
    assert!(!heads.is_empty());
    assert_eq!(
        members(&tom, &flow),
        vec![
            ("Alice".into(), "customer".into()),
            ("Mill".into(), "contributor".into()),
            ("Tom".into(), "owner".into())
        ]
    );
    // Each node reports the others in sync.
    let show = alice.json(&["flow", "show", &flow]);
    eventually("Alice sees both in sync", &[&alice], || {
        let show = alice.json(&["flow", "show", &flow]);
        show["sync"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["in_sync"] == true)
    });
    assert_eq!(show["sync"].as_array().unwrap().len(), 2);
}

/// Two members who are never online at the same time meet through a third who is: A's edit
/// reaches B through C after A has stopped, and B's edit reaches A through C after B has.
#[test]
fn members_never_online_together_meet_through_one_who_is() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Participant::new(root.path(), "Ann");
    let mut b = Participant::new(root.path(), "Ben");
    let mut c = Participant::new(root.path(), "Cat");
    a.start(&[]);
    c.start(&[]);
    let flow = shared_flow(&a, &[&c]);
    // B is a member by node id alone; its node has not run yet.
    a.json(&[
        "member",
        "add",
        &flow,
        &b.id(),
        "--role",
        "owner",
        "--name",
        "Ben",
    ]);
    a.json(&["comment", &flow, "Ann, before leaving"]);
    converged(&flow, &[&a, &c]);
    a.stop();

    b.start(&[c.addr()]);
    b.accept_offer(&flow);
    eventually("Ann's comment reaches Ben through Cat", &[&b, &c], || {
        b.comments(&flow) == ["Ann, before leaving"]
    });
    b.json(&["comment", &flow, "Ben, while Ann is away"]);
    converged(&flow, &[&b, &c]);
    b.stop();

    a.start(&[c.addr()]);
    eventually("Ben's comment reaches Ann through Cat", &[&a, &c], || {
        a.comments(&flow) == ["Ann, before leaving", "Ben, while Ann is away"]
    });
    converged(&flow, &[&a, &c]);
}

/// A ticket made before the inviter's node ever ran has no address in it, only the inviter's
/// node id: the joiner, which knows only a third node, finds the inviter through the DHT once
/// its node runs, and joins.
#[test]
fn a_ticket_made_before_the_inviters_node_ever_ran_finds_it_through_the_dht() {
    let root = tempfile::tempdir().unwrap();
    let mut hub = Participant::new(root.path(), "Hub");
    let mut tom = Participant::new(root.path(), "Tom");
    let mut alice = Participant::new(root.path(), "Alice");
    let flow = tom.json(&[
        "flow",
        "new",
        "Suit",
        "--need",
        "A linen suit",
        "--as",
        "owner",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ticket = tom.json(&["flow", "invite", &flow, "--role", "customer"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    hub.start(&[]);
    tom.start(&[hub.addr()]);
    alice.start(&[hub.addr()]);
    let joined = alice.json(&["flow", "join", &ticket]);
    assert_eq!(joined["id"], flow.as_str());
    eventually("Alice holds the flow", &[&alice, &tom, &hub], || {
        alice.heads(&flow).is_some()
    });
    assert_eq!(alice.json(&["flow", "show", &flow])["need"], "A linen suit");
    assert_eq!(hub.json(&["flow", "list"]), serde_json::json!([]));
}

/// A node killed with SIGKILL catches up on restart, and edits made with its CLI while it was
/// down go out when it starts.
#[test]
fn a_killed_node_catches_up_and_sends_its_offline_edits() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let mut tom = Participant::new(root.path(), "Tom");
    alice.start(&[]);
    tom.start(&[]);
    let flow = shared_flow(&alice, &[&tom]);

    tom.kill9();
    alice.json(&["step", "add", &flow, "Cut and baste"]);
    alice.json(&["comment", &flow, "Written while Tom was down"]);
    // Tom's CLI works without his node: straight on his store.
    let status = tom.json(&["status"]);
    assert_eq!(status["running"], false);
    tom.json(&["comment", &flow, "Written offline by Tom"]);

    tom.start(&[]);
    converged(&flow, &[&alice, &tom]);
    let texts: Vec<String> = alice.json(&["flow", "show", &flow])["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| s(&c["text"]))
        .collect();
    assert!(texts.contains(&"Written offline by Tom".to_string()));
    assert!(texts.contains(&"Written while Tom was down".to_string()));
    assert_eq!(
        tom.json(&["flow", "show", &flow])["steps"][0]["title"],
        "Cut and baste"
    );
}

/// A fourth node that is not a member, connected to a member, holds nothing and cannot get in
/// with a forged ticket.
#[test]
fn a_non_member_is_refused_and_holds_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let mut eve = Participant::new(root.path(), "Eve");
    alice.start(&[]);
    let flow = s(&alice.json(&[
        "flow",
        "new",
        "Private suit",
        "--need",
        "Secret measurements",
    ])["id"]);
    alice.json(&["comment", &flow, "Chest 102 cm"]);
    eve.start(&[alice.addr()]);
    eventually("Eve is connected to Alice", &[&alice, &eve], || {
        eve.json(&["status"])["peers"] == 1
    });
    // A ticket with the right flow but a made-up secret, then a made-up invite too: Alice's
    // node answers both as it would a flow it does not hold.
    let real = s(&alice.json(&["flow", "invite", &flow, "--role", "observer"])["ticket"]);
    let mut t = coflow::wire::InviteTicket::decode(&real).unwrap();
    t.secret = [0; 16];
    let bad_secret = eve.fails(&["flow", "join", &t.encode()]);
    assert!(
        bad_secret.contains("unknown flow or invite"),
        "{bad_secret}"
    );
    t.invite = "0000000000000000".into();
    let unknown = eve.fails(&["flow", "join", &t.encode()]);
    assert_eq!(unknown, bad_secret);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(eve.json(&["flow", "list"]), serde_json::json!([]));
    let err = eve.fails(&["flow", "show", &flow]);
    assert!(err.contains("no flow matches"), "{err}");
    // Nothing about the flow is in Eve's database.
    let db = std::fs::read(eve.home.join("coflow.db")).unwrap_or_default();
    let needle = b"Secret measurements";
    assert!(!db.windows(needle.len()).any(|w| w == needle));
}

/// Revoked, expired and malformed tickets each get one clear error, and change nothing.
#[test]
fn bad_tickets_are_refused_clearly() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let mut bob = Participant::new(root.path(), "Bob");
    alice.start(&[]);
    bob.start(&[]);
    let flow = s(&alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]);

    let revoked = alice.json(&["flow", "invite", &flow, "--role", "observer"]);
    alice.json(&["flow", "invite", "revoke", &flow, &s(&revoked["id"])]);
    let err = bob.fails(&["flow", "join", &s(&revoked["ticket"])]);
    assert!(err.contains("revoked"), "{err}");

    let short = alice.json(&[
        "flow",
        "invite",
        &flow,
        "--role",
        "observer",
        "--expires",
        "1s",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let err = bob.fails(&["flow", "join", &s(&short["ticket"])]);
    assert!(err.contains("expired"), "{err}");

    for (ticket, want) in [
        ("hello", "not a coflow ticket"),
        ("coflow1!!!!", "bad base32"),
        ("coflow1aaaa", "damaged"),
    ] {
        let err = bob.fails(&["flow", "join", ticket]);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{ticket}: {err}");
    }
    let heads = alice.heads(&flow);
    assert_eq!(bob.json(&["flow", "list"]), serde_json::json!([]));
    assert_eq!(alice.heads(&flow), heads);
    // Joining needs the node: without it, a clear error.
    bob.stop();
    let err = bob.fails(&["flow", "join", &s(&revoked["ticket"])]);
    assert!(err.contains("start the node"), "{err}");
}

/// A second node on a port another node listens on refuses to start, with the address and the
/// reason on one line, and the first node keeps running. A port held by any
/// other listener gives the operating system's reason too.
#[test]
fn an_occupied_listen_port_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Participant::new(root.path(), "Alice");
    let bob = Participant::new(root.path(), "Bob");
    alice.start(&[]);
    let alice_addr = alice.addr();
    let port: u16 = alice_addr.split('/').nth(4).unwrap().parse().unwrap();

    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let err = bob.node_refuses(&["--listen", &listen, "--no-mdns"]);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with(&format!("error: cannot listen on {listen}: ")),
        "{err}"
    );
    assert!(lines[0].contains("in use"), "{err}");
    // The wildcard address overlaps the loopback one.
    let err = bob.node_refuses(&["--listen", &format!("/ip4/0.0.0.0/tcp/{port}"), "--no-mdns"]);
    assert!(err.contains("in use"), "{err}");
    // Alice still answers on her address, and Bob's data dir holds no running node.
    assert_eq!(alice.addr(), alice_addr);
    assert_eq!(bob.json(&["status"])["running"], false);

    // Any other listener: the reason is the operating system's.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = format!("/ip4/127.0.0.1/tcp/{}", other.local_addr().unwrap().port());
    let err = bob.node_refuses(&["--listen", &taken, "--no-mdns"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("error: cannot listen on {taken}: ")) && err.contains("in use"),
        "{err}"
    );
    drop(other);

    // One node on the same port on all IPv4 and all IPv6 interfaces is no conflict with itself
    // (the check binds IPv6 as IPv6 only, as libp2p does).
    let free = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let mut bob = bob;
    bob.start_on(&[
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip6/::/tcp/{port}"),
    ]);
    let listen = bob.json(&["status"])["listen"].clone();
    let addrs: Vec<&str> = listen
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let on_port = format!("/tcp/{port}/");
    assert!(addrs.iter().all(|a| a.contains(&on_port)), "{listen}");
    assert!(addrs.iter().any(|a| a.starts_with("/ip4/")), "{listen}");
    assert!(addrs.iter().any(|a| a.starts_with("/ip6/")), "{listen}");
}
