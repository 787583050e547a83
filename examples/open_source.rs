//! An open-source project where the customers are also the producers: a user proposes a
//! feature, users and the maintainer vote on how to build it, contribute steps and do them,
//! and the user who asked confirms the need fulfilled.
//!
//!     cargo run --release --example open_source

use std::time::Duration;

use coflow::api::{Call, Reply};
use coflow::cluster::{spread, unexpected, InProcessNode, Member};
use coflow::flow::{Edit, FlowStatus, Mode, Role, StepStatus, Who};

fn main() -> coflow::Result<()> {
    coflow::cluster::init_logging();
    let root = std::env::temp_dir().join(format!("coflow-oss-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = play(&runtime, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn ticket(from: &dyn Member, flow: &str, role: Role, uses: i64) -> coflow::Result<String> {
    match from.call(Call::Invite {
        flow: flow.into(),
        role,
        expires_in: 3600,
        uses,
    })? {
        Reply::Invited(i) => Ok(i.ticket),
        other => Err(unexpected(other)),
    }
}

fn join(who: &dyn Member, ticket: &str) -> coflow::Result<()> {
    match who.call(Call::Join {
        ticket: ticket.into(),
    })? {
        Reply::Joined { .. } => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn play(runtime: &tokio::runtime::Runtime, root: &std::path::Path) -> coflow::Result<()> {
    let start = |name: &str, boot: Vec<libp2p::Multiaddr>| {
        InProcessNode::start(
            runtime.handle(),
            &root.join(name.to_lowercase()),
            name,
            boot,
        )
    };
    let uma = start("Uma", vec![])?;
    let boot: Vec<libp2p::Multiaddr> = vec![uma.addr()?.parse().expect("a multiaddr")];
    let max = start("Max", boot.clone())?;
    let ana = start("Ana", boot.clone())?;
    let ben = start("Ben", boot.clone())?;
    let cy = start("Cy", boot)?;
    let all: [&dyn Member; 5] = [&uma, &max, &ana, &ben, &cy];
    let settle = |from: &dyn Member, flow: &str| spread(&all, from, flow, Duration::from_secs(60));

    let flow = match uma.call(Call::FlowNew {
        title: "Offline maps".into(),
        need: "I want to use the map on the trail, where there is no connection".into(),
        role: Role::Customer,
    })? {
        Reply::Created { id } => id,
        other => return Err(unexpected(other)),
    };
    println!(
        "Uma, a user, proposes a feature: \"Offline maps\" (flow {}).",
        &flow[..8]
    );
    join(&max, &ticket(&uma, &flow, Role::Owner, 1)?)?;
    println!("Max, the maintainer, joins as owner.");
    let t = ticket(&uma, &flow, Role::Contributor, 3)?;
    for who in [&ana, &ben, &cy] {
        join(who, &t)?;
    }
    println!("Ana, Ben and Cy, users who code, join as contributors with one three-use ticket.");

    let decision = ana
        .edit(
            &flow,
            Edit::NewDecision {
                question: "How should offline maps work?".into(),
                options: vec![
                    "Download regions by hand".into(),
                    "Cache what you viewed".into(),
                    "Both".into(),
                ],
                who: Who::Members,
                mode: Mode::Vote,
                step: None,
            },
        )?
        .expect("a decision id");
    settle(&ana, &flow)?;
    println!("Ana asks everyone: \"How should offline maps work?\"");
    for (who, option) in [
        (&uma as &dyn Member, "Both"),
        (&max, "Download regions by hand"),
        (&ana, "Both"),
        (&ben, "Cache what you viewed"),
        (&cy, "Both"),
    ] {
        who.edit(
            &flow,
            Edit::Choose {
                decision: decision.clone(),
                option: option.into(),
            },
        )?;
        println!("  {} votes \"{option}\"", who.name());
    }
    settle(&cy, &flow)?;
    max.edit(&flow, Edit::CloseDecision { decision })?;
    let took = settle(&max, &flow)?;
    let view = cy.show(&flow)?;
    println!(
        "Max closes the vote; every node has the outcome \"{}\" ({} ms later).",
        view.flow.decisions[0].outcome.clone().unwrap_or_default(),
        took.as_millis()
    );

    // Contributors take on the work they offer.
    let mut steps = Vec::new();
    for (who, title) in [
        (&ana as &dyn Member, "Tile storage format"),
        (&ben, "Region download screen"),
        (&cy, "Cache eviction"),
    ] {
        let id = who
            .edit(
                &flow,
                Edit::AddStep {
                    title: title.into(),
                    detail: None,
                    assignee: Some(who.node_id().to_string()),
                    customer_involved: false,
                    due: None,
                },
            )?
            .expect("a step id");
        println!("  {} adds and takes the step \"{title}\"", who.name());
        steps.push((who, id));
    }
    settle(&cy, &flow)?;
    let (_, ana_step) = &steps[0];
    match ben.edit(
        &flow,
        Edit::SetStepStatus {
            step: ana_step.clone(),
            status: StepStatus::Done,
        },
    ) {
        Err(e) => println!("  Ben tries to mark Ana's step done; refused: {e}"),
        Ok(_) => {
            return Err(coflow::Error::Invalid(
                "a contributor moved another's step".into(),
            ))
        }
    }
    for (who, id) in &steps {
        who.edit(
            &flow,
            Edit::SetStepStatus {
                step: id.clone(),
                status: StepStatus::Done,
            },
        )?;
        who.edit(
            &flow,
            Edit::Comment {
                text: "Done, see the pull request.".into(),
                step: Some(id.clone()),
            },
        )?;
    }
    let release = max
        .edit(
            &flow,
            Edit::AddStep {
                title: "Release 2.3".into(),
                detail: None,
                assignee: Some(max.node_id().to_string()),
                customer_involved: true,
                due: None,
            },
        )?
        .expect("a step id");
    max.edit(
        &flow,
        Edit::SetStepStatus {
            step: release,
            status: StepStatus::Done,
        },
    )?;
    settle(&max, &flow)?;
    println!("The three steps are done and Max ships release 2.3.");
    uma.edit(
        &flow,
        Edit::Comment {
            text: "Tried it on the ridge trail: works.".into(),
            step: None,
        },
    )?;
    uma.edit(
        &flow,
        Edit::SetStatus {
            status: FlowStatus::Fulfilled,
        },
    )?;
    let took = settle(&uma, &flow)?;
    println!("Uma tries it on the trail and confirms her need fulfilled; all five nodes have it {} ms later.", took.as_millis());
    for m in all {
        match m.call(Call::FlowVerify { flow: flow.clone() })? {
            Reply::Verify(r) if r.invalid == 0 => {
                println!("  {:<4} verified {} changes", m.name(), r.valid)
            }
            other => return Err(unexpected(other)),
        }
    }
    Ok(())
}
