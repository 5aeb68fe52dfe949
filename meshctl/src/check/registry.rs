//! The registry's checks: reachable and ready, its clock against this machine's, its CA.
//!
//! Thresholds:
//! - clock skew: ‼ when it is surely over 5 s (heartbeat ages and certificate expiry read
//!   here are off by that much), ✗ over 60 s (the registry back-dates certificates by
//!   60 s, so a sidecar host this far behind it refuses fresh certificates as not yet
//!   valid). The registry's `Date` header has whole seconds: the skew is judged on what
//!   is certain given that and the request's round trip, never on the rounding.
//! - CA: none is ‼ at most, since a mesh without mTLS is a working mesh.

use std::time::{Duration, SystemTime};

use mesh_registry_api::{CaSummary, ClientError, StoreStatus};

use super::Check;
use crate::{Ctl, human};

const SKEW_WARNING: f64 = 5.0;
const SKEW_FAILURE: f64 = 60.0;

/// What the registry's checks learnt, for the sidecars' checks.
pub struct Facts {
    pub version: Option<String>,
    pub ca: Ca,
}

/// The mesh's CA as far as the registry says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ca {
    None,
    /// With its description, when the registry gives one (older ones do not).
    Present(Option<CaSummary>),
    Unknown,
}

impl Ca {
    /// How long certificates live, when known.
    pub fn cert_ttl(&self) -> Option<Duration> {
        match self {
            Ca::Present(Some(summary)) => Some(summary.cert_ttl),
            _ => None,
        }
    }
}

/// Pushes the registry's checks; `None` when it is not ready, and so nothing else can be
/// checked.
pub async fn check(ctl: &Ctl, checks: &mut Vec<Check>) -> Option<Facts> {
    let url = ctl.registry.base_url();
    let sent = SystemTime::now();
    let ready = ctl.registry.readyz().await;
    let received = SystemTime::now();
    let ready = match ready {
        Ok(ready) => ready,
        Err(e) => {
            checks.push(unready(url, &e));
            return None;
        }
    };
    let version = ready.readiness.version.clone();
    let said = version
        .as_deref()
        .map_or(String::new(), |v| format!(", version {v}"));
    checks.push(Check::ok("registry ready", format!("{url} is ready{said}")));
    if let Some(store) = &ready.readiness.store {
        checks.push(store_check(url, store));
    }
    if let Some(writes) = &ready.readiness.writes {
        checks.push(writes_check(url, writes));
    }
    checks.push(match ready.date {
        Some(date) => skew(date, sent, received),
        None => Check::warning(
            "clock skew",
            "the registry's answer has no Date header: skew unknown",
            "something between meshctl and the registry strips the Date header; run meshctl \
             where it reaches the registry directly",
        ),
    });
    let ca = match ready.readiness.ca {
        Some(None) => Ca::None,
        Some(Some(summary)) => Ca::Present(Some(summary)),
        // A registry older than the field: its CA bundle tells whether it has one.
        None => match ctl.registry.ca_bundle().await {
            Ok(Some(_)) => Ca::Present(None),
            Ok(None) => Ca::None,
            Err(_) => Ca::Unknown,
        },
    };
    checks.push(ca_check(&ca));
    Some(Facts { version, ca })
}

/// Where the registry keeps its catalog, and whether it can write there.
fn store_check(url: &str, store: &StoreStatus) -> Check {
    let endpoint = store.endpoint.as_deref().unwrap_or("etcd");
    match (store.kind.as_str(), store.stale) {
        ("etcd", true) => Check::warning(
            "registry store",
            format!(
                "{url} cannot reach an etcd quorum ({endpoint}): it answers from its last state and refuses writes"
            ),
            "check etcd's members (etcdctl endpoint health); registrations and heartbeats \
             are refused until a quorum answers, while sidecars keep routing on what they know",
        ),
        ("etcd", false) => Check::ok(
            "registry store",
            format!(
                "etcd at {endpoint}, revision {}",
                store.revision.unwrap_or_default()
            ),
        ),
        (kind, _) => Check::ok("registry store", format!("{kind} (this registry process)")),
    }
}

/// Whether writes to the registry are bound to an identity.
fn writes_check(url: &str, writes: &[String]) -> Check {
    if writes.iter().any(|w| w == "open") {
        return Check::warning(
            "registry writes",
            format!(
                "{url} is open: anyone who reaches it may register, replace or remove any instance"
            ),
            "give the registry a CA (--ca-dir, sidecars then write with their certificates on \
             --tls-listen), service tokens (--tokens) or at least an operator token (--token)",
        );
    }
    Check::ok(
        "registry writes",
        format!("bound to an identity: {}", writes.join(", ")),
    )
}

fn unready(url: &str, e: &ClientError) -> Check {
    let detail = crate::explain(e);
    let hint = if e.is_no_route() {
        "--registry (MESH_REGISTRY) must be the registry's http://host:port; what answers \
         there has no /readyz"
            .to_owned()
    } else if matches!(e, ClientError::Api { status: 503, .. }) {
        "the registry is shutting down: wait for it to come back, or point --registry at \
         another replica"
            .to_owned()
    } else {
        format!(
            "start the registry, or point --registry (MESH_REGISTRY) at it; meshctl asked \
             {url}"
        )
    };
    Check::failure("registry ready", detail, hint)
}

/// The skew between this machine's clock and the registry's `date`, from a request
/// sent and answered at those local times.
pub fn skew(date: SystemTime, sent: SystemTime, received: SystemTime) -> Check {
    let (date, sent, received) = (
        human::unix_seconds(date),
        human::unix_seconds(sent),
        human::unix_seconds(received),
    );
    // The registry's clock read somewhere in [date, date + 1) while ours read somewhere
    // in [sent, received]: the skew (registry minus local) is within these bounds.
    let (low, high) = (date - received, date + 1.0 - sent);
    let estimate = (low + high) / 2.0;
    let margin = (high - low) / 2.0;
    let certain = if low > 0.0 {
        low
    } else if high < 0.0 {
        -high
    } else {
        0.0
    };
    let name = "clock skew";
    if certain <= SKEW_WARNING {
        return Check::ok(
            name,
            format!(
                "within {:.1}s of the registry's clock",
                estimate.abs() + margin
            ),
        );
    }
    let side = if estimate > 0.0 { "behind" } else { "ahead of" };
    let detail = format!(
        "this machine's clock is {:.0}s {side} the registry's (±{margin:.1}s)",
        estimate.abs()
    );
    if certain > SKEW_FAILURE {
        return Check::failure(
            name,
            detail,
            "sync the clocks (NTP, e.g. `timedatectl set-ntp true`): a sidecar host this far \
             behind the registry refuses its certificates as not yet valid",
        );
    }
    Check::warning(
        name,
        detail,
        "sync this machine's clock or the registry host's (NTP): heartbeat ages and \
         certificate expiry read here are off by as much",
    )
}

fn ca_check(ca: &Ca) -> Check {
    match ca {
        Ca::Present(Some(s)) => Check::ok(
            "CA",
            format!(
                "trust domain {}, certificates live {}",
                s.trust_domain,
                human::duration(s.cert_ttl)
            ),
        ),
        Ca::Present(None) => Check::ok(
            "CA",
            "present (this registry does not say how long certificates live)",
        ),
        Ca::None => Check::warning(
            "CA",
            "the registry has no CA: traffic between sidecars is plaintext (no mTLS)",
            "to encrypt and authenticate it, start the registry with --ca-dir and \
             --join-token, and the sidecars with --tls permissive, then strict (docs/security.md)",
        ),
        Ca::Unknown => Check::warning(
            "CA",
            "could not tell whether the registry has a CA",
            "see the registry's logs; GET /v1/ca/bundle should answer the CA or 404",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    fn at(secs: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_registry_cut_off_from_etcd_is_a_warning_naming_etcd() {
        let mut store = StoreStatus {
            kind: "etcd".into(),
            stale: true,
            revision: Some(812),
            endpoint: Some("http://etcd-1:2379".into()),
        };
        let stale = store_check("http://r:7700", &store);
        assert_eq!(stale.status, Status::Warning);
        assert!(
            stale.detail.contains("etcd quorum (http://etcd-1:2379)"),
            "{}",
            stale.detail
        );
        store.stale = false;
        let fine = store_check("http://r:7700", &store);
        assert_eq!(
            (fine.status, fine.detail.as_str()),
            (Status::Ok, "etcd at http://etcd-1:2379, revision 812")
        );
        assert_eq!(
            store_check("http://r:7700", &StoreStatus::memory()).status,
            Status::Ok
        );
    }

    #[test]
    fn an_open_registry_is_a_warning() {
        let open = writes_check("http://r:7700", &["open".into()]);
        assert_eq!(open.status, Status::Warning);
        assert!(open.detail.contains("anyone"), "{}", open.detail);
        let bound = writes_check(
            "http://r:7700",
            &["certificate".into(), "operator-token".into()],
        );
        assert_eq!(
            (bound.status, bound.detail.as_str()),
            (
                Status::Ok,
                "bound to an identity: certificate, operator-token"
            )
        );
    }

    #[test]
    fn skew_is_judged_on_what_the_rounding_leaves_certain() {
        // Same clock: the Date header rounds down by up to a second.
        let same = skew(at(1000.0), at(1000.7), at(1000.72));
        assert_eq!(same.status, Status::Ok, "{same:?}");
        let behind = skew(at(1010.0), at(1000.0), at(1000.1));
        assert_eq!(behind.status, Status::Warning, "{behind:?}");
        assert!(behind.detail.contains("behind"), "{}", behind.detail);
        // 5.9s apart at most but 4.9s for sure, given the rounding: not yet a warning.
        let close = skew(at(1000.0), at(1005.9), at(1005.9));
        assert_eq!(close.status, Status::Ok, "{close:?}");
        let far = skew(at(1000.0), at(1100.0), at(1100.2));
        assert_eq!(far.status, Status::Failure, "{far:?}");
        assert!(far.detail.contains("ahead of"), "{}", far.detail);
        assert!(far.hint.is_some());
    }
}
