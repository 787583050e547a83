//! The command line: clap definitions and dispatch. Data goes to stdout (human text, or JSON
//! with `--json`), messages to stderr. Exit 0 ok, 1 error, 2 usage.

mod call;
mod doctor;
mod manual;
mod print;
mod show;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::api::{self, Call, ExportFormat, Reply};
use crate::error::{Error, Result};
use crate::flow::{Edit, FlowStatus, Mode, Role, StepStatus, Who};
use crate::identity::Identity;

pub use manual::json_error;

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

/// Most bytes a text argument read from stdin may have (the flow's own limits are far lower,
/// and refuse what is over them with their own message).
const MAX_STDIN_TEXT: u64 = 1024 * 1024;

/// A text argument as given, or, given as `-`, read from stdin (one trailing newline dropped).
/// Stdin can be read once per command.
fn text_arg(arg: String) -> Result<String> {
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};
    static STDIN_TAKEN: AtomicBool = AtomicBool::new(false);
    if arg != "-" {
        return Ok(arg);
    }
    if STDIN_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(Error::Invalid(
            "only one argument can be read from stdin (`-`)".into(),
        ));
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_TEXT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Invalid(format!("cannot read the text from stdin: {e}")))?;
    if bytes.len() as u64 > MAX_STDIN_TEXT {
        return Err(Error::Invalid(format!(
            "the text on stdin is over {MAX_STDIN_TEXT} bytes"
        )));
    }
    let mut text = String::from_utf8(bytes)
        .map_err(|_| Error::Invalid("the text on stdin is not UTF-8".into()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
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

/// The data dir: `--home`, `$COFLOW_HOME`, else the platform data dir.
pub fn home_dir(cli: &Cli) -> Result<PathBuf> {
    match &cli.home {
        Some(h) => Ok(h.clone()),
        None => default_home(),
    }
}

/// The platform's data dir for coflow.
fn default_home() -> Result<PathBuf> {
    directories::ProjectDirs::from("", "", "coflow")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| Error::Invalid("no home directory; pass --home DIR".into()))
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    let command = cli.command.unwrap_or(Command::Up(UpArgs::default()));
    match command {
        Command::Demo { keep } => return crate::demo::run(keep),
        Command::Completions { shell } => return manual::completions(shell),
        Command::Man { dir } => return manual::man(dir),
        _ => {}
    }
    let home = match &cli.home {
        Some(h) => h.clone(),
        None => default_home()?,
    };
    let out = print::Out { json: cli.json };
    match command {
        Command::Init {
            new_store: true, ..
        } => {
            let repo = crate::repo::Repo::new_store(&home)?;
            let id = repo.identity();
            eprintln!(
                "created an empty store for '{}' in {}",
                id.name(),
                home.display()
            );
            out.id(id.node_id().as_str(), id.name())
        }
        Command::Init { name, .. } => {
            // A node running on a data dir with no key waits for its page to name it.
            if let Ok(lock) = std::fs::File::open(home.join(api::LOCK_FILE)) {
                if lock.try_lock_shared().is_err() {
                    return Err(Error::Invalid(
                        "a node runs for this data dir: choose the name on its page                          (`coflow open`), or stop it first"
                            .into(),
                    ));
                }
            }
            let identity = Identity::fresh(name.as_deref().unwrap_or_default())?;
            let repo = crate::repo::Repo::init(&home, identity)?;
            let id = repo.identity();
            eprintln!("created identity '{}' in {}", id.name(), home.display());
            out.id(id.node_id().as_str(), id.name())
        }
        Command::Node(args) => run_node(home, args, false, false),
        Command::Up(args) => {
            // A node already runs for this data dir: `coflow` again opens its page.
            if std::os::unix::net::UnixStream::connect(home.join(api::SOCKET_FILE)).is_ok() {
                eprintln!("the node already runs; its page:");
                return if args.no_open {
                    print_page_url(&home).map(|_| ())
                } else {
                    open_page(&home)
                };
            }
            run_node(home, args.node, true, !args.no_open)
        }
        Command::Open => open_page(&home),
        Command::Doctor => doctor::command(&home, &out),
        Command::Config(ConfigCmd::Show) => out.config(&crate::config::Config::load(&home)?),
        Command::Flow(FlowCmd::Export(args)) => export(&mut *api::open(&home)?, args),
        Command::Flow(FlowCmd::Invite(InviteArgs {
            action: Some(InviteAction::List { flow }),
            ..
        })) => show::invite_list(&mut *api::open(&home)?, out.json, &flow),
        Command::Step(StepCmd::Show { flow, step }) => {
            show::step_show(&mut *api::open(&home)?, out.json, &flow, &step)
        }
        Command::Decision(DecisionCmd::Show { flow, decision }) => {
            show::decision_show(&mut *api::open(&home)?, out.json, &flow, &decision)
        }
        Command::Flow(FlowCmd::Fulfil { flow, force }) => {
            show::confirm_fulfil(&home, out.json, &flow, force)?;
            let mut handle = api::open(&home)?;
            let status = FlowStatus::Fulfilled;
            out.reply(handle.call(Call::Edit {
                flow,
                edit: Edit::SetStatus { status },
            })?)
        }
        Command::Flow(FlowCmd::Edit { flow, title, need }) => {
            if title.is_none() && need.is_none() {
                return Err(Error::Invalid("give --title or --need (or both)".into()));
            }
            // Read before the store is opened: a store opened without the node holds its lock.
            let (title, need) = (
                title.map(text_arg).transpose()?,
                need.map(text_arg).transpose()?,
            );
            let mut handle = api::open(&home)?;
            if let Some(title) = title {
                let edit = Edit::SetTitle { title };
                out.reply(handle.call(Call::Edit {
                    flow: flow.clone(),
                    edit,
                })?)?;
            }
            if let Some(need) = need {
                let edit = Edit::SetNeed { need };
                out.reply(handle.call(Call::Edit { flow, edit })?)?;
            }
            Ok(())
        }
        Command::Flow(FlowCmd::Verify { flow }) => {
            let reply = api::open(&home)?.call(Call::FlowVerify { flow })?;
            if let Reply::Verify(report) = &reply {
                out.verify(report)?;
                if report.invalid > 0 || !report.heads_match {
                    return Err(Error::Invalid(format!(
                        "{} of {} stored changes failed verification",
                        report.invalid, report.changes
                    )));
                }
                if !report.store_ok {
                    return Err(Error::Invalid(format!(
                        "the database in {} failed SQLite's integrity check: restore it from a \
                         backup (`coflow doctor` checks the whole data dir)",
                        home.display()
                    )));
                }
            }
            Ok(())
        }
        command => {
            let call = call::to_call(command)?;
            let reply = api::open(&home)?.call(call)?;
            out.reply(reply)
        }
    }
}

fn export(handle: &mut dyn api::Handle, args: ExportArgs) -> Result<()> {
    let reply = handle.call(Call::FlowExport {
        flow: args.flow,
        format: args.format,
    })?;
    let Reply::Export { hex } = reply else {
        return Err(Error::Invalid("unexpected answer to an export".into()));
    };
    let bytes = crate::identity::unhex(&hex).unwrap_or_default();
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

/// Prints the running node's page URL and opens it in the default browser.
fn open_page(home: &std::path::Path) -> Result<()> {
    let url = print_page_url(home)?;
    crate::web::open_in_browser(home, &url)
}

/// Prints the running node's login URL (a single-use code) on stdout; the URL.
fn print_page_url(home: &std::path::Path) -> Result<String> {
    let Reply::Status(status) = api::open(home)?.call(Call::Status)? else {
        return Err(Error::Invalid("unexpected answer to a status call".into()));
    };
    let url = match status.web {
        Some(url) if status.running => url,
        _ if !status.running => {
            return Err(Error::Invalid(
                "the node is not running: start it with `coflow up`".into(),
            ))
        }
        _ => {
            return Err(Error::Invalid(
                "the node runs without its page (`--no-web`, or `web.enabled = false`)".into(),
            ))
        }
    };
    println!("{url}");
    Ok(url)
}

/// Runs the node; `up`: print the page's URL on stdout, and `open` it in a browser.
fn run_node(home: PathBuf, args: NodeArgs, up: bool, open: bool) -> Result<()> {
    let config = crate::config::Config::load(&home)?;
    let web = if args.no_web {
        None
    } else {
        args.web.or(config.web_addr())
    };
    let opts = crate::node::NodeOptions {
        listen: if args.listen.is_empty() {
            config.listen_addrs()
        } else {
            args.listen
        },
        bootstrap: if args.bootstrap.is_empty() {
            config.bootstrap_addrs()
        } else {
            args.bootstrap
        },
        mdns: config.mdns && !args.no_mdns,
        upnp: config.upnp,
        external: if args.external.is_empty() {
            config.external_addrs()
        } else {
            args.external
        },
        limits: (&config.limits).into(),
        relay: (&config.relay).into(),
        // The configured address may be taken by another node on this machine: a free port
        // then. An address given on the command line is served or refused.
        web_fall_back: args.web.is_none(),
        web,
        print_url: up,
        open_page: open,
        home,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        // Listening for the signals before the node starts: one arriving while it starts (it
        // prints the page's URL early) stops it cleanly, rather than killing the process.
        let shutdown = shutdown_signal()?;
        crate::node::run(opts, shutdown).await
    })
}

/// A future that completes on Ctrl-C or SIGTERM; both are listened for from the moment this
/// returns (inside a runtime).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen =
        |kind| signal(kind).map_err(|e| Error::Invalid(format!("cannot listen for signals: {e}")));
    let mut term = listen(SignalKind::terminate())?;
    let mut int = listen(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
