//! Copying bytes both ways between two connections once they no longer carry HTTP: an
//! upgraded connection (WebSocket and any other `Upgrade`) after its `101`.
//!
//! Each direction has a buffer of its own that starts at [`START`] bytes, doubles (up to
//! [`MOST`]) while reads fill it, and shrinks back once the direction has nothing to do,
//! so an idle spliced connection holds 2 × [`START`] bytes. A direction reads again only
//! once all it read has been written: a peer that never reads holds the other side back
//! (TCP's own flow control) instead of growing a queue. The end of one direction (EOF) is
//! passed on as a half-close (`shutdown` of the other side's write half); the splice ends
//! when both directions have, when either side fails, or after `idle` without a byte
//! either way.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A direction's buffer while it has little to carry.
pub const START: usize = 1024;
/// The largest a direction's buffer grows.
pub const MOST: usize = 256 * 1024;

/// Why a splice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Both sides closed (each direction saw its EOF, passed on).
    Closed,
    /// A side failed: reset, broken pipe, a TLS error.
    Reset,
    /// No byte either way for the idle timeout.
    Idle,
    /// The listener stopped and its drain time is over (the sidecar is shutting down).
    Stopped,
}

/// What went through a splice, and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spliced {
    /// Bytes from the first connection (`a`) to the second.
    pub a_to_b: u64,
    /// Bytes from the second connection (`b`) to the first.
    pub b_to_a: u64,
    pub ending: Ending,
}

/// Copies bytes both ways between `a` and `b` until both directions have ended, one side
/// fails, nothing moved for `idle`, or `stop` resolves.
pub async fn splice<A, B>(
    mut a: A,
    mut b: B,
    idle: Option<Duration>,
    stop: impl Future<Output = ()>,
) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_to_b, mut b_to_a) = (Half::new(), Half::new());
    let mut timer = idle.map(|idle| (idle, Box::pin(tokio::time::sleep(idle))));
    let mut stop = std::pin::pin!(stop);
    let ending = poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ending::Stopped);
        }
        let mut moved = false;
        let there = a_to_b.poll_copy(cx, Pin::new(&mut a), Pin::new(&mut b), &mut moved);
        let back = b_to_a.poll_copy(cx, Pin::new(&mut b), Pin::new(&mut a), &mut moved);
        match (there, back) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => {
                return Poll::Ready(Ending::Reset);
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(Ending::Closed),
            _ => {}
        }
        match &mut timer {
            Some((idle, sleep)) => poll_idle(cx, *idle, sleep.as_mut(), moved),
            None => Poll::Pending,
        }
    })
    .await;
    Spliced {
        a_to_b: a_to_b.bytes,
        b_to_a: b_to_a.bytes,
        ending,
    }
}

/// Restarts the idle timer when bytes moved; ready with [`Ending::Idle`] once it ran out.
fn poll_idle(
    cx: &mut Context<'_>,
    idle: Duration,
    mut sleep: Pin<&mut Sleep>,
    moved: bool,
) -> Poll<Ending> {
    if moved {
        sleep.as_mut().reset(Instant::now() + idle);
    }
    match sleep.poll(cx) {
        Poll::Ready(()) => Poll::Ready(Ending::Idle),
        Poll::Pending => Poll::Pending,
    }
}

/// One direction: what was read and not yet written, and how far it has got.
struct Half {
    buf: Vec<u8>,
    /// `buf[written..read]` waits to be written.
    written: usize,
    read: usize,
    /// Bytes were written since the last flush.
    unflushed: bool,
    /// The reader reached its end; the writer is being shut down.
    eof: bool,
    /// The writer is shut down: this direction is over.
    done: bool,
    bytes: u64,
}

impl Half {
    fn new() -> Half {
        Half {
            buf: vec![0; START],
            written: 0,
            read: 0,
            unflushed: false,
            eof: false,
            done: false,
            bytes: 0,
        }
    }

    /// Copies from `reader` to `writer` until `reader` has nothing for now (pending) or
    /// has ended and the end is passed on (ready).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.written == self.read && !self.eof {
                let mut buf = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut buf) {
                    Poll::Ready(read) => read?,
                    Poll::Pending => {
                        // Nothing to read: what was written goes out now (TLS holds
                        // records until flushed), and a grown buffer goes back.
                        if self.unflushed {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        if self.buf.len() > START {
                            self.buf = vec![0; START];
                        }
                        return Poll::Pending;
                    }
                }
                let n = buf.filled().len();
                if n == 0 {
                    self.eof = true;
                } else {
                    (self.written, self.read) = (0, n);
                    self.bytes += n as u64;
                    *moved = true;
                }
            }
            while self.written < self.read {
                let n = ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &self.buf[self.written..self.read])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.unflushed = true;
                *moved = true;
            }
            // A read that filled the buffer says more is coming: read more at once.
            if self.read == self.buf.len() && self.buf.len() < MOST {
                self.buf = vec![0; self.buf.len() * 2];
            }
            if self.eof {
                if self.unflushed {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.unflushed = false;
                }
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn bytes_cross_both_ways_and_a_half_close_is_passed_on() {
        let (mut client, a) = duplex(64);
        let (b, mut server) = duplex(64);
        let spliced = tokio::spawn(splice(a, b, None, std::future::pending()));
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // The client is done sending; the server still answers, then closes.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the half-close reached the server");
        let big = vec![7u8; 300_000];
        let answering = tokio::spawn(async move {
            server.write_all(&vec![7u8; 300_000]).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        answering.await.unwrap();
        assert_eq!(answer, big);
        let spliced = spliced.await.unwrap();
        assert_eq!(
            spliced,
            Spliced {
                a_to_b: 5,
                b_to_a: 300_000,
                ending: Ending::Closed
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_moving_for_the_idle_timeout_ends_it() {
        let (mut client, a) = duplex(64);
        let (b, mut server) = duplex(64);
        let spliced = tokio::spawn(splice(
            a,
            b,
            Some(Duration::from_secs(60)),
            std::future::pending(),
        ));
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b"x").await.unwrap();
        let mut got = [0u8; 1];
        server.read_exact(&mut got).await.unwrap();
        // 50 s + 50 s: past 60 s since the splice began, not since the last byte.
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert!(!spliced.is_finished());
        tokio::time::sleep(Duration::from_secs(11)).await;
        let spliced = spliced.await.unwrap();
        assert_eq!(spliced.ending, Ending::Idle);
        assert_eq!(spliced.a_to_b, 1);
    }

    #[tokio::test]
    async fn a_side_that_never_reads_holds_back_the_other_with_bounded_buffers() {
        let (mut client, a) = duplex(4096);
        let (b, server) = duplex(4096);
        let spliced = tokio::spawn(splice(a, b, None, std::future::pending()));
        // The server never reads: the client can write what the two pipes and one
        // buffer hold, and no more.
        let chunk = vec![1u8; 1024];
        let mut sent = 0usize;
        while tokio::time::timeout(Duration::from_millis(200), client.write_all(&chunk))
            .await
            .is_ok()
        {
            sent += chunk.len();
            assert!(sent <= 4096 + MOST + 4096, "the splice queued {sent} bytes");
        }
        drop(server);
        drop(client);
        assert_eq!(spliced.await.unwrap().ending, Ending::Reset);
    }
}
