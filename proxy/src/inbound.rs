//! The peers' side: requests from other sidecars to the local app, admitted by the
//! `--allow` floor, then by the service's intentions and limits ([`Policy::admit`]).
//!
//! The app's answers pass back without any `mesh-error` header of the app's own: only
//! errors a sidecar made may carry one, since callers' sidecars read it to decide
//! whether a request may be sent again.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::{self, BoxBody, FromCaller};
use crate::error::{ErrorKind, MESH_ERROR, ProxyError};
use crate::forward::{Clients, Wire};
use crate::metrics::{Direction, Metrics, ServiceMetrics};
use crate::observe::Kind;
use crate::policy::Policy;
use crate::pool::Pool;
use crate::respond::{fail, observe};
use crate::server::Peer;
use crate::upgrade::Accepted;
use crate::{grpc, headers};

/// How the sidecar speaks to its app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AppProtocol {
    /// HTTP/1.1 only.
    Http,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
    /// gRPC (HTTP/2).
    Grpc,
    /// Opaque TCP: every connection is carried to the app as bytes.
    Tcp,
}

pub struct Inbound {
    /// The local service's name, the `service` label of inbound metrics.
    pub service: String,
    pub app: SocketAddr,
    /// None: speak to the app in the caller's HTTP version.
    pub app_protocol: Option<AppProtocol>,
    pub clients: Clients,
    /// Connections to the app (the health checks use them too).
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// The inbound series of `service`.
    pub service_metrics: Arc<ServiceMetrics>,
    /// Services allowed to call this one (by mTLS identity); empty allows every caller.
    /// A floor under the intentions: a call must pass both.
    pub allow: Vec<String>,
    /// The service's intentions and limits, as the registry gives them.
    pub policy: Arc<Policy>,
}

// === impl Inbound ===

impl Inbound {
    pub async fn handle(&self, mut request: Request<Incoming>, peer: Peer) -> Response<BoxBody> {
        let grpc_caller = grpc::is_grpc(request.headers());
        let upgrade = Accepted::take(&mut request);
        // This hop's span (a server span) and its record, when traced, logged or tapped.
        let observers = &self.metrics.observers;
        let mut record = observers.begin(Direction::Inbound, &self.service, &mut request);
        if let Some(record) = record.as_deref_mut() {
            record.peer = Some(peer.addr);
            record.peer_identity = peer.identity.as_deref().map(|s| observers.spiffe_id(s));
            record.kind = upgrade.as_ref().map_or(Kind::Request, |_| Kind::Upgrade);
        }
        let timer = self.service_metrics.request().with_record(record);
        if let Some(caller) = refused(&self.allow, &peer) {
            let e = ProxyError::new(
                ErrorKind::Forbidden,
                format!(
                    "{caller} may not call {}; allowed: {}",
                    self.service,
                    self.allow.join(", ")
                ),
            );
            tracing::info!(%caller, service = %self.service, "call denied by policy");
            self.metrics.denied(&self.service);
            return fail(e, grpc_caller, timer);
        }
        if let Err(e) = headers::check_request(&request) {
            return fail(e, grpc_caller, timer);
        }
        let caller = peer.identity.as_deref();
        if let Err(e) = self.policy.admit(caller, &request, &self.metrics) {
            return fail(e, grpc_caller, timer);
        }
        // An upgrade goes to the app over HTTP/1.1 whatever it speaks (forward's rule).
        let wire = match self.app_protocol {
            Some(AppProtocol::Http | AppProtocol::Tcp) => Wire::Http1,
            Some(AppProtocol::H2 | AppProtocol::Grpc) => Wire::Http2,
            None => Wire::of(&request),
        };
        let (parts, incoming) = request.into_parts();
        let (incoming, caller_fault) = FromCaller::new(incoming);
        let request = http::Request::from_parts(parts, body::boxed(incoming));
        match self.clients.send(request, &self.pool, wire, None).await {
            Ok(mut response) => {
                headers::remove(response.headers_mut(), &MESH_ERROR);
                if let Some(upgrade) = upgrade {
                    upgrade.answered(&mut response, None, &self.service_metrics);
                }
                observe(response, timer, None)
            }
            Err(e) => match caller_fault.get().map(ProxyError::caller_body) {
                Some(caller) => {
                    tracing::debug!(error = %caller, "caller's body broke");
                    fail(caller, grpc_caller, timer)
                }
                None => {
                    tracing::warn!(app = %self.app, error = %e, "the local app did not answer");
                    fail(e, grpc_caller, timer)
                }
            },
        }
    }
}

/// The caller `allow` refuses (its proven service, or "an unauthenticated caller"), if it
/// does; an empty list allows every caller.
pub(crate) fn refused<'p>(allow: &[String], peer: &'p Peer) -> Option<&'p str> {
    let allowed = peer.identity.as_ref().is_some_and(|id| allow.contains(id));
    (!allow.is_empty() && !allowed).then(|| {
        peer.identity
            .as_deref()
            .unwrap_or("an unauthenticated caller")
    })
}
