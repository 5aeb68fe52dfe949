//! Outlier ejection, per endpoint: after enough consecutive failures the endpoint is taken
//! out of rotation for a backoff that doubles with each repeat, then let back in for one
//! probe request that decides whether it stays. No more than `--eject-max-percent` of a
//! destination's endpoints are out at once: when a whole service fails, ejecting all of
//! it would only turn errors into `no-endpoints`.
//!
//! A probe always ends: its request passes or fails (a timeout is a failure), or its
//! caller gives up and the [`Probe`] guard, dropped unsettled, lets the next request
//! probe instead. A probe still out after [`EjectionConfig::probe_wait`] (an endpoint that
//! never answers a request without a deadline) is given up on the same way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::flags::{Invalid, defaults};

/// How long a probe may stay unanswered before another request may probe instead.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// When endpoints are ejected, and for how long (flags `--eject-*`).
#[derive(clap::Args, Clone, Copy, Debug)]
#[command(next_help_heading = "Outlier ejection")]
pub struct EjectionConfig {
    /// Consecutive failures (connect errors, 5xx, gRPC UNAVAILABLE) that eject an endpoint.
    #[arg(
        long = "eject-after",
        value_name = "EJECT_AFTER",
        env = "MESH_EJECT_AFTER",
        default_value_t = 5
    )]
    pub consecutive_failures: u32,

    /// First ejection's length; it doubles per repeat.
    #[arg(long = "eject-backoff",
        value_name = "EJECT_BACKOFF", env = "MESH_EJECT_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    pub base: Duration,

    /// Longest ejection.
    #[arg(long = "eject-backoff-max",
        value_name = "EJECT_BACKOFF_MAX", env = "MESH_EJECT_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max: Duration,

    /// Largest share of a service's endpoints ejected at once, in percent.
    #[arg(
        long = "eject-max-percent",
        value_name = "EJECT_MAX_PERCENT",
        env = "MESH_EJECT_MAX_PERCENT",
        default_value_t = 50
    )]
    pub max_percent: u32,

    /// How long a probe may stay unanswered before another request may probe instead.
    #[arg(skip = PROBE_WAIT)]
    pub probe_wait: Duration,
}

// === impl EjectionConfig ===

impl Default for EjectionConfig {
    fn default() -> Self {
        defaults()
    }
}

impl EjectionConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_percent > 100 {
            return Err(Invalid::new("--eject-max-percent", "must be at most 100"));
        }
        Ok(())
    }

    /// May one more of `total` endpoints be ejected while `ejected` are out already?
    fn may_eject_another(&self, ejected: usize, total: usize) -> bool {
        (ejected + 1) * 100 <= total * self.max_percent as usize
    }
}

#[derive(Debug, Default)]
pub struct Breaker {
    /// A std Mutex: a few comparisons under it, never an await. Shared with the
    /// endpoint's [`Probe`], which gives its claim back when dropped unsettled.
    state: Arc<Mutex<State>>,
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
    /// A probe request is out until then; no other request may use the endpoint
    /// meanwhile.
    probe: Option<Instant>,
}

/// The claim on an ejected endpoint's probe, held by the probing request. Settle it
/// once the breaker has been told the outcome; dropped unsettled (the caller gave up,
/// the try was abandoned), it releases the probe for the next request.
#[must_use]
pub struct Probe {
    breaker: Arc<Mutex<State>>,
    until: Instant,
    settled: bool,
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
            Some(e) if now >= e.until && e.probe.is_none_or(|until| now >= until) => {
                Availability::Probe
            }
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

    /// Claims the probe of an endpoint whose ejection ran out, for `wait` at most; the
    /// claim's end if this request is it.
    fn claim_probe(&self, now: Instant, wait: Duration) -> Option<Instant> {
        let mut state = self.state.lock().expect("breaker lock");
        match state.ejected.as_mut() {
            Some(e) if now >= e.until && e.probe.is_none_or(|until| now >= until) => {
                let until = now + wait;
                e.probe = Some(until);
                Some(until)
            }
            _ => None,
        }
    }

    /// A success: the failure streak ends and an ejected endpoint (its probe passed)
    /// is back. Returns true if it came back.
    pub fn success(&self) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        state.failures = 0;
        state.ejected.take().is_some()
    }

    /// A failure of this endpoint, one of `peers` (every endpoint of its destination,
    /// itself included): ejects it when the streak reaches the threshold (or its probe
    /// failed) and the cap on ejected endpoints allows; returns true if it was ejected.
    pub fn record_failure<'a>(
        &self,
        peers: impl ExactSizeIterator<Item = &'a Breaker>,
        config: &EjectionConfig,
        reason: &str,
        now: Instant,
    ) -> bool {
        let total = peers.len();
        let ejected = peers.filter(|b| b.is_ejected(now)).count();
        self.failure(
            config,
            reason,
            config.may_eject_another(ejected, total),
            now,
        )
    }

    /// A failure. Ejects the endpoint when the streak reaches the threshold (or its probe
    /// failed) and `may_eject` allows one more ejection; returns true if it was ejected.
    fn failure(
        &self,
        config: &EjectionConfig,
        reason: &str,
        may_eject: bool,
        now: Instant,
    ) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        state.failures = state.failures.saturating_add(1);
        let probe_failed = state.ejected.as_ref().is_some_and(|e| e.probe.is_some());
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
            probe: None,
        });
        true
    }
}

// === impl Probe ===

impl Probe {
    /// Claims the probe of `breaker`'s endpoint if its ejection ran out and no probe is
    /// out.
    pub fn claim(breaker: &Breaker, config: &EjectionConfig, now: Instant) -> Option<Probe> {
        let until = breaker.claim_probe(now, config.probe_wait)?;
        Some(Probe {
            breaker: breaker.state.clone(),
            until,
            settled: false,
        })
    }

    /// The breaker has been told how the probe went.
    pub fn settle(mut self) {
        self.settled = true;
    }
}

impl Drop for Probe {
    /// Unsettled: gives the claim back, if it is still the current one.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut state = self.breaker.lock().expect("breaker lock");
        if let Some(e) = state.ejected.as_mut()
            && e.probe == Some(self.until)
        {
            e.probe = None;
        }
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
            probe_wait: Duration::from_secs(10),
        }
    }

    fn ejected(c: &EjectionConfig, now: Instant) -> Breaker {
        let b = Breaker::default();
        for _ in 0..3 {
            b.failure(c, "refused", true, now);
        }
        assert!(b.is_ejected(now));
        b
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
        assert!(
            b.claim_probe(now + Duration::from_secs(29), c.probe_wait)
                .is_none()
        );

        let t1 = now + Duration::from_secs(30);
        assert_eq!(b.availability(t1), Availability::Probe);
        assert!(b.claim_probe(t1, c.probe_wait).is_some());
        assert!(
            b.claim_probe(t1, c.probe_wait).is_none(),
            "one probe at a time"
        );
        assert!(b.is_ejected(t1), "out while its probe runs");

        // The probe fails: out again, for twice as long.
        assert!(b.failure(&c, "refused", true, t1));
        assert!(b.is_ejected(t1 + Duration::from_secs(59)));
        let t2 = t1 + Duration::from_secs(60);
        assert!(b.claim_probe(t2, c.probe_wait).is_some());
        // Third ejection would be 120 s: capped at 100 s.
        assert!(b.failure(&c, "refused", true, t2));
        assert!(b.is_ejected(t2 + Duration::from_secs(99)));
        assert!(!b.is_ejected(t2 + Duration::from_secs(100)));

        // A passing probe brings it back.
        let t3 = t2 + Duration::from_secs(100);
        assert!(b.claim_probe(t3, c.probe_wait).is_some());
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

    #[tokio::test(start_paused = true)]
    async fn no_more_than_max_percent_of_the_peers_are_ejected_at_once() {
        let c = config();
        let now = Instant::now();
        let peers: Vec<Breaker> = (0..4).map(|_| Breaker::default()).collect();
        let fail_three_times =
            |b: &Breaker| (0..3).any(|_| b.record_failure(peers.iter(), &c, "refused", now));
        assert!(fail_three_times(&peers[0]), "1 of 4 out");
        assert!(fail_three_times(&peers[1]), "2 of 4 out: 50 %");
        assert!(!fail_three_times(&peers[2]), "a third would be 75 %");
        assert!(!peers[2].is_ejected(now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_unsettled_lets_the_next_request_probe() {
        let c = config();
        let now = Instant::now();
        let e = ejected(&c, now);
        let t = now + Duration::from_secs(30);
        let probe = Probe::claim(&e, &c, t).expect("the ejection ran out");
        assert!(Probe::claim(&e, &c, t).is_none(), "one probe at a time");
        drop(probe);
        assert_eq!(e.availability(t), Availability::Probe);
        assert!(Probe::claim(&e, &c, t).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_answers_is_given_up_on_after_the_probe_wait() {
        let c = config();
        let now = Instant::now();
        let e = ejected(&c, now);
        let t = now + Duration::from_secs(30);
        let hanging = Probe::claim(&e, &c, t).unwrap();
        assert!(e.is_ejected(t + c.probe_wait - Duration::from_millis(1)));
        let later = t + c.probe_wait;
        assert_eq!(e.availability(later), Availability::Probe);
        let next = Probe::claim(&e, &c, later).expect("another request probes");
        // The stale probe's late release does not free the new claim.
        drop(hanging);
        assert!(Probe::claim(&e, &c, later).is_none());
        drop(next);
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_failed_probe_ejects_again_for_longer() {
        let c = config();
        let now = Instant::now();
        let e = ejected(&c, now);
        let t = now + Duration::from_secs(30);
        let probe = Probe::claim(&e, &c, t).unwrap();
        assert!(e.failure(&c, "timeout", true, t), "a failed probe ejects");
        probe.settle();
        assert!(e.is_ejected(t + Duration::from_secs(59)));
        assert_eq!(
            e.availability(t + Duration::from_secs(60)),
            Availability::Probe
        );
    }
}
