//! `coflow demo`: the tailor's story on three real nodes.
//!
//! Three `coflow node` processes (this same binary) run with their own data dirs under a
//! temporary directory and talk libp2p over loopback. The story is played through the control
//! API, exactly as the CLI would, and narrated: who did what on which node, and when the others
//! had it.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::api::{Call, ExportFormat, Reply};
use crate::cluster::{spread, Member, ProcessNode};
use crate::error::{Error, Result};
use crate::flow::{Edit, FlowStatus, Mode, Role, StepStatus, Who};
use crate::repo::FlowView;
use crate::text;

/// How long the demo waits for a change to reach the other nodes before giving up.
const PATIENCE: Duration = Duration::from_secs(30);

/// Prints a line of the story; a closed pipe (`| head`) does not stop the demo.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Waits until every other person's node holds the same heads as `from`'s; returns how long
/// that took.
fn received(people: &[&dyn Member], from: &dyn Member, flow: &str) -> Result<()> {
    let took = spread(people, from, flow, PATIENCE)?;
    let others: Vec<String> = people
        .iter()
        .filter(|p| p.name() != from.name())
        .map(|p| format!("{}'s node", p.name()))
        .collect();
    say(&format!(
        "      ↳ {} had it {} ms later",
        others.join(" and "),
        took.as_millis()
    ));
    Ok(())
}

fn step_id(view: &FlowView, title: &str) -> Result<String> {
    view.flow
        .steps
        .iter()
        .find(|s| s.title == title)
        .map(|s| s.id.clone())
        .ok_or_else(|| Error::Invalid(format!("no step '{title}'")))
}

/// Runs the demo. With `keep`, the data dirs stay and the output says how to look at them.
pub fn run(keep: bool) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("cannot find the coflow binary: {e}")))?;
    let root = std::env::temp_dir().join(format!("coflow-demo-{}", crate::flow::new_id()));
    let result = play(&exe, &root);
    if keep {
        say(&format!(
            "\nThe three data dirs are kept under {}. Look around with, for example:",
            root.display()
        ));
        for who in ["alice", "tom", "mill"] {
            say(&format!(
                "  coflow --home {} flow list",
                root.join(who).display()
            ));
        }
        say(&format!(
            "  coflow --home {} flow log <FLOW>   (and: flow show, flow verify, flow export --format mermaid)",
            root.join("alice").display()
        ));
        say(&format!(
            "See Alice's flow as she does, in the browser: coflow --home {} up",
            root.join("alice").display()
        ));
        say("Start a node on one of them with `coflow --home DIR node` to take it back online.");
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn play(exe: &Path, root: &Path) -> Result<()> {
    let mut nodes = Vec::new();
    say(
        "coflow demo — a customer's need, fulfilled by the people who fulfil it, with no server.\n",
    );
    for (name, what) in [
        ("Alice", "the customer"),
        ("Tom", "the tailor"),
        ("Mill", "the cloth mill"),
    ] {
        let node = ProcessNode::start(exe, &root.join(name.to_lowercase()), name)?;
        say(&format!(
            "  {name} ({what}) runs a node of its own: {}",
            crate::flow::short_id(node.node_id())
        ));
        nodes.push(node);
    }
    say("");
    tailor_story(&nodes[0], &nodes[1], &nodes[2])?;
    for node in nodes.iter_mut() {
        node.stop();
    }
    say("All three nodes stopped. Nothing is left running.");
    Ok(())
}

/// The tailor's story, told on any three nodes: Alice (customer), Tom (tailor), the mill.
pub fn tailor_story(alice: &dyn Member, tom: &dyn Member, mill: &dyn Member) -> Result<()> {
    // 1. The need.
    let Reply::Created { id: flow } = alice.call(Call::FlowNew {
        title: "Navy three-piece suit".into(),
        need: "A navy three-piece suit for my wedding in May".into(),
        role: Role::Customer,
    })?
    else {
        return Err(Error::Invalid("unexpected reply".into()));
    };
    say(&format!(
        "1. Alice writes down her need and starts flow {} on her node.",
        &flow[..8]
    ));
    say("   \"A navy three-piece suit for my wedding in May\"");

    // 2. The tailor joins by ticket.
    let Reply::Invited(inv) = alice.call(Call::Invite {
        flow: flow.clone(),
        role: Role::Owner,
        expires_in: 3600,
        uses: 1,
    })?
    else {
        return Err(Error::Invalid("unexpected reply".into()));
    };
    say(&format!(
        "2. She invites Tom as the owner of the work and hands him a ticket ({}…).",
        &inv.ticket[..24]
    ));
    let started = Instant::now();
    tom.call(Call::Join { ticket: inv.ticket })?;
    let v = tom.show(&flow)?;
    say(&format!(
        "   Tom's node redeems it at Alice's node and receives the flow with its signed history ({} ms).",
        started.elapsed().as_millis()
    ));
    say(&format!("   Members now: {}.", members(&v)));

    // 3. The tailor lays out the work.
    say("3. Tom lays out the steps:");
    let me_tom = tom.node_id().to_string();
    for (title, customer, assignee) in [
        ("Choose the cloth", true, None),
        ("Take measurements", true, Some(me_tom.clone())),
        ("Cut and baste", false, Some(me_tom.clone())),
        ("First fitting", true, Some(me_tom.clone())),
        ("Final fitting", true, Some(me_tom.clone())),
        ("Delivery", true, Some(me_tom.clone())),
    ] {
        tom.edit(
            &flow,
            Edit::AddStep {
                title: title.into(),
                detail: None,
                assignee,
                customer_involved: customer,
                due: None,
            },
        )?;
        say(&format!(
            "   + {title}{}",
            if customer { "  (with Alice)" } else { "" }
        ));
    }
    received(&[alice, tom], tom, &flow)?;
    let v = tom.show(&flow)?;
    let cloth = step_id(&v, "Choose the cloth")?;

    // 4. The customer decides.
    let decision = tom
        .edit(
            &flow,
            Edit::NewDecision {
                question: "Which cloth?".into(),
                options: vec![
                    "Navy wool, Super 120s".into(),
                    "Navy wool-linen".into(),
                    "Navy mohair blend".into(),
                ],
                who: Who::Customer,
                mode: Mode::Choice,
                step: Some(cloth.clone()),
            },
        )?
        .unwrap_or_default();
    say("4. Tom asks \"Which cloth?\" — a decision only Alice can make.");
    received(&[alice, tom], tom, &flow)?;
    match tom.edit(
        &flow,
        Edit::Choose {
            decision: decision.clone(),
            option: "Navy wool-linen".into(),
        },
    ) {
        Err(e) => say(&format!(
            "   Tom tries to choose for her; his own node refuses: {}",
            text::one_line(&e.to_string())
        )),
        Ok(_) => {
            return Err(Error::Invalid(
                "the owner must not choose for the customer".into(),
            ))
        }
    }
    alice.edit(
        &flow,
        Edit::Choose {
            decision,
            option: "Navy wool, Super 120s".into(),
        },
    )?;
    alice.edit(
        &flow,
        Edit::SetStepStatus {
            step: cloth.clone(),
            status: StepStatus::Done,
        },
    )?;
    say("   Alice chooses \"Navy wool, Super 120s\" and marks the step done.");
    received(&[alice, tom], alice, &flow)?;

    // 5. The mill joins, through the customer's node, while the tailor is busy.
    let Reply::Invited(inv) = alice.call(Call::Invite {
        flow: flow.clone(),
        role: Role::Contributor,
        expires_in: 3600,
        uses: 1,
    })?
    else {
        return Err(Error::Invalid("unexpected reply".into()));
    };
    mill.call(Call::Join { ticket: inv.ticket })?;
    say("5. Alice invites the cloth mill; the mill joins with her ticket, through her node.");
    mill.edit(
        &flow,
        Edit::Comment {
            text: "3.5 m of navy Super 120s reserved; it ships on Monday.".into(),
            step: Some(cloth),
        },
    )?;
    say("   The mill comments: \"3.5 m of navy Super 120s reserved; it ships on Monday.\"");
    received(&[alice, tom, mill], mill, &flow)?;

    // 6. The work and the fittings.
    say("6. The work goes on:");
    let v = tom.show(&flow)?;
    for title in ["Take measurements", "Cut and baste", "First fitting"] {
        let id = step_id(&v, title)?;
        tom.edit(
            &flow,
            Edit::SetStepStatus {
                step: id.clone(),
                status: StepStatus::Active,
            },
        )?;
        tom.edit(
            &flow,
            Edit::SetStepStatus {
                step: id,
                status: StepStatus::Done,
            },
        )?;
        say(&format!("   Tom: {title} — done"));
    }
    let first = step_id(&v, "First fitting")?;
    alice.edit(
        &flow,
        Edit::Comment {
            text: "The shoulders feel a little tight.".into(),
            step: Some(first.clone()),
        },
    )?;
    say("   Alice, after the first fitting: \"The shoulders feel a little tight.\"");
    received(&[alice, tom, mill], alice, &flow)?;
    tom.edit(
        &flow,
        Edit::Comment {
            text: "Let out 1 cm at each shoulder; see you at the final fitting.".into(),
            step: Some(first),
        },
    )?;
    say("   Tom: \"Let out 1 cm at each shoulder; see you at the final fitting.\"");
    for title in ["Final fitting", "Delivery"] {
        let id = step_id(&v, title)?;
        tom.edit(
            &flow,
            Edit::SetStepStatus {
                step: id,
                status: StepStatus::Done,
            },
        )?;
        say(&format!("   Tom: {title} — done"));
    }
    received(&[alice, tom, mill], tom, &flow)?;

    // 7. Only the customer closes the loop.
    match tom.edit(
        &flow,
        Edit::SetStatus {
            status: FlowStatus::Fulfilled,
        },
    ) {
        Err(e) => say(&format!(
            "7. Tom cannot declare the need fulfilled: {}",
            text::one_line(&e.to_string())
        )),
        Ok(_) => return Err(Error::Invalid("the owner must not fulfil the flow".into())),
    }
    alice.edit(
        &flow,
        Edit::SetStatus {
            status: FlowStatus::Fulfilled,
        },
    )?;
    say("   Alice confirms: her need is fulfilled.");
    received(&[alice, tom, mill], alice, &flow)?;

    // 8. The record: verified on every node.
    say("\n8. Every node re-verifies the whole history (signature, dependencies, role of each change):");
    for p in [alice, tom, mill] {
        let Reply::Verify(r) = p.call(Call::FlowVerify { flow: flow.clone() })? else {
            return Err(Error::Invalid("unexpected reply".into()));
        };
        let status = p.show(&flow)?.flow.status;
        say(&format!(
            "   {:<5} {} changes, {} valid, {} invalid; status {}",
            p.name(),
            r.changes,
            r.valid,
            r.invalid,
            status
        ));
        if r.invalid > 0 || status != FlowStatus::Fulfilled {
            return Err(Error::Invalid(format!("{}'s copy is wrong", p.name())));
        }
    }
    let Reply::Log(log) = alice.call(Call::FlowLog { flow: flow.clone() })? else {
        return Err(Error::Invalid("unexpected reply".into()));
    };
    say("\nThe history, as Alice's node holds it:");
    for e in &log {
        // The author as the flow's member records know them; the summary is what the change's
        // operations did.
        let who = match e.role {
            Some(role) => format!(
                "{} ({role}, {})",
                text::name(&e.name),
                crate::flow::short_id(&e.author)
            ),
            None => format!("{} (not a member)", crate::flow::short_id(&e.author)),
        };
        say(&format!(
            "   {}  {:<30} {}",
            text::one_line(e.hash.get(..10).unwrap_or(&e.hash)),
            who,
            text::one_line(&e.summary)
        ));
    }
    let Reply::Export { hex } = alice.call(Call::FlowExport {
        flow: flow.clone(),
        format: ExportFormat::Mermaid,
    })?
    else {
        return Err(Error::Invalid("unexpected reply".into()));
    };
    say("\nThe process, as a Mermaid diagram:\n");
    say(&text::block(&String::from_utf8_lossy(
        &crate::identity::unhex(&hex).unwrap_or_default(),
    )));
    Ok(())
}

fn members(v: &FlowView) -> String {
    v.flow
        .members
        .iter()
        .filter(|m| !m.removed)
        .map(text::member)
        .collect::<Vec<_>>()
        .join(", ")
}
