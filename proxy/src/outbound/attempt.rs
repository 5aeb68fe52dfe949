//! One try of a request against one endpoint: send it within the try's deadline (over
//! mTLS when both sides speak it), read a gRPC answer's status while a retry could still
//! follow, tell the endpoint's breaker and latency estimate how it went, and judge the
//! outcome.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Call, Failure, Outbound, Tried, Try};
use crate::body;
use crate::breaker::Probe;
use crate::classify::{Class, Judged};
use crate::destination::Destination;
use crate::endpoint::Endpoint;
use crate::error::{ErrorKind, MESH_ERROR, ProxyError};
use crate::forward::Connected;
use crate::metrics::Direction;
use crate::retry::{self, Verdict};
use crate::{grpc, headers};

// === impl Outbound ===

impl Outbound {
    /// One try, judged. The probe claim, when the try is an ejected endpoint's probe, is
    /// settled whatever happens: dropped unsettled (releasing it) if the caller's own
    /// body broke or the try is cancelled.
    pub(super) async fn try_once(&self, call: &Call<'_>, attempt: Try) -> Tried {
        let Try {
            chosen,
            request,
            retry_left,
        } = attempt;
        let (endpoint, probe) = (chosen.endpoint, chosen.probe);
        let in_flight = endpoint.start();
        let started = Instant::now();
        let deadline = call.deadlines.try_deadline(started);
        let tls_to =
            (self.identity.is_some() && endpoint.tls).then_some(call.destination.name.as_str());
        let sent = self
            .clients
            .send(request, &endpoint.pool, call.wire, tls_to);
        let answered = match deadline {
            Some(at) => tokio::time::timeout_at(at, sent)
                .await
                .unwrap_or_else(|_| Err(no_answer_in_time(&endpoint))),
            None => sent.await,
        };
        let elapsed = started.elapsed();
        let response = match answered {
            Ok(response) => response,
            Err(e) => return self.unanswered(call, &endpoint, probe, e, elapsed),
        };
        // The balancer weighs how the endpoint answers, not how long a new connection to
        // it took to open (a TLS handshake is worth many answers).
        let opening = response.extensions().get::<Connected>();
        let rtt = elapsed.saturating_sub(opening.map_or(Duration::ZERO, |c| c.0));
        // A gRPC status may be in the headers (trailers-only) or in the trailers, which
        // for a small answer are read before anything is passed on while a retry could
        // still follow.
        let grpc_status = grpc::status_of(response.headers());
        let (mut response, grpc_status) = if retry_left && grpc_status.is_none() {
            retry::peek_grpc(response, self.retry.buffer, deadline).await
        } else {
            (response.map(body::boxed), grpc_status)
        };
        let answer = Judged::of(response.status(), grpc_status);
        self.feedback(call.destination, &endpoint, answer, rtt);
        if let Some(probe) = probe {
            probe.settle();
        }
        if answer.class == Class::RateLimited {
            self.metrics
                .rate_limited(Direction::Outbound, &call.destination.name);
        }
        let verdict = (self.retry).classify_response(answer, response.headers(), endpoint.sidecar);
        let verdict = call.retried(verdict, None, grpc_status);
        if !endpoint.sidecar {
            // Only sidecars speak for the mesh.
            headers::remove(response.headers_mut(), &MESH_ERROR);
        }
        match verdict {
            Some(verdict) => Tried::Failed(Failure::Answer(response), Some(verdict)),
            None => Tried::Done((response, in_flight)),
        }
    }

    /// A try that got no answer after `rtt`: the endpoint's failure, unless the caller
    /// broke its own body (or the endpoint was never reached).
    fn unanswered(
        &self,
        call: &Call<'_>,
        endpoint: &Arc<Endpoint>,
        probe: Option<Probe>,
        e: ProxyError,
        rtt: Duration,
    ) -> Tried {
        if let Some(why) = call.caller_fault.get() {
            // The caller broke its own body: the endpoint did nothing wrong.
            let e = ProxyError::caller_body(why);
            tracing::debug!(endpoint = %endpoint.address, error = %e, "caller's body broke");
            return Tried::Failed(Failure::Proxy(e), None);
        }
        tracing::debug!(endpoint = %endpoint.address, error = %e, "try failed");
        endpoint.set_error(Some(e.to_string()));
        // A slow answer alone does not eject (a probe that times out does), but it
        // steers the balancer away as any failure does.
        let ejects = match e.kind {
            ErrorKind::Timeout => probe.is_some(),
            ErrorKind::Loop | ErrorKind::NoIdentity => false,
            _ => true,
        };
        if !matches!(e.kind, ErrorKind::Loop | ErrorKind::NoIdentity) {
            endpoint.failed(rtt, Instant::now());
        }
        if ejects {
            self.record_failure(call.destination, endpoint, &e.message);
        }
        if let Some(probe) = probe {
            probe.settle();
        }
        let verdict = call.retried(Some(Verdict::of_error(e.kind)), Some(e.kind), None);
        Tried::Failed(Failure::Proxy(e), verdict)
    }

    /// Tells the balancer and the endpoint's breaker how its answer went, `rtt` after the
    /// try was sent. A server error is a failure to both; a rate-limited answer (an
    /// overloaded server) to the balancer only; a success to neither (it brings a probed
    /// endpoint back).
    fn feedback(
        &self,
        destination: &Destination,
        endpoint: &Endpoint,
        answer: Judged,
        rtt: Duration,
    ) {
        let now = Instant::now();
        match answer.class {
            Class::ServerError => {
                endpoint.failed(rtt, now);
                let grpc = answer.grpc_status.map(|c| format!(" grpc-status {c}"));
                endpoint.set_error(Some(format!(
                    "answered {}{}",
                    answer.status,
                    grpc.unwrap_or_default()
                )));
                self.record_failure(destination, endpoint, "failure status");
                return;
            }
            Class::RateLimited => endpoint.failed(rtt, now),
            Class::Success => endpoint.succeeded(rtt, now),
        }
        endpoint.set_error(None);
        if endpoint.breaker.success(now) {
            tracing::info!(endpoint = %endpoint.address, "probe succeeded; endpoint back in rotation");
            destination.refresh_gauges(&self.metrics);
        }
    }

    /// A failure of `endpoint`; the breaker decides whether it is ejected.
    pub(crate) fn record_failure(
        &self,
        destination: &Destination,
        endpoint: &Endpoint,
        what: &str,
    ) {
        let set = destination.endpoints();
        let peers = set.endpoints.iter().map(|e| &e.breaker);
        let now = Instant::now();
        if let Some(rule) = endpoint
            .breaker
            .record_failure(peers, &self.ejection, what, now)
        {
            let by = rule.as_str();
            tracing::warn!(service = %destination.name, endpoint = %endpoint.address, rule = by, "endpoint ejected: {what}");
            self.metrics.ejected(&destination.name, rule);
            destination.refresh_gauges(&self.metrics);
        }
    }
}

/// The error for a try whose endpoint did not answer within the try's deadline.
fn no_answer_in_time(endpoint: &Endpoint) -> ProxyError {
    ProxyError::new(
        ErrorKind::Timeout,
        format!("no answer from {} within the deadline", endpoint.address),
    )
}
