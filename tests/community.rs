//! Community scale: members find each other through the DHT with no central server.

mod common;

use common::procs::{converged, eventually, Participant};

/// Ten node processes in a chain, each started knowing only its predecessor's address. The
/// first adds the others to a flow by node id alone (no ticket, no address) — except the one in
/// the middle, which stays a non-member. The flow reaches every member, every member's comment
/// reaches every member, and the node in the middle, which routes DHT queries for the others,
/// holds nothing of the flow.
#[test]
fn a_chain_of_ten_nodes_finds_its_members_through_the_dht() {
    let root = tempfile::tempdir().unwrap();
    let n = 10;
    let outsider = 5;
    let mut nodes: Vec<Participant> = Vec::new();
    for i in 0..n {
        let mut p = Participant::new(root.path(), &format!("Link{i}"));
        let boot: Vec<String> = nodes
            .last()
            .map(|prev| vec![prev.addr()])
            .unwrap_or_default();
        p.start(&boot);
        nodes.push(p);
    }
    let flow = nodes[0].json(&["flow", "new", "Chain", "--need", "Reach everyone"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (i, p) in nodes.iter().enumerate().skip(1) {
        if i != outsider {
            let id = p.id();
            nodes[0].json(&[
                "member",
                "add",
                &flow,
                &id,
                "--role",
                "contributor",
                "--name",
                &p.name,
            ]);
        }
    }
    let members: Vec<&Participant> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != outsider)
        .map(|(_, p)| p)
        .collect();
    converged(&flow, &members);
    for p in &members {
        p.json(&["comment", &flow, &format!("hello from {}", p.name)]);
    }
    converged(&flow, &members);
    let comments = members[members.len() - 1].json(&["flow", "show", &flow])["comments"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(comments, members.len());
    // The two ends never exchanged an address; they found each other through the DHT.
    let last = nodes[n - 1].id();
    let first = &nodes[0];
    eventually("the first node is connected to the last", &[first], || {
        first
            .json(&["peers"])
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["node_id"].as_str() == Some(last.as_str()) && p["connected"] == true)
    });
    // The node in the middle took part in routing but holds nothing of the flow.
    eventually("the outsider is connected", &[&nodes[outsider]], || {
        nodes[outsider].json(&["status"])["peers"].as_u64().unwrap() >= 1
    });
    assert_eq!(
        nodes[outsider].json(&["flow", "list"]),
        serde_json::json!([])
    );
    let db = std::fs::read(nodes[outsider].home.join("coflow.db")).unwrap();
    let needle = b"hello from";
    assert!(!db.windows(needle.len()).any(|w| w == needle));
}
