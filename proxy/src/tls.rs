//! Mutual TLS between sidecars: the modes, their flags, this sidecar's [`Identity`]
//! ([`identity`]), and the rustls configurations that present it and check peers'.
//!
//! An identity is a SPIFFE ID, `spiffe://<trust domain>/service/<name>`, carried as the
//! certificate's only (URI) subject alternative name.

pub mod identity;

use std::sync::Arc;

use mesh_registry_api::validate;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

pub use self::identity::{Identity, IdentitySlot};
use crate::flags::Invalid;

/// Registration metadata key holding a sidecar's mTLS mode; its presence marks the
/// instance as a mesh sidecar.
pub const TLS_METADATA: &str = "tls";

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

/// mTLS and the policy that rests on it.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "mTLS and policy")]
pub struct TlsConfig {
    /// mTLS between sidecars: off, permissive (inbound also takes plaintext) or strict.
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
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The outbound configuration for calling `service` over `alpn` (`h2` or
    /// `http/1.1`, the only protocol offered): the server must prove it *is* that
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
        let verifier = Arc::new(PeerVerifier {
            expected: mesh_registry_api::spiffe_id(&self.trust_domain, service),
            roots: self.roots.clone(),
            provider: self.provider.clone(),
        });
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
