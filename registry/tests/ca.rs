//! The registry as the mesh's CA: who gets a certificate, for which name, and what it says.

mod common;

use std::time::Duration;

use common::{JSON, Registry, RegistryExt};
use http::{Method, StatusCode};
use mesh_registry::Config;
use mesh_registry::ca::Ca;
use rcgen::{CertificateParams, KeyPair, SanType};

fn csr(uri: &str) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

async fn with_ca(dir: &tempfile::TempDir) -> Registry {
    let generated = Ca::generate("mesh.local").unwrap();
    std::fs::write(dir.path().join("ca.pem"), &generated.cert_pem).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), &generated.key_pem).unwrap();
    Registry::start_with(Config {
        ca_cert: Some(dir.path().join("ca.pem")),
        ca_key: Some(dir.path().join("ca-key.pem")),
        join_token: Some("join-me".into()),
        cert_ttl: Duration::from_secs(600),
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn a_sidecar_with_the_join_token_gets_a_spiffe_leaf_for_its_service() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_ca(&dir).await;
    let signed = r
        .client
        .sign("web", &csr("spiffe://mesh.local/service/web"), "join-me")
        .await
        .unwrap();
    assert_eq!(signed.ttl, Duration::from_secs(600));
    assert_eq!(
        signed.ca,
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap()
    );

    let (_, pem) = x509_parser::pem::parse_x509_pem(signed.certificate.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| format!("{n}"))
        .collect();
    assert_eq!(sans, ["URI(spiffe://mesh.local/service/web)"]);
    assert!(!cert.is_ca());
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!((600..=700).contains(&life), "{life}");

    let bundle = r
        .raw(Method::GET, "/v1/ca/bundle", &[], bytes::Bytes::new())
        .await;
    assert_eq!(bundle.status, StatusCode::OK);
    assert!(bundle.text.contains("BEGIN CERTIFICATE"));
}

#[tokio::test]
async fn bad_csrs_wrong_tokens_and_name_mismatches_get_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_ca(&dir).await;
    let good = csr("spiffe://mesh.local/service/web");
    let body =
        |service: &str, csr: &str| serde_json::json!({"service": service, "csr": csr}).to_string();
    let auth = ("authorization", "Bearer join-me");
    let cases = [
        (
            vec![JSON],
            body("web", &good),
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            vec![JSON, ("authorization", "Bearer guess")],
            body("web", &good),
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            vec![JSON, auth],
            body(
                "web",
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ),
            StatusCode::BAD_REQUEST,
            Some("csr"),
        ),
        (
            vec![JSON, auth],
            body("db", &good),
            StatusCode::BAD_REQUEST,
            Some("csr"),
        ),
        (
            vec![JSON, auth],
            body("web", &csr("spiffe://other.domain/service/web")),
            StatusCode::BAD_REQUEST,
            Some("csr"),
        ),
        (
            vec![JSON, auth],
            body("Web!", &good),
            StatusCode::BAD_REQUEST,
            Some("service"),
        ),
        (
            vec![JSON, auth],
            r#"{"service":"web"}"#.to_owned(),
            StatusCode::BAD_REQUEST,
            Some("csr"),
        ),
    ];
    for (headers, body, status, field) in cases {
        let answer = r
            .raw(Method::POST, "/v1/ca/sign", &headers, body.clone())
            .await;
        assert_eq!(answer.status, status, "{body}: {}", answer.text);
        assert_eq!(answer.error_field(), field, "{}", answer.text);
        assert!(answer.json.get("certificate").is_none());
    }
    let mismatch = r
        .raw(
            Method::POST,
            "/v1/ca/sign",
            &[JSON, auth],
            body("db", &good),
        )
        .await;
    assert!(
        mismatch.text.contains("spiffe://mesh.local/service/db"),
        "{}",
        mismatch.text
    );
}

#[tokio::test]
async fn without_a_ca_signing_is_404_not_a_silent_failure() {
    let r = Registry::start().await;
    let answer = r
        .raw(Method::GET, "/v1/ca/bundle", &[], bytes::Bytes::new())
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.text.contains("--ca-cert"));
    let err = r
        .client
        .sign("web", &csr("spiffe://mesh.local/service/web"), "x")
        .await
        .unwrap_err();
    assert!(err.is_not_found());
}

#[test]
fn gen_ca_writes_a_usable_ca_and_keeps_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let said = mesh_registry::ca::write_new(dir.path(), "mesh.local", false).unwrap();
    assert!(said.contains("--ca-cert"));
    let cert = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private");
    let kept = mesh_registry::ca::write_new(dir.path(), "mesh.local", false).unwrap();
    assert!(kept.contains("keeping"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        cert
    );
    assert!(
        Ca::load(
            &dir.path().join("ca.pem"),
            &dir.path().join("ca-key.pem"),
            "mesh.local",
            Duration::from_secs(60)
        )
        .is_ok()
    );
}

#[tokio::test]
async fn a_ca_dir_is_filled_on_first_start_and_reused_after() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        ca_dir: Some(dir.path().join("ca")),
        join_token: Some("join-me".into()),
        ..Config::default()
    };
    let r = Registry::start_with(config.clone()).await;
    let first = r
        .client
        .sign("web", &csr("spiffe://mesh.local/service/web"), "join-me")
        .await
        .unwrap();
    r.stop().await.unwrap();
    let r = Registry::start_with(config).await;
    let second = r
        .client
        .sign("web", &csr("spiffe://mesh.local/service/web"), "join-me")
        .await
        .unwrap();
    assert_eq!(first.ca, second.ca, "the same CA after a restart");
}

/// A registry whose CA accepts the tokens of `file` (written to `dir/join-tokens`) and,
/// if given, the shared `join_token`.
async fn with_scoped_tokens(
    dir: &tempfile::TempDir,
    file: &str,
    join_token: Option<&str>,
) -> Registry {
    let tokens = dir.path().join("join-tokens");
    std::fs::write(&tokens, file).unwrap();
    Registry::start_with(Config {
        ca_dir: Some(dir.path().join("ca")),
        join_tokens: Some(tokens),
        join_token: join_token.map(str::to_owned),
        ..Config::default()
    })
    .await
}

const TOKENS: &str = "\
# services          token
recommendations     s3cr3t-1

marketplace,web     s3cr3t-2
";

#[tokio::test]
async fn a_scoped_join_token_gets_certificates_for_its_services_only() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_scoped_tokens(&dir, TOKENS, Some("shared-token")).await;
    let sign = |service: &'static str, token: &'static str| {
        let client = r.client.clone();
        async move {
            let csr = csr(&format!("spiffe://mesh.local/service/{service}"));
            client.sign(service, &csr, token).await
        }
    };
    for (service, token) in [
        ("recommendations", "s3cr3t-1"),
        ("marketplace", "s3cr3t-2"),
        ("web", "s3cr3t-2"),
        // The shared token stays good for any service.
        ("marketplace", "shared-token"),
        ("anything", "shared-token"),
    ] {
        let signed = sign(service, token).await;
        assert!(signed.is_ok(), "{service} with {token}: {signed:?}");
    }

    // A known token asking for a service it may not claim: 403 forbidden, naming it.
    for (service, token) in [("marketplace", "s3cr3t-1"), ("recommendations", "s3cr3t-2")] {
        let body = serde_json::json!({
            "service": service,
            "csr": csr(&format!("spiffe://mesh.local/service/{service}")),
        })
        .to_string();
        let auth = format!("Bearer {token}");
        let answer = r
            .raw(
                Method::POST,
                "/v1/ca/sign",
                &[JSON, ("authorization", &auth)],
                body,
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text);
        assert_eq!(answer.error_code(), "forbidden");
        assert_eq!(answer.error_field(), Some("service"));
        let message = answer.json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{service:?}")) && message.contains("may not claim"),
            "{message}"
        );
        let err = sign(service, token).await.unwrap_err();
        assert!(
            matches!(
                &err,
                mesh_registry_api::ClientError::Api { status: 403, .. }
            ),
            "{err}"
        );
    }

    // An unknown token is unauthenticated, whatever service it asks for.
    for token in ["s3cr3t-3", "s3cr3t-", "recommendations"] {
        let err = sign("recommendations", token).await.unwrap_err();
        assert!(
            matches!(&err, mesh_registry_api::ClientError::Api { status: 401, detail } if detail.code == "unauthorized"),
            "{token}: {err}"
        );
    }
}

#[tokio::test]
async fn scoped_tokens_alone_are_enough_for_a_ca_and_a_bad_file_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_scoped_tokens(&dir, "* any-service\n", None).await;
    r.client
        .sign(
            "web",
            &csr("spiffe://mesh.local/service/web"),
            "any-service",
        )
        .await
        .unwrap();
    assert!(
        r.client
            .sign("web", &csr("spiffe://mesh.local/service/web"), "")
            .await
            .is_err()
    );
    r.stop().await.unwrap();

    for (file, wanted) in [
        ("web t1\nWeb t2\n", "line 2"),
        ("# ok\n\nweb\n", "line 3"),
        ("web t1 extra\n", "line 1"),
        ("web t1\ndb t1\n", "line 2"),
        ("web, t1\n", "line 1"),
        ("# nothing but comments\n", "no token"),
    ] {
        let tokens = dir.path().join("bad-tokens");
        std::fs::write(&tokens, file).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = Config {
            ca_dir: Some(dir.path().join("ca")),
            join_tokens: Some(tokens.clone()),
            ..Config::default()
        };
        let err = mesh_registry::run(listener, config, std::future::pending())
            .await
            .expect_err(file)
            .to_string();
        assert!(err.contains(wanted), "{file:?}: {err}");
        assert!(err.contains("--join-tokens"), "{file:?}: {err}");
    }
}
