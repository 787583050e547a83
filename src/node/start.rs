//! Starting and stopping a node: the data dir's lock, the page served (and, on a data dir with
//! no key, the setup that waits for the page's `init`), and the drain once it is told to stop.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::{NodeOptions, Pending};
use crate::api::{self, Call, Reply};
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::web::{Change, Web};

/// Serves the page, if asked to: writes a login URL to [`crate::web::URL_FILE`], prints it
/// and opens a browser on it as asked. Its logins.
pub(super) fn start_web(
    opts: &NodeOptions,
    calls: &mpsc::Sender<(Call, Pending)>,
    changes: &broadcast::Sender<Change>,
    stopped: &watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<Option<crate::web::Logins>> {
    let Some(addr) = opts.web else {
        return Ok(None);
    };
    let web = Web::bind(&opts.home, addr, opts.web_fall_back)?;
    let logins = web.logins();
    let url = logins.url()?;
    tracing::info!(target: "node", "the page is at {} (`coflow open` opens it, logged in)", web.origin());
    let url_file = opts.home.join(crate::web::URL_FILE);
    let _ = std::fs::remove_file(&url_file);
    crate::web::write_private(&url_file, &url).map_err(|source| Error::Io {
        path: url_file.clone(),
        source,
    })?;
    tasks.push(tokio::spawn(web.serve(
        calls.clone(),
        changes.clone(),
        stopped.clone(),
    )));
    if opts.print_url {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{url}").and_then(|()| out.flush());
    }
    if opts.open_page {
        let (home, u) = (opts.home.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::web::open_in_browser(&home, &u) {
                tracing::warn!(target: "node", "{e}");
            }
        });
    }
    Ok(Some(logins))
}

/// Waits for `shutdown`, then tells the turns to stop (`stop`) and waits for them to end
/// (`turns`); the calls they had not taken, if they ended cleanly (`None`: they ended on their
/// own, by a panic, and the node stops at once).
pub(super) async fn until_stopped(
    turns: impl std::future::Future<Output = Option<mpsc::Receiver<(Call, Pending)>>>,
    shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    stop: oneshot::Sender<()>,
) -> Option<mpsc::Receiver<(Call, Pending)>> {
    tokio::pin!(turns);
    tokio::select! {
        ended = &mut turns => ended,
        _ = shutdown => {
            let _ = stop.send(());
            turns.await
        }
    }
}

/// Lets the servers finish what they are answering (calls still queued are dropped: their
/// callers hear the node stopped), for a moment at most.
pub(super) async fn finish(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    calls: Option<mpsc::Receiver<(Call, Pending)>>,
    home: &Path,
) {
    drop(calls);
    let _ = std::fs::remove_file(home.join(crate::web::URL_FILE));
    let _ = std::fs::remove_file(home.join(crate::web::OPEN_FILE));
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
            abort.abort();
        }
    }
}

/// A data dir with no node key, served with the page: every call but `status` waits for the
/// page's `init`, which makes the key and the store. `false`: the node was stopped first.
pub(super) async fn setup(
    home: &Path,
    calls: &mut mpsc::Receiver<(Call, Pending)>,
    logins: &crate::web::Logins,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    tracing::info!(target: "node", "this node has no key yet: choose a name on its page");
    loop {
        let (call, reply) = tokio::select! {
            Some(c) = calls.recv() => c,
            _ = shutdown.as_mut() => return false,
        };
        let answer = match call {
            Call::Status => Ok(Reply::Status(api::Status {
                running: true,
                node_id: String::new(),
                name: String::new(),
                listen: Vec::new(),
                peers: 0,
                flows: 0,
                web: logins.url().ok(),
                setup: true,
                reachability: crate::node::Reachability::Unknown,
                external: Vec::new(),
                relays: Vec::new(),
            })),
            Call::Init { name } => {
                let made = crate::identity::Identity::fresh(&name)
                    .map_err(Error::from)
                    .and_then(|id| Repo::init(home, id));
                match made {
                    Ok(repo) => {
                        let id = repo.identity();
                        tracing::info!(target: "node", name = %crate::text::one_line(id.name()), "node key made");
                        let _ = reply.send(Ok(Reply::Id {
                            node_id: id.node_id().to_string(),
                            name: id.name().to_string(),
                        }));
                        return true;
                    }
                    Err(e) => Err(e),
                }
            }
            _ => Err(Error::Invalid(
                "this node has no name yet: choose one on its page first".into(),
            )),
        };
        let _ = reply.send(answer);
    }
}

/// Takes the data dir's lock for good. A command working on the store holds the lock shared for
/// a moment: close the gate to new ones, and wait for those already in. A node that answers on
/// the socket holds the lock for good: refuse.
pub(super) async fn lock_home(home: &Path, socket_path: &Path) -> Result<std::fs::File> {
    let lock = api::lock_file(home)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let gate = api::gate_file(home)?;
    while gate.try_lock().is_err() {
        if Instant::now() > deadline {
            return Err(Error::Invalid(
                "another coflow process keeps this data dir locked".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while lock.try_lock().is_err() {
        if std::os::unix::net::UnixStream::connect(socket_path).is_ok() {
            return Err(Error::Invalid(
                "a coflow node is already running for this data dir".into(),
            ));
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(
                "another coflow process keeps this data dir locked".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Commands that now get through the gate find the lock held, and talk to this node.
    drop(gate);
    Ok(lock)
}
