//! The backend every target forwards to: answers "ok" at once, HTTP/1.1 and h2c on one port,
//! so the figures measure the proxies and not the app.
//!
//! A request whose `content-type` starts with `application/grpc` is answered like a unary
//! gRPC call that succeeded: one length-prefixed message, then the trailer `grpc-status: 0`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Either, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The answer's one gRPC message: not compressed, 4 bytes long, a protobuf with field 1 = "ok".
const GRPC_MESSAGE: &[u8] = &[0, 0, 0, 0, 4, 0x0a, 0x02, b'o', b'k'];

type Trailers = Ready<Option<Result<HeaderMap, Infallible>>>;
type Body = Either<Full<Bytes>, WithTrailers<Full<Bytes>, Trailers>>;

pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            // Errors are clients going away; nothing to report.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return Ok(Response::new(Either::Left(Full::new(Bytes::from_static(
            b"ok",
        )))));
    }
    // Read the call's message before answering, as a server would; a body left unread
    // would make HTTP/2 reset the request stream after the answer.
    let _ = req.into_body().collect().await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(GRPC_MESSAGE)).with_trailers(ready(Some(Ok(trailers))));
    let mut resp = Response::new(Either::Right(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}
