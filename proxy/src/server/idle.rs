//! When to close a connection that does nothing: a slow HTTP/1.1 client, a kept-alive
//! connection idle for too long, an HTTP/2 connection with no stream open.
//!
//! hyper's header read timer starts whenever a connection waits for its next request head,
//! so on its own it also closes connections that are merely idle between requests.
//! A pooling client, such as the calling sidecar, then finds them closed at its next
//! burst and opens new ones all at once (with mTLS, a handshake each). Here hyper's timer
//! only marks that the connection waits for a head, the connection's reads mark that a
//! head has begun, and one coarse watchdog per connection closes it when a head has been
//! in progress for the header read timeout, or when nothing has arrived for the idle
//! timeout. Requests themselves get no timer at all.
//!
//! hyper's HTTP/2 side has no such timer: a client that sends the connection preface and
//! nothing else would hold its connection (and a `--max-connections` slot) forever. So
//! the watchdog also follows the requests in progress on the connection ([`Watch::request`],
//! [`super::requests`]), and a connection that hyper's HTTP/1.1 side never served is
//! closed once none has been in progress for the header read timeout (before its first
//! request) or the idle timeout (after it).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::requests::{InProgress, Quiet, Requests};

/// One connection's waits for a request head and its requests in progress, shared by
/// hyper's timer, the connection's reads, its service and the watchdog.
#[derive(Clone)]
pub struct Watch {
    state: Arc<State>,
    /// The connection's requests in progress.
    requests: Requests,
    header_read: Duration,
    idle: Option<Duration>,
}

struct State {
    /// Counts the waits for a head, so the watchdog can tell one long wait from two.
    waits: AtomicU64,
    /// hyper is waiting for a request head.
    waiting: AtomicBool,
    /// Bytes arrived since the current wait began: a head has started.
    arrived: AtomicBool,
    /// What the timer tells hyper the time is; hyper's deadlines are not used.
    created: Instant,
}

/// Why the watchdog closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// HTTP/1.1: a request head begun and not finished within the header read timeout.
    SlowHead,
    /// HTTP/1.1: no new request for the idle timeout.
    Idle,
    /// Not HTTP/1.1: no request within the header read timeout of the connection's start.
    NoRequest,
    /// HTTP/2: no request in progress for the idle timeout.
    NoStream,
}

/// The [`Timer`](hyper::rt::Timer) given to hyper's HTTP/1.1 connection: each "sleep" it
/// hands out is one wait for a request head, and never fires by itself.
pub struct HeadTimer(Arc<State>);

/// One wait for a request head, from hyper asking for it until the head is parsed.
struct HeadWait(Arc<State>);

/// A connection's byte stream, noting when bytes arrive.
pub struct Watched<T> {
    io: T,
    state: Arc<State>,
}

// === impl Watch ===

impl Watch {
    /// `idle`: `None` leaves idle connections open.
    pub fn new(header_read: Duration, idle: Option<Duration>) -> Watch {
        let state = State {
            waits: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            arrived: AtomicBool::new(false),
            created: Instant::now(),
        };
        Watch {
            state: Arc::new(state),
            requests: Requests::default(),
            header_read,
            idle,
        }
    }

    pub fn timer(&self) -> HeadTimer {
        HeadTimer(self.state.clone())
    }

    pub fn io<T>(&self, io: T) -> Watched<T> {
        Watched {
            io,
            state: self.state.clone(),
        }
    }

    /// A request begun on the connection, in progress until the returned value (or the
    /// answer body it is moved into) is dropped.
    pub fn request(&self) -> InProgress {
        self.requests.begin()
    }

    /// Resolves once the connection should be closed. It looks every `tick` (the shorter
    /// of the two timeouts), so a limit is enforced between once and once plus a tick
    /// after it is reached.
    pub async fn expired(&self) -> Expired {
        let (tick, head_ticks, idle_ticks) = self.ticks();
        let mut interval = interval(tick);
        // HTTP/1.1: the wait seen at the previous tick, whether its head had begun by
        // then, and how many whole ticks since it has been in progress or idle.
        let mut seen = None;
        let (mut head_began, mut head_for, mut idle_for) = (false, 0, 0);
        // Otherwise: how long no request has been in progress.
        let mut quiet = Quiet::default();
        loop {
            interval.tick().await;
            if !self.is_http1() {
                let quiet_for = quiet.look(&self.requests);
                if !quiet.any_begun() && quiet_for >= head_ticks {
                    return Expired::NoRequest;
                }
                if quiet.any_begun() && idle_ticks.is_some_and(|limit| quiet_for >= limit) {
                    return Expired::NoStream;
                }
                continue;
            }
            if !self.state.waiting.load(Relaxed) {
                seen = None;
                continue;
            }
            let wait = self.state.waits.load(Relaxed);
            let arrived = self.state.arrived.load(Relaxed);
            if seen != Some(wait) {
                seen = Some(wait);
                (head_began, head_for, idle_for) = (arrived, 0, 0);
                continue;
            }
            if head_began {
                head_for += 1;
                if head_for >= head_ticks {
                    return Expired::SlowHead;
                }
            } else if arrived {
                head_began = true;
            } else {
                idle_for += 1;
                if idle_ticks.is_some_and(|limit| idle_for >= limit) {
                    return Expired::Idle;
                }
            }
        }
    }

    /// For a connection told to close gracefully (an HTTP/2 GOAWAY): resolves once no
    /// request has been in progress for the header read timeout, the time a client gets
    /// to take its part in the close. Requests in progress are never cut short here.
    pub async fn quiet(&self) {
        let (tick, head_ticks, _) = self.ticks();
        let mut interval = interval(tick);
        let mut quiet = Quiet::since(&self.requests);
        loop {
            interval.tick().await;
            if quiet.look(&self.requests) >= head_ticks {
                return;
            }
        }
    }

    /// hyper's HTTP/1.1 side asks its timer for a wait as soon as it starts reading a
    /// connection's first request head; its HTTP/2 side never does. So a connection whose
    /// timer was never asked is HTTP/2, or one whose version is not known yet (its
    /// first bytes are still awaited).
    fn is_http1(&self) -> bool {
        self.state.waits.load(Relaxed) > 0
    }

    /// How often the watchdog looks, and the two limits in looks.
    fn ticks(&self) -> (Duration, u128, Option<u128>) {
        let tick = self
            .idle
            .map_or(self.header_read, |idle| idle.min(self.header_read));
        let tick = tick.max(Duration::from_millis(1));
        let ticks = |limit: Duration| limit.as_nanos().div_ceil(tick.as_nanos()).max(1);
        (tick, ticks(self.header_read), self.idle.map(ticks))
    }
}

/// Ticks every `tick`, the first one `tick` from now.
fn interval(tick: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

// === impl Expired ===

impl Expired {
    /// Whether the connection is closed the polite way (an HTTP/2 GOAWAY; on HTTP/1.1,
    /// once a request that has just arrived is answered) rather than dropped: only a slow
    /// head, a slowloris, is dropped.
    pub fn graceful(self) -> bool {
        self != Expired::SlowHead
    }
}

impl fmt::Display for Expired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expired::SlowHead => "request head not finished within the header read timeout",
            Expired::Idle => "idle for the idle timeout",
            Expired::NoRequest => "no request within the header read timeout",
            Expired::NoStream => "no stream open for the idle timeout",
        })
    }
}

// === impl HeadTimer ===

impl HeadTimer {
    fn wait(&self) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let state = &self.0;
        state.waits.fetch_add(1, Relaxed);
        state.arrived.store(false, Relaxed);
        state.waiting.store(true, Relaxed);
        Box::pin(HeadWait(state.clone()))
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.wait()
    }

    fn sleep_until(&self, _: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.wait()
    }

    /// hyper asks for the time only to compute a deadline this timer ignores.
    fn now(&self) -> Instant {
        self.0.created
    }
}

// === impl HeadWait ===

impl std::future::Future for HeadWait {
    type Output = ();

    /// Never ready: the watchdog closes the connection instead.
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl hyper::rt::Sleep for HeadWait {}

impl Drop for HeadWait {
    fn drop(&mut self) {
        self.0.waiting.store(false, Relaxed);
    }
}

// === impl Watched ===

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.arrived.store(true, Relaxed);
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;
    use tokio::io::AsyncWriteExt;
    use tokio::time::{sleep, timeout};

    const HEADER_READ: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    /// How long until the watchdog closes the connection, if it does within `limit`.
    async fn expires(watch: &Watch, limit: Duration) -> Option<(Expired, Duration)> {
        let started = tokio::time::Instant::now();
        let expired = timeout(limit, watch.expired()).await.ok()?;
        Some((expired, started.elapsed()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waiting_with_nothing_sent_is_idle_not_slow() {
        let watch = Watch::new(HEADER_READ, Some(IDLE));
        let _wait = watch.timer().sleep_until(Instant::now());
        let (why, after) = expires(&watch, IDLE * 2).await.expect("closed");
        assert_eq!(why, Expired::Idle);
        assert!(
            after >= IDLE && after <= IDLE + HEADER_READ * 2,
            "{after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_must_finish_within_the_header_read_timeout() {
        let watch = Watch::new(HEADER_READ, Some(IDLE));
        let (client, server) = tokio::io::duplex(64);
        let mut io = watch.io(server);
        let _wait = watch.timer().sleep_until(Instant::now());
        let watchdog = tokio::spawn({
            let watch = watch.clone();
            async move { expires(&watch, IDLE).await }
        });
        sleep(Duration::from_secs(25)).await;
        // Idle so far; then half a head arrives.
        let mut client = client;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        tokio::io::AsyncReadExt::read(&mut io, &mut buf)
            .await
            .unwrap();
        let (why, after) = watchdog.await.unwrap().expect("closed");
        assert_eq!(why, Expired::SlowHead);
        let since_head = after - Duration::from_secs(25);
        assert!(
            since_head >= HEADER_READ && since_head <= HEADER_READ * 3,
            "{since_head:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_progress_and_short_waits_are_never_closed() {
        let watch = Watch::new(HEADER_READ, Some(IDLE));
        let watchdog = tokio::spawn({
            let watch = watch.clone();
            async move { expires(&watch, Duration::from_secs(3600)).await }
        });
        // A request served for 40 minutes (no wait for a head meanwhile)...
        drop(watch.timer().sleep_until(Instant::now()));
        sleep(Duration::from_secs(2400)).await;
        // ...then requests 9 s apart, each head arriving whole.
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = watch.io(server);
        let mut buf = [0u8; 64];
        while !watchdog.is_finished() {
            let wait = watch.timer().sleep_until(Instant::now());
            sleep(Duration::from_secs(9)).await;
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            tokio::io::AsyncReadExt::read(&mut io, &mut buf)
                .await
                .unwrap();
            drop(wait);
        }
        assert_eq!(watchdog.await.unwrap(), None, "closed a busy connection");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_is_not_http1_must_begin_a_request_within_the_header_read_timeout() {
        // As an HTTP/2 connection that sent its preface and nothing more: hyper's HTTP/1.1
        // timer is never asked, and no request begins.
        let watch = Watch::new(HEADER_READ, Some(IDLE));
        let (why, after) = expires(&watch, IDLE).await.expect("closed");
        assert_eq!(why, Expired::NoRequest);
        assert!(
            after >= HEADER_READ && after <= HEADER_READ * 2,
            "{after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_closed_once_no_request_has_been_in_progress_for_the_idle_timeout()
     {
        let watch = Watch::new(HEADER_READ, Some(IDLE));
        let watchdog = tokio::spawn({
            let watch = watch.clone();
            async move { expires(&watch, Duration::from_secs(7200)).await }
        });
        // A stream open for 40 minutes, its answer's body holding it...
        let answering = watch.request().answering(crate::body::empty());
        sleep(Duration::from_secs(2400)).await;
        drop(answering);
        // ...then short requests 30 s apart, each over between two looks...
        for _ in 0..10 {
            drop(watch.request());
            sleep(Duration::from_secs(30)).await;
        }
        assert!(!watchdog.is_finished(), "closed a busy connection");
        // ...then nothing since the last one.
        let (why, after) = watchdog.await.unwrap().expect("closed");
        assert_eq!(why, Expired::NoStream);
        let quiet = after - Duration::from_secs(2400 + 9 * 30);
        assert!(quiet >= IDLE - HEADER_READ, "{quiet:?}");
        assert!(quiet <= IDLE + HEADER_READ * 2, "{quiet:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_goaway_requests_in_progress_finish_and_then_the_client_gets_the_header_read_timeout()
     {
        let watch = Watch::new(HEADER_READ, Some(IDLE));
        let request = watch.request();
        let quiet = tokio::spawn({
            let watch = watch.clone();
            async move {
                let started = tokio::time::Instant::now();
                watch.quiet().await;
                started.elapsed()
            }
        });
        sleep(Duration::from_secs(600)).await;
        assert!(!quiet.is_finished(), "a request in progress was cut short");
        drop(request);
        let after = quiet.await.unwrap() - Duration::from_secs(600);
        assert!(
            after >= HEADER_READ && after <= HEADER_READ * 2,
            "{after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_idle_connections_stay() {
        let watch = Watch::new(HEADER_READ, None);
        let _wait = watch.timer().sleep_until(Instant::now());
        assert_eq!(expires(&watch, Duration::from_secs(7200)).await, None);
        // HTTP/2 alike, once it has begun a request.
        let watch = Watch::new(HEADER_READ, None);
        drop(watch.request());
        assert_eq!(expires(&watch, Duration::from_secs(7200)).await, None);
    }
}
