//! The TLS listener (`--tls-listen`): the same API over TLS, where sidecars write with
//! the certificates the mesh CA gave them.
//!
//! The listener presents a certificate from the registry's own CA naming the registry's
//! SPIFFE ID (`spiffe://<trust domain>/registry`) and `--tls-names`, renewed at two
//! thirds of its life. Clients may present a certificate from the same CA: one naming a
//! service (`spiffe://<trust domain>/service/<name>`) is that service's [`Peer`], which
//! may write that service's instances (see [`crate::auth`]). A client without one is
//! served too (reads, certificate signing with a join token, token writes), as on the
//! plain listener.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::auth::Peer;
use crate::ca::Ca;

/// How long the listener's certificate lives: renewed at two thirds of it, so a
/// registry that runs for months keeps a valid one.
const SERVING_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS listener's configuration and its current certificate.
pub struct TlsListener {
    ca: Arc<Ca>,
    names: Vec<String>,
    current: Arc<ArcSwap<CertifiedKey>>,
    not_after: ArcSwap<SystemTime>,
    acceptor: TlsAcceptor,
}

// === impl TlsListener ===

impl TlsListener {
    /// Issues the listener's first certificate and builds its configuration: TLS 1.3 and
    /// 1.2, ALPN h2 and http/1.1, client certificates optional and, when given, checked
    /// against the CA.
    pub fn new(ca: Arc<Ca>, names: Vec<String>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (key, not_after) = issue(&ca, &names, &provider)?;
        let current = Arc::new(ArcSwap::from(key));
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.bundle().as_bytes()) {
            let cert = cert.map_err(|e| format!("the CA certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("the CA certificate: {e}"))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("the client certificate verifier: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Serving(current.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsListener {
            ca,
            names,
            current,
            not_after: ArcSwap::from_pointee(not_after),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Completes a client's handshake (bounded by [`HANDSHAKE_TIMEOUT`]); with the
    /// service its certificate proved, if it presented one naming a service.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, Option<Peer>), String> {
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream));
        let stream = match handshake.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
            Err(_) => return Err(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")),
        };
        let (_, connection) = stream.get_ref();
        let peer = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| {
                mesh_registry_api::spiffe::service_of_certificate(leaf, &self.ca.trust_domain)
            })
            .map(|(id, service)| Peer { id, service });
        Ok((stream, peer))
    }

    /// Renews the listener's certificate at two thirds of its life until `stopped` turns
    /// true. A failed renewal is retried a minute later; the current certificate serves
    /// meanwhile.
    pub async fn renew(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        loop {
            let not_after = **self.not_after.load();
            let left = not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let wait = left.saturating_sub(SERVING_LIFETIME / 3);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            match issue(&self.ca, &self.names, &provider) {
                Ok((key, not_after)) => {
                    self.current.store(key);
                    self.not_after.store(Arc::new(not_after));
                    tracing::info!(not_after = %humantime::format_rfc3339_seconds(not_after), "TLS listener certificate renewed");
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot renew the TLS listener's certificate; retrying in a minute");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(60)) => {}
                        _ = stopped.wait_for(|stop| *stop) => return,
                    }
                }
            }
        }
    }
}

/// A fresh serving certificate as rustls presents it.
fn issue(
    ca: &Ca,
    names: &[String],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<CertifiedKey>, SystemTime), String> {
    let issued = ca
        .issue_serving(names, SERVING_LIFETIME)
        .map_err(|e| format!("cannot issue the TLS listener's certificate: {e}"))?;
    let chain = issued.chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key));
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the TLS listener's key: {e}"))?;
    Ok((
        Arc::new(CertifiedKey::new(chain, signing)),
        issued.not_after,
    ))
}

/// Presents the current serving certificate.
#[derive(Debug)]
struct Serving(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Serving {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}
