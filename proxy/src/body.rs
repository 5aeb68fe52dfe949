//! The body type every listener answers with, and a wrapper that notes when the caller's
//! own request body broke.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body of any origin: an app's response, a peer's, or one we made.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// A caller's request body as a listener hands it to the request path: hyper's, or the
/// one the HTTP/1.1 path of our own reads ([`crate::h1`]).
pub trait CallerBody:
    Body<Data = Bytes, Error: std::fmt::Display + Into<BoxError>> + Send + Unpin + 'static
{
}

impl<B> CallerBody for B
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Into<BoxError>,
{
}

/// Boxes any body into a [`BoxBody`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body with nothing in it.
pub fn empty() -> BoxBody {
    boxed(http_body_util::Empty::new())
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    boxed(http_body_util::Full::new(bytes.into()))
}

/// The caller's request body, noting when reading it failed (a malformed chunk, an
/// upload cut short, a reset stream): a try that fails then is the caller's doing, not
/// the endpoint's, and must not count against the endpoint's health.
pub struct FromCaller<B> {
    inner: B,
    fault: CallerFault,
}

/// Why the caller's body could not be read, once it could not; shared with the
/// [`FromCaller`] body it watches. The default watches no body: it never has a fault, and
/// costs no allocation (most requests have no body).
#[derive(Clone, Debug, Default)]
pub struct CallerFault(Option<Arc<OnceLock<String>>>);

// === impl FromCaller ===

impl<B> FromCaller<B> {
    pub fn new(inner: B) -> (Self, CallerFault) {
        let fault = CallerFault(Some(Arc::default()));
        (
            FromCaller {
                inner,
                fault: fault.clone(),
            },
            fault,
        )
    }
}

impl<B> Body for FromCaller<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled
            && let Some(fault) = &self.fault.0
        {
            let _ = fault.set(e.to_string());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl CallerFault ===

impl CallerFault {
    /// What went wrong reading the caller's body, if anything did.
    pub fn get(&self) -> Option<&str> {
        self.0.as_ref()?.get().map(String::as_str)
    }
}
