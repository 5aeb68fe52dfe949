//! A small HTTP/1.1 client for the registry API.
//!
//! Every method is one request; [`Client::watch`] and [`crate::Registrar`] build the
//! long-running loops (blocking queries, heartbeats) on top of it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client as HttpClient, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::types::{
    ErrorBody, ErrorDetail, Heartbeat, Instance, Lease, Registration, ServiceList, ServiceListing,
};
use crate::{Watch, validate};

/// Deadline for a plain (non-blocking) request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time a blocking query may take past its `wait`: the server adds up to wait/16
/// of jitter, and the answer must still travel back.
const BLOCKING_MARGIN: Duration = Duration::from_secs(10);

/// What went wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid registry URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// Refused before sending: the server would reject it too.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("registry at {base} unreachable: {source}")]
    Transport {
        base: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("registry at {base} did not answer within {timeout:?}")]
    Timeout { base: String, timeout: Duration },
    /// The registry answered with an error body.
    #[error("registry answered {status}: {} ({})", detail.message, detail.code)]
    Api { status: u16, detail: ErrorDetail },
    #[error("registry answered {status} with an unreadable body: {reason}")]
    BadResponse { status: u16, reason: String },
}

impl ClientError {
    /// The registry does not know the instance (a heartbeat after its lease was dropped).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }

    /// Worth retrying later: the registry was unreachable, slow or failing, rather than
    /// rejecting what we sent.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } | ClientError::Timeout { .. } => true,
            ClientError::Api { status, .. } | ClientError::BadResponse { status, .. } => {
                *status >= 500
            }
            ClientError::InvalidUrl { .. } | ClientError::InvalidArgument { .. } => false,
        }
    }
}

/// Handle to one registry; cheap to clone (connections are pooled and shared).
#[derive(Clone)]
pub struct Client {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    /// `http://host:port` with any trailing slash removed.
    base: Arc<str>,
    token: Option<Arc<str>>,
}

// === impl Client ===

impl Client {
    /// A client for the registry at `url` (`http://host:port`; a bare `host:port` means
    /// http). TLS to the registry is not supported.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let with_scheme = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let uri: http::Uri = with_scheme.parse().map_err(|_| invalid("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("only http:// registries are supported"));
        }
        if uri.authority().is_none() {
            return Err(invalid("missing host"));
        }
        let base = with_scheme.trim_end_matches('/').to_owned();
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        Ok(Client {
            http,
            base: base.into(),
            token: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request (the registry's `--token`).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into().into());
        self
    }

    /// The registry's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Creates or replaces an instance; returns it as stored.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        registration: &Registration,
    ) -> Result<Instance, ClientError> {
        check_names(service, id)?;
        validate::address(&registration.address).map_err(|message| {
            ClientError::InvalidArgument {
                field: "address",
                message,
            }
        })?;
        let body = serde_json::to_vec(registration).expect("registration serializes");
        let path = format!("/v1/services/{service}/instances/{id}");
        self.call(Method::PUT, &path, Some(body), REQUEST_TIMEOUT)
            .await
    }

    /// Renews an instance's lease. A 404 ([`ClientError::is_not_found`]) means the registry
    /// dropped the instance: register it again.
    pub async fn heartbeat(
        &self,
        service: &str,
        id: &str,
        heartbeat: &Heartbeat,
    ) -> Result<Lease, ClientError> {
        check_names(service, id)?;
        let body = serde_json::to_vec(heartbeat).expect("heartbeat serializes");
        let path = format!("/v1/services/{service}/instances/{id}/heartbeat");
        self.call(Method::PUT, &path, Some(body), REQUEST_TIMEOUT)
            .await
    }

    /// Removes an instance. Removing one the registry does not know is not an error.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), ClientError> {
        check_names(service, id)?;
        let path = format!("/v1/services/{service}/instances/{id}");
        match self
            .call::<serde_json::Value>(Method::DELETE, &path, None, REQUEST_TIMEOUT)
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// The passing instances of a service, now.
    pub async fn service(&self, service: &str) -> Result<ServiceListing, ClientError> {
        check_service(service)?;
        let path = format!("/v1/services/{service}");
        self.call(Method::GET, &path, None, REQUEST_TIMEOUT).await
    }

    /// Blocks until the service's index exceeds `index` or `wait` elapses, then returns the
    /// passing instances. `index` 0 answers at once.
    pub async fn service_blocking(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Result<ServiceListing, ClientError> {
        check_service(service)?;
        let path = format!(
            "/v1/services/{service}?index={index}&wait={}ms",
            wait.as_millis()
        );
        self.call(Method::GET, &path, None, wait + BLOCKING_MARGIN)
            .await
    }

    /// Asks the registry's CA to sign `csr` (PEM) for `service`, with the mesh join token.
    pub async fn sign(
        &self,
        service: &str,
        csr: &str,
        join_token: &str,
    ) -> Result<crate::SignedCertificate, ClientError> {
        check_service(service)?;
        let body = crate::SignRequest {
            service: service.to_owned(),
            csr: csr.to_owned(),
        };
        let body = serde_json::to_vec(&body).expect("sign request serializes");
        let token = Some(join_token);
        self.call_with(
            Method::POST,
            "/v1/ca/sign",
            Some(body),
            REQUEST_TIMEOUT,
            token,
        )
        .await
    }

    /// Every service with its instance counts.
    pub async fn services(&self) -> Result<ServiceList, ClientError> {
        self.call(Method::GET, "/v1/services", None, REQUEST_TIMEOUT)
            .await
    }

    /// A long-poll watch of one service: see [`Watch`].
    pub fn watch(&self, service: &str) -> Watch {
        Watch::new(self.clone(), service)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let token = self.token.clone();
        self.call_with(method, path_and_query, body, timeout, token.as_deref())
            .await
    }

    /// One request with `bearer` (if any) as its token.
    async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
        bearer: Option<&str>,
    ) -> Result<T, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base))
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::InvalidUrl {
                url: format!("{}{path_and_query}", self.base),
                reason: e.to_string(),
            })?;

        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| self.transport(e))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.transport(e))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                base: self.base.to_string(),
                timeout,
            })??;
        decode(status, &bytes)
    }

    fn transport(&self, e: impl std::error::Error + Send + Sync + 'static) -> ClientError {
        ClientError::Transport {
            base: self.base.to_string(),
            source: Box::new(e),
        }
    }
}

fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    let bad = |reason: String| ClientError::BadResponse {
        status: status.as_u16(),
        reason,
    };
    if status.is_success() {
        // 204 has no body; callers that expect one never get a 204.
        let bytes = if bytes.is_empty() { b"null" } else { bytes };
        return serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()));
    }
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => Err(ClientError::Api {
            status: status.as_u16(),
            detail: body.error,
        }),
        Err(_) => Err(bad(String::from_utf8_lossy(bytes)
            .chars()
            .take(200)
            .collect())),
    }
}

fn check_service(service: &str) -> Result<(), ClientError> {
    validate::service_name(service).map_err(|message| ClientError::InvalidArgument {
        field: "service",
        message,
    })
}

fn check_names(service: &str, id: &str) -> Result<(), ClientError> {
    check_service(service)?;
    validate::instance_id(id).map_err(|message| ClientError::InvalidArgument {
        field: "id",
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Client::new("http://r:7700/").unwrap().base_url(),
            "http://r:7700"
        );
        assert_eq!(Client::new("r:7700").unwrap().base_url(), "http://r:7700");
        assert!(Client::new("https://r:7700").is_err());
        assert!(Client::new("http://").is_err());
    }

    #[test]
    fn error_bodies_become_api_errors() {
        let body = br#"{"error":{"code":"not_found","message":"no such instance"}}"#;
        let err = decode::<Lease>(StatusCode::NOT_FOUND, body).unwrap_err();
        assert!(err.is_not_found());
        assert!(!err.is_transient());
        let err = decode::<Lease>(StatusCode::BAD_GATEWAY, b"<html>").unwrap_err();
        assert!(err.is_transient());
    }
}
