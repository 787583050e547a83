//! The command line's grammar: every command, argument and its help text (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::api::ExportFormat;
use crate::flow::{Role, Who};

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
    /// With no command: `coflow up`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create this node's key and its empty store (refuses to overwrite either).
    Init {
        /// Your name, as the members of your flows see it.
        #[arg(long, required_unless_present = "new_store")]
        name: Option<String>,
        /// Keep the existing key and create an empty store next to it: for a node whose
        /// database was lost and will not be restored from a backup (its flows are gone from
        /// this node; members can invite it again). Refuses to replace a store.
        #[arg(long, conflicts_with = "name")]
        new_store: bool,
    },
    /// Print this node's id and name.
    Id,
    /// Start the node and open its page in the browser (what `coflow` alone does). With no key
    /// yet, the page first asks for a name. Ctrl-C or SIGTERM stops it cleanly.
    Up(UpArgs),
    /// Open the running node's page in the default browser, logged in (prints its URL too).
    Open,
    /// Run the node in the foreground, serving its page too (Ctrl-C or SIGTERM stops it cleanly).
    Node(NodeArgs),
    /// The tailor's story on three real nodes on this machine, narrated.
    Demo {
        /// Keep the three data dirs and print how to inspect them.
        #[arg(long)]
        keep: bool,
    },
    /// Whether the node runs, where it listens, how many peers and flows.
    Status,
    /// Peers: connected now, and remembered.
    Peers,
    /// The running node's sync counters (messages, bytes, announcements) and, with `--json`,
    /// when each recently received change arrived.
    Stats,
    /// Check the data dir: the key file (permissions, format, checksum), the configuration,
    /// the database (SQLite's integrity check) and that the database is this key's. Exit 1 if
    /// anything is wrong.
    Doctor,
    /// The node's configuration (`config.toml` in the data dir).
    #[command(subcommand)]
    Config(ConfigCmd),
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
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// What you say (`-`: read it from stdin).
        text: String,
        /// The step the comment is about.
        #[arg(long)]
        step: Option<String>,
    },
    /// Open decisions and choose.
    #[command(subcommand)]
    Decision(DecisionCmd),
    /// Print a completion script for a shell, e.g. `coflow completions bash >
    /// ~/.local/share/bash-completion/completions/coflow`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff: `coflow man | man -l -`), or write one page per command.
    Man {
        /// Write `coflow.1` and a page for every command (`coflow-flow-show.1`, …) into this
        /// directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FlowCmd {
    /// Start a flow from a customer's need.
    New {
        /// A short title (`-`: read it from stdin).
        title: String,
        /// The customer's need, in the customer's own words (`-`: read it from stdin).
        #[arg(long)]
        need: String,
        /// Your role in the new flow.
        #[arg(long = "as", default_value = "customer", value_parser = parse_creator_role)]
        role: Role,
    },
    /// List the flows this node holds, and those offered to it that wait for an answer.
    List,
    /// Show a flow.
    Show {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
    },
    /// The flow's history: every change, who made it, when.
    Log {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
    },
    /// Re-check every stored change: signature, dependencies, and the role policy.
    Verify {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
    },
    /// Export a flow.
    Export(ExportArgs),
    /// Confirm the need fulfilled (customers only). With steps or decisions still open, a
    /// terminal is asked to confirm; a script must pass `--force`.
    Fulfil {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// Confirm even though steps or decisions are still open.
        #[arg(long)]
        force: bool,
    },
    /// Close the flow without fulfilment.
    Close {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
    },
    /// Reopen a closed or fulfilled flow.
    Reopen {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
    },
    /// Invite someone: prints a ticket (`flow invite revoke FLOW INVITE` revokes one).
    Invite(InviteArgs),
    /// Join a flow with a ticket (needs the node running).
    Join {
        /// The ticket (`coflow1…`) the inviter sent, or a page link with one after `#`.
        ticket: String,
    },
    /// Take part in a flow someone added this node to (`flow list` shows those waiting).
    Accept {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
    },
    /// Turn down a flow someone added this node to: what arrived of it is deleted, and its
    /// members' further offers of it are turned away.
    Decline {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
    },
    /// Change the title or the need.
    Edit {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The new title (`-`: read it from stdin).
        #[arg(long)]
        title: Option<String>,
        /// The new need, in the customer's own words (`-`: read it from stdin).
        #[arg(long)]
        need: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the effective configuration (the file's values over the defaults).
    Show,
}

#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// Address to listen on (repeatable; replaces the config's `listen`); default: all IPv4
    /// interfaces, the port used last time.
    #[arg(long)]
    pub listen: Vec<libp2p::Multiaddr>,
    /// Address of a node to connect to at start (repeatable; replaces the config's
    /// `bootstrap`), e.g. /ip4/1.2.3.4/tcp/4001/p2p/12D3…
    #[arg(long)]
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// An address others reach this node at that it cannot find out itself, such as a port
    /// forwarded on the router (repeatable; replaces the config's `external`).
    #[arg(long, value_name = "ADDR")]
    pub external: Vec<libp2p::Multiaddr>,
    /// Do not discover peers on the local network.
    #[arg(long)]
    pub no_mdns: bool,
    /// Serve the page on this loopback address (replaces the config's `web.listen`), e.g.
    /// 127.0.0.1:7780; port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    pub web: Option<std::net::SocketAddr>,
    /// Do not serve the page.
    #[arg(long, conflicts_with = "web")]
    pub no_web: bool,
}

#[derive(Args, Debug, Default)]
pub struct UpArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Do not open a browser (the page's URL is printed on stdout either way).
    #[arg(long)]
    pub no_open: bool,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct InviteArgs {
    #[command(subcommand)]
    pub action: Option<InviteAction>,
    /// The flow: its id, or any unique prefix of it.
    #[arg(required = true)]
    pub flow: Option<String>,
    /// The role the invitee gets.
    #[arg(long, required = true, value_parser = parse_enum::<Role>)]
    pub role: Option<Role>,
    /// How long the ticket stays valid: 30m, 12h, 7d, 2w…
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub expires: i64,
    /// How many people may join with it.
    #[arg(long, default_value_t = 1)]
    pub uses: i64,
}

#[derive(Subcommand, Debug)]
pub enum InviteAction {
    /// List the flow's invites: role, uses left, expiry, and whether each is still open.
    List {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
    },
    /// Revoke an invite so its ticket no longer works.
    Revoke {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The invite: its id (the ticket names it), or any unique prefix of it.
        invite: String,
    },
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The flow: its id, or any unique prefix of it.
    pub flow: String,
    /// `json`: the flow as `flow show --json` reads it; `automerge`: the whole document with its
    /// history; `dot`, `mermaid`: a diagram of its steps and decisions.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// Add a member by node id.
    Add {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The new member's node id (`coflow id` on their machine prints it).
        node_id: String,
        /// customer, owner, contributor or observer.
        #[arg(long, value_parser = parse_enum::<Role>)]
        role: Role,
        /// What to call them until their node tells their own name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a member (by node id prefix or name).
    Remove {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The member: a unique prefix of their node id, or their name.
        member: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum StepCmd {
    /// Show one step: its detail, due date, assignee, and the comments and decisions about it.
    Show {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The step: its id, or any unique prefix of it.
        step: String,
    },
    /// Add a step at the end of the flow.
    Add {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// What is to be done (`-`: read it from stdin).
        title: String,
        /// Node id (or unique prefix, or name) of the member doing the step.
        #[arg(long)]
        assignee: Option<String>,
        /// The customer takes part in this step.
        #[arg(long)]
        customer: bool,
        /// More about the step (`-`: read it from stdin).
        #[arg(long)]
        detail: Option<String>,
        /// When it is due.
        #[arg(long)]
        due: Option<String>,
    },
    /// Mark a step active.
    Start {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The step: its id, or any unique prefix of it.
        step: String,
    },
    /// Mark a step waiting.
    Wait {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The step: its id, or any unique prefix of it.
        step: String,
    },
    /// Mark a step done.
    Done {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The step: its id, or any unique prefix of it.
        step: String,
    },
    /// Skip a step.
    Skip {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The step: its id, or any unique prefix of it.
        step: String,
    },
    /// Set a step back to todo.
    Reopen {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The step: its id, or any unique prefix of it.
        step: String,
    },
    /// Assign a step to a member.
    Assign {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The step: its id, or any unique prefix of it.
        step: String,
        /// The member doing it: a unique prefix of their node id, or their name.
        node_id: String,
    },
    /// Remove a step's assignee.
    Unassign {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The step: its id, or any unique prefix of it.
        step: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DecisionCmd {
    /// Show one decision: who chooses, the options and their votes, who chose what, and the
    /// outcome.
    Show {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The decision: its id, or any unique prefix of it.
        decision: String,
    },
    /// Open a decision.
    New {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// What is to be decided (`-`: read it from stdin).
        question: String,
        /// An option to choose from (repeat for each).
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
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The decision: its id, or any unique prefix of it.
        decision: String,
        /// The option: as written, or any unique prefix of it.
        option: String,
    },
    /// Close a vote; its outcome is the option with the most votes.
    Close {
        /// The flow: its id, or any unique prefix of it.
        flow: String,
        /// The decision: its id, or any unique prefix of it.
        decision: String,
    },
}

fn parse_enum<T: std::str::FromStr<Err = String>>(s: &str) -> std::result::Result<T, String> {
    s.parse()
}

/// Parses 90s, 30m, 12h, 7d, 2w (or plain seconds) into seconds.
fn parse_duration(s: &str) -> std::result::Result<i64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 30m, 12h, 7d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("'{s}' is not a duration (try 30m, 12h, 7d)")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("'{s}' is not a usable duration"))
}

fn parse_creator_role(s: &str) -> std::result::Result<Role, String> {
    match s.parse::<Role>()? {
        r @ (Role::Customer | Role::Owner) => Ok(r),
        _ => Err("a flow's creator is its customer or its owner".into()),
    }
}
