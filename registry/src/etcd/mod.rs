//! The etcd store: any number of stateless registry replicas in front of one etcd
//! cluster, serving the same API with the same meaning as the embedded store.
//!
//! Each replica keeps the whole catalog in memory, as a mirror of etcd fed by one watch
//! ([`mirror`]); reads and blocking queries are answered from it exactly as in the
//! embedded store. Writes go to etcd first, as transactions, and the answer waits until
//! the replica's own mirror shows them (read your writes).
//!
//! Keys under the prefix (`/mesh/` by default):
//!
//! | key | value | written when |
//! |---|---|---|
//! | `instances/{service}/{id}` | the instance (registration, output, times; `expired_at` once its lease ran out) | it is registered or replaced, its status changes, its lease runs out or comes back |
//! | `services/{service}` | the last change (`kind`, `instance`, `detail`) | with every change a listing shows: its revision is the service's index |
//! | `owners/{service}/{id}` | the replica receiving its heartbeats, under that replica's etcd lease | a replica receives the first heartbeat of an instance |
//! | `policies/{service}/{kind}` | one policy document (`routes`, `intentions`, `limits`) | it is written or deleted: its revision is the service's policy index |
//!
//! Heartbeats are not written: the replica that receives an instance's heartbeats owns
//! its lease, in memory, like the embedded store does, and says so once in etcd (the
//! owner key). It writes only when something changes: a status, an expiry, a new owner.
//! A replica that dies takes its etcd lease with it, and so its owner keys; its instances'
//! sidecars fail over to another replica, which takes them over with their next
//! heartbeat. An instance that nobody owns expires one TTL after its owner went away,
//! through whichever replica gets there first (a transaction compares the instance's
//! revision, so it happens once).
//!
//! Indexes are etcd revisions: a service's index is the revision of its `services/` key,
//! so it is the same on every replica, and grows across replicas and restarts.

mod background;
pub mod client;
pub mod metrics;
mod mirror;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use mesh_registry_api::StoreStatus;
use mesh_registry_api::policy::{Document, PolicyKind};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::Catalog;
use crate::entry::{Entry, Refusal};
use crate::events::EventKind;
use crate::snapshot::StoredInstance;
use crate::store::{Applied, Change, Decide, Decision, Pending, Store, WriteError};
use client::{Compare, Etcd, EtcdError, Op};
use metrics::EtcdMetrics;

pub use background::Tasks;

/// The TTL of each replica's own etcd lease, which its owner keys hang on: how long a
/// dead replica's instances stay owned by it.
const REPLICA_LEASE_TTL: Duration = Duration::from_secs(10);
/// How long a write waits for the replica's mirror to show it before answering anyway.
const READ_YOUR_WRITE: Duration = Duration::from_secs(2);

/// An instance as written under `instances/`.
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    stored: StoredInstance,
    /// When its lease ran out (milliseconds since the Unix epoch): it is critical and is
    /// removed `--critical-grace` later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expired_at: Option<u64>,
}

/// A change to a service, written under `services/` in the same transaction: every
/// replica records the same event from it.
#[derive(Serialize, Deserialize)]
struct ServiceChange {
    kind: EventKind,
    instance: String,
    detail: String,
}

/// One replica's view of etcd: the client, the mirror's bookkeeping, and this replica's
/// identity and lease.
pub struct EtcdStore {
    etcd: Etcd,
    /// Ends in `/`.
    prefix: String,
    /// This replica's name in owner keys.
    replica: String,
    catalog: Arc<Catalog>,
    metrics: Arc<EtcdMetrics>,
    mirror: std::sync::Mutex<mirror::Mirror>,
    /// The revision the mirror has applied.
    applied: watch::Sender<i64>,
    stale: watch::Sender<bool>,
    /// True once the mirror holds etcd's state (the first full read).
    synced: watch::Sender<bool>,
    /// This replica's etcd lease; 0 while it has none.
    lease: watch::Sender<i64>,
}

// === impl EtcdStore ===

impl EtcdStore {
    pub fn new(
        endpoints: Vec<String>,
        prefix: &str,
        catalog: Arc<Catalog>,
        metrics: Arc<EtcdMetrics>,
    ) -> Self {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        let replica = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        EtcdStore {
            etcd: Etcd::new(endpoints, metrics.clone()),
            prefix,
            replica,
            catalog,
            metrics,
            mirror: Default::default(),
            applied: watch::Sender::new(0),
            stale: watch::Sender::new(false),
            synced: watch::Sender::new(false),
            lease: watch::Sender::new(0),
        }
    }

    pub fn is_stale(&self) -> bool {
        *self.stale.borrow()
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// The etcd store's write: the rules decide on the instance as the mirror shows it,
    /// and the write holds only while etcd still has it so (see [`EtcdStore::unchanged`]).
    /// A renewal writes nothing but, at most, which replica holds the lease.
    async fn apply_decision(
        &self,
        service: &str,
        id: &str,
        decide: Decide<'_>,
    ) -> Result<Applied, WriteError> {
        self.writable()?;
        let before = self.catalog.entry(service, id);
        match decide(before.as_ref())? {
            Decision::Renew {
                status,
                output,
                now,
            } => {
                self.claim(service, id).await?;
                let renew = |entry: &mut Entry| {
                    entry.renew(status, output, now);
                    entry.clone()
                };
                let (entry, index) = self
                    .catalog
                    .change_entry(service, id, renew)
                    .ok_or(Refusal::Unknown)?;
                Ok(Applied {
                    entry: Some(entry),
                    index,
                })
            }
            Decision::Put { entry, change } => {
                let index = self.write_instance(service, id, &entry, change).await?;
                Ok(Applied {
                    entry: Some(*entry),
                    index,
                })
            }
            Decision::Remove { change } => {
                let ops = self.removal(service, id, &change);
                let revision = self.checked_write(service, id, &ops).await?;
                Ok(Applied {
                    entry: None,
                    index: revision as u64,
                })
            }
        }
    }

    /// Writes an instance, takes it over, and (when its listing changed) moves the
    /// service's index with the event every replica will record; only while the instance
    /// is as the mirror shows it, so a write checked against the mirror (its owner, its
    /// generation) cannot overwrite what another replica wrote meanwhile.
    async fn write_instance(
        &self,
        service: &str,
        id: &str,
        entry: &Entry,
        change: Option<Change>,
    ) -> Result<u64, WriteError> {
        let record = Record {
            stored: StoredInstance::of(entry),
            expired_at: None,
        };
        let mut ops = vec![
            Op::Put {
                key: self.instance_key(service, id),
                value: serde_json::to_vec(&record).expect("records serialize"),
                lease: 0,
            },
            self.owner_op(service, id),
        ];
        ops.extend(change.map(|c| self.service_op(service, id, &c)));
        let revision = self.checked_write(service, id, &ops).await?;
        Ok(self
            .catalog
            .listing(service, true)
            .index
            .max(revision as u64))
    }

    /// Writes one policy document (or deletes it) under `policies/{service}/{kind}`;
    /// documents are whole, so the last writer wins. Answers once the mirror shows it.
    async fn write_policy(
        &self,
        service: &str,
        kind: PolicyKind,
        document: Option<Document>,
    ) -> Result<Option<u64>, WriteError> {
        self.writable()?;
        let key = self.policy_key(service, kind);
        let op = match &document {
            Some(document) => Op::Put {
                key,
                value: serde_json::to_vec(document).expect("policy documents serialize"),
                lease: 0,
            },
            None if self.catalog.policy(service).get(kind).is_none() => return Ok(None),
            None => Op::Delete(key),
        };
        let (_, revision) = self.etcd.txn(&[], &[op]).await.map_err(WriteError::Etcd)?;
        self.read_your_write(revision).await;
        Ok(Some(self.catalog.policy(service).index))
    }

    /// Applies `ops` if the instance is still as the mirror saw it (see
    /// [`EtcdStore::unchanged`]), and waits until the mirror shows the outcome, so a read
    /// after it (or the next sweep's decision) sees it. Returns whether it was applied,
    /// and the revision.
    async fn conditional(
        &self,
        service: &str,
        id: &str,
        ops: &[Op],
    ) -> Result<(bool, i64), EtcdError> {
        let compare = self.unchanged(service, id);
        let (done, revision) = self.etcd.txn(&[compare], ops).await?;
        self.read_your_write(revision).await;
        Ok((done, revision))
    }

    /// A request's write through [`EtcdStore::conditional`]: another replica's change
    /// meanwhile is [`WriteError::Contended`].
    async fn checked_write(&self, service: &str, id: &str, ops: &[Op]) -> Result<i64, WriteError> {
        match self.conditional(service, id, ops).await {
            Ok((true, revision)) => Ok(revision),
            Ok((false, _)) => Err(WriteError::Contended),
            Err(e) => Err(WriteError::Etcd(e)),
        }
    }

    /// Makes this replica the owner of an instance's lease, unless it already is.
    async fn claim(&self, service: &str, id: &str) -> Result<(), WriteError> {
        if self.owns(service, id) {
            return Ok(());
        }
        let op = self.owner_op(service, id);
        let (_, revision) = self.etcd.txn(&[], &[op]).await.map_err(WriteError::Etcd)?;
        self.read_your_write(revision).await;
        Ok(())
    }

    /// The operations that remove an instance with `change` as its service's event.
    fn removal(&self, service: &str, id: &str, change: &Change) -> Vec<Op> {
        vec![
            Op::Delete(self.instance_key(service, id)),
            Op::Delete(self.owner_key(service, id)),
            self.service_op(service, id, change),
        ]
    }

    fn writable(&self) -> Result<(), WriteError> {
        // Without its etcd lease the replica could not mark the leases it takes over.
        if self.is_stale() || !self.is_synced() || *self.lease.borrow() == 0 {
            Err(WriteError::Stale)
        } else {
            Ok(())
        }
    }

    /// Waits until the mirror shows `revision`, so a read that follows the answer sees
    /// the write; bounded, in case the watch is behind.
    async fn read_your_write(&self, revision: i64) {
        let started = Instant::now();
        let mut applied = self.applied.subscribe();
        let shown = tokio::time::timeout(READ_YOUR_WRITE, applied.wait_for(|a| *a >= revision));
        if shown.await.is_ok() {
            self.metrics
                .watch_lag
                .observe(started.elapsed().as_secs_f64());
        } else {
            tracing::warn!(
                revision,
                "the watch has not shown this write yet; answering anyway"
            );
        }
    }

    /// The mirror's bookkeeping. Never taken while waiting for a catalog lock: the sweep
    /// holds a service's lock when it asks who owns an instance.
    fn mirror(&self) -> std::sync::MutexGuard<'_, mirror::Mirror> {
        self.mirror
            .lock()
            .expect("the mirror lock is never poisoned")
    }

    fn owns(&self, service: &str, id: &str) -> bool {
        let mirror = self.mirror();
        mirror.owner(service, id) == Some(self.replica.as_str())
    }

    fn owner_op(&self, service: &str, id: &str) -> Op {
        Op::Put {
            key: self.owner_key(service, id),
            value: self.replica.clone().into_bytes(),
            lease: *self.lease.borrow(),
        }
    }

    /// The write of `services/{service}` that moves its index, carrying the event about
    /// instance `id` every replica records.
    fn service_op(&self, service: &str, id: &str, change: &Change) -> Op {
        let change = ServiceChange {
            kind: change.kind,
            instance: id.to_owned(),
            detail: change.detail.clone(),
        };
        Op::Put {
            key: format!("{}services/{service}", self.prefix),
            value: serde_json::to_vec(&change).expect("changes serialize"),
            lease: 0,
        }
    }

    fn instance_key(&self, service: &str, id: &str) -> String {
        format!("{}instances/{service}/{id}", self.prefix)
    }

    fn policy_key(&self, service: &str, kind: PolicyKind) -> String {
        format!("{}policies/{service}/{kind}", self.prefix)
    }

    fn owner_key(&self, service: &str, id: &str) -> String {
        format!("{}owners/{service}/{id}", self.prefix)
    }

    /// A compare that holds while the instance is as the mirror last saw it.
    fn unchanged(&self, service: &str, id: &str) -> Compare {
        let mirror = self.mirror();
        let revision = mirror.revision(service, id).unwrap_or(0);
        Compare::ModRevision(self.instance_key(service, id), revision)
    }
}

// === impl Store for EtcdStore ===

impl Store for EtcdStore {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn status(&self) -> StoreStatus {
        StoreStatus {
            kind: "etcd".to_owned(),
            stale: self.is_stale(),
            revision: Some(*self.applied.borrow()),
            endpoint: Some(self.etcd.endpoint()),
        }
    }

    fn stale(&self) -> bool {
        self.is_stale()
    }

    fn synced(&self) -> bool {
        self.is_synced()
    }

    fn apply<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        decide: Decide<'a>,
    ) -> Pending<'a, Result<Applied, WriteError>> {
        Box::pin(self.apply_decision(service, id, decide))
    }

    fn put_policy<'a>(
        &'a self,
        service: &'a str,
        kind: PolicyKind,
        document: Option<Document>,
    ) -> Pending<'a, Result<Option<u64>, WriteError>> {
        Box::pin(self.write_policy(service, kind, document))
    }
}
