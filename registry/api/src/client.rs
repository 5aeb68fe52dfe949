//! A small HTTP/1.1 client for the registry API.
//!
//! Every method is one request; [`Client::watch`] and [`crate::Registrar`] build the
//! long-running loops (blocking queries, heartbeats) on top of it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client as HttpClient, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::Rotation;
use crate::error::{ClientError, decode};
use crate::policy::{Document, PolicyKind, PolicyListing};
use crate::types::{
    Heartbeat, Instance, Lease, Registration, ServiceList, ServiceListing, SignRequest,
    SignedCertificate,
};
use crate::validate;

/// Deadline for a plain (non-blocking) request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time a blocking query may take past its `wait`: the server adds up to wait/16
/// of jitter, and the answer must still travel back.
const BLOCKING_MARGIN: Duration = Duration::from_secs(10);

/// Handle to a registry, or to several replicas of one; cheap to clone (connections are
/// pooled, and clones share which replica is in use).
///
/// With several replicas, requests go to the one that answered last. A replica that
/// cannot be reached, does not answer in time, or answers 503 (shutting down, or cut off
/// from its store) hands the request to the next one, so watches, heartbeats and
/// certificate renewals carry on across a replica's death without an error.
#[derive(Clone)]
pub struct Client {
    /// Shared by clones, so [`Client::reconnect`] reaches them all.
    http: Arc<std::sync::RwLock<Pool>>,
    /// `http://host:port` of each replica, with any trailing slash removed.
    bases: Rotation<Arc<str>>,
    token: Option<Arc<str>>,
}

// === impl Client ===

impl Client {
    /// A client for the registry at `url` (`http://host:port`, optionally with a trailing
    /// `/`; a bare `host:port` means http), or for several replicas of it, comma-separated
    /// (`http://r1:7700,http://r2:7700`). `https://` URLs need [`Client::with_tls`],
    /// which says how the registry's certificate is checked.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let bases = url
            .split(',')
            .map(|one| base(one.trim()).map(Arc::from))
            .collect::<Result<Vec<Arc<str>>, _>>()?;
        Ok(Client {
            http: Arc::new(std::sync::RwLock::new(Pool::new(no_trust()))),
            bases: Rotation::new(bases),
            token: None,
        })
    }

    /// Speaks TLS to `https://` registries with `config`: its verifier decides which
    /// certificates the registry may present (the mesh's: [`crate::spiffe`]), its client
    /// certificate resolver what this client proves (a sidecar's own certificate, once it
    /// has one). Its ALPN protocols must be empty; HTTP/1.1 is offered.
    pub fn with_tls(mut self, config: rustls::ClientConfig) -> Self {
        self.http = Arc::new(std::sync::RwLock::new(Pool::new(config)));
        self
    }

    /// Opens new connections for the next requests, on this client and its clones: a
    /// TLS connection proves the client certificate it was opened with, so after a
    /// sidecar gets its first certificate, its writes must not travel on connections
    /// opened without one. Connections in use finish their requests.
    pub fn reconnect(&self) {
        let mut pool = self.http.write().expect("the pool lock is never poisoned");
        *pool = Pool::new(pool.tls.clone());
    }

    /// Sends `Authorization: Bearer <token>` with every request (the registry's `--token`).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into().into());
        self
    }

    /// The base URL of the registry (replica) requests go to now.
    pub fn base_url(&self) -> &str {
        self.bases.current().1
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
        self.deregister_generation(service, id, None).await
    }

    /// Removes an instance if it is still the registration `generation` (as `PUT`
    /// returned it): an instance registered again since, by a newer process with the
    /// same id, is left alone. Removing one the registry does not know is not an error.
    pub async fn deregister_generation(
        &self,
        service: &str,
        id: &str,
        generation: Option<u64>,
    ) -> Result<(), ClientError> {
        check_names(service, id)?;
        let mut path = format!("/v1/services/{service}/instances/{id}");
        if let Some(generation) = generation {
            path.push_str(&format!("?generation={generation}"));
        }
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

    /// Every instance of a service, whatever its status (`?all=true`): what operators look
    /// at, where [`Client::service`] is what routing uses.
    pub async fn service_all(&self, service: &str) -> Result<ServiceListing, ClientError> {
        check_service(service)?;
        let path = format!("/v1/services/{service}?all=true");
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

    /// Every policy document of a service, now (`GET /v1/policy/{service}`). Each is
    /// still JSON: [`PolicyListing::decode`] reads one kind.
    pub async fn policy(&self, service: &str) -> Result<PolicyListing, ClientError> {
        check_service(service)?;
        let path = format!("/v1/policy/{service}");
        self.call(Method::GET, &path, None, REQUEST_TIMEOUT).await
    }

    /// Blocks until the service's policy index exceeds `index` or `wait` elapses, then
    /// returns its documents. `index` 0 answers at once.
    pub async fn policy_blocking(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Result<PolicyListing, ClientError> {
        check_service(service)?;
        let path = format!(
            "/v1/policy/{service}?index={index}&wait={}ms",
            wait.as_millis()
        );
        self.call(Method::GET, &path, None, wait + BLOCKING_MARGIN)
            .await
    }

    /// Stores `document` as the service's policy of its kind; returns it as stored
    /// (normalised by the registry).
    pub async fn put_policy(
        &self,
        service: &str,
        document: &Document,
    ) -> Result<serde_json::Value, ClientError> {
        check_service(service)?;
        let body = serde_json::to_vec(document).expect("policy documents serialize");
        let path = format!("/v1/policy/{service}/{}", document.kind());
        self.call(Method::PUT, &path, Some(body), REQUEST_TIMEOUT)
            .await
    }

    /// Removes the service's policy of `kind`. Removing one that is not there is not an
    /// error.
    pub async fn delete_policy(&self, service: &str, kind: PolicyKind) -> Result<(), ClientError> {
        check_service(service)?;
        let path = format!("/v1/policy/{service}/{kind}");
        match self
            .call::<serde_json::Value>(Method::DELETE, &path, None, REQUEST_TIMEOUT)
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// Asks the registry's CA to sign `csr` (PEM) for `service`, with the mesh join token.
    pub async fn sign(
        &self,
        service: &str,
        csr: &str,
        join_token: &str,
    ) -> Result<SignedCertificate, ClientError> {
        check_service(service)?;
        let body = SignRequest {
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

    /// One request with `bearer` (if any) as its token, decoded.
    async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
        bearer: Option<&str>,
    ) -> Result<T, ClientError> {
        let answer = self
            .exchange(method, path_and_query, body, timeout, bearer)
            .await?;
        decode(&self.url(path_and_query), answer.status, &answer.body)
    }

    /// One request, its answer read whole but not decoded: for the routes whose answers
    /// are not the registry's JSON alone (relayed sidecar pages, headers that matter).
    /// Tried at each replica in turn while they fail (see [`Client`]).
    pub(crate) async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
        bearer: Option<&str>,
    ) -> Result<Answer, ClientError> {
        let attempt = Attempt {
            method,
            path_and_query,
            has_body: body.is_some(),
            body: Bytes::from(body.unwrap_or_default()),
            timeout,
            bearer,
        };
        let mut failed = None;
        for _ in 0..self.bases.len() {
            let (at, base) = self.bases.current();
            let base = base.clone();
            let answer = self.exchange_at(&base, &attempt).await;
            let replica_failed = match &answer {
                Ok(answer) => answer.status == StatusCode::SERVICE_UNAVAILABLE,
                Err(e) => matches!(
                    e,
                    ClientError::Transport { .. } | ClientError::Timeout { .. }
                ),
            };
            if !replica_failed || self.bases.len() == 1 {
                return answer;
            }
            self.bases.fail_over(at);
            tracing::warn!(registry = %base, next = %self.base_url(), "registry replica failed; trying the next one");
            failed = Some(answer);
        }
        failed.expect("at least one replica")
    }

    /// One request to one replica.
    async fn exchange_at(&self, base: &str, attempt: &Attempt<'_>) -> Result<Answer, ClientError> {
        let url = format!("{base}{}", attempt.path_and_query);
        let mut request = Request::builder()
            .method(attempt.method.clone())
            .uri(&url)
            .header(header::ACCEPT, "application/json");
        if attempt.has_body {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = attempt.bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request =
            request
                .body(Full::new(attempt.body.clone()))
                .map_err(|e| ClientError::InvalidUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        let http = self
            .http
            .read()
            .expect("the pool lock is never poisoned")
            .http
            .clone();
        let exchange = async {
            let response = http
                .request(request)
                .await
                .map_err(|e| transport(base, e))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| transport(base, e))?
                .to_bytes();
            Ok::<_, ClientError>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(attempt.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                base: base.to_owned(),
                timeout: attempt.timeout,
            })?
    }

    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base_url())
    }
}

/// One request as it is sent to each replica it is tried at.
struct Attempt<'a> {
    method: Method,
    path_and_query: &'a str,
    has_body: bool,
    body: Bytes,
    timeout: Duration,
    bearer: Option<&'a str>,
}

/// A whole answer, before decoding.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Pooled connections to the registry, speaking TLS with `tls` to `https://` bases.
struct Pool {
    http: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    tls: rustls::ClientConfig,
}

impl Pool {
    fn new(tls: rustls::ClientConfig) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .build();
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Pool { http, tls }
    }
}

/// TLS that trusts no certificate: what `https://` gets before [`Client::with_tls`].
fn no_trust() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

fn transport(base: &str, e: impl std::error::Error + Send + Sync + 'static) -> ClientError {
    ClientError::Transport {
        base: base.to_owned(),
        source: Box::new(e),
    }
}

/// One replica's base URL, checked: `http://host:port` or `https://host:port`, without a
/// path or a query.
fn base(url: &str) -> Result<String, ClientError> {
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
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid(
            "only http:// and https:// registries are supported",
        ));
    }
    if uri.authority().is_none() {
        return Err(invalid("missing host"));
    }
    // Every route is absolute (`/v1/...`): a path here would be prepended to all of
    // them, and the registry would answer 404 to everything.
    if uri.path() != "/" || uri.query().is_some() {
        return Err(invalid(
            "the registry URL must be just http://host:port (or https://), without a path or a query",
        ));
    }
    Ok(with_scheme.trim_end_matches('/').to_owned())
}

pub(crate) fn check_service(service: &str) -> Result<(), ClientError> {
    validate::service_name(service).map_err(|message| ClientError::InvalidArgument {
        field: "service",
        message,
    })
}

pub(crate) fn check_names(service: &str, id: &str) -> Result<(), ClientError> {
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
        assert_eq!(
            Client::new("https://r:7743").unwrap().base_url(),
            "https://r:7743"
        );
        assert!(Client::new("ftp://r:7700").is_err());
        assert!(Client::new("http://").is_err());
    }

    #[test]
    fn urls_with_a_path_or_a_query_are_refused() {
        for url in [
            "http://r:7700/v1",
            "r:7700/v1/",
            "http://r:7700/?x=1",
            "http://r:7700?x",
        ] {
            let err = Client::new(url).err().expect(url).to_string();
            assert!(err.contains("just http://host:port"), "{url}: {err}");
        }
    }
}
