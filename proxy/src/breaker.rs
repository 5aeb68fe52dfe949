//! Outlier ejection, per endpoint: after enough consecutive failures the endpoint is taken
//! out of rotation for a backoff that doubles with each repeat, then let back in for one
//! probe request that decides whether it stays.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct EjectionConfig {
    /// Consecutive failures (connect errors, 5xx, gRPC UNAVAILABLE) that eject.
    pub consecutive_failures: u32,
    /// First ejection's length; each repeat doubles it.
    pub base: Duration,
    /// Longest ejection.
    pub max: Duration,
    /// Largest share of a service's endpoints that may be ejected at once, in percent.
    pub max_percent: u32,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_failures: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_percent: 50,
        }
    }
}

#[derive(Debug, Default)]
pub struct Breaker {
    /// A std Mutex: a few comparisons under it, never an await.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// Ejections so far (the backoff doubles with each).
    ejections: u32,
    ejected: Option<Ejection>,
}

#[derive(Clone, Debug)]
struct Ejection {
    at: Instant,
    until: Instant,
    reason: String,
    /// A probe request is out; no other request may use the endpoint meanwhile.
    probing: bool,
}

/// Whether an endpoint may take a request now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// Out of rotation until `until`.
    Ejected {
        since: Instant,
        until: Instant,
        reason: String,
    },
    /// The ejection ran out: the next request is its probe.
    Probe,
}

// === impl Breaker ===

impl Breaker {
    pub fn availability(&self, now: Instant) -> Availability {
        let state = self.state.lock().expect("breaker lock");
        match &state.ejected {
            None => Availability::Ready,
            Some(e) if now >= e.until && !e.probing => Availability::Probe,
            Some(e) => Availability::Ejected {
                since: e.at,
                until: e.until,
                reason: e.reason.clone(),
            },
        }
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        matches!(self.availability(now), Availability::Ejected { .. })
    }

    /// When the endpoint was last ejected, if it is out now.
    pub fn ejected_at(&self) -> Option<Instant> {
        self.state
            .lock()
            .expect("breaker lock")
            .ejected
            .as_ref()
            .map(|e| e.at)
    }

    /// Claims the probe of an endpoint whose ejection ran out; true if this request is it.
    pub fn claim_probe(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        match state.ejected.as_mut() {
            Some(e) if now >= e.until && !e.probing => {
                e.probing = true;
                true
            }
            _ => false,
        }
    }

    /// A success: the failure streak ends and an ejected endpoint (its probe passed)
    /// is back. Returns true if it came back.
    pub fn success(&self) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        state.failures = 0;
        state.ejected.take().is_some()
    }

    /// A failure. Ejects the endpoint when the streak reaches the threshold (or its probe
    /// failed) and `may_eject` allows one more ejection; returns true if it was ejected.
    pub fn failure(
        &self,
        config: &EjectionConfig,
        reason: &str,
        may_eject: bool,
        now: Instant,
    ) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        state.failures = state.failures.saturating_add(1);
        let probe_failed = state.ejected.as_ref().is_some_and(|e| e.probing);
        let threshold = state.failures >= config.consecutive_failures.max(1);
        if !(probe_failed || (threshold && state.ejected.is_none() && may_eject)) {
            return false;
        }
        state.ejections = state.ejections.saturating_add(1);
        let backoff = config
            .base
            .saturating_mul(1u32 << (state.ejections - 1).min(16))
            .min(config.max);
        let reason = if probe_failed {
            format!("probe failed: {reason}")
        } else {
            format!("{} consecutive failures, last: {reason}", state.failures)
        };
        state.ejected = Some(Ejection {
            at: now,
            until: now + backoff,
            reason,
            probing: false,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EjectionConfig {
        EjectionConfig {
            consecutive_failures: 3,
            base: Duration::from_secs(30),
            max: Duration::from_secs(100),
            max_percent: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_the_streak_then_probes_then_doubles() {
        let b = Breaker::default();
        let c = config();
        let now = Instant::now();
        assert!(!b.failure(&c, "refused", true, now));
        assert!(!b.failure(&c, "refused", true, now));
        assert!(
            b.failure(&c, "refused", true, now),
            "third consecutive failure ejects"
        );
        assert!(b.is_ejected(now + Duration::from_secs(29)));
        assert!(!b.claim_probe(now + Duration::from_secs(29)));

        let t1 = now + Duration::from_secs(30);
        assert_eq!(b.availability(t1), Availability::Probe);
        assert!(b.claim_probe(t1));
        assert!(!b.claim_probe(t1), "one probe at a time");
        assert!(b.is_ejected(t1), "out while its probe runs");

        // The probe fails: out again, for twice as long.
        assert!(b.failure(&c, "refused", true, t1));
        assert!(b.is_ejected(t1 + Duration::from_secs(59)));
        let t2 = t1 + Duration::from_secs(60);
        assert!(b.claim_probe(t2));
        // Third ejection would be 120 s: capped at 100 s.
        assert!(b.failure(&c, "refused", true, t2));
        assert!(b.is_ejected(t2 + Duration::from_secs(99)));
        assert!(!b.is_ejected(t2 + Duration::from_secs(100)));

        // A passing probe brings it back.
        let t3 = t2 + Duration::from_secs(100);
        assert!(b.claim_probe(t3));
        assert!(b.success());
        assert_eq!(b.availability(t3), Availability::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_streak_and_the_cap_can_forbid_ejection() {
        let b = Breaker::default();
        let c = config();
        let now = Instant::now();
        b.failure(&c, "x", true, now);
        b.failure(&c, "x", true, now);
        assert!(!b.success());
        assert!(!b.failure(&c, "x", true, now));
        assert!(!b.failure(&c, "x", true, now));
        assert!(
            !b.failure(&c, "x", false, now),
            "too many endpoints out already"
        );
        assert!(b.failure(&c, "x", true, now), "allowed again");
    }
}
