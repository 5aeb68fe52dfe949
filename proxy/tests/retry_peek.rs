//! How long the retry layer looks at a gRPC answer before it passes it on
//! (`retry::peek_grpc`), under tokio's paused clock: the answers come from a server on
//! an in-memory HTTP/2 connection, so no socket can let the clock run ahead.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::retry::peek_grpc;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the server sends after the response's headers, each part after its delay.
#[derive(Clone, Copy)]
enum Part {
    Message(&'static [u8]),
    /// Trailers with this `grpc-status`.
    Status(u32),
}

/// A response body fed from a channel, so that its frames can come late.
struct Fed(mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// A gRPC response whose headers come at once and whose `parts` follow, each `after` the
/// one before it, from a server on the other end of an in-memory HTTP/2 connection.
async fn answer(parts: Vec<(Duration, Part)>) -> Response<Incoming> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let service = service_fn(move |_: Request<Incoming>| {
        let parts = parts.clone();
        async move {
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(async move {
                for (after, part) in parts {
                    tokio::time::sleep(after).await;
                    let frame = match part {
                        Part::Message(bytes) => Frame::data(Bytes::from_static(bytes)),
                        Part::Status(code) => {
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from(code));
                            Frame::trailers(trailers)
                        }
                    };
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            });
            let response = Response::builder()
                .header("content-type", "application/grpc")
                .body(Fed(rx))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    tokio::spawn(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server_io), service),
    );
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::post("http://web/test.Echo/Call")
        .header("content-type", "application/grpc")
        .body(Empty::<Bytes>::new())
        .unwrap();
    send.send_request(request).await.unwrap()
}

const AT_ONCE: Duration = Duration::ZERO;
const MESSAGE: &[u8] = b"\x00\x00\x00\x00\x02hi";

/// Everything the peeked response still holds: its data, and its trailers' status.
async fn rest(response: Response<mesh_proxy::body::BoxBody>) -> (Bytes, Option<u32>) {
    let collected = response.into_body().collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status")?.to_str().ok()?.parse().ok());
    (collected.to_bytes(), status)
}

#[tokio::test(start_paused = true)]
async fn a_unary_answer_arriving_together_is_read_to_its_status() {
    let response = answer(vec![
        (AT_ONCE, Part::Message(MESSAGE)),
        (Duration::from_millis(1), Part::Status(14)),
    ])
    .await;
    let started = Instant::now();
    let (peeked, status) = peek_grpc(response, 1024, None).await;
    assert_eq!(status, Some(14));
    assert_eq!(started.elapsed(), Duration::from_millis(1));
    // Nothing read is lost: the caller gets the whole answer.
    assert_eq!(rest(peeked).await, (Bytes::from_static(MESSAGE), Some(14)));
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_looked_at_for_a_few_milliseconds_after_its_last_frame_then_passed_on() {
    let response = answer(vec![
        (AT_ONCE, Part::Message(MESSAGE)),
        (Duration::from_secs(1), Part::Message(MESSAGE)),
        (Duration::from_secs(1), Part::Status(0)),
    ])
    .await;
    let started = Instant::now();
    let (peeked, status) = peek_grpc(response, 1024, None).await;
    assert_eq!(status, None);
    // The first message at once, then 5 ms for a next frame that does not come.
    assert_eq!(started.elapsed(), Duration::from_millis(5));
    let (data, status) = rest(peeked).await;
    assert_eq!(data, [MESSAGE, MESSAGE].concat());
    assert_eq!(status, Some(0));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_silent_answer_is_waited_for_no_longer_than_the_first_look() {
    let response = answer(vec![
        (Duration::from_secs(10), Part::Message(MESSAGE)),
        (AT_ONCE, Part::Status(0)),
    ])
    .await;
    let started = Instant::now();
    let (peeked, status) = peek_grpc(response, 1024, None).await;
    assert_eq!(
        (status, started.elapsed()),
        (None, Duration::from_millis(20))
    );
    assert_eq!(rest(peeked).await, (Bytes::from_static(MESSAGE), Some(0)));
}

#[tokio::test(start_paused = true)]
async fn the_look_never_outlasts_the_request_deadline() {
    let response = answer(vec![
        (Duration::from_secs(10), Part::Message(MESSAGE)),
        (AT_ONCE, Part::Status(0)),
    ])
    .await;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(3);
    let (_, status) = peek_grpc(response, 1024, Some(deadline)).await;
    assert_eq!(
        (status, started.elapsed()),
        (None, Duration::from_millis(3))
    );
}

#[tokio::test(start_paused = true)]
async fn an_answer_larger_than_the_buffer_is_passed_on_without_waiting() {
    let response = answer(vec![
        (AT_ONCE, Part::Message(MESSAGE)),
        (AT_ONCE, Part::Message(MESSAGE)),
        (Duration::from_secs(1), Part::Status(0)),
    ])
    .await;
    let started = Instant::now();
    // More than `limit` bytes read: the look ends there, with no wait.
    let (peeked, status) = peek_grpc(response, MESSAGE.len(), None).await;
    assert_eq!((status, started.elapsed()), (None, Duration::ZERO));
    let (data, status) = rest(peeked).await;
    assert_eq!(data, [MESSAGE, MESSAGE].concat());
    assert_eq!(status, Some(0));
}
