//! Clients for the tests: whole answers over HTTP/1.1 and HTTP/2.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::TestBody;

/// An answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

pub async fn get(url: &str) -> Answer {
    send(
        &h1(),
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

pub fn h1() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send<B>(client: &Client<HttpConnector, B>, request: Request<B>) -> Answer
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    read(client.request(request).await.unwrap()).await
}

/// Reads a whole answer, trailers included.
async fn read(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        text: String::from_utf8_lossy(&body).into_owned(),
        body,
        trailers,
    }
}

/// A GET over HTTP/1.1 to a listener at `addr`, naming `host` as the destination.
pub async fn get_h1(addr: SocketAddr, host: &str, path: &str) -> Answer {
    let request = Request::get(format!("http://{addr}{path}"))
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&h1(), request).await
}

/// One HTTP/2 prior-knowledge connection to a listener; every request on it may name a
/// different destination in `:authority`.
#[derive(Clone)]
pub struct H2Conn(hyper::client::conn::http2::SendRequest<TestBody>);

impl H2Conn {
    pub async fn connect(addr: SocketAddr) -> H2Conn {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2Conn(send)
    }

    pub async fn send(&self, request: Request<TestBody>) -> Answer {
        let mut send = self.0.clone();
        send.ready().await.unwrap();
        read(send.send_request(request).await.unwrap()).await
    }

    pub async fn get(&self, host: &str, path: &str) -> Answer {
        let request = Request::get(format!("http://{host}{path}"))
            .version(Version::HTTP_2)
            .body(TestBody::empty())
            .unwrap();
        self.send(request).await
    }
}

/// Writes `bytes` on a new connection to `addr` and reads until the peer closes it (or
/// 10 s pass): for requests no HTTP client library would send.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}
