//! Redis, a real TCP service, through a sidecar pair as protocol `tcp`: Debian's
//! `redis-server` behind one sidecar, `redis-cli` and `redis-benchmark` in front of the
//! other, in plaintext and under strict mTLS.
//!
//! Needs Debian's `redis-server` (which brings `redis-cli` and `redis-benchmark`), so it
//! is ignored by default; CI installs it and runs
//! `cargo test -p mesh-proxy --test redis -- --ignored`.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{JOIN_TOKEN, PATIENCE, Registry, Sidecar, SidecarSpec, eventually};
use mesh_proxy::inbound::AppProtocol;
use mesh_proxy::tls::TlsMode;
use tokio::process::{Child, Command};

/// `redis-server` on a free port of 127.0.0.1, keeping nothing on disk.
struct Redis {
    addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    async fn start() -> Redis {
        // A port free a moment ago: redis-server takes no port 0.
        let port = common::listener().await.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (Debian's redis-server package)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        eventually(PATIENCE, "redis-server answering PING", async || {
            cli(addr, &["PING"]).await.as_deref() == Ok("PONG")
        })
        .await;
        Redis {
            addr,
            _child: child,
            _dir: dir,
        }
    }
}

/// `redis-cli` against `addr`: its answer, trimmed, or its error output.
async fn cli(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let output = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let out = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() && !out.starts_with("Could not connect") {
        Ok(out)
    } else {
        Err(format!("{out}{}", String::from_utf8_lossy(&output.stderr)))
    }
}

async fn redis_through_the_mesh(mode: TlsMode) {
    let redis = Redis::start().await;
    let registry = if mode == TlsMode::Off {
        Registry::start().await
    } else {
        Registry::start_with_ca(Duration::from_secs(86_400)).await
    };
    let url = registry.url();
    let configure = |spec: &mut SidecarSpec| {
        spec.config.tls.mode = mode;
        if mode != TlsMode::Off {
            spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
        }
    };
    let mut spec = SidecarSpec::server(&url, "cache", redis.addr);
    spec.app = Some(("cache", redis.addr, Some(AppProtocol::Tcp)));
    configure(&mut spec);
    let server = Sidecar::start(spec).await;
    registry.until_passing("cache", 1).await;
    let web_app = common::listener().await.local_addr().unwrap();
    let mut spec = SidecarSpec::server(&url, "web", web_app);
    spec.upstreams = vec!["cache"];
    configure(&mut spec);
    let client = Sidecar::start(spec).await;
    let through = client.upstreams[0];

    assert_eq!(cli(through, &["SET", "book", "dune"]).await.unwrap(), "OK");
    assert_eq!(cli(through, &["GET", "book"]).await.unwrap(), "dune");
    // What went through the mesh is in the real server.
    assert_eq!(cli(redis.addr, &["GET", "book"]).await.unwrap(), "dune");

    // Pipelined load over several connections at once.
    let benchmark = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &through.port().to_string()])
        .args(["-q", "-n", "2000", "-c", "8", "-P", "4", "-t", "set,get"])
        .output();
    let benchmark = tokio::time::timeout(PATIENCE, benchmark)
        .await
        .expect("redis-benchmark finished")
        .unwrap();
    let report = String::from_utf8_lossy(&benchmark.stdout);
    assert!(benchmark.status.success(), "{report}");
    assert!(
        report.contains("SET:") && report.contains("GET:"),
        "{report}"
    );

    let opened = r#"mesh_spliced_connections_total{direction="inbound",service="cache"}"#;
    let metrics = server.metrics().await;
    assert!(
        common::metric(&metrics, opened).is_some_and(|n| n >= 10.0),
        "{metrics}"
    );
}

#[tokio::test]
#[ignore = "needs Debian's redis-server; CI runs it with --ignored"]
async fn redis_through_a_plaintext_sidecar_pair() {
    redis_through_the_mesh(TlsMode::Off).await;
}

#[tokio::test]
#[ignore = "needs Debian's redis-server; CI runs it with --ignored"]
async fn redis_through_a_strict_mtls_sidecar_pair() {
    redis_through_the_mesh(TlsMode::Strict).await;
}
