//! The live tap: `GET /tap?service=&direction=&path_prefix=&method=&status=&max_rps=` on
//! the admin port streams the calls that match, one JSON line each
//! ([`CallEvent`](mesh_registry_api::call::CallEvent)), for as long as the client reads.
//!
//! Each open tap is a subscriber with its [`TapFilter`], a token bucket holding it to
//! `max_rps` events a second, and a bounded queue to its response body. A call is
//! published once: its event is built once, matched against every filter, and its line
//! serialized once for all the taps that want it. A tap that reads too slowly, or has
//! spent its rate, misses events (counted in `mesh_tap_events_dropped_total`); a call
//! never waits for a tap.
//!
//! The request path only reads an atomic count of open taps ([`Tap::active`]); the
//! subscriber list is behind a std `Mutex`, taken only while a tap is open and never
//! held across an `.await`.
//!
//! Request headers are shown by name; their values are [`REDACTED`] unless the sidecar
//! names the header in `--tap-headers`. There is no wildcard, so `authorization`,
//! `cookie` and `proxy-authorization` are shown only when named one by one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame};
use mesh_registry_api::call::{REDACTED, TapFilter};
use prometheus::IntCounter;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;

use super::record::Record;
use crate::body::{self, BoxBody};

/// Taps open at once on one sidecar; one more is refused with 503.
pub const MAX_TAPS: usize = 8;

/// Lines waiting for one tap's reader; beyond this, its events are dropped.
pub const QUEUE: usize = 256;

/// The sidecar's tap: the open subscriptions and what they may see.
pub struct Tap {
    shared: Arc<Shared>,
}

struct Shared {
    /// Headers whose values are shown (`--tap-headers`).
    shown: Vec<HeaderName>,
    dropped: IntCounter,
    /// Taps open, read on every request: kept beside the list so that reading it takes
    /// no lock.
    open: AtomicUsize,
    /// Set at shutdown: no new tap opens.
    closed: AtomicBool,
    subscribers: Mutex<Subscribers>,
}

#[derive(Default)]
struct Subscribers {
    next_id: u64,
    list: Vec<Subscriber>,
}

/// One open tap.
struct Subscriber {
    id: u64,
    filter: TapFilter,
    bucket: TokenBucket,
    lines: mpsc::Sender<Bytes>,
}

/// Holds a tap to `rate` events a second, with bursts of up to `rate`.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// A tap's response body: its lines as they come. Dropped (the client went away), it
/// removes its subscriber at once, freeing the slot.
struct Lines {
    lines: mpsc::Receiver<Bytes>,
    _subscription: Subscription,
}

struct Subscription {
    shared: Arc<Shared>,
    id: u64,
}

// === impl Tap ===

impl Tap {
    /// A tap showing the values of `headers`; `dropped` counts the events taps missed.
    pub fn new(headers: Vec<HeaderName>, dropped: IntCounter) -> Tap {
        let shared = Shared {
            shown: headers,
            dropped,
            open: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            subscribers: Mutex::default(),
        };
        Tap {
            shared: Arc::new(shared),
        }
    }

    /// Whether any tap is open. Read on every request, so a relaxed load: a tap opened a
    /// moment ago may miss a call that was already arriving.
    pub fn active(&self) -> bool {
        self.shared.open.load(Relaxed) > 0
    }

    /// Opens a tap for `query` (the query string, without `?`): a 200 whose body streams
    /// the matching calls as NDJSON. 400 names a bad parameter; 503 when [`MAX_TAPS`] are
    /// open already, or the sidecar is shutting down.
    pub fn subscribe(&self, query: &str) -> Result<Response<BoxBody>, (StatusCode, String)> {
        let filter = TapFilter::parse(query)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad tap query: {e}\n")))?;
        let shared = &self.shared;
        let (sender, lines) = mpsc::channel(QUEUE);
        let id = {
            let mut subscribers = shared.subscribers();
            if shared.closed.load(Relaxed) {
                let why = "the sidecar is shutting down\n".to_owned();
                return Err((StatusCode::SERVICE_UNAVAILABLE, why));
            }
            if subscribers.list.len() >= MAX_TAPS {
                let why = format!("{MAX_TAPS} taps are open already, the most at once\n");
                return Err((StatusCode::SERVICE_UNAVAILABLE, why));
            }
            let id = subscribers.next_id;
            subscribers.next_id += 1;
            subscribers.list.push(Subscriber {
                id,
                bucket: TokenBucket::full(filter.rate(), Instant::now()),
                filter,
                lines: sender,
            });
            shared.open.store(subscribers.list.len(), Relaxed);
            id
        };
        let body = Lines {
            lines,
            _subscription: Subscription {
                shared: shared.clone(),
                id,
            },
        };
        // hyper sends the head as soon as this is returned, before any line: the client
        // knows at once that its tap is open.
        let mut response = Response::new(body::boxed(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    /// Sends a completed call to every open tap whose filter it matches, within each
    /// tap's rate and queue; never waits.
    pub fn publish(&self, record: &Record) {
        if !self.active() {
            return;
        }
        let mut event = record.event();
        let shared = &self.shared;
        let wanted: Vec<mpsc::Sender<Bytes>> = {
            let mut subscribers = shared.subscribers();
            // Backstop for a body dropped without its subscription (never expected).
            subscribers.list.retain(|s| !s.lines.is_closed());
            shared.open.store(subscribers.list.len(), Relaxed);
            let now = Instant::now();
            let mut wanted = Vec::new();
            for subscriber in subscribers.list.iter_mut() {
                if !subscriber.filter.matches(&event) {
                    continue;
                }
                if subscriber.bucket.take(now) {
                    wanted.push(subscriber.lines.clone());
                } else {
                    shared.dropped.inc();
                }
            }
            wanted
        };
        if wanted.is_empty() {
            return;
        }
        event.headers = record.headers.as_ref().map(|h| shared.headers(h));
        let line = Bytes::from(event.to_line());
        for tap in wanted {
            if let Err(TrySendError::Full(_)) = tap.try_send(line.clone()) {
                shared.dropped.inc();
            }
        }
    }

    /// Ends every open tap's stream (its last line sent) and refuses new ones: for the
    /// sidecar's shutdown.
    pub fn close(&self) {
        let shared = &self.shared;
        let mut subscribers = shared.subscribers();
        shared.closed.store(true, Relaxed);
        // Dropping the senders ends each body once its queued lines are read.
        subscribers.list.clear();
        shared.open.store(0, Relaxed);
    }
}

// === impl Shared ===

impl Shared {
    fn subscribers(&self) -> MutexGuard<'_, Subscribers> {
        // Nothing panics while the list is held, and a list left as it was is still
        // a list.
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A request's headers as a tap shows them: every name; the values of those in
    /// `--tap-headers` (several joined with `, `), [`REDACTED`] for the others.
    fn headers(&self, headers: &HeaderMap) -> BTreeMap<String, String> {
        headers
            .keys()
            .map(|name| {
                let value = if self.shown.contains(name) {
                    let values = headers.get_all(name).iter();
                    let values: Vec<_> = values
                        .map(|v| String::from_utf8_lossy(v.as_bytes()))
                        .collect();
                    values.join(", ")
                } else {
                    REDACTED.to_owned()
                };
                (name.as_str().to_owned(), value)
            })
            .collect()
    }
}

// === impl TokenBucket ===

impl TokenBucket {
    /// A bucket for `rate` events a second, starting full.
    fn full(rate: u32, now: Instant) -> TokenBucket {
        let rate = f64::from(rate.max(1));
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes a token if one is left at `now`.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

// === impl Lines ===

impl Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.lines
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

// === impl Subscription ===

impl Drop for Subscription {
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut subscribers = shared.subscribers();
        subscribers.list.retain(|s| s.id != self.id);
        shared.open.store(subscribers.list.len(), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use mesh_registry_api::call::CallEvent;

    use super::*;
    use crate::metrics::Direction;
    use crate::observe::Kind;

    fn counter() -> IntCounter {
        IntCounter::new("dropped", "dropped").unwrap()
    }

    fn tap_showing(shown: &[&'static str]) -> (Tap, IntCounter) {
        let dropped = counter();
        let shown = shown.iter().map(|n| HeaderName::from_static(n)).collect();
        (Tap::new(shown, dropped.clone()), dropped)
    }

    fn record(service: &str, path: &str, status: u16) -> Record {
        let mut record = Record::new(Direction::Outbound, Kind::Request, service);
        record.path = Some(path.to_owned());
        record.method = Some(http::Method::GET);
        record.status = Some(status);
        record
    }

    /// The next line of a tap's body, if one is ready (the body is never waited on).
    fn next_line(body: &mut BoxBody) -> Option<CallEvent> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let data = frame.into_data().unwrap();
                assert!(data.ends_with(b"\n"));
                Some(serde_json::from_slice(&data).unwrap())
            }
            Poll::Ready(None) => panic!("the tap ended"),
            Poll::Ready(Some(Err(e))) => panic!("{e}"),
            Poll::Pending => None,
        }
    }

    fn open(tap: &Tap, query: &str) -> BoxBody {
        let response = tap.subscribe(query).unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/x-ndjson"
        );
        response.into_body()
    }

    #[test]
    fn header_values_are_redacted_unless_named() {
        let (tap, _) = tap_showing(&["x-shown", "cookie"]);
        let mut headers = HeaderMap::new();
        headers.insert("x-shown", HeaderValue::from_static("visible"));
        headers.append("cookie", HeaderValue::from_static("a=1"));
        headers.append("cookie", HeaderValue::from_static("b=2"));
        headers.insert("x-secret", HeaderValue::from_static("hidden"));
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        headers.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        headers.insert("x-odd", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let shown = tap.shared.headers(&headers);
        let expected: BTreeMap<String, String> = [
            ("authorization", REDACTED),
            ("cookie", "a=1, b=2"),
            ("proxy-authorization", REDACTED),
            ("x-odd", REDACTED),
            ("x-secret", REDACTED),
            ("x-shown", "visible"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(shown, expected);

        let (tap, _) = tap_showing(&["x-odd"]);
        let shown = tap.shared.headers(&headers);
        assert_eq!(shown["x-odd"], "caf\u{fffd}", "a value that is not UTF-8");
        assert_eq!(shown["authorization"], REDACTED);
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_bucket_allows_a_burst_then_its_rate() {
        let mut bucket = TokenBucket::full(5, Instant::now());
        let taken = (0..10).filter(|_| bucket.take(Instant::now())).count();
        assert_eq!(taken, 5, "a burst of the rate");
        tokio::time::advance(Duration::from_millis(199)).await;
        assert!(!bucket.take(Instant::now()), "not yet a whole token");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(bucket.take(Instant::now()), "one token per 1/rate s");
        assert!(!bucket.take(Instant::now()));
        tokio::time::advance(Duration::from_secs(60)).await;
        let taken = (0..10).filter(|_| bucket.take(Instant::now())).count();
        assert_eq!(taken, 5, "never more than the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tap_sends_matching_calls_within_its_rate() {
        let (tap, dropped) = tap_showing(&[]);
        assert!(!tap.active());
        tap.publish(&record("web", "/a", 200));
        let mut body = open(&tap, "service=web&path_prefix=/a&max_rps=2");
        assert!(tap.active());
        assert!(
            next_line(&mut body).is_none(),
            "nothing before the tap opened"
        );

        tap.publish(&record("web", "/b", 200));
        tap.publish(&record("other", "/a", 200));
        assert!(next_line(&mut body).is_none(), "not matched");
        assert_eq!(dropped.get(), 0, "calls not matched are not dropped");

        for _ in 0..5 {
            tap.publish(&record("web", "/a/1", 200));
        }
        let event = next_line(&mut body).unwrap();
        assert_eq!(event.path.as_deref(), Some("/a/1"));
        assert_eq!(event.service, "web");
        assert_eq!(event.headers, None, "a record without headers");
        assert!(next_line(&mut body).is_some());
        assert!(next_line(&mut body).is_none(), "a burst of max_rps");
        assert_eq!(dropped.get(), 3);

        tokio::time::advance(Duration::from_millis(500)).await;
        tap.publish(&record("web", "/a/2", 200));
        assert_eq!(next_line(&mut body).unwrap().path.as_deref(), Some("/a/2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_loses_events_beyond_its_queue() {
        let (tap, dropped) = tap_showing(&["x-shown"]);
        let mut body = open(&tap, "");
        let mut record = record("web", "/", 200);
        let mut headers = HeaderMap::new();
        headers.insert("x-shown", HeaderValue::from_static("yes"));
        headers.insert("x-secret", HeaderValue::from_static("no"));
        record.headers = Some(headers);
        // Paced at the default rate, so only the queue drops.
        let pace = Duration::from_secs(1) / TapFilter::default().rate();
        let extra = 10;
        for _ in 0..QUEUE + extra {
            tap.publish(&record);
            tokio::time::advance(pace).await;
        }
        assert_eq!(dropped.get(), extra as u64);
        let event = next_line(&mut body).unwrap();
        let headers = event.headers.unwrap();
        assert_eq!(headers["x-shown"], "yes");
        assert_eq!(headers["x-secret"], REDACTED);
    }

    #[test]
    fn bad_queries_and_a_tap_too_many_are_refused() {
        let (tap, _) = tap_showing(&[]);
        let (status, why) = tap.subscribe("status=6xx").unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(why.contains("status"), "{why}");
        assert!(!tap.active(), "a refused tap is not open");

        let mut bodies: Vec<_> = (0..MAX_TAPS).map(|_| open(&tap, "")).collect();
        let (status, why) = tap.subscribe("").unwrap_err();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains(&MAX_TAPS.to_string()), "{why}");

        // A client gone frees its slot at once, with no call published meanwhile.
        bodies.pop();
        let _again = open(&tap, "");
        drop(bodies);
        drop(_again);
        assert!(!tap.active(), "every tap closed");
    }

    #[tokio::test]
    async fn close_ends_every_tap_after_its_lines() {
        let (tap, _) = tap_showing(&[]);
        let body = open(&tap, "");
        tap.publish(&record("web", "/last", 200));
        tap.close();
        assert!(!tap.active());
        let collected = body.collect().await.unwrap().to_bytes();
        let event: CallEvent = serde_json::from_slice(&collected).unwrap();
        assert_eq!(event.path.as_deref(), Some("/last"));
        let (status, _) = tap.subscribe("").unwrap_err();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
