//! Answering the caller, the same way on both sides (outbound and inbound): a proxy
//! error becomes its status or gRPC status ([`fail`]), a next hop's answer streams back
//! ([`observe`]); either way the metrics record the response when its stream ends, and
//! the endpoint's in-flight count lasts until then.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};

use crate::body::{self, BoxBody, BoxError};
use crate::endpoint::InFlight;
use crate::error::ProxyError;
use crate::grpc;
use crate::metrics::ResponseTimer;

/// Answers with a proxy error and records it.
pub fn fail(e: ProxyError, grpc_caller: bool, mut timer: ResponseTimer) -> Response<BoxBody> {
    let response = e.into_response(grpc_caller);
    if let Some(record) = timer.record_mut() {
        record.mesh_error = mesh_error(&response);
    }
    timer.finish(
        response.status(),
        grpc::status_of(response.headers()),
        false,
    );
    response
}

/// The answer for the caller: the next hop's response, streamed, with the metrics and the
/// endpoint's in-flight count settled when the stream ends.
pub fn observe<B>(
    response: Response<B>,
    mut timer: ResponseTimer,
    in_flight: Option<InFlight>,
) -> Response<BoxBody>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    // A trailers-only gRPC answer carries its status in the headers.
    let header_status = grpc::status_of(response.headers());
    if let Some(record) = timer.record_mut() {
        record.mesh_error = mesh_error(&response);
    }
    response.map(|incoming| {
        body::boxed(Observed::new(incoming, move |ending| {
            drop(in_flight);
            if let Some(record) = timer.record_mut() {
                record.response_bytes = ending.bytes;
            }
            timer.finish(status, ending.grpc_status.or(header_status), ending.failed);
        }))
    })
}

/// The `mesh-error` an answer carries (the mesh's own errors), for the record.
fn mesh_error<B>(response: &Response<B>) -> Option<String> {
    let value = response.headers().get(crate::error::MESH_ERROR)?;
    value.to_str().ok().map(str::to_owned)
}

/// How a response stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ending {
    /// `grpc-status` from the trailers, when there were any with one.
    pub grpc_status: Option<u32>,
    /// The stream failed (reset, connection lost) or was dropped before its end.
    pub failed: bool,
    /// Body bytes passed on.
    pub bytes: u64,
}

/// Forwards a body untouched and calls `on_end` exactly once: at the end of the stream,
/// on its first error, or when it is dropped early (the client went away). `on_end` is
/// kept as it is, not boxed: one allocation less per answer.
pub struct Observed<B: Body, F: FnOnce(Ending)> {
    inner: B,
    on_end: Option<F>,
    grpc_status: Option<u32>,
    bytes: u64,
}

// === impl Observed ===

impl<B: Body, F: FnOnce(Ending)> Observed<B, F> {
    pub fn new(inner: B, on_end: F) -> Self {
        Observed {
            inner,
            on_end: Some(on_end),
            grpc_status: None,
            bytes: 0,
        }
    }

    fn finish(&mut self, failed: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end(Ending {
                grpc_status: self.grpc_status,
                failed,
                bytes: self.bytes,
            });
        }
    }
}

impl<B, F> Body for Observed<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: FnOnce(Ending) + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.grpc_status = grpc::status_of(trailers);
                } else if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(true),
            Poll::Ready(None) => self.finish(false),
            Poll::Pending => {}
        }
        if self.inner.is_end_stream() && self.on_end.is_some() {
            self.finish(false);
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

impl<B: Body, F: FnOnce(Ending)> Drop for Observed<B, F> {
    fn drop(&mut self) {
        // Dropped before the end: the client hung up or the connection failed. A body
        // with nothing left (a `101`'s, which hyper never polls) ended well.
        let failed = !self.inner.is_end_stream();
        self.finish(failed);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use http::HeaderMap;
    use http_body_util::BodyExt;

    use super::*;

    /// A body that yields the given frames, for driving [`Observed`] by hand.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn recorder() -> (
        Arc<Mutex<Vec<Ending>>>,
        impl FnOnce(Ending) + Send + 'static,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (seen, move |e| sink.lock().unwrap().push(e))
    }

    #[tokio::test]
    async fn reports_the_grpc_status_of_the_trailers_once() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        let frames = Frames(VecDeque::from([
            Frame::data(Bytes::from_static(b"abc")),
            Frame::trailers(trailers),
        ]));
        let (seen, on_end) = recorder();
        let collected = Observed::new(frames, on_end).collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "5");
        let expected = Ending {
            grpc_status: Some(5),
            failed: false,
            bytes: 3,
        };
        assert_eq!(*seen.lock().unwrap(), vec![expected]);
    }

    #[tokio::test]
    async fn a_body_dropped_early_counts_as_failed() {
        let (seen, on_end) = recorder();
        let frames = Frames(VecDeque::from([
            Frame::data(Bytes::from_static(b"a")),
            Frame::data(Bytes::from_static(b"b")),
        ]));
        let mut body = Observed::new(frames, on_end);
        let _ = body.frame().await;
        assert!(seen.lock().unwrap().is_empty());
        drop(body);
        assert!(seen.lock().unwrap()[0].failed);
    }

    #[tokio::test]
    async fn a_full_body_ends_without_a_trailing_poll() {
        let (seen, on_end) = recorder();
        let mut body = Observed::new(http_body_util::Full::new(Bytes::from_static(b"x")), on_end);
        let _ = body.frame().await;
        // hyper stops polling once is_end_stream() is true: the end is reported already.
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert!(!seen.lock().unwrap()[0].failed);
    }
}
