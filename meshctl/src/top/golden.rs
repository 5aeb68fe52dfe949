//! The golden metrics of calls to a service over one interval, from two scrapes of the
//! sidecars' counters: what `rate()` and `histogram_quantile()` would compute in
//! Prometheus, without one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::prom::{self, Sample};

/// The outbound counters of one destination service in one sidecar.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub requests: f64,
    pub responses: f64,
    pub successes: f64,
    pub retries: f64,
    /// Cumulative latency histogram, `(le, count)` by increasing `le`, all
    /// classifications together.
    pub buckets: Vec<(f64, f64)>,
}

/// Calls to one destination service over one interval, summed over sidecars.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Golden {
    pub service: String,
    /// Requests sent in the interval.
    pub requests: f64,
    pub requests_per_second: f64,
    /// Share of the responses completed in the interval that succeeded; `None` without any.
    pub success_rate: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub retries_per_second: f64,
}

/// Each destination's counters in one sidecar's `/metrics`.
pub fn counters(samples: &[Sample]) -> BTreeMap<String, Counters> {
    let mut by_service: BTreeMap<String, Counters> = BTreeMap::new();
    for s in samples {
        let outbound = s.label("direction") == Some("outbound");
        let counted = match s.name.as_str() {
            "mesh_requests_total"
            | "mesh_responses_total"
            | "mesh_response_latency_seconds_bucket" => outbound,
            // Retries are made on outbound calls only, and carry no direction.
            "mesh_retries_total" => true,
            _ => false,
        };
        if let (true, Some(service)) = (counted, s.label("service")) {
            record(by_service.entry(service.to_owned()).or_default(), s);
        }
    }
    by_service
}

fn record(c: &mut Counters, s: &Sample) {
    match s.name.as_str() {
        "mesh_requests_total" => c.requests += s.value,
        "mesh_responses_total" => {
            c.responses += s.value;
            if s.label("classification") == Some("success") {
                c.successes += s.value;
            }
        }
        "mesh_response_latency_seconds_bucket" => {
            if let Some(le) = s.label("le").and_then(prom::number) {
                add_bucket(&mut c.buckets, le, s.value);
            }
        }
        _ => c.retries += s.value,
    }
}

fn add_bucket(buckets: &mut Vec<(f64, f64)>, le: f64, count: f64) {
    match buckets.iter_mut().find(|(l, _)| *l == le) {
        Some((_, c)) => *c += count,
        None => {
            buckets.push((le, count));
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
}

/// What the counters of one sidecar and service grew by between two scrapes. A counter
/// that went down means the sidecar restarted: its count since then is the growth.
pub fn increase(before: &Counters, after: &Counters) -> Counters {
    let reset = after.requests < before.requests
        || after.responses < before.responses
        || after.retries < before.retries;
    if reset {
        return after.clone();
    }
    let bucket = |le: f64| {
        before
            .buckets
            .iter()
            .find(|(l, _)| *l == le)
            .map_or(0.0, |(_, c)| *c)
    };
    Counters {
        requests: after.requests - before.requests,
        responses: after.responses - before.responses,
        successes: after.successes - before.successes,
        retries: after.retries - before.retries,
        buckets: after
            .buckets
            .iter()
            .map(|(le, c)| (*le, (c - bucket(*le)).max(0.0)))
            .collect(),
    }
}

/// Adds one sidecar's increase into a service's total.
pub fn add(total: &mut Counters, more: &Counters) {
    total.requests += more.requests;
    total.responses += more.responses;
    total.successes += more.successes;
    total.retries += more.retries;
    for (le, count) in &more.buckets {
        add_bucket(&mut total.buckets, *le, *count);
    }
}

/// The golden metrics of `service` whose counters grew by `growth` over `interval`.
pub fn golden(service: &str, growth: &Counters, interval: Duration) -> Golden {
    let secs = interval.as_secs_f64().max(f64::MIN_POSITIVE);
    Golden {
        service: service.to_owned(),
        requests: growth.requests,
        requests_per_second: growth.requests / secs,
        success_rate: (growth.responses > 0.0).then(|| growth.successes / growth.responses),
        p50_seconds: quantile(0.5, &growth.buckets),
        p99_seconds: quantile(0.99, &growth.buckets),
        retries_per_second: growth.retries / secs,
    }
}

/// The `q` quantile of a cumulative histogram, interpolating linearly within the bucket
/// it falls in, as Prometheus's `histogram_quantile` does; a quantile in the `+Inf`
/// bucket is the highest finite bound. `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|(_, count)| *count >= rank)?;
    let (le, count) = buckets[i];
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    if le.is_infinite() {
        return Some(lower);
    }
    if count <= below {
        return Some(le);
    }
    Some(lower + (le - lower) * (rank - below) / (count - below))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        // 100 observations: 50 under 1ms, 40 in 1-5ms, 10 in 5-10ms.
        let buckets = [
            (0.001, 50.0),
            (0.005, 90.0),
            (0.01, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(0.5, &buckets), Some(0.001));
        let p99 = quantile(0.99, &buckets).unwrap();
        assert!((p99 - 0.0095).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(
            quantile(0.99, &[(0.1, 1.0), (f64::INFINITY, 5.0)]),
            Some(0.1)
        );
    }

    #[test]
    fn outbound_series_are_summed_per_service() {
        let text = r#"
mesh_requests_total{direction="outbound",service="web"} 10
mesh_requests_total{direction="inbound",service="web"} 99
mesh_responses_total{classification="success",direction="outbound",grpc_status="",service="web",status_code="200"} 8
mesh_responses_total{classification="failure",direction="outbound",grpc_status="",service="web",status_code="503"} 2
mesh_response_latency_seconds_bucket{classification="success",direction="outbound",service="web",le="0.01"} 8
mesh_response_latency_seconds_bucket{classification="success",direction="outbound",service="web",le="+Inf"} 8
mesh_response_latency_seconds_bucket{classification="failure",direction="outbound",service="web",le="0.01"} 1
mesh_response_latency_seconds_bucket{classification="failure",direction="outbound",service="web",le="+Inf"} 2
mesh_retries_total{reason="status",service="web"} 4
"#;
        let web = &counters(&prom::parse(text))["web"];
        assert_eq!(
            (web.requests, web.responses, web.successes),
            (10.0, 10.0, 8.0)
        );
        assert_eq!(web.retries, 4.0);
        assert_eq!(web.buckets, [(0.01, 9.0), (f64::INFINITY, 10.0)]);
    }

    #[test]
    fn rates_come_from_the_increase_and_survive_a_restart() {
        let before = Counters {
            requests: 10.0,
            responses: 10.0,
            successes: 10.0,
            retries: 0.0,
            buckets: vec![(0.01, 10.0), (f64::INFINITY, 10.0)],
        };
        let after = Counters {
            requests: 30.0,
            responses: 30.0,
            successes: 25.0,
            retries: 2.0,
            buckets: vec![(0.01, 30.0), (f64::INFINITY, 30.0)],
        };
        let growth = increase(&before, &after);
        let g = golden("web", &growth, Duration::from_secs(2));
        assert_eq!(g.requests_per_second, 10.0);
        assert_eq!(g.success_rate, Some(0.75));
        assert_eq!(g.retries_per_second, 1.0);
        assert_eq!(
            increase(&after, &before),
            before,
            "a restart counts from zero"
        );
    }
}
