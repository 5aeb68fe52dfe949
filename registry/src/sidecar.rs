//! Reading a sidecar's admin pages on the dashboard's behalf
//! (`GET /v1/services/{service}/instances/{id}/admin/{page}`).
//!
//! Browsers cannot reach sidecars' admin ports; the registry usually can, and it knows
//! where they are (instance metadata `admin`). It is deliberately no proxy: a few fixed
//! pages ([`AdminPath`]), GET only, only to the address the instance registered, one
//! fresh HTTP/1.1 connection per fetch, redirects never followed.
//!
//! What a sidecar answers is passed on as data, never as a page: the registry serves its
//! dashboard from the same origin, so the content type is the page's own whatever the
//! sidecar said, browsers are told not to sniff another, and a sandbox policy keeps
//! anything that is rendered anyway from running script there.
//!
//! A relay is bounded in every direction: at most `--max-admin-relays` at once (more are
//! answered 503 at once), the sidecar's head within [`FETCH_TIMEOUT`], its body within
//! [`RELAY_TIMEOUT`] more, at most [`MAX_BODY`] of it. The body is streamed as it
//! arrives rather than collected, so a relay holds a few small buffers, not the page: a
//! client that does not read stops the relay reading too, and is cut off by the
//! server's write timeout.
//!
//! The live tap (`/tap`) is a page that does not end, so its bounds differ: its query is
//! the sidecar's filter, parsed first and written again ([`TapFilter::to_query`]), so
//! nothing else reaches the sidecar; its head comes within [`FETCH_TIMEOUT`] like a
//! page's, then lines flow for as long as the sidecar sends them, with no size cap, for
//! at most [`TAP_MAX`]: then (or when the registry shuts down) the line under way is
//! finished and the stream ends cleanly, and clients open it again. No idle bound: a tap
//! of a quiet sidecar is quiet. A tap holds a relay slot like a page, and taps may hold
//! at most half of them, so open taps never leave page relays without one.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Empty, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use mesh_registry_api::call::TapFilter;
use mesh_registry_api::{ADMIN_METADATA, AdminPath};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use crate::catalog::{Catalog, UnknownInstance};
use crate::error::ApiError;
use crate::respond;

/// Deadline of the sidecar's answer: connecting, sending, and reading its head.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of the body, from the answer's head to its last byte; past it the answer is
/// cut off.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer relayed from a sidecar (its `/metrics` is a few tens of KiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// The longest a relayed tap runs; then it ends cleanly and clients open it again. Long
/// enough that re-opening costs nothing, short enough that a tap left open in a
/// forgotten tab does not hold its slot for good.
pub const TAP_MAX: Duration = Duration::from_secs(10 * 60);
/// Once a tap is to end, how long the line under way may take to be finished.
const LINE_GRACE: Duration = Duration::from_secs(1);
/// The most of a sidecar's refusal to tap (its 400 or 503) read to say why.
const MAX_REFUSAL: usize = 1024;
/// Relays under way at once, unless `--max-admin-relays` says otherwise. Browsers open
/// six connections per origin, meshctl one relay per sidecar; each relay holds a few
/// buffers of [`READ_BUFFER`] at most.
pub const DEFAULT_MAX_RELAYS: usize = 64;
/// Response header naming the sidecar admin address an answer was read from; only
/// answers passed on from a sidecar carry it, the registry's own errors do not.
pub const SIDECAR_HEADER: &str = "x-mesh-sidecar";
/// What a relayed answer may do in a browser that renders it anyway: nothing.
const SANDBOX: &str = "sandbox; default-src 'none'";
/// The read buffer of the connection to a sidecar, and so the largest piece of a body
/// in flight: hyper's smallest.
const READ_BUFFER: usize = 8 * 1024;

/// The relays under way, at most a fixed number at once.
pub struct Relays {
    slots: Arc<Semaphore>,
    /// Of the slots, those taps may hold at once: half of them.
    taps: Arc<Semaphore>,
    max: usize,
    tap_max: Duration,
}

/// A sidecar's page on its way to the client: the sidecar's body as it arrives, within
/// its [`Bound`]. It holds the relay's slot and the connection to the sidecar, which
/// both end when it does.
pub struct RelayBody {
    body: Incoming,
    relayed: usize,
    bound: Bound,
    admin: String,
    _slot: OwnedSemaphorePermit,
    /// A tap's share of the slots.
    _tap: Option<OwnedSemaphorePermit>,
    _connection: AbortOnDrop<()>,
}

/// How a relayed body ends.
enum Bound {
    /// A page: whole within [`RELAY_TIMEOUT`] and [`MAX_BODY`], or cut off (an error:
    /// the client must not take part of a page for all of it).
    Page { deadline: Pin<Box<Sleep>> },
    /// A tap: lines until `end` says why to stop ([`TAP_MAX`], shutdown); then the line
    /// under way is finished (within [`LINE_GRACE`]) and the stream ends cleanly.
    Tap {
        end: Option<Pin<Box<dyn Future<Output = &'static str> + Send + Sync>>>,
        grace: Option<Pin<Box<Sleep>>>,
        at_line_end: bool,
        done: bool,
        opened: std::time::Instant,
    },
}

/// Why a relayed body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the answer of the sidecar admin port {admin} was cut off: {why}")]
pub struct Cut {
    admin: String,
    why: String,
}

// === impl Relays ===

impl Relays {
    pub fn new(max: usize) -> Self {
        Relays {
            slots: Arc::new(Semaphore::new(max)),
            taps: Arc::new(Semaphore::new(max / 2)),
            max,
            tap_max: TAP_MAX,
        }
    }

    /// GETs `page` from the sidecar admin port at `admin` (`host:port`, as registrations
    /// are held to) and answers with its status and body, as the page's type. The tap is
    /// relayed unfiltered; [`Relays::tap`] passes a filter on.
    pub async fn relay(
        &self,
        admin: &str,
        page: AdminPath,
    ) -> Result<Response<respond::Body>, ApiError> {
        if page == AdminPath::Tap {
            return self.tap(admin, &TapFilter::default(), None).await;
        }
        let slot = self.slot()?;
        let deadline = Box::pin(tokio::time::sleep(RELAY_TIMEOUT));
        let (status, body) = self
            .open(admin, page, &page.to_string(), Bound::Page { deadline })
            .await?;
        Ok(RelayBody::respond(status, body, slot, None))
    }

    /// Opens the sidecar's tap with `filter` and relays its lines until [`TAP_MAX`] has
    /// passed or `shutdown` turns true, whichever comes first.
    pub async fn tap(
        &self,
        admin: &str,
        filter: &TapFilter,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> Result<Response<respond::Body>, ApiError> {
        let tap = self.taps.clone().try_acquire_owned().map_err(|_| {
            ApiError::RelaysBusy(if self.max < 2 {
                "the registry relays no taps with --max-admin-relays below 2 (taps may \
                 hold half of the relays)"
                    .to_owned()
            } else {
                format!(
                    "the registry relays {} taps already (half of --max-admin-relays, so \
                     that pages can still be relayed); try again when one has ended",
                    self.max / 2
                )
            })
        })?;
        let slot = self.slot()?;
        let query = filter.to_query();
        let target = if query.is_empty() {
            AdminPath::Tap.to_string()
        } else {
            format!("{}?{query}", AdminPath::Tap)
        };
        let (tap_max, reason) = (self.tap_max, humantime::format_duration(self.tap_max));
        let end = Box::pin(async move {
            let stopping = async {
                match shutdown {
                    Some(mut shutdown) => drop(shutdown.wait_for(|stopping| *stopping).await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(tap_max) => "it has run for the longest a tap runs",
                () = stopping => "the registry is shutting down",
            }
        });
        let bound = Bound::Tap {
            end: Some(end),
            grace: None,
            at_line_end: true,
            done: false,
            opened: std::time::Instant::now(),
        };
        let (status, body) = self.open(admin, AdminPath::Tap, &target, bound).await?;
        tracing::info!(%admin, filter = %query, longest = %reason, "sidecar tap opened");
        Ok(RelayBody::respond(status, body, slot, Some(tap)))
    }

    fn slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::RelaysBusy(format!(
                "the registry is relaying {} sidecar admin pages already \
                 (--max-admin-relays); try again in a moment",
                self.max
            ))
        })
    }

    /// GETs `target` (the page's path, with a tap's query) and returns the answer's
    /// status and the body that will relay the rest within `bound`.
    async fn open(
        &self,
        admin: &str,
        page: AdminPath,
        target: &str,
        bound: Bound,
    ) -> Result<(StatusCode, PartBody), ApiError> {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(FETCH_TIMEOUT, head(admin, page, target))
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::SidecarTimeout(format!(
                    "the sidecar admin port {admin} did not answer GET {page} within {}",
                    humantime::format_duration(FETCH_TIMEOUT)
                )))
            });
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let (status, body, connection) = match answer {
            Ok(answer) => answer,
            // At debug: the request's own log line has the status, the client the reason.
            Err(e) => {
                tracing::debug!(%admin, %page, error = %e, elapsed_ms, "sidecar admin page not read");
                return Err(e);
            }
        };
        tracing::debug!(%admin, %page, status = status.as_u16(), elapsed_ms, "sidecar admin page relayed");
        let body = PartBody {
            body,
            bound,
            admin: admin.to_owned(),
            page,
            connection,
        };
        Ok((status, body))
    }

    /// Ends taps after `tap_max` rather than [`TAP_MAX`], for tests that watch one end.
    #[cfg(test)]
    fn with_tap_max(mut self, tap_max: Duration) -> Self {
        self.tap_max = tap_max;
        self
    }
}

/// A relayed body before it holds its slot.
struct PartBody {
    body: Incoming,
    bound: Bound,
    admin: String,
    page: AdminPath,
    connection: AbortOnDrop<()>,
}

// === impl Catalog ===

impl Catalog {
    /// The sidecar admin address an instance registered (metadata `admin`), if any.
    pub fn admin_address(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Option<String>, UnknownInstance> {
        let entry = self.entry(service, id).ok_or(UnknownInstance)?;
        Ok(entry.registration.metadata.get(ADMIN_METADATA).cloned())
    }
}

/// One request on a connection of its own, up to the answer's head: a status a page can
/// have, and a body no longer than [`MAX_BODY`] if it says how long it is; for the tap,
/// 200 alone (its refusals become the registry's errors, saying why).
async fn head(
    admin: &str,
    page: AdminPath,
    target: &str,
) -> Result<(StatusCode, Incoming, AbortOnDrop<()>), ApiError> {
    let failed = |what: &str, e: &dyn Display| sidecar_unreachable(admin, format!("{what}: {e}"));
    let stream = TcpStream::connect(admin)
        .await
        .map_err(|e| failed("cannot connect", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(READ_BUFFER)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed("cannot speak HTTP/1.1 to it", &e))?;
    // The connection runs beside the exchange and is aborted with it (on a deadline too),
    // or with the body relaying its answer, so nothing of a relay outlives it.
    let connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));

    let request = Request::get(target)
        .header(header::HOST, admin)
        .header(
            header::USER_AGENT,
            concat!("mesh-registry/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .expect("a registered admin address is a valid Host header");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed("no answer", &e))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(sidecar_unreachable(
            admin,
            format!("it answered {status}, and redirects are not followed"),
        ));
    }
    if page == AdminPath::Tap && status != StatusCode::OK {
        return Err(tap_refused(admin, status, response.into_body()).await);
    }
    // A sidecar's pages answer 200, or 503 while it is not ready. Anything else (an
    // interim 101 would take the client's connection over; a 404 or 500 has a body that
    // is no page of ours) is not a sidecar answering.
    if status != StatusCode::OK && status != StatusCode::SERVICE_UNAVAILABLE {
        return Err(sidecar_unreachable(
            admin,
            format!("it answered {status}; a sidecar's admin pages answer 200 or 503"),
        ));
    }
    if page != AdminPath::Tap && response.body().size_hint().lower() > MAX_BODY as u64 {
        return Err(sidecar_unreachable(
            admin,
            format!("its answer is larger than {MAX_BODY} bytes"),
        ));
    }
    Ok((status, response.into_body(), connection))
}

/// Why a sidecar would not tap, in its own words (the first line of its answer, bounded
/// and printable): 503 when it has as many taps open as it allows, which is worth trying
/// again soon; anything else is a sidecar that cannot tap.
async fn tap_refused(admin: &str, status: StatusCode, body: Incoming) -> ApiError {
    let said = match Limited::new(body, MAX_REFUSAL).collect().await {
        Ok(body) => {
            let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            let line = text.lines().next().unwrap_or_default();
            line.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(200)
                .collect::<String>()
        }
        Err(_) => String::new(),
    };
    let said = if said.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", said.trim())
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return ApiError::RelaysBusy(format!(
            "the sidecar admin port {admin} has as many taps open as it allows{said}; \
             try again when one has ended"
        ));
    }
    sidecar_unreachable(
        admin,
        format!("it answered {status} to GET /tap (a sidecar without the tap?){said}"),
    )
}

fn sidecar_unreachable(admin: &str, why: String) -> ApiError {
    ApiError::SidecarUnreachable(format!(
        "the sidecar admin port {admin} is unreachable: {why}"
    ))
}

// === impl RelayBody ===

impl RelayBody {
    /// The answer relaying `body`: the sidecar's status, the page's own headers.
    fn respond(
        status: StatusCode,
        part: PartBody,
        slot: OwnedSemaphorePermit,
        tap: Option<OwnedSemaphorePermit>,
    ) -> Response<respond::Body> {
        let PartBody {
            body,
            bound,
            admin,
            page,
            connection,
        } = part;
        let header_value = HeaderValue::from_str(&admin).ok();
        let body = RelayBody {
            body,
            relayed: 0,
            bound,
            admin,
            _slot: slot,
            _tap: tap,
            _connection: connection,
        };
        let mut response = Response::new(Either::Right(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        let fixed = [
            (header::CONTENT_TYPE, page.content_type()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, SANDBOX),
            (header::CACHE_CONTROL, "no-store"),
        ];
        for (name, value) in fixed {
            headers.insert(name, HeaderValue::from_static(value));
        }
        if let Some(admin) = header_value {
            headers.insert(SIDECAR_HEADER, admin);
        }
        response
    }

    fn cut(&self, why: String) -> Cut {
        tracing::debug!(admin = %self.admin, %why, relayed = self.relayed, "sidecar admin page cut off");
        Cut {
            admin: self.admin.clone(),
            why,
        }
    }

    /// A page's next piece, or its cut at [`RELAY_TIMEOUT`] or [`MAX_BODY`].
    fn poll_page(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let Bound::Page { deadline } = &mut self.bound else {
            unreachable!("a page's body")
        };
        if deadline.as_mut().poll(cx).is_ready() {
            let why = format!(
                "not relayed within {}",
                humantime::format_duration(RELAY_TIMEOUT)
            );
            return Poll::Ready(Some(Err(self.cut(why))));
        }
        let data = match self.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => data,
            other => return other.map(|o| o.map(|r| r.map(Frame::data))),
        };
        self.relayed += data.len();
        if self.relayed > MAX_BODY {
            let why = format!("it is larger than {MAX_BODY} bytes");
            return Poll::Ready(Some(Err(self.cut(why))));
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    /// A tap's next lines; once it is to end, the rest of the line under way, then the
    /// end of the stream.
    fn poll_tap(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let Bound::Tap {
            end,
            grace,
            at_line_end,
            done,
            ..
        } = &mut self.bound
        else {
            unreachable!("a tap's body")
        };
        if *done {
            return Poll::Ready(None);
        }
        if let Some(ending) = end
            && let Poll::Ready(why) = ending.as_mut().poll(cx)
        {
            *end = None;
            tracing::debug!(admin = %self.admin, why, "sidecar tap ending");
            if *at_line_end {
                *done = true;
                return Poll::Ready(None);
            }
            *grace = Some(Box::pin(tokio::time::sleep(LINE_GRACE)));
        }
        if let Some(sleep) = grace
            && sleep.as_mut().poll(cx).is_ready()
        {
            // The client drops the line it has begun: it never ended.
            *done = true;
            return Poll::Ready(None);
        }
        let closing = grace.is_some();
        let mut data = match self.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => data,
            other => return other.map(|o| o.map(|r| r.map(Frame::data))),
        };
        let Bound::Tap {
            at_line_end, done, ..
        } = &mut self.bound
        else {
            unreachable!("a tap's body")
        };
        if closing && let Some(newline) = data.iter().position(|b| *b == b'\n') {
            data.truncate(newline + 1);
            *done = true;
        }
        *at_line_end = data.ends_with(b"\n");
        self.relayed += data.len();
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    /// The sidecar's next piece of data (trailers are the sidecar's business).
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Cut>>> {
        loop {
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(self.cut(format!("it broke off: {e}")))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                return Poll::Ready(Some(Ok(data)));
            }
        }
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = &mut *self;
        match this.bound {
            Bound::Page { .. } => this.poll_page(cx),
            Bound::Tap { .. } => this.poll_tap(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.bound, Bound::Tap { done: true, .. }) || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.bound {
            Bound::Page { .. } => self.body.size_hint(),
            // A tap may end before the sidecar's body does.
            Bound::Tap { .. } => SizeHint::default(),
        }
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        if let Bound::Tap { opened, .. } = &self.bound {
            let lasted_ms = opened.elapsed().as_millis() as u64;
            tracing::info!(admin = %self.admin, relayed = self.relayed, lasted_ms, "sidecar tap closed");
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_unreachable_naming_the_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        match Relays::new(1).relay(&address, AdminPath::Metrics).await {
            Err(ApiError::SidecarUnreachable(m)) => {
                assert!(m.contains(&address) && m.contains("cannot connect"), "{m}")
            }
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }

    /// A sidecar's tap that sends a line every 20 ms, each in two writes 5 ms apart, for
    /// as long as it is read.
    async fn endless_tap() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = [0u8; 1024];
                    let _ = stream.read(&mut head).await;
                    let start = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                                 transfer-encoding: chunked\r\n\r\n";
                    if stream.write_all(start.as_bytes()).await.is_err() {
                        return;
                    }
                    for n in 0u64.. {
                        let (first, rest) = (format!("{{\"n\":{n},"), "\"x\":true}\n");
                        for half in [first.as_str(), rest] {
                            let chunk = format!("{:x}\r\n{half}\r\n", half.len());
                            if stream.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                });
            }
        });
        address
    }

    /// Reads a relayed body to its end: its bytes, and whether it ended cleanly.
    async fn read_to_end(response: Response<respond::Body>) -> (Vec<u8>, bool) {
        let mut body = response.into_body();
        let mut read = Vec::new();
        loop {
            match body.frame().await {
                None => return (read, true),
                Some(Ok(frame)) => read.extend(frame.into_data().unwrap_or_default()),
                Some(Err(_)) => return (read, false),
            }
        }
    }

    fn whole_lines(read: &[u8]) -> usize {
        assert!(read.ends_with(b"\n"), "{}", String::from_utf8_lossy(read));
        let text = std::str::from_utf8(read).unwrap();
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect(line);
        }
        text.lines().count()
    }

    #[tokio::test]
    async fn a_tap_ends_cleanly_at_its_longest_on_a_line_end() {
        let admin = endless_tap().await;
        let relays = Relays::new(2).with_tap_max(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let response = relays
            .tap(&admin, &TapFilter::default(), None)
            .await
            .unwrap();
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/x-ndjson"
        );
        let (read, clean) = read_to_end(response).await;
        assert!(clean, "the tap broke off rather than ending");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(whole_lines(&read) >= 2);
        // Its slots are back.
        assert_eq!(relays.slots.available_permits(), 2);
        assert_eq!(relays.taps.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_tap_ends_cleanly_when_the_registry_shuts_down() {
        let admin = endless_tap().await;
        let relays = Relays::new(2);
        let (stopping, shutdown) = watch::channel(false);
        let response = relays
            .tap(&admin, &TapFilter::default(), Some(shutdown))
            .await
            .unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
        stopping.send_replace(true);
        let mut read = first.into_data().unwrap().to_vec();
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => read.extend(frame.into_data().unwrap_or_default()),
                Some(Err(e)) => panic!("{e}"),
            }
        }
        assert!(whole_lines(&read) >= 1);
    }

    #[tokio::test]
    async fn a_page_relay_keeps_its_deadline_and_cap() {
        let admin = endless_tap().await;
        // A page that never ends is cut off, as an error, at RELAY_TIMEOUT.
        let response = Relays::new(2)
            .relay(&admin, AdminPath::Metrics)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let (_, clean) = read_to_end(response).await;
        assert!(!clean);
        assert!(started.elapsed() >= RELAY_TIMEOUT);
    }
}
