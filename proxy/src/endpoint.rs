//! One destination endpoint and what the balancer knows about it: peak-EWMA latency of
//! its answers, the share of its recent tries that succeeded, requests in flight, the
//! last error.
//!
//! Failures count against an endpoint's load: its cost is divided by the square of its
//! success estimate (a third of tries failing roughly doubles it), and a failure never
//! lowers its latency estimate (a fast failure is no sign of a fast endpoint), so P2C
//! steers traffic away from an endpoint that fails more than its peers. While an
//! endpoint gets no tries both estimates drift back (latency towards zero, success
//! towards one), so it is tried again before long.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Latency assumed for an endpoint before its first answer: low enough that new
/// endpoints get traffic, high enough that they do not get all of it.
const DEFAULT_RTT: Duration = Duration::from_millis(10);
/// How fast old observations fade while new ones come in, and how fast the estimates
/// drift back while none do.
const DECAY: Duration = Duration::from_secs(10);
/// How far one try moves the success estimate: about the last ten tries count.
const SUCCESS_WEIGHT: f64 = 0.1;
/// The success estimate is never taken as lower than this when it divides the cost, so
/// an endpoint failing every try costs at most 400 times its latency.
const SUCCESS_FLOOR: f64 = 0.05;

/// Where discovery found the endpoint.
pub use mesh_registry_api::sidecar::Source;

#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` to connect to.
    pub address: String,
    pub weight: u32,
    /// The registry's instance id, for registry endpoints.
    pub instance: Option<String>,
    /// The endpoint is a mesh sidecar (its registration carries its mTLS mode): its
    /// `mesh-error` answers are the mesh's own word.
    pub sidecar: bool,
    /// The endpoint is a sidecar that speaks mTLS.
    pub tls: bool,
    /// The instance's registration metadata, which routes' subsets select on.
    pub metadata: BTreeMap<String, String>,
    /// A std Mutex: held for a few arithmetic operations, never across an await.
    estimate: Mutex<Estimate>,
    in_flight: AtomicUsize,
    /// Of `in_flight`, the connections carried as bytes (opaque TCP, upgraded HTTP).
    spliced: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// Outlier ejection state.
    pub breaker: crate::breaker::Breaker,
    /// Connections to this endpoint.
    pub pool: crate::pool::Pool,
}

/// What the balancer knows of an endpoint's recent tries.
#[derive(Debug)]
struct Estimate {
    /// Peak-EWMA latency (Finagle, Linkerd), in nanoseconds: a slower observation
    /// replaces the estimate at once, a faster one pulls it down gradually, so an
    /// endpoint that starts to stall is avoided immediately and trusted again slowly.
    nanos: f64,
    /// When latency was last observed.
    stamp: Instant,
    /// Share of recent tries that succeeded (an EWMA over tries, 1 at first).
    success: f64,
    /// When a try last ended.
    tried: Instant,
}

// === impl Estimate ===

impl Estimate {
    /// How much of an estimate still counts `elapsed` after its last update.
    fn weight_of_past(elapsed: Duration) -> f64 {
        (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
    }

    fn latency(&self, now: Instant) -> f64 {
        self.nanos * Self::weight_of_past(now.saturating_duration_since(self.stamp))
    }

    /// The success estimate at `now`, drifting back towards 1 while no try ends.
    fn success(&self, now: Instant) -> f64 {
        if self.success >= 1.0 {
            // The common case, and no time to weigh.
            return 1.0;
        }
        let w = Self::weight_of_past(now.saturating_duration_since(self.tried));
        1.0 - (1.0 - self.success) * w
    }

    /// Folds in a try's latency: a slower one replaces the estimate at once, a faster one
    /// pulls it down by how much time has passed since the last.
    fn observe(&mut self, now: Instant, rtt: Duration) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.nanos {
            self.nanos = rtt;
        } else {
            let w = Self::weight_of_past(now.saturating_duration_since(self.stamp));
            self.nanos = self.nanos * w + rtt * (1.0 - w);
        }
        self.stamp = now;
    }

    fn tried(&mut self, now: Instant, succeeded: bool) {
        self.success = match succeeded {
            true if self.success >= 1.0 => 1.0,
            true => self.success(now) * (1.0 - SUCCESS_WEIGHT) + SUCCESS_WEIGHT,
            false => self.success(now) * (1.0 - SUCCESS_WEIGHT),
        };
        self.tried = now;
    }
}

// === impl Endpoint ===

impl Endpoint {
    pub fn new(address: String, weight: u32, instance: Option<String>) -> Self {
        Endpoint {
            pool: crate::pool::Pool::new(address.clone()),
            address,
            weight: weight.max(1),
            instance,
            sidecar: false,
            tls: false,
            metadata: BTreeMap::new(),
            estimate: Mutex::new(Estimate {
                nanos: DEFAULT_RTT.as_nanos() as f64,
                stamp: Instant::now(),
                success: 1.0,
                tried: Instant::now(),
            }),
            in_flight: AtomicUsize::new(0),
            spliced: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            breaker: crate::breaker::Breaker::default(),
        }
    }

    /// Marks the endpoint as a mesh sidecar, speaking mTLS or not.
    pub fn sidecar(mut self, tls: bool) -> Self {
        self.sidecar = true;
        self.tls = tls;
        self
    }

    /// Gives the endpoint its instance's registration metadata.
    pub fn with_metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Records a try that succeeded at `now`, `rtt` after it was sent (its answer's
    /// head).
    pub fn succeeded(&self, rtt: Duration, now: Instant) {
        let mut estimate = self.estimate.lock().expect("estimate lock");
        estimate.observe(now, rtt);
        estimate.tried(now, true);
    }

    /// Records a try that failed at `now`, `rtt` after it was sent: a slow failure
    /// raises the latency estimate as a slow answer does, a fast one leaves it alone.
    pub fn failed(&self, rtt: Duration, now: Instant) {
        let mut estimate = self.estimate.lock().expect("estimate lock");
        if rtt.as_nanos() as f64 > estimate.nanos {
            estimate.observe(now, rtt);
        }
        estimate.tried(now, false);
    }

    /// The current latency estimate. Without new observations it decays towards zero,
    /// so an endpoint that has not been tried for a while gets tried again.
    pub fn ewma(&self) -> Duration {
        let estimate = self.estimate.lock().expect("estimate lock");
        Duration::from_nanos(estimate.latency(Instant::now()) as u64)
    }

    /// The share of recent tries that succeeded, as the balancer sees it.
    pub fn success(&self) -> f64 {
        let estimate = self.estimate.lock().expect("estimate lock");
        estimate.success(Instant::now())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Connections carried as bytes to this endpoint now: opaque TCP connections and
    /// upgraded HTTP ones.
    pub fn spliced(&self) -> usize {
        self.spliced.load(Ordering::Relaxed)
    }

    /// The balancer's cost: expected latency times queue depth, per unit of weight, and
    /// higher the more of its recent tries failed.
    pub fn load(&self) -> f64 {
        let now = Instant::now();
        let (nanos, success) = {
            let estimate = self.estimate.lock().expect("estimate lock");
            (estimate.latency(now), estimate.success(now))
        };
        let success = success.max(SUCCESS_FLOOR);
        nanos * (self.in_flight() as f64 + 1.0) / f64::from(self.weight) / (success * success)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            spliced: false,
        }
    }

    pub fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("error lock") = error;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }
}

/// A request in flight to an endpoint, or a connection open to it.
pub struct InFlight {
    endpoint: std::sync::Arc<Endpoint>,
    spliced: bool,
}

impl InFlight {
    /// The request is now a connection carried as bytes (or was one from the start):
    /// counted among the endpoint's spliced connections too, until the guard drops.
    pub fn spliced(mut self) -> Self {
        if !self.spliced {
            self.endpoint.spliced.fetch_add(1, Ordering::Relaxed);
            self.spliced = true;
        }
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.spliced {
            self.endpoint.spliced.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peaks_are_taken_at_once_and_decay_slowly() {
        let e = Endpoint::new("a:1".into(), 1, None);
        e.succeeded(Duration::from_millis(100), Instant::now());
        assert_eq!(e.ewma(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_secs(1)).await;
        e.succeeded(Duration::from_millis(1), Instant::now());
        let after = e.ewma();
        assert!(
            after < Duration::from_millis(100) && after > Duration::from_millis(80),
            "{after:?}"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        e.succeeded(Duration::from_millis(1), Instant::now());
        assert!(e.ewma() < Duration::from_millis(2));
        // Unobserved, the estimate fades so the endpoint gets tried again.
        e.succeeded(Duration::from_millis(500), Instant::now());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(e.ewma() < Duration::from_millis(30), "{:?}", e.ewma());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_raise_the_cost_and_a_fast_failure_never_lowers_latency() {
        let e = Endpoint::new("a:1".into(), 1, None);
        e.succeeded(Duration::from_millis(10), Instant::now());
        let healthy = e.load();
        for _ in 0..3 {
            e.failed(Duration::from_millis(1), Instant::now());
        }
        assert_eq!(
            e.ewma(),
            Duration::from_millis(10),
            "fast failures say nothing of speed"
        );
        // Three failures in a row: success 0.9³ ≈ 0.73, so the cost is about 1.9 times.
        let ratio = e.load() / healthy;
        assert!((1.8..2.0).contains(&ratio), "{ratio}");
        e.failed(Duration::from_millis(50), Instant::now());
        assert_eq!(
            e.ewma(),
            Duration::from_millis(50),
            "a slow failure is slow"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_success_estimate_recovers_with_successes_and_while_idle() {
        let e = Endpoint::new("a:1".into(), 1, None);
        for _ in 0..10 {
            e.failed(Duration::from_millis(1), Instant::now());
        }
        let failing = e.success();
        assert!(failing < 0.4, "{failing}");
        for _ in 0..10 {
            e.succeeded(Duration::from_millis(1), Instant::now());
        }
        assert!(e.success() > failing + 0.3, "{}", e.success());
        e.failed(Duration::from_millis(1), Instant::now());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(e.success() > 0.99, "untried for a minute: {}", e.success());
    }

    #[tokio::test(start_paused = true)]
    async fn load_grows_with_requests_in_flight_and_shrinks_with_weight() {
        let light = Arc::new(Endpoint::new("a:1".into(), 1, None));
        let heavy = Arc::new(Endpoint::new("b:1".into(), 4, None));
        let idle = light.load();
        let guard = light.start();
        assert_eq!(light.in_flight(), 1);
        assert!((light.load() - 2.0 * idle).abs() < 1.0);
        drop(guard);
        assert_eq!(light.in_flight(), 0);
        assert!((heavy.load() - idle / 4.0).abs() < 1.0);
    }
}
