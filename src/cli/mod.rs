//! The command line: dispatch (the commands themselves are in `args.rs`). Data goes to stdout
//! (human text, or JSON with `--json`), messages to stderr. Exit 0 ok, 1 error, 2 usage.

mod args;
mod call;
mod doctor;
mod manual;
mod print;
mod show;

use std::io::Write;
use std::path::PathBuf;

use crate::api::{self, Call, Reply};
use crate::error::{Error, Result};
use crate::flow::{Edit, FlowStatus, Mode, StepStatus};
use crate::identity::Identity;

pub use args::*;
pub use manual::json_error;

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
