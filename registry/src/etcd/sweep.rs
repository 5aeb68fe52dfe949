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
    /// Its lease ran out: write it as critical.
    Expire(String, String, Entry),
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
                Action::Expire(service, id, entry) => self.expire(&service, &id, entry).await,
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
        self.catalog.collect_empty();
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
                                entry.clone(),
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
