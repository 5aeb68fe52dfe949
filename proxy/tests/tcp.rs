//! Opaque TCP through a sidecar pair: a server that speaks first (in plaintext, under
//! permissive and under strict mTLS), the allow list, an instance that dies mid-connection,
//! a server that never reads, and a client that half-closes. Redis, a real TCP service, has its own test (tests/redis.rs).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{JOIN_TOKEN, PATIENCE, Registry, Sidecar, SidecarSpec, eventually};
use mesh_proxy::balance::Strategy;
use mesh_proxy::inbound::AppProtocol;
use mesh_proxy::tls::TlsMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A server that speaks first: on each connection it says `hello from NAME\n` at once,
/// then answers each chunk it reads in capitals, and once the client has half-closed,
/// says `bye` and closes.
struct Greeter {
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// The connections it serves, to kill them with it.
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Greeter {
    async fn start(name: &str) -> Greeter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let greeting = format!("hello from {name}\n");
        let connections = Arc::new(Mutex::new(Vec::new()));
        let served = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let connection = tokio::spawn(Self::serve(stream, greeting.clone()));
                served.lock().unwrap().push(connection.abort_handle());
            }
        });
        Greeter {
            addr,
            task,
            connections,
        }
    }

    async fn serve(mut stream: TcpStream, greeting: String) {
        if stream.write_all(greeting.as_bytes()).await.is_err() {
            return; // the health check's connection
        }
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let loud = buf[..n].to_ascii_uppercase();
                    if stream.write_all(&loud).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = stream.write_all(b"bye").await;
    }

    /// Dies: stops listening (new connections are refused) and drops every connection
    /// it was serving.
    fn kill(&self) {
        self.task.abort();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

/// A sidecar serving `app` as the `tcp` service `service`, in `mode`.
async fn tcp_server(registry: &Registry, service: &str, app: SocketAddr, mode: TlsMode) -> Sidecar {
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, service, app);
    spec.app = Some((service, app, Some(AppProtocol::Tcp)));
    spec.config.tls.mode = mode;
    if mode != TlsMode::Off {
        spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
    }
    Sidecar::start(spec).await
}

/// A sidecar for the app `caller` with an upstream listener for `service`.
async fn tcp_client(
    registry: &Registry,
    caller: &str,
    service: &'static str,
    mode: TlsMode,
) -> Sidecar {
    tcp_client_with(registry, caller, service, mode, |_| {}).await
}

/// [`tcp_client`], with `settings` on its configuration.
async fn tcp_client_with(
    registry: &Registry,
    caller: &str,
    service: &'static str,
    mode: TlsMode,
    settings: impl FnOnce(&mut mesh_proxy::Config),
) -> Sidecar {
    let url = registry.url();
    let app = common::listener().await.local_addr().unwrap();
    let mut spec = SidecarSpec::server(&url, caller, app);
    spec.upstreams = vec![service];
    spec.config.tls.mode = mode;
    if mode != TlsMode::Off {
        spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
    }
    settings(&mut spec.config);
    Sidecar::start(spec).await
}

/// Connects through `addr` and waits for the connection to be closed; what came before.
async fn closed_at_once(addr: SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got))
        .await
        .expect("the connection was closed")
        .ok();
    got
}

/// Reads the greeting the server sends first, without sending anything.
async fn greeting(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("the server spoke first")
            .unwrap();
        if read == 0 {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Opens a connection through `addr`, reads the greeting, sends `ping`, half-closes and
/// returns the greeting and everything after it.
async fn converse(addr: SocketAddr) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let hello = greeting(&mut stream).await;
    stream.write_all(b"ping").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the server closed after the client")
        .unwrap();
    (hello, String::from_utf8(rest).unwrap())
}

async fn a_server_speaking_first_is_reached(mode: TlsMode) {
    let greeter = Greeter::start("db-1").await;
    let registry = if mode == TlsMode::Off {
        Registry::start().await
    } else {
        Registry::start_with_ca(Duration::from_secs(86_400)).await
    };
    let server = tcp_server(&registry, "db", greeter.addr, mode).await;
    registry.until_passing("db", 1).await;
    let client = tcp_client(&registry, "web", "db", mode).await;

    let (hello, rest) = converse(client.upstreams[0]).await;
    assert_eq!(hello, "hello from db-1\n");
    assert_eq!(rest, "PINGbye", "the half-close crossed both sidecars");

    // Counted as a connection on both sides, closed cleanly, bytes each way.
    let closed = |direction: &str| {
        format!(
            r#"mesh_spliced_closed_total{{direction="{direction}",reason="closed",service="db"}}"#
        )
    };
    for (sidecar, direction) in [(&client, "outbound"), (&server, "inbound")] {
        eventually(PATIENCE, "the connection counted closed", async || {
            common::metric(&sidecar.metrics().await, &closed(direction)) == Some(1.0)
        })
        .await;
        let metrics = sidecar.metrics().await;
        let from = |side: &str| {
            let series = format!(
                r#"mesh_spliced_bytes_total{{direction="{direction}",from="{side}",service="db"}}"#
            );
            common::metric(&metrics, &series)
        };
        assert_eq!(from("client"), Some(4.0), "{metrics}");
        assert_eq!(
            from("server"),
            Some(("hello from db-1\nPINGbye".len()) as f64)
        );
    }
    if mode != TlsMode::Off {
        let inbound = server.metrics().await;
        let tls = common::metric(&inbound, r#"mesh_inbound_connections_total{tls="tls"}"#);
        assert!(tls.is_some_and(|n| n >= 1.0), "{inbound}");
    }
}

#[tokio::test]
async fn a_server_speaking_first_is_reached_in_plaintext() {
    a_server_speaking_first_is_reached(TlsMode::Off).await;
}

#[tokio::test]
async fn a_server_speaking_first_is_reached_over_strict_mtls() {
    a_server_speaking_first_is_reached(TlsMode::Strict).await;
}

#[tokio::test]
async fn a_server_speaking_first_is_reached_over_permissive_mtls() {
    a_server_speaking_first_is_reached(TlsMode::Permissive).await;
}

#[tokio::test]
async fn a_plaintext_client_of_a_permissive_tcp_listener_is_let_in_after_the_detect_wait() {
    let greeter = Greeter::start("db-plain").await;
    let registry = Registry::start_with_ca(Duration::from_secs(86_400)).await;
    let server = tcp_server(&registry, "db", greeter.addr, TlsMode::Permissive).await;
    registry.until_passing("db", 1).await;
    // Straight at the inbound listener, as an un-meshed client would: it says nothing
    // and waits for the server.
    let (hello, rest) = converse(server.inbound.unwrap()).await;
    assert_eq!(hello, "hello from db-plain\n");
    assert_eq!(rest, "PINGbye");
    let metrics = server.metrics().await;
    let plaintext = common::metric(
        &metrics,
        r#"mesh_inbound_connections_total{tls="plaintext"}"#,
    );
    assert_eq!(plaintext, Some(1.0), "{metrics}");
}

#[tokio::test]
async fn a_caller_not_on_the_allow_list_gets_no_byte() {
    let greeter = Greeter::start("db-1").await;
    let registry = Registry::start_with_ca(Duration::from_secs(86_400)).await;
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, "db", greeter.addr);
    spec.app = Some(("db", greeter.addr, Some(AppProtocol::Tcp)));
    spec.config.tls.mode = TlsMode::Strict;
    spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
    spec.config.tls.allow = vec!["web".to_owned()];
    let server = Sidecar::start(spec).await;
    registry.until_passing("db", 1).await;
    let allowed = tcp_client(&registry, "web", "db", TlsMode::Strict).await;
    let other = tcp_client(&registry, "batch", "db", TlsMode::Strict).await;

    let (hello, _) = converse(allowed.upstreams[0]).await;
    assert_eq!(hello, "hello from db-1\n");
    // More than it takes to eject an endpoint: a refusal is the service's answer, not
    // an instance failing, so it is neither tried elsewhere nor held against one.
    for _ in 0..5 {
        let got = closed_at_once(other.upstreams[0]).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    let caller = other.metrics().await;
    let refused = r#"mesh_spliced_closed_total{direction="outbound",reason="denied",service="db"}"#;
    assert_eq!(common::metric(&caller, refused), Some(5.0), "{caller}");
    let ejections = common::metric_sum(&caller, "mesh_endpoint_ejections_total", r#"service="db""#);
    assert_eq!(ejections, 0.0, "{caller}");
    let metrics = server.metrics().await;
    let denied = common::metric(
        &metrics,
        r#"mesh_policy_denied_total{mode="enforce",rule="allow-list",service="db"}"#,
    );
    assert_eq!(denied, Some(5.0), "{metrics}");
    let closed = r#"mesh_spliced_closed_total{direction="inbound",reason="denied",service="db"}"#;
    assert_eq!(common::metric(&metrics, closed), Some(5.0), "{metrics}");
}

/// Sends `word` on `stream` and reads the server's answer to it; `None` when the
/// connection has ended.
async fn shout(stream: &mut TcpStream, word: &str) -> Option<String> {
    stream.write_all(word.as_bytes()).await.ok()?;
    let mut loud = vec![0u8; word.len()];
    let read = tokio::time::timeout(PATIENCE, stream.read_exact(&mut loud))
        .await
        .expect("an answer or the end of the connection");
    read.ok().map(|_| String::from_utf8(loud).unwrap())
}

#[tokio::test]
async fn an_instance_that_dies_ends_its_connections_and_new_ones_avoid_it() {
    let one = Greeter::start("db-1").await;
    let two = Greeter::start("db-2").await;
    let registry = Registry::start().await;
    let s1 = tcp_server(&registry, "db", one.addr, TlsMode::Off).await;
    let s2 = tcp_server(&registry, "db", two.addr, TlsMode::Off).await;
    registry.until_passing("db", 2).await;
    let client = tcp_client(&registry, "web", "db", TlsMode::Off).await;

    // Held open: p2c weighs open connections, so both instances get some.
    let mut open = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(client.upstreams[0]).await.unwrap();
        let hello = greeting(&mut stream).await;
        open.push((hello, stream));
    }
    let to = |name: &str| format!("hello from {name}\n");
    let on_one = open
        .iter()
        .filter(|(hello, _)| *hello == to("db-1"))
        .count();
    assert!(0 < on_one && on_one < open.len(), "all on one instance");
    // The sidecar's endpoint view says where they are.
    let page = common::get(&format!("http://{}/debug/endpoints", client.admin)).await;
    let page: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(page[0]["protocol"], "tcp", "{page}");
    let open_on = |addr: SocketAddr| {
        let endpoints = page[0]["endpoints"].as_array().unwrap();
        let server = endpoints.iter().find(|e| e["address"] == addr.to_string());
        server.and_then(|e| e["open_connections"].as_u64())
    };
    assert_eq!(open_on(s1.inbound.unwrap()), Some(on_one as u64), "{page}");
    assert_eq!(
        open_on(s2.inbound.unwrap()),
        Some((8 - on_one) as u64),
        "{page}"
    );

    // db-1 dies mid-connection: each connection it held ends at the client, through both
    // sidecars (the client reads its end), and once the client lets go, is counted
    // closed; those on db-2 carry on.
    one.kill();
    let mut survivors = Vec::new();
    for (hello, mut stream) in open {
        let answer = shout(&mut stream, "ping").await;
        if hello == to("db-1") {
            assert_eq!(
                answer, None,
                "a connection to the dead instance still answers"
            );
        } else {
            assert_eq!(answer.as_deref(), Some("PING"));
            survivors.push(stream);
        }
    }
    eventually(PATIENCE, "the ended connections counted", async || {
        let metrics = client.metrics().await;
        let ended = common::metric_sum(&metrics, "mesh_spliced_closed_total", r#"service="db""#);
        let open = common::metric(
            &metrics,
            r#"mesh_spliced_open_connections{direction="outbound",service="db"}"#,
        );
        ended == on_one as f64 && open == Some(survivors.len() as f64)
    })
    .await;
    for stream in &mut survivors {
        assert_eq!(shout(stream, "still").await.as_deref(), Some("STILL"));
    }

    // New connections reach db-2, once its health check (or a refused connect, tried
    // elsewhere) has taken db-1 out.
    eventually(PATIENCE, "every new connection reaching db-2", async || {
        let mut all_two = true;
        for _ in 0..4 {
            let mut stream = TcpStream::connect(client.upstreams[0]).await.unwrap();
            all_two &= greeting(&mut stream).await == to("db-2");
        }
        all_two
    })
    .await;
}

#[tokio::test]
async fn over_mtls_a_new_connection_to_an_instance_whose_app_just_died_goes_to_another() {
    let one = Greeter::start("db-1").await;
    let two = Greeter::start("db-2").await;
    let registry = Registry::start_with_ca(Duration::from_secs(86_400)).await;
    let mut servers = Vec::new();
    for greeter in [&one, &two] {
        let url = registry.url();
        let mut spec = SidecarSpec::server(&url, "db", greeter.addr);
        spec.app = Some(("db", greeter.addr, Some(AppProtocol::Tcp)));
        spec.config.tls.mode = TlsMode::Strict;
        spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
        // The registry goes on listing db-1 as passing after its app dies: the window
        // before a health check notices, held open.
        spec.config.registration.health_interval = Duration::from_secs(3600);
        spec.config.registration.ttl = Duration::from_secs(3600);
        servers.push(Sidecar::start(spec).await);
    }
    registry.until_passing("db", 2).await;
    // Round-robin, so that db-1 gets every other connection whatever the latency
    // estimates say: before the kill, and after it, where each of its turns must be
    // passed on to db-2.
    let client = tcp_client_with(&registry, "web", "db", TlsMode::Strict, |c| {
        c.outbound.balancer = Strategy::RoundRobin;
    })
    .await;
    let mut greeted = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(client.upstreams[0]).await.unwrap();
        greeted.insert(greeting(&mut stream).await);
    }
    assert_eq!(greeted.len(), 2, "{greeted:?}");

    // db-1's sidecar cannot reach its app any more and says so: the caller's sidecar
    // tries db-2, and the app never sees a connection closed under it.
    one.kill();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(client.upstreams[0]).await.unwrap();
        assert_eq!(greeting(&mut stream).await, "hello from db-2\n");
    }
    let page = common::get(&format!("http://{}/debug/endpoints", client.admin)).await;
    assert!(
        page.text.contains("its sidecar cannot reach its app"),
        "{}",
        page.text
    );
}

#[tokio::test]
async fn a_connection_nothing_accepts_is_closed_and_counted_unreachable() {
    let greeter = Greeter::start("db-1").await;
    let registry = Registry::start().await;
    let server = tcp_server(&registry, "db", greeter.addr, TlsMode::Off).await;
    registry.until_passing("db", 1).await;
    let client = tcp_client(&registry, "web", "db", TlsMode::Off).await;
    greeter.kill();
    // The app is gone: the serving sidecar cannot reach it, or once its health check
    // has said so, the calling one has no endpoint. Either way the client's connection
    // is closed without a byte, and counted.
    let got = closed_at_once(client.upstreams[0]).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let unreachable = |direction: &str| {
        format!(
            r#"mesh_spliced_closed_total{{direction="{direction}",reason="unreachable",service="db"}}"#
        )
    };
    eventually(PATIENCE, "the connection counted unreachable", async || {
        let outbound = common::metric(&client.metrics().await, &unreachable("outbound"));
        let inbound = common::metric(&server.metrics().await, &unreachable("inbound"));
        outbound.unwrap_or(0.0) + inbound.unwrap_or(0.0) == 1.0
    })
    .await;
}

#[tokio::test]
async fn a_server_that_never_reads_holds_its_client_back() {
    // Accepts and never reads: what the client sends can only pile up in buffers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let _deaf = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            held.push(stream);
        }
    });
    let registry = Registry::start().await;
    let _server = tcp_server(&registry, "sink", app, TlsMode::Off).await;
    registry.until_passing("sink", 1).await;
    let client = tcp_client(&registry, "web", "sink", TlsMode::Off).await;

    // Writes until a write makes no progress for a while: the sidecars pass the
    // back-pressure on instead of queueing. What is in flight then is the sockets' own
    // buffers (four of them each way, a few MiB each on loopback) and the splices' (at
    // most 256 KiB per direction per sidecar); a proxy that queues would take it all.
    const OFFERED: usize = 1 << 30;
    let mut stream = TcpStream::connect(client.upstreams[0]).await.unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut accepted = 0;
    while accepted < OFFERED {
        match tokio::time::timeout(Duration::from_secs(1), stream.write(&chunk)).await {
            Ok(Ok(n)) => accepted += n,
            Ok(Err(e)) => panic!("the connection failed after {accepted} bytes: {e}"),
            Err(_) => break,
        }
    }
    assert!(
        accepted < 64 << 20,
        "{accepted} bytes taken from a client whose server never reads"
    );
    // Still open, and counted as such.
    let metrics = client.metrics().await;
    let series = r#"mesh_spliced_open_connections{direction="outbound",service="sink"}"#;
    assert_eq!(common::metric(&metrics, series), Some(1.0), "{metrics}");
}

/// A sidecar serving `app` as `service` with no protocol declared.
async fn undeclared_server(
    registry: &Registry,
    service: &str,
    app: SocketAddr,
    mode: TlsMode,
) -> Sidecar {
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, service, app);
    spec.config.tls.mode = mode;
    if mode != TlsMode::Off {
        spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
    }
    Sidecar::start(spec).await
}

async fn an_undeclared_port_that_is_no_http_is_detected(mode: TlsMode) {
    let greeter = Greeter::start("legacy-1").await;
    let registry = if mode == TlsMode::Off {
        Registry::start().await
    } else {
        Registry::start_with_ca(Duration::from_secs(86_400)).await
    };
    let server = undeclared_server(&registry, "legacy", greeter.addr, mode).await;
    registry.until_passing("legacy", 1).await;
    let client = tcp_client(&registry, "web", "legacy", mode).await;

    // A client that waits for the server: after the detect wait, carried as bytes.
    let (hello, rest) = converse(client.upstreams[0]).await;
    assert_eq!(hello, "hello from legacy-1\n");
    assert_eq!(rest, "PINGbye");
    // A client that speaks first, and not HTTP: carried at once.
    let mut stream = TcpStream::connect(client.upstreams[0]).await.unwrap();
    stream.write_all(b"*1\r\n$4\r\nping\r\n").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8(all).unwrap(),
        "hello from legacy-1\n*1\r\n$4\r\nPING\r\nbye"
    );

    let detections = |direction: &str, result: &str| {
        format!(r#"mesh_protocol_detections_total{{direction="{direction}",result="{result}"}}"#)
    };
    let outbound = client.metrics().await;
    assert_eq!(
        common::metric(&outbound, &detections("outbound", "silent")),
        Some(1.0),
        "{outbound}"
    );
    assert_eq!(
        common::metric(&outbound, &detections("outbound", "opaque")),
        Some(1.0),
        "{outbound}"
    );
    let inbound = server.metrics().await;
    let carried = common::metric_sum(
        &inbound,
        "mesh_protocol_detections_total",
        r#"direction="inbound""#,
    );
    assert_eq!(carried, 2.0, "{inbound}");
    assert_eq!(
        common::metric(&inbound, &detections("inbound", "http")),
        None,
        "{inbound}"
    );
}

#[tokio::test]
async fn an_undeclared_port_that_is_no_http_is_detected_in_plaintext() {
    an_undeclared_port_that_is_no_http_is_detected(TlsMode::Off).await;
}

#[tokio::test]
async fn an_undeclared_port_that_is_no_http_is_detected_over_strict_mtls() {
    an_undeclared_port_that_is_no_http_is_detected(TlsMode::Strict).await;
}
