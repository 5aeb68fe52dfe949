//! The sidecars' checks: each registered sidecar answers `/ready`, its certificate is not
//! about to expire, and every sidecar runs the registry's release.
//!
//! Thresholds:
//! - certificate: ‼ under 20 % of its life left (sidecars renew at a third left, so
//!   renewal is overdue), ✗ expired; the life is the registry's `cert_ttl`. With a
//!   registry that does not say it, only expiry is judged.
//! - versions: ‼ on any mismatch; mixed releases are meant to last a rollout, not more.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use mesh_registry_api::sidecar::SidecarReadiness;
use mesh_registry_api::{AdminAnswer, AdminPath, Status as Listed};

use super::Check;
use super::registry::{Ca, Facts};
use crate::reach::{Admins, SidecarError};
use crate::sidecars::{self, Sidecar, each};
use crate::{Ctl, human, prom};

/// The share of a certificate's life under which its renewal is overdue.
const CERT_LEFT_WARNING: f64 = 0.2;

/// What one sidecar answered.
struct Probe {
    sidecar: Sidecar,
    ready: Result<AdminAnswer, SidecarError>,
    /// Its certificate's expiry (Unix seconds; 0 without one), asked only of a mesh with
    /// a CA and of a sidecar that answered.
    cert_expiry: Option<Result<f64, SidecarError>>,
}

/// Pushes every sidecar's checks, then the versions check.
pub async fn check(ctl: &Ctl, facts: &Facts, checks: &mut Vec<Check>) {
    let list = match sidecars::list(&ctl.registry).await {
        Ok(list) => list,
        Err(e) => {
            let hint = "the registry answers /readyz but not its catalog: see its logs";
            checks.push(Check::failure("sidecars", crate::explain(&e), hint));
            return;
        }
    };
    checks.push(count(&list));
    let with_ca = matches!(facts.ca, Ca::Present(_));
    let probes = each(list, |sidecar| {
        let admins = ctl.admins.clone();
        async move { probe(&admins, sidecar, with_ca).await }
    })
    .await;
    let direct = ctl.admins.is_direct();
    let now = human::unix_seconds(SystemTime::now());
    let mut versions = Vec::new();
    for p in &probes {
        let (check, readiness) = ready(p, direct);
        checks.push(check);
        if let Some(readiness) = readiness {
            versions.push((p.sidecar.to_string(), readiness.version));
        }
        if let Some(expiry) = &p.cert_expiry {
            checks.push(certificate(p, expiry, now, facts.ca.cert_ttl()));
        }
    }
    checks.push(agree(facts.version.as_deref(), &versions));
}

async fn probe(admins: &Admins, sidecar: Sidecar, with_ca: bool) -> Probe {
    let ready = admins.get(&sidecar, AdminPath::Ready).await;
    let cert_expiry = if with_ca && ready.is_ok() {
        let metrics = admins.get_ok(&sidecar, AdminPath::Metrics).await;
        Some(metrics.map(|body| {
            let samples = prom::parse(&String::from_utf8_lossy(&body));
            prom::value(&samples, "mesh_tls_cert_expiry_timestamp_seconds").unwrap_or(0.0)
        }))
    } else {
        None
    };
    Probe {
        sidecar,
        ready,
        cert_expiry,
    }
}

fn count(list: &[Sidecar]) -> Check {
    if list.is_empty() {
        return Check::warning(
            "sidecars",
            "no registered instance names a sidecar admin address",
            "start sidecars with --service and --registry pointing at this registry; \
             instances registered without \"admin\" metadata are not checked",
        );
    }
    let services: std::collections::BTreeSet<&str> =
        list.iter().map(|s| s.service.as_str()).collect();
    Check::ok(
        "sidecars",
        format!("{} registered, in {} services", list.len(), services.len()),
    )
}

/// The `/ready` check of one sidecar, and its body when it answered with one.
fn ready(p: &Probe, direct: bool) -> (Check, Option<SidecarReadiness>) {
    let s = &p.sidecar;
    let name = format!("sidecar {s} ready");
    let answer = match &p.ready {
        Ok(answer) => answer,
        Err(e) => {
            let listed = match s.status {
                Listed::Passing => String::new(),
                other => format!(" (the registry lists it as {other})"),
            };
            let detail = format!("{}{listed}", crate::explain(e));
            return (
                Check::failure(name, detail, unreachable_hint(s, direct)),
                None,
            );
        }
    };
    let Ok(body) = serde_json::from_slice::<SidecarReadiness>(&answer.body) else {
        let detail = format!(
            "answered {} with something other than /ready's JSON",
            answer.status
        );
        let hint = format!("is {} the admin port of a mesh-proxy?", s.admin);
        return (Check::failure(name, detail, hint), None);
    };
    let check = if !answer.is_success() || !body.ready {
        let reason = body.reason.as_deref().unwrap_or("no reason given");
        Check::failure(
            name,
            format!("not ready: {reason}"),
            "a sidecar is ready once registered (and, with mTLS, once it holds a \
             certificate): its logs say what it waits for",
        )
    } else if body.passing == Some(false) {
        let status = body.status.map_or("not passing", |s| s.as_str());
        Check::warning(
            name,
            format!("ready, but registered as {status}: it gets no traffic"),
            "its app fails the sidecar's health check: look at the app, and at the \
             sidecar's --app and --health-path",
        )
    } else if body.registry_connected == Some(false) {
        Check::warning(
            name,
            "ready, but its last call to the registry failed: it routes with the endpoints \
             it knew last",
            "check that the sidecar reaches its --registry",
        )
    } else {
        Check::ok(name, "ready")
    };
    (check, Some(body))
}

fn unreachable_hint(s: &Sidecar, direct: bool) -> String {
    let gone = format!(
        "if the sidecar is gone, its registration expires with its lease, or remove it now: \
         meshctl deregister {} {}",
        s.service, s.id
    );
    if direct {
        format!(
            "is the sidecar running? meshctl dialled its admin address {} itself: run meshctl \
             where that is reachable, or use a registry that relays admin pages; {gone}",
            s.admin
        )
    } else {
        format!(
            "is the sidecar running? The registry could not reach its admin address {}: \
             check the sidecar's --admin and that the registry reaches it; {gone}",
            s.admin
        )
    }
}

/// The certificate check of one sidecar, at `now` (Unix seconds), for certificates that
/// live `life` when known.
fn certificate(
    p: &Probe,
    expiry: &Result<f64, SidecarError>,
    now: f64,
    life: Option<Duration>,
) -> Check {
    let name = format!("sidecar {} certificate", p.sidecar);
    match expiry {
        Err(e) => Check::warning(
            name,
            format!("could not read its /metrics: {}", crate::explain(e)),
            "the sidecar answered /ready but not /metrics: see its logs",
        ),
        Ok(expiry) if *expiry <= 0.0 => Check::warning(
            name,
            "none: the sidecar runs without mTLS (--tls off)",
            "sidecars with --tls strict refuse its calls; start it with --tls permissive \
             or strict and the mesh's join token",
        ),
        Ok(expiry) => expiring(name, *expiry - now, life),
    }
}

/// Judges a certificate with `left` seconds to live (negative: expired).
pub fn expiring(name: String, left: f64, life: Option<Duration>) -> Check {
    const RENEWAL: &str = "the sidecar renews at a third of its life left: its logs say why \
        it could not (\"certificate renewal failed\"); check that it reaches the registry and \
        that its join token is still accepted";
    if left <= 0.0 {
        let ago = human::duration(Duration::from_secs_f64(-left));
        let hint = format!("peers refuse its connections; {RENEWAL}");
        return Check::failure(name, format!("expired {ago} ago"), hint);
    }
    let expires = format!(
        "expires in {}",
        human::duration(Duration::from_secs_f64(left))
    );
    let Some(life) = life else {
        return Check::ok(name, expires);
    };
    let share = left / life.as_secs_f64();
    let detail = format!(
        "{expires}, {} of its {} life left",
        human::percent(share.min(1.0)),
        human::duration(life)
    );
    if share < CERT_LEFT_WARNING {
        return Check::warning(name, detail, RENEWAL);
    }
    Check::ok(name, detail)
}

/// Whether every sidecar that answered runs the registry's release (or, with a registry
/// that does not say, the same release as the others).
pub fn agree(registry: Option<&str>, sidecars: &[(String, Option<String>)]) -> Check {
    let name = "versions";
    let mut by_version: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (sidecar, version) in sidecars {
        let version = version.as_deref().unwrap_or("unknown (an older release)");
        by_version.entry(version).or_default().push(sidecar);
    }
    let agreed = match registry {
        Some(r) => by_version.keys().all(|v| *v == r),
        None => by_version.len() <= 1,
    };
    if agreed {
        let detail = match (registry, by_version.keys().next()) {
            (Some(r), _) => format!("the registry and {} sidecars run {r}", sidecars.len()),
            (None, Some(v)) => format!(
                "{} sidecars run {v} (the registry does not say its version)",
                sidecars.len()
            ),
            (None, None) => "no sidecar answered, and the registry does not say".into(),
        };
        return Check::ok(name, detail);
    }
    let mut parts: Vec<String> = registry
        .map(|r| format!("the registry runs {r}"))
        .into_iter()
        .collect();
    for (version, names) in &by_version {
        let shown: Vec<&str> = names.iter().take(3).copied().collect();
        let more = names.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        parts.push(format!("{version} on {}{more}", shown.join(", ")));
    }
    Check::warning(
        name,
        parts.join("; "),
        "finish the rollout: mixed releases are meant to last an upgrade, not more",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn certificates_warn_under_a_fifth_of_their_life_and_fail_once_expired() {
        let judge = |left: f64, life| expiring("c".into(), left, life).status;
        assert_eq!(judge(0.5 * 86_400.0, Some(DAY)), Status::Ok);
        assert_eq!(judge(0.19 * 86_400.0, Some(DAY)), Status::Warning);
        assert_eq!(judge(-1.0, Some(DAY)), Status::Failure);
        assert_eq!(judge(60.0, None), Status::Ok, "life unknown: only expiry");
        assert_eq!(judge(-60.0, None), Status::Failure);
        let detail = expiring("c".into(), 43_200.0, Some(DAY)).detail;
        assert_eq!(detail, "expires in 12h, 50.0% of its 1d life left");
    }

    #[test]
    fn versions_agree_with_the_registry_or_among_sidecars() {
        let at = |v: &str| (format!("web/{v}"), Some(v.to_owned()));
        assert_eq!(agree(Some("0.1.0"), &[at("0.1.0")]).status, Status::Ok);
        let mixed = agree(Some("0.2.0"), &[at("0.1.0"), at("0.2.0")]);
        assert_eq!(mixed.status, Status::Warning);
        assert!(
            mixed.detail.contains("0.1.0 on web/0.1.0"),
            "{}",
            mixed.detail
        );
        assert_eq!(agree(None, &[at("0.1.0"), at("0.1.0")]).status, Status::Ok);
        let old = agree(Some("0.1.0"), &[("web/a".into(), None)]);
        assert_eq!(old.status, Status::Warning, "{old:?}");
    }
}
