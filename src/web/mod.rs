//! The page the node serves on loopback, so its user takes part from a browser: the assets
//! compiled into the binary (`assets.rs`), `POST /v1/call` (the control socket's handler, so
//! every action runs through the same `execute` as the CLI) and `GET /v1/events`, server-sent
//! events told by the node's runtime when a flow changed.
//!
//! Security (SECURITY.md, "The page"): every request's `Host` must name a loopback address and
//! the port served, else 403 (DNS rebinding); `/v1/*` needs the login cookie, else 401; it is
//! set by `GET /login?token=…` with the token from the data dir (`web.token`, mode 0600) and is
//! HttpOnly and SameSite=Strict; a request that is not GET or HEAD needs `Origin` equal to the
//! page's own and a JSON body, else 403; every answer carries a Content-Security-Policy that
//! allows no inline script or style; bodies, requests in flight, connections and event streams
//! are bounded. The assets themselves hold no data and need no cookie: a page opened from a
//! link without it shows only how to log in.

mod assets;
pub mod http;

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
/// The login token's file in the data dir.
pub const TOKEN_FILE: &str = "web.token";
/// While the node runs: the page's login URL, for scripts (mode 0600, removed at stop).
pub const URL_FILE: &str = "web.url";

/// Most connections the page's listener serves at once.
const MAX_CONNECTIONS: usize = 64;
/// Most requests handled at once (a join may take a minute).
const MAX_IN_FLIGHT: usize = 32;
/// Most event streams open at once (a browser tab holds one).
const MAX_STREAMS: usize = 16;
/// Largest request body.
const MAX_BODY: usize = 1024 * 1024;

/// What the page is told happened, to fetch again what it shows.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A flow's content changed (a local edit, or changes from a peer).
    Flow(String),
    /// The list of flows changed (created, joined, offered, accepted, declined).
    Flows,
}

/// The page's listener, bound, and its login token.
pub struct Web {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    token: String,
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
            token: token(home)?,
        })
    }

    /// The page's address, e.g. `http://127.0.0.1:7780`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL that logs a browser in.
    pub fn login_url(&self) -> String {
        format!("{}/login?token={}", self.origin(), self.token)
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
            port: self.addr.port(),
            token: self.token.into(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            shutdown: shutdown.clone(),
        };
        let mut stop = shutdown;
        let served = axum::serve(http::Bounded::new(self.listener, MAX_CONNECTIONS), router(page))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(target: "node", "the page's server stopped: {e}");
        }
    }
}

/// The login token in `home`, made on first use.
fn token(home: &Path) -> Result<String> {
    let path = home.join(TOKEN_FILE);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            let t = t.trim().to_string();
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(t);
            }
            Err(Error::Invalid(format!(
                "{} is not a login token: delete it and start the node again (a new one is made)",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            crate::identity::random(&mut secret)
                .map_err(|e| Error::Invalid(format!("no randomness for the login token: {e}")))?;
            let t = crate::identity::hex(&secret);
            write_private(&path, &t).map_err(io)?;
            Ok(t)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes `text` to a new file only this user may read.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
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
    port: u16,
    token: Arc<str>,
    streams: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Page {
    /// The cookie's name: cookies are kept per host, not per port, so two nodes on one machine
    /// each need their own.
    fn cookie_name(&self) -> String {
        format!("coflow_{}", self.port)
    }

    /// Whether `host` (a `Host` header) names a loopback address and the port served.
    fn host_ok(&self, host: &str) -> bool {
        let port = self.port.to_string();
        let Some((name, p)) = host.rsplit_once(':') else {
            return false;
        };
        p == port
            && (name == "127.0.0.1" || name == "[::1]" || name.eq_ignore_ascii_case("localhost"))
    }

    fn logged_in(&self, headers: &HeaderMap) -> bool {
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(k, v)| k == name && same(v, &self.token))
    }
}

/// Compares two secrets in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn router(page: Page) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/join", get(assets::index))
        .route("/flow/{id}", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/login", get(login))
        .route("/v1/call", post(call))
        .route("/v1/events", get(events))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such page\n").into_response() })
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(page.clone(), guard))
        .with_state(page)
}

/// Every request: the Host check, the login cookie for `/v1/*`, the Origin check for what is
/// not GET or HEAD; every answer: the security headers.
async fn guard(State(page): State<Page>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let refused = if !page.host_ok(&host) {
        Some((
            StatusCode::FORBIDDEN,
            "refused: the page answers only to 127.0.0.1, localhost or [::1] with its port",
        ))
    } else if req.uri().path().starts_with("/v1/") && !page.logged_in(headers) {
        Some((
            StatusCode::UNAUTHORIZED,
            "not logged in: open the page with `coflow open`",
        ))
    } else if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| c.starts_with("application/json"));
        if origin != Some(format!("http://{host}").as_str()) {
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
    token: Option<String>,
}

/// `GET /login?token=…`: the right token sets the login cookie and sends the browser to the
/// page, without the token in its address bar.
async fn login(State(page): State<Page>, Query(q): Query<Login>) -> Response {
    match q.token {
        Some(t) if same(&t, &page.token) => {
            let cookie = format!(
                "{}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age=31536000",
                page.cookie_name(),
                page.token
            );
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, "/".to_string()), (header::SET_COOKIE, cookie)],
            )
                .into_response()
        }
        _ => (
            StatusCode::FORBIDDEN,
            "wrong or missing login token: run `coflow open` on this computer\n",
        )
            .into_response(),
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
