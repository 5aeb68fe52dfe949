//! One destination service: its current endpoint set (replaced whole on every update and
//! read without a lock), its retry budget, its requests in flight, and its metrics.
//! Endpoint sets are built here from registry and DNS answers, minus the endpoints this
//! sidecar must not dial ([`DialPolicy`]: its own listeners, plaintext ones under strict
//! mTLS), which are kept aside with the reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use mesh_registry_api::ServiceListing;
use mesh_registry_api::policy::Selector;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::budget::{BudgetConfig, RetryBudget};
use crate::endpoint::{Endpoint, Source};
use crate::error::{ErrorKind, ProxyError};
use crate::loops::OwnListeners;
use crate::metrics::{EndpointState, Metrics, ServiceMetrics};
use crate::policy::Policy;
use crate::tls::TLS_METADATA;
use mesh_registry_api::Protocol;

/// The endpoints of one destination at one moment; replaced whole on every update.
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub source: Option<Source>,
    /// Endpoints discovery found but this sidecar will not dial.
    pub refused: Vec<Refused>,
    /// Every instance registered protocol `tcp`: connections to the destination are
    /// carried as bytes, not read as HTTP.
    pub opaque: bool,
}

/// A discovered endpoint this sidecar will not dial, and why.
#[derive(Clone, Debug)]
pub struct Refused {
    pub address: String,
    /// What a request finding only such endpoints is answered with.
    pub kind: ErrorKind,
    pub why: String,
}

/// An endpoint as discovery found it, before the dial policy has its say.
struct Found {
    address: String,
    weight: u32,
    instance: Option<String>,
    metadata: BTreeMap<String, String>,
    /// Registered by a mesh sidecar.
    sidecar: bool,
    /// Speaks mTLS.
    tls: bool,
    /// Why it does not, for a refusal.
    plain: &'static str,
}

/// Which discovered endpoints may be dialled.
#[derive(Clone, Debug, Default)]
pub struct DialPolicy {
    /// Never this sidecar's own listeners: a request there would loop.
    pub own: OwnListeners,
    /// `--tls strict`: only sidecars that speak mTLS, but for `plaintext_to`.
    pub strict: bool,
    /// Destinations that may be called in plaintext under strict mTLS
    /// (`--plaintext-to`).
    pub plaintext_to: Vec<String>,
}

/// One destination service and its discovery state.
pub struct Destination {
    pub name: String,
    endpoints: ArcSwap<EndpointSet>,
    /// Round-robin position, shared by every request to this destination.
    pub cursor: AtomicUsize,
    /// True once the first resolution (successful or not) is done.
    resolved: watch::Sender<bool>,
    /// Why the set is empty or stale, for `/debug/endpoints`.
    last_error: Mutex<Option<String>>,
    /// Retries allowed to this destination.
    pub budget: RetryBudget,
    /// Requests to this destination in flight now (bounded by `--max-pending`).
    pub pending: AtomicUsize,
    /// Its outbound metric series.
    pub metrics: Arc<ServiceMetrics>,
    /// When a request last asked for it, in milliseconds since discovery started.
    last_used: AtomicU64,
    /// The task keeping its endpoints (and policy) current, stopped when it is dropped
    /// for idleness or discovery stops.
    follower: Mutex<Option<JoinHandle<()>>>,
    /// Its `routes`, as the registry gives them.
    pub policy: Arc<Policy>,
}

/// A request in flight to a destination.
pub struct Pending(Arc<Destination>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Destination ===

impl Destination {
    /// A destination not resolved yet, with nothing in flight.
    pub fn new(name: &str, budget: BudgetConfig, metrics: Arc<ServiceMetrics>, now: u64) -> Self {
        Destination {
            name: name.to_owned(),
            endpoints: ArcSwap::from_pointee(EndpointSet::default()),
            cursor: AtomicUsize::new(0),
            resolved: watch::Sender::new(false),
            last_error: Mutex::new(None),
            budget: RetryBudget::new(budget),
            pending: AtomicUsize::new(0),
            metrics,
            last_used: AtomicU64::new(now),
            follower: Mutex::new(None),
            policy: Policy::destination(name),
        }
    }

    /// The current endpoints, without locking.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    pub(crate) fn publish(&self, set: EndpointSet, metrics: &Metrics) {
        if let Some(source) = set.source {
            metrics.discovery_update(&self.name, source);
        }
        // Said once per refused endpoint, not at every refresh of an unchanged set.
        let before = self.endpoints.load();
        for refused in &set.refused {
            if !before.refused.iter().any(|r| r.address == refused.address) {
                tracing::warn!(service = %self.name, endpoint = %refused.address, "not dialled: {}", refused.why);
            }
        }
        self.endpoints.store(Arc::new(set));
        self.refresh_gauges(metrics);
        self.resolution_done();
    }

    /// The first resolution is over, whatever it found: requests waiting for it go on
    /// (with no endpoints, they fail fast rather than hang).
    pub(crate) fn resolution_done(&self) {
        self.resolved.send_replace(true);
    }

    /// Whether the first resolution is over, and with `policy`, the first read of the
    /// destination's routes too.
    pub(crate) fn is_resolved(&self, policy: bool) -> bool {
        *self.resolved.borrow() && (!policy || *self.policy.received.borrow())
    }

    /// Returns once [`is_resolved`](Self::is_resolved) holds.
    pub(crate) async fn first_resolution(&self, policy: bool) {
        let mut resolved = self.resolved.subscribe();
        let mut received = self.policy.received.subscribe();
        let _ = resolved.wait_for(|r| *r).await;
        if policy {
            let _ = received.wait_for(|r| *r).await;
        }
    }

    /// A request asked for it at `now` (milliseconds since discovery started).
    pub(crate) fn used(&self, now: u64) {
        self.last_used.store(now, Ordering::Relaxed);
    }

    /// Nothing is in flight to it, and no request asked for it in the `limit`
    /// milliseconds before `now`.
    pub(crate) fn idle(&self, now: u64, limit: u64) -> bool {
        self.pending.load(Ordering::Acquire) == 0
            && now.saturating_sub(self.last_used.load(Ordering::Relaxed)) >= limit
    }

    /// `task` keeps it current from now on.
    pub(crate) fn followed_by(&self, task: JoinHandle<()>) {
        *self.follower.lock().expect("follower lock") = Some(task);
    }

    /// Stops the task keeping it current; its handle, to wait for its end.
    pub(crate) fn unfollow(&self) -> Option<JoinHandle<()>> {
        let task = self.follower.lock().expect("follower lock").take()?;
        task.abort();
        Some(task)
    }

    /// Updates `mesh_endpoints` for this destination from its endpoints' states.
    pub fn refresh_gauges(&self, metrics: &Metrics) {
        let now = Instant::now();
        let set = self.endpoints.load();
        let ejected = set
            .endpoints
            .iter()
            .filter(|e| e.breaker.standing(now).is_ejected())
            .count();
        metrics.set_endpoints(
            &self.name,
            EndpointState::Ready,
            set.endpoints.len() - ejected,
        );
        metrics.set_endpoints(&self.name, EndpointState::Ejected, ejected);
    }

    /// Counts a request in flight to this destination, unless `max` already are.
    pub fn try_begin(self: &Arc<Self>, max: usize) -> Option<Pending> {
        let before = self.pending.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Pending(self.clone()))
    }

    pub(crate) fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("error lock") = error;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }

    /// Registry instances → endpoints.
    pub(crate) fn registry_set(&self, listing: &ServiceListing, dial: &DialPolicy) -> EndpointSet {
        let found = listing.instances.iter().map(|i| {
            // A sidecar registers its mTLS mode; an instance without one is no sidecar.
            let mode = i.metadata.get(TLS_METADATA).map(String::as_str);
            Found {
                address: i.address.clone(),
                weight: i.weight,
                instance: Some(i.id.clone()),
                metadata: i.metadata.clone(),
                sidecar: mode.is_some(),
                tls: mode.is_some_and(|m| m != "off"),
                plain: match mode {
                    None => "registered by something that is no mesh sidecar",
                    Some("off") => "a sidecar with mTLS off",
                    Some(_) => "",
                },
            }
        });
        let mut set = self.endpoint_set(Source::Registry, found, dial);
        set.opaque = !listing.instances.is_empty()
            && listing
                .instances
                .iter()
                .all(|i| i.protocol == Protocol::Tcp);
        set
    }

    /// DNS answers → endpoints: plaintext, weight 1, no sidecar.
    pub(crate) fn dns_set(
        &self,
        addresses: &[std::net::IpAddr],
        port: u16,
        dial: &DialPolicy,
    ) -> EndpointSet {
        let found = addresses.iter().map(|ip| Found {
            address: std::net::SocketAddr::new(*ip, port).to_string(),
            weight: 1,
            instance: None,
            metadata: BTreeMap::new(),
            sidecar: false,
            tls: false,
            plain: "found through DNS",
        });
        self.endpoint_set(Source::Dns, found, dial)
    }

    /// The endpoints `found` that `dial` allows, keeping the existing `Endpoint` (and so
    /// its latency history and ejection state) for every one that stays as it was.
    fn endpoint_set(
        &self,
        source: Source,
        found: impl Iterator<Item = Found>,
        dial: &DialPolicy,
    ) -> EndpointSet {
        let current = self.endpoints.load();
        let mut set = EndpointSet {
            source: Some(source),
            ..EndpointSet::default()
        };
        for f in found {
            if let Err(refused) = dial.check(&self.name, &f.address, f.tls, f.plain) {
                set.refused.push(refused);
                continue;
            }
            let endpoint = current
                .endpoints
                .iter()
                .find(|e| {
                    e.address == f.address
                        && e.weight == f.weight
                        && (e.sidecar, e.tls) == (f.sidecar, f.tls)
                        && e.metadata == f.metadata
                })
                .cloned()
                .unwrap_or_else(|| {
                    let e =
                        Endpoint::new(f.address, f.weight, f.instance).with_metadata(f.metadata);
                    Arc::new(if f.sidecar { e.sidecar(f.tls) } else { e })
                });
            set.endpoints.push(endpoint);
        }
        set
    }

    /// The error for a request that found no endpoint to dial in the `subset` its route
    /// chose (`rule` is the route's name).
    pub fn no_endpoints_in(&self, subset: &Selector, rule: &str) -> ProxyError {
        let set = self.endpoints();
        if subset.is_all() || set.endpoints.is_empty() {
            return self.no_endpoints();
        }
        ProxyError::new(
            ErrorKind::NoEndpoints,
            format!(
                "no endpoints for {} in subset {subset} (routes rule {rule}): none of its {} passing instances has that metadata",
                self.name,
                set.endpoints.len()
            ),
        )
    }

    /// The error for a request that found no endpoint to dial.
    pub fn no_endpoints(&self) -> ProxyError {
        let set = self.endpoints();
        if let Some(refused) = set.refused.first() {
            return ProxyError::new(
                refused.kind,
                format!(
                    "no endpoint of {} may be dialled: {}",
                    self.name, refused.why
                ),
            );
        }
        let why = self
            .last_error()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        ProxyError::new(
            ErrorKind::NoEndpoints,
            format!("no endpoints for {}{why}", self.name),
        )
    }
}

// === impl DialPolicy ===

impl DialPolicy {
    /// May `address`, an endpoint of `destination`, be dialled? `tls`: it speaks mTLS;
    /// `plain`: why it does not, for the refusal.
    fn check(
        &self,
        destination: &str,
        address: &str,
        tls: bool,
        plain: &str,
    ) -> Result<(), Refused> {
        if let Ok(addr) = address.parse()
            && let Err(e) = self.own.check(addr)
        {
            return Err(Refused {
                address: address.to_owned(),
                kind: e.kind,
                why: e.message,
            });
        }
        if self.strict && !tls && !self.plaintext_to.iter().any(|d| d == destination) {
            return Err(Refused {
                address: address.to_owned(),
                kind: ErrorKind::Insecure,
                why: format!(
                    "{address} does not speak mTLS ({plain}) and this sidecar is --tls strict; \
                     to call {destination} in plaintext, add --plaintext-to {destination}"
                ),
            });
        }
        Ok(())
    }
}
