//! The catalog: service → instances, each holding a lease, and the indexes that blocking
//! queries wait on.
//!
//! Indexes come from one counter shared by every service, so an index never repeats or
//! goes backwards, even across a service being emptied and refilled. A service left empty
//! (and unwatched) is dropped after a while, so the catalog's memory follows what is
//! registered, not every name ever registered; the highest index a dropped service had
//! stays behind as a floor, which every name the catalog does not hold reports, so no
//! index a client has seen is ever answered with a smaller one. A service's index
//! moves only when what its listing shows changes (not on a plain lease renewal), and each
//! service has its own `watch` channel, so a change wakes only that service's watchers.
//! The catalog index (for `GET /v1/services`) moves on every change of any service.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use mesh_registry_api::policy::{Document, PolicyKind, ServicePolicy};
use mesh_registry_api::{
    Instance, Lease, Registration, ServiceList, ServiceListing, ServiceSummary, Status, StoreStatus,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::Events;

pub use crate::entry::{Claim, Entry, LeaseState, Refusal};
use crate::store::{self, Applied, Change, Decide, Decision, Pending, Store, WriteError};

/// The index of a service the catalog never held, before any service was dropped. Every
/// real change is given a larger one, so a watcher of a name that does not exist yet
/// blocks until it appears.
pub const NEVER_EXISTED: u64 = 1;

/// How long a service stays in the catalog once it has no instance and nobody watches
/// it: long enough that instances restarting together do not make it churn.
pub const EMPTY_SERVICE_GRACE: Duration = Duration::from_secs(60);

/// One service: its instances (ordered by id, so listings are stable) and its index.
#[derive(Debug)]
struct Service {
    instances: Instances,
    index: u64,
    /// Carries `index`; blocking queries on this service hold receivers. Made for the
    /// first one, dropped by a sweep once none is left: most services have no watcher
    /// most of the time, and a channel costs a few hundred bytes.
    tx: Option<watch::Sender<u64>>,
    /// Since when a sweep has seen it empty and unwatched; dropped a grace later.
    idle_since: Option<Instant>,
    /// Its policy documents, and the channel their watchers hold: made for the first
    /// document or watcher (most services have neither).
    policy: Option<Box<Policy>>,
}

/// One service's policy documents (`documents.index` is their own index, which moves
/// when any of them changes) and the channel carrying it to blocking queries.
#[derive(Debug)]
struct Policy {
    documents: ServicePolicy,
    tx: Option<watch::Sender<u64>>,
}

// === impl Service ===

impl Service {
    /// The policy record, made at `floor` when missing.
    fn policy(&mut self, service: &str, floor: u64) -> &mut Policy {
        self.policy.get_or_insert_with(|| {
            Box::new(Policy {
                documents: ServicePolicy::new(service, floor),
                tx: None,
            })
        })
    }

    /// Whether a sweep must keep it: it holds something, or someone waits on it.
    fn held(&self) -> bool {
        !self.instances.is_empty() || self.tx.is_some() || self.policy.is_some()
    }

    /// The largest index it reports.
    fn highest_index(&self) -> u64 {
        let policy = self.policy.as_ref().map_or(0, |p| p.documents.index);
        self.index.max(policy)
    }
}

/// One service's instances, by id (ordered, so listings are stable).
pub(crate) type Instances = BTreeMap<String, Entry>;

/// Why a heartbeat or deregistration failed.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownInstance;

/// The whole registry state. Methods take `now` so lease logic runs on tokio's clock
/// (paused in tests); wall-clock times are only for display.
#[derive(Debug)]
pub struct Catalog {
    /// A DashMap so writers to different services do not contend; no guard is ever held
    /// across an `.await`. Private: every change goes through a method of the catalog.
    services: DashMap<String, Service>,
    /// Last index handed out.
    last_index: AtomicU64,
    /// The highest index of a service dropped for being empty: what names the catalog
    /// does not hold report (at least [`NEVER_EXISTED`]).
    floor: AtomicU64,
    catalog_tx: watch::Sender<u64>,
    /// How long an expired instance stays listed as critical before removal.
    critical_grace: Duration,
    /// The timeline of recent changes, recorded where they happen.
    events: Events,
}

// === impl Catalog ===

impl Catalog {
    pub fn new(critical_grace: Duration) -> Self {
        Self::starting_at(1, critical_grace)
    }

    /// A catalog whose indexes continue from `index` (after a restore).
    pub(crate) fn starting_at(index: u64, critical_grace: Duration) -> Self {
        let index = index.max(1);
        Catalog {
            services: DashMap::new(),
            last_index: AtomicU64::new(index),
            // After a restore, a name the snapshot does not hold may have had any index
            // up to the snapshot's.
            floor: AtomicU64::new(index),
            catalog_tx: watch::Sender::new(index),
            critical_grace,
            events: Events::new(),
        }
    }

    /// The last index handed out by any change.
    pub fn index(&self) -> u64 {
        self.last_index.load(Ordering::SeqCst)
    }

    pub(crate) fn critical_grace(&self) -> Duration {
        self.critical_grace
    }

    /// The timeline of recent changes.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Creates or replaces an instance for `owner` ([`store::register`]), as of `now`.
    pub fn register(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
        owner: &str,
        now: Instant,
    ) -> Result<(Instance, u64), Refusal> {
        self.apply_now(service, id, |before| {
            store::register(before, registration, owner, now)
        })?
        .registered(id)
    }

    /// Renews a lease for the claim's writer ([`store::heartbeat`]), as of `now`.
    pub fn heartbeat(
        &self,
        service: &str,
        id: &str,
        claim: Claim<'_>,
        status: Option<Status>,
        output: Option<String>,
        now: Instant,
    ) -> Result<(Lease, u64), Refusal> {
        self.apply_now(service, id, |before| {
            store::heartbeat(before, claim, status, output, now)
        })?
        .renewed(service, id)
    }

    /// Removes an instance for the claim's writer ([`store::deregister`]); returns the
    /// service's new index.
    pub fn deregister(&self, service: &str, id: &str, claim: Claim<'_>) -> Result<u64, Refusal> {
        let applied = self.apply_now(service, id, |before| store::deregister(before, claim))?;
        Ok(applied.index)
    }

    /// The embedded store's write: what `decide` makes of the instance, applied under the
    /// service's lock, so nothing comes between the rules' look and the change. A write
    /// the rules refuse leaves no placeholder behind for a service never registered.
    pub(crate) fn apply_now(
        &self,
        service: &str,
        id: &str,
        decide: impl FnOnce(Option<&Entry>) -> Result<Decision, Refusal>,
    ) -> Result<Applied, Refusal> {
        let (mut svc, decision) = match self.services.get_mut(service) {
            Some(svc) => {
                let decision = decide(svc.instances.get(id))?;
                (svc, decision)
            }
            None => {
                let decision = decide(None)?;
                (self.service_mut(service), decision)
            }
        };
        let (entry, change) = match decision {
            Decision::Renew {
                status,
                output,
                now,
            } => {
                let entry = svc.instances.get_mut(id).ok_or(Refusal::Unknown)?;
                entry.renew(status, output, now);
                (Some(entry.clone()), None)
            }
            Decision::Put { entry, change } => {
                svc.instances.insert(id.to_owned(), (*entry).clone());
                (Some(*entry), change)
            }
            Decision::Remove { change } => {
                svc.instances.remove(id);
                (None, Some(change))
            }
        };
        if let Some(change) = change {
            self.events.record(change.kind, service, id, change.detail);
            self.bump(&mut svc);
        }
        Ok(Applied {
            entry,
            index: svc.index,
        })
    }

    /// The full listing of one service: passing instances only, or every instance.
    pub fn listing(&self, service: &str, all: bool) -> ServiceListing {
        let Some(svc) = self.services.get(service) else {
            return ServiceListing {
                service: service.to_owned(),
                exists: false,
                index: self.floor(),
                instances: Vec::new(),
            };
        };
        ServiceListing {
            service: service.to_owned(),
            exists: !svc.instances.is_empty(),
            index: svc.index,
            instances: svc
                .instances
                .iter()
                .filter(|(_, e)| all || e.status() == Status::Passing)
                .map(|(id, e)| e.listed(id))
                .collect(),
        }
    }

    /// Every service that has at least one instance, by name.
    pub fn service_list(&self) -> ServiceList {
        // Read the index first: a change racing with the scan then shows up as a newer
        // index on the next blocking query rather than being missed.
        let index = *self.catalog_tx.borrow();
        let mut services: Vec<ServiceSummary> = self
            .services
            .iter()
            .filter(|svc| !svc.instances.is_empty())
            .map(|svc| ServiceSummary {
                name: svc.key().clone(),
                index: svc.index,
                instances: svc.instances.len(),
                passing: svc
                    .instances
                    .values()
                    .filter(|e| e.status() == Status::Passing)
                    .count(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        ServiceList { index, services }
    }

    /// Instance counts per service and status, for the metrics.
    pub fn counts(&self) -> Vec<(String, Status, usize)> {
        let mut out = Vec::new();
        for svc in self.services.iter() {
            for status in [Status::Passing, Status::Warning, Status::Critical] {
                let n = svc
                    .instances
                    .values()
                    .filter(|e| e.status() == status)
                    .count();
                if n > 0 {
                    out.push((svc.key().clone(), status, n));
                }
            }
        }
        out
    }

    /// A receiver of one service's index, for a blocking query. Watching a service that
    /// does not exist yet is allowed: its placeholder wakes the watcher when it appears.
    pub fn subscribe(&self, service: &str) -> watch::Receiver<u64> {
        let mut svc = self.service_mut(service);
        let index = svc.index;
        svc.tx
            .get_or_insert_with(|| watch::Sender::new(index))
            .subscribe()
    }

    /// A receiver of the catalog index.
    pub fn subscribe_catalog(&self) -> watch::Receiver<u64> {
        self.catalog_tx.subscribe()
    }

    /// Drops the services that have had no instance and no watcher for
    /// [`EMPTY_SERVICE_GRACE`] (placeholders that watchers of unknown names left behind
    /// among them), raising the floor to their index so that none reports a smaller one
    /// afterwards. Called by each lease sweep.
    pub(crate) fn collect_empty(&self, now: Instant) {
        let mut dropped = false;
        self.services.retain(|_, svc| {
            if svc.instances.is_empty() {
                // An emptied map keeps its node (about 2.5 KB with room for eleven
                // instances); a new one holds nothing until its first instance.
                svc.instances = BTreeMap::new();
            }
            if svc.tx.as_ref().is_some_and(|tx| tx.receiver_count() == 0) {
                svc.tx = None;
            }
            if let Some(policy) = &mut svc.policy {
                if policy
                    .tx
                    .as_ref()
                    .is_some_and(|tx| tx.receiver_count() == 0)
                {
                    policy.tx = None;
                }
                if policy.tx.is_none() && policy.documents.is_empty() {
                    let index = policy.documents.index;
                    self.floor.fetch_max(index, Ordering::SeqCst);
                    svc.policy = None;
                }
            }
            if svc.held() {
                svc.idle_since = None;
                return true;
            }
            let since = *svc.idle_since.get_or_insert(now);
            if now.saturating_duration_since(since) < EMPTY_SERVICE_GRACE {
                return true;
            }
            self.floor.fetch_max(svc.highest_index(), Ordering::SeqCst);
            dropped = true;
            false
        });
        // The map's tables keep the size they grew to; give it back once mostly empty.
        if dropped && self.services.len() * 4 < self.services.capacity() {
            self.services.shrink_to_fit();
        }
    }

    /// What a name the catalog does not hold reports as its index.
    fn floor(&self) -> u64 {
        self.floor.load(Ordering::SeqCst)
    }

    /// The service's entry, created as a placeholder when missing.
    fn service_mut(&self, service: &str) -> dashmap::mapref::one::RefMut<'_, String, Service> {
        if let Some(svc) = self.services.get_mut(service) {
            return svc;
        }
        let floor = self.floor();
        self.services
            .entry(service.to_owned())
            .or_insert_with(|| Service {
                instances: BTreeMap::new(),
                index: floor,
                tx: None,
                idle_since: None,
                policy: None,
            })
    }

    /// Puts back a service read from a snapshot, at the snapshot's index.
    pub(crate) fn restore_service(
        &self,
        service: &str,
        instances: BTreeMap<String, Entry>,
        index: u64,
    ) {
        let mut svc = self.service_mut(service);
        svc.instances = instances;
        svc.index = index;
        if let Some(tx) = &svc.tx {
            tx.send_replace(index);
        }
    }

    /// A copy of one instance as the catalog holds it.
    pub(crate) fn entry(&self, service: &str, id: &str) -> Option<Entry> {
        self.services.get(service)?.instances.get(id).cloned()
    }

    /// Reads every service's instances (each under its shard's lock, never across an
    /// `.await`), services with none included.
    pub(crate) fn each_service(&self, mut read: impl FnMut(&str, &Instances)) {
        for svc in self.services.iter() {
            read(svc.key(), &svc.instances);
        }
    }

    /// Changes every service's instances in place; a service for which `change` returns
    /// true has changed what its listing shows: its index moves and its watchers wake.
    pub(crate) fn change_each(&self, mut change: impl FnMut(&str, &mut Instances) -> bool) {
        for mut svc in self.services.iter_mut() {
            let (service, state) = svc.pair_mut();
            if change(service, &mut state.instances) {
                self.bump(state);
            }
        }
    }

    /// Changes one instance in place without moving any index: for what listings do not
    /// show (its lease). Returns what `change` returned and the service's index.
    pub(crate) fn change_entry<R>(
        &self,
        service: &str,
        id: &str,
        change: impl FnOnce(&mut Entry) -> R,
    ) -> Option<(R, u64)> {
        let mut svc = self.services.get_mut(service)?;
        let index = svc.index;
        let entry = svc.instances.get_mut(id)?;
        Some((change(entry), index))
    }

    /// Puts an instance as a mirror of another store shows it. Its index moves with the
    /// change that store records ([`Catalog::advance`]), not here.
    pub(crate) fn mirror_put(&self, service: &str, id: &str, entry: Entry) {
        self.service_mut(service)
            .instances
            .insert(id.to_owned(), entry);
    }

    /// Removes an instance as a mirror of another store shows it (see [`Catalog::mirror_put`]).
    pub(crate) fn mirror_remove(&self, service: &str, id: &str) {
        if let Some(mut svc) = self.services.get_mut(service) {
            svc.instances.remove(id);
        }
    }

    /// Replaces one service's instances with what `rebuild` makes of them (a mirror read
    /// afresh) and moves its index to `index` if that is larger.
    pub(crate) fn mirror_service(
        &self,
        service: &str,
        rebuild: impl FnOnce(Instances) -> Instances,
        index: u64,
    ) {
        let mut svc = self.service_mut(service);
        let held = std::mem::take(&mut svc.instances);
        svc.instances = rebuild(held);
        if index > svc.index {
            self.bump_to(&mut svc, index);
        }
    }

    /// Moves a service's index to one given from outside (an etcd revision, which only
    /// grows) if larger, and wakes its watchers; records `change` about `id` first.
    pub(crate) fn advance(&self, service: &str, index: u64, change: Option<(&str, Change)>) {
        let mut svc = self.service_mut(service);
        if let Some((id, change)) = change {
            self.events.record(change.kind, service, id, change.detail);
        }
        if index > svc.index {
            self.bump_to(&mut svc, index);
        }
    }

    /// Every policy document of `service`, with their index.
    pub fn policy(&self, service: &str) -> ServicePolicy {
        match self.services.get(service) {
            Some(svc) => match &svc.policy {
                Some(policy) => policy.documents.clone(),
                None => ServicePolicy::new(service, self.floor()),
            },
            None => ServicePolicy::new(service, self.floor()),
        }
    }

    /// A receiver of one service's policy index, for a blocking query (a service that
    /// has none yet included: its placeholder wakes the watcher when one is written).
    pub fn subscribe_policy(&self, service: &str) -> watch::Receiver<u64> {
        let floor = self.floor();
        let mut svc = self.service_mut(service);
        let policy = svc.policy(service, floor);
        let index = policy.documents.index;
        policy
            .tx
            .get_or_insert_with(|| watch::Sender::new(index))
            .subscribe()
    }

    /// The embedded store's policy write: stores `document` (or removes the one of
    /// `kind`) under the next index. `None` when there was nothing to remove.
    pub(crate) fn put_policy(
        &self,
        service: &str,
        kind: PolicyKind,
        document: Option<Document>,
    ) -> Option<u64> {
        let index = self.last_index.fetch_add(1, Ordering::SeqCst) + 1;
        self.set_policy(service, kind, document, index)
    }

    /// Sets one policy document as of `index` (the embedded store's next index, or an
    /// etcd revision) and wakes its watchers and the catalog's. Returns the service's
    /// policy index then; `None` when removing a document there was not.
    pub(crate) fn set_policy(
        &self,
        service: &str,
        kind: PolicyKind,
        document: Option<Document>,
        index: u64,
    ) -> Option<u64> {
        let floor = self.floor();
        let mut svc = self.service_mut(service);
        let policy = svc.policy(service, floor);
        let changed = match document {
            Some(document) => {
                policy.documents.set(document);
                true
            }
            None => policy.documents.remove(kind),
        };
        changed.then(|| self.set_policy_index(policy, index))
    }

    /// Replaces every policy document of `service` with what a mirror read afresh; moves
    /// its index to `index` when they differ.
    pub(crate) fn mirror_policy(&self, service: &str, documents: ServicePolicy, index: u64) {
        let floor = self.floor();
        let mut svc = self.service_mut(service);
        if svc.policy.is_none() && documents.is_empty() {
            return;
        }
        let policy = svc.policy(service, floor);
        let held = &policy.documents;
        let same = (
            held.routes.as_ref(),
            held.intentions.as_ref(),
            held.limits.as_ref(),
        ) == (
            documents.routes.as_ref(),
            documents.intentions.as_ref(),
            documents.limits.as_ref(),
        );
        if !same {
            let at = policy.documents.index;
            policy.documents = ServicePolicy {
                index: at,
                ..documents
            };
            self.set_policy_index(policy, index);
        }
    }

    /// Moves a policy's index to `index` (or just past its own, so it never goes back).
    fn set_policy_index(&self, policy: &mut Policy, index: u64) -> u64 {
        let index = index.max(policy.documents.index + 1);
        self.last_index.fetch_max(index, Ordering::SeqCst);
        policy.documents.index = index;
        if let Some(tx) = &policy.tx {
            tx.send_replace(index);
        }
        // The service list's watchers (the dashboard) show policies too; the snapshot
        // writer follows the same channel.
        self.wake_catalog(index);
        index
    }

    /// Every service's policy documents, for the snapshot.
    pub(crate) fn policies(&self) -> Vec<ServicePolicy> {
        let mut all: Vec<ServicePolicy> = self
            .services
            .iter()
            .filter_map(|svc| svc.policy.as_ref().map(|p| p.documents.clone()))
            .filter(|p| !p.is_empty())
            .collect();
        all.sort_by(|a, b| a.service.cmp(&b.service));
        all
    }

    /// The names of every service the catalog holds, placeholders included.
    pub(crate) fn service_names(&self) -> Vec<String> {
        self.services.iter().map(|s| s.key().clone()).collect()
    }

    /// Hands out the next index to a changed service and wakes its watchers and the
    /// catalog's. Called with the service's shard locked, so a service's index only grows.
    fn bump(&self, svc: &mut Service) {
        let index = self.last_index.fetch_add(1, Ordering::SeqCst) + 1;
        self.bump_to(svc, index);
    }

    /// Sets a changed service's index to one given from outside (an etcd revision, which
    /// only grows) and wakes its watchers and the catalog's.
    fn bump_to(&self, svc: &mut Service, index: u64) {
        self.last_index.fetch_max(index, Ordering::SeqCst);
        svc.index = index;
        if let Some(tx) = &svc.tx {
            tx.send_replace(index);
        }
        self.wake_catalog(index);
    }

    /// Moves the catalog index to `index` if that is newer, waking its watchers once
    /// however many changes race to tell them.
    fn wake_catalog(&self, index: u64) {
        self.catalog_tx.send_if_modified(|current| {
            let newer = index > *current;
            if newer {
                *current = index;
            }
            newer
        });
    }
}

// === impl Store for Catalog ===

/// The embedded store: the catalog itself, kept in memory (and written to a snapshot by
/// [`crate::snapshot::run_writer`]).
impl Store for Catalog {
    fn catalog(&self) -> &Catalog {
        self
    }

    fn status(&self) -> StoreStatus {
        StoreStatus::memory()
    }

    fn apply<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        decide: Decide<'a>,
    ) -> Pending<'a, Result<Applied, WriteError>> {
        let applied = self.apply_now(service, id, decide);
        Box::pin(std::future::ready(applied.map_err(WriteError::Refused)))
    }

    fn put_policy<'a>(
        &'a self,
        service: &'a str,
        kind: PolicyKind,
        document: Option<Document>,
    ) -> Pending<'a, Result<Option<u64>, WriteError>> {
        let index = Catalog::put_policy(self, service, kind, document);
        Box::pin(std::future::ready(Ok(index)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(addr: &str) -> Registration {
        Registration::new(addr)
    }

    #[tokio::test(start_paused = true)]
    async fn identical_registration_renews_without_moving_the_index() {
        let c = Catalog::new(Duration::from_secs(30));
        let (_, i1) = c
            .register("web", "a", reg("h:1"), "o", Instant::now())
            .unwrap();
        let (_, i2) = c
            .register("web", "a", reg("h:1"), "o", Instant::now())
            .unwrap();
        assert_eq!(i1, i2);
        let (_, i3) = c
            .register("web", "a", reg("h:2"), "o", Instant::now())
            .unwrap();
        assert!(i3 > i2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_to_one_service_leaves_the_other_index_alone() {
        let c = Catalog::new(Duration::from_secs(30));
        c.register("web", "a", reg("h:1"), "o", Instant::now())
            .unwrap();
        c.register("db", "a", reg("h:1"), "o", Instant::now())
            .unwrap();
        let web = c.listing("web", false).index;
        let db_rx = c.subscribe("db");
        c.register("web", "b", reg("h:2"), "o", Instant::now())
            .unwrap();
        assert!(c.listing("web", false).index > web);
        assert!(!db_rx.has_changed().unwrap());
        assert_eq!(c.service_list().index, c.index());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_services_do_not_exist_but_have_an_index() {
        let c = Catalog::new(Duration::from_secs(30));
        let l = c.listing("nope", false);
        assert!(!l.exists);
        assert_eq!(l.index, NEVER_EXISTED);
        c.register("web", "a", reg("h:1"), "o", Instant::now())
            .unwrap();
        c.deregister("web", "a", Claim::by("o")).unwrap();
        let l = c.listing("web", true);
        assert!(!l.exists && l.instances.is_empty());
        assert!(l.index > NEVER_EXISTED);
        assert!(c.service_list().services.is_empty());

        // A watcher's placeholder for a name never registered, and the emptied service,
        // go once unwatched for the grace; the floor keeps web's index from going back.
        drop(c.subscribe("ghost"));
        let now = Instant::now();
        c.collect_empty(now);
        assert!(c.services.contains_key("ghost") && c.services.contains_key("web"));
        c.collect_empty(now + EMPTY_SERVICE_GRACE);
        assert!(!c.services.contains_key("ghost"));
        assert!(!c.services.contains_key("web"));
        assert_eq!(c.listing("web", true).index, l.index);
        assert_eq!(c.listing("ghost", true).index, l.index);
    }

    #[tokio::test(start_paused = true)]
    async fn policy_watchers_of_names_without_policy_leave_nothing_behind() {
        let c = Catalog::new(Duration::from_secs(30));
        // Ten thousand names watched for a policy that never comes, and one that does.
        for n in 0..10_000 {
            drop(c.subscribe_policy(&format!("ghost-{n}")));
        }
        let routes = Document::parse(PolicyKind::Routes, br#"{"rules":[]}"#).unwrap();
        let index = c
            .put_policy("web", PolicyKind::Routes, Some(routes))
            .unwrap();
        let now = Instant::now();
        c.collect_empty(now);
        c.collect_empty(now + EMPTY_SERVICE_GRACE);
        assert_eq!(c.service_names(), ["web"]);
        assert_eq!(c.policy("web").index, index);
        // A name that held a policy reports an index no smaller once it is gone.
        c.put_policy("web", PolicyKind::Routes, None).unwrap();
        let deleted = c.policy("web").index;
        c.collect_empty(now + EMPTY_SERVICE_GRACE * 2);
        c.collect_empty(now + EMPTY_SERVICE_GRACE * 3);
        assert!(c.service_names().is_empty());
        assert!(c.policy("web").index >= deleted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_service_comes_back_with_a_larger_index_and_watchers_are_kept() {
        let c = Catalog::new(Duration::from_secs(30));
        c.register("web", "a", reg("h:1"), "o", Instant::now())
            .unwrap();
        c.deregister("web", "a", Claim::by("o")).unwrap();
        let emptied = c.listing("web", true).index;
        // Watched: kept however long it stays empty.
        let watcher = c.subscribe("web");
        c.collect_empty(Instant::now());
        c.collect_empty(Instant::now() + EMPTY_SERVICE_GRACE * 10);
        assert!(c.services.contains_key("web"));
        drop(watcher);
        c.collect_empty(Instant::now() + EMPTY_SERVICE_GRACE * 11);
        c.collect_empty(Instant::now() + EMPTY_SERVICE_GRACE * 12);
        assert!(!c.services.contains_key("web"));
        let (_, again) = c
            .register("web", "a", reg("h:1"), "o", Instant::now())
            .unwrap();
        assert!(again > emptied, "{again} after {emptied}");
    }
}
