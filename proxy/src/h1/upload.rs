//! A caller's request body on the HTTP/1.1 path of our own: read from the caller's
//! connection by whoever sends it on (a try's upstream connection, in its own task), as
//! slices of the connection's read buffer, then handed back to the connection, with
//! whatever followed the body (a pipelined request), for its next request.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;

use super::framed::{self, Left, Taken};
use super::{ChunkError, Framing, Limits};

/// The read side of a caller's connection, and the bytes read from it but not yet used.
pub struct Reader {
    pub half: OwnedReadHalf,
    pub buf: BytesMut,
}

/// A [`Reader`] coming back to its connection from a request body.
pub struct Returned {
    pub reader: Reader,
    /// The body was read to its end: the next request starts at the front of the buffer.
    /// Otherwise the connection cannot be read any further.
    pub whole: bool,
}

/// Where a connection's [`Reader`] is while a request is answered.
pub enum Lent {
    /// The request has no body: the connection still has it.
    Kept(Reader),
    /// Its body has it; it comes back through here once the body has ended or was
    /// dropped.
    Lent(oneshot::Receiver<Returned>),
}

/// The caller's request body.
pub enum Upload {
    /// No body: nothing to read, and the connection keeps its reader.
    Empty,
    Reading(Box<Reading>),
}

/// A body being read from the caller's connection.
pub struct Reading {
    reader: Option<Reader>,
    left: Left,
    back: Option<oneshot::Sender<Returned>>,
}

/// Why the caller's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the caller closed its connection before its request body ended")]
    Closed,
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("reading the request body: {0}")]
    Io(#[from] std::io::Error),
}

// === impl Upload ===

impl Upload {
    /// The body `framing` says follows a request head, read through `reader`, which the
    /// connection keeps when there is no body.
    pub fn new(framing: Framing, reader: Reader, limits: Limits) -> (Upload, Lent) {
        let Some(left) = Left::of(framing, limits) else {
            return (Upload::Empty, Lent::Kept(reader));
        };
        let (back, returned) = oneshot::channel();
        let reading = Reading {
            reader: Some(reader),
            left,
            back: Some(back),
        };
        (Upload::Reading(Box::new(reading)), Lent::Lent(returned))
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = UploadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        match self.get_mut() {
            Upload::Empty => Poll::Ready(None),
            Upload::Reading(reading) => reading.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upload::Empty => true,
            Upload::Reading(reading) => reading.reader.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Upload::Empty => SizeHint::with_exact(0),
            Upload::Reading(reading) if reading.reader.is_none() => SizeHint::with_exact(0),
            Upload::Reading(reading) => reading.left.size_hint(),
        }
    }
}

// === impl Reading ===

impl Reading {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match self.left.take(&mut reader.buf) {
                Ok(Some(Taken::Data(data))) => {
                    // The last bytes of a length: the connection needs no further poll.
                    if matches!(self.left, Left::Length(0)) {
                        self.give_back(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Some(Taken::End(trailers))) => {
                    self.give_back(true);
                    return Poll::Ready(framed::last(trailers));
                }
                Ok(None) => {}
                Err(e) => {
                    self.give_back(false);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match ready!(framed::poll_fill(&mut reader.half, &mut reader.buf, cx)) {
                Ok(0) => {
                    self.give_back(false);
                    return Poll::Ready(Some(Err(UploadError::Closed)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.give_back(false);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn give_back(&mut self, whole: bool) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send(Returned { reader, whole });
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        // Dropped before its end (the request was refused, or its try failed): what is
        // left of it cannot be told from a next request.
        self.give_back(false);
    }
}
