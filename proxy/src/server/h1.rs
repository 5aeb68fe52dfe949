//! HTTP/1.1 served by the proxy's own engine ([`crate::h1`]) rather than hyper's: one
//! task per connection reads each request head in place, hands the request to the
//! handler, and writes the answer itself, in the same task. Between requests it waits
//! for the socket to become readable holding no buffer at all (a kept-alive connection
//! costs its socket and its task); a request's body is read, as slices of the same
//! buffer, by whoever sends it on, and the buffer comes back with the body's end.
//!
//! What it does not serve it hands to hyper, before anything of it was answered, with
//! the bytes it has read so far replayed: HTTP/2 (its preface), upgrades and CONNECT
//! (their connection may become a tunnel), and `Expect: 100-continue`. TLS connections
//! never come here.
//!
//! The same limits as hyper's side: the head within `max_header_bytes` and 100 fields
//! and within the header read timeout of its first byte, a new connection's first byte
//! within that timeout too, the next request within the idle timeout, the drain on stop
//! (the request in progress is answered with `Connection: close`). One coarse watchdog
//! per connection keeps the timeouts, as on hyper's side: no timer is set per request. A refused head is
//! answered as hyper answers it (400, 414 or 431, then closed).

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot::error::TryRecvError;

use super::{Answer, Connection, Peer, stopped};
use crate::body::BoxBody;
use crate::h1::answer::{self, Asked};
use crate::h1::upload::{Lent, Reader, Returned, Upload};
use crate::h1::{self, HeadError, RequestHead};
use crate::io::{Io, Rewound};

/// The most header fields a request head may have, as with hyper.
const MAX_HEADERS: usize = 100;

/// The HTTP/2 connection preface: a connection that begins with it is hyper's.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What answers requests the engine reads.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<Upload>,
        peer: &Peer,
    ) -> impl Future<Output = Response<BoxBody>> + Send;
}

/// What waiting for a request head came to.
enum Next {
    Head(Box<RequestHead>),
    /// hyper's: these bytes were read and must be read again.
    Decline(Bytes),
    Refuse(HeadError),
    Close,
}

/// Where a connection's loop is, for its watchdog: each change is counted, so the
/// watchdog tells one long wait from two.
struct Phase {
    now: AtomicU8,
    changes: AtomicU64,
}

const WAITING: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

impl Phase {
    fn set(&self, phase: u8) {
        self.now.store(phase, Relaxed);
        self.changes.fetch_add(1, Relaxed);
    }
}

impl Connection {
    /// Serves HTTP/1.1 requests with `handler` until the connection closes, handing it to
    /// hyper with `fallback` for what the engine declines.
    pub async fn own<O, H, F>(mut self, handler: O, fallback: H)
    where
        O: Handler,
        H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        let Some((io, peer)) = self.secure(None).await else {
            return;
        };
        let stream = match io {
            Io::Plain(stream) => stream,
            io => return self.http(io, peer, fallback).await,
        };
        let phase = Phase {
            now: AtomicU8::new(HEAD),
            changes: AtomicU64::new(0),
        };
        // One coarse timer per connection, none per request.
        let declined = tokio::select! {
            biased;
            declined = self.serve_own(stream, &peer, &handler, &phase) => declined,
            () = self.watchdog(&phase) => None,
        };
        if let Some((read, stream)) = declined {
            // Boxed: hyper's connection is large, and rare here.
            Box::pin(self.http(Rewound::new(read, stream), peer, fallback)).await;
        }
    }

    /// The connection's requests, until it closes or one is declined: then the bytes read
    /// and the connection, for hyper.
    async fn serve_own<O: Handler>(
        &self,
        stream: TcpStream,
        peer: &Peer,
        handler: &O,
        phase: &Phase,
    ) -> Option<(Bytes, TcpStream)> {
        let limits = h1::Limits {
            max_head_bytes: self.serve.limits.max_header_bytes,
            max_headers: MAX_HEADERS,
        };
        let (half, mut write) = stream.into_split();
        let mut reader = Reader {
            half,
            buf: BytesMut::new(),
        };
        let mut first = true;
        loop {
            let head = match next_head(&mut reader, first, &limits, phase).await {
                Next::Head(head) => head,
                Next::Decline(read) => {
                    let stream = reader.half.reunite(write).ok()?;
                    return Some((read, stream));
                }
                Next::Refuse(e) => {
                    tracing::debug!(listener = self.serve.name, error = %e, "request head refused");
                    let _ = refuse(&mut write, &e).await;
                    return None;
                }
                Next::Close => return None,
            };
            first = false;
            if declined(&head) {
                let mut read = BytesMut::from(&head.raw[..]);
                read.extend_from_slice(&reader.buf);
                let stream = reader.half.reunite(write).ok()?;
                return Some((read.freeze(), stream));
            }
            phase.set(BUSY);
            let mut asked = Asked {
                head: head.method == Method::HEAD,
                version: head.version,
                keep_alive: head.keep_alive,
                trailers: h1::lists(&head.headers, header::TE, "trailers"),
            };
            let (request, lent) = request(*head, reader, limits);
            // Boxed, as is the answer's writing: the connection's future then stays small
            // while it waits for its next request.
            let answered = Box::pin(handler.handle(request, peer)).await;
            // Draining: this answer is the connection's last.
            asked.keep_alive &= !*self.stop.borrow();
            let mut pending = None;
            let mut kept = match lent {
                Lent::Kept(reader) => Some(reader),
                Lent::Lent(mut back) => match back.try_recv() {
                    Ok(Returned {
                        reader,
                        whole: true,
                    }) => Some(reader),
                    Err(TryRecvError::Empty) => {
                        pending = Some(back);
                        None
                    }
                    _ => {
                        // The body was left unread: what follows cannot be parsed.
                        asked.keep_alive = false;
                        None
                    }
                },
            };
            match Box::pin(answer::write(&mut write, asked, answered)).await {
                Ok(true) => {}
                Ok(false) => return close(write).await,
                Err(e) => {
                    tracing::debug!(listener = self.serve.name, error = %e, "answer cut short");
                    return None;
                }
            }
            if let Some(back) = pending {
                // The answer is out before the body is in (an app that answers early):
                // the connection goes on only once the body has ended.
                let wait = self.serve.limits.header_read_timeout;
                kept = match tokio::time::timeout(wait, back).await {
                    Ok(Ok(Returned {
                        reader,
                        whole: true,
                    })) => Some(reader),
                    _ => None,
                };
            }
            let Some(back) = kept else {
                return close(write).await;
            };
            reader = back;
            if *self.stop.borrow() {
                return close(write).await;
            }
        }
    }

    /// Resolves when the connection must close: a request head begun and not finished
    /// within the header read timeout (checked once per timeout, as on hyper's side, so
    /// within twice it), no new request for the idle timeout, or the listener stopping:
    /// at once between requests, else after the drain time.
    async fn watchdog(&self, phase: &Phase) {
        let limits = &self.serve.limits;
        let tick = limits
            .idle_timeout
            .map_or(limits.header_read_timeout, |idle| {
                idle.min(limits.header_read_timeout)
            });
        let mut stop = self.stop.clone();
        let mut seen = phase.changes.load(Relaxed);
        let mut idle = Duration::ZERO;
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = stopped(&mut stop) => {
                    if phase.now.load(Relaxed) != WAITING {
                        tokio::time::sleep(self.serve.drain).await;
                    }
                    return;
                }
            }
            let changes = phase.changes.load(Relaxed);
            let moved = changes != seen;
            seen = changes;
            match phase.now.load(Relaxed) {
                HEAD if !moved => {
                    tracing::debug!(
                        listener = self.serve.name,
                        "connection closed: request head not sent within the header read timeout"
                    );
                    return;
                }
                WAITING if !moved => {
                    idle += tick;
                    if limits.idle_timeout.is_some_and(|limit| idle >= limit) {
                        tracing::debug!(listener = self.serve.name, "connection closed: idle");
                        return;
                    }
                }
                _ => idle = Duration::ZERO,
            }
        }
    }
}

/// Waits for the next request head: its first byte, holding no buffer, then the rest.
async fn next_head(reader: &mut Reader, first: bool, limits: &h1::Limits, phase: &Phase) -> Next {
    if reader.buf.is_empty() {
        reader.buf = BytesMut::new();
        if !first {
            phase.set(WAITING);
        }
        if reader.half.readable().await.is_err() {
            return Next::Close;
        }
        phase.set(HEAD);
    }
    read_head(reader, first, limits).await
}

/// Reads until `reader`'s buffer holds a whole request head (or the HTTP/2 preface, on a
/// new connection).
async fn read_head(reader: &mut Reader, first: bool, limits: &h1::Limits) -> Next {
    loop {
        let buf = &mut reader.buf;
        if !buf.is_empty() {
            let seen = buf.len().min(PREFACE.len());
            if first && PREFACE.starts_with(&buf[..seen]) {
                if seen == PREFACE.len() {
                    return Next::Decline(buf.split().freeze());
                }
            } else {
                match h1::parse_request(buf, limits) {
                    Ok(Some(head)) => return Next::Head(Box::new(head)),
                    Ok(None) => {}
                    Err(e) => return Next::Refuse(e),
                }
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(HEAD_READ_SIZE);
        }
        match reader.half.read_buf(buf).await {
            Ok(0) | Err(_) => return Next::Close,
            Ok(_) => {}
        }
    }
}

/// How much a head's read asks the socket for at a time.
const HEAD_READ_SIZE: usize = 4096;

/// Requests hyper serves: their connection may become a tunnel, or the caller waits for
/// leave to send its body.
fn declined(head: &RequestHead) -> bool {
    head.method == Method::CONNECT
        || head.expect_continue
        || head.headers.contains_key(header::UPGRADE)
}

/// The request for the handler, with its body read through `reader`.
fn request(head: RequestHead, reader: Reader, limits: h1::Limits) -> (Request<Upload>, Lent) {
    let (body, lent) = Upload::new(head.framing, reader, limits);
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;
    (request, lent)
}

/// Answers a refused head as hyper does, before the connection is closed.
async fn refuse(write: &mut OwnedWriteHalf, e: &HeadError) -> std::io::Result<()> {
    let status = match e {
        HeadError::TooLarge(_) | HeadError::Malformed(httparse::Error::TooManyHeaders) => {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        }
        HeadError::TargetTooLong => StatusCode::URI_TOO_LONG,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut response = Response::new(crate::body::empty());
    *response.status_mut() = status;
    let asked = Asked {
        head: false,
        version: Version::HTTP_11,
        keep_alive: false,
        trailers: false,
    };
    answer::write(write, asked, response).await?;
    write.shutdown().await
}

/// Closes the connection once its last answer is out.
async fn close<T>(mut write: OwnedWriteHalf) -> Option<T> {
    let _ = write.shutdown().await;
    None
}
