//! Lease expiry: the periodic sweep that turns silent instances critical, removes them a
//! grace period later, and refuses to empty a service all at once.

use std::time::Duration;

use mesh_registry_api::Status;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::catalog::{Catalog, Instances};
use crate::entry::{Entry, LeaseState};
use crate::events::{EventKind, Events};
use crate::metrics::Metrics;
use crate::store::Change;

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
    /// The embedded store's sweep: what [`due`] decides, applied in place.
    pub fn sweep(&self, now: Instant) -> SweepReport {
        let mut report = SweepReport::default();
        let grace = self.critical_grace();
        let events = self.events();
        self.change_each(|service, instances| {
            let mut changed = false;
            for due in due(service, instances, now, grace, events, &mut report, |_| {
                true
            }) {
                match due {
                    Due::Expire { id, change, listed } => {
                        if let Some(entry) = instances.get_mut(&id) {
                            entry.lease = LeaseState::Expired {
                                remove_at: now + grace,
                            };
                        }
                        events.record(change.kind, service, &id, change.detail);
                        changed |= listed;
                    }
                    Due::Remove { id, change } => {
                        instances.remove(&id);
                        events.record(change.kind, service, &id, change.detail);
                        changed = true;
                    }
                }
            }
            changed
        });
        self.collect_empty(now);
        report
    }
}

/// What a sweep must do to one instance besides sparing it, for the store to apply.
#[derive(Debug)]
pub(crate) enum Due {
    /// Its lease ran out: it is critical from now, and removed a grace later. `listed`:
    /// its listing changes (it had not reported itself critical already).
    Expire {
        id: String,
        change: Change,
        listed: bool,
    },
    /// Critical for the whole grace: it goes.
    Remove { id: String, change: Change },
}

/// The sweep's rules for one service, shared by both stores: which leases ran out by
/// `now`, which of them the mass-expiry guard spares (extended in place, with their
/// events), and which expired instances' grace ended, among those this store is
/// `responsible` for removing.
///
/// Mass-expiry guard: when at least two passing instances of one service, and more
/// than half of its passing instances, would expire in the same sweep, the likelier
/// story is that the registry itself was starved or cut off (their heartbeats could
/// not reach it), not that they all died together. Those leases are extended by one
/// TTL instead, once per instance until it heartbeats again, so a truly dead instance
/// still leaves after at most two TTLs.
pub(crate) fn due(
    service: &str,
    instances: &mut Instances,
    now: Instant,
    grace: Duration,
    events: &Events,
    report: &mut SweepReport,
    responsible: impl Fn(&str) -> bool,
) -> Vec<Due> {
    let guard = guard_holds(service, instances, now);
    let mut due = Vec::new();
    for (id, entry) in instances.iter_mut() {
        match entry.lease {
            LeaseState::Live { expires_at } if expires_at <= now => {
                if let Some(guard) = guard.filter(|_| sparable(entry, now)) {
                    let ttl = entry.registration.ttl;
                    entry.spared = true;
                    entry.lease = LeaseState::Live {
                        expires_at: now + ttl,
                    };
                    events.record(EventKind::Spared, service, id, spare_detail(ttl, guard));
                    report.spared += 1;
                } else {
                    report.expired += 1;
                    let change = Change {
                        kind: EventKind::Critical,
                        detail: expiry_detail(entry.registration.ttl, grace),
                    };
                    // An instance that already reported itself critical looks the same
                    // once expired: no change for its watchers.
                    let listed = entry.status() != Status::Critical;
                    due.push(Due::Expire {
                        id: id.clone(),
                        change,
                        listed,
                    });
                }
            }
            LeaseState::Expired { remove_at } if remove_at <= now && responsible(id) => {
                report.removed += 1;
                let change = Change {
                    kind: EventKind::Removed,
                    detail: removal_detail(grace),
                };
                due.push(Due::Remove {
                    id: id.clone(),
                    change,
                });
            }
            _ => {}
        }
    }
    due
}

/// A lease the mass-expiry guard may extend: it ran out by `now`, has not been extended
/// since the instance's last heartbeat, and the instance reported itself passing.
fn sparable(entry: &Entry, now: Instant) -> bool {
    matches!(entry.lease, LeaseState::Live { expires_at } if expires_at <= now)
        && !entry.spared
        && entry.status() == Status::Passing
}

/// The mass-expiry guard (see [`due`]) holding back expiries of one service.
#[derive(Clone, Copy, Debug)]
struct Guard {
    /// Leases it extends.
    expiring: usize,
    /// Passing instances of the service.
    passing: usize,
}

/// Whether the mass-expiry guard holds back the expiries of one service in this sweep.
fn guard_holds(service: &str, instances: &Instances, now: Instant) -> Option<Guard> {
    let passing = instances
        .values()
        .filter(|e| e.status() == Status::Passing)
        .count();
    let expiring = instances.values().filter(|e| sparable(e, now)).count();
    if expiring < 2 || expiring * 2 <= passing {
        return None;
    }
    tracing::warn!(
        service = %service,
        expiring,
        passing,
        "mass expiry held back: most of this service's leases ran out at once, \
         which usually means the registry was starved or partitioned; \
         extending them by one TTL"
    );
    Some(Guard { expiring, passing })
}

/// The event details of what a sweep does.
fn expiry_detail(ttl: Duration, grace: Duration) -> String {
    format!(
        "lease expired: no heartbeat for {}; removed in {} unless one arrives",
        humantime::format_duration(ttl),
        humantime::format_duration(grace)
    )
}

fn removal_detail(grace: Duration) -> String {
    format!(
        "removed after {} critical without a heartbeat",
        humantime::format_duration(grace)
    )
}

fn spare_detail(ttl: Duration, guard: Guard) -> String {
    format!(
        "lease extended by {}: the mass-expiry guard held back {} of {} passing \
         instances whose leases ran out at once",
        humantime::format_duration(ttl),
        guard.expiring,
        guard.passing
    )
}

/// Runs `sweep` (the store's) every `interval` until
/// `shutdown` turns true.
pub async fn run_sweeper<F: Future<Output = SweepReport>>(
    mut sweep: impl FnMut(Instant) -> F,
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
        let report = sweep(Instant::now()).await;
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
    use crate::entry::Claim;

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
        c.register("web", "a", reg(1500), "o", t0).unwrap();
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
        c.register("web", "a", reg(1000), "o", t0).unwrap();
        c.sweep(t0 + Duration::from_secs(1));
        assert_eq!(passing(&c, "web"), 0);
        let (lease, _) = c
            .heartbeat(
                "web",
                "a",
                Claim::by("o"),
                None,
                None,
                t0 + Duration::from_secs(2),
            )
            .unwrap();
        assert_eq!(lease.status, Status::Passing);
        assert_eq!(passing(&c, "web"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_keeps_most_of_a_service_once_then_lets_it_go() {
        let c = Catalog::new(GRACE);
        let t0 = Instant::now();
        for id in ["a", "b", "c"] {
            c.register("web", id, reg(1000), "o", t0).unwrap();
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
        c.register("web", "dead", reg(1000), "o", t0).unwrap();
        c.register("web", "alive1", reg(5000), "o", t0).unwrap();
        c.register("web", "alive2", reg(5000), "o", t0).unwrap();
        c.register("solo", "a", reg(1000), "o", t0).unwrap();
        let report = c.sweep(t0 + Duration::from_secs(1));
        assert_eq!((report.spared, report.expired), (0, 2));
        assert_eq!(passing(&c, "web"), 2);
        assert_eq!(passing(&c, "solo"), 0);
    }

    fn kinds(c: &Catalog) -> Vec<(EventKind, String)> {
        let page = c.events().since(0);
        page.events
            .into_iter()
            .map(|e| (e.kind, e.instance))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_records_the_expiry_then_the_removal_when_they_happen() {
        let c = std::sync::Arc::new(Catalog::new(GRACE));
        c.register("web", "a", reg(1000), "o", Instant::now())
            .unwrap();
        let (stop, stopped) = watch::channel(false);
        let sweeper = tokio::spawn({
            let c = c.clone();
            async move {
                let metrics = Metrics::new();
                let sweep = |now| std::future::ready(c.sweep(now));
                run_sweeper(sweep, &metrics, Duration::from_millis(100), stopped).await
            }
        });
        let registered = vec![(EventKind::Registered, "a".to_owned())];
        tokio::time::sleep(Duration::from_millis(950)).await;
        assert_eq!(kinds(&c), registered);

        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut expired = registered.clone();
        expired.push((EventKind::Critical, "a".to_owned()));
        assert_eq!(kinds(&c), expired);
        let detail = &c.events().since(0).events[1].detail;
        assert!(
            detail.starts_with("lease expired: no heartbeat for 1s"),
            "{detail}"
        );

        tokio::time::sleep(GRACE - Duration::from_millis(200)).await;
        assert_eq!(kinds(&c), expired, "removed before the grace period ended");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut removed = expired;
        removed.push((EventKind::Removed, "a".to_owned()));
        assert_eq!(kinds(&c), removed);

        stop.send_replace(true);
        sweeper.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn sparing_is_an_event_per_instance_and_the_next_expiry_too() {
        let c = Catalog::new(GRACE);
        let t0 = Instant::now();
        for id in ["a", "b"] {
            c.register("web", id, reg(1000), "o", t0).unwrap();
        }
        let registered = c.events().index();
        c.sweep(t0 + Duration::from_secs(1));
        let page = c.events().since(registered);
        let spared: Vec<_> = page
            .events
            .iter()
            .map(|e| (e.kind, &e.instance[..]))
            .collect();
        assert_eq!(spared, [(EventKind::Spared, "a"), (EventKind::Spared, "b")]);
        assert!(
            page.events[0].detail.contains("held back 2 of 2"),
            "{}",
            page.events[0].detail
        );
        c.sweep(t0 + Duration::from_secs(2));
        let later = c.events().since(page.index);
        assert!(later.events.iter().all(|e| e.kind == EventKind::Critical));
        assert_eq!(later.events.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_moves_only_the_expired_service_index() {
        let c = Catalog::new(GRACE);
        let t0 = Instant::now();
        c.register("web", "a", reg(1000), "o", t0).unwrap();
        c.register("db", "a", reg(60_000), "o", t0).unwrap();
        let web = c.subscribe("web");
        let db = c.subscribe("db");
        c.sweep(t0 + Duration::from_secs(1));
        assert!(web.has_changed().unwrap());
        assert!(!db.has_changed().unwrap());
    }
}
