//! One call as this sidecar saw it, filled in along the request path and handed to the
//! observers (traces, access log, tap) when the answer's stream ends.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Request, Uri};
use mesh_registry_api::call::CallEvent;
use tokio::time::Instant;

use super::context::Trace;
use crate::metrics::Direction;

/// What was carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    /// An HTTP upgrade (WebSocket): recorded when its `101` (or refusal) is answered.
    Upgrade,
    /// A connection carried as opaque bytes: recorded when it closes.
    Tcp,
}

/// One call, as one sidecar saw it.
#[derive(Clone, Debug)]
pub struct Record {
    /// Wall-clock time of arrival (for logs and spans).
    pub time: SystemTime,
    pub started: Instant,
    pub direction: Direction,
    pub kind: Kind,
    /// The destination (outbound) or the local service (inbound).
    pub service: String,
    pub method: Option<Method>,
    pub authority: Option<String>,
    /// Without the query.
    pub path: Option<String>,
    pub grpc: bool,
    /// The caller's address (inbound) or the app's (outbound).
    pub peer: Option<SocketAddr>,
    /// The SPIFFE ID mTLS proved: the caller's (inbound) or the endpoint's (outbound).
    pub peer_identity: Option<String>,
    /// The last try's endpoint (outbound).
    pub endpoint: Option<String>,
    pub tries: u32,
    pub retry_reasons: Vec<&'static str>,
    pub trace: Option<Trace>,
    /// The request's headers, kept only while a tap is listening.
    pub headers: Option<HeaderMap>,
    /// Content-Length of the request (bytes from the client for TCP).
    pub request_bytes: u64,
    // Known at the end:
    pub status: Option<u16>,
    pub grpc_status: Option<u32>,
    pub mesh_error: Option<String>,
    pub failed: bool,
    pub duration: Duration,
    pub response_bytes: u64,
}

// === impl Record ===

impl Record {
    /// A request's record, before it is forwarded.
    pub fn request<B>(
        direction: Direction,
        service: &str,
        request: &Request<B>,
        trace: Option<Trace>,
        keep_headers: bool,
    ) -> Record {
        let uri = request.uri();
        let headers = request.headers();
        let authority = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
            let host = headers.get(http::header::HOST)?;
            host.to_str().ok().map(str::to_owned)
        });
        let request_bytes = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        Record {
            method: Some(request.method().clone()),
            authority,
            path: Some(path_of(uri)),
            grpc: crate::grpc::is_grpc(headers),
            headers: keep_headers.then(|| headers.clone()),
            request_bytes,
            trace,
            ..Record::new(direction, Kind::Request, service)
        }
    }

    /// A record with only what every call has.
    pub fn new(direction: Direction, kind: Kind, service: &str) -> Record {
        Record {
            time: SystemTime::now(),
            started: Instant::now(),
            direction,
            kind,
            service: service.to_owned(),
            method: None,
            authority: None,
            path: None,
            grpc: false,
            peer: None,
            peer_identity: None,
            endpoint: None,
            tries: 0,
            retry_reasons: Vec::new(),
            trace: None,
            headers: None,
            request_bytes: 0,
            status: None,
            grpc_status: None,
            mesh_error: None,
            failed: false,
            duration: Duration::ZERO,
            response_bytes: 0,
        }
    }

    /// The wire form (access log line, tap event); `headers` are the tap's, redacted.
    pub fn event(&self) -> CallEvent {
        CallEvent {
            time: humantime::format_rfc3339_micros(self.time).to_string(),
            direction: self.direction.as_str().to_owned(),
            kind: self.kind.as_str().to_owned(),
            service: self.service.clone(),
            method: self.method.as_ref().map(|m| m.as_str().to_owned()),
            authority: self.authority.clone(),
            path: self.path.clone(),
            status: self.status,
            grpc_status: self.grpc_status,
            duration_ms: self.duration.as_secs_f64() * 1000.0,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            tries: self.tries,
            retry_reasons: self.retry_reasons.iter().map(|r| (*r).to_owned()).collect(),
            endpoint: self.endpoint.clone(),
            peer: self.peer.map(|p| p.to_string()),
            peer_identity: self.peer_identity.clone(),
            mesh_error: self.mesh_error.clone(),
            failed: self.failed,
            trace_id: self.trace.map(|t| t.trace_id_hex()),
            span_id: self.trace.filter(|t| t.sampled).map(|t| t.span_id_hex()),
            headers: None,
        }
    }
}

// === impl Kind ===

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Upgrade => "upgrade",
            Kind::Tcp => "tcp",
        }
    }
}

fn path_of(uri: &Uri) -> String {
    match uri.path() {
        "" => "/".to_owned(),
        path => path.to_owned(),
    }
}
