//! The admin listener: metrics, readiness and liveness, endpoint and policy debugging,
//! the live tap, shutdown.
//!
//! `GET /tap` streams the calls this sidecar completes ([`crate::observe::tap`]). Like
//! `/metrics`, it is open to whoever reaches the admin port: the port is for operators,
//! and the tap shows no header value the sidecar was not told to show.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use mesh_registry_api::Status;
use mesh_registry_api::sidecar::{DestinationView, EndpointView, RefusedView, SidecarReadiness};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::{self, BoxBody};
use crate::breaker::Standing;
use crate::destination::Destination;
use crate::discover::Discovery;
use crate::endpoint::{Endpoint, Source};
use crate::metrics::{EndpointState, Metrics};
use crate::policy::{Policy, PolicyView};
use crate::register::RegistrationState;
use crate::tls::IdentitySlot;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub discovery: Arc<Discovery>,
    /// With mTLS on: not ready until there is a certificate.
    pub identity: Option<Arc<IdentitySlot>>,
    /// With `--service`: the registration as it stands; not ready before the first.
    pub registration: Option<RegistrationState>,
    /// With `--service`: the local service's intentions and limits.
    pub policy: Option<Arc<Policy>>,
    /// Raised by `POST /shutdown`.
    pub shutdown: watch::Sender<bool>,
}

// === impl Admin ===

impl Admin {
    pub fn handle<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<BoxBody> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/metrics") => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            (&Method::GET, "/tap") => {
                let query = request.uri().query().unwrap_or("");
                match self.metrics.observers.tap.subscribe(query) {
                    Ok(stream) => stream,
                    Err((status, why)) => text(status, "text/plain", why),
                }
            }
            (&Method::GET, "/live") => text(StatusCode::OK, "text/plain", "live\n".into()),
            (&Method::GET, "/ready") => {
                let readiness = self.readiness();
                let status = if readiness.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let json = serde_json::to_string(&readiness).expect("readiness serializes");
                text(status, "application/json", json + "\n")
            }
            (&Method::GET, "/debug/endpoints") => {
                let views: Vec<DestinationView> = self
                    .discovery
                    .snapshot()
                    .iter()
                    .map(|d| destination_view(d))
                    .collect();
                let json = serde_json::to_string_pretty(&views).expect("views serialize");
                text(StatusCode::OK, "application/json", json + "\n")
            }
            (&Method::GET, "/debug/policy") => {
                let json =
                    serde_json::to_string_pretty(&self.policy_view()).expect("views serialize");
                text(StatusCode::OK, "application/json", json + "\n")
            }
            (&Method::POST, "/shutdown") => {
                if !peer.ip().is_loopback() {
                    return text(
                        StatusCode::FORBIDDEN,
                        "text/plain",
                        "shutdown is accepted from loopback only\n".into(),
                    );
                }
                tracing::info!(%peer, "shutdown requested on the admin port");
                self.shutdown.send_replace(true);
                text(StatusCode::ACCEPTED, "text/plain", "shutting down\n".into())
            }
            (
                _,
                "/metrics" | "/live" | "/ready" | "/debug/endpoints" | "/debug/policy" | "/tap"
                | "/shutdown",
            ) => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n".into(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /metrics, /ready, /live, /debug/endpoints, /debug/policy, /tap\n"
                    .into(),
            ),
        }
    }
}

impl Admin {
    /// The `/ready` body: ready or why not, and how the instance is registered.
    fn readiness(&self) -> SidecarReadiness {
        let reason = match &self.identity {
            Some(slot) if slot.get().is_none() => {
                Some(format!("no mTLS certificate yet: {}", slot.why_missing()))
            }
            _ if self
                .registration
                .as_ref()
                .is_some_and(|r| !*r.ready.borrow()) =>
            {
                Some("not registered yet: the registry has not answered a registration".into())
            }
            _ => None,
        };
        // The policy in force may not be the registry's: it stays ready (the last policy
        // read is applied), and says why.
        let policies = self.policy.iter().cloned().chain(
            self.discovery
                .snapshot()
                .into_iter()
                .map(|d| d.policy.clone()),
        );
        let mut readiness = SidecarReadiness {
            ready: reason.is_none(),
            reason,
            registry_connected: Some(self.metrics.registry_connected.connected()),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            policy: policies.filter_map(|p| p.problem()).collect(),
            ..SidecarReadiness::default()
        };
        if let Some(registration) = &self.registration {
            let registered = *registration.registered.borrow();
            let status = *registration.health.borrow();
            readiness.registered = Some(registered);
            // Only `passing` gets traffic.
            readiness.status = Some(status);
            readiness.passing = Some(registered && status == Status::Passing);
        }
        readiness
    }
}

impl Admin {
    /// `/debug/policy`: the local service's intentions and limits with recent denials,
    /// and each destination's routes.
    fn policy_view(&self) -> serde_json::Value {
        let serving = self.policy.as_ref().map(|p| {
            let mut view = serde_json::to_value(p.view()).expect("views serialize");
            view["recent_denials"] =
                serde_json::to_value(p.denials.recent()).expect("views serialize");
            view
        });
        let destinations: Vec<PolicyView> = self
            .discovery
            .snapshot()
            .iter()
            .filter(|d| mesh_registry_api::validate::service_name(&d.name).is_ok())
            .map(|d| d.policy.view())
            .collect();
        serde_json::json!({ "serving": serving, "destinations": destinations })
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<BoxBody> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// One destination as `/debug/endpoints` shows it.
fn destination_view(d: &Destination) -> DestinationView {
    let set = d.endpoints();
    let listed = match set.source {
        Some(Source::Registry) => "listed as passing by the registry",
        Some(Source::Dns) => "returned by DNS",
        None => "",
    };
    let now = Instant::now();
    DestinationView {
        service: d.name.clone(),
        protocol: if set.opaque { "tcp" } else { "http" }.to_owned(),
        source: set.source,
        last_error: d.last_error(),
        endpoints: set
            .endpoints
            .iter()
            .map(|e| endpoint_view(e, listed, now))
            .collect(),
        refused: set
            .refused
            .iter()
            .map(|r| RefusedView {
                address: r.address.clone(),
                reason: r.why.clone(),
            })
            .collect(),
    }
}

/// An endpoint `listed` by its source, as it stands at `now`.
fn endpoint_view(e: &Endpoint, listed: &str, now: Instant) -> EndpointView {
    let (state, reason, ejected_by, ejected_for_ms) = match e.breaker.standing(now) {
        Standing::Ready => (EndpointState::Ready, listed.to_owned(), None, None),
        Standing::ProbeDue { .. } => (
            EndpointState::Ready,
            "ejection over: the next request is its probe".to_owned(),
            None,
            None,
        ),
        Standing::Ejected { until, rule, .. } => (
            EndpointState::Ejected,
            format!(
                "ejected: {}",
                e.breaker.ejection_reason().unwrap_or_default()
            ),
            Some(rule.as_str().to_owned()),
            Some(until.saturating_duration_since(now).as_millis() as u64),
        ),
    };
    let outcomes = e.breaker.success_rate(now);
    EndpointView {
        address: e.address.clone(),
        instance: e.instance.clone(),
        state: state.as_str().to_owned(),
        weight: e.weight,
        ewma_ms: e.ewma().as_secs_f64() * 1000.0,
        success: e.success(),
        tries: outcomes.tries(),
        success_rate: outcomes.rate(),
        in_flight: e.in_flight() as u64,
        open_connections: e.spliced() as u64,
        last_error: e.last_error(),
        reason,
        ejected_by,
        ejected_for_ms,
    }
}
