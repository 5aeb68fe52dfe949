//! Whole HTTP/1.1 answers, from a client that needs no setup: what tests ask of the
//! registry's API, a sidecar's admin pages or its listeners.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The registry's index of what an answer lists (`X-Mesh-Index`).
const INDEX: &str = "x-mesh-index";

/// An answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body as text (lossily).
    pub text: String,
    /// The body as JSON; `Null` when it is not JSON.
    pub json: serde_json::Value,
    pub trailers: Option<HeaderMap>,
}

// === impl Answer ===

impl Answer {
    /// Reads a whole answer, trailers included.
    pub async fn read(response: Response<Incoming>) -> Answer {
        Self::try_read(response).await.unwrap()
    }

    /// [`Answer::read`], with the error of a body that broke off.
    pub async fn try_read(response: Response<Incoming>) -> Result<Answer, hyper::Error> {
        let (parts, body) = response.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            text: String::from_utf8_lossy(&body).into_owned(),
            json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            body,
            trailers,
        })
    }

    /// The registry's `X-Mesh-Index` of what the answer lists.
    pub fn index(&self) -> u64 {
        self.headers[INDEX].to_str().unwrap().parse().unwrap()
    }

    /// The `code` of an error body (`{"error": {"code": …}}`); empty without one.
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }

    /// The `field` of an error body: the part of the request it is about.
    pub fn error_field(&self) -> Option<&str> {
        self.json["error"]["field"].as_str()
    }
}

/// A client for HTTP/1.1 over plain TCP.
pub fn h1() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `request` on `client` and reads the whole answer.
pub async fn send<B>(client: &Client<HttpConnector, B>, request: Request<B>) -> Answer
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Answer::read(client.request(request).await.unwrap()).await
}

/// One request with `headers` and `body`, answered whole; `Err` when nothing (or only part
/// of an answer) came back: for servers that may not be up yet.
pub async fn try_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = h1().request(request.body(Full::new(body))?).await?;
    Ok(Answer::try_read(response).await?)
}

/// [`try_request`], for a server that must answer.
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
    try_request(method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

pub async fn get(url: &str) -> Answer {
    request(Method::GET, url, &[], Bytes::new()).await
}

/// A GET to a listener at `addr` naming `host` as the destination: a call through a
/// sidecar's outbound listener.
pub async fn get_h1(addr: SocketAddr, host: &str, path: &str) -> Answer {
    let url = format!("http://{addr}{path}");
    request(Method::GET, &url, &[("host", host)], Bytes::new()).await
}
