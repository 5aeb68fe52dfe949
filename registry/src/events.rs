//! The timeline of recent catalog events (`GET /v1/events`): registrations,
//! deregistrations, status changes, expiries, removals and the mass-expiry guard sparing
//! leases, as operators want to read them after the fact.
//!
//! A ring of the last [`CAPACITY`] events, in memory only: it explains what happened
//! recently, it is not an audit log. Events have their own index, separate from the
//! catalog's: some (a spared lease) change nothing a listing shows, and one sweep may
//! produce several events for one catalog change. Readers block on it like on any other
//! index.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use mesh_registry_api::{Registration, Status};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How many events the ring keeps; older ones are dropped.
pub const CAPACITY: usize = 500;

/// The events index before the first event. Every event gets a larger one, so a reader
/// passing back 0 or 1 gets everything, like the catalog's never-registered index.
pub const NO_EVENTS: u64 = 1;

/// Longest detail kept: a health check's output may be 4 KiB, the ring holds 500.
const MAX_DETAIL: usize = 512;

/// What happened to an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A new instance, or a registration that replaced the previous one.
    Registered,
    Deregistered,
    /// Reported critical, or its lease ran out.
    Critical,
    Warning,
    /// Reported passing again, or revived by a heartbeat after its lease ran out.
    Passing,
    /// Removed once critical for the whole grace period.
    Removed,
    /// Its lease was extended by the mass-expiry guard instead of running out.
    Spared,
}

/// One event, as `GET /v1/events` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub index: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub kind: EventKind,
    pub service: String,
    pub instance: String,
    pub detail: String,
}

/// Answer to `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventPage {
    /// Index of the latest event ([`NO_EVENTS`] before the first).
    pub index: u64,
    /// Events after the index the reader passed, oldest first.
    pub events: Vec<Event>,
}

/// The ring and the index readers block on.
#[derive(Debug)]
pub struct Events {
    /// A std Mutex, because no `.await` happens while it is held. Index assignment
    /// happens under it too, so the ring is always in index order.
    ring: Mutex<VecDeque<Event>>,
    /// The latest event's index; blocking readers hold receivers.
    index_tx: watch::Sender<u64>,
}

// === impl Events ===

impl Events {
    pub fn new() -> Self {
        Events {
            ring: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            index_tx: watch::Sender::new(NO_EVENTS),
        }
    }

    /// Appends an event stamped now, dropping the oldest past [`CAPACITY`], and wakes
    /// blocked readers. Called by the catalog while it holds a service's shard: this lock
    /// is always taken last, so the two cannot deadlock.
    pub fn record(&self, kind: EventKind, service: &str, instance: &str, detail: String) {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut ring = self.ring.lock().expect("the events lock is never poisoned");
        let index = *self.index_tx.borrow() + 1;
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(Event {
            index,
            time,
            kind,
            service: service.to_owned(),
            instance: instance.to_owned(),
            detail: clip(detail),
        });
        self.index_tx.send_replace(index);
    }

    /// The latest event's index.
    pub fn index(&self) -> u64 {
        *self.index_tx.borrow()
    }

    /// A receiver of the events index, for a blocking query.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.index_tx.subscribe()
    }

    /// The events after `seen`, oldest first. A `seen` ahead of the latest index comes
    /// from before a restart (the ring is not persisted): that reader gets everything.
    pub fn since(&self, seen: u64) -> EventPage {
        let ring = self.ring.lock().expect("the events lock is never poisoned");
        let index = *self.index_tx.borrow();
        let seen = if seen > index { 0 } else { seen };
        EventPage {
            index,
            events: ring.iter().filter(|e| e.index > seen).cloned().collect(),
        }
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

/// The detail of a registration event: where a new instance is, or what a registration
/// replacing `before` (with whether its lease had run out) changed.
pub(crate) fn registration_detail(
    before: Option<(&Registration, bool)>,
    after: &Registration,
) -> String {
    let Some((old, expired)) = before else {
        let status = match after.status {
            Status::Passing => String::new(),
            other => format!(", reported {other}"),
        };
        return format!(
            "new instance at {} ({}, weight {}, ttl {}){status}",
            after.address,
            protocol(after),
            after.weight,
            humantime::format_duration(after.ttl)
        );
    };
    let mut changes = Vec::new();
    let mut compare = |field: &str, old: String, new: String| {
        if old != new {
            changes.push(format!("{field} {old} → {new}"));
        }
    };
    compare("address", old.address.clone(), after.address.clone());
    compare("protocol", protocol(old).into(), protocol(after).into());
    compare("weight", old.weight.to_string(), after.weight.to_string());
    compare("ttl", ttl(old), ttl(after));
    compare("status", old.status.to_string(), after.status.to_string());
    compare(
        "tags",
        format!("{:?}", old.tags),
        format!("{:?}", after.tags),
    );
    compare(
        "metadata",
        format!("{:?}", old.metadata),
        format!("{:?}", after.metadata),
    );
    let when = if expired {
        "re-registered after its lease ran out"
    } else {
        "re-registered"
    };
    if changes.is_empty() {
        when.to_owned()
    } else {
        format!("{when}: {}", changes.join(", "))
    }
}

/// The event of a heartbeat that changed the listed status, with why.
pub(crate) fn heartbeat_event(
    before: Status,
    after: Status,
    expired: bool,
    output: Option<&str>,
) -> (EventKind, String) {
    let why = match (output, expired) {
        (Some(output), _) => output.to_owned(),
        (None, true) => "heartbeat after the lease ran out".to_owned(),
        (None, false) => "reported by heartbeat".to_owned(),
    };
    (status_kind(after), format!("{before} → {after}: {why}"))
}

pub(crate) fn status_kind(status: Status) -> EventKind {
    match status {
        Status::Passing => EventKind::Passing,
        Status::Warning => EventKind::Warning,
        Status::Critical => EventKind::Critical,
    }
}

fn protocol(r: &Registration) -> &'static str {
    r.protocol.as_str()
}

fn ttl(r: &Registration) -> String {
    humantime::format_duration(r.ttl).to_string()
}

/// At most [`MAX_DETAIL`] bytes, cut at a character boundary.
fn clip(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::entry::Claim;

    #[test]
    fn the_ring_keeps_the_last_events_in_index_order() {
        let events = Events::new();
        assert_eq!(events.since(0).index, NO_EVENTS);
        for n in 0..CAPACITY + 3 {
            events.record(
                EventKind::Registered,
                "web",
                &format!("i{n}"),
                String::new(),
            );
        }
        let page = events.since(0);
        assert_eq!(page.events.len(), CAPACITY);
        assert_eq!(page.index, NO_EVENTS + CAPACITY as u64 + 3);
        assert_eq!(page.events[0].instance, "i3");
        assert!(page.events.windows(2).all(|w| w[0].index + 1 == w[1].index));
        let tail = events.since(page.index - 2);
        let ids: Vec<_> = tail.events.iter().map(|e| e.instance.as_str()).collect();
        assert_eq!(
            ids,
            [format!("i{}", CAPACITY + 1), format!("i{}", CAPACITY + 2)]
        );
        // An index from before a restart is ahead of this ring: everything is new.
        assert_eq!(events.since(page.index + 10).events.len(), CAPACITY);
    }

    #[test]
    fn details_say_what_changed_and_are_clipped() {
        let old = Registration::new("h:1");
        let mut new = old.clone();
        assert_eq!(
            registration_detail(Some((&old, true)), &new),
            "re-registered after its lease ran out"
        );
        new.address = "h:2".into();
        new.weight = 5;
        assert_eq!(
            registration_detail(Some((&old, false)), &new),
            "re-registered: address h:1 → h:2, weight 1 → 5"
        );
        assert_eq!(
            registration_detail(None, &old),
            "new instance at h:1 (http, weight 1, ttl 10s)"
        );
        let (kind, detail) =
            heartbeat_event(Status::Passing, Status::Critical, false, Some("refused"));
        assert_eq!(
            (kind, detail.as_str()),
            (EventKind::Critical, "passing → critical: refused")
        );
        let long = clip("é".repeat(MAX_DETAIL));
        assert!(long.len() <= MAX_DETAIL + '…'.len_utf8() && long.ends_with('…'));
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_events_and_renewals_are_not() {
        let c = Catalog::new(std::time::Duration::from_secs(30));
        let now = tokio::time::Instant::now();
        c.register("web", "a", Registration::new("h:1"), "o", now)
            .unwrap();
        c.register("web", "a", Registration::new("h:1"), "o", now)
            .unwrap();
        c.heartbeat("web", "a", Claim::by("o"), None, None, now)
            .unwrap();
        c.heartbeat(
            "web",
            "a",
            Claim::by("o"),
            Some(Status::Warning),
            Some("slow disk".into()),
            now,
        )
        .unwrap();
        c.heartbeat(
            "web",
            "a",
            Claim::by("o"),
            Some(Status::Warning),
            Some("slower".into()),
            now,
        )
        .unwrap();
        c.heartbeat("web", "a", Claim::by("o"), Some(Status::Passing), None, now)
            .unwrap();
        c.register("web", "a", Registration::new("h:2"), "o", now)
            .unwrap();
        c.deregister("web", "a", Claim::by("o")).unwrap();
        let page = c.events().since(0);
        let seen: Vec<_> = page
            .events
            .iter()
            .map(|e| (e.kind, e.detail.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    EventKind::Registered,
                    "new instance at h:1 (http, weight 1, ttl 10s)"
                ),
                (EventKind::Warning, "passing → warning: slow disk"),
                (
                    EventKind::Passing,
                    "warning → passing: reported by heartbeat"
                ),
                (EventKind::Registered, "re-registered: address h:1 → h:2"),
                (EventKind::Deregistered, "was passing at h:2"),
            ]
        );
        assert!(
            page.events
                .iter()
                .all(|e| e.service == "web" && e.instance == "a")
        );
        assert!(
            page.events[0].time.ends_with('Z'),
            "{}",
            page.events[0].time
        );
    }
}
