//! Which control API call each command makes (the commands [`super::run`] does not handle
//! itself).

use super::*;

/// The API call a command makes.
pub(super) fn to_call(command: Command) -> Result<Call> {
    let edit = |flow: String, edit: Edit| Call::Edit { flow, edit };
    let status =
        |flow: String, step: String, status| edit(flow, Edit::SetStepStatus { step, status });
    Ok(match command {
        Command::Id => Call::Id,
        Command::Status => Call::Status,
        Command::Peers => Call::Peers,
        Command::Stats => Call::Stats,
        Command::Flow(cmd) => match cmd {
            FlowCmd::New { title, need, role } => Call::FlowNew {
                title: text_arg(title)?,
                need: text_arg(need)?,
                role,
            },
            FlowCmd::List => Call::FlowList,
            FlowCmd::Show { flow } => Call::FlowShow { flow },
            FlowCmd::Log { flow } => Call::FlowLog { flow },
            FlowCmd::Close { flow } => edit(
                flow,
                Edit::SetStatus {
                    status: FlowStatus::Closed,
                },
            ),
            FlowCmd::Reopen { flow } => edit(
                flow,
                Edit::SetStatus {
                    status: FlowStatus::Open,
                },
            ),
            FlowCmd::Invite(args) => match args.action {
                Some(InviteAction::Revoke { flow, invite }) => {
                    edit(flow, Edit::RevokeInvite { invite })
                }
                Some(InviteAction::List { .. }) => unreachable!("handled in run"),
                None => Call::Invite {
                    flow: args.flow.expect("clap requires FLOW"),
                    role: args.role.expect("clap requires --role"),
                    expires_in: args.expires,
                    uses: args.uses,
                },
            },
            FlowCmd::Join { ticket } => Call::Join { ticket },
            FlowCmd::Accept { flow } => Call::FlowAccept { flow },
            FlowCmd::Decline { flow } => Call::FlowDecline { flow },
            FlowCmd::Export(_)
            | FlowCmd::Edit { .. }
            | FlowCmd::Verify { .. }
            | FlowCmd::Fulfil { .. } => {
                unreachable!("handled in run")
            }
        },
        Command::Member(cmd) => match cmd {
            MemberCmd::Add {
                flow,
                node_id,
                role,
                name,
            } => edit(
                flow,
                Edit::AddMember {
                    node_id,
                    role,
                    name,
                },
            ),
            MemberCmd::Remove { flow, member } => edit(flow, Edit::RemoveMember { member }),
        },
        Command::Step(cmd) => match cmd {
            StepCmd::Show { .. } => unreachable!("handled in run"),
            StepCmd::Add {
                flow,
                title,
                assignee,
                customer,
                detail,
                due,
            } => edit(
                flow,
                Edit::AddStep {
                    title: text_arg(title)?,
                    detail: detail.map(text_arg).transpose()?,
                    assignee,
                    customer_involved: customer,
                    due,
                },
            ),
            StepCmd::Start { flow, step } => status(flow, step, StepStatus::Active),
            StepCmd::Wait { flow, step } => status(flow, step, StepStatus::Waiting),
            StepCmd::Done { flow, step } => status(flow, step, StepStatus::Done),
            StepCmd::Skip { flow, step } => status(flow, step, StepStatus::Skipped),
            StepCmd::Reopen { flow, step } => status(flow, step, StepStatus::Todo),
            StepCmd::Assign {
                flow,
                step,
                node_id,
            } => edit(
                flow,
                Edit::AssignStep {
                    step,
                    assignee: Some(node_id),
                },
            ),
            StepCmd::Unassign { flow, step } => edit(
                flow,
                Edit::AssignStep {
                    step,
                    assignee: None,
                },
            ),
        },
        Command::Comment { flow, text, step } => edit(
            flow,
            Edit::Comment {
                text: text_arg(text)?,
                step,
            },
        ),
        Command::Decision(cmd) => match cmd {
            DecisionCmd::Show { .. } => unreachable!("handled in run"),
            DecisionCmd::New {
                flow,
                question,
                options,
                who,
                vote,
                step,
            } => edit(
                flow,
                Edit::NewDecision {
                    question: text_arg(question)?,
                    options,
                    who,
                    mode: if vote { Mode::Vote } else { Mode::Choice },
                    step,
                },
            ),
            DecisionCmd::Choose {
                flow,
                decision,
                option,
            } => edit(flow, Edit::Choose { decision, option }),
            DecisionCmd::Close { flow, decision } => edit(flow, Edit::CloseDecision { decision }),
        },
        Command::Init { .. }
        | Command::Node(_)
        | Command::Up(_)
        | Command::Open
        | Command::Demo { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Config(_)
        | Command::Doctor => {
            unreachable!("handled in run")
        }
    })
}
