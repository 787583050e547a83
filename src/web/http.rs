//! What the control socket and the page's listener share: the one `POST /v1/call` handler that
//! hands each call to the node's runtime (which runs it through the same `execute` as the CLI),
//! and a listener that serves a bounded number of connections at once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::api::{Call, Reply};
use crate::error::Result;

/// Where calls go: the runtime answers each on its oneshot after its turn's commit.
pub type Calls = mpsc::Sender<(Call, oneshot::Sender<Result<Reply>>)>;

/// A JSON answer `{"error": msg}` with `status`.
pub fn failure(status: StatusCode, msg: &str) -> Response {
    let body = serde_json::to_vec(&serde_json::json!({ "error": msg })).expect("serializes");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `POST /v1/call`: the body is a [`Call`] as JSON; the answer is its [`Reply`] (200) or
/// `{"error": …}` (400 for a refused call, 500 when the node could not answer).
pub async fn call(State(calls): State<Calls>, body: Bytes) -> Response {
    let call = match serde_json::from_slice::<Call>(&body) {
        Ok(call) => call,
        Err(e) => return failure(StatusCode::BAD_REQUEST, &format!("bad call: {e}")),
    };
    let (tx, rx) = oneshot::channel();
    if calls.send((call, tx)).await.is_err() {
        return failure(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
    }
    match rx.await {
        Ok(Ok(reply)) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&reply).expect("replies serialize"),
        )
            .into_response(),
        Ok(Err(e)) => failure(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "the node dropped the call"),
    }
}

/// A listener that serves at most as many connections at once as its semaphore has permits
/// (more wait to be accepted), and, if given an idle limit, closes a connection on which no
/// byte moved for that long (one that never sends its request, or sits idle after its answer).
pub struct Bounded<L> {
    inner: L,
    limit: Arc<Semaphore>,
    idle: Option<Duration>,
}

impl<L> Bounded<L> {
    pub fn new(inner: L, max: usize, idle: Option<Duration>) -> Bounded<L> {
        Bounded {
            inner,
            limit: Arc::new(Semaphore::new(max)),
            idle,
        }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Bounded<L> {
    type Io = Permitted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .limit
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (io, addr) = self.inner.accept().await;
        let idle = self.idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
        (
            Permitted {
                io,
                _permit: permit,
                idle,
            },
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its permit back when it closes.
pub struct Permitted<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
    /// The idle limit and when it runs out (moved on by every byte read or written).
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl<I> Permitted<I> {
    /// Something moved: the idle limit starts again.
    fn moved(&mut self) {
        if let Some((d, sleep)) = &mut self.idle {
            sleep.as_mut().reset(tokio::time::Instant::now() + *d);
        }
    }

    /// The I/O is pending: whether the connection has been idle too long (the timer then wakes
    /// the task when it runs out).
    fn idle_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        use std::future::Future;
        self.idle
            .as_mut()
            .is_some_and(|(_, sleep)| sleep.as_mut().poll(cx).is_ready())
    }
}

impl<I> Permitted<I> {
    /// What a write gave: bytes written move the idle limit on; a write pending past it fails.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match written {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.idle_too_long(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "the connection sat idle")
}

impl<I: AsyncRead + Unpin> AsyncRead for Permitted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.idle_too_long(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Permitted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
