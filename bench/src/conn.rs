//! One HTTP/1.1 client connection, driven on the current runtime.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    target: SocketAddr,
}

impl Conn {
    pub async fn open(target: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, target })
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Sends one request and reads the whole answer; returns its status and body.
    pub async fn send(
        &mut self,
        method: http::Method,
        host: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(http::StatusCode, http::HeaderMap, Bytes)> {
        if self.sender.ready().await.is_err() {
            // The peer closed the connection (keep-alive limit): open a new one.
            *self = Conn::open(self.target).await?;
        }
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }
}
