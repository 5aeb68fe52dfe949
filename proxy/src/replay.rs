//! A request body that can be sent again: the first attempt streams it live while a copy
//! is kept (up to a limit), and a retry replays the copy, then continues with whatever
//! of the original has not been read yet.
//!
//! Streaming live matters: a client-streaming or bidirectional gRPC call must reach the
//! server before the client has finished sending, so the body is never held back to be
//! buffered first. A body that outgrows the limit (or declares a length over it) is still
//! sent whole by the first attempt that reads it; only then is it no longer replayable.
//! Until an attempt has read anything, any body may be sent again: a connection refused
//! before the first byte costs nothing to retry, whatever the body's size.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxBody, BoxError};

/// Clones share one state; the clone being sent holds it while it reads.
pub struct ReplayBody {
    shared: Arc<Mutex<Option<State>>>,
    /// The state while this clone is reading (taken from `shared`, put back on drop).
    state: Option<State>,
    /// Chunks of the copy this clone has replayed so far.
    replayed: usize,
    trailers_sent: bool,
    hint: SizeHint,
}

struct State {
    /// What is left of the original body.
    rest: BoxBody,
    /// The copy, chunk by chunk; emptied when it outgrows the limit.
    copy: Vec<Bytes>,
    copied: usize,
    trailers: Option<HeaderMap>,
    limit: usize,
    /// The copy no longer holds the whole body read so far (or, from the start, will not
    /// be kept because the declared length is over the limit).
    overflowed: bool,
    /// Something of the original has been read.
    touched: bool,
    ended: bool,
}

// === impl ReplayBody ===

impl ReplayBody {
    pub fn new(body: BoxBody, limit: usize) -> Self {
        let hint = body.size_hint();
        let state = State {
            overflowed: hint.lower() > limit as u64,
            rest: body,
            copy: Vec::new(),
            copied: 0,
            trailers: None,
            limit,
            touched: false,
            ended: false,
        };
        ReplayBody {
            shared: Arc::new(Mutex::new(Some(state))),
            state: None,
            replayed: 0,
            trailers_sent: false,
            hint,
        }
    }

    /// A body for another attempt, if the whole body can still be sent: nothing of it
    /// has been read yet, or the copy holds everything read so far; and no earlier
    /// attempt is still reading the original.
    pub fn try_clone(&self) -> Option<ReplayBody> {
        let shared = self.shared.lock().expect("replay lock");
        match shared.as_ref() {
            Some(state) if state.sendable() => Some(ReplayBody {
                shared: self.shared.clone(),
                state: None,
                replayed: 0,
                trailers_sent: false,
                hint: self.hint,
            }),
            _ => None,
        }
    }

    /// True if another attempt could still be made (see [`try_clone`](Self::try_clone)).
    pub fn is_replayable(&self) -> bool {
        matches!(self.shared.lock().expect("replay lock").as_ref(), Some(s) if s.sendable())
    }
}

// === impl State ===

impl State {
    fn sendable(&self) -> bool {
        !self.touched || !self.overflowed
    }

    /// Notes what the live original gave the clone reading it: data joins the copy
    /// (until the copy outgrows the limit), trailers are kept, the end is marked. That
    /// clone has now sent them, so its `replayed` and `trailers_sent` move on.
    fn keep(
        &mut self,
        polled: &Poll<Option<Result<Frame<Bytes>, BoxError>>>,
        replayed: &mut usize,
        trailers_sent: &mut bool,
    ) {
        if polled.is_ready() {
            self.touched = true;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.copied += data.len();
                    if self.copied > self.limit {
                        self.overflowed = true;
                        self.copy.clear();
                    } else if !self.overflowed {
                        self.copy.push(data.clone());
                        *replayed += 1;
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    self.trailers = Some(trailers.clone());
                    *trailers_sent = true;
                }
            }
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Err(_))) => self.overflowed = true,
            Poll::Pending => {}
        }
        if self.rest.is_end_stream() {
            self.ended = true;
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.state.is_none() {
            match this.shared.lock().expect("replay lock").take() {
                Some(state) => this.state = Some(state),
                // Another attempt is still reading the original: this one has nothing.
                None => {
                    return Poll::Ready(Some(Err(
                        "request body is held by an earlier attempt".into()
                    )));
                }
            }
        }
        let state = this.state.as_mut().expect("state taken above");

        // First, what earlier attempts already read.
        if !state.overflowed && this.replayed < state.copy.len() {
            this.replayed += 1;
            return Poll::Ready(Some(Ok(Frame::data(state.copy[this.replayed - 1].clone()))));
        }
        if state.ended {
            if !this.trailers_sent
                && let Some(trailers) = state.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }

        // Then the live original, copying as it goes.
        let polled = Pin::new(&mut state.rest).poll_frame(cx);
        state.keep(&polled, &mut this.replayed, &mut this.trailers_sent);
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            Some(s) => {
                s.ended
                    && (s.overflowed || self.replayed >= s.copy.len())
                    && (self.trailers_sent || s.trailers.is_none())
            }
            None => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        // Hand the state back so a later attempt can replay.
        if let Some(state) = self.state.take() {
            *self.shared.lock().expect("replay lock") = Some(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::body;

    #[tokio::test]
    async fn a_retry_replays_the_whole_body_with_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", "1".parse().unwrap());
        let original = body::boxed(
            http_body_util::Full::new(Bytes::from_static(b"hello"))
                .with_trailers(async move { Some(Ok(trailers)) }),
        );
        let first = ReplayBody::new(original, 1024);
        let second = first.try_clone().unwrap();
        let a = first.collect().await.unwrap();
        assert_eq!(a.trailers().unwrap()["x-t"], "1");
        assert_eq!(a.to_bytes(), "hello");
        let b = second.collect().await.unwrap();
        assert_eq!(b.trailers().unwrap()["x-t"], "1");
        assert_eq!(b.to_bytes(), "hello");
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_read_continues_with_the_rest() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4).into_sender_receiver();
        tx.send(Bytes::from_static(b"ab")).await.unwrap();
        let mut first = ReplayBody::new(body::boxed(rx), 1024);
        let retry = first.try_clone().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first);
        tx.send(Bytes::from_static(b"cd")).await.unwrap();
        drop(tx);
        assert_eq!(retry.collect().await.unwrap().to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_sent_once_then_not_replayable() {
        let big = body::full(vec![7u8; 100]);
        let original = ReplayBody::new(big, 10);
        assert!(original.is_replayable(), "nothing read yet");
        let first = original
            .try_clone()
            .expect("the first attempt always gets the body");
        assert_eq!(first.collect().await.unwrap().to_bytes().len(), 100);
        assert!(!original.is_replayable(), "read past the limit");
        assert!(original.try_clone().is_none());
    }

    #[tokio::test]
    async fn an_attempt_that_read_nothing_leaves_even_a_large_body_sendable() {
        let original = ReplayBody::new(body::full(vec![7u8; 100]), 10);
        drop(original.try_clone().unwrap());
        let second = original
            .try_clone()
            .expect("an unread body can go elsewhere");
        assert_eq!(second.collect().await.unwrap().to_bytes().len(), 100);
    }

    /// A body fed from a channel, for the tests.
    trait IntoSenderReceiver {
        fn into_sender_receiver(self) -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody);
    }

    impl IntoSenderReceiver
        for (
            tokio::sync::mpsc::Sender<Bytes>,
            tokio::sync::mpsc::Receiver<Bytes>,
        )
    {
        fn into_sender_receiver(self) -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody) {
            (self.0, ChannelBody(self.1))
        }
    }

    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }
}
