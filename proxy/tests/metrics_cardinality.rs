//! An app decides the status codes its sidecars count, not how many series they export:
//! any gRPC status outside 0–16 is counted as `grpc_status="other"`, any HTTP status
//! outside 100–599 as `status_code="other"`, so an app answering with random statuses
//! leaves `/metrics` as small as one answering with a few.

mod common;

use std::collections::BTreeSet;

use common::{App, PATIENCE, Registry, Sidecar, SidecarSpec};
use rand::Rng;

const CALLS: usize = 10_000;
/// Callers at once.
const CONCURRENCY: usize = 8;

/// The values one label takes across `mesh_responses_total`'s series, and their number.
fn label_values(metrics: &str, label: &str) -> (BTreeSet<String>, usize) {
    let prefix = format!("{label}=\"");
    let mut values = BTreeSet::new();
    let mut series = 0;
    for line in metrics.lines() {
        let Some(labels) = line.strip_prefix("mesh_responses_total{") else {
            continue;
        };
        series += 1;
        let value = labels
            .split(',')
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.split('"').next())
            .unwrap_or_else(|| panic!("no {label} in {line}"));
        values.insert(value.to_owned());
    }
    (values, series)
}

#[tokio::test]
async fn random_statuses_from_an_app_leave_a_bounded_number_of_series() {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let server = Sidecar::start(SidecarSpec::server(&registry.url(), "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    let client = Sidecar::start(SidecarSpec::client(&registry.url())).await;

    // Random gRPC statuses (in the headers, as a trailers-only answer carries them), one
    // call in ten a code gRPC defines, and one in ten an HTTP status past 599. None of
    // them UNAVAILABLE, or a 5xx: the endpoint must stay in rotation for the whole run.
    let paths: Vec<String> = {
        let mut rng = rand::rng();
        (0..CALLS)
            .map(|i| {
                let grpc = if i % 10 == 1 {
                    rng.random_range(0..=16)
                } else {
                    rng.random::<u32>()
                };
                let grpc = if grpc == 14 { 15 } else { grpc };
                let status = if i % 10 == 0 {
                    rng.random_range(600..1000)
                } else {
                    200
                };
                format!("/spoof?status={status}&grpc-status={grpc}")
            })
            .collect()
    };
    let paths = std::sync::Arc::new(paths);
    let mut callers = Vec::new();
    for caller in 0..CONCURRENCY {
        let (paths, outbound) = (paths.clone(), client.outbound);
        callers.push(tokio::spawn(async move {
            for path in paths.iter().skip(caller).step_by(CONCURRENCY) {
                let answer = common::get_h1(outbound, "web", path).await;
                assert!(
                    answer.headers.get("mesh-error").is_none(),
                    "{path}: {}",
                    answer.text
                );
                let status = path.split(['=', '&']).nth(1).unwrap();
                assert_eq!(answer.status.as_str(), status, "{path}");
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }

    let mut exported = Vec::new();
    for (side, sidecar) in [("caller", &client), ("server", &server)] {
        common::eventually(PATIENCE, "every response counted", async || {
            let metrics = sidecar.metrics().await;
            common::metric_sum(&metrics, "mesh_responses_total", "service=\"web\"") == CALLS as f64
        })
        .await;
        let metrics = sidecar.metrics().await;
        let series = label_values(&metrics, "grpc_status").1;
        println!(
            "{side} sidecar after {CALLS} random gRPC statuses: {series} mesh_responses_total \
             series, /metrics {} bytes",
            metrics.len()
        );
        exported.push((side, metrics));
    }

    let codes: BTreeSet<String> = (0..=16)
        .map(|c: u32| c.to_string())
        .chain(["other".to_owned()])
        .collect();
    let statuses: BTreeSet<String> = (100..=599)
        .map(|c: u32| c.to_string())
        .chain(["other".to_owned()])
        .collect();
    for (side, metrics) in exported {
        let (grpc, series) = label_values(&metrics, "grpc_status");
        let (http, _) = label_values(&metrics, "status_code");
        let unknown: Vec<&String> = grpc.difference(&codes).take(5).collect();
        assert!(
            unknown.is_empty(),
            "{side}: grpc_status values such as {unknown:?}"
        );
        assert!(
            grpc.contains("other") && grpc.contains("0") && grpc.contains("16"),
            "{side}: {grpc:?}"
        );
        let unknown: Vec<&String> = http.difference(&statuses).take(5).collect();
        assert!(
            unknown.is_empty(),
            "{side}: status_code values such as {unknown:?}"
        );
        assert!(
            http.contains("other") && http.contains("200"),
            "{side}: {http:?}"
        );
        // Every series is one of: 2 status codes × 18 gRPC statuses × 2 classifications.
        assert!(series <= 2 * 18 * 2, "{side}: {series} series");
        assert!(
            metrics.len() < 64 * 1024,
            "{side}: /metrics is {} bytes",
            metrics.len()
        );
    }
}
