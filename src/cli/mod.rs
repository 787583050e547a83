//! The command line: clap definitions and dispatch. Data goes to stdout (human text, or JSON
//! with `--json`), messages to stderr. Exit 0 ok, 1 error, 2 usage.

mod print;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::{Error, Result};
use crate::flow::{Edit, FlowStatus, Mode, Role, StepStatus, Who};
use crate::identity::Identity;
use crate::repo::Repo;

#[derive(Parser, Debug)]
#[command(
    name = "coflow",
    version,
    about = "Shared customer flows, peer to peer"
)]
pub struct Cli {
    /// Data directory (default: $COFLOW_HOME, else the platform data dir).
    #[arg(long, global = true, env = "COFLOW_HOME")]
    pub home: Option<PathBuf>,
    /// Print data as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create this node's key (refuses to overwrite one).
    Init {
        #[arg(long)]
        name: String,
    },
    /// Print this node's id and name.
    Id,
    /// Work with flows.
    #[command(subcommand)]
    Flow(FlowCmd),
    /// Add or remove members.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Add steps and move them along.
    #[command(subcommand)]
    Step(StepCmd),
    /// Comment on a flow or one of its steps.
    Comment {
        flow: String,
        text: String,
        #[arg(long)]
        step: Option<String>,
    },
    /// Open decisions and choose.
    #[command(subcommand)]
    Decision(DecisionCmd),
}

#[derive(Subcommand, Debug)]
pub enum FlowCmd {
    /// Start a flow from a customer's need.
    New {
        title: String,
        #[arg(long)]
        need: String,
        /// Your role in the new flow.
        #[arg(long = "as", default_value = "customer", value_parser = parse_creator_role)]
        role: Role,
    },
    /// List the flows this node holds.
    List,
    /// Show a flow.
    Show { flow: String },
    /// The flow's history: every change, who made it, when.
    Log { flow: String },
    /// Re-check every stored change: signature, dependencies, and the role policy.
    Verify { flow: String },
    /// Export a flow.
    Export(ExportArgs),
    /// Confirm the need fulfilled (customers only).
    Fulfil { flow: String },
    /// Close the flow without fulfilment.
    Close { flow: String },
    /// Reopen a closed or fulfilled flow.
    Reopen { flow: String },
    /// Change the title or the need.
    Edit {
        flow: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        need: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    pub flow: String,
    #[arg(long, value_parser = ["json", "automerge", "dot", "mermaid"])]
    pub format: String,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// Add a member by node id.
    Add {
        flow: String,
        node_id: String,
        #[arg(long, value_parser = parse_enum::<Role>)]
        role: Role,
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a member (by node id prefix or name).
    Remove { flow: String, member: String },
}

#[derive(Subcommand, Debug)]
pub enum StepCmd {
    /// Add a step at the end of the flow.
    Add {
        flow: String,
        title: String,
        /// Node id (or unique prefix, or name) of the member doing the step.
        #[arg(long)]
        assignee: Option<String>,
        /// The customer takes part in this step.
        #[arg(long)]
        customer: bool,
        #[arg(long)]
        detail: Option<String>,
        #[arg(long)]
        due: Option<String>,
    },
    /// Mark a step active.
    Start { flow: String, step: String },
    /// Mark a step waiting.
    Wait { flow: String, step: String },
    /// Mark a step done.
    Done { flow: String, step: String },
    /// Skip a step.
    Skip { flow: String, step: String },
    /// Set a step back to todo.
    Reopen { flow: String, step: String },
    /// Assign a step to a member.
    Assign {
        flow: String,
        step: String,
        node_id: String,
    },
    /// Remove a step's assignee.
    Unassign { flow: String, step: String },
}

#[derive(Subcommand, Debug)]
pub enum DecisionCmd {
    /// Open a decision.
    New {
        flow: String,
        question: String,
        #[arg(long = "option", required = true)]
        options: Vec<String>,
        /// Who chooses.
        #[arg(long, default_value = "customer", value_parser = parse_enum::<Who>)]
        who: Who,
        /// Tally every eligible member's vote until the decision is closed.
        #[arg(long)]
        vote: bool,
        /// The step the decision belongs to.
        #[arg(long)]
        step: Option<String>,
    },
    /// Choose (or vote for) an option.
    Choose {
        flow: String,
        decision: String,
        option: String,
    },
    /// Close a vote; its outcome is the option with the most votes.
    Close { flow: String, decision: String },
}

fn parse_enum<T: std::str::FromStr<Err = String>>(s: &str) -> std::result::Result<T, String> {
    s.parse()
}

fn parse_creator_role(s: &str) -> std::result::Result<Role, String> {
    match s.parse::<Role>()? {
        r @ (Role::Customer | Role::Owner) => Ok(r),
        _ => Err("a flow's creator is its customer or its owner".into()),
    }
}

/// The data dir: `--home`, `$COFLOW_HOME`, else the platform data dir.
pub fn home_dir(cli: &Cli) -> Result<PathBuf> {
    if let Some(h) = &cli.home {
        return Ok(h.clone());
    }
    directories::ProjectDirs::from("", "", "coflow")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| Error::Invalid("no home directory; pass --home DIR".into()))
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    let home = home_dir(&cli)?;
    let json = cli.json;
    let out = print::Out { json };
    match cli.command {
        Command::Init { name } => {
            let id = Identity::create(&home, &name)?;
            eprintln!("created identity '{}' in {}", id.name(), home.display());
            out.id(&id)
        }
        Command::Id => out.id(&Identity::load(&home)?),
        Command::Flow(cmd) => flow_cmd(&mut Repo::open(&home)?, &out, cmd),
        Command::Member(cmd) => {
            let mut repo = Repo::open(&home)?;
            let (flow, edit) = match cmd {
                MemberCmd::Add {
                    flow,
                    node_id,
                    role,
                    name,
                } => (
                    flow,
                    Edit::AddMember {
                        node_id,
                        role,
                        name,
                    },
                ),
                MemberCmd::Remove { flow, member } => (flow, Edit::RemoveMember { member }),
            };
            out.edited(&repo.edit(&flow, &edit)?)
        }
        Command::Step(cmd) => {
            let mut repo = Repo::open(&home)?;
            let status = |flow, step, status| (flow, Edit::SetStepStatus { step, status });
            let (flow, edit) = match cmd {
                StepCmd::Add {
                    flow,
                    title,
                    assignee,
                    customer,
                    detail,
                    due,
                } => (
                    flow,
                    Edit::AddStep {
                        title,
                        detail,
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
                } => (
                    flow,
                    Edit::AssignStep {
                        step,
                        assignee: Some(node_id),
                    },
                ),
                StepCmd::Unassign { flow, step } => (
                    flow,
                    Edit::AssignStep {
                        step,
                        assignee: None,
                    },
                ),
            };
            out.edited(&repo.edit(&flow, &edit)?)
        }
        Command::Comment { flow, text, step } => {
            let mut repo = Repo::open(&home)?;
            out.edited(&repo.edit(&flow, &Edit::Comment { text, step })?)
        }
        Command::Decision(cmd) => {
            let mut repo = Repo::open(&home)?;
            let (flow, edit) = match cmd {
                DecisionCmd::New {
                    flow,
                    question,
                    options,
                    who,
                    vote,
                    step,
                } => (
                    flow,
                    Edit::NewDecision {
                        question,
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
                } => (flow, Edit::Choose { decision, option }),
                DecisionCmd::Close { flow, decision } => (flow, Edit::CloseDecision { decision }),
            };
            out.edited(&repo.edit(&flow, &edit)?)
        }
    }
}

fn flow_cmd(repo: &mut Repo, out: &print::Out, cmd: FlowCmd) -> Result<()> {
    let set_status = |repo: &mut Repo, flow: &str, status| -> Result<()> {
        out.edited(&repo.edit(flow, &Edit::SetStatus { status })?)
    };
    match cmd {
        FlowCmd::New { title, need, role } => {
            let id = repo.create_flow(&title, &need, role)?;
            out.created_flow(&id)
        }
        FlowCmd::List => out.flows(&repo.list()?),
        FlowCmd::Show { flow } => out.flow(&repo.show(&flow)?),
        FlowCmd::Log { flow } => out.log(&repo.log(&flow)?),
        FlowCmd::Verify { flow } => {
            let report = repo.verify(&flow)?;
            out.verify(&report)?;
            if report.invalid > 0 || !report.heads_match {
                return Err(Error::Invalid(format!(
                    "{} of {} stored changes failed verification",
                    report.invalid, report.changes
                )));
            }
            Ok(())
        }
        FlowCmd::Export(args) => {
            let view = repo.show(&args.flow)?;
            let bytes = match args.format.as_str() {
                "json" => {
                    let mut v = serde_json::to_vec_pretty(&view).expect("serializes");
                    v.push(b'\n');
                    v
                }
                "automerge" => repo.load(&view.flow.id)?.save(),
                "dot" => crate::export::dot(&view.flow).into_bytes(),
                _ => crate::export::mermaid(&view.flow).into_bytes(),
            };
            match args.output {
                Some(path) => {
                    std::fs::write(&path, &bytes).map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                    eprintln!("wrote {} bytes to {}", bytes.len(), path.display());
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    stdout
                        .write_all(&bytes)
                        .and_then(|_| stdout.flush())
                        .map_err(|source| Error::Io {
                            path: "stdout".into(),
                            source,
                        })?;
                }
            }
            Ok(())
        }
        FlowCmd::Fulfil { flow } => set_status(repo, &flow, FlowStatus::Fulfilled),
        FlowCmd::Close { flow } => set_status(repo, &flow, FlowStatus::Closed),
        FlowCmd::Reopen { flow } => set_status(repo, &flow, FlowStatus::Open),
        FlowCmd::Edit { flow, title, need } => {
            if title.is_none() && need.is_none() {
                return Err(Error::Invalid("give --title or --need (or both)".into()));
            }
            if let Some(title) = title {
                out.edited(&repo.edit(&flow, &Edit::SetTitle { title })?)?;
            }
            if let Some(need) = need {
                out.edited(&repo.edit(&flow, &Edit::SetNeed { need })?)?;
            }
            Ok(())
        }
    }
}
