//! A plain HTTP/1.1 GET with a deadline: readiness checks and the traffic generator need
//! nothing more.

use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::TokioExecutor,
};

/// Cheap to clone; clones share one connection pool, so a steady stream of requests reuses
/// connections as a browser would.
#[derive(Clone, Debug)]
pub struct Client {
    inner: HyperClient<HttpConnector, Empty<Bytes>>,
}

/// A complete answer: status and the whole body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Connecting, sending or reading failed; the text is the deepest cause.
    #[error("{0}")]
    Transport(String),
}

// === impl Client ===

impl Default for Client {
    fn default() -> Self {
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        Self { inner }
    }
}

impl Client {
    /// GETs `uri`, giving up after `timeout` for the whole exchange, body included.
    pub async fn get(&self, uri: &Uri, timeout: Duration) -> Result<Response, GetError> {
        let exchange = async {
            let response = self
                .inner
                .get(uri.clone())
                .await
                .map_err(|error| GetError::Transport(root_cause(&error)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| GetError::Transport(root_cause(&error)))?
                .to_bytes();
            Ok(Response { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(GetError::Timeout(timeout)))
    }
}

// === impl Response ===

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// hyper's errors say "client error (Connect)"; the useful part ("Connection refused") is
/// at the bottom of the chain.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    deepest.to_string()
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_a_transport_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let uri: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let error = Client::default()
            .get(&uri, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(error, GetError::Transport(_)), "{error:?}");
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        // Accepts (the backlog does) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let error = Client::default()
            .get(&uri, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(error, GetError::Timeout(_)), "{error:?}");
        assert_eq!(error.to_string(), "no answer within 200ms");
    }
}
