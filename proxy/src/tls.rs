//! Mutual TLS between sidecars: this sidecar's identity (a short-lived certificate from
//! the registry's CA, renewed at two thirds of its life) and the rustls configurations
//! that present it and check peers'.
//!
//! An identity is a SPIFFE ID, `spiffe://<trust domain>/service/<name>`, carried as the
//! certificate's only (URI) subject alternative name. The private key is generated here
//! and never leaves the process: the registry only sees a CSR.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use mesh_registry_api::{Backoff, Client};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::error::{ErrorKind, ProxyError};
use crate::metrics::Metrics;

/// Whether sidecar-to-sidecar traffic is encrypted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Plaintext everywhere.
    #[default]
    Off,
    /// Inbound accepts TLS and plaintext (for migrating a mesh); outbound uses TLS to
    /// peers that have it on.
    Permissive,
    /// Inbound refuses plaintext; outbound uses TLS to every peer that has it on.
    Strict,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Permissive => "permissive",
            TlsMode::Strict => "strict",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make a key or CSR: {0}")]
    Key(String),
    #[error("the registry did not sign our certificate: {0}")]
    Sign(#[from] mesh_registry_api::ClientError),
    #[error("the registry's answer is unusable: {0}")]
    Answer(String),
}

/// Where this sidecar's identity appears once the CA has signed its first certificate.
/// Until then the admin listener says why on `/ready`, the data listeners refuse
/// (outbound: 503 `no-identity`; inbound: connections closed), and nothing is
/// registered; afterwards it holds the identity and the inbound TLS acceptor.
pub struct IdentitySlot {
    identity: OnceLock<Arc<Identity>>,
    acceptor: OnceLock<tokio_rustls::TlsAcceptor>,
    /// Why there is no identity yet.
    waiting: Mutex<String>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// This sidecar's certificate and the mesh's trust anchor.
pub struct Identity {
    pub service: String,
    pub trust_domain: String,
    current: ArcSwap<CertifiedKey>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// Unix time the current certificate expires.
    not_after: AtomicU64,
    /// Lifetime the CA gives certificates (seconds).
    ttl: AtomicU64,
    /// Client configurations per expected peer service.
    clients: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

// === impl IdentitySlot ===

impl Default for IdentitySlot {
    fn default() -> Self {
        IdentitySlot {
            identity: OnceLock::new(),
            acceptor: OnceLock::new(),
            waiting: Mutex::new(
                "waiting for the registry's CA to sign the first certificate".into(),
            ),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl IdentitySlot {
    pub fn get(&self) -> Option<&Arc<Identity>> {
        self.identity.get()
    }

    /// The inbound TLS acceptor, once there is an identity.
    pub fn acceptor(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        self.acceptor.get()
    }

    /// Why there is no certificate yet (meaningless once there is one).
    pub fn why_missing(&self) -> String {
        self.waiting.lock().expect("waiting lock").clone()
    }

    /// The error for a request that needs the identity before there is one.
    pub fn missing(&self) -> ProxyError {
        ProxyError::new(
            ErrorKind::NoIdentity,
            format!(
                "this sidecar has no mTLS certificate yet: {}",
                self.why_missing()
            ),
        )
    }

    /// Resolves once there is an identity.
    pub async fn wait(&self) {
        let _ = self.ready.subscribe().wait_for(|ready| *ready).await;
    }

    /// Gets a first certificate from the registry, retrying until it succeeds (the
    /// sidecar cannot serve without it), and puts it in the slot.
    pub async fn obtain(
        &self,
        registry: &Client,
        service: &str,
        trust_domain: &str,
        join_token: &str,
    ) -> Arc<Identity> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let issued = Identity::issue_first(registry, service, trust_domain, join_token).await;
            let installed = issued.and_then(|identity| {
                let config = identity.server_config().map_err(TlsError::Answer)?;
                Ok((identity, config))
            });
            match installed {
                Ok((identity, config)) => {
                    let _ = self.acceptor.set(tokio_rustls::TlsAcceptor::from(config));
                    let _ = self.identity.set(identity.clone());
                    self.ready.send_replace(true);
                    tracing::info!(id = %mesh_registry_api::spiffe_id(trust_domain, service), "certificate obtained");
                    return identity;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    *self.waiting.lock().expect("waiting lock") =
                        format!("the registry's CA did not sign one ({e}); retrying");
                    tracing::warn!(error = %e, ?wait, "no certificate yet; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

// === impl Identity ===

impl Identity {
    async fn issue_first(
        registry: &Client,
        service: &str,
        trust_domain: &str,
        join_token: &str,
    ) -> Result<Arc<Identity>, TlsError> {
        let issued = issue(registry, service, trust_domain, join_token).await?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Arc::new(Identity {
            service: service.to_owned(),
            trust_domain: trust_domain.to_owned(),
            current: ArcSwap::from(issued.key),
            roots: Arc::new(issued.roots),
            provider,
            not_after: AtomicU64::new(issued.not_after),
            ttl: AtomicU64::new(issued.ttl),
            clients: Mutex::new(HashMap::new()),
        }))
    }

    /// Renews the certificate at two thirds of its life, for as long as the process
    /// runs. Open connections keep the certificate they were made with; new handshakes
    /// use the new one.
    pub async fn renew_forever(
        self: Arc<Self>,
        registry: Client,
        join_token: String,
        metrics: Arc<Metrics>,
    ) {
        metrics
            .cert_expiry
            .set(self.not_after.load(Ordering::Relaxed) as i64);
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            let not_after = self.not_after.load(Ordering::Relaxed) as f64;
            let ttl = self.ttl.load(Ordering::Relaxed) as f64;
            let renew_in = (not_after - ttl / 3.0 - unix_now_f64()).max(1.0);
            tokio::time::sleep(Duration::from_secs_f64(renew_in)).await;
            match issue(&registry, &self.service, &self.trust_domain, &join_token).await {
                Ok(issued) => {
                    backoff.reset();
                    self.current.store(issued.key);
                    self.not_after.store(issued.not_after, Ordering::Relaxed);
                    self.ttl.store(issued.ttl, Ordering::Relaxed);
                    metrics.cert_expiry.set(issued.not_after as i64);
                    metrics.cert_rotations.inc();
                    tracing::info!(not_after = issued.not_after, "certificate renewed");
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, ?wait, "certificate renewal failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The inbound configuration: TLS 1.3, ALPN h2 and http/1.1, client certificates
    /// required and checked against the mesh CA.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Current(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The outbound configuration for calling `service`: the server must prove it *is*
    /// that service (its certificate's SPIFFE ID), not merely a member of the mesh.
    pub fn client_config(self: &Arc<Self>, service: &str) -> Arc<ClientConfig> {
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(config) = clients.get(service) {
            return config.clone();
        }
        let verifier = Arc::new(PeerVerifier {
            expected: mesh_registry_api::spiffe_id(&self.trust_domain, service),
            roots: self.roots.clone(),
            provider: self.provider.clone(),
        });
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by ring")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Current(self.clone())));
        let config = Arc::new(config);
        clients.insert(service.to_owned(), config.clone());
        config
    }
}

/// A fresh key, a CSR for the service's SPIFFE ID, and the registry's signature.
struct Issued {
    key: Arc<CertifiedKey>,
    roots: RootCertStore,
    not_after: u64,
    ttl: u64,
}

async fn issue(
    registry: &Client,
    service: &str,
    trust_domain: &str,
    join_token: &str,
) -> Result<Issued, TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let mut params = CertificateParams::default();
    let id = mesh_registry_api::spiffe_id(trust_domain, service);
    let uri = id
        .as_str()
        .try_into()
        .map_err(|e: rcgen::Error| TlsError::Key(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let signed = registry.sign(service, &csr, join_token).await?;

    let leaf = CertificateDer::from_pem_slice(signed.certificate.as_bytes())
        .map_err(|e| TlsError::Answer(format!("certificate: {e}")))?;
    let ca = CertificateDer::from_pem_slice(signed.ca.as_bytes())
        .map_err(|e| TlsError::Answer(format!("ca: {e}")))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| TlsError::Answer(format!("ca: {e}")))?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let not_after = x509_parser::parse_x509_certificate(&leaf)
        .map(|(_, c)| c.validity().not_after.timestamp().max(0) as u64)
        .map_err(|e| TlsError::Answer(format!("certificate: {e}")))?;
    Ok(Issued {
        key: Arc::new(CertifiedKey::new(vec![leaf], signing)),
        roots,
        not_after,
        ttl: signed.ttl.as_secs().max(1),
    })
}

/// The service named by a peer's certificate, if it is a SPIFFE ID of our trust domain.
pub fn peer_service(cert: &CertificateDer<'_>, trust_domain: &str) -> Option<String> {
    uri_sans(cert)
        .iter()
        .find_map(|uri| mesh_registry_api::service_of(trust_domain, uri))
}

fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Presents the current certificate, as a server and as a client.
#[derive(Debug)]
struct Current(Arc<Identity>);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

impl rustls::client::ResolvesClientCert for Current {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks that the server's chain leads to the mesh CA and that its SPIFFE ID is the
/// service we meant to reach. The TLS server name (an IP address or host) is not used:
/// mesh certificates name services, not hosts.
#[derive(Debug)]
struct PeerVerifier {
    expected: String,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let names = uri_sans(end_entity);
        if names.contains(&self.expected) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the peer is {names:?}, not {}",
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
