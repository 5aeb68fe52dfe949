//! One destination endpoint and what the balancer knows about it: peak-EWMA latency,
//! requests in flight, the last error.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Latency assumed for an endpoint before its first answer: low enough that new
/// endpoints get traffic, high enough that they do not get all of it.
const DEFAULT_RTT: Duration = Duration::from_millis(10);
/// How fast old latency observations fade.
const DECAY: Duration = Duration::from_secs(10);

/// Where discovery found the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Registry,
    Dns,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Registry => "registry",
            Source::Dns => "dns",
        }
    }
}

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
    ewma: Mutex<PeakEwma>,
    in_flight: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// Outlier ejection state.
    pub breaker: crate::breaker::Breaker,
    /// Connections to this endpoint.
    pub pool: crate::pool::Pool,
}

/// Peak-EWMA latency (Finagle, Linkerd): a slower observation replaces the estimate at
/// once, a faster one pulls it down gradually, so an endpoint that starts to stall is
/// avoided immediately and trusted again slowly.
#[derive(Debug)]
struct PeakEwma {
    nanos: f64,
    stamp: Instant,
}

// === impl PeakEwma ===

impl PeakEwma {
    /// How much of the estimate still counts after the time since the last observation.
    fn weight_of_past(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        (-elapsed / DECAY.as_secs_f64()).exp()
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
            ewma: Mutex::new(PeakEwma {
                nanos: DEFAULT_RTT.as_nanos() as f64,
                stamp: Instant::now(),
            }),
            in_flight: AtomicUsize::new(0),
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

    /// Records the time one request took to get its response headers.
    pub fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        // A std Mutex: held for a few arithmetic operations, never across an await.
        let mut e = self.ewma.lock().expect("ewma lock");
        let rtt = rtt.as_nanos() as f64;
        if rtt > e.nanos {
            e.nanos = rtt;
        } else {
            let w = e.weight_of_past(now);
            e.nanos = e.nanos * w + rtt * (1.0 - w);
        }
        e.stamp = now;
    }

    /// The current latency estimate. Without new observations it decays towards zero,
    /// so an endpoint that has not been tried for a while gets tried again.
    pub fn ewma(&self) -> Duration {
        let e = self.ewma.lock().expect("ewma lock");
        Duration::from_nanos((e.nanos * e.weight_of_past(Instant::now())) as u64)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The balancer's cost: expected latency times queue depth, per unit of weight.
    pub fn load(&self) -> f64 {
        let nanos = self.ewma().as_nanos() as f64;
        nanos * (self.in_flight() as f64 + 1.0) / f64::from(self.weight)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("error lock") = error;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }
}

/// A request in flight to an endpoint.
pub struct InFlight(std::sync::Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peaks_are_taken_at_once_and_decay_slowly() {
        let e = Endpoint::new("a:1".into(), 1, None);
        e.observe(Duration::from_millis(100));
        assert_eq!(e.ewma(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_secs(1)).await;
        e.observe(Duration::from_millis(1));
        let after = e.ewma();
        assert!(
            after < Duration::from_millis(100) && after > Duration::from_millis(80),
            "{after:?}"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        e.observe(Duration::from_millis(1));
        assert!(e.ewma() < Duration::from_millis(2));
        // Unobserved, the estimate fades so the endpoint gets tried again.
        e.observe(Duration::from_millis(500));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(e.ewma() < Duration::from_millis(30), "{:?}", e.ewma());
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
