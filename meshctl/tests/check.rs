//! `meshctl check` against real meshes: healthy, with a dead sidecar, without a registry,
//! and with mTLS. Sidecars are dialled directly (`--direct`) until the registry relays
//! their admin pages.

mod common;

use std::time::Duration;

use common::{Registry, Run, Sidecar, closed_port, run};
use mesh_proxy::tls::TlsMode;
use mesh_registry_api::Registration;

/// How long test certificates are valid: longer than any test.
const DAY: Duration = Duration::from_secs(86_400);

/// The lines of a check run that start with `symbol`.
fn lines(run: &Run, symbol: char) -> Vec<&str> {
    run.stdout
        .lines()
        .filter(|l| l.starts_with(symbol))
        .collect()
}

#[tokio::test]
async fn a_plain_mesh_passes_with_warnings_for_its_missing_ca_and_open_writes() {
    let registry = Registry::start().await;
    let url = registry.url();
    let web = Sidecar::start(&registry, "web").await;
    let front = Sidecar::start(&registry, "front").await;

    let check = run(&url, &["check", "--direct"]).await;
    assert_eq!(check.code, Some(0), "{}{}", check.stdout, check.stderr);
    let warnings = lines(&check, '‼');
    assert_eq!(
        warnings.len(),
        3,
        "the open registry's line, the CA's and the summary:\n{}",
        check.stdout
    );
    assert!(
        warnings[0].starts_with("‼ registry writes: ") && warnings[0].contains("is open"),
        "{}",
        check.stdout
    );
    assert!(
        warnings[1].starts_with("‼ CA: the registry has no CA"),
        "{}",
        check.stdout
    );
    assert!(check.stdout.contains(
        "‼ CA: the registry has no CA: traffic between sidecars is plaintext (no mTLS)\n    hint: "
    ));
    assert!(lines(&check, '✗').is_empty(), "{}", check.stdout);
    for expected in [
        "✔ registry ready: ".to_owned(),
        "✔ clock skew: ".to_owned(),
        "✔ sidecars: 2 registered, in 2 services".to_owned(),
        format!("✔ sidecar {} ready: ready", web.name()),
        format!("✔ sidecar {} ready: ready", front.name()),
        "✔ versions: ".to_owned(),
        "✔ registry store: memory (this registry process)".to_owned(),
    ] {
        assert!(
            check.stdout.lines().any(|l| l.starts_with(&expected)),
            "no line {expected:?}:\n{}",
            check.stdout
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        check.stdout.contains(&format!("sidecars run {version}")),
        "every sidecar says its release:\n{}",
        check.stdout
    );
    let summary = "‼ 9 checks: 7 ok, 2 warnings, 0 failed\n";
    assert!(check.stdout.ends_with(summary), "{}", check.stdout);
}

#[tokio::test]
async fn checks_as_json_carry_a_hint_where_not_ok() {
    let registry = Registry::start().await;
    let url = registry.url();
    let _web = Sidecar::start(&registry, "web").await;
    let _front = Sidecar::start(&registry, "front").await;
    let json = run(&url, &["check", "--direct", "-o", "json"]).await;
    assert_eq!(json.code, Some(0));
    let checks = json.json();
    let checks = checks.as_array().unwrap();
    assert_eq!(checks.len(), 9);
    for check in checks {
        let warned = check["name"] == "CA" || check["name"] == "registry writes";
        assert_eq!(
            check["status"],
            if warned { "warning" } else { "ok" },
            "{check}"
        );
        assert_eq!(check["hint"].is_string(), warned, "{check}");
        assert!(check["detail"].is_string(), "{check}");
    }
}

#[tokio::test]
async fn a_sidecar_whose_admin_does_not_answer_fails_the_check() {
    let registry = Registry::start().await;
    let url = registry.url();
    let _web = Sidecar::start(&registry, "web").await;
    let dead = closed_port().to_string();
    let mut ghost = Registration::new(dead.clone());
    ghost.metadata.insert("admin".into(), dead.clone());
    registry
        .client
        .register("ghost", "g-1", &ghost)
        .await
        .unwrap();

    let check = run(&url, &["check", "--direct"]).await;
    assert_eq!(check.code, Some(1), "{}", check.stdout);
    let failed = lines(&check, '✗');
    assert_eq!(
        failed.len(),
        2,
        "the sidecar's line and the summary:\n{}",
        check.stdout
    );
    assert!(
        failed[0].starts_with(&format!(
            "✗ sidecar ghost/g-1 ready: admin {dead} unreachable"
        )),
        "{}",
        check.stdout
    );
    let hint = check
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("✗ sidecar ghost/g-1"))
        .nth(1)
        .unwrap();
    assert!(
        hint.starts_with("    hint: is the sidecar running?"),
        "{hint}"
    );
    assert!(hint.contains("meshctl deregister ghost g-1"), "{hint}");

    let json = run(&url, &["check", "--direct", "-o", "json"]).await;
    assert_eq!(json.code, Some(1));
    let checks = json.json();
    let ghost = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sidecar ghost/g-1 ready")
        .unwrap();
    assert_eq!(ghost["status"], "failure");
    assert!(ghost["hint"].as_str().unwrap().contains("deregister"));
}

#[tokio::test]
async fn a_registry_that_is_down_fails_the_check_and_stops_it() {
    let registry = Registry::start().await;
    let url = registry.url();
    registry.stop().await.unwrap();

    let check = run(&url, &["check"]).await;
    assert_eq!(check.code, Some(1));
    let mut out = check.stdout.lines();
    let first = out.next().unwrap();
    assert!(
        first.starts_with("✗ registry ready: registry at "),
        "{first}"
    );
    let hint = out.next().unwrap();
    assert!(hint.starts_with("    hint: start the registry"), "{hint}");
    assert!(hint.contains(&url), "{hint}");
    assert!(
        check
            .stdout
            .ends_with("✗ 1 check: 0 ok, 0 warnings, 1 failed\n")
    );
}

#[tokio::test]
async fn a_mesh_with_mtls_has_its_ca_and_certificates_checked() {
    let registry = Registry::start_with_ca_and_tls(DAY).await;
    let url = registry.url();
    let web = Sidecar::start_with(&registry, "web", TlsMode::Strict).await;
    let _front = Sidecar::start_with(&registry, "front", TlsMode::Strict).await;

    let check = run(&url, &["check", "--direct"]).await;
    assert_eq!(check.code, Some(0), "{}", check.stdout);
    assert!(lines(&check, '‼').is_empty(), "{}", check.stdout);
    assert!(lines(&check, '✗').is_empty(), "{}", check.stdout);
    assert!(check.stdout.contains("✔ CA: "), "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains("✔ registry writes: bound to an identity: certificate"),
        "{}",
        check.stdout
    );
    let certificate = format!("✔ sidecar {} certificate: expires in 23h 59m", web.name());
    assert!(check.stdout.contains(&certificate), "{}", check.stdout);
    assert!(
        check
            .stdout
            .ends_with("✔ 11 checks: 11 ok, 0 warnings, 0 failed\n")
    );
}
