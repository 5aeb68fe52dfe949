//! Registry load: many registrations over HTTP, heartbeats at a fixed rate, lookups, and
//! how soon blocking watchers see a deregistration (sent to their registry or to another
//! replica of the same catalog).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use crate::conn::Conn;
use crate::load::{self, Request};
use crate::{histogram, percentiles_us};

// An open registry takes writes only under an IP address, `localhost` or a name it was
// told of (a web page cannot write to it by rebinding its own name).
pub(crate) const HOST: &str = "localhost";

pub async fn register(
    registry: SocketAddr,
    start: u64,
    count: u64,
    per_service: u64,
    concurrency: usize,
) -> anyhow::Result<serde_json::Value> {
    let next = Arc::new(AtomicU64::new(start));
    let end = start + count;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut conn = Conn::open(registry).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= end {
                    break;
                }
                let path = format!("/v1/services/svc-{}/instances/i-{k}", k / per_service);
                let body = json!({
                    "address": format!("10.{}.{}.{}:8080", k >> 16 & 255, k >> 8 & 255, k & 255),
                    "ttl": "1h",
                });
                let body = Bytes::from(body.to_string());
                match conn.send(http::Method::PUT, HOST, &path, Some(body)).await {
                    Ok((status, _, _)) if status.is_success() => {}
                    _ => errors += 1,
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(
        json!({ "registered": count, "errors": errors, "seconds": secs, "per_second": count as f64 / secs }),
    )
}

/// Heartbeats at a fixed rate (open loop) to the instances `register` created: the k-th
/// heartbeat goes to instance `i-{k mod instances}`.
pub async fn heartbeat(
    registry: SocketAddr,
    rate: u64,
    duration: Duration,
    instances: u64,
    per_service: u64,
    connections: usize,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        instances > 0 && per_service > 0,
        "instances and per-service must be > 0"
    );
    let run = load::paced(registry, HOST, rate, duration, connections, move |i| {
        let k = i % instances;
        let path = format!(
            "/v1/services/svc-{}/instances/i-{k}/heartbeat",
            k / per_service
        );
        Request::new(http::Method::PUT, path)
    })
    .await?;
    let mut out = run.to_json();
    out["instances"] = json!(instances);
    Ok(out)
}

/// Sequential lookups of random services `svc-0` to `svc-{services - 1}` on one keep-alive
/// connection.
pub async fn read(
    registry: SocketAddr,
    requests: u64,
    services: u64,
    warmup: u64,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(services > 0, "services must be > 0");
    let mut conn = Conn::open(registry).await?;
    let mut hist = histogram();
    let mut errors = 0u64;
    let mut empty = 0u64;
    let mut bytes = 0u64;
    // A fixed seed: every run asks for the same services in the same order.
    let mut rng = SplitMix64(0x6d65_7368);
    for i in 0..warmup + requests {
        let path = format!("/v1/services/svc-{}", rng.next() % services);
        let t0 = Instant::now();
        let answer = conn.send(http::Method::GET, HOST, &path, None).await;
        let elapsed = t0.elapsed();
        if i < warmup {
            continue;
        }
        match answer {
            Ok((status, _, body)) if status.is_success() => {
                hist.saturating_record(elapsed.as_nanos() as u64);
                bytes += body.len() as u64;
                let listed = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| Some(v.get("instances")?.as_array()?.len()))
                    .unwrap_or(0);
                if listed == 0 {
                    empty += 1;
                }
            }
            _ => errors += 1,
        }
    }
    let answered = hist.len().max(1);
    Ok(json!({
        "requests": requests,
        "services": services,
        "errors": errors,
        "empty_answers": empty,
        "mean_answer_bytes": bytes / answered,
        "latency_us": percentiles_us(&hist),
    }))
}

/// A small deterministic generator (SplitMix64), enough to pick services.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn mesh_index(headers: &http::HeaderMap) -> Option<u64> {
    headers.get("x-mesh-index")?.to_str().ok()?.parse().ok()
}

/// Times deregistrations sent to `writes`, from just before each is sent to each blocking
/// watcher on `registry` seeing it. With two replicas of one catalog (`writes` !=
/// `registry`) the time includes the way from one replica to the other.
pub async fn watch_latency(
    registry: SocketAddr,
    writes: SocketAddr,
    watchers: usize,
    trials: usize,
) -> anyhow::Result<serde_json::Value> {
    let service = "bench-watched";
    let mut admin = Conn::open(writes).await?;
    let put = |id: &str| {
        (
            format!("/v1/services/{service}/instances/{id}"),
            Bytes::from(json!({"address": "127.0.0.1:9", "ttl": "1h"}).to_string()),
        )
    };
    // Two instances, so the service stays known while one comes and goes.
    for id in ["keep", "flap"] {
        let (path, body) = put(id);
        admin
            .send(http::Method::PUT, HOST, &path, Some(body))
            .await?;
    }
    if writes != registry {
        // The watchers' first answer must already list both instances, or the first
        // deregistration could be timed against a listing that never had it.
        until_listed(registry, service, 2).await?;
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut conn = Conn::open(registry).await?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut index = 0u64;
            loop {
                let path = format!("/v1/services/{service}?index={index}&wait=60s");
                let Ok((_, headers, _)) = conn.send(http::Method::GET, HOST, &path, None).await
                else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let seen = Instant::now();
                let new = mesh_index(&headers).unwrap_or(index);
                if new != index {
                    index = new;
                    if tx.send(seen).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);

    // Let every watcher get its first answer and park on the next blocking query.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}

    let mut all = histogram();
    let mut slowest = histogram();
    let mut missed = 0usize;
    for _ in 0..trials {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0 = Instant::now();
        let path = format!("/v1/services/{service}/instances/flap");
        admin.send(http::Method::DELETE, HOST, &path, None).await?;
        let (seen, late) = collect(&mut rx, watchers, t0).await;
        missed += late;
        for d in &seen {
            all.saturating_record(d.as_nanos() as u64);
        }
        if let Some(max) = seen.iter().max() {
            slowest.saturating_record(max.as_nanos() as u64);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (path, body) = put("flap");
        admin
            .send(http::Method::PUT, HOST, &path, Some(body))
            .await?;
        collect(&mut rx, watchers, Instant::now()).await;
    }
    for t in tasks {
        t.abort();
    }
    Ok(json!({
        "watchers": watchers,
        "across_replicas": writes != registry,
        "trials": trials,
        "missed": missed,
        "every_watcher_us": percentiles_us(&all),
        "slowest_watcher_per_trial_us": percentiles_us(&slowest),
    }))
}

/// Waits (at most 5 s) until `registry` lists `n` instances of `service`.
async fn until_listed(registry: SocketAddr, service: &str, n: usize) -> anyhow::Result<()> {
    let mut conn = Conn::open(registry).await?;
    let path = format!("/v1/services/{service}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = match conn.send(http::Method::GET, HOST, &path, None).await {
            Ok((status, _, body)) if status.is_success() => {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| Some(v.get("instances")?.as_array()?.len()))
                    .unwrap_or(0)
            }
            _ => 0,
        };
        if listed >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{registry} did not list {n} instances of {service} within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (at most 2 s) for `n` watcher answers; returns their delays after `t0` and how
/// many did not come.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Instant>,
    n: usize,
    t0: Instant,
) -> (Vec<Duration>, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut seen = Vec::with_capacity(n);
    while seen.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(at)) => seen.push(at.saturating_duration_since(t0)),
            _ => break,
        }
    }
    let missed = n - seen.len();
    (seen, missed)
}
