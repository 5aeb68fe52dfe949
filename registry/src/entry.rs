//! One instance as the catalog holds it: its registration, where its lease stands, and
//! the times listings show.
//!
//! A module of its own because the catalog, the lease sweep ([`crate::lease`]) and the
//! snapshot ([`crate::snapshot`]) all read and write entries.

use std::time::SystemTime;

use mesh_registry_api::{Instance, Registration, Status};
use tokio::time::Instant;

/// An instance as the catalog holds it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub registration: Registration,
    /// Last output reported with a heartbeat.
    pub output: Option<String>,
    pub lease: LeaseState,
    pub registered_at: SystemTime,
    pub last_heartbeat: SystemTime,
    /// The mass-expiry guard already extended this lease once since the last heartbeat;
    /// it will not do so again, so a dead instance is gone after at most two TTLs.
    pub spared: bool,
    /// Who registered it ([`crate::auth::Writer::owner`]); empty for an entry written
    /// before owners were kept, which the next authorized writer takes over.
    pub owner: String,
    /// Which registration this is ([`new_generation`]); 0 for an entry written before
    /// generations were kept, which any heartbeat renews.
    pub generation: u64,
}

/// Why a write to an instance was refused, whichever store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such instance.
    Unknown,
    /// Registered again since the generation the writer named: it must register again.
    Replaced { generation: u64 },
    /// Another writer registered it.
    Owned { owner: String },
}

/// Who is writing to an instance, and which registration they mean: what every write
/// is checked against, in both stores.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    /// The writer, as instances record their owner.
    pub owner: &'a str,
    /// The registration a heartbeat or deregistration names; `None`: the current one.
    pub generation: Option<u64>,
    /// The operator: may remove an instance whoever owns it.
    pub overrides: bool,
}

// === impl Claim ===

impl<'a> Claim<'a> {
    /// A writer naming no generation.
    pub fn by(owner: &'a str) -> Self {
        Claim {
            owner,
            generation: None,
            overrides: false,
        }
    }
}

/// A new registration's generation: random, so replicas of the etcd store need not
/// agree on a counter, and below 2^53, so JavaScript reads it exactly.
pub fn new_generation() -> u64 {
    rand::random_range(1..(1u64 << 53))
}

/// Where an instance's lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed in time; expires at this instant without a heartbeat.
    Live { expires_at: Instant },
    /// Missed its lease: listed as critical, removed at this instant.
    Expired { remove_at: Instant },
}

// === impl Entry ===

impl Entry {
    /// The status the listing shows: what the instance reported, unless its lease ran out.
    pub fn status(&self) -> Status {
        match self.lease {
            LeaseState::Live { .. } => self.registration.status,
            LeaseState::Expired { .. } => Status::Critical,
        }
    }

    /// Whether `owner` may replace this entry: the writer that registered it, or
    /// anyone authorized while it has no owner on record.
    pub(crate) fn check_owner(&self, owner: &str) -> Result<(), Refusal> {
        if self.owner.is_empty() || self.owner == owner {
            Ok(())
        } else {
            Err(Refusal::Owned {
                owner: self.owner.clone(),
            })
        }
    }

    /// Whether `claim` may renew (heartbeat) or remove this entry: its owner (or, for a
    /// removal, the operator), naming the current registration or none. A claim naming
    /// an older registration is refused as [`Refusal::Replaced`], so its sender
    /// registers again at once rather than keep someone else's entry alive.
    pub(crate) fn check(&self, claim: Claim<'_>) -> Result<(), Refusal> {
        if !claim.overrides {
            self.check_owner(claim.owner)?;
        }
        match claim.generation {
            Some(named) if self.generation != 0 && named != self.generation => {
                Err(Refusal::Replaced {
                    generation: self.generation,
                })
            }
            _ => Ok(()),
        }
    }

    /// A heartbeat: the lease starts again from `now`, with the status and output it
    /// reported (each kept when not given), and the guard may spare it again.
    pub(crate) fn renew(&mut self, status: Option<Status>, output: Option<String>, now: Instant) {
        if let Some(status) = status {
            self.registration.status = status;
        }
        if output.is_some() {
            self.output = output;
        }
        self.lease = LeaseState::Live {
            expires_at: now + self.registration.ttl,
        };
        self.last_heartbeat = SystemTime::now();
        self.spared = false;
    }

    /// The instance as listings show it.
    pub(crate) fn listed(&self, id: &str) -> Instance {
        let r = &self.registration;
        Instance {
            id: id.to_owned(),
            address: r.address.clone(),
            protocol: r.protocol,
            tags: r.tags.clone(),
            metadata: r.metadata.clone(),
            weight: r.weight,
            status: self.status(),
            registered_at: humantime::format_rfc3339_millis(self.registered_at).to_string(),
            last_heartbeat: humantime::format_rfc3339_millis(self.last_heartbeat).to_string(),
            output: self.output.clone(),
            owner: self.owner.clone(),
            generation: self.generation,
        }
    }
}
