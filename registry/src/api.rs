//! The HTTP API: one routing table, one handler per route.
//!
//! Routing is a plain match on path segments rather than a framework router, so unknown
//! paths (404) and wrong methods (405, with `Allow`) get the same JSON error body as
//! everything else.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use mesh_registry_api::validate;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::ca::Ca;
use crate::catalog::{Catalog, UnknownInstance};
use crate::error::ApiError;
use crate::join::JoinTokens;
use crate::metrics::{Metrics, Route};
use crate::{request, watch as blocking};

/// Response header carrying the index of the state an answer shows.
pub const INDEX_HEADER: &str = "x-mesh-index";

/// The OpenAPI 3 description of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Everything a request handler needs.
pub struct State {
    pub catalog: Arc<Catalog>,
    pub metrics: Arc<Metrics>,
    /// With `--token`, writes must carry it as a bearer token.
    token: Option<Vec<u8>>,
    /// The CA, when the registry signs sidecars' certificates.
    ca: Option<Arc<Ca>>,
    /// Bearer tokens for `POST /v1/ca/sign`, each with the services it may claim.
    join_tokens: JoinTokens,
    /// Turns true when shutdown starts: blocking queries answer at once and `/readyz`
    /// reports 503.
    shutdown: watch::Receiver<bool>,
}

type Answer = Result<Response<Full<Bytes>>, ApiError>;

/// A route matched by path alone; the method is checked afterwards.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Services,
    Service(&'a str),
    Instance(&'a str, &'a str),
    Heartbeat(&'a str, &'a str),
    Metrics,
    Healthz,
    Readyz,
    OpenApi,
    PrometheusTargets,
    CaSign,
    CaBundle,
}

fn target(path: &str) -> Option<Target<'_>> {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    Some(match segments.as_slice() {
        ["v1", "services"] => Target::Services,
        ["v1", "services", service] => Target::Service(service),
        ["v1", "services", service, "instances", id] => Target::Instance(service, id),
        ["v1", "services", service, "instances", id, "heartbeat"] => Target::Heartbeat(service, id),
        ["metrics"] => Target::Metrics,
        ["healthz"] => Target::Healthz,
        ["readyz"] => Target::Readyz,
        ["openapi.json"] => Target::OpenApi,
        ["v1", "prometheus", "targets"] => Target::PrometheusTargets,
        ["v1", "ca", "sign"] => Target::CaSign,
        ["v1", "ca", "bundle"] => Target::CaBundle,
        _ => return None,
    })
}

// === impl State ===

impl State {
    pub fn new(
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
        token: Option<String>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        State {
            catalog,
            metrics,
            token: token.map(String::into_bytes),
            ca: None,
            join_tokens: JoinTokens::default(),
            shutdown,
        }
    }

    /// Turns on certificate signing for the holders of `join_tokens`.
    pub fn with_ca(mut self, ca: Arc<Ca>, join_tokens: JoinTokens) -> Self {
        self.ca = Some(ca);
        self.join_tokens = join_tokens;
        self
    }

    /// Answers one request. Never fails: every error becomes a JSON answer.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = std::time::Instant::now();
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let (route, answer) = self
            .dispatch(&parts.method, &parts.uri, &parts.headers, body)
            .await;
        let mut response = answer.unwrap_or_else(ApiError::into_response);
        if !response.headers().contains_key(INDEX_HEADER) {
            set_index(&mut response, self.catalog.index());
        }
        let status = response.status();
        self.metrics.count_request(route, status.as_u16());
        let elapsed_us = started.elapsed().as_micros() as u64;
        // Reads and lease renewals are the steady background: only at debug.
        if status.is_success() && (parts.method == Method::GET || route == Route::Heartbeat) {
            tracing::debug!(method = %parts.method, %path, status = status.as_u16(), elapsed_us, "request");
        } else {
            tracing::info!(method = %parts.method, %path, status = status.as_u16(), elapsed_us, "request");
        }
        response
    }

    async fn dispatch<B>(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: B,
    ) -> (Route, Answer)
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some(target) = target(uri.path()) else {
            let message = format!(
                "no route for {}; see /openapi.json (a client's registry URL must be just \
                 http://host:port)",
                uri.path()
            );
            return (Route::Unknown, Err(ApiError::NoRoute(message)));
        };
        let query = uri.query();
        match (method, target) {
            (&Method::GET, Target::Services) => {
                (Route::ListServices, self.list_services(query).await)
            }
            (&Method::GET, Target::Service(s)) => {
                (Route::GetService, self.get_service(s, query).await)
            }
            (&Method::PUT, Target::Instance(s, id)) => {
                (Route::Register, self.register(s, id, headers, body).await)
            }
            (&Method::DELETE, Target::Instance(s, id)) => {
                (Route::Deregister, self.deregister(s, id, headers))
            }
            (&Method::PUT, Target::Heartbeat(s, id)) => {
                (Route::Heartbeat, self.heartbeat(s, id, headers, body).await)
            }
            (&Method::GET, Target::Metrics) => {
                let text = self.metrics.render(&self.catalog);
                (
                    Route::Metrics,
                    Ok(text_response("text/plain; version=0.0.4", text)),
                )
            }
            (&Method::GET, Target::Healthz) => (
                Route::Healthz,
                Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
            ),
            (&Method::GET, Target::Readyz) => (Route::Readyz, self.readyz()),
            (&Method::POST, Target::CaSign) => (Route::CaSign, self.sign(headers, body).await),
            (&Method::GET, Target::CaBundle) => (
                Route::CaBundle,
                self.ca()
                    .map(|ca| text_response("application/x-pem-file", ca.bundle().to_owned())),
            ),
            (&Method::GET, Target::PrometheusTargets) => {
                let targets = self.catalog.prometheus_targets();
                (Route::PrometheusTargets, Ok(json(StatusCode::OK, &targets)))
            }
            (&Method::GET, Target::OpenApi) => (
                Route::OpenApi,
                Ok(text_response("application/json", OPENAPI.to_owned())),
            ),
            (method, target) => {
                let allow = match target {
                    Target::Instance(..) => "PUT, DELETE",
                    Target::Heartbeat(..) => "PUT",
                    Target::CaSign => "POST",
                    _ => "GET",
                };
                let error = ApiError::MethodNotAllowed {
                    method: method.to_string(),
                    allow,
                };
                (Route::Unknown, Err(error))
            }
        }
    }

    async fn list_services(&self, query: Option<&str>) -> Answer {
        let q = request::query(query)?;
        let mut index_rx = self.catalog.subscribe_catalog();
        self.block(&mut index_rx, q.index, q.wait).await;
        let list = self.catalog.service_list();
        let mut response = json(StatusCode::OK, &list);
        set_index(&mut response, list.index);
        Ok(response)
    }

    async fn get_service(&self, service: &str, query: Option<&str>) -> Answer {
        validate::service_name(service).map_err(|m| ApiError::invalid("service", m))?;
        let q = request::query(query)?;
        if q.index.is_some() {
            let mut index_rx = self.catalog.subscribe(service);
            self.block(&mut index_rx, q.index, q.wait).await;
        }
        let listing = self.catalog.listing(service, q.all);
        let mut response = json(StatusCode::OK, &listing);
        set_index(&mut response, listing.index);
        Ok(response)
    }

    async fn register<B>(&self, service: &str, id: &str, headers: &HeaderMap, body: B) -> Answer
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let body = self.write_body(service, id, headers, body).await?;
        let registration = request::registration(&body)?;
        let (address, ttl) = (registration.address.clone(), registration.ttl);
        let (instance, index) = self
            .catalog
            .register(service, id, registration, Instant::now());
        tracing::info!(%service, %id, %address, ttl = %humantime::format_duration(ttl), "registered");
        let mut response = json(StatusCode::OK, &instance);
        set_index(&mut response, index);
        Ok(response)
    }

    async fn heartbeat<B>(&self, service: &str, id: &str, headers: &HeaderMap, body: B) -> Answer
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let body = self.write_body(service, id, headers, body).await?;
        let beat = request::heartbeat(&body)?;
        let (lease, index) = self
            .catalog
            .heartbeat(service, id, beat.status, beat.output, Instant::now())
            .map_err(|UnknownInstance| unknown(service, id))?;
        let mut response = json(StatusCode::OK, &lease);
        set_index(&mut response, index);
        Ok(response)
    }

    /// What every write with a body checks first: the token, the path's names, then
    /// the body's size and type.
    async fn write_body<B>(
        &self,
        service: &str,
        id: &str,
        headers: &HeaderMap,
        body: B,
    ) -> Result<Bytes, ApiError>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        self.authorize(headers)?;
        check_names(service, id)?;
        let body = request::read_body(headers, body).await?;
        request::require_json(headers, &body)?;
        Ok(body)
    }

    fn deregister(&self, service: &str, id: &str, headers: &HeaderMap) -> Answer {
        self.authorize(headers)?;
        check_names(service, id)?;
        let index = self
            .catalog
            .deregister(service, id)
            .map_err(|UnknownInstance| unknown(service, id))?;
        tracing::info!(%service, %id, "deregistered");
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        set_index(&mut response, index);
        Ok(response)
    }

    fn ca(&self) -> Result<&Arc<Ca>, ApiError> {
        self.ca.as_ref().ok_or_else(|| {
            ApiError::NotFound(
                "this registry has no CA: start it with --ca-dir (or --ca-cert and --ca-key) \
                 and --join-token or --join-tokens"
                    .into(),
            )
        })
    }

    /// Signs a sidecar's CSR for the holder of the join token.
    async fn sign<B>(&self, headers: &HeaderMap, body: B) -> Answer
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let ca = self.ca()?;
        let what = "a mesh join token";
        let presented = bearer_token(headers, what)?;
        let scope = self
            .join_tokens
            .scope_of(presented.as_bytes())
            .ok_or_else(|| ApiError::Unauthorized(format!("the bearer token is not {what}")))?;
        let body = request::read_body(headers, body).await?;
        request::require_json(headers, &body)?;
        let sign = request::sign_request(&body)?;
        if !scope.allows(&sign.service) {
            return Err(ApiError::Forbidden {
                field: "service".into(),
                message: format!(
                    "this join token may not claim service {:?}: it is scoped to other \
                     services (--join-tokens)",
                    sign.service
                ),
            });
        }
        let (certificate, not_after) = ca
            .sign(&sign.service, &sign.csr)
            .map_err(|e| ApiError::invalid("csr", e.to_string()))?;
        let not_after = humantime::format_rfc3339_seconds(not_after).to_string();
        tracing::info!(service = %sign.service, %not_after, "certificate issued");
        let signed = mesh_registry_api::SignedCertificate {
            certificate,
            ca: ca.bundle().to_owned(),
            not_after,
            ttl: ca.leaf_ttl,
        };
        Ok(json(StatusCode::OK, &signed))
    }

    fn readyz(&self) -> Answer {
        if *self.shutdown.borrow() {
            return Err(ApiError::Unavailable);
        }
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready"}),
        ))
    }

    async fn block(&self, index_rx: &mut watch::Receiver<u64>, seen: Option<u64>, wait: Duration) {
        let mut shutdown = self.shutdown.clone();
        blocking::until_changed(index_rx, seen, wait, &mut shutdown, &self.metrics.watchers).await;
    }

    /// Checks the bearer token of a write, in constant time so the comparison does not
    /// leak how much of a guess was right.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.token {
            Some(token) => check_bearer(headers, Some(token), "the registry token"),
            None => Ok(()),
        }
    }
}

/// Checks a bearer token in constant time, so the comparison does not leak how much of a
/// guess was right. No expected token means nobody passes.
fn check_bearer(
    headers: &HeaderMap,
    expected: Option<&[u8]>,
    what: &'static str,
) -> Result<(), ApiError> {
    let presented = bearer_token(headers, what)?;
    match expected {
        Some(token) if bool::from(presented.as_bytes().ct_eq(token)) => Ok(()),
        _ => Err(ApiError::Unauthorized(format!(
            "the bearer token is not {what}"
        ))),
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched without
/// regard to case (RFC 9110 makes authentication schemes case-insensitive) and
/// whitespace around the parts is ignored.
fn bearer_token<'h>(headers: &'h HeaderMap, what: &str) -> Result<&'h str, ApiError> {
    let missing = || {
        ApiError::Unauthorized(format!(
            "this request needs an Authorization: Bearer header with {what}"
        ))
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let (scheme, token) = value.trim().split_once([' ', '\t']).ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

fn check_names(service: &str, id: &str) -> Result<(), ApiError> {
    validate::service_name(service).map_err(|m| ApiError::invalid("service", m))?;
    validate::instance_id(id).map_err(|m| ApiError::invalid("id", m))
}

fn unknown(service: &str, id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "service {service:?} has no instance {id:?}; register it first"
    ))
}

fn set_index(response: &mut Response<Full<Bytes>>, index: u64) {
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("API types serialize");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text_response(content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_by_segment() {
        assert_eq!(target("/v1/services"), Some(Target::Services));
        assert_eq!(target("/v1/services/"), Some(Target::Services));
        assert_eq!(target("/v1/services/web"), Some(Target::Service("web")));
        assert_eq!(
            target("/v1/services/web/instances/a/heartbeat"),
            Some(Target::Heartbeat("web", "a"))
        );
        assert_eq!(target("/v1/services/web/instances"), None);
        assert_eq!(target("/"), None);
        assert_eq!(target("//v1/services"), None);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_whitespace_tolerated() {
        let check = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            check_bearer(&headers, Some(b"s3cret"), "the registry token")
        };
        for good in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR s3cret",
            "  Bearer   s3cret  ",
            "Bearer\ts3cret",
        ] {
            assert_eq!(check(good), Ok(()), "{good:?}");
        }
        for bad in [
            "Bearer s3cres",
            "Bearer s3cret2",
            "Bearers3cret",
            "Basic s3cret",
            "Bearer",
            "Bearer ",
            "s3cret",
            "Bearer s3 cret",
        ] {
            assert!(
                matches!(check(bad), Err(ApiError::Unauthorized(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_openapi_document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        for (path, methods) in [
            ("/v1/services", &["get"][..]),
            ("/v1/services/{service}", &["get"]),
            ("/v1/services/{service}/instances/{id}", &["put", "delete"]),
            ("/v1/services/{service}/instances/{id}/heartbeat", &["put"]),
            ("/metrics", &["get"]),
            ("/healthz", &["get"]),
            ("/readyz", &["get"]),
            ("/openapi.json", &["get"]),
            ("/v1/prometheus/targets", &["get"]),
            ("/v1/ca/sign", &["post"]),
            ("/v1/ca/bundle", &["get"]),
        ] {
            for m in methods {
                assert!(paths[path].get(*m).is_some(), "{m} {path} missing");
            }
            let concrete = path.replace("{service}", "web").replace("{id}", "a");
            assert!(
                target(&concrete).is_some(),
                "{path} is documented but not routed"
            );
        }
    }
}
