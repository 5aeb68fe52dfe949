//! The peers' side: requests from other sidecars to the local app.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::{self, BoxBody};
use crate::forward::{self, Clients, Wire};
use crate::grpc;
use crate::metrics::{Direction, Metrics};
use crate::outbound::fail;

/// How the sidecar speaks to its app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AppProtocol {
    /// HTTP/1.1 only.
    Http,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
    /// gRPC (HTTP/2).
    Grpc,
}

pub struct Inbound {
    /// The local service's name, the `service` label of inbound metrics.
    pub service: String,
    pub app: SocketAddr,
    /// None: speak to the app in the caller's HTTP version.
    pub app_protocol: Option<AppProtocol>,
    pub clients: Clients,
    pub metrics: Arc<Metrics>,
}

// === impl Inbound ===

impl Inbound {
    pub async fn handle(&self, request: Request<Incoming>) -> Response<BoxBody> {
        let grpc_caller = grpc::is_grpc(request.headers());
        let timer = self.metrics.request(Direction::Inbound, &self.service);
        let wire = match self.app_protocol {
            Some(AppProtocol::Http) => Wire::Http1,
            Some(AppProtocol::H2 | AppProtocol::Grpc) => Wire::Http2,
            None => Wire::of(&request),
        };
        let request = request.map(body::boxed);
        match self
            .clients
            .send(request, &self.app.to_string(), wire)
            .await
        {
            Ok(response) => forward::observe(response, timer, None),
            Err(e) => {
                tracing::warn!(app = %self.app, error = %e, "the local app did not answer");
                fail(e, grpc_caller, timer)
            }
        }
    }
}
