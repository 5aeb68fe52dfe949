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
//! (the request in progress is answered with `Connection: close`). A refused head is
//! answered as hyper answers it (400, 414 or 431, then closed).

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
            let head = match self.next_head(&mut reader, first, &limits).await {
                Next::Head(head) => head,
                Next::Decline(read) => {
                    let Ok(stream) = reader.half.reunite(write) else {
                        return;
                    };
                    let io = Rewound::new(read, stream);
                    return self.http(io, peer, fallback).await;
                }
                Next::Refuse(e) => {
                    tracing::debug!(listener = self.serve.name, error = %e, "request head refused");
                    let _ = refuse(&mut write, &e).await;
                    return;
                }
                Next::Close => return,
            };
            first = false;
            if declined(&head) {
                let mut read = BytesMut::from(&head.raw[..]);
                read.extend_from_slice(&reader.buf);
                let Ok(stream) = reader.half.reunite(write) else {
                    return;
                };
                let io = Rewound::new(read.freeze(), stream);
                return self.http(io, peer, fallback).await;
            }
            let mut asked = Asked {
                head: head.method == Method::HEAD,
                version: head.version,
                keep_alive: head.keep_alive,
                trailers: takes_trailers(&head.headers),
            };
            let (request, lent) = request(*head, reader, limits);
            let answered = tokio::select! {
                biased;
                response = handler.handle(request, &peer) => response,
                () = self.held.drained() => return,
            };
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
            let written = tokio::select! {
                biased;
                written = answer::write(&mut write, asked, answered) => written,
                () = self.held.drained() => return,
            };
            match written {
                Ok(true) => {}
                Ok(false) => return close(write).await,
                Err(e) => {
                    tracing::debug!(listener = self.serve.name, error = %e, "answer cut short");
                    return;
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
        }
    }

    /// Waits for the next request head: for its first byte within the idle timeout (the
    /// header read timeout on a new connection), holding no buffer, then for the rest
    /// within the header read timeout.
    async fn next_head(&mut self, reader: &mut Reader, first: bool, limits: &h1::Limits) -> Next {
        let header_read = self.serve.limits.header_read_timeout;
        if reader.buf.is_empty() {
            reader.buf = BytesMut::new();
            let wait = match first {
                true => Some(header_read),
                false => self.serve.limits.idle_timeout,
            };
            let readable = bounded(wait, reader.half.readable());
            let ready = tokio::select! {
                biased;
                () = stopped(&mut self.stop) => return Next::Close,
                ready = readable => ready,
            };
            if !matches!(ready, Some(Ok(()))) {
                return Next::Close;
            }
        }
        match tokio::time::timeout(header_read, read_head(reader, first, limits)).await {
            Ok(next) => next,
            Err(_) => {
                tracing::debug!(
                    listener = self.serve.name,
                    "connection closed: request head not sent within the header read timeout"
                );
                Next::Close
            }
        }
    }
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

/// Whether the caller said it takes trailers (`TE: trailers`).
fn takes_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    })
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
async fn close(mut write: OwnedWriteHalf) {
    let _ = write.shutdown().await;
}

/// `future`, given up after `wait` if there is one.
async fn bounded<T>(wait: Option<Duration>, future: impl Future<Output = T>) -> Option<T> {
    match wait {
        Some(wait) => tokio::time::timeout(wait, future).await.ok(),
        None => Some(future.await),
    }
}
