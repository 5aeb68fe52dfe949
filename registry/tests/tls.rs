//! The TLS listener: sidecars write their own service's instances with the certificates
//! the mesh CA gave them, nobody else's; the listener proves it is the registry; with a
//! CA, writes without a certificate or a token are refused.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use mesh_registry::Config;
use mesh_registry_api::spiffe::{SpiffeVerifier, registry_id};
use mesh_registry_api::{Client, Registration};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

const JOIN_TOKEN: &str = "join-me";

/// A registry with a CA and a TLS listener; its plain address and its TLS address.
struct Secured {
    plain: SocketAddr,
    tls: SocketAddr,
    ca_pem: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn secured(extra: impl FnOnce(&mut Config)) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        ca_dir: Some(dir.path().to_owned()),
        join_token: Some(JOIN_TOKEN.into()),
        ..Config::default()
    };
    extra(&mut config);
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (plain_at, tls_at) = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mesh_registry::run_with_tls(
        plain,
        Some(tls),
        config,
        async {
            let _ = stopped.await;
        },
    ));
    let ca_file = dir.path().join("ca.pem");
    common::eventually(common::PATIENCE, "the CA written", async || {
        std::fs::read_to_string(&ca_file).is_ok_and(|pem| pem.contains("END CERTIFICATE"))
    })
    .await;
    let ca_pem = std::fs::read_to_string(&ca_file).unwrap();
    common::eventually(common::PATIENCE, "the registry serving", async || {
        common::request(
            Method::GET,
            &format!("http://{plain_at}/readyz"),
            &[],
            Bytes::new(),
        )
        .await
        .status
            == StatusCode::OK
    })
    .await;
    Secured {
        plain: plain_at,
        tls: tls_at,
        ca_pem,
        _dir: dir,
        _stop: stop,
    }
}

fn roots(ca_pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    Arc::new(roots)
}

/// A client certificate, as rustls presents it.
#[derive(Debug)]
struct Presents(Option<Arc<CertifiedKey>>);

impl rustls::server::ResolvesServerCert for Presents {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
}

impl ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }

    fn has_certs(&self) -> bool {
        self.0.is_some()
    }
}

/// TLS to the registry, expecting `expected` as its identity, presenting `cert`.
fn tls_config(
    ca_pem: &str,
    expected: String,
    cert: Option<Arc<CertifiedKey>>,
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = SpiffeVerifier::new(expected, roots(ca_pem), provider.clone());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(Presents(cert)))
}

/// A certificate for `service` from the registry's CA, obtained with the join token.
async fn certificate(registry: &Secured, service: &str) -> Arc<CertifiedKey> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let id = mesh_registry_api::spiffe_id("mesh.local", service);
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let client = Client::new(&format!("https://{}", registry.tls))
        .unwrap()
        .with_tls(tls_config(
            &registry.ca_pem,
            registry_id("mesh.local"),
            None,
        ));
    let signed = client.sign(service, &csr, JOIN_TOKEN).await.unwrap();
    let leaf = CertificateDer::from_pem_slice(signed.certificate.as_bytes()).unwrap();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&private).unwrap();
    Arc::new(CertifiedKey::new(vec![leaf], signing))
}

fn as_sidecar(registry: &Secured, cert: Option<Arc<CertifiedKey>>) -> Client {
    Client::new(&format!("https://{}", registry.tls))
        .unwrap()
        .with_tls(tls_config(
            &registry.ca_pem,
            registry_id("mesh.local"),
            cert,
        ))
}

#[tokio::test]
async fn a_sidecar_writes_its_own_services_instances_with_its_certificate_and_no_others() {
    let registry = secured(|_| {}).await;
    let web = as_sidecar(&registry, Some(certificate(&registry, "web").await));
    let stored = web
        .register("web", "web-1", &Registration::new("10.0.0.1:4143"))
        .await
        .unwrap();
    assert_eq!(stored.owner, "spiffe://mesh.local/service/web");

    let refused = web
        .register("db", "db-1", &Registration::new("10.6.6.6:4143"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("may not write"), "{refused}");

    // db's own sidecar cannot take web-1 over either: the service is not its own.
    let db = as_sidecar(&registry, Some(certificate(&registry, "db").await));
    let refused = db
        .register("web", "web-1", &Registration::new("10.6.6.6:4143"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("may not write"), "{refused}");
    db.register("db", "db-1", &Registration::new("10.0.0.2:4143"))
        .await
        .unwrap();
    let listed = web.service_all("web").await.unwrap();
    assert_eq!(listed.instances[0].address, "10.0.0.1:4143");
}

#[tokio::test]
async fn with_a_ca_writes_need_a_certificate_or_a_token() {
    let registry = secured(|config| config.token = Some("op".into())).await;
    // Over TLS without a client certificate, and on the plain listener: 401.
    let anonymous = as_sidecar(&registry, None);
    let refused = anonymous
        .register("web", "web-1", &Registration::new("10.6.6.6:4143"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("client certificate"),
        "{refused}"
    );
    let plain = Client::new(&format!("http://{}", registry.plain)).unwrap();
    let refused = plain
        .register("web", "web-1", &Registration::new("10.6.6.6:4143"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    // Reads stay open on both, and the operator writes on the plain one.
    anonymous.services().await.unwrap();
    plain
        .clone()
        .with_token("op")
        .register("web", "ops-1", &Registration::new("10.0.0.9:4143"))
        .await
        .unwrap();
    let ready = common::request(
        Method::GET,
        &format!("http://{}/readyz", registry.plain),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        ready.json["writes"],
        serde_json::json!(["certificate", "operator-token"])
    );
}

/// A sidecar's certificate comes from the same CA, but it cannot pass for the registry:
/// the registry's identity is one the CA never signs for a sidecar.
#[tokio::test]
async fn a_sidecar_certificate_cannot_pass_for_the_registry() {
    let registry = secured(|_| {}).await;
    let web = certificate(&registry, "web").await;

    // A server presenting web's certificate where the registry should be.
    let impostor = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = impostor.local_addr().unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(Presents(Some(web))));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        while let Ok((stream, _)) = impostor.accept().await {
            let _ = acceptor.accept(stream).await;
        }
    });
    let client = Client::new(&format!("https://{at}"))
        .unwrap()
        .with_tls(tls_config(
            &registry.ca_pem,
            registry_id("mesh.local"),
            None,
        ));
    let refused = client.services().await.unwrap_err();
    assert!(
        format!("{refused:?}").contains("not spiffe://mesh.local/registry"),
        "{refused:?}"
    );
    // The real one passes.
    as_sidecar(&registry, None).services().await.unwrap();
}
