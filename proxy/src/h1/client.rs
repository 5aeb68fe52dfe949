//! A request sent on by the proxy's own HTTP/1.1 engine, over a pooled plaintext
//! connection, in the calling task: the head written in one write, the answer's head
//! parsed in place, its body read as slices of the connection's buffer by whoever
//! passes it on, and the connection back in its pool once that body has ended. No
//! dispatcher task, no channel between the request and its connection.
//!
//! Requests with a body, upgrades, TLS and HTTP/2 go through hyper's client; the caller
//! decides before anything is sent ([`sends`]). The answer is read as hyper's client
//! reads it (`response.rs`), and the connection is kept as hyper keeps it: not after an
//! answer delimited by the connection's end, nor after `Connection: close`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::framed::{self, Left, Taken};
use super::{ChunkError, Framing, HeadError, Limits, encode};
use crate::body::BoxBody;

/// Bounds on an answer's head, as hyper's client has them (its largest read buffer).
const LIMITS: Limits = Limits {
    max_head_bytes: 400 * 1024,
    max_headers: 100,
};

/// How much one read asks the socket for.
const READ_SIZE: usize = 8 * 1024;

/// Idle connections kept per peer; more are closed after their answer.
const MAX_IDLE: usize = 512;

/// A plaintext connection to a peer, and the bytes read from it but not yet used.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// One peer's idle connections, shared with the answers that will put theirs back.
#[derive(Clone, Default)]
pub struct Idle(Arc<Mutex<Vec<(Conn, Instant)>>>);

/// Why a request sent on got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the connection closed before an answer came")]
    Closed,
    #[error("invalid answer: {0}")]
    Head(#[from] HeadError),
}

/// Why an answer's body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the connection closed before the answer's end")]
    Closed,
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("reading the answer: {0}")]
    Io(#[from] io::Error),
}

/// Whether this engine sends `request` on: a request without a body that asks for no
/// upgrade. (Over plaintext HTTP/1.1: the caller knows the transport and the version.)
pub fn sends(request: &Request<BoxBody>) -> bool {
    request.body().is_end_stream()
        && request.method() != Method::CONNECT
        && !request.headers().contains_key(header::UPGRADE)
}

// === impl Conn ===

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Whether the peer closed the connection (or sent something unasked) while it sat
    /// in the pool: then it must not carry a request.
    fn is_stale(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

// === impl Idle ===

impl Idle {
    /// A connection that is still open, the most recently used first; those idle for
    /// longer than `idle_timeout`, or closed, are dropped on the way.
    pub fn take(&self, idle_timeout: Duration) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.0.lock().expect("pool lock");
        while let Some((conn, since)) = idle.pop() {
            if now.saturating_duration_since(since) <= idle_timeout && !conn.is_stale() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        let mut idle = self.0.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// Idle connections kept, for tests.
    pub fn len(&self) -> usize {
        self.0.lock().expect("pool lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sends `request` (which [`sends`] accepted) over `conn` and reads its answer's head;
/// the body follows as the answer's, which puts the connection back in `idle` at its end
/// when the connection may carry another request.
pub async fn send(
    mut conn: Conn,
    request: Request<BoxBody>,
    idle: &Idle,
) -> Result<Response<Answer>, SendError> {
    let (mut parts, _) = request.into_parts();
    // No body goes: no framing header may say one does.
    parts.headers.remove(header::TRANSFER_ENCODING);
    let mut out = Vec::with_capacity(256);
    encode::request_head(
        &parts.method,
        &parts.uri,
        parts.version,
        &parts.headers,
        &mut out,
    );
    conn.stream.write_all(&out).await?;
    let head = loop {
        if !conn.buf.is_empty()
            && let Some(head) = super::parse_response(&mut conn.buf, &LIMITS, &parts.method)?
        {
            break head;
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(READ_SIZE);
        }
        if conn.stream.read_buf(&mut conn.buf).await? == 0 {
            return Err(SendError::Closed);
        }
    };
    let kept = head.keep_alive && !head.upgraded && head.framing != Framing::UntilClose;
    let mut answer = Answer {
        left: Left::of(head.framing, LIMITS),
        conn: Some(conn),
        kept,
        idle: idle.clone(),
    };
    if answer.left.is_none() {
        answer.finish();
    }
    let mut response = Response::new(answer);
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// An answer's body, read from its connection.
pub struct Answer {
    conn: Option<Conn>,
    /// None once the body has ended.
    left: Option<Left>,
    /// The connection may carry another request once the body has ended.
    kept: bool,
    idle: Idle,
}

// === impl Answer ===

impl Answer {
    /// The body has ended: the connection goes back to its pool, or is closed.
    fn finish(&mut self) {
        self.left = None;
        if let Some(conn) = self.conn.take()
            && self.kept
            && conn.buf.is_empty()
        {
            self.idle.put(conn);
        }
    }

    /// The body cannot be read further: neither can the connection.
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        self.left = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let (Some(conn), Some(left)) = (this.conn.as_mut(), this.left.as_mut()) else {
                return Poll::Ready(None);
            };
            match left.take(&mut conn.buf) {
                Ok(Some(Taken::Data(data))) => {
                    // The last bytes of a length: the connection is free at once.
                    if matches!(left, Left::Length(0)) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Some(Taken::End(trailers))) => {
                    this.finish();
                    return Poll::Ready(framed::last(trailers));
                }
                Ok(None) => {}
                Err(e) => return this.fail(e.into()),
            }
            match ready!(framed::poll_fill(&mut conn.stream, &mut conn.buf, cx)) {
                Ok(0) if matches!(left, Left::UntilClose) => {
                    this.conn = None;
                    this.left = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(BodyError::Closed),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.left.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.left {
            Some(left) if self.conn.is_some() => left.size_hint(),
            _ => SizeHint::with_exact(0),
        }
    }
}
