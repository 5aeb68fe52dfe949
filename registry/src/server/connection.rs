//! One connection, served until it closes, and closed when it holds the registry up for
//! nothing: a client that opens a connection and sends no request, keeps one open with
//! no request in it, or stops reading its answers.
//!
//! hyper covers part of this on its own: over HTTP/1.1 its header read timer closes a
//! connection whose next request head is late. It has nothing before it knows which HTTP
//! version the client speaks, and nothing for HTTP/2, where a client may send the preface
//! and SETTINGS and then hold the connection without opening a stream. So each connection
//! gets a watchdog here that knows how many requests are open (each counted from the
//! moment hyper hands it over until its answer's body is done) and whether writes to the
//! client are stuck, and closes the connection when
//!
//! - no request has begun within the header read timeout of its opening,
//! - no request has been open for the idle timeout (after its first), or
//! - a write to the client has made no progress for the write timeout.
//!
//! The first two close gracefully (HTTP/2 sends GOAWAY), with the header read timeout
//! more to finish; a client that stopped reading is not worth a goodbye and is dropped.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connection may do nothing useful, by what it is (not) doing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From opening to its first request.
    pub header_read: Duration,
    /// With no request open, after the first.
    pub idle: Duration,
    /// A write to the client making no progress.
    pub write: Duration,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client closed it, or hyper did (after an error, or a graceful close).
    Closed,
    /// The watchdog closed it.
    Expired(Expired),
}

/// Why the watchdog closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No request began within the header read timeout of its opening.
    NoRequest,
    /// No request open for the idle timeout.
    Idle,
    /// A write to the client made no progress for the write timeout.
    WriteStalled,
}

/// What the watchdog knows of one connection, kept up to date by its requests and its
/// byte stream.
struct Activity {
    opened: Instant,
    /// Requests whose answer is not done yet.
    open: AtomicUsize,
    /// Whether any request began.
    served: AtomicBool,
    /// When the last request ended, in nanoseconds since `opened`.
    idle_since: AtomicU64,
    /// When the pending write began to wait, in nanoseconds since `opened`, plus one; 0
    /// while writes make progress.
    stalled_since: AtomicU64,
    /// Wakes the watchdog when a deadline may have moved.
    changed: Notify,
}

/// Counts one request open while alive: from hyper handing it over until its answer's
/// body is done, or dropped because the client went away.
struct Open(Arc<Activity>);

/// An answer's body, keeping its request counted open until it is done.
pub struct Tracked<B> {
    body: B,
    _open: Open,
}

/// The connection's byte stream, noting whether writes make progress.
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

/// HTTP/1.1 and HTTP/2 on one connection. hyper's own timer closes an HTTP/1.1
/// connection whose next request head is late; the watchdog covers what it does not.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves `io` with `service` under `limits` until the connection closes. Once
/// `stopping` turns true it is closed gracefully: requests in progress finish, no new
/// ones start.
pub async fn serve<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
) -> Result<Ended, BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::new());
    let service = Arc::new(service);
    let counted = service_fn({
        let activity = activity.clone();
        move |request| {
            let open = Open::begin(&activity);
            let answer = service.call(request);
            async move {
                let response = answer.await?;
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _open: open }))
            }
        }
    });
    let io = Watched {
        io,
        activity: activity.clone(),
    };
    let connection = builder.serve_connection(TokioIo::new(io), counted);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => return served.map(|()| Ended::Closed),
            why = activity.expired(&limits) => {
                // While draining, whatever the watchdog finds is not worth waiting for.
                if why == Expired::WriteStalled || draining {
                    return Ok(Ended::Expired(why));
                }
                connection.as_mut().graceful_shutdown();
                // A client that never acknowledges the GOAWAY does not keep it longer.
                let deadline = Instant::now() + limits.header_read;
                let _ = tokio::time::timeout_at(deadline, connection).await;
                return Ok(Ended::Expired(why));
            }
            () = stopped(&mut stopping), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Resolves once `stopping` is true (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

// === impl Expired ===

impl Expired {
    pub const ALL: [Expired; 3] = [Expired::NoRequest, Expired::Idle, Expired::WriteStalled];

    /// The `reason` label of `mesh_registry_connections_expired_total`.
    pub fn label(self) -> &'static str {
        match self {
            Expired::NoRequest => "no_request",
            Expired::Idle => "idle",
            Expired::WriteStalled => "write_stalled",
        }
    }
}

// === impl Activity ===

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            open: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            stalled_since: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn since_opened(&self) -> u64 {
        self.opened.elapsed().as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.opened + Duration::from_nanos(nanos)
    }

    /// The next limit the connection will pass if nothing changes, and when.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expired)> {
        let stalled = match self.stalled_since.load(SeqCst) {
            0 => None,
            since => Some((self.at(since - 1) + limits.write, Expired::WriteStalled)),
        };
        let quiet = (self.open.load(SeqCst) == 0).then(|| {
            if self.served.load(SeqCst) {
                let since = self.at(self.idle_since.load(SeqCst));
                (since + limits.idle, Expired::Idle)
            } else {
                (self.opened + limits.header_read, Expired::NoRequest)
            }
        });
        [stalled, quiet]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }

    /// Resolves once the connection has passed one of `limits`.
    async fn expired(&self, limits: &Limits) -> Expired {
        loop {
            match self.deadline(limits) {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }

    /// Notes a write's outcome: pending (the client's window and our socket buffer are
    /// full) starts a stall, any progress ends it.
    fn wrote<T>(&self, poll: &Poll<std::io::Result<T>>) {
        if poll.is_pending() {
            let now = self.since_opened() + 1;
            if self
                .stalled_since
                .compare_exchange(0, now, SeqCst, SeqCst)
                .is_ok()
            {
                self.changed.notify_one();
            }
        } else {
            self.stalled_since.store(0, SeqCst);
        }
    }
}

// === impl Open ===

impl Open {
    fn begin(activity: &Arc<Activity>) -> Open {
        activity.served.store(true, SeqCst);
        activity.open.fetch_add(1, SeqCst);
        activity.changed.notify_one();
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let activity = &self.0;
        // Before the count drops: the watchdog reads the time once it sees none open.
        activity.idle_since.store(activity.since_opened(), SeqCst);
        activity.open.fetch_sub(1, SeqCst);
        activity.changed.notify_one();
    }
}

// === impl Tracked ===

impl<B> Body for Tracked<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl Watched ===

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.activity.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.activity.wrote(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.activity.wrote(&poll);
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const LIMITS: Limits = Limits {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        write: Duration::from_secs(10),
    };

    /// Serves one end of an in-memory connection with a handler that answers `size`
    /// bytes after `delay`; returns how it ended and when, and the other end.
    async fn served(
        size: usize,
        delay: Duration,
        client: impl AsyncFnOnce(&mut DuplexStream),
    ) -> (Result<Ended, String>, Duration) {
        // A small pipe: a client that does not read stalls the server's writes at once.
        let (mut near, far) = tokio::io::duplex(4096);
        let (_stop, stopping) = watch::channel(false);
        let builder = builder(&LIMITS);
        let handle = service_fn(move |_request| async move {
            tokio::time::sleep(delay).await;
            Ok(Response::new(Full::new(Bytes::from(vec![b'x'; size]))))
        });
        let started = Instant::now();
        let server = tokio::spawn(async move {
            let ended = serve(&builder, far, handle, LIMITS, stopping).await;
            (ended.map_err(|e| e.to_string()), started.elapsed())
        });
        client(&mut near).await;
        let ended = server.await.unwrap();
        drop(near);
        ended
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
        let (ended, after) = served(10, Duration::ZERO, async |_| {}).await;
        assert_eq!(ended, Ok(Ended::Expired(Expired::NoRequest)));
        assert_eq!(after, LIMITS.header_read);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
        let (ended, after) = served(1024 * 1024, Duration::ZERO, async |client| {
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: r\r\n\r\n")
                .await
                .unwrap();
        })
        .await;
        assert_eq!(ended, Ok(Ended::Expired(Expired::WriteStalled)));
        assert_eq!(after, LIMITS.write);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_request_is_never_cut_and_the_connection_idles_out_after_it() {
        let hour = Duration::from_secs(3600);
        let (ended, after) = served(10, hour, async |client| {
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: r\r\n\r\n")
                .await
                .unwrap();
            let mut answer = [0u8; 4096];
            let n = client.read(&mut answer).await.unwrap();
            assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));
        })
        .await;
        // Then idle: hyper's own header read timer closes an HTTP/1.1 connection first.
        assert_eq!(ended, Err("read header from client timeout".into()));
        assert_eq!(after, hour + LIMITS.header_read);
    }
}
