//! The admin listener: metrics, readiness and liveness, endpoint debugging, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use mesh_registry_api::Status;
use tokio::sync::watch;

use crate::body::{self, BoxBody};
use crate::discover::{DestinationView, Discovery};
use crate::metrics::Metrics;
use crate::tls::IdentitySlot;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub discovery: Arc<Discovery>,
    /// True once every listener is up and, with `--service`, the first registration
    /// succeeded.
    pub ready: watch::Receiver<bool>,
    /// With mTLS on: not ready until there is a certificate.
    pub identity: Option<Arc<IdentitySlot>>,
    /// With `--service`: the registration as it stands.
    pub registration: Option<RegistrationState>,
    /// Raised by `POST /shutdown`.
    pub shutdown: watch::Sender<bool>,
}

/// What `/ready` says of the instance's registration.
pub struct RegistrationState {
    /// The registry holds a live lease for the instance, as far as we know.
    pub registered: watch::Receiver<bool>,
    /// The app's health: the status the instance is registered with.
    pub health: watch::Receiver<Status>,
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
            (&Method::GET, "/live") => text(StatusCode::OK, "text/plain", "live\n".into()),
            (&Method::GET, "/ready") => {
                let (ready, body) = self.readiness();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(status, "application/json", format!("{body}\n"))
            }
            (&Method::GET, "/debug/endpoints") => {
                let views: Vec<DestinationView> = self
                    .discovery
                    .snapshot()
                    .iter()
                    .map(|d| DestinationView::of(d))
                    .collect();
                let json = serde_json::to_string_pretty(&views).expect("views serialize");
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
            (_, "/metrics" | "/live" | "/ready" | "/debug/endpoints" | "/shutdown") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n".into(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /metrics, /ready, /live, /debug/endpoints\n".into(),
            ),
        }
    }
}

impl Admin {
    /// Ready, and the `/ready` body: why not, and how the instance is registered.
    fn readiness(&self) -> (bool, serde_json::Value) {
        let reason = match &self.identity {
            Some(slot) if slot.get().is_none() => {
                Some(format!("no mTLS certificate yet: {}", slot.why_missing()))
            }
            _ if !*self.ready.borrow() => {
                Some("not registered yet: the registry has not answered a registration".into())
            }
            _ => None,
        };
        let mut body = serde_json::json!({
            "ready": reason.is_none(),
            "registry_connected": self.metrics.registry_connected.get() == 1,
        });
        if let Some(reason) = &reason {
            body["reason"] = reason.as_str().into();
        }
        if let Some(registration) = &self.registration {
            let registered = *registration.registered.borrow();
            body["registered"] = registered.into();
            // The status the registry lists the instance with: only `passing` gets
            // traffic.
            body["status"] = registration.health.borrow().to_string().into();
            body["passing"] =
                (registered && *registration.health.borrow() == Status::Passing).into();
        }
        (reason.is_none(), body)
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
