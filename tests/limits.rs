//! Bounded content: every text field has a limit and so has a change, enforced when a change
//! is made (one clear error, nothing stored) and when one is received (refused). Before, a
//! 7.5 MiB comment was accepted locally and could never be sent.

mod common;

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc, ROOT};
use coflow::auth::Rejection;
use coflow::flow::{limit, Edit, Role};
use coflow::repo::Repo;
use coflow::store::Store;
use common::{alice, carl, Sim};

fn comment(text: String) -> Edit {
    Edit::Comment { text, step: None }
}

#[test]
fn a_local_edit_over_a_limit_is_one_clear_error_and_stores_nothing() {
    let mut repo = Repo::new(Store::in_memory().unwrap(), alice());
    let flow = repo
        .create_flow("Navy suit", "A suit", Role::Customer)
        .unwrap();
    let heads = repo.show(flow.as_str()).unwrap().heads;
    let err = repo
        .edit(flow.as_str(), &comment("x".repeat(limit::LONG_TEXT + 1)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("over the limit of 10000"), "{err}");
    let err = repo
        .edit(
            flow.as_str(),
            &Edit::SetTitle {
                title: "t".repeat(limit::SHORT_TEXT + 1),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("over the limit of 500"), "{err}");
    assert_eq!(repo.show(flow.as_str()).unwrap().heads, heads);
    // At the limit is fine.
    repo.edit(flow.as_str(), &comment("x".repeat(limit::LONG_TEXT)))
        .unwrap();
    let big = repo.create_flow(&"t".repeat(limit::SHORT_TEXT + 1), "need", Role::Customer);
    assert!(big.is_err(), "a flow cannot start with an over-long title");
}

#[test]
fn a_received_change_over_a_text_limit_is_refused() {
    let mut sim = Sim::tailor();
    let c = sim.edit_change(&carl(), comment("y".repeat(limit::LONG_TEXT + 1)));
    let heads = sim.heads();
    match sim.receive(&[c]) {
        Err(Rejection::Forbidden(f)) => assert!(f.0.contains("over the limit"), "{f}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(sim.heads(), heads);
}

#[test]
fn a_received_change_over_the_size_limit_is_refused_before_it_is_parsed() {
    let mut sim = Sim::tailor();
    // Many short comments in one change: every text within its limit, the change not.
    let c = sim.make(&carl(), |tx, _| {
        let comments = tx.get(ROOT, "comments").unwrap().unwrap().1;
        // Text that does not compress: Automerge deflates its columns.
        let mut rng = common::Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..2_000 {
            let m = tx.insert_object(&comments, i, ObjType::Map).unwrap();
            tx.put(&m, "id", format!("{i:016x}")).unwrap();
            tx.put(&m, "author", carl().node_id().to_string()).unwrap();
            let text: String = (0..25).map(|_| format!("{:016x}", rng.next())).collect();
            tx.put(&m, "text", text).unwrap();
        }
    });
    assert!(
        c.bytes.len() > limit::CHANGE_BYTES,
        "{} bytes",
        c.bytes.len()
    );
    let heads = sim.heads();
    assert!(matches!(sim.receive(&[c]), Err(Rejection::TooLarge(_))));
    assert_eq!(sim.heads(), heads);
}
