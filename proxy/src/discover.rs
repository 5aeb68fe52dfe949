//! Discovery: destination service name → its current endpoints.
//!
//! Each destination has one task that long-polls the registry on that service's index
//! and publishes complete endpoint sets into an `ArcSwap`, so requests read them without
//! taking a lock. A name the registry says does not exist (`exists:false`), or that is no
//! valid service name at all (a dotted DNS name, an IP address), is resolved through DNS
//! instead, re-resolved when its TTL runs out; the registry watch continues, so a service
//! that registers later takes over from DNS. While the registry is unreachable the last
//! known endpoints stay in use and the watch retries with capped, jittered backoff.
//!
//! Destinations are bounded: one unused for `--destination-idle-timeout` is dropped with
//! its watch, and past `--max-destinations` new names are refused, so an app sending
//! arbitrary `Host` values cannot make the sidecar hold a watch per name forever.
//! Endpoints this sidecar must not dial ([`DialPolicy`]: its own listeners, plaintext
//! ones under strict mTLS) are kept out of the sets, with the reason.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_registry_api::{Client, ServiceListing, validate};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::breaker::Availability;
use crate::budget::{BudgetConfig, RetryBudget};
use crate::dns::Dns;
use crate::endpoint::{Endpoint, Source};
use crate::error::{ErrorKind, ProxyError};
use crate::loops::OwnListeners;
use crate::metrics::{Direction, EndpointState, Metrics, ServiceMetrics};

/// Registration metadata key holding a sidecar's mTLS mode.
pub const TLS_METADATA: &str = "tls";

/// How long a request waits for a destination's first resolution before answering
/// `no-endpoints`: the registry answers in milliseconds when it is up.
const FIRST_RESOLUTION_WAIT: Duration = Duration::from_secs(3);

/// The endpoints of one destination at one moment; replaced whole on every update.
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub source: Option<Source>,
    /// Endpoints discovery found but this sidecar will not dial.
    pub refused: Vec<Refused>,
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

/// How discovery bounds and filters its destinations.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    pub budget: BudgetConfig,
    /// A destination no request used for this long is dropped with its watch.
    pub idle_timeout: Duration,
    /// Destinations followed at once; past them new names are refused.
    pub max_destinations: usize,
    pub dial: DialPolicy,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            budget: BudgetConfig::default(),
            idle_timeout: Duration::from_secs(10),
            max_destinations: 1000,
            dial: DialPolicy::default(),
        }
    }
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
    /// The task keeping its endpoints current, stopped when it is dropped for idleness.
    follower: Mutex<Option<tokio::task::AbortHandle>>,
}

/// A request in flight to a destination.
pub struct Pending(Arc<Destination>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All destinations, created on first use and dropped when idle.
pub struct Discovery {
    registry: Client,
    dns: Option<Dns>,
    metrics: Arc<Metrics>,
    /// A std Mutex: only held to look up, insert or sweep, never across an await.
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
    /// Port used for DNS answers (which carry no port) when the caller gave none.
    default_port: u16,
    config: DiscoveryConfig,
    /// The zero of every destination's `last_used`.
    started: Instant,
}

// === impl Destination ===

impl Destination {
    /// The current endpoints, without locking.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    fn publish(&self, set: EndpointSet, metrics: &Metrics) {
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
        self.resolved.send_replace(true);
    }

    /// Updates `mesh_endpoints` for this destination from its endpoints' states.
    pub fn refresh_gauges(&self, metrics: &Metrics) {
        let now = Instant::now();
        let set = self.endpoints.load();
        let ejected = set
            .endpoints
            .iter()
            .filter(|e| e.breaker.is_ejected(now))
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

    fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("error lock") = error;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }

    /// Registry instances → endpoints.
    fn registry_set(&self, listing: &ServiceListing, dial: &DialPolicy) -> EndpointSet {
        let found = listing.instances.iter().map(|i| {
            // A sidecar registers its mTLS mode; an instance without one is no sidecar.
            let mode = i.metadata.get(TLS_METADATA).map(String::as_str);
            Found {
                address: i.address.clone(),
                weight: i.weight,
                instance: Some(i.id.clone()),
                sidecar: mode.is_some(),
                tls: mode.is_some_and(|m| m != "off"),
                plain: match mode {
                    None => "registered by something that is no mesh sidecar",
                    Some("off") => "a sidecar with mTLS off",
                    Some(_) => "",
                },
            }
        });
        self.endpoint_set(Source::Registry, found, dial)
    }

    /// DNS answers → endpoints: plaintext, weight 1, no sidecar.
    fn dns_set(&self, addresses: &[std::net::IpAddr], port: u16, dial: &DialPolicy) -> EndpointSet {
        let found = addresses.iter().map(|ip| Found {
            address: std::net::SocketAddr::new(*ip, port).to_string(),
            weight: 1,
            instance: None,
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
                })
                .cloned()
                .unwrap_or_else(|| {
                    let e = Endpoint::new(f.address, f.weight, f.instance);
                    Arc::new(if f.sidecar { e.sidecar(f.tls) } else { e })
                });
            set.endpoints.push(endpoint);
        }
        set
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

// === impl Discovery ===

impl Discovery {
    /// Discovery, with a task that drops idle destinations for as long as it exists.
    pub fn new(
        registry: Client,
        dns: Option<Dns>,
        metrics: Arc<Metrics>,
        config: DiscoveryConfig,
    ) -> Arc<Self> {
        let discovery = Arc::new(Discovery {
            registry,
            dns,
            metrics,
            destinations: Mutex::new(HashMap::new()),
            default_port: 80,
            config,
            started: Instant::now(),
        });
        tokio::spawn(evict_idle(Arc::downgrade(&discovery)));
        discovery
    }

    /// The destination for `name` (with `port` for DNS answers), started on first use
    /// unless `--max-destinations` are followed already. Waits, boundedly, for its first
    /// resolution.
    pub async fn destination(
        self: &Arc<Self>,
        name: &str,
        port: Option<u16>,
    ) -> Result<Arc<Destination>, ProxyError> {
        let key = match port {
            // The port only matters for names resolved through DNS; registry services
            // are one destination whatever port the caller wrote.
            Some(p) if validate::service_name(name).is_err() => Cow::Owned(format!("{name}:{p}")),
            _ => Cow::Borrowed(name),
        };
        let now = self.millis();
        let (destination, fresh) = {
            let mut all = self.destinations.lock().expect("destinations lock");
            match all.get(key.as_ref()) {
                Some(d) => (d.clone(), false),
                None if all.len() >= self.config.max_destinations => {
                    return Err(ProxyError::new(
                        ErrorKind::Overloaded,
                        format!(
                            "this sidecar already follows {} destinations (--max-destinations); \
                             {name} is refused until some fall idle",
                            all.len()
                        ),
                    ));
                }
                None => {
                    let d = Arc::new(Destination {
                        name: name.to_owned(),
                        endpoints: ArcSwap::from_pointee(EndpointSet::default()),
                        cursor: AtomicUsize::new(0),
                        resolved: watch::Sender::new(false),
                        last_error: Mutex::new(None),
                        budget: RetryBudget::new(self.config.budget),
                        pending: AtomicUsize::new(0),
                        metrics: self.metrics.service(Direction::Outbound, name),
                        last_used: AtomicU64::new(now),
                        follower: Mutex::new(None),
                    });
                    all.insert(key.into_owned(), d.clone());
                    (d, true)
                }
            }
        };
        destination.last_used.store(now, Ordering::Relaxed);
        if fresh {
            self.metrics.destination_added(name);
            let port = port.unwrap_or(self.default_port);
            let task = tokio::spawn(self.clone().follow(destination.clone(), port));
            *destination.follower.lock().expect("follower lock") = Some(task.abort_handle());
        }
        if *destination.resolved.borrow() {
            return Ok(destination);
        }
        let mut resolved = destination.resolved.subscribe();
        let _ = tokio::time::timeout(FIRST_RESOLUTION_WAIT, resolved.wait_for(|r| *r)).await;
        // In use until now, however long the first resolution took.
        destination
            .last_used
            .store(self.millis(), Ordering::Relaxed);
        Ok(destination)
    }

    fn millis(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.started)
            .as_millis() as u64
    }

    /// Drops every destination no request used for the idle timeout (and none is using
    /// now), stopping its watch.
    fn evict_idle(&self) {
        let idle = self.config.idle_timeout.as_millis() as u64;
        let now = self.millis();
        let evicted: Vec<Arc<Destination>> = self
            .destinations
            .lock()
            .expect("destinations lock")
            .extract_if(|_, d| {
                d.pending.load(Ordering::Acquire) == 0
                    && now.saturating_sub(d.last_used.load(Ordering::Relaxed)) >= idle
            })
            .map(|(_, d)| d)
            .collect();
        for destination in evicted {
            if let Some(task) = destination.follower.lock().expect("follower lock").take() {
                task.abort();
            }
            self.metrics
                .set_endpoints(&destination.name, EndpointState::Ready, 0);
            self.metrics
                .set_endpoints(&destination.name, EndpointState::Ejected, 0);
            tracing::debug!(service = %destination.name, "destination idle: no longer followed");
        }
    }

    /// Every destination, for `/debug/endpoints`.
    pub fn snapshot(&self) -> Vec<Arc<Destination>> {
        let mut all: Vec<_> = self
            .destinations
            .lock()
            .expect("destinations lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Keeps one destination's endpoints current, for the life of the process.
    async fn follow(self: Arc<Self>, destination: Arc<Destination>, port: u16) {
        if validate::service_name(&destination.name).is_ok() {
            self.follow_registry(destination, port).await
        } else {
            // Not a registry name (dotted, or an IP address): DNS only.
            loop {
                let next = self.resolve_dns(&destination, port).await;
                tokio::time::sleep_until(next).await;
            }
        }
    }

    async fn follow_registry(&self, destination: Arc<Destination>, port: u16) {
        let name = destination.name.clone();
        let mut watch = self.registry.watch(&name);
        let mut dns_refresh: Option<Instant> = None;
        loop {
            tokio::select! {
                next = watch.next() => match next {
                    Ok(listing) if listing.exists => {
                        self.metrics.registry_connected.set(1);
                        dns_refresh = None;
                        destination.set_error(None);
                        tracing::debug!(service = %name, endpoints = listing.instances.len(), "registry update");
                        let set = destination.registry_set(&listing, &self.config.dial);
                        destination.publish(set, &self.metrics);
                    }
                    Ok(_) => {
                        self.metrics.registry_connected.set(1);
                        if dns_refresh.is_none() {
                            tracing::info!(service = %name, "not in the registry; resolving through DNS");
                            dns_refresh = Some(self.resolve_dns(&destination, port).await);
                        }
                    }
                    Err(e) => {
                        self.metrics.registry_connected.set(0);
                        tracing::warn!(service = %name, error = %e, "registry watch failed; keeping the last known endpoints");
                        destination.set_error(Some(format!("registry unreachable: {e}")));
                        // Requests waiting for a first answer get one: empty, so they
                        // fail fast instead of hanging.
                        destination.resolved.send_replace(true);
                    }
                },
                () = sleep_until_some(dns_refresh) => {
                    dns_refresh = Some(self.resolve_dns(&destination, port).await);
                }
            }
        }
    }

    /// Resolves through DNS and publishes the answer; returns when to resolve again.
    async fn resolve_dns(&self, destination: &Destination, port: u16) -> Instant {
        let Some(dns) = &self.dns else {
            destination.set_error(Some(
                "unknown to the registry and DNS is unavailable".into(),
            ));
            destination.publish(EndpointSet::default(), &self.metrics);
            return Instant::now() + Duration::from_secs(3600);
        };
        match dns.lookup(&destination.name).await {
            Ok(answer) => {
                destination.set_error(None);
                let set = destination.dns_set(&answer.addresses, port, &self.config.dial);
                destination.publish(set, &self.metrics);
                answer.refresh_at
            }
            Err(e) => {
                let error = e.to_string();
                // Said once per destination and cause, not at every retry.
                if destination.last_error().as_deref() == Some(error.as_str()) {
                    tracing::debug!(service = %destination.name, %error, "DNS lookup failed again");
                } else {
                    tracing::warn!(service = %destination.name, %error, "DNS lookup failed");
                }
                destination.set_error(Some(error));
                // Keep what an earlier answer gave, if any.
                destination.resolved.send_replace(true);
                e.retry_at
            }
        }
    }
}

/// Sweeps idle destinations a few times per idle timeout, until discovery is gone.
async fn evict_idle(discovery: Weak<Discovery>) {
    let period = match discovery.upgrade() {
        Some(d) => {
            (d.config.idle_timeout / 4).clamp(Duration::from_millis(25), Duration::from_secs(5))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        match discovery.upgrade() {
            Some(discovery) => discovery.evict_idle(),
            None => return,
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One destination as `/debug/endpoints` shows it.
#[derive(Serialize)]
pub struct DestinationView {
    pub service: String,
    pub source: Option<Source>,
    pub last_error: Option<String>,
    pub endpoints: Vec<EndpointView>,
    /// Endpoints discovery found but this sidecar will not dial.
    pub refused: Vec<RefusedView>,
}

#[derive(Serialize)]
pub struct RefusedView {
    pub address: String,
    pub reason: String,
}

#[derive(Serialize)]
pub struct EndpointView {
    pub address: String,
    pub instance: Option<String>,
    pub state: &'static str,
    pub weight: u32,
    pub ewma_ms: f64,
    pub in_flight: usize,
    pub last_error: Option<String>,
    /// Why the endpoint is in (or out of) rotation.
    pub reason: String,
    /// How much longer an ejected endpoint stays out.
    pub ejected_for_ms: Option<u64>,
}

impl DestinationView {
    pub fn of(d: &Destination) -> Self {
        let set = d.endpoints();
        let now = Instant::now();
        DestinationView {
            service: d.name.clone(),
            source: set.source,
            last_error: d.last_error(),
            endpoints: set
                .endpoints
                .iter()
                .map(|e| {
                    let listed = match set.source {
                        Some(Source::Registry) => "listed as passing by the registry",
                        Some(Source::Dns) => "returned by DNS",
                        None => "",
                    };
                    let (state, reason, ejected_for_ms) = match e.breaker.availability(now) {
                        Availability::Ready => (EndpointState::Ready, listed.to_owned(), None),
                        Availability::Probe => (
                            EndpointState::Ready,
                            "ejection over: the next request is its probe".to_owned(),
                            None,
                        ),
                        Availability::Ejected { until, reason, .. } => (
                            EndpointState::Ejected,
                            format!("ejected: {reason}"),
                            Some(until.saturating_duration_since(now).as_millis() as u64),
                        ),
                    };
                    EndpointView {
                        address: e.address.clone(),
                        instance: e.instance.clone(),
                        state: state.as_str(),
                        weight: e.weight,
                        ewma_ms: e.ewma().as_secs_f64() * 1000.0,
                        in_flight: e.in_flight(),
                        last_error: e.last_error(),
                        reason,
                        ejected_for_ms,
                    }
                })
                .collect(),
            refused: set
                .refused
                .iter()
                .map(|r| RefusedView {
                    address: r.address.clone(),
                    reason: r.why.clone(),
                })
                .collect(),
        }
    }
}
