//! Lease expiry with the etcd store: the same rules as [`crate::lease`], applied by the
//! replica responsible for each lease (its owner, or any replica once nobody owns it),
//! written to etcd so every replica sees the same outcome.

use std::time::SystemTime;

use tokio::time::Instant;

use super::mirror::since_epoch_ms;
use super::{EtcdStore, Record};
use crate::entry::Entry;
use crate::lease::{self, Due, SweepReport};
use crate::snapshot::StoredInstance;
use crate::store::Change;

/// What a sweep decided for one instance, to be written after the catalog's locks are
/// released. (The entry is boxed: it is far larger than the rest, and sweeps collect
/// many of these.)
struct Action {
    service: String,
    due: Due,
    entry: Option<Box<Entry>>,
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Expires the leases this replica is responsible for that ran out by `now`, and
    /// removes the instances whose grace ended, as [`lease::due`] decides for both
    /// stores. A spared lease is extended in memory only (no write).
    pub(super) async fn sweep_leases(&self, now: Instant) -> SweepReport {
        let mut report = SweepReport::default();
        if !self.is_synced() || self.is_stale() {
            // A replica cut off from etcd expires nothing: the heartbeats it is missing
            // may be reaching other replicas.
            return report;
        }
        for action in self.decide(now, &mut report) {
            let done = match action.due {
                Due::Expire {
                    id, change, listed, ..
                } => {
                    let entry = action.entry.expect("an expiry carries its entry");
                    let change = listed.then_some(change);
                    self.expire(&action.service, &id, &entry, change).await
                }
                Due::Remove { id, change } => {
                    let ops = self.removal(&action.service, &id, &change);
                    let done = self.conditional(&action.service, &id, &ops).await;
                    done.map(|(done, _)| done)
                }
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

    /// What to do, decided with the catalog locked; the writes happen after. Instances
    /// are removed by the replica owning their lease, or by any once nobody owns it.
    fn decide(&self, now: Instant, report: &mut SweepReport) -> Vec<Action> {
        let grace = self.catalog.critical_grace();
        let events = self.catalog.events();
        let mut actions = Vec::new();
        self.catalog.change_each(|service, instances| {
            let responsible = |id: &str| self.responsible(service, id);
            for due in lease::due(service, instances, now, grace, events, report, responsible) {
                let entry = match &due {
                    Due::Expire { id, .. } => instances.get(id).cloned().map(Box::new),
                    Due::Remove { .. } => None,
                };
                actions.push(Action {
                    service: service.to_owned(),
                    due,
                    entry,
                });
            }
            // Indexes move when every replica sees the write, through the watch.
            false
        });
        actions
    }

    /// Writes an instance as expired, with `change` as its service's event when its
    /// listing changes; unless it changed since the mirror saw it.
    async fn expire(
        &self,
        service: &str,
        id: &str,
        entry: &Entry,
        change: Option<Change>,
    ) -> Result<bool, super::EtcdError> {
        let record = Record {
            stored: StoredInstance::of(entry),
            expired_at: Some(since_epoch_ms(SystemTime::now())),
        };
        let mut ops = vec![super::Op::Put {
            key: self.instance_key(service, id),
            value: serde_json::to_vec(&record).expect("records serialize"),
            lease: 0,
        }];
        ops.extend(change.map(|c| self.service_op(service, id, &c)));
        let (done, _) = self.conditional(service, id, &ops).await?;
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

    use crate::catalog::Catalog;
    use crate::etcd::EtcdStore;
    use crate::etcd::client::{Change, Kv};
    use crate::etcd::metrics::EtcdMetrics;
    use crate::lease::Due;
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
            .filter_map(|action| match action.due {
                Due::Expire { id, .. } => Some(id),
                Due::Remove { .. } => None,
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
