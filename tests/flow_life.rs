//! The flow as people live in it, through the `coflow` binary: the rules that keep a flow
//! workable (someone can always manage it), each with its refusal.

mod common;

use common::cli::{s, Node};

#[test]
fn the_last_customer_or_owner_cannot_leave() {
    let alice = Node::init("alice", "Alice");
    let tom = Node::init("tom", "Tom");
    let f = s(&alice.json(&["flow", "new", "Suit", "--need", "A suit"])["id"]).to_string();
    let heads = alice.heads(&f);
    let db = alice.db();
    let err = alice.fails(&["member", "remove", &f, "Alice"]);
    assert!(err.contains("last customer or owner"), "{err}");
    assert_eq!(alice.heads(&f), heads);
    assert_eq!(alice.db(), db, "a refused command writes nothing");
    // With an owner beside her, she may leave; then the owner is the last one.
    alice.json(&[
        "member",
        "add",
        &f,
        &tom.id(),
        "--role",
        "owner",
        "--name",
        "Tom",
    ]);
    alice.json(&["member", "remove", &f, "Alice"]);
    let shown = alice.json(&["flow", "show", &f]);
    assert_eq!(shown["my_role"], serde_json::Value::Null);
}
