//! The mesh's certificate authority: signs sidecars' CSRs into short-lived leaves whose
//! only name is a SPIFFE ID, `spiffe://<trust domain>/service/<name>`.
//!
//! Trust model, plainly: whoever holds the shared join token (`--join-token`) can obtain
//! a certificate for any service name; it proves membership of the mesh, not which
//! service a caller is, the same trust a Consul or Linkerd install puts in its bootstrap
//! secret. A scoped token (`--join-tokens`, see [`crate::join`]) may only claim the
//! services listed with it, so one service's secret cannot mint another's identity; it
//! still proves possession of the secret, not which workload holds it. Keep tokens out of
//! apps' reach (they are the sidecar's, not the app's), rotate them by restarting the
//! registry, and keep leaves short so a leaked one expires soon. Which services a token
//! may claim is checked by the API before it calls [`Ca::sign`].

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the CSR is not a valid PEM certificate request: {0}")]
    BadCsr(String),
    #[error(
        "the CSR must name exactly {expected:?} as its subject alternative name, found {found:?}"
    )]
    WrongName {
        expected: String,
        found: Vec<String>,
    },
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    pub trust_domain: String,
    pub leaf_ttl: Duration,
}

/// A CA certificate and key, as PEM.
pub struct GeneratedCa {
    pub cert_pem: String,
    pub key_pem: String,
}

// === impl Ca ===

impl Ca {
    /// A new self-signed CA (ECDSA P-256) for `trust_domain`, valid ten years.
    pub fn generate(trust_domain: &str) -> Result<GeneratedCa, rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mesh CA for {trust_domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let cert = params.self_signed(&key)?;
        Ok(GeneratedCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Loads a CA from PEM files (an operator's own intermediate works too).
    pub fn load(
        cert: &Path,
        key: &Path,
        trust_domain: &str,
        leaf_ttl: Duration,
    ) -> Result<Ca, String> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        Self::from_pem(&cert_pem, &key_pem, trust_domain, leaf_ttl)
            .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))
    }

    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        trust_domain: &str,
        leaf_ttl: Duration,
    ) -> Result<Ca, String> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| format!("not a usable private key: {e}"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_owned(),
            trust_domain: trust_domain.to_owned(),
            leaf_ttl,
        })
    }

    /// The CA certificate (the trust bundle sidecars verify peers with).
    pub fn bundle(&self) -> &str {
        &self.cert_pem
    }

    /// Signs `csr_pem` for `service`. The CSR's signature is checked (the caller holds
    /// the key) and its only name must be the service's SPIFFE ID; everything else in it
    /// is ignored, and the leaf gets our own validity, usages and constraints.
    pub fn sign(&self, service: &str, csr_pem: &str) -> Result<(String, SystemTime), SignError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let expected = mesh_registry_api::spiffe_id(&self.trust_domain, service);
        let found: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if found != [expected.clone()] {
            return Err(SignError::WrongName { expected, found });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, service);
        params.subject_alt_names = csr.params.subject_alt_names.clone();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        let not_after = now + self.leaf_ttl;
        // A minute of slack for clocks that disagree a little.
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| SignError::BadCsr(format!("cannot sign it: {e}")))?;
        Ok((leaf.pem(), not_after))
    }
}

/// The registry's own serving certificate, as DER, with its key.
pub struct ServingCert {
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8.
    pub key: Vec<u8>,
    pub not_after: SystemTime,
}

impl Ca {
    /// A certificate for the registry's TLS listener: the registry's SPIFFE ID
    /// (`spiffe://<trust domain>/registry`, which [`Ca::sign`] never issues to a sidecar)
    /// and `names` (DNS names or IP addresses, for clients that check those), valid for
    /// `lifetime`, with a fresh key.
    pub fn issue_serving(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<ServingCert, rcgen::Error> {
        let id = mesh_registry_api::spiffe::registry_id(&self.trust_domain);
        self.issue("mesh-registry", Some(id.as_str()), names, lifetime)
    }

    /// A serving certificate for another HTTPS server of the mesh (the injection
    /// webhook): `names` only, no SPIFFE ID, so it can stand for neither the registry
    /// nor a service.
    pub fn issue_server(
        &self,
        common_name: &str,
        names: &[String],
        lifetime: Duration,
    ) -> Result<ServingCert, rcgen::Error> {
        self.issue(common_name, None, names, lifetime)
    }

    fn issue(
        &self,
        common_name: &str,
        id: Option<&str>,
        names: &[String],
        lifetime: Duration,
    ) -> Result<ServingCert, rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = Vec::new();
        if let Some(id) = id {
            params.subject_alt_names.push(SanType::URI(id.try_into()?));
        }
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        let not_after = now + lifetime;
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = not_after.into();
        let leaf = params.signed_by(&key, &self.issuer)?;
        Ok(ServingCert {
            chain: vec![leaf.der().to_vec()],
            key: key.serialize_der(),
            not_after,
        })
    }
}

/// `mesh-registry gen-cert`: a serving certificate from the CA in `ca_dir` (`ca.pem`,
/// `ca-key.pem`) for `names`, written as `out/tls.crt` and `out/tls.key` (mode 0600),
/// the names a Kubernetes TLS Secret uses. Returns what it did, for the user.
pub fn write_server_cert(
    ca_dir: &Path,
    names: &[String],
    days: u64,
    out: &Path,
) -> Result<String, String> {
    if names.is_empty() {
        return Err("--name: give at least one DNS name or IP address".into());
    }
    let lifetime = Duration::from_secs(days * 24 * 3600);
    let ca = Ca::load(
        &ca_dir.join("ca.pem"),
        &ca_dir.join("ca-key.pem"),
        "mesh.local",
        lifetime,
    )?;
    let issued = ca
        .issue_server(&names[0], names, lifetime)
        .map_err(|e| format!("--name: {e}"))?;
    let pem = |label: &str, der: &[u8]| {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = text
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    let mut chain: String = issued.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    chain.push_str(ca.bundle());
    let (cert, key) = (out.join("tls.crt"), out.join("tls.key"));
    write_pair(
        out,
        (&cert, &chain),
        (&key, &pem("PRIVATE KEY", &issued.key)),
    )?;
    Ok(format!(
        "wrote {} and {} for {}, valid {days} days",
        cert.display(),
        key.display(),
        names.join(", ")
    ))
}

/// `mesh-registry gen-ca`: writes `ca.pem` and `ca-key.pem` (mode 0600) into `out`,
/// unless they exist and `force` is off. Returns what it did, for the user.
pub fn write_new(out: &Path, trust_domain: &str, force: bool) -> Result<String, String> {
    let cert = out.join("ca.pem");
    let key = out.join("ca-key.pem");
    if !force && cert.exists() && key.exists() {
        return Ok(format!(
            "{} and {} exist; keeping them (--force replaces them)",
            cert.display(),
            key.display()
        ));
    }
    let generated = Ca::generate(trust_domain).map_err(|e| e.to_string())?;
    write_pair(
        out,
        (&cert, &generated.cert_pem),
        (&key, &generated.key_pem),
    )?;
    Ok(format!(
        "wrote {} and {} for trust domain {trust_domain}; start the registry with \
         --ca-cert {} --ca-key {} --join-token <secret>",
        cert.display(),
        key.display(),
        cert.display(),
        key.display()
    ))
}

/// Writes a certificate (readable by all) and its private key (mode 0600) into `dir`.
fn write_pair(dir: &Path, cert: (&Path, &str), key: (&Path, &str)) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(cert.0, cert.1)
        .map_err(|e| format!("cannot write {}: {e}", cert.0.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(key.0)
        .and_then(|mut f| f.write_all(key.1.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", key.0.display()))
}

/// `gen-ca --bundle-out`: copies the CA certificate in `out` (never its key) to
/// `bundle/ca.pem`, readable by all: what sidecars check the registry with.
pub fn copy_bundle(out: &Path, bundle: &Path) -> Result<String, String> {
    let from = out.join("ca.pem");
    let to = bundle.join("ca.pem");
    std::fs::create_dir_all(bundle)
        .map_err(|e| format!("cannot create {}: {e}", bundle.display()))?;
    let pem = std::fs::read(&from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    std::fs::write(&to, pem).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    Ok(format!(
        "copied the CA certificate to {} (sidecars' --registry-ca)",
        to.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(uri: &str) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn ca() -> Ca {
        let g = Ca::generate("mesh.local").unwrap();
        Ca::from_pem(
            &g.cert_pem,
            &g.key_pem,
            "mesh.local",
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    #[test]
    fn a_server_certificate_names_its_server_and_no_mesh_identity() {
        let dir = tempfile::tempdir().unwrap();
        let generated = Ca::generate("mesh.local").unwrap();
        std::fs::write(dir.path().join("ca.pem"), &generated.cert_pem).unwrap();
        std::fs::write(dir.path().join("ca-key.pem"), &generated.key_pem).unwrap();
        let names = ["mesh-injector.mesh.svc".to_owned(), "10.0.0.7".to_owned()];
        let out = dir.path().join("out");
        write_server_cert(dir.path(), &names, 30, &out).unwrap();
        let chain = std::fs::read_to_string(out.join("tls.crt")).unwrap();
        assert_eq!(
            chain.matches("BEGIN CERTIFICATE").count(),
            2,
            "leaf, then the CA"
        );
        assert!(chain.ends_with(&generated.cert_pem));
        use rustls_pki_types::pem::PemObject;
        let leaf = rustls_pki_types::CertificateDer::from_pem_slice(chain.as_bytes()).unwrap();
        let der: &[u8] = leaf.as_ref();
        assert!(
            der.windows(b"mesh-injector.mesh.svc".len())
                .any(|w| w == b"mesh-injector.mesh.svc")
        );
        assert!(
            !der.windows(9).any(|w| w == b"spiffe://"),
            "a webhook's key must not stand for the registry or a service"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_server_cert(dir.path(), &[], 30, &out).is_err());
        assert!(
            write_server_cert(&out, &names, 30, &out).is_err(),
            "no CA there"
        );
    }

    #[test]
    fn signs_a_csr_naming_the_service() {
        let ca = ca();
        let (pem, not_after) = ca
            .sign("web", &csr_for("spiffe://mesh.local/service/web"))
            .unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(not_after > SystemTime::now() + Duration::from_secs(3500));
    }

    #[test]
    fn the_bundle_copy_holds_the_certificate_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (out, bundle) = (dir.path().join("ca"), dir.path().join("public"));
        write_new(&out, "mesh.local", false).unwrap();
        copy_bundle(&out, &bundle).unwrap();
        let names: Vec<_> = std::fs::read_dir(&bundle)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ca.pem"]);
        assert_eq!(
            std::fs::read(bundle.join("ca.pem")).unwrap(),
            std::fs::read(out.join("ca.pem")).unwrap()
        );
    }

    #[test]
    fn refuses_bad_csrs_and_wrong_names() {
        let ca = ca();
        assert!(matches!(
            ca.sign("web", "nonsense"),
            Err(SignError::BadCsr(_))
        ));
        let other = ca.sign("web", &csr_for("spiffe://mesh.local/service/db"));
        assert!(
            matches!(other, Err(SignError::WrongName { .. })),
            "{other:?}"
        );
        let foreign = ca.sign("web", &csr_for("spiffe://evil.org/service/web"));
        assert!(matches!(foreign, Err(SignError::WrongName { .. })));
    }
}
