//! This sidecar's identity: a short-lived certificate from the registry's CA for
//! `spiffe://<trust domain>/service/<name>`, obtained in the background at start-up and
//! renewed at two thirds of its life. The private key is generated here and never leaves
//! the process: the registry only sees a CSR.
//!
//! Until the first certificate arrives the admin listener says why on `/ready`, the data
//! listeners refuse (outbound: 503 `no-identity`; inbound: connections closed), and
//! nothing is registered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use mesh_registry_api::{Backoff, Client};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinHandle;

use super::{TlsConfig, TlsMode};
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::Metrics;

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
    pub(crate) current: ArcSwap<CertifiedKey>,
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) provider: Arc<CryptoProvider>,
    /// Unix time the current certificate expires.
    not_after: AtomicU64,
    /// Lifetime the CA gives certificates (seconds).
    ttl: AtomicU64,
    /// Client configurations per expected peer service and ALPN protocol: each checks
    /// that the peer is that service, and offers one protocol only.
    pub(crate) clients: Mutex<ClientConfigs>,
}

/// Client configurations by peer service and ALPN protocol.
type ClientConfigs = HashMap<(String, &'static [u8]), Arc<ClientConfig>>;

/// With mTLS on (`config`) for a local `service`: an empty slot for this sidecar's
/// identity, which [`start`] fills.
pub fn slot(service: Option<&str>, config: &TlsConfig) -> Option<Arc<IdentitySlot>> {
    (service.is_some() && config.mode != TlsMode::Off).then(|| Arc::new(IdentitySlot::default()))
}

/// A task that fills `slot` (from [`slot`]) from the registry's CA and renews it until
/// it is aborted (when the sidecar stops).
pub fn start(
    slot: &Arc<IdentitySlot>,
    service: &str,
    config: &TlsConfig,
    registry: &Client,
    metrics: &Arc<Metrics>,
) -> JoinHandle<()> {
    let service = service.to_owned();
    let token = config.join_token.clone().unwrap_or_default();
    let trust_domain = config.trust_domain.clone();
    let (filled, registry, metrics) = (slot.clone(), registry.clone(), metrics.clone());
    tokio::spawn(async move {
        let identity = filled
            .obtain(&registry, &service, &trust_domain, &token)
            .await;
        identity.renew(registry, token, metrics).await;
    })
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
                    // Connections to the registry's TLS listener opened so far prove no
                    // certificate; from now on they prove this one, which is what lets
                    // the registration that waits for `ready` write our instance.
                    registry.reconnect();
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

    /// Renews the certificate at two thirds of its life, until the task running it is
    /// aborted. Open connections keep the certificate they were made with; new
    /// handshakes use the new one.
    pub async fn renew(
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
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("service", &self.service)
            .finish_non_exhaustive()
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

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
