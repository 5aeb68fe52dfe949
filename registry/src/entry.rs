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
        }
    }
}
