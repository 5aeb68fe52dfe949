//! What is left of a message body, taken from the front of its connection's read buffer
//! as slices of it: a request's body ([`upload`](super::upload)) or an answer's
//! ([`client`](super::client)).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tokio::io::AsyncRead;

use super::{Chunk, ChunkError, ChunkedDecoder, Framing, Limits};

/// How much one read asks the socket for.
const READ_SIZE: usize = 16 * 1024;

/// What is left of a body.
pub(super) enum Left {
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Everything until the connection closes (answers only).
    UntilClose,
}

/// What the front of the buffer held.
pub(super) enum Taken {
    Data(Bytes),
    /// The body has ended, with its trailers (empty when it had none).
    End(HeaderMap),
}

// === impl Left ===

impl Left {
    /// The body `framing` says follows a head; None when there is none.
    pub fn of(framing: Framing, limits: Limits) -> Option<Left> {
        match framing {
            Framing::Length(n) if n > 0 => Some(Left::Length(n)),
            Framing::Chunked => Some(Left::Chunked(ChunkedDecoder::new(limits))),
            Framing::UntilClose => Some(Left::UntilClose),
            _ => None,
        }
    }

    /// What the front of `buf` holds of the body, taking it out; None when more must be
    /// read first. (A body delimited by the close ends when the connection does.)
    pub fn take(&mut self, buf: &mut BytesMut) -> Result<Option<Taken>, ChunkError> {
        match self {
            Left::Length(0) => Ok(Some(Taken::End(HeaderMap::new()))),
            Left::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                Ok(Some(Taken::Data(buf.split_to(n).freeze())))
            }
            Left::Chunked(decoder) => Ok(decoder.decode(buf)?.map(|chunk| match chunk {
                Chunk::Data(data) => Taken::Data(data),
                Chunk::End(trailers) => Taken::End(trailers),
            })),
            Left::UntilClose if buf.is_empty() => Ok(None),
            Left::UntilClose => Ok(Some(Taken::Data(buf.split().freeze()))),
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            Left::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}

/// The frame that ends a body: its trailers, if it has any.
pub(super) fn last<E>(trailers: HeaderMap) -> Option<Result<Frame<Bytes>, E>> {
    (!trailers.is_empty()).then(|| Ok(Frame::trailers(trailers)))
}

/// Reads more of `io` into `buf`, making room first when little is left.
pub(super) fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}
