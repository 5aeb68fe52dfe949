//! Mutual TLS between sidecars: certificates from the registry's CA, strict and
//! permissive inbound, identity checks both ways, rotation, and the caller allow-list.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{
    App, H2Conn, JOIN_TOKEN, PATIENCE, Registry, Sidecar, SidecarSpec, TestBody, eventually,
    metric_or_zero,
};
use http::{Method, Request, StatusCode, Version};
use mesh_proxy::tls::TlsMode;
use mesh_registry_api::Registration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: Duration = Duration::from_secs(86_400);

/// A sidecar for `service` in front of `app`, with mTLS in `mode` and `allow` callers.
async fn meshed(
    registry: &Registry,
    service: &str,
    app: &App,
    mode: TlsMode,
    allow: &[&str],
) -> Sidecar {
    meshed_with(registry, service, app, mode, |c| {
        c.tls.allow = allow.iter().map(|s| s.to_string()).collect();
    })
    .await
}

/// [`meshed`], with `settings` applied to its configuration.
async fn meshed_with(
    registry: &Registry,
    service: &str,
    app: &App,
    mode: TlsMode,
    settings: impl FnOnce(&mut mesh_proxy::Config),
) -> Sidecar {
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, service, app.addr);
    spec.config.tls.mode = mode;
    spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
    settings(&mut spec.config);
    Sidecar::start(spec).await
}

#[tokio::test]
async fn sidecars_talk_over_mtls_with_registry_issued_certificates() {
    let registry = Registry::start_with_ca(DAY).await;
    let web_app = App::start("web-1").await;
    let web = meshed(&registry, "web", &web_app, TlsMode::Strict, &[]).await;
    let caller_app = App::start("marketplace").await;
    let caller = meshed(&registry, "marketplace", &caller_app, TlsMode::Strict, &[]).await;
    registry.until_passing("web", 1).await;

    let answer = common::get_h1(caller.outbound, "web", "/whoami").await;
    assert_eq!(
        (answer.status, answer.text.as_str()),
        (StatusCode::OK, "web-1")
    );
    let conn = H2Conn::connect(caller.outbound).await;
    assert_eq!(
        conn.get("web", "/whoami").await.text,
        "web-1",
        "h2 over TLS too"
    );

    let m = web.metrics().await;
    assert!(
        metric_or_zero(&m, r#"mesh_inbound_connections_total{tls="tls"}"#) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric_or_zero(&m, r#"mesh_inbound_connections_total{tls="plaintext"}"#),
        0.0
    );
    let expiry = metric_or_zero(&m, "mesh_tls_cert_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 86_000.0 && expiry < now + 86_500.0,
        "{expiry} vs {now}"
    );
}

#[tokio::test]
async fn rotation_keeps_an_open_http2_connection_working() {
    // Certificates live 3 s: each sidecar renews about every 2 s.
    let registry = Registry::start_with_ca(Duration::from_secs(3)).await;
    let web_app = App::start("web-1").await;
    let web = meshed(&registry, "web", &web_app, TlsMode::Strict, &[]).await;
    let caller_app = App::start("marketplace").await;
    let caller = meshed(&registry, "marketplace", &caller_app, TlsMode::Strict, &[]).await;
    registry.until_passing("web", 1).await;

    let conn = H2Conn::connect(caller.outbound).await;
    let call = async || {
        let answer = conn.get("web", "/whoami").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    };
    let rotations = async |sidecar: &Sidecar| {
        metric_or_zero(&sidecar.metrics().await, "mesh_tls_cert_rotations_total")
    };
    // The first call opens the caller's TLS connection to web; calls go on until both
    // sidecars have renewed their certificate twice since: calls between and after
    // rotations on both sides.
    call().await;
    let before = (rotations(&web).await, rotations(&caller).await);
    eventually(PATIENCE, "two rotations on both sides", async || {
        call().await;
        rotations(&web).await >= before.0 + 2.0 && rotations(&caller).await >= before.1 + 2.0
    })
    .await;
    call().await;
    let m = web.metrics().await;
    // One TLS connection from the caller's sidecar carried every call across rotations.
    assert_eq!(
        metric_or_zero(&m, r#"mesh_inbound_connections_total{tls="tls"}"#),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn strict_inbound_refuses_plaintext_and_foreign_certificates() {
    let registry = Registry::start_with_ca(DAY).await;
    let app = App::start("web-1").await;
    let web = meshed(&registry, "web", &app, TlsMode::Strict, &[]).await;
    let inbound = web.inbound.unwrap();

    // Plaintext: the connection is closed without an answer.
    let mut plain = tokio::net::TcpStream::connect(inbound).await.unwrap();
    plain
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf))
        .await
        .expect("closed");
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));

    // A certificate from another CA, for the same service name: refused.
    let other = mesh_registry::ca::Ca::generate("mesh.local").unwrap();
    let answer = foreign_client_request(inbound, &other).await;
    assert!(
        answer.is_err(),
        "a foreign certificate got an answer: {answer:?}"
    );

    assert_eq!(
        app.received.load(Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
    let m = web.metrics().await;
    assert!(
        metric_or_zero(&m, r#"mesh_inbound_connections_total{tls="refused"}"#) >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn permissive_inbound_lets_plaintext_in_and_labels_it() {
    let registry = Registry::start_with_ca(DAY).await;
    let app = App::start("web-1").await;
    let web = meshed(&registry, "web", &app, TlsMode::Permissive, &[]).await;
    let answer = common::get_h1(web.inbound.unwrap(), "web", "/whoami").await;
    assert_eq!(
        (answer.status, answer.text.as_str()),
        (StatusCode::OK, "web-1")
    );
    let m = web.metrics().await;
    assert_eq!(
        metric_or_zero(&m, r#"mesh_inbound_connections_total{tls="plaintext"}"#),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn the_caller_refuses_a_server_that_is_not_the_service_it_called() {
    let registry = Registry::start_with_ca(DAY).await;
    let db_app = App::start("db-1").await;
    let db = meshed(&registry, "db", &db_app, TlsMode::Strict, &[]).await;
    // A registration that claims `web` lives at db's sidecar.
    let mut lie = Registration::new(db.inbound.unwrap().to_string());
    lie.metadata.insert("tls".into(), "strict".into());
    lie.ttl = Duration::from_secs(3600);
    registry
        .client
        .register("web", "impostor", &lie)
        .await
        .unwrap();
    let caller_app = App::start("marketplace").await;
    let caller = meshed(&registry, "marketplace", &caller_app, TlsMode::Strict, &[]).await;

    let answer = common::get_h1(caller.outbound, "web", "/whoami").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text);
    assert_eq!(answer.headers["mesh-error"], "connect-failed");
    assert!(
        answer.text.contains("spiffe://mesh.local/service/web"),
        "{}",
        answer.text
    );
    assert_eq!(
        db_app.received.load(Ordering::SeqCst),
        0,
        "nothing was sent to the impostor"
    );
}

#[tokio::test]
async fn the_allow_list_admits_its_callers_and_denies_others() {
    let registry = Registry::start_with_ca(DAY).await;
    let app = App::start("recommendations-1").await;
    let server = meshed(
        &registry,
        "recommendations",
        &app,
        TlsMode::Strict,
        &["marketplace"],
    )
    .await;
    registry.until_passing("recommendations", 1).await;
    let market_app = App::start("marketplace").await;
    let market = meshed(&registry, "marketplace", &market_app, TlsMode::Strict, &[]).await;
    let other_app = App::start("other").await;
    let other = meshed(&registry, "other", &other_app, TlsMode::Strict, &[]).await;

    let allowed = common::get_h1(market.outbound, "recommendations", "/whoami").await;
    assert_eq!(allowed.status, StatusCode::OK);

    let denied = common::get_h1(other.outbound, "recommendations", "/whoami").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.headers["mesh-error"], "forbidden");
    assert!(
        denied.text.contains("other may not call recommendations"),
        "{}",
        denied.text
    );

    let conn = H2Conn::connect(other.outbound).await;
    let call = Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_2)
        .uri("http://recommendations/Recommendations/Recommend")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(TestBody::new(Bytes::from_static(&[0, 0, 0, 0, 0]), None))
        .unwrap();
    let grpc = conn.send(call).await;
    assert_eq!(grpc.headers["grpc-status"], "7", "PERMISSION_DENIED");
    assert_eq!(
        app.received.load(Ordering::SeqCst),
        1,
        "only the allowed call reached the app"
    );
    let m = server.metrics().await;
    assert_eq!(
        metric_or_zero(
            &m,
            r#"mesh_policy_denied_total{mode="enforce",rule="allow-list",service="recommendations"}"#
        ),
        2.0,
        "{m}"
    );
}

/// Connects to `addr` with a client certificate for `web` issued by `ca` (not the mesh's
/// CA) and tries one request.
async fn foreign_client_request(
    addr: std::net::SocketAddr,
    ca: &mesh_registry::ca::GeneratedCa,
) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let authority =
        mesh_registry::ca::Ca::from_pem(&ca.cert_pem, &ca.key_pem, "mesh.local", DAY).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://mesh.local/service/web".try_into().unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let (leaf, _) = authority.sign("web", &csr).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap()];
    let private = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_client_auth_cert(chain, private)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("web").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("closed".into());
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The test client trusts any server: it is the server's check of the client under test.
#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn a_pooled_tls_connection_outlives_quiet_spells() {
    let registry = Registry::start_with_ca(DAY).await;
    let web_app = App::start("web-1").await;
    let web = meshed_with(&registry, "web", &web_app, TlsMode::Strict, |c| {
        c.listen.header_read_timeout = Duration::from_millis(300)
    })
    .await;
    let caller_app = App::start("marketplace").await;
    let caller = meshed_with(
        &registry,
        "marketplace",
        &caller_app,
        TlsMode::Strict,
        |c| c.discovery.idle_timeout = Duration::from_millis(500),
    )
    .await;
    registry.until_passing("web", 1).await;

    // Pauses between calls longer than the server's header read timeout and the caller's
    // destination idle timeout: the caller's pooled connection must still be open, not
    // replaced by a new handshake per call. A fixed pause is sound here: those timers run
    // on this test's runtime, due well before each pause ends, and a slow machine could
    // only make them late, which would spare the connection, not fail the test.
    for _ in 0..3 {
        let answer = common::get_h1(caller.outbound, "web", "/whoami").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let m = web.metrics().await;
    assert_eq!(
        metric_or_zero(&m, r#"mesh_inbound_connections_total{tls="tls"}"#),
        1.0,
        "{m}"
    );
}
