//! Mesh identities in certificates: the SPIFFE IDs the mesh CA puts in a certificate's
//! URI subject alternative names, and a verifier that accepts a server only when its
//! certificate leads to the mesh CA *and* names the identity the client meant to reach.
//!
//! Sidecars are `spiffe://<trust domain>/service/<name>` ([`crate::spiffe_id`]); the
//! registry's TLS listener is `spiffe://<trust domain>/registry` ([`registry_id`]), a
//! name the CA never signs for a sidecar, so no sidecar can pass for the registry. Host
//! names and addresses are not checked: mesh certificates name identities, not hosts.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// The SPIFFE ID of the registry's TLS listener in `trust_domain`.
pub fn registry_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/registry")
}

/// The URI subject alternative names of a DER certificate (none if it does not parse).
pub fn uri_sans(cert: &[u8]) -> Vec<String> {
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

/// The service a certificate names, if one of its SPIFFE IDs is a service of
/// `trust_domain`: with its ID, `(spiffe://…/service/name, name)`.
pub fn service_of_certificate(cert: &[u8], trust_domain: &str) -> Option<(String, String)> {
    uri_sans(cert).into_iter().find_map(|uri| {
        let service = crate::service_of(trust_domain, &uri)?;
        Some((uri, service))
    })
}

/// Checks that a server's chain leads to the mesh CA and that its certificate names
/// `expected` (a SPIFFE ID). The TLS server name is not used.
#[derive(Debug)]
pub struct SpiffeVerifier {
    expected: String,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

// === impl SpiffeVerifier ===

impl SpiffeVerifier {
    pub fn new(expected: String, roots: Arc<RootCertStore>, provider: Arc<CryptoProvider>) -> Self {
        SpiffeVerifier {
            expected,
            roots,
            provider,
        }
    }
}

impl ServerCertVerifier for SpiffeVerifier {
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
