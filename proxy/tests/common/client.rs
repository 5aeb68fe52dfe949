//! Clients for the tests beyond the shared HTTP/1.1 one: HTTP/2 connections, and raw bytes.

use std::net::SocketAddr;

use http::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{Answer, TestBody};

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
        Answer::read(send.send_request(request).await.unwrap()).await
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
