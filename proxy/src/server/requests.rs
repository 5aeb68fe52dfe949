//! The requests in progress on one connection, each from its head until its answer's body
//! is dropped: for HTTP/2, while its stream is open. The watchdog ([`super::idle`]) reads
//! them to close an HTTP/2 connection with no stream open, which hyper never does.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// One connection's requests, counted by the service and read by the watchdog.
#[derive(Clone, Default)]
pub struct Requests(Arc<Counts>);

#[derive(Default)]
struct Counts {
    /// Requests begun, so the watchdog can tell a quiet spell from short requests
    /// between two of its looks.
    begun: AtomicU64,
    /// Requests in progress: head received, answer not ended.
    in_progress: AtomicUsize,
}

/// One request in progress, from its head until the end of its answer (the answer's
/// body holds it, see [`Answering`]).
pub struct InProgress(Arc<Counts>);

/// An answer's body, keeping its request in progress until the body is dropped.
pub struct Answering<B> {
    body: B,
    _request: InProgress,
}

/// How long no request has been in progress, as the watchdog's looks tell it.
#[derive(Default)]
pub struct Quiet {
    /// Requests begun by the previous look.
    begun: u64,
    /// Whole ticks without a request in progress, counted from the first look that found
    /// none (the last one may have ended just before it); `None` when the previous look
    /// found one.
    ticks: Option<u128>,
}

// === impl Requests ===

impl Requests {
    /// A request begun, in progress until the returned value (or the answer body it is
    /// moved into) is dropped.
    pub fn begin(&self) -> InProgress {
        self.0.begun.fetch_add(1, Relaxed);
        self.0.in_progress.fetch_add(1, Relaxed);
        InProgress(self.0.clone())
    }
}

// === impl InProgress ===

impl InProgress {
    /// `body`, keeping this request in progress until it is dropped.
    pub fn answering<B>(self, body: B) -> Answering<B> {
        Answering {
            body,
            _request: self,
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Relaxed);
    }
}

// === impl Answering ===

impl<B: Body<Data = Bytes> + Unpin> Body for Answering<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl Quiet ===

impl Quiet {
    /// Looks that start now: requests begun so far are not news.
    pub fn since(requests: &Requests) -> Quiet {
        Quiet {
            begun: requests.0.begun.load(Relaxed),
            ticks: None,
        }
    }

    /// One look, a tick after the previous one: how many whole ticks no request has
    /// been in progress (0 while one is, or one began since the previous look).
    pub fn look(&mut self, requests: &Requests) -> u128 {
        let begun = requests.0.begun.load(Relaxed);
        if begun != self.begun || requests.0.in_progress.load(Relaxed) > 0 {
            self.begun = begun;
            self.ticks = None;
            return 0;
        }
        let ticks = self.ticks.map_or(0, |t| t + 1);
        self.ticks = Some(ticks);
        ticks
    }

    /// Whether the connection had begun any request by the last look.
    pub fn any_begun(&self) -> bool {
        self.begun > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_spell_counts_whole_ticks_from_the_first_look_that_finds_it() {
        let requests = Requests::default();
        let mut quiet = Quiet::default();
        assert_eq!(quiet.look(&requests), 0);
        assert_eq!(quiet.look(&requests), 1);
        assert!(!quiet.any_begun());

        let answering = requests.begin().answering(crate::body::empty());
        assert_eq!(quiet.look(&requests), 0);
        assert_eq!(quiet.look(&requests), 0, "an answer still streaming");
        drop(answering);
        assert_eq!(quiet.look(&requests), 0, "it may have ended just now");
        assert_eq!(quiet.look(&requests), 1);

        // A request over between two looks still counts as activity.
        drop(requests.begin());
        assert_eq!(quiet.look(&requests), 0);
        assert!(quiet.any_begun());
    }
}
