//! Discovery: destination service name → its current endpoints (and its routes, which
//! [`crate::policy`] follows beside them).
//!
//! Each destination has one task that long-polls the registry on that service's index
//! and publishes complete endpoint sets into the [`Destination`], so requests read them
//! without taking a lock. A name the registry says does not exist (`exists:false`), or
//! that is no valid service name at all (a dotted DNS name, an IP address), is resolved
//! through DNS instead, re-resolved when its TTL runs out; the registry watch continues,
//! so a service that registers later takes over from DNS. While the registry is
//! unreachable the last known endpoints stay in use and the watch retries with capped,
//! jittered backoff.
//!
//! Destinations are bounded: one unused for `--destination-idle-timeout` is dropped with
//! its watch (one with endpoints no sooner than its pooled connections idle out), and past
//! `--max-destinations` new names are refused, so an app sending arbitrary `Host` values
//! cannot make the sidecar hold a watch per name forever.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mesh_registry_api::{Client, validate};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::budget::BudgetConfig;
use crate::destination::{Destination, DialPolicy, EndpointSet};
use crate::dns::Dns;
use crate::error::{ErrorKind, ProxyError};
use crate::flags::Invalid;
use crate::metrics::{Direction, EndpointState, Metrics};

/// How long a request waits for a destination's first resolution before answering
/// `no-endpoints`: the registry answers in milliseconds when it is up.
const FIRST_RESOLUTION_WAIT: Duration = Duration::from_secs(3);

/// How many destinations are followed, for how long, and where names the registry does
/// not know are resolved.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Discovery")]
pub struct DiscoveryConfig {
    /// A destination no request used for this long is dropped, with its registry watch
    /// and DNS refreshes; the next request for it starts afresh. One with endpoints is
    /// kept at least as long as its idle pooled connections (90 s).
    #[arg(long = "destination-idle-timeout",
        value_name = "DESTINATION_IDLE_TIMEOUT", env = "MESH_DESTINATION_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Destinations followed at once; past them, requests for new names get a fast 503
    /// (`overloaded`) until some fall idle.
    #[arg(long, env = "MESH_MAX_DESTINATIONS", default_value_t = 1000)]
    pub max_destinations: usize,

    /// DNS server (`IP:PORT`) for names the registry does not know; by default the
    /// system's (`/etc/resolv.conf`). `/etc/hosts` is read either way.
    #[arg(long, env = "MESH_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
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
    /// Each destination's retry budget.
    budget: BudgetConfig,
    /// Which endpoints may be dialled.
    dial: DialPolicy,
    /// The zero of every destination's `last_used`.
    started: Instant,
    /// The idle sweep, stopped by [`Discovery::stop`].
    evictor: Mutex<Option<JoinHandle<()>>>,
}

// === impl DiscoveryConfig ===

impl Default for DiscoveryConfig {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl DiscoveryConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_destinations == 0 {
            return Err(Invalid::new("--max-destinations", "must be at least 1"));
        }
        if self.idle_timeout < Duration::from_millis(100) {
            return Err(Invalid::new(
                "--destination-idle-timeout",
                "must be at least 100ms",
            ));
        }
        Ok(())
    }
}

// === impl Discovery ===

impl Discovery {
    /// Discovery, with a task that drops idle destinations for as long as it exists.
    /// Destinations get `budget` for their retries; `dial` says which endpoints they
    /// keep.
    pub fn new(
        registry: Client,
        metrics: Arc<Metrics>,
        config: DiscoveryConfig,
        budget: BudgetConfig,
        dial: DialPolicy,
    ) -> Arc<Self> {
        let dns = match Dns::new(config.dns_server) {
            Ok(dns) => Some(dns),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver: names unknown to the registry will not resolve");
                None
            }
        };
        let discovery = Arc::new(Discovery {
            registry,
            dns,
            metrics,
            destinations: Mutex::new(HashMap::new()),
            default_port: 80,
            config,
            budget,
            dial,
            started: Instant::now(),
            evictor: Mutex::new(None),
        });
        let evictor = tokio::spawn(evict_idle(Arc::downgrade(&discovery)));
        *discovery.evictor.lock().expect("evictor lock") = Some(evictor);
        discovery
    }

    /// Stops every task discovery started (the idle sweep, each destination's
    /// follower) and returns once they have ended. The endpoints known stay readable.
    pub async fn stop(&self) {
        let evictor = self.evictor.lock().expect("evictor lock").take();
        let destinations = self.snapshot();
        let followers = destinations.iter().filter_map(|d| d.unfollow());
        let tasks: Vec<JoinHandle<()>> = evictor.into_iter().chain(followers).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
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
                    let metrics = self.metrics.service(Direction::Outbound, name);
                    let d = Arc::new(Destination::new(name, self.budget, metrics, now));
                    all.insert(key.into_owned(), d.clone());
                    (d, true)
                }
            }
        };
        destination.used(now);
        if fresh {
            self.metrics.destination_added(name);
            let port = port.unwrap_or(self.default_port);
            let task = tokio::spawn(self.clone().follow(destination.clone(), port));
            destination.followed_by(task);
        }
        // The first request is routed as the registry says too: its endpoints and its
        // routes are asked for together.
        let follows_policy = validate::service_name(name).is_ok();
        if destination.is_resolved(follows_policy) {
            return Ok(destination);
        }
        let first = destination.first_resolution(follows_policy);
        let _ = tokio::time::timeout(FIRST_RESOLUTION_WAIT, first).await;
        // In use until now, however long the first resolution took.
        destination.used(self.millis());
        Ok(destination)
    }

    fn millis(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.started)
            .as_millis() as u64
    }

    /// Drops every destination no request used for the idle timeout (and none is using
    /// now), stopping its watch. One with endpoints is kept at least as long as their
    /// pooled connections would be, so a quiet spell does not close them (and the next
    /// burst does not open, and handshake, a connection per request in flight).
    fn evict_idle(&self) {
        let idle = self.config.idle_timeout.as_millis() as u64;
        let connected = idle.max(crate::pool::IDLE_TIMEOUT.as_millis() as u64);
        let now = self.millis();
        let evicted: Vec<Arc<Destination>> = self
            .destinations
            .lock()
            .expect("destinations lock")
            .extract_if(|_, d| {
                let limit = if d.endpoints().endpoints.is_empty() {
                    idle
                } else {
                    connected
                };
                d.idle(now, limit)
            })
            .map(|(_, d)| d)
            .collect();
        for destination in evicted {
            destination.unfollow();
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

    /// Keeps one destination's endpoints (and, for a registry name, its routes) current,
    /// until the destination falls idle or discovery stops.
    async fn follow(self: Arc<Self>, destination: Arc<Destination>, port: u16) {
        if validate::service_name(&destination.name).is_ok() {
            let policy = destination.policy.clone().follow(self.registry.clone());
            tokio::join!(self.follow_registry(destination, port), policy);
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
                        self.metrics.registry_connected.report(true);
                        dns_refresh = None;
                        destination.set_error(None);
                        tracing::debug!(service = %name, endpoints = listing.instances.len(), "registry update");
                        let set = destination.registry_set(&listing, &self.dial);
                        destination.publish(set, &self.metrics);
                    }
                    Ok(_) => {
                        self.metrics.registry_connected.report(true);
                        if dns_refresh.is_none() {
                            tracing::info!(service = %name, "not in the registry; resolving through DNS");
                            dns_refresh = Some(self.resolve_dns(&destination, port).await);
                        }
                    }
                    Err(e) => {
                        self.metrics.registry_connected.report(false);
                        tracing::warn!(service = %name, error = %e, "registry watch failed; keeping the last known endpoints");
                        destination.set_error(Some(format!("registry unreachable: {e}")));
                        destination.resolution_done();
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
                let set = destination.dns_set(&answer.addresses, port, &self.dial);
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
                destination.resolution_done();
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
