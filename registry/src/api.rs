//! The HTTP API: one routing table, one handler per route.
//!
//! Routing is a plain match on path segments ([`crate::route`]) rather than a framework
//! router, so unknown paths (404) and wrong methods (405, with `Allow`) get the same JSON
//! error body as everything else. Who may call a route is checked by [`crate::auth`];
//! answers are built by [`crate::respond`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use mesh_registry_api::call::TapFilter;
use mesh_registry_api::policy::{Document, PolicyKind};
use mesh_registry_api::{AdminPath, StoreStatus, validate};
use tokio::sync::watch;

use crate::auth::{Credentials, Peer, Writer};
use crate::ca::Ca;
use crate::catalog::{Catalog, Refusal, UnknownInstance};
use crate::error::ApiError;
use crate::etcd::EtcdStore;
use crate::metrics::{Metrics, Route};
use crate::respond::{
    Body, INDEX_HEADER, json, no_content, set_index, short_duration, text_response,
};
use crate::route::{Target, target};
use crate::sidecar::{self, Relays};
use crate::store::{Store, WriteError};
use crate::tokens::ScopedTokens;
use crate::{auth, request, ui, watch as blocking};

/// Set to `true` on every answer of a replica that cannot reach etcd: it answers from
/// the last state it saw.
pub const STALE_HEADER: &str = "x-mesh-stale";

/// The OpenAPI 3 description of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Everything a request handler needs.
pub struct State {
    /// Where the catalog is kept; reads come from its catalog, writes go through it.
    store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// What proves who writes: the operator token, service tokens, certificates.
    credentials: Credentials,
    /// The CA, when the registry signs sidecars' certificates.
    ca: Option<Arc<Ca>>,
    /// Bearer tokens for `POST /v1/ca/sign`, each with the services it may claim.
    join_tokens: ScopedTokens,
    /// Turns true when shutdown starts: blocking queries answer at once and `/readyz`
    /// reports 503.
    shutdown: watch::Receiver<bool>,
    /// Sidecar admin pages being relayed, at most `--max-admin-relays` at once.
    relays: Relays,
    /// Blocking queries parked, at most `--max-parked-per-client` per client IP.
    parking: blocking::Parking,
}

type Answer = Result<Response<Body>, ApiError>;

/// What handlers read of a request besides its body.
struct Incoming<'r> {
    method: &'r Method,
    uri: &'r http::Uri,
    headers: &'r HeaderMap,
    /// The service a client certificate proved (TLS listener only).
    peer: Option<&'r Peer>,
    /// Where the request came from (the connection's peer address).
    client: IpAddr,
}

/// The body of `GET /readyz`.
#[derive(serde::Serialize)]
struct Readiness {
    status: &'static str,
    version: &'static str,
    /// `null` when the registry signs no certificates.
    ca: Option<CaSummary>,
    store: StoreStatus,
    /// What writes must carry: `open` (nothing: anyone may write) or the kinds of
    /// credentials this registry accepts.
    writes: Vec<&'static str>,
}

#[derive(serde::Serialize)]
struct CaSummary {
    trust_domain: String,
    /// The lifetime of the certificates it issues (`--cert-ttl`).
    cert_ttl: String,
}

// === impl State ===

impl State {
    pub fn new(
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
        credentials: Credentials,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        State {
            store: catalog,
            credentials,
            ca: None,
            join_tokens: ScopedTokens::default(),
            shutdown,
            relays: Relays::new(sidecar::DEFAULT_MAX_RELAYS),
            parking: blocking::Parking::new(
                blocking::DEFAULT_MAX_PARKED_PER_CLIENT,
                metrics.watchers.clone(),
            ),
            metrics,
        }
    }

    /// Holds relays and parked queries to other caps than the flags' defaults.
    pub fn with_bounds(mut self, max_admin_relays: usize, max_parked_per_client: usize) -> Self {
        self.relays = Relays::new(max_admin_relays);
        self.parking = blocking::Parking::new(max_parked_per_client, self.metrics.watchers.clone());
        self
    }

    /// Keeps the catalog in etcd: writes go there, reads come from the mirror.
    pub fn with_etcd(mut self, etcd: Arc<EtcdStore>) -> Self {
        self.store = etcd;
        self
    }

    fn catalog(&self) -> &Catalog {
        self.store.catalog()
    }

    /// Turns on certificate signing for the holders of `join_tokens`.
    pub fn with_ca(mut self, ca: Arc<Ca>, join_tokens: ScopedTokens) -> Self {
        self.ca = Some(ca);
        self.join_tokens = join_tokens;
        self
    }

    /// Answers one request from `client`. Never fails: every error becomes a JSON answer.
    pub async fn handle<B>(&self, request: Request<B>, client: IpAddr) -> Response<Body>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = std::time::Instant::now();
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        // Put there by the TLS listener when the client's certificate proved a service.
        let peer = parts.extensions.get::<Peer>();
        let (route, answer) = match self.unsynced(&path) {
            Some(refused) => (Route::Unknown, Err(refused)),
            None => {
                let request = Incoming {
                    method: &parts.method,
                    uri: &parts.uri,
                    headers: &parts.headers,
                    peer,
                    client,
                };
                self.dispatch(request, body).await
            }
        };
        let mut response = answer.unwrap_or_else(ApiError::into_response);
        if !response.headers().contains_key(INDEX_HEADER) {
            set_index(&mut response, self.catalog().index());
        }
        if self.store.stale() {
            response
                .headers_mut()
                .insert(STALE_HEADER, http::HeaderValue::from_static("true"));
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

    /// The routing table: each route with its label for the metrics and its handler.
    async fn dispatch<B>(&self, request: Incoming<'_>, body: B) -> (Route, Answer)
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Incoming {
            method,
            uri,
            headers,
            client,
            ..
        } = request;
        let Some(target) = target(uri.path()) else {
            return (Route::Unknown, Err(no_route(uri.path())));
        };
        let query = uri.query();
        match (method, target) {
            (&Method::GET, Target::Services) => {
                (Route::ListServices, self.list_services(query, client).await)
            }
            (&Method::GET, Target::Service(s)) => {
                (Route::GetService, self.get_service(s, query, client).await)
            }
            (&Method::PUT, Target::Instance(s, id)) => {
                (Route::Register, self.register(s, id, &request, body).await)
            }
            (&Method::DELETE, Target::Instance(s, id)) => {
                (Route::Deregister, self.deregister(s, id, &request).await)
            }
            (&Method::PUT, Target::Heartbeat(s, id)) => (
                Route::Heartbeat,
                self.heartbeat(s, id, &request, body).await,
            ),
            // A tap is no page: its query is a filter, and who may open one is checked.
            (&Method::GET, Target::SidecarAdmin(s, id, AdminPath::Tap)) => {
                (Route::SidecarAdmin, self.sidecar_tap(s, id, &request).await)
            }
            (&Method::GET, Target::SidecarAdmin(s, id, page)) => {
                (Route::SidecarAdmin, self.sidecar_admin(s, id, page).await)
            }
            (&Method::GET, Target::Policy(s)) => {
                (Route::GetPolicy, self.get_policy(s, query, client).await)
            }
            (&Method::GET, Target::PolicyDocument(s, kind)) => {
                (Route::GetPolicy, self.get_policy_document(s, kind))
            }
            (&Method::PUT, Target::PolicyDocument(s, kind)) => (
                Route::PutPolicy,
                self.put_policy(s, kind, &request, body).await,
            ),
            (&Method::DELETE, Target::PolicyDocument(s, kind)) => (
                Route::DeletePolicy,
                self.delete_policy(s, kind, &request).await,
            ),
            (&Method::GET, Target::Events) => (Route::Events, self.events(query, client).await),
            (&Method::GET, Target::Metrics) => (Route::Metrics, Ok(self.metrics_page())),
            (&Method::GET, Target::Healthz) => (Route::Healthz, Ok(healthz())),
            (&Method::GET, Target::Readyz) => (Route::Readyz, self.readyz()),
            (&Method::POST, Target::CaSign) => (Route::CaSign, self.sign(headers, body).await),
            (&Method::GET, Target::CaBundle) => (Route::CaBundle, self.ca_bundle()),
            (&Method::GET, Target::PrometheusTargets) => {
                (Route::PrometheusTargets, Ok(self.prometheus_targets()))
            }
            (&Method::GET, Target::OpenApi) => (Route::OpenApi, Ok(openapi())),
            (&Method::GET, Target::ToDashboard) => (Route::Ui, Ok(ui::redirect())),
            (&Method::GET, Target::Ui(asset)) => (Route::Ui, Ok(asset.response())),
            (method, target) => {
                let error = ApiError::MethodNotAllowed {
                    method: method.to_string(),
                    allow: target.allowed_methods(),
                };
                (Route::Unknown, Err(error))
            }
        }
    }

    async fn list_services(&self, query: Option<&str>, client: IpAddr) -> Answer {
        let q = request::query(query)?;
        let mut index_rx = self.catalog().subscribe_catalog();
        self.block(&mut index_rx, q.index, q.wait, client).await?;
        let list = self.catalog().service_list();
        let mut response = json(StatusCode::OK, &list);
        set_index(&mut response, list.index);
        Ok(response)
    }

    async fn get_service(&self, service: &str, query: Option<&str>, client: IpAddr) -> Answer {
        validate::service_name(service).map_err(|m| ApiError::invalid("service", m))?;
        let q = request::query(query)?;
        if q.index.is_some() {
            let mut index_rx = self.catalog().subscribe(service);
            self.block(&mut index_rx, q.index, q.wait, client).await?;
        }
        let listing = self.catalog().listing(service, q.all);
        let mut response = json(StatusCode::OK, &listing);
        set_index(&mut response, listing.index);
        Ok(response)
    }

    /// Every policy document of a service, blocking like a service's listing.
    async fn get_policy(&self, service: &str, query: Option<&str>, client: IpAddr) -> Answer {
        validate::service_name(service).map_err(|m| ApiError::invalid("service", m))?;
        let q = request::query(query)?;
        if q.index.is_some() {
            let mut index_rx = self.catalog().subscribe_policy(service);
            self.block(&mut index_rx, q.index, q.wait, client).await?;
        }
        let policy = self.catalog().policy(service);
        let mut response = json(StatusCode::OK, &policy);
        set_index(&mut response, policy.index);
        Ok(response)
    }

    fn get_policy_document(&self, service: &str, kind: PolicyKind) -> Answer {
        validate::service_name(service).map_err(|m| ApiError::invalid("service", m))?;
        let policy = self.catalog().policy(service);
        let document = policy.get(kind).ok_or_else(|| no_policy(service, kind))?;
        let mut response = json(StatusCode::OK, &document);
        set_index(&mut response, policy.index);
        Ok(response)
    }

    /// Stores one policy document, checked whole first: a document the rules refuse
    /// never reaches a store, nor a sidecar. The service's owner or the operator writes.
    async fn put_policy<B>(
        &self,
        service: &str,
        kind: PolicyKind,
        request: &Incoming<'_>,
        body: B,
    ) -> Answer
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let writer = self.policy_writer(service, request)?;
        let body = self.write_body(request.headers, body).await?;
        let document = Document::parse(kind, &body).map_err(|e| {
            let field = if e.field.is_empty() {
                "body".to_owned()
            } else {
                e.field
            };
            ApiError::InvalidArgument {
                field,
                message: e.message,
            }
        })?;
        let stored = document.to_value();
        let index = self
            .store
            .put_policy(service, kind, Some(document))
            .await?
            .unwrap_or_else(|| self.catalog().policy(service).index);
        tracing::info!(%service, %kind, owner = %writer.owner(), index, "policy stored");
        let mut response = json(StatusCode::OK, &stored);
        set_index(&mut response, index);
        Ok(response)
    }

    async fn delete_policy(
        &self,
        service: &str,
        kind: PolicyKind,
        request: &Incoming<'_>,
    ) -> Answer {
        let writer = self.policy_writer(service, request)?;
        let index = self.store.put_policy(service, kind, None).await?;
        let index = index.unwrap_or_else(|| self.catalog().policy(service).index);
        tracing::info!(%service, %kind, owner = %writer.owner(), index, "policy deleted");
        let mut response = no_content();
        set_index(&mut response, index);
        Ok(response)
    }

    /// Who writes a service's policy: its owner's credentials or the operator's.
    fn policy_writer(&self, service: &str, request: &Incoming<'_>) -> Result<Writer, ApiError> {
        let writer = self.credentials.writer(request.headers, request.peer)?;
        validate::service_name(service).map_err(|m| ApiError::invalid("service", m))?;
        writer.may_write(service)?;
        Ok(writer)
    }

    /// The recent events after `?index=`, blocking like the other queries until there
    /// is one.
    async fn events(&self, query: Option<&str>, client: IpAddr) -> Answer {
        let q = request::query(query)?;
        let events = self.catalog().events();
        // An index ahead of the ring's comes from before a restart: answer at once, with
        // everything, rather than block until this ring catches up with it.
        let seen = q.index.filter(|&seen| seen <= events.index());
        let mut index_rx = events.subscribe();
        self.block(&mut index_rx, seen, q.wait, client).await?;
        let page = events.since(seen.unwrap_or(0));
        let mut response = json(StatusCode::OK, &page);
        set_index(&mut response, page.index);
        Ok(response)
    }

    /// One of an instance's sidecar admin pages, read from the address it registered.
    async fn sidecar_admin(&self, service: &str, id: &str, page: AdminPath) -> Answer {
        let admin = self.admin_address(service, id)?;
        self.relays.relay(&admin, page).await
    }

    /// An instance's sidecar tap, filtered by the query (checked here, so a bad one
    /// never reaches the sidecar), for the operator only where there are credentials.
    async fn sidecar_tap(&self, service: &str, id: &str, request: &Incoming<'_>) -> Answer {
        self.may_tap(request)?;
        let query = request.uri.query().unwrap_or_default();
        let filter = TapFilter::parse(query)
            .map_err(|e| ApiError::invalid(e.param.clone(), e.to_string()))?;
        let admin = self.admin_address(service, id)?;
        let shutdown = Some(self.shutdown.clone());
        self.relays.tap(&admin, &filter, shutdown).await
    }

    /// A tap shows the paths (and the headers the sidecar names) of every call of the
    /// services the sidecar serves or calls, so it is the operator's, like removing
    /// another writer's instance; a registry without credentials lets anyone tap, as it
    /// lets anyone write.
    fn may_tap(&self, request: &Incoming<'_>) -> Result<(), ApiError> {
        let anonymous = !request.headers.contains_key(http::header::AUTHORIZATION);
        let has_operator = self.credentials.kinds().contains(&"operator-token");
        let writer = self
            .credentials
            .writer(request.headers, request.peer)
            .map_err(|e| match e {
                // What writes need is not what taps need.
                ApiError::Unauthorized(_) if anonymous && has_operator => ApiError::Unauthorized(
                    "taps need the operator token (--token) as Authorization: Bearer".into(),
                ),
                ApiError::Unauthorized(_) if anonymous => ApiError::Unauthorized(
                    "taps need the operator token, and this registry has none (--token)".into(),
                ),
                other => other,
            })?;
        match writer {
            Writer::Operator | Writer::Anonymous => Ok(()),
            other => Err(ApiError::Forbidden {
                field: "authorization".into(),
                message: format!(
                    "only the operator token (--token) may tap, not {}: a tap shows the \
                     calls of every service a sidecar serves or calls",
                    other.owner()
                ),
            }),
        }
    }

    /// The sidecar admin address an instance registered.
    fn admin_address(&self, service: &str, id: &str) -> Result<String, ApiError> {
        check_names(service, id)?;
        self.catalog()
            .admin_address(service, id)
            .map_err(|UnknownInstance| {
                ApiError::NotFound(format!("service {service:?} has no instance {id:?}"))
            })?
            .ok_or_else(|| {
                ApiError::NoAdmin(format!(
                    "instance {id:?} of service {service:?} registered no sidecar admin \
                     address (metadata \"admin\")"
                ))
            })
    }

    async fn register<B>(&self, service: &str, id: &str, request: &Incoming<'_>, body: B) -> Answer
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let writer = self.writer(service, id, request)?;
        let body = self.write_body(request.headers, body).await?;
        let registration = request::registration(&body)?;
        let (address, ttl) = (registration.address.clone(), registration.ttl);
        let owner = writer.owner();
        let (instance, index) = self
            .store
            .register(service, id, registration, &owner)
            .await
            .map_err(|e| write_error(e, service, id))?;
        tracing::info!(%service, %id, %address, %owner, generation = instance.generation, ttl = %humantime::format_duration(ttl), "registered");
        let mut response = json(StatusCode::OK, &instance);
        set_index(&mut response, index);
        Ok(response)
    }

    async fn heartbeat<B>(&self, service: &str, id: &str, request: &Incoming<'_>, body: B) -> Answer
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let writer = self.writer(service, id, request)?;
        let body = self.write_body(request.headers, body).await?;
        let beat = request::heartbeat(&body)?;
        let owner = writer.owner();
        let claim = writer.claim(&owner, beat.generation);
        let (lease, index) = self
            .store
            .heartbeat(service, id, claim, beat.status, beat.output)
            .await
            .map_err(|e| write_error(e, service, id))?;
        let mut response = json(StatusCode::OK, &lease);
        set_index(&mut response, index);
        Ok(response)
    }

    /// What every write checks first: who writes and whether they may write to
    /// `service`, then the path's names.
    fn writer(&self, service: &str, id: &str, request: &Incoming<'_>) -> Result<Writer, ApiError> {
        let writer = self.credentials.writer(request.headers, request.peer)?;
        check_names(service, id)?;
        writer.may_write(service)?;
        Ok(writer)
    }

    /// A write's body, once its writer is known: its size and type checked.
    async fn write_body<B>(&self, headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let body = request::read_body(headers, body).await?;
        request::require_json(headers, &body)?;
        Ok(body)
    }

    async fn deregister(&self, service: &str, id: &str, request: &Incoming<'_>) -> Answer {
        let writer = self.writer(service, id, request)?;
        let generation = request::query(request.uri.query())?.generation;
        let owner = writer.owner();
        let claim = writer.removal(&owner, generation);
        let index = self
            .store
            .deregister(service, id, claim)
            .await
            .map_err(|e| write_error(e, service, id))?;
        tracing::info!(%service, %id, %owner, "deregistered");
        let mut response = no_content();
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
        let scope = auth::join_scope(headers, &self.join_tokens)?;
        let body = request::read_body(headers, body).await?;
        request::require_json(headers, &body)?;
        let sign = request::sign_request(&body)?;
        auth::check_claim(scope, &sign.service)?;
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

    fn ca_bundle(&self) -> Answer {
        let ca = self.ca()?;
        Ok(text_response(
            "application/x-pem-file",
            ca.bundle().to_owned(),
        ))
    }

    fn metrics_page(&self) -> Response<Body> {
        let text = self.metrics.render(self.catalog());
        text_response("text/plain; version=0.0.4", text)
    }

    fn prometheus_targets(&self) -> Response<Body> {
        json(StatusCode::OK, &self.catalog().prometheus_targets())
    }

    /// Ready, with what clients (the dashboard, `meshctl`) show about this registry.
    fn readyz(&self) -> Answer {
        if *self.shutdown.borrow() {
            return Err(ApiError::Unavailable);
        }
        if let Some(refused) = self.unsynced("/v1/") {
            return Err(refused);
        }
        let store = self.store.status();
        let readiness = Readiness {
            status: if store.stale { "stale" } else { "ready" },
            writes: self.credentials.kinds(),
            store,
            version: env!("CARGO_PKG_VERSION"),
            ca: self.ca.as_ref().map(|ca| CaSummary {
                trust_domain: ca.trust_domain.clone(),
                cert_ttl: short_duration(ca.leaf_ttl),
            }),
        };
        Ok(json(StatusCode::OK, &readiness))
    }

    /// Until a replica has read the catalog from etcd, the API (and `/readyz`) answers
    /// 503: an empty listing would tell sidecars that every service is gone.
    fn unsynced(&self, path: &str) -> Option<ApiError> {
        (path.starts_with("/v1/") && !self.store.synced()).then(|| {
            ApiError::StoreUnavailable(
                "this replica has not read the catalog from etcd yet; try another replica"
                    .to_owned(),
            )
        })
    }

    async fn block(
        &self,
        index_rx: &mut watch::Receiver<u64>,
        seen: Option<u64>,
        wait: Duration,
        client: IpAddr,
    ) -> Result<(), ApiError> {
        let mut shutdown = self.shutdown.clone();
        blocking::until_changed(index_rx, seen, wait, &mut shutdown, &self.parking, client).await
    }
}

fn healthz() -> Response<Body> {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

fn openapi() -> Response<Body> {
    text_response("application/json", OPENAPI.to_owned())
}

fn no_route(path: &str) -> ApiError {
    ApiError::NoRoute(format!(
        "no route for {path}; see /openapi.json (a client's registry URL must be just \
         http://host:port)"
    ))
}

fn check_names(service: &str, id: &str) -> Result<(), ApiError> {
    validate::service_name(service).map_err(|m| ApiError::invalid("service", m))?;
    validate::instance_id(id).map_err(|m| ApiError::invalid("id", m))
}

/// A refused write as an answer: 404 for an instance the registry does not know (or
/// that was registered again since the generation the request named: its sender
/// registers again), 409 for one another writer owns, 503 naming etcd when the store
/// cannot take it.
fn write_error(e: WriteError, service: &str, id: &str) -> ApiError {
    match e {
        WriteError::Refused(Refusal::Unknown) => unknown(service, id),
        WriteError::Refused(Refusal::Replaced { generation }) => ApiError::NotFound(format!(
            "instance {id:?} of service {service:?} was registered again since (generation \
             {generation}); register it again"
        )),
        WriteError::Refused(Refusal::Owned { owner }) => ApiError::Conflict(format!(
            "instance {id:?} of service {service:?} is owned by {owner}, which alone may \
             renew or replace it; choose another instance id, or have {owner} (or the \
             operator) remove it"
        )),
        other => other.into(),
    }
}

fn no_policy(service: &str, kind: PolicyKind) -> ApiError {
    ApiError::NotFound(format!(
        "service {service:?} has no {kind} policy; PUT /v1/policy/{service}/{kind} writes one"
    ))
}

fn unknown(service: &str, id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "service {service:?} has no instance {id:?}; register it first"
    ))
}
