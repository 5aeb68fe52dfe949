//! Lease expiry: the periodic sweep that turns silent instances critical, removes them a
//! grace period later, and refuses to empty a service all at once.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_registry_api::Status;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::catalog::Catalog;
use crate::entry::{Entry, LeaseState};
use crate::metrics::Metrics;

/// What one sweep did, summed over all services.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Leases that ran out: those instances are now critical.
    pub expired: usize,
    /// Critical instances removed after their grace period.
    pub removed: usize,
    /// Leases the mass-expiry guard extended instead of letting them run out.
    pub spared: usize,
}

// === impl Catalog ===

impl Catalog {
    /// Expires the leases that ran out by `now` and removes instances whose grace ended.
    ///
    /// Mass-expiry guard: when at least two passing instances of one service, and more
    /// than half of its passing instances, would expire in the same sweep, the likelier
    /// story is that the registry itself was starved or cut off (their heartbeats could
    /// not reach it), not that they all died together. Those leases are extended by one
    /// TTL instead, once per instance until it heartbeats again, so a truly dead instance
    /// still leaves after at most two TTLs.
    pub fn sweep(&self, now: Instant) -> SweepReport {
        let mut report = SweepReport::default();
        let grace = self.critical_grace();
        for mut svc in self.services.iter_mut() {
            let guard = guard_holds(svc.key(), &svc.instances, now);
            if sweep_instances(&mut svc.instances, now, guard, grace, &mut report) {
                self.bump(&mut svc);
            }
        }
        self.collect_empty();
        report
    }
}

/// A lease the mass-expiry guard may extend: it ran out by `now`, has not been extended
/// since the instance's last heartbeat, and the instance reported itself passing.
fn sparable(entry: &Entry, now: Instant) -> bool {
    matches!(entry.lease, LeaseState::Live { expires_at } if expires_at <= now)
        && !entry.spared
        && entry.status() == Status::Passing
}

/// Whether the mass-expiry guard (see [`Catalog::sweep`]) holds back the expiries of one
/// service in this sweep.
fn guard_holds(service: &str, instances: &BTreeMap<String, Entry>, now: Instant) -> bool {
    let passing = instances
        .values()
        .filter(|e| e.status() == Status::Passing)
        .count();
    let sparable = instances.values().filter(|e| sparable(e, now)).count();
    let holds = sparable >= 2 && sparable * 2 > passing;
    if holds {
        tracing::warn!(
            service = %service,
            expiring = sparable,
            passing,
            "mass expiry held back: most of this service's leases ran out at once, \
             which usually means the registry was starved or partitioned; \
             extending them by one TTL"
        );
    }
    holds
}

/// Expires, spares or removes the instances of one service whose time came by `now`.
/// Returns whether the service's listing changed, so its watchers need waking.
fn sweep_instances(
    instances: &mut BTreeMap<String, Entry>,
    now: Instant,
    guard: bool,
    grace: Duration,
    report: &mut SweepReport,
) -> bool {
    let mut changed = false;
    instances.retain(|_, entry| match entry.lease {
        LeaseState::Live { expires_at } if expires_at <= now => {
            if guard && sparable(entry, now) {
                entry.spared = true;
                entry.lease = LeaseState::Live {
                    expires_at: now + entry.registration.ttl,
                };
                report.spared += 1;
            } else {
                // An instance that already reported itself critical looks the same once
                // expired: no change for its watchers.
                changed |= entry.status() != Status::Critical;
                entry.lease = LeaseState::Expired {
                    remove_at: now + grace,
                };
                report.expired += 1;
            }
            true
        }
        LeaseState::Expired { remove_at } if remove_at <= now => {
            report.removed += 1;
            changed = true;
            false
        }
        _ => true,
    });
    changed
}

/// Runs [`Catalog::sweep`] every `interval` until `shutdown` turns true.
pub async fn run_sweeper(
    catalog: &Catalog,
    metrics: &Metrics,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    // After a stall, one sweep catches up on everything; a burst of sweeps would not help.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let report = catalog.sweep(Instant::now());
        if report.expired > 0 || report.removed > 0 {
            tracing::info!(
                expired = report.expired,
                removed = report.removed,
                "lease sweep"
            );
        }
        metrics.lease_expirations.inc_by(report.expired as u64);
        metrics.expiry_guard_spared.inc_by(report.spared as u64);
    }
}

#[cfg(test)]
mod tests {
    use mesh_registry_api::Registration;

    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn reg(ttl_ms: u64) -> Registration {
        Registration {
            ttl: Duration::from_millis(ttl_ms),
            ..Registration::new("h:1")
        }
    }

    fn passing(c: &Catalog, service: &str) -> usize {
        c.listing(service, false).instances.len()
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_lease_turns_critical_then_is_removed_after_the_grace() {
        let c = Catalog::new(GRACE);
        let t0 = Instant::now();
        c.register("web", "a", reg(1500), t0);
        assert_eq!(
            c.sweep(t0 + Duration::from_millis(1499)),
            SweepReport::default()
        );
        assert_eq!(passing(&c, "web"), 1);

        let report = c.sweep(t0 + Duration::from_millis(1500));
        assert_eq!(report.expired, 1);
        assert_eq!(passing(&c, "web"), 0);
        let all = c.listing("web", true);
        assert_eq!(all.instances[0].status, Status::Critical);

        let expired_at = t0 + Duration::from_millis(1500);
        assert_eq!(
            c.sweep(expired_at + GRACE - Duration::from_millis(1))
                .removed,
            0
        );
        assert_eq!(c.sweep(expired_at + GRACE).removed, 1);
        assert!(!c.listing("web", true).exists);
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_in_the_grace_period_revives_the_instance() {
        let c = Catalog::new(GRACE);
        let t0 = Instant::now();
        c.register("web", "a", reg(1000), t0);
        c.sweep(t0 + Duration::from_secs(1));
        assert_eq!(passing(&c, "web"), 0);
        let (lease, _) = c
            .heartbeat("web", "a", None, None, t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(lease.status, Status::Passing);
        assert_eq!(passing(&c, "web"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_keeps_most_of_a_service_once_then_lets_it_go() {
        let c = Catalog::new(GRACE);
        let t0 = Instant::now();
        for id in ["a", "b", "c"] {
            c.register("web", id, reg(1000), t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        let report = c.sweep(t1);
        assert_eq!((report.spared, report.expired), (3, 0));
        assert_eq!(passing(&c, "web"), 3);

        // They stay silent for another TTL: now they go.
        let report = c.sweep(t1 + Duration::from_secs(1));
        assert_eq!((report.spared, report.expired), (0, 3));
        assert_eq!(passing(&c, "web"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_lets_a_minority_or_a_lone_instance_expire() {
        let c = Catalog::new(GRACE);
        let t0 = Instant::now();
        c.register("web", "dead", reg(1000), t0);
        c.register("web", "alive1", reg(5000), t0);
        c.register("web", "alive2", reg(5000), t0);
        c.register("solo", "a", reg(1000), t0);
        let report = c.sweep(t0 + Duration::from_secs(1));
        assert_eq!((report.spared, report.expired), (0, 2));
        assert_eq!(passing(&c, "web"), 2);
        assert_eq!(passing(&c, "solo"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_moves_only_the_expired_service_index() {
        let c = Catalog::new(GRACE);
        let t0 = Instant::now();
        c.register("web", "a", reg(1000), t0);
        c.register("db", "a", reg(60_000), t0);
        let web = c.subscribe("web");
        let db = c.subscribe("db");
        c.sweep(t0 + Duration::from_secs(1));
        assert!(web.has_changed().unwrap());
        assert!(!db.has_changed().unwrap());
    }
}
