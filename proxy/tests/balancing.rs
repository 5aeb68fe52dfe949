//! Per-request balancing: one HTTP/2 connection from the app is spread over every
//! instance, and P2C over peak-EWMA sends less to a slow instance than round-robin does.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{App, H2Conn, Registry, Sidecar, SidecarSpec};
use mesh_proxy::balance::Strategy;

struct Fleet {
    registry: Registry,
    _apps: Vec<App>,
    _servers: Vec<Sidecar>,
}

/// `web` with one instance per latency.
async fn fleet(latencies: &[u64]) -> Fleet {
    let registry = Registry::start().await;
    let url = registry.url();
    let mut apps = Vec::new();
    let mut servers = Vec::new();
    for (i, ms) in latencies.iter().enumerate() {
        let app = App::start_with_latency(&format!("web-{i}"), Duration::from_millis(*ms)).await;
        servers.push(Sidecar::start(SidecarSpec::server(&url, "web", app.addr)).await);
        apps.push(app);
    }
    registry.until_passing("web", latencies.len()).await;
    Fleet {
        registry,
        _apps: apps,
        _servers: servers,
    }
}

/// Sends `n` requests over one HTTP/2 connection, `concurrency` at a time; counts who
/// answered.
async fn spread(conn: &H2Conn, n: usize, concurrency: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n / concurrency {
        let batch: Vec<_> = (0..concurrency)
            .map(|_| {
                let conn = conn.clone();
                tokio::spawn(async move { conn.get("web", "/whoami").await.text })
            })
            .collect();
        for handle in batch {
            *counts.entry(handle.await.unwrap()).or_default() += 1;
        }
    }
    counts
}

#[tokio::test]
async fn one_h2_connection_reaches_every_instance() {
    let f = fleet(&[0, 0, 0]).await;
    let url = f.registry.url();
    let client = Sidecar::start(SidecarSpec::client(&url)).await;
    let conn = H2Conn::connect(client.outbound).await;
    let counts = spread(&conn, 90, 3).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 90);
}

#[tokio::test]
async fn p2c_sends_less_to_a_slow_instance_than_round_robin() {
    // Far slower than any scheduling hiccup of a loaded machine, which would otherwise
    // raise a fast instance's peak-EWMA estimate to the slow one's.
    let f = fleet(&[1, 1, 150]).await;
    let url = f.registry.url();

    let mut rr_spec = SidecarSpec::client(&url);
    rr_spec.config.outbound.balancer = Strategy::RoundRobin;
    let rr = Sidecar::start(rr_spec).await;
    let rr_counts = spread(&H2Conn::connect(rr.outbound).await, 120, 4).await;

    let p2c = Sidecar::start(SidecarSpec::client(&url)).await;
    let p2c_counts = spread(&H2Conn::connect(p2c.outbound).await, 120, 4).await;

    let slow = |c: &HashMap<String, usize>| c.get("web-2").copied().unwrap_or(0);
    // Round-robin is blind to latency: the slow instance gets its full third.
    assert_eq!(slow(&rr_counts), 40, "{rr_counts:?}");
    assert!(
        slow(&p2c_counts) * 2 < slow(&rr_counts),
        "p2c {p2c_counts:?} vs round-robin {rr_counts:?}"
    );
}
