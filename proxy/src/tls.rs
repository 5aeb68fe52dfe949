//! Mutual TLS between sidecars: the modes, their flags, this sidecar's [`Identity`]
//! ([`identity`]), and the rustls configurations that present it and check peers'.
//!
//! An identity is a SPIFFE ID, `spiffe://<trust domain>/service/<name>`, carried as the
//! certificate's only (URI) subject alternative name.

pub mod identity;

use std::sync::Arc;

use mesh_registry_api::spiffe::SpiffeVerifier;
use mesh_registry_api::validate;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

pub use self::identity::{Identity, IdentitySlot};
use crate::flags::Invalid;

/// The ALPN protocol a sidecar offers for a connection it carries as bytes (opaque TCP).
pub const OPAQUE_ALPN: &[u8] = b"mesh-tcp";
/// Registration metadata key holding a sidecar's mTLS mode; its presence marks the
/// instance as a mesh sidecar.
pub const TLS_METADATA: &str = "tls";

/// Whether sidecar-to-sidecar traffic is encrypted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Plaintext everywhere.
    #[default]
    Off,
    /// Inbound accepts mTLS and plaintext; outbound uses mTLS to peers registered with it
    /// on, plaintext to the others (for migrating a mesh).
    Permissive,
    /// mTLS only, both ways: inbound refuses plaintext; outbound never dials a peer
    /// without mTLS, unless `--plaintext-to` names its destination.
    Strict,
}

/// mTLS and the policy that rests on it.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "mTLS and policy")]
pub struct TlsConfig {
    /// mTLS between sidecars: off, permissive (mTLS where the peer has it, plaintext
    /// otherwise) or strict (mTLS only, both ways).
    #[arg(
        long = "tls",
        value_name = "TLS",
        env = "MESH_TLS",
        value_enum,
        default_value = "off"
    )]
    pub mode: TlsMode,

    /// Token that lets this sidecar get its certificate from the registry's CA (the
    /// registry's `--join-token`).
    #[arg(long, env = "MESH_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// Trust domain of the mesh's SPIFFE IDs (as the registry's `--trust-domain`).
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,

    /// Services allowed to call this one, by mTLS identity (comma list). Empty: every
    /// meshed caller.
    #[arg(long, env = "MESH_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,

    /// A destination this sidecar may call in plaintext even under `--tls strict` (an
    /// un-meshed service). Repeatable; the env var takes a comma list.
    #[arg(
        long = "plaintext-to",
        env = "MESH_PLAINTEXT_TO",
        value_delimiter = ','
    )]
    pub plaintext_to: Vec<String>,
}

// === impl TlsMode ===

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Permissive => "permissive",
            TlsMode::Strict => "strict",
        }
    }
}

// === impl TlsConfig ===

impl TlsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.mode != TlsMode::Off
            && self
                .join_token
                .as_deref()
                .is_none_or(|t| t.trim().is_empty())
        {
            return Err(Invalid::new(
                "--join-token",
                "needed with --tls to get a certificate from the registry",
            ));
        }
        for caller in &self.allow {
            validate::service_name(caller).map_err(|e| Invalid::new("--allow", e.to_string()))?;
        }
        if !self.allow.is_empty() && self.mode == TlsMode::Off {
            return Err(Invalid::new(
                "--allow",
                "needs --tls permissive or strict: callers are known by their certificates",
            ));
        }
        if self.plaintext_to.iter().any(|d| d.trim().is_empty()) {
            return Err(Invalid::new("--plaintext-to", "needs a destination name"));
        }
        Ok(())
    }
}

// === impl Identity ===

impl Identity {
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
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), OPAQUE_ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// The outbound configuration for calling `service` over `alpn` (`h2`, `http/1.1`
    /// or [`OPAQUE_ALPN`], the only protocol offered): the server must prove it *is* that
    /// service (its certificate's SPIFFE ID), not merely a member of the mesh. Made once
    /// per service and protocol.
    pub fn client_config(
        self: &Arc<Self>,
        service: &str,
        alpn: &'static [u8],
    ) -> Arc<ClientConfig> {
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(config) = clients.get(&(service.to_owned(), alpn)) {
            return config.clone();
        }
        let verifier = Arc::new(SpiffeVerifier::new(
            mesh_registry_api::spiffe_id(&self.trust_domain, service),
            self.roots.clone(),
            self.provider.clone(),
        ));
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by ring")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Current(self.clone())));
        config.alpn_protocols = vec![alpn.to_vec()];
        let config = Arc::new(config);
        clients.insert((service.to_owned(), alpn), config.clone());
        config
    }
}

/// TLS to the registry's TLS listener: it must present a certificate from the CA in
/// `ca_file` naming the registry; this sidecar presents `identity`'s certificate once it
/// has one (before that, none: signing the first certificate needs only the join token).
pub fn registry_client_config(
    ca_file: &std::path::Path,
    trust_domain: &str,
    identity: Option<&Arc<IdentitySlot>>,
) -> Result<ClientConfig, String> {
    let pem =
        std::fs::read(ca_file).map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: not PEM certificates: {e}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", ca_file.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = SpiffeVerifier::new(
        mesh_registry_api::spiffe::registry_id(trust_domain),
        Arc::new(roots),
        provider.clone(),
    );
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        Some(slot) => config.with_client_cert_resolver(Arc::new(SlotIdentity(slot.clone()))),
        None => config.with_no_client_auth(),
    };
    // A resumed session keeps the identity of the one it resumes: connections opened
    // after the first certificate must make a full handshake, presenting it.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Presents this sidecar's current certificate once the slot holds one.
struct SlotIdentity(Arc<IdentitySlot>);

impl std::fmt::Debug for SlotIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SlotIdentity").finish_non_exhaustive()
    }
}

impl rustls::client::ResolvesClientCert for SlotIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.get().map(|identity| identity.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The service named by a peer's certificate, if it is a SPIFFE ID of our trust domain.
pub fn peer_service(cert: &CertificateDer<'_>, trust_domain: &str) -> Option<String> {
    mesh_registry_api::spiffe::service_of_certificate(cert, trust_domain).map(|(_, name)| name)
}

/// Presents the current certificate, as a server and as a client.
#[derive(Debug)]
struct Current(Arc<Identity>);

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
