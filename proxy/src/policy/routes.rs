//! A destination's `routes`, as its callers' sidecars apply them: the first rule whose
//! matches hold picks a backend by weight, and the backend's subset of instances is
//! where every try of the request goes.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use mesh_registry_api::policy::{Match, PathMatch, RetryOn, RouteRule, Routes, Selector};
use rand::Rng;

use crate::error::ErrorKind;
use crate::grpc;
use crate::retry::{Reason, Verdict};

/// A `routes` document ready to match requests: selectors parsed once.
#[derive(Debug)]
pub struct RouteTable {
    pub document: Routes,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    source: RouteRule,
    /// The backends' subsets, and the running total of their weights (the last is 100).
    backends: Vec<(Arc<Selector>, u32)>,
}

/// Where one request goes, and how it is tried: what the rule it matched says.
#[derive(Clone, Debug)]
pub struct Routed {
    /// The rule's name, for errors and logs.
    pub rule: String,
    pub subset: Arc<Selector>,
    /// The request timeout, instead of the sidecar's `--timeout`.
    pub timeout: Option<Duration>,
    /// Retries after the first try, and on which failures, instead of the sidecar's.
    pub retries: Option<(u32, Vec<RetryOn>)>,
}

// === impl RouteTable ===

impl RouteTable {
    pub fn new(document: Routes) -> Self {
        let rules = document
            .rules
            .iter()
            .map(|rule| {
                let mut total = 0;
                let backends = rule
                    .backends
                    .iter()
                    .map(|b| {
                        total += b.weight;
                        (Arc::new(b.selector()), total)
                    })
                    .collect();
                Rule {
                    source: rule.clone(),
                    backends,
                }
            })
            .collect();
        RouteTable { document, rules }
    }

    /// The route of a request with head `head`: the first matching rule's, with its
    /// backend drawn by weight. None when no rule matches: the request is routed as if
    /// there were no routes.
    pub fn route<B>(&self, head: &Request<B>) -> Option<Routed> {
        let rule = self.rules.iter().find(|r| {
            r.source.matches.is_empty() || r.source.matches.iter().any(|m| matches(m, head))
        })?;
        let ticket = rand::rng().random_range(0..100);
        let (subset, _) = rule
            .backends
            .iter()
            .find(|(_, upto)| ticket < *upto)
            .or(rule.backends.last())?;
        Some(Routed {
            rule: rule.source.name.clone(),
            subset: subset.clone(),
            timeout: rule.source.timeout,
            retries: rule
                .source
                .retries
                .as_ref()
                .map(|r| (r.attempts, r.on.clone())),
        })
    }
}

/// Every field of `m` that is present holds for the request.
fn matches<B>(m: &Match, head: &Request<B>) -> bool {
    let path = head.uri().path();
    let path_ok = match &m.path {
        None => true,
        Some(PathMatch::Exact(p)) => path == p,
        Some(PathMatch::Prefix(p)) => path.starts_with(p.as_str()),
    };
    let method_ok = m
        .method
        .as_ref()
        .is_none_or(|x| head.method().as_str() == x);
    let headers_ok = m.headers.iter().all(|(name, value)| {
        head.headers()
            .get_all(name.as_str())
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes())
    });
    let grpc_ok = m.grpc.as_ref().is_none_or(|g| {
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return false;
        };
        grpc::is_grpc(head.headers())
            && service == g.service
            && g.method.as_ref().is_none_or(|m| m == method)
    });
    path_ok && method_ok && headers_ok && grpc_ok
}

// === impl Routed ===

impl Routed {
    /// Whether a failed try that `verdict` judged retryable is one of the failures the
    /// rule retries. `kind` is the proxy's error when the try got no answer; `grpc` the
    /// answer's gRPC status.
    pub fn retries_on(&self, verdict: Verdict, kind: Option<ErrorKind>, grpc: Option<u32>) -> bool {
        let Some((_, on)) = &self.retries else {
            return true;
        };
        let failure = match (verdict.reason, kind) {
            (Reason::NotSent, Some(ErrorKind::Refused)) => RetryOn::Reset,
            (Reason::NotSent, _) => RetryOn::ConnectFailure,
            (Reason::Status, _) => RetryOn::Status5xx,
            (Reason::GrpcStatus, _) if grpc == Some(grpc::UNAVAILABLE) => RetryOn::Unavailable,
            // Other gRPC codes are the sidecar's own `--retry-grpc-codes`, which a rule
            // that lists what it retries replaces.
            (Reason::GrpcStatus, _) => return false,
            (Reason::Failed, Some(ErrorKind::Timeout)) => RetryOn::Timeout,
            (Reason::Failed, _) => RetryOn::Reset,
        };
        on.contains(&failure)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_registry_api::policy::{Document, PolicyKind};
    use serde_json::json;

    use super::*;
    use crate::error::Retryable;

    fn table(doc: serde_json::Value) -> RouteTable {
        let body = serde_json::to_vec(&doc).unwrap();
        match Document::parse(PolicyKind::Routes, &body).unwrap() {
            Document::Routes(r) => RouteTable::new(r),
            _ => unreachable!(),
        }
    }

    fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut request = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.body(()).unwrap()
    }

    fn subset(routed: Option<Routed>) -> Option<String> {
        routed.map(|r| r.subset.to_string())
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let t = table(json!({"rules": [
            {"name": "tagged", "matches": [{"headers": {"X-Canary": "1"}}], "backends": [{"subset": "version=v2", "weight": 100}]},
            {"name": "api", "matches": [{"path": {"prefix": "/api"}, "method": "GET"}], "backends": [{"subset": "version=v1", "weight": 100}]},
        ]}));
        let tagged = head("GET", "/api/x", &[("x-canary", "1")]);
        assert_eq!(t.route(&tagged).unwrap().rule, "tagged");
        assert_eq!(
            subset(t.route(&head("GET", "/api/x", &[]))).as_deref(),
            Some("version=v1")
        );
        assert!(
            t.route(&head("POST", "/api/x", &[])).is_none(),
            "fields of one match are AND'd"
        );
        assert!(
            t.route(&head("GET", "/other", &[("x-canary", "2")]))
                .is_none()
        );
    }

    #[test]
    fn grpc_matches_need_a_grpc_call_to_the_service_and_method() {
        let t = table(json!({"rules": [
            {"matches": [{"grpc": {"service": "pkg.Svc", "method": "Get"}}, {"grpc": {"service": "pkg.All"}}],
             "backends": [{"weight": 100}]},
        ]}));
        let grpc = [("content-type", "application/grpc+proto")];
        assert!(t.route(&head("POST", "/pkg.Svc/Get", &grpc)).is_some());
        assert!(t.route(&head("POST", "/pkg.All/Any", &grpc)).is_some());
        assert!(t.route(&head("POST", "/pkg.Svc/Put", &grpc)).is_none());
        assert!(
            t.route(&head("POST", "/pkg.Svc/Get", &[])).is_none(),
            "not gRPC"
        );
    }

    #[test]
    fn backends_are_drawn_by_weight() {
        let t = table(json!({"rules": [{"backends": [
            {"subset": "version=v1", "weight": 90}, {"subset": "version=v2", "weight": 10}, {"subset": "version=v3", "weight": 0}]}]}));
        let mut counts = BTreeMap::<String, usize>::new();
        for _ in 0..10_000 {
            *counts
                .entry(subset(t.route(&head("GET", "/", &[]))).unwrap())
                .or_default() += 1;
        }
        let v2 = counts["version=v2"] as f64 / 10_000.0;
        assert!((0.08..0.12).contains(&v2), "{counts:?}");
        assert!(!counts.contains_key("version=v3"), "{counts:?}");
    }

    #[test]
    fn a_rule_retries_only_what_it_lists() {
        let t = table(
            json!({"rules": [{"backends": [{"weight": 100}], "timeout": "2s",
            "retries": {"attempts": 2, "on": ["connect-failure", "timeout"]}}]}),
        );
        let routed = t.route(&head("GET", "/", &[])).unwrap();
        assert_eq!(routed.timeout, Some(Duration::from_secs(2)));
        let verdict = |reason| Verdict {
            retryable: Retryable::Any,
            reason,
        };
        assert!(routed.retries_on(
            verdict(Reason::NotSent),
            Some(ErrorKind::ConnectFailed),
            None
        ));
        assert!(routed.retries_on(verdict(Reason::Failed), Some(ErrorKind::Timeout), None));
        assert!(!routed.retries_on(
            verdict(Reason::Failed),
            Some(ErrorKind::UpstreamFailed),
            None
        ));
        assert!(!routed.retries_on(verdict(Reason::Status), None, None));
        assert!(!routed.retries_on(verdict(Reason::GrpcStatus), None, Some(14)));
        // Without `retries`, the sidecar's own judgement stands.
        let plain = table(json!({"rules": [{"backends": [{"weight": 100}]}]}));
        let routed = plain.route(&head("GET", "/", &[])).unwrap();
        assert!(routed.retries_on(verdict(Reason::Status), None, None));
    }
}
