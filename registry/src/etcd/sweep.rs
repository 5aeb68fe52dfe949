//! Lease expiry with the etcd store: the same rules as [`crate::lease`], applied by the
//! replica responsible for each lease (its owner, or any replica once nobody owns it),
//! written to etcd so every replica sees the same outcome.

use std::time::SystemTime;

use mesh_registry_api::Status;
use tokio::time::Instant;

use super::mirror::since_epoch_ms;
use super::{EtcdStore, Record, ServiceChange};
use crate::entry::{Entry, LeaseState};
use crate::events::EventKind;
use crate::lease::{self, SweepReport};
use crate::snapshot::StoredInstance;

/// What a sweep decided for one instance.
enum Action {
    /// Its lease ran out: write it as critical. (Boxed: an entry is far larger than the
    /// other variant, and sweeps collect many actions.)
    Expire(String, String, Box<Entry>),
    /// Critical for the whole grace period: remove it.
    Remove(String, String),
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Expires the leases this replica is responsible for that ran out by `now`, and
    /// removes the instances whose grace ended. The mass-expiry guard is applied as in
    /// the embedded store; a spared lease is extended in memory only (no write).
    pub(crate) async fn sweep(&self, now: Instant) -> SweepReport {
        let mut report = SweepReport::default();
        if !self.is_synced() || self.is_stale() {
            // A replica cut off from etcd expires nothing: the heartbeats it is missing
            // may be reaching other replicas.
            return report;
        }
        for action in self.decide(now, &mut report) {
            let done = match action {
                Action::Expire(service, id, entry) => self.expire(&service, &id, *entry).await,
                Action::Remove(service, id) => self.remove(&service, &id).await,
            };
            match done {
                Ok(true) => {}
                // Someone changed the instance first (a heartbeat revived it, another
                // replica expired it): their change stands.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "lease sweep could not write to etcd; trying again next sweep");
                    break;
                }
            }
        }
        self.catalog.collect_empty(now);
        report
    }

    /// What to do, decided with the catalog locked; the writes happen after.
    fn decide(&self, now: Instant, report: &mut SweepReport) -> Vec<Action> {
        let mut actions = Vec::new();
        for mut svc in self.catalog.services.iter_mut() {
            let (service, state) = svc.pair_mut();
            let guard = lease::guard_holds(service, &state.instances, now);
            for (id, entry) in state.instances.iter_mut() {
                match entry.lease {
                    LeaseState::Live { expires_at } if expires_at <= now => {
                        if let Some(guard) = guard.filter(|_| lease::sparable(entry, now)) {
                            let ttl = entry.registration.ttl;
                            entry.spared = true;
                            entry.lease = LeaseState::Live {
                                expires_at: now + ttl,
                            };
                            let detail = lease::spare_detail(ttl, guard);
                            self.catalog
                                .events()
                                .record(EventKind::Spared, service, id, detail);
                            report.spared += 1;
                        } else {
                            report.expired += 1;
                            actions.push(Action::Expire(
                                service.clone(),
                                id.clone(),
                                Box::new(entry.clone()),
                            ));
                        }
                    }
                    LeaseState::Expired { remove_at }
                        if remove_at <= now && self.responsible(service, id) =>
                    {
                        report.removed += 1;
                        actions.push(Action::Remove(service.clone(), id.clone()));
                    }
                    _ => {}
                }
            }
        }
        actions
    }

    /// Writes an instance as expired, unless it changed since the mirror saw it.
    async fn expire(
        &self,
        service: &str,
        id: &str,
        entry: Entry,
    ) -> Result<bool, super::EtcdError> {
        let record = Record {
            stored: StoredInstance::of(&entry),
            expired_at: Some(since_epoch_ms(SystemTime::now())),
        };
        let mut ops = vec![super::Op::Put {
            key: self.instance_key(service, id),
            value: serde_json::to_vec(&record).expect("records serialize"),
            lease: 0,
        }];
        // An instance that already reported itself critical looks the same once expired:
        // its listing does not change, so its index does not move.
        if entry.status() != Status::Critical {
            let change = ServiceChange {
                kind: EventKind::Critical,
                instance: id.to_owned(),
                detail: lease::expiry_detail(entry.registration.ttl, self.catalog.critical_grace()),
            };
            ops.push(self.service_op(service, &change));
        }
        self.conditional(service, id, &ops).await
    }

    async fn remove(&self, service: &str, id: &str) -> Result<bool, super::EtcdError> {
        let change = ServiceChange {
            kind: EventKind::Removed,
            instance: id.to_owned(),
            detail: lease::removal_detail(self.catalog.critical_grace()),
        };
        let ops = self.removal(service, id, &change);
        self.conditional(service, id, &ops).await
    }

    /// Applies `ops` if the instance is still as the mirror saw it; waits until the mirror
    /// shows the result, so the next sweep does not decide the same again.
    async fn conditional(
        &self,
        service: &str,
        id: &str,
        ops: &[super::Op],
    ) -> Result<bool, super::EtcdError> {
        let compare = self.unchanged(service, id);
        let (done, revision) = self.etcd.txn(&[compare], ops).await?;
        self.read_your_write(revision).await;
        Ok(done)
    }

    /// Whether this replica removes an expired instance: it owns its lease, or nobody
    /// does (its owner is gone).
    fn responsible(&self, service: &str, id: &str) -> bool {
        let mirror = self.mirror();
        mirror
            .owner(service, id)
            .is_none_or(|owner| owner == self.replica)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Action;
    use crate::catalog::Catalog;
    use crate::etcd::EtcdStore;
    use crate::etcd::client::{Change, Kv};
    use crate::etcd::metrics::EtcdMetrics;
    use crate::lease::SweepReport;
    use crate::metrics::Metrics;

    fn store() -> EtcdStore {
        let metrics = EtcdMetrics::new(&Metrics::new());
        let catalog = Arc::new(Catalog::new(Duration::from_secs(30)));
        // Never contacted: the test feeds the mirror what a watch would.
        EtcdStore::new(
            vec!["http://127.0.0.1:9".into()],
            "/t",
            catalog,
            Arc::new(metrics),
        )
    }

    fn put(key: &str, value: &str, revision: i64) -> Change {
        Change::Put(Kv {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            mod_revision: revision,
            lease: 0,
        })
    }

    /// The instances a sweep at `now` would expire.
    fn expiring(store: &EtcdStore, now: Instant) -> Vec<String> {
        let mut report = SweepReport::default();
        store
            .decide(now, &mut report)
            .into_iter()
            .filter_map(|action| match action {
                Action::Expire(_, id, _) => Some(id),
                Action::Remove(..) => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_owned_by_another_replica_is_its_to_expire_until_that_replica_is_gone() {
        let store = store();
        let record = r#"{"address":"10.0.0.1:4143","ttl":"10s",
            "registered_at":"2026-12-02T00:00:00Z","last_heartbeat":"2026-12-02T00:00:00Z"}"#;
        store.apply(vec![
            put("/t/instances/web/web-1", record, 2),
            put("/t/owners/web/web-1", "another-replica", 2),
            put(
                "/t/services/web",
                r#"{"kind":"registered","instance":"web-1","detail":"new"}"#,
                2,
            ),
        ]);
        let listing = store.catalog.listing("web", false);
        assert_eq!((listing.index, listing.instances.len()), (2, 1));

        // Its owner hears its heartbeats, not this replica: silence here means nothing.
        let start = Instant::now();
        assert!(expiring(&store, start + Duration::from_secs(3600)).is_empty());

        // The owner's etcd lease ran out: one TTL from now it is this replica's to expire.
        store.apply(vec![Change::Delete {
            key: "/t/owners/web/web-1".into(),
            revision: 3,
        }]);
        assert!(expiring(&store, start + Duration::from_millis(9_900)).is_empty());
        assert_eq!(expiring(&store, start + Duration::from_secs(10)), ["web-1"]);

        // Taken over by this replica (a heartbeat arrived): its own lease, from now.
        let replica = store.replica.clone();
        tokio::time::advance(Duration::from_secs(5)).await;
        store.apply(vec![put("/t/owners/web/web-1", &replica, 4)]);
        let now = Instant::now();
        assert!(expiring(&store, now + Duration::from_millis(9_900)).is_empty());
        assert_eq!(expiring(&store, now + Duration::from_secs(10)), ["web-1"]);
    }
}
