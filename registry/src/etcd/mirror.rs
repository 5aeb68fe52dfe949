//! The replica's catalog as a mirror of etcd: changes from the watch, or a full read
//! after a gap the watch cannot fill, applied to the in-memory [`Catalog`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_registry_api::policy::{Document, PolicyKind, ServicePolicy};
use mesh_registry_api::validate;
use tokio::time::Instant;

use super::client::{Change, Kv};
use super::{EtcdStore, Record, ServiceChange};
use crate::catalog::Instances;
use crate::entry::{Entry, LeaseState};
use crate::store;

/// How far away "never" is for a lease another live replica owns: it expires it, not us.
const OWNED_ELSEWHERE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What the replica knows of etcd besides the catalog itself.
#[derive(Default)]
pub(super) struct Mirror {
    /// The revision each instance's record was last written at, for transactions that
    /// must not overwrite a newer change.
    revisions: HashMap<(String, String), i64>,
    /// Which replica owns each instance's lease.
    owners: HashMap<(String, String), String>,
}

// === impl Mirror ===

impl Mirror {
    pub(super) fn owner(&self, service: &str, id: &str) -> Option<&str> {
        self.owners
            .get(&(service.to_owned(), id.to_owned()))
            .map(String::as_str)
    }

    pub(super) fn revision(&self, service: &str, id: &str) -> Option<i64> {
        self.revisions
            .get(&(service.to_owned(), id.to_owned()))
            .copied()
    }
}

/// A key under the prefix, by what it holds.
enum Key<'a> {
    Instance(&'a str, &'a str),
    Owner(&'a str, &'a str),
    Service(&'a str),
    Policy(&'a str, PolicyKind),
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Applies one message of the watch: the changes of one or more revisions.
    pub(super) fn apply(&self, changes: Vec<Change>) {
        let mut applied = *self.applied.borrow();
        for change in changes {
            match change {
                Change::Put(kv) => {
                    applied = applied.max(kv.mod_revision);
                    self.apply_put(&kv);
                }
                Change::Delete { key, revision } => {
                    applied = applied.max(revision);
                    self.apply_delete(&key, revision);
                }
            }
        }
        self.set_applied(applied);
    }

    /// Replaces the mirror with etcd's whole state read at `revision`: at start, and when
    /// the watch fell so far behind that etcd compacted what it missed. Records no events
    /// (they are not known); wakes the watchers of every service whose index moved.
    pub(super) fn resync(&self, revision: i64, kvs: Vec<Kv>) {
        let mut records: BTreeMap<String, BTreeMap<String, (Record, i64)>> = BTreeMap::new();
        let mut indexes: HashMap<String, i64> = HashMap::new();
        let mut owners = HashMap::new();
        let mut policies: BTreeMap<String, ServicePolicy> = BTreeMap::new();
        for kv in &kvs {
            match self.key(&kv.key) {
                Some(Key::Instance(service, id)) => {
                    if let Some(record) = self.record(service, id, kv) {
                        records
                            .entry(service.to_owned())
                            .or_default()
                            .insert(id.to_owned(), (record, kv.mod_revision));
                    }
                }
                Some(Key::Owner(service, id)) => {
                    let owner = String::from_utf8_lossy(&kv.value).into_owned();
                    owners.insert((service.to_owned(), id.to_owned()), owner);
                }
                Some(Key::Service(service)) => {
                    indexes.insert(service.to_owned(), kv.mod_revision);
                }
                Some(Key::Policy(service, kind)) => {
                    if let Some(document) = self.policy(kind, kv) {
                        policies
                            .entry(service.to_owned())
                            .or_insert_with(|| ServicePolicy::new(service, 0))
                            .set(document);
                    }
                }
                None => {}
            }
        }
        let mut revisions = HashMap::new();
        let known = self.catalog.service_names();
        // Deletions the watch missed are not known by revision: a policy that differs
        // from the one held takes the revision of the read, which no watcher has seen.
        for service in &known {
            let documents = policies
                .remove(service)
                .unwrap_or_else(|| ServicePolicy::new(service.as_str(), 0));
            self.catalog
                .mirror_policy(service, documents, revision as u64);
        }
        for (service, documents) in policies {
            self.catalog
                .mirror_policy(&service, documents, revision as u64);
        }
        let services: std::collections::BTreeSet<String> =
            known.into_iter().chain(records.keys().cloned()).collect();
        let now = Instant::now();
        for service in services {
            let instances = records.remove(&service).unwrap_or_default();
            let rebuild = |mut held: Instances| {
                let mut entries = Instances::new();
                for (id, (record, mod_revision)) in instances {
                    let key = (service.clone(), id.clone());
                    let owner = owners.get(&key).map(String::as_str);
                    // A lease this replica holds keeps its deadline across the read.
                    let kept = held.remove(&id).filter(|e| {
                        owner == Some(self.replica.as_str())
                            && matches!(e.lease, LeaseState::Live { .. })
                            && record.expired_at.is_none()
                    });
                    let entry = kept.unwrap_or_else(|| self.entry_of(record, owner, now));
                    revisions.insert(key, mod_revision);
                    entries.insert(id, entry);
                }
                entries
            };
            let index = indexes.get(&service).copied().unwrap_or(0) as u64;
            self.catalog.mirror_service(&service, rebuild, index);
        }
        // Taken after the catalog's locks are released: the sweep takes them in the other
        // order (a service's shard, then this).
        let mut mirror = self.mirror();
        mirror.owners = owners;
        mirror.revisions = revisions;
        drop(mirror);
        self.set_applied(revision);
    }

    fn apply_put(&self, kv: &Kv) {
        let revision = kv.mod_revision as u64;
        match self.key(&kv.key) {
            Some(Key::Instance(service, id)) => {
                let Some(record) = self.record(service, id, kv) else {
                    return;
                };
                let mut mirror = self.mirror();
                let key = (service.to_owned(), id.to_owned());
                mirror.revisions.insert(key.clone(), kv.mod_revision);
                let owner = mirror.owners.get(&key).map(String::as_str);
                let entry = self.entry_of(record, owner, Instant::now());
                drop(mirror);
                self.catalog.mirror_put(service, id, entry);
            }
            Some(Key::Owner(service, id)) => {
                let owner = String::from_utf8_lossy(&kv.value).into_owned();
                let elsewhere = owner != self.replica;
                self.mirror()
                    .owners
                    .insert((service.to_owned(), id.to_owned()), owner);
                self.set_deadline(service, id, elsewhere);
            }
            Some(Key::Policy(service, kind)) => {
                if let Some(document) = self.policy(kind, kv) {
                    self.catalog
                        .set_policy(service, kind, Some(document), revision);
                }
            }
            Some(Key::Service(service)) => {
                // The event names an instance: held to the API's rule for ids, as keys are.
                let change = serde_json::from_slice::<ServiceChange>(&kv.value)
                    .ok()
                    .filter(|c| validate::instance_id(&c.instance).is_ok());
                let event = change.as_ref().map(|c| {
                    let event = store::Change {
                        kind: c.kind,
                        detail: c.detail.clone(),
                    };
                    (c.instance.as_str(), event)
                });
                self.catalog.advance(service, revision, event);
            }
            None => {}
        }
    }

    fn apply_delete(&self, key: &str, revision: i64) {
        match self.key(key) {
            Some(Key::Policy(service, kind)) => {
                self.catalog
                    .set_policy(service, kind, None, revision as u64);
            }
            Some(Key::Instance(service, id)) => {
                self.mirror()
                    .revisions
                    .remove(&(service.to_owned(), id.to_owned()));
                self.catalog.mirror_remove(service, id);
            }
            Some(Key::Owner(service, id)) => {
                self.mirror()
                    .owners
                    .remove(&(service.to_owned(), id.to_owned()));
                // Nobody owns it now: it expires one TTL from now unless a replica takes
                // it over (its sidecar's next heartbeat does).
                self.set_deadline(service, id, false);
            }
            Some(Key::Service(_)) | None => {}
        }
    }

    /// Starts a live lease afresh for its new owner (an expired one keeps its removal
    /// time): see [`live_deadline`].
    fn set_deadline(&self, service: &str, id: &str, elsewhere: bool) {
        self.catalog.change_entry(service, id, |entry| {
            if matches!(entry.lease, LeaseState::Live { .. }) {
                let expires_at = live_deadline(elsewhere, Instant::now(), entry.registration.ttl);
                entry.lease = LeaseState::Live { expires_at };
            }
        });
    }

    /// The catalog entry of a record: an expired one is removed `--critical-grace` after
    /// its lease ran out; a live one holds a lease as [`live_deadline`] says.
    fn entry_of(&self, record: Record, owner: Option<&str>, now: Instant) -> Entry {
        let lease = match record.expired_at {
            Some(expired_at) => {
                let since = since_epoch_ms(SystemTime::now()).saturating_sub(expired_at);
                let left = self
                    .catalog
                    .critical_grace()
                    .saturating_sub(Duration::from_millis(since));
                LeaseState::Expired {
                    remove_at: now + left,
                }
            }
            None => {
                let elsewhere = owner.is_some_and(|o| o != self.replica);
                let ttl = record.stored.registration.ttl;
                LeaseState::Live {
                    expires_at: live_deadline(elsewhere, now, ttl),
                }
            }
        };
        record.stored.into_entry(lease)
    }

    /// The record of `service`/`id`, held to the API's rules like a snapshot's entries:
    /// a key written into etcd by hand (or by another version) must not reach sidecars
    /// with what the API would refuse.
    fn record(&self, service: &str, id: &str, kv: &Kv) -> Option<Record> {
        let record = serde_json::from_slice::<Record>(&kv.value)
            .map_err(|e| e.to_string())
            .and_then(|record| record.stored.check(service, id).map(|()| record));
        match record {
            Ok(record) => Some(record),
            Err(reason) => {
                tracing::warn!(key = %kv.key, %reason, "ignoring an instance record the API would refuse");
                None
            }
        }
    }

    /// The policy document of a `policies/` key, held to the API's rules: one written by
    /// hand, or by a newer version, is not applied (the one held stays).
    fn policy(&self, kind: PolicyKind, kv: &Kv) -> Option<Document> {
        match Document::parse(kind, &kv.value) {
            Ok(document) => Some(document),
            Err(e) => {
                tracing::warn!(key = %kv.key, field = %e.field, reason = %e.message, "ignoring a policy document the API would refuse");
                None
            }
        }
    }

    /// What a key under the prefix holds; `None` for keys of no kind we write, and for
    /// names the API refuses: a key written by hand must not create a service, an event
    /// or an owner that no request could.
    fn key<'a>(&self, key: &'a str) -> Option<Key<'a>> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let (kind, rest) = rest.split_once('/')?;
        let named = || {
            let (service, id) = rest.split_once('/')?;
            let refused = validate::service_name(service)
                .and_then(|()| validate::instance_id(id))
                .err();
            refused.map_or(Some((service, id)), |reason| ignored(key, &reason))
        };
        match kind {
            "instances" => named().map(|(s, id)| Key::Instance(s, id)),
            "owners" => named().map(|(s, id)| Key::Owner(s, id)),
            "policies" => {
                let (service, kind) = rest.split_once('/')?;
                let refused = validate::service_name(service).err();
                match (refused, kind.parse::<PolicyKind>()) {
                    (Some(reason), _) | (None, Err(reason)) => ignored(key, &reason),
                    (None, Ok(kind)) => Some(Key::Policy(service, kind)),
                }
            }
            "services" => match validate::service_name(rest) {
                Ok(()) => Some(Key::Service(rest)),
                Err(reason) => ignored(key, &reason),
            },
            _ => None,
        }
    }

    fn set_applied(&self, revision: i64) {
        self.applied.send_if_modified(|applied| {
            let newer = revision > *applied;
            if newer {
                *applied = revision;
            }
            newer
        });
        self.metrics.revision.set(*self.applied.borrow());
    }
}

fn ignored<T>(key: &str, reason: &str) -> Option<T> {
    tracing::warn!(%key, %reason, "ignoring an etcd key whose name the API would refuse");
    None
}

/// The deadline of a live lease: one TTL from now when this replica owns it or nobody
/// does (its owner went away and it is ours to expire), never when another live replica
/// owns it (that replica expires it).
fn live_deadline(elsewhere: bool, now: Instant, ttl: Duration) -> Instant {
    if elsewhere {
        now + OWNED_ELSEWHERE
    } else {
        now + ttl
    }
}

pub(super) fn since_epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
