//! The page the node serves on loopback, so its user takes part from a browser: the assets
//! compiled into the binary (`assets.rs`), `POST /v1/call` (the control socket's handler, so
//! every action runs through the same `execute` as the CLI) and `GET /v1/events`, server-sent
//! events told by the node's runtime when a flow changed.
//!
//! Security (SECURITY.md, "The page"): every request's `Host` must name a loopback address and
//! the port served, else 403 (DNS rebinding); `/v1/*` needs a login session, its cookie and its
//! key (`login.rs`), else 401; a request that is not GET or HEAD needs `Origin` equal to the
//! page's own and a JSON body, else 403 or 415; every answer carries a Content-Security-Policy
//! that allows no inline script or style; bodies, requests in flight, connections (and how long
//! they may sit idle) and event streams are bounded. The page's files hold no data and need no
//! login: a page opened from a link without one shows only how to log in.

mod assets;
pub mod http;
mod login;

pub use login::Logins;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio::sync::{broadcast, watch, Semaphore};

use crate::error::{Error, Result};
use http::{failure, Calls};

/// Where the page is served when the configuration says nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7780";
/// While the node runs: the first login URL it made, for scripts (mode 0600, removed at stop;
/// used once, `coflow --json status` gives the next).
pub const URL_FILE: &str = "web.url";

/// Most connections the page's listener serves at once.
const MAX_CONNECTIONS: usize = 64;
/// Most requests handled at once (a join may take a minute).
const MAX_IN_FLIGHT: usize = 32;
/// Most event streams open at once (a browser tab holds one).
const MAX_STREAMS: usize = 16;
/// Largest request body.
const MAX_BODY: usize = 1024 * 1024;
/// A connection on which nothing moved for this long is closed: longer than a join may take
/// (`node::JOIN_TIMEOUT`), and than the event streams' keep-alive (15 s).
const IDLE: std::time::Duration = std::time::Duration::from_secs(90);

/// What the page is told happened, to fetch again what it shows.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A flow's content changed (a local edit, or changes from a peer).
    Flow(crate::flow::FlowId),
    /// The list of flows changed (created, joined, offered, accepted, declined).
    Flows,
}

/// The page's listener, bound, and its logins.
pub struct Web {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    logins: Logins,
}

impl Web {
    /// Binds `addr`, which must be a loopback address. If `fall_back` and the port is taken
    /// (another node on this machine has it), binds a free port instead.
    pub fn bind(home: &Path, addr: SocketAddr, fall_back: bool) -> Result<Web> {
        if !addr.ip().is_loopback() {
            return Err(Error::Invalid(format!(
                "the page is served on loopback only (127.0.0.1 or ::1), not on {addr}"
            )));
        }
        let listener = match std::net::TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && fall_back => {
                tracing::warn!(target: "node", "{addr} is taken (another node, or another program): the page is served on a free port instead");
                std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                    .map_err(|e| Error::Invalid(format!("cannot serve the page: {e}")))?
            }
            Err(e) => return Err(Error::Invalid(format!("cannot serve the page on {addr}: {e}"))),
        };
        let bound = listener
            .local_addr()
            .and_then(|a| listener.set_nonblocking(true).map(|()| a))
            .map_err(|e| Error::Invalid(format!("cannot serve the page: {e}")))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::Invalid(format!("cannot serve the page: {e}")))?;
        Ok(Web {
            listener,
            addr: bound,
            logins: Logins::open(home, format!("http://{bound}"))?,
        })
    }

    /// The page's address, e.g. `http://127.0.0.1:7780`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its logins: they hand out the URLs that log a browser in.
    pub fn logins(&self) -> Logins {
        self.logins.clone()
    }

    /// Serves the page until `shutdown` turns true; event streams end then too.
    pub async fn serve(
        self,
        calls: Calls,
        changes: broadcast::Sender<Change>,
        shutdown: watch::Receiver<bool>,
    ) {
        let page = Page {
            calls,
            changes,
            addr: self.addr,
            logins: self.logins,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            shutdown: shutdown.clone(),
        };
        let mut stop = shutdown;
        let served = axum::serve(http::Bounded::new(self.listener, MAX_CONNECTIONS, Some(IDLE)), router(page))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(target: "node", "the page's server stopped: {e}");
        }
    }
}

/// The file a browser is opened on: it sends the browser on to a login URL. A URL on a
/// browser's command line can be read by every local user (`ps`), before the browser uses it;
/// this file only by this one.
pub const OPEN_FILE: &str = "web.open.html";

/// Opens the default browser on `url` through [`OPEN_FILE`] in `home`.
pub fn open_in_browser(home: &Path, url: &str) -> Result<()> {
    let path = home.join(OPEN_FILE);
    let safe = url
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":/.?=[]_-".contains(&b));
    if !safe {
        return Err(Error::Invalid(format!("not a login URL: {url}")));
    }
    let page = format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<meta http-equiv=\"refresh\" content=\"0;url={url}\">\n\
         <title>coflow</title>\n<p><a href=\"{url}\">Open coflow</a></p>\n"
    );
    write_private(&path, &page).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    // Percent-encoded: a data dir's path may hold spaces ("Application Support") or more.
    use std::os::unix::ffi::OsStrExt;
    let mut file = String::from("file://");
    for b in path.as_os_str().as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                file.push(*b as char)
            }
            _ => file.push_str(&format!("%{b:02X}")),
        }
    }
    webbrowser::open(&file)
        .map_err(|e| Error::Invalid(format!("cannot open a browser ({e}): open the URL above")))
}

/// Writes `text` to a new file only this user may read.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[derive(Clone)]
struct Page {
    calls: Calls,
    changes: broadcast::Sender<Change>,
    addr: SocketAddr,
    logins: Logins,
    streams: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Page {
    /// The cookie's name: cookies are kept per host, not per port, so two nodes on one machine
    /// each need their own.
    fn cookie_name(&self) -> String {
        format!("coflow_{}", self.addr.port())
    }

    /// Whether `host` (a `Host` header, or a request URI's authority) is the address served,
    /// port included. Not `localhost`: it also names `[::1]`, where another local user could
    /// listen on the same port and receive what a browser sends to `localhost`.
    fn host_ok(&self, host: &str) -> bool {
        host == self.addr.to_string()
    }

    /// The values the request's cookies give this page's cookie name (read as bytes: another
    /// site's cookie on 127.0.0.1 that is not ASCII does not hide ours).
    fn cookies(&self, headers: &HeaderMap) -> Vec<String> {
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .filter_map(|c| std::str::from_utf8(c).ok())
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .collect()
    }

    /// Whether the request carries a session's cookie and its key (the `X-Coflow-Key` header,
    /// or `key=` in the query, which is all an `EventSource` can send).
    fn logged_in(&self, req: &Request) -> bool {
        let from_header = req
            .headers()
            .get("x-coflow-key")
            .and_then(|k| k.to_str().ok())
            .map(str::to_string);
        let from_query = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("key="))
                .map(str::to_string)
        });
        let Some(key) = from_header.or(from_query) else {
            return false;
        };
        self.cookies(req.headers())
            .iter()
            .any(|c| self.logins.check(c, &key))
    }
}

fn router(page: Page) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/join", get(assets::index))
        .route("/flow/{id}", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        // Browsers ask for it on their own: no icon, and no error in their console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/login", get(login))
        .route("/v1/call", post(call))
        .route("/v1/events", get(events))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such page\n").into_response() })
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(page.clone(), guard))
        .with_state(page)
}

/// Every request: the Host check, the login for `/v1/*`, the Origin check for what is not GET
/// or HEAD; every answer: the security headers.
async fn guard(State(page): State<Page>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let one = |name| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Some(v.to_str().unwrap_or("").to_string()),
            _ => None,
        }
    };
    // Exactly one Host, which the request URI's authority (if it names one) agrees with.
    let host = one(header::HOST).unwrap_or_default();
    let uri_host = req.uri().authority().map(|a| a.as_str().to_string());
    let path = req.uri().path();
    let refused = if !page.host_ok(&host) || uri_host.is_some_and(|a| a != host) {
        Some((
            StatusCode::FORBIDDEN,
            "refused: the page answers only to 127.0.0.1, localhost or [::1] with its port",
        ))
    } else if path.starts_with("/v1/") && !page.logged_in(&req) {
        Some((
            StatusCode::UNAUTHORIZED,
            "not logged in: open the page with `coflow open`",
        ))
    } else if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let origins = headers.get_all(header::ORIGIN).iter().count();
        let origin = one(header::ORIGIN);
        // `application/json`, in any case, with parameters or none.
        let json = one(header::CONTENT_TYPE).is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
        if origins != 1 || origin != Some(format!("http://{host}")) {
            Some((StatusCode::FORBIDDEN, "refused: a request from another site"))
        } else if !json {
            Some((StatusCode::UNSUPPORTED_MEDIA_TYPE, "a call's body is JSON"))
        } else {
            None
        }
    } else {
        None
    };
    let mut res = match refused {
        Some((status, msg)) => failure(status, msg),
        None => next.run(req).await,
    };
    let h = res.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    res
}

#[derive(Deserialize)]
struct Login {
    code: Option<String>,
}

/// `GET /login?code=…`: the current login code starts a session. The answer sets its cookie
/// and is the page itself, carrying the session's key in a `<meta>` element for the page's
/// script to keep: the key is never in a URL and never in an answer to a cookie alone. (A
/// `HEAD` uses up nothing: a link previewer does not spend the code.)
async fn login(State(page): State<Page>, method: Method, Query(q): Query<Login>) -> Response {
    if method == Method::HEAD {
        return StatusCode::OK.into_response();
    }
    let made = match q.code {
        Some(code) => page.logins.redeem(&code),
        None => Ok(None),
    };
    match made {
        Ok(Some((cookie, key))) => {
            let cookie = format!(
                "{}={cookie}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                page.cookie_name(),
                login::SESSION_TTL.as_secs()
            );
            let mut res = assets::index_with_key(&key);
            res.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&cookie).expect("a cookie of hex digits"),
            );
            res
        }
        Ok(None) => (
            StatusCode::FORBIDDEN,
            "this login link was used already or is too old: run `coflow open` for a new one\n",
        )
            .into_response(),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn call(State(page): State<Page>, body: axum::body::Bytes) -> Response {
    http::call(State(page.calls), body).await
}

/// `GET /v1/events`: `flow` (data `{"flow": id}`) when a flow changed, `flows` when the list
/// did (or when events were missed: everything is fetched again); `hello` first.
async fn events(State(page): State<Page>) -> Response {
    let Ok(permit) = page.streams.clone().try_acquire_owned() else {
        return failure(StatusCode::SERVICE_UNAVAILABLE, "too many event streams open");
    };
    let state = (page.changes.subscribe(), page.shutdown.clone(), Some(permit));
    let hello = futures::stream::once(async { Ok(Event::default().event("hello").data("{}")) });
    let news = futures::stream::unfold(state, |(mut rx, mut stop, permit)| async move {
        let event = tokio::select! {
            r = rx.recv() => match r {
                Ok(Change::Flow(id)) => Event::default()
                    .event("flow")
                    .data(serde_json::json!({ "flow": id }).to_string()),
                Ok(Change::Flows) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    Event::default().event("flows").data("{}")
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = stop.wait_for(|s| *s) => return None,
        };
        Some((Ok::<_, Infallible>(event), (rx, stop, permit)))
    });
    use futures::StreamExt;
    Sse::new(hello.chain(news))
        .keep_alive(KeepAlive::default())
        .into_response()
}
