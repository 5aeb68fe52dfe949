//! The store seam: what the embedded catalog and the etcd store each do, and the rules
//! they share, written once above them.
//!
//! A write to an instance is two steps. The rules ([`register`], [`heartbeat`],
//! [`deregister`]) look at the instance as the store holds it and decide: refuse, renew
//! the lease only, write the instance anew, or remove it, with the event the timeline
//! records. The store then applies that decision as one atomic step: the embedded
//! catalog under its lock for the service, the etcd store as a transaction that holds
//! only while the instance is as its mirror showed it to the rules. The lease sweep is
//! split the same way ([`crate::lease::due`] decides for both).
//!
//! Policy documents are a second kind of record: checked before they reach a store
//! ([`mesh_registry_api::policy::Document::parse`]) and written whole, so a store only
//! puts or deletes them.

use std::future::Future;
use std::pin::Pin;

use mesh_registry_api::policy::{Document, PolicyKind};
use mesh_registry_api::{Instance, Lease, Registration, Status, StoreStatus};
use tokio::time::Instant;

use crate::catalog::Catalog;
use crate::entry::{Claim, Entry, LeaseState, Refusal, new_generation};
use crate::error::ApiError;
use crate::etcd::client::EtcdError;
use crate::events::{self, EventKind};

/// A store's answer to come later: writes to etcd are network round trips.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the rules make of one instance, given it as the store holds it (`None`: none).
pub type Decide<'a> = Box<dyn FnOnce(Option<&Entry>) -> Result<Decision, Refusal> + Send + 'a>;

/// What a write does to one instance, as the rules decided it.
#[derive(Debug)]
pub enum Decision {
    /// Only the lease starts again (with the status and output reported, each kept when
    /// not given): what listings show does not change, so no index moves.
    Renew {
        status: Option<Status>,
        output: Option<String>,
        now: Instant,
    },
    /// The instance is written as `entry`; `change` is the event, when what its listing
    /// shows changes.
    Put {
        entry: Box<Entry>,
        change: Option<Change>,
    },
    /// The instance goes.
    Remove { change: Change },
}

/// An event of the timeline, for the instance a decision is about.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: EventKind,
    pub detail: String,
}

/// What a store did: the instance as it holds it now (`None` once removed), and the
/// index the answer carries.
#[derive(Debug)]
pub struct Applied {
    pub entry: Option<Entry>,
    pub index: u64,
}

/// Why a write failed, whichever store took it.
#[derive(Debug)]
pub enum WriteError {
    /// The instance's rules refused it (unknown, replaced, owned by another writer).
    Refused(Refusal),
    /// Another replica changed the instance while this write was being made.
    Contended,
    Etcd(EtcdError),
    /// The replica is cut off from etcd: it does not try, it answers at once.
    Stale,
}

impl From<Refusal> for WriteError {
    fn from(refusal: Refusal) -> Self {
        WriteError::Refused(refusal)
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Refused(_) => ApiError::NotFound("no such instance".to_owned()),
            WriteError::Contended => ApiError::Conflict(
                "the instance was changed through another replica at the same moment; \
                 send the request again"
                    .to_owned(),
            ),
            WriteError::Etcd(e) => ApiError::StoreUnavailable(format!(
                "{e}; reads are answered from this replica's last state"
            )),
            WriteError::Stale => ApiError::StoreUnavailable(
                "etcd is unreachable from this replica (no quorum answers); reads are \
                 answered from its last state"
                    .to_owned(),
            ),
        }
    }
}

/// Where the catalog is kept: the embedded [`Catalog`] (memory and snapshot) or
/// [`crate::etcd::EtcdStore`]. Reads are answered from [`Store::catalog`] in both.
pub trait Store: Send + Sync {
    /// The catalog reads and blocking queries are answered from.
    fn catalog(&self) -> &Catalog;

    /// What `/readyz` says of this store.
    fn status(&self) -> StoreStatus;

    /// Whether reads are answered from a last state this store can no longer confirm (an
    /// etcd replica cut off from etcd).
    fn stale(&self) -> bool {
        false
    }

    /// Whether this store may answer the API at all: an etcd replica that has not read
    /// the catalog yet must not (an empty listing would tell sidecars every service left).
    fn synced(&self) -> bool {
        true
    }

    /// Applies what `decide` makes of `service`/`id`, atomically with the instance as
    /// `decide` saw it.
    fn apply<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        decide: Decide<'a>,
    ) -> Pending<'a, Result<Applied, WriteError>>;

    /// Stores one policy document of `service`, or deletes the one of `kind`. Returns
    /// the service's policy index then; `None` when there was nothing to delete.
    fn put_policy<'a>(
        &'a self,
        service: &'a str,
        kind: PolicyKind,
        document: Option<Document>,
    ) -> Pending<'a, Result<Option<u64>, WriteError>>;

    /// Creates or replaces an instance for `owner` (see [`register`]).
    fn register<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        registration: Registration,
        owner: &'a str,
    ) -> Pending<'a, Result<(Instance, u64), WriteError>> {
        Box::pin(async move {
            let now = Instant::now();
            let decide =
                Box::new(move |before: Option<&Entry>| register(before, registration, owner, now));
            Ok(self.apply(service, id, decide).await?.registered(id)?)
        })
    }

    /// Renews a lease for the claim's writer (see [`heartbeat`]).
    fn heartbeat<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        claim: Claim<'a>,
        status: Option<Status>,
        output: Option<String>,
    ) -> Pending<'a, Result<(Lease, u64), WriteError>> {
        Box::pin(async move {
            let now = Instant::now();
            let decide = Box::new(move |before: Option<&Entry>| {
                heartbeat(before, claim, status, output, now)
            });
            Ok(self
                .apply(service, id, decide)
                .await?
                .renewed(service, id)?)
        })
    }

    /// Removes an instance for the claim's writer; returns the service's new index.
    fn deregister<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        claim: Claim<'a>,
    ) -> Pending<'a, Result<u64, WriteError>> {
        Box::pin(async move {
            let decide = Box::new(move |before: Option<&Entry>| deregister(before, claim));
            Ok(self.apply(service, id, decide).await?.index)
        })
    }
}

// === impl Applied ===

impl Applied {
    /// A registration's answer: the instance as listed, and the index.
    pub(crate) fn registered(self, id: &str) -> Result<(Instance, u64), Refusal> {
        let entry = self.entry.ok_or(Refusal::Unknown)?;
        Ok((entry.listed(id), self.index))
    }

    /// A heartbeat's answer: the lease as renewed, and the index.
    pub(crate) fn renewed(self, service: &str, id: &str) -> Result<(Lease, u64), Refusal> {
        let entry = self.entry.ok_or(Refusal::Unknown)?;
        let lease = Lease {
            service: service.to_owned(),
            id: id.to_owned(),
            status: entry.status(),
            ttl: entry.registration.ttl,
        };
        Ok((lease, self.index))
    }
}

/// A registration by `owner`: an instance another writer owns is refused. Re-sending an
/// identical registration of a live instance only renews its lease (same generation),
/// so watchers are not woken for a no-op; any other is a new generation, keeping what
/// the instance reported and when it was first registered.
pub fn register(
    before: Option<&Entry>,
    registration: Registration,
    owner: &str,
    now: Instant,
) -> Result<Decision, Refusal> {
    if let Some(existing) = before {
        existing.check_owner(owner)?;
    }
    let live = |e: &Entry| matches!(e.lease, LeaseState::Live { .. });
    if before.is_some_and(|e| live(e) && e.owner == owner && e.registration == registration) {
        return Ok(Decision::Renew {
            status: None,
            output: None,
            now,
        });
    }
    let detail =
        events::registration_detail(before.map(|e| (&e.registration, !live(e))), &registration);
    let wall = std::time::SystemTime::now();
    let entry = Entry {
        lease: LeaseState::Live {
            expires_at: now + registration.ttl,
        },
        registration,
        output: before.and_then(|e| e.output.clone()),
        registered_at: before.map_or(wall, |e| e.registered_at),
        last_heartbeat: wall,
        spared: false,
        owner: owner.to_owned(),
        generation: new_generation(),
    };
    let change = Change {
        kind: EventKind::Registered,
        detail,
    };
    Ok(Decision::Put {
        entry: Box::new(entry),
        change: Some(change),
    })
}

/// A heartbeat from the claim's writer: renews the lease, with a new status when one is
/// reported. The instance is written anew only when what its listing shows changes (a
/// new status, or a lease that had run out coming back).
pub fn heartbeat(
    before: Option<&Entry>,
    claim: Claim<'_>,
    status: Option<Status>,
    output: Option<String>,
    now: Instant,
) -> Result<Decision, Refusal> {
    let entry = before.ok_or(Refusal::Unknown)?;
    entry.check(claim)?;
    let was = entry.status();
    let expired = matches!(entry.lease, LeaseState::Expired { .. });
    let reported = status.unwrap_or(entry.registration.status);
    if !expired && reported == entry.registration.status {
        return Ok(Decision::Renew {
            status,
            output,
            now,
        });
    }
    let change = (reported != was).then(|| {
        let (kind, detail) = events::heartbeat_event(was, reported, expired, output.as_deref());
        Change { kind, detail }
    });
    let mut renewed = entry.clone();
    renewed.renew(Some(reported), output, now);
    Ok(Decision::Put {
        entry: Box::new(renewed),
        change,
    })
}

/// A removal by the claim's writer (or the operator).
pub fn deregister(before: Option<&Entry>, claim: Claim<'_>) -> Result<Decision, Refusal> {
    let entry = before.ok_or(Refusal::Unknown)?;
    entry.check(claim)?;
    let detail = format!("was {} at {}", entry.status(), entry.registration.address);
    Ok(Decision::Remove {
        change: Change {
            kind: EventKind::Deregistered,
            detail,
        },
    })
}
