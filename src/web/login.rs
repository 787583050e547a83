//! How a browser logs in to the page, and proves it on every call.
//!
//! - **A login code**, in the URL `coflow open`, `coflow up` and `coflow --json status` give
//!   (`/login?code=…`): one at a time, good for one login within [`CODE_TTL`]. It ends up in
//!   the browser's history and, for a moment, in its process arguments; used or old, it is
//!   worth nothing there.
//! - **A session** made by that login: a cookie (HttpOnly, SameSite=Strict) and a key, which
//!   comes in the login's answer (the page itself, in a `<meta>` element) and which the page
//!   keeps in its own origin's storage. Every `/v1` call needs both. A cookie is sent by the
//!   browser to every port of 127.0.0.1, so whatever else listens there may see it; the key is
//!   never in a URL nor in any answer to a cookie, and stays with this page's origin (its port
//!   included). A session lasts [`SESSION_TTL`].
//! - Sessions are kept in `web.sessions` in the data dir (mode 0600; only SHA-256 digests of
//!   their secrets), so a browser stays logged in across node restarts; deleting the file logs
//!   every browser out. At most [`MAX_SESSIONS`], the oldest dropped first.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::identity::hex;

/// The sessions' file in the data dir.
pub const SESSIONS_FILE: &str = "web.sessions";
/// How long a login code is good for.
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// Most sessions kept (browsers, profiles) at once.
pub const MAX_SESSIONS: usize = 32;
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    /// SHA-256 of the cookie's value and of the key, in hex.
    cookie: String,
    key: String,
    /// When the session was made (Unix seconds).
    #[serde(default)]
    made: i64,
}

struct Inner {
    origin: String,
    path: PathBuf,
    code: Option<(String, Instant)>,
    sessions: Vec<Stored>,
}

/// The page's logins: the current code and the sessions (shared by the page's server and the
/// runtime, which hands out login URLs).
#[derive(Clone)]
pub struct Logins(Arc<Mutex<Inner>>);

fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn secret() -> Result<String> {
    let mut b = [0u8; 32];
    crate::identity::random(&mut b)
        .map_err(|e| Error::Invalid(format!("no randomness for the page's login: {e}")))?;
    Ok(hex(&b))
}

/// Compares two strings in time independent of where they differ.
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Logins {
    /// The logins of the page at `origin`, with the sessions stored in `home`.
    pub fn open(home: &Path, origin: String) -> Result<Logins> {
        let path = home.join(SESSIONS_FILE);
        let sessions = match std::fs::read_to_string(&path) {
            // Damaged, it logs every browser out, and the node runs on (the page asks for a
            // new login, which writes the file again).
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(target: "node", "{} is damaged ({e}): every browser logs in again", path.display());
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(Error::Io { path, source }),
        };
        Ok(Logins(Arc::new(Mutex::new(Inner {
            origin,
            path,
            code: None,
            sessions,
        }))))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A URL that logs a browser in: the current code's, or a new one's once it was used or
    /// is too old.
    pub fn url(&self) -> Result<String> {
        let mut inner = self.inner();
        let now = Instant::now();
        let code = match &inner.code {
            Some((code, made)) if now.duration_since(*made) < CODE_TTL => code.clone(),
            _ => {
                let code = secret()?;
                inner.code = Some((code.clone(), now));
                code
            }
        };
        Ok(format!("{}/login?code={code}", inner.origin))
    }

    /// Uses `code` up: a new session's cookie value and key, if it was the current code.
    pub(super) fn redeem(&self, code: &str) -> Result<Option<(String, String)>> {
        let mut inner = self.inner();
        let good = inner
            .code
            .as_ref()
            .is_some_and(|(c, made)| same(c, code) && made.elapsed() < CODE_TTL);
        if !good {
            return Ok(None);
        }
        inner.code = None;
        let (cookie, key) = (secret()?, secret()?);
        let now = crate::clock::system_clock();
        let ttl = SESSION_TTL.as_secs() as i64;
        inner.sessions.retain(|s| now.saturating_sub(s.made) < ttl);
        inner.sessions.push(Stored {
            cookie: digest(&cookie),
            key: digest(&key),
            made: now,
        });
        if inner.sessions.len() > MAX_SESSIONS {
            let extra = inner.sessions.len() - MAX_SESSIONS;
            inner.sessions.drain(..extra);
        }
        let text = serde_json::to_string(&inner.sessions).expect("sessions serialize");
        super::write_private(&inner.path, &text).map_err(|source| Error::Io {
            path: inner.path.clone(),
            source,
        })?;
        Ok(Some((cookie, key)))
    }

    /// Whether `cookie` and `key` are one session's.
    pub(super) fn check(&self, cookie: &str, key: &str) -> bool {
        let (c, k) = (digest(cookie), digest(key));
        let now = crate::clock::system_clock();
        let ttl = SESSION_TTL.as_secs() as i64;
        self.inner().sessions.iter().any(|s| {
            same(&s.cookie, &c) & same(&s.key, &k) && now.saturating_sub(s.made) < ttl
        })
    }
}
