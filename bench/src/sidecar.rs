//! How soon a sidecar stops routing to a deregistered endpoint: the registry's watch
//! answer, the proxy's handling of it and its new endpoint set, end to end.
//!
//! Each trial registers a probe instance of a service the proxy already watches, waits
//! until the proxy's admin `GET /debug/endpoints` lists it, deregisters it and polls
//! `/debug/endpoints` back to back until it is gone. The clock starts just before the
//! `DELETE` is sent, as for the registry's own watchers, and stops when the first answer
//! without the probe arrives, so a figure is at most one poll late.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use crate::conn::Conn;
use crate::{histogram, percentiles_us};

/// The probe's instance id.
const PROBE: &str = "dereg-probe";
/// How long a trial waits for the probe to appear, or to disappear.
const WAIT: Duration = Duration::from_secs(2);

pub async fn dereg_latency(
    registry: SocketAddr,
    proxy: SocketAddr,
    admin: SocketAddr,
    service: &str,
    address: &str,
    trials: usize,
) -> anyhow::Result<serde_json::Value> {
    // One request so the proxy resolves (and from then on watches) the service.
    let mut through = Conn::open(proxy).await?;
    let (status, _, _) = through.send(http::Method::GET, service, "/", None).await?;
    anyhow::ensure!(
        status.is_success(),
        "a request to {service} through the proxy answered {status}"
    );

    let mut reg = Conn::open(registry).await?;
    let mut debug = Conn::open(admin).await?;
    let path = format!("/v1/services/{service}/instances/{PROBE}");
    let body = Bytes::from(json!({"address": address, "ttl": "1h"}).to_string());
    // A probe left over from an interrupted run goes first (404 when there is none); the
    // address must then leave the proxy's list, or another instance has it.
    reg.send(http::Method::DELETE, crate::registry::HOST, &path, None)
        .await?;
    let (free, _, _) = poll_until(&mut debug, service, address, false, Instant::now()).await?;
    anyhow::ensure!(
        free.is_some(),
        "{address} is among {service}'s endpoints: pick an address of its own"
    );

    let mut gone = histogram();
    let mut appeared = histogram();
    let mut misses = 0usize;
    let mut not_listed = 0usize;
    let mut polls = 0u64;
    let mut polling = Duration::ZERO;
    for _ in 0..trials {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0 = Instant::now();
        let (status, _, _) = reg
            .send(
                http::Method::PUT,
                crate::registry::HOST,
                &path,
                Some(body.clone()),
            )
            .await?;
        anyhow::ensure!(
            status.is_success(),
            "registering the probe answered {status}"
        );
        let (seen, _, _) = poll_until(&mut debug, service, address, true, t0).await?;
        let Some(seen) = seen else {
            not_listed += 1;
            reg.send(http::Method::DELETE, crate::registry::HOST, &path, None)
                .await?;
            continue;
        };
        appeared.saturating_record(seen.as_nanos() as u64);
        // Let the proxy settle after its update before timing the next one.
        tokio::time::sleep(Duration::from_millis(20)).await;

        let t0 = Instant::now();
        let (status, _, _) = reg
            .send(http::Method::DELETE, crate::registry::HOST, &path, None)
            .await?;
        anyhow::ensure!(
            status.is_success(),
            "deregistering the probe answered {status}"
        );
        let (seen, n, spent) = poll_until(&mut debug, service, address, false, t0).await?;
        polls += n;
        polling += spent;
        match seen {
            Some(d) => gone.saturating_record(d.as_nanos() as u64),
            None => misses += 1,
        }
    }
    Ok(json!({
        "trials": trials,
        "misses": misses,
        "not_listed": not_listed,
        "polls": polls,
        "mean_poll_us": polling.as_secs_f64() * 1e6 / polls.max(1) as f64,
        "dereg_to_gone_us": percentiles_us(&gone),
        "register_to_listed_us": percentiles_us(&appeared),
    }))
}

/// Polls `/debug/endpoints` back to back until `address` is (`want = true`) or is no
/// longer (`false`) among `service`'s endpoints; returns the time since `t0` when that
/// answer arrived (`None` after [`WAIT`]), how many polls it took and how long they took.
async fn poll_until(
    debug: &mut Conn,
    service: &str,
    address: &str,
    want: bool,
    t0: Instant,
) -> anyhow::Result<(Option<Duration>, u64, Duration)> {
    let first = Instant::now();
    let mut n = 0;
    loop {
        let now_listed = listed(debug, service, address).await?;
        n += 1;
        let elapsed = t0.elapsed();
        if now_listed == want {
            return Ok((Some(elapsed), n, first.elapsed()));
        }
        if elapsed > WAIT {
            return Ok((None, n, first.elapsed()));
        }
    }
}

/// Whether the proxy's `/debug/endpoints` lists `address` among `service`'s endpoints.
async fn listed(debug: &mut Conn, service: &str, address: &str) -> anyhow::Result<bool> {
    let (status, _, body) = debug
        .send(http::Method::GET, "admin", "/debug/endpoints", None)
        .await?;
    anyhow::ensure!(status.is_success(), "/debug/endpoints answered {status}");
    let views: serde_json::Value = serde_json::from_slice(&body)?;
    let views = views
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("/debug/endpoints is not a JSON list"))?;
    Ok(views
        .iter()
        .filter(|d| d.get("service").and_then(|s| s.as_str()) == Some(service))
        .flat_map(|d| {
            d.get("endpoints")
                .and_then(|e| e.as_array())
                .into_iter()
                .flatten()
        })
        .any(|e| e.get("address").and_then(|a| a.as_str()) == Some(address)))
}
