//! Outlier ejection, per endpoint: after enough consecutive failures, or with a success
//! rate far below its peers' ([`success_rate`]), the endpoint is taken out of rotation
//! for a backoff that doubles with each repeat, then let back in for one probe request
//! that decides whether it stays. No more than `--eject-max-percent` of a destination's
//! endpoints are out at once: when a whole service fails, ejecting all of it would only
//! turn errors into `no-endpoints`.
//!
//! A probe always ends: its request passes or fails (a timeout is a failure), or its
//! caller gives up and the [`Probe`] guard, dropped unsettled, lets the next request
//! probe instead. A probe still out after [`EjectionConfig::probe_wait`] (an endpoint that
//! never answers a request without a deadline) is given up on the same way.

pub mod success_rate;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use self::success_rate::{Outcomes, SuccessRateConfig};
use mesh_registry_api::Backoff;

use crate::flags::{Invalid, defaults};
use crate::window::Window;

/// How long a probe may stay unanswered before another request may probe instead.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// When endpoints are ejected, and for how long (flags `--eject-*`).
#[derive(clap::Args, Clone, Copy, Debug)]
#[command(next_help_heading = "Outlier ejection")]
pub struct EjectionConfig {
    /// Consecutive failures (connect errors, 5xx and the gRPC statuses that stand for one)
    /// that eject an endpoint.
    #[arg(
        id = "eject_after",
        long = "eject-after",
        value_name = "EJECT_AFTER",
        env = "MESH_EJECT_AFTER",
        default_value_t = 5
    )]
    pub after: u32,

    /// First ejection's length; it doubles per repeat.
    #[arg(id = "eject_backoff", long = "eject-backoff",
        value_name = "EJECT_BACKOFF", env = "MESH_EJECT_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff: Duration,

    /// Longest ejection.
    #[arg(id = "eject_backoff_max", long = "eject-backoff-max",
        value_name = "EJECT_BACKOFF_MAX", env = "MESH_EJECT_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,

    /// Largest share of a service's endpoints ejected at once, in percent.
    #[arg(
        long = "eject-max-percent",
        value_name = "EJECT_MAX_PERCENT",
        env = "MESH_EJECT_MAX_PERCENT",
        default_value_t = 50
    )]
    pub max_percent: u32,

    #[command(flatten)]
    pub success_rate: SuccessRateConfig,

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
        self.success_rate.validate()
    }

    /// May one more of `total` endpoints be ejected while `ejected` are out already?
    fn may_eject_another(&self, ejected: usize, total: usize) -> bool {
        (ejected + 1) * 100 <= total * self.max_percent as usize
    }
}

#[derive(Debug)]
pub struct Breaker {
    /// A std Mutex: a few comparisons under it, never an await. Shared with the
    /// endpoint's [`Probe`], which gives its claim back when dropped unsettled.
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// Failures in a row.
    failures: u32,
    /// Successes and failures over the success-rate window.
    outcomes: Window,
    /// Ejections so far (the backoff doubles with each).
    ejections: u32,
    ejected: Option<Ejection>,
}

/// Which rule ejected an endpoint: the `reason` of `mesh_endpoint_ejections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    ConsecutiveFailures,
    SuccessRate,
    /// Its probe failed, so it is out again.
    ProbeFailed,
}

/// What the breaker reads of the endpoint's peers before judging a failure.
#[derive(Clone, Copy, Debug)]
struct Peers {
    /// One more ejection stays within `--eject-max-percent`.
    may_eject: bool,
    /// The outcomes of the peers in rotation, together.
    outcomes: Outcomes,
}

#[derive(Clone, Debug)]
struct Ejection {
    at: Instant,
    until: Instant,
    rule: Rule,
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

/// Whether an endpoint may take a request now: the breaker's state, read once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Ready,
    /// Out of rotation until `until` (or while its probe is out).
    Ejected {
        since: Instant,
        until: Instant,
        rule: Rule,
    },
    /// The ejection ran out and no probe is out: the next request should be its probe.
    ProbeDue {
        since: Instant,
    },
}

// === impl Standing ===

impl Standing {
    pub fn is_ejected(self) -> bool {
        matches!(self, Standing::Ejected { .. })
    }

    /// When it was ejected, if it is out or due a probe.
    pub fn since(self) -> Option<Instant> {
        match self {
            Standing::Ready => None,
            Standing::Ejected { since, .. } | Standing::ProbeDue { since } => Some(since),
        }
    }
}

// === impl Rule ===

impl Rule {
    pub const ALL: [Rule; 3] = [
        Rule::ConsecutiveFailures,
        Rule::SuccessRate,
        Rule::ProbeFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ConsecutiveFailures => "consecutive-failures",
            Rule::SuccessRate => "success-rate",
            Rule::ProbeFailed => "probe-failed",
        }
    }
}

// === impl Breaker ===

impl Default for Breaker {
    fn default() -> Self {
        let state = State {
            failures: 0,
            outcomes: Window::new(success_rate::WINDOW, Instant::now()),
            ejections: 0,
            ejected: None,
        };
        Breaker {
            state: Arc::new(Mutex::new(state)),
        }
    }
}

impl Breaker {
    /// Where the endpoint stands at `now`.
    pub fn standing(&self, now: Instant) -> Standing {
        let state = self.state.lock().expect("breaker lock");
        match &state.ejected {
            None => Standing::Ready,
            Some(e) if state.is_ejected(now) => Standing::Ejected {
                since: e.at,
                until: e.until,
                rule: e.rule,
            },
            Some(e) => Standing::ProbeDue { since: e.at },
        }
    }

    /// Why the endpoint was last ejected, if it is out (or due a probe) now.
    pub fn ejection_reason(&self) -> Option<String> {
        let state = self.state.lock().expect("breaker lock");
        state.ejected.as_ref().map(|e| e.reason.clone())
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
    /// is back, its old outcomes forgotten. Returns true if it came back.
    pub fn success(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        state.failures = 0;
        let back = state.ejected.take().is_some();
        if back {
            state.outcomes.clear();
        }
        state.outcomes.add(now, [1, 0]);
        back
    }

    /// The success rate over the window, and the tries it counts.
    pub fn success_rate(&self, now: Instant) -> Outcomes {
        self.state.lock().expect("breaker lock").outcomes(now)
    }

    /// A failure of this endpoint (`what` went wrong, for the ejection's reason), one of
    /// `peers` (every endpoint of its destination, itself included): ejects it when the streak reaches the threshold, its success
    /// rate is an outlier among the peers in rotation, or its probe failed, and the cap
    /// on ejected endpoints allows; the rule that ejected it, if one did.
    pub fn record_failure<'a>(
        &self,
        peers: impl ExactSizeIterator<Item = &'a Breaker>,
        config: &EjectionConfig,
        what: &str,
        now: Instant,
    ) -> Option<Rule> {
        // Peers are read first, each under its own lock, none while this one is held.
        let total = peers.len();
        let (mut out, mut outcomes) = (0, Outcomes::default());
        for peer in peers.filter(|peer| !std::ptr::eq(*peer, self)) {
            let mut state = peer.state.lock().expect("breaker lock");
            if state.is_ejected(now) {
                out += 1;
            } else {
                outcomes += state.outcomes(now);
            }
        }
        let peers = Peers {
            may_eject: config.may_eject_another(out, total),
            outcomes,
        };
        self.failure(config, what, peers, now)
    }

    /// A failure, judged against what the peers look like.
    fn failure(
        &self,
        config: &EjectionConfig,
        what: &str,
        peers: Peers,
        now: Instant,
    ) -> Option<Rule> {
        let mut state = self.state.lock().expect("breaker lock");
        state.failures = state.failures.saturating_add(1);
        state.outcomes.add(now, [0, 1]);
        let (rule, reason) = match &state.ejected {
            Some(e) if e.probe.is_some() => (Rule::ProbeFailed, format!("probe failed: {what}")),
            Some(_) => return None,
            None if !peers.may_eject => return None,
            None if state.failures >= config.after.max(1) => {
                let reason = format!("{} consecutive failures, last: {what}", state.failures);
                (Rule::ConsecutiveFailures, reason)
            }
            None => {
                let own = state.outcomes(now);
                let outlier = config.success_rate.outlier(own, peers.outcomes)?;
                (Rule::SuccessRate, format!("{outlier}; last: {what}"))
            }
        };
        state.eject(config, rule, reason, now);
        Some(rule)
    }
}

// === impl State ===

impl State {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected
            .as_ref()
            .is_some_and(|e| now < e.until || e.probe.is_some_and(|until| now < until))
    }

    fn outcomes(&mut self, now: Instant) -> Outcomes {
        let [succeeded, failed] = self.outcomes.totals(now);
        Outcomes { succeeded, failed }
    }

    /// Out of rotation for a backoff that doubles with each ejection.
    fn eject(&mut self, config: &EjectionConfig, rule: Rule, reason: String, now: Instant) {
        self.ejections = self.ejections.saturating_add(1);
        let backoff = Backoff::ceiling(config.backoff, config.backoff_max, self.ejections - 1);
        self.ejected = Some(Ejection {
            at: now,
            until: now + backoff,
            rule,
            reason,
            probe: None,
        });
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
            after: 3,
            backoff: Duration::from_secs(30),
            backoff_max: Duration::from_secs(100),
            max_percent: 50,
            success_rate: SuccessRateConfig {
                factor: 0.8,
                min_requests: 10,
            },
            probe_wait: Duration::from_secs(10),
        }
    }

    /// Peers that leave room for an ejection (or not), and have no outcomes.
    fn room(may_eject: bool) -> Peers {
        Peers {
            may_eject,
            outcomes: Outcomes::default(),
        }
    }

    fn refused() -> &'static str {
        "refused"
    }

    fn ejected(c: &EjectionConfig, now: Instant) -> Breaker {
        let b = Breaker::default();
        for _ in 0..3 {
            b.failure(c, refused(), room(true), now);
        }
        assert!(b.standing(now).is_ejected());
        b
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_the_streak_then_probes_then_doubles() {
        let b = Breaker::default();
        let c = config();
        let now = Instant::now();
        assert!(b.failure(&c, refused(), room(true), now).is_none());
        assert!(b.failure(&c, refused(), room(true), now).is_none());
        assert!(
            b.failure(&c, refused(), room(true), now).is_some(),
            "third consecutive failure ejects"
        );
        assert!(b.standing(now + Duration::from_secs(29)).is_ejected());
        assert!(
            b.claim_probe(now + Duration::from_secs(29), c.probe_wait)
                .is_none()
        );

        let t1 = now + Duration::from_secs(30);
        assert!(matches!(b.standing(t1), Standing::ProbeDue { .. }));
        assert!(b.claim_probe(t1, c.probe_wait).is_some());
        assert!(
            b.claim_probe(t1, c.probe_wait).is_none(),
            "one probe at a time"
        );
        assert!(b.standing(t1).is_ejected(), "out while its probe runs");

        // The probe fails: out again, for twice as long.
        assert!(b.failure(&c, refused(), room(true), t1).is_some());
        assert!(b.standing(t1 + Duration::from_secs(59)).is_ejected());
        let t2 = t1 + Duration::from_secs(60);
        assert!(b.claim_probe(t2, c.probe_wait).is_some());
        // Third ejection would be 120 s: capped at 100 s.
        assert!(b.failure(&c, refused(), room(true), t2).is_some());
        assert!(b.standing(t2 + Duration::from_secs(99)).is_ejected());
        assert!(!b.standing(t2 + Duration::from_secs(100)).is_ejected());

        // A passing probe brings it back.
        let t3 = t2 + Duration::from_secs(100);
        assert!(b.claim_probe(t3, c.probe_wait).is_some());
        assert!(b.success(now));
        assert_eq!(b.standing(t3), Standing::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_streak_and_the_cap_can_forbid_ejection() {
        let b = Breaker::default();
        let c = config();
        let now = Instant::now();
        b.failure(&c, refused(), room(true), now);
        b.failure(&c, refused(), room(true), now);
        assert!(!b.success(now));
        assert!(b.failure(&c, refused(), room(true), now).is_none());
        assert!(b.failure(&c, refused(), room(true), now).is_none());
        assert!(
            b.failure(&c, refused(), room(false), now).is_none(),
            "too many endpoints out already"
        );
        assert!(
            b.failure(&c, refused(), room(true), now).is_some(),
            "allowed again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_max_percent_of_the_peers_are_ejected_at_once() {
        let c = config();
        let now = Instant::now();
        let peers: Vec<Breaker> = (0..4).map(|_| Breaker::default()).collect();
        let fail_three_times = |b: &Breaker| {
            (0..3).any(|_| b.record_failure(peers.iter(), &c, refused(), now).is_some())
        };
        assert!(fail_three_times(&peers[0]), "1 of 4 out");
        assert!(fail_three_times(&peers[1]), "2 of 4 out: 50 %");
        assert!(!fail_three_times(&peers[2]), "a third would be 75 %");
        assert!(!peers[2].standing(now).is_ejected());
    }

    /// Tells `b` of tries in the pattern `pattern` (`s` a success, `f` a failure),
    /// `times` over, one a millisecond from `start`; the rule that ejected it, if any.
    fn tries(
        b: &Breaker,
        peers: &[Breaker],
        pattern: &str,
        times: usize,
        start: Instant,
    ) -> Option<Rule> {
        let c = config();
        let mut now = start;
        for outcome in pattern.chars().cycle().take(pattern.len() * times) {
            now += Duration::from_millis(1);
            let rule = match outcome {
                's' => {
                    b.success(now);
                    None
                }
                _ => b.record_failure(peers.iter(), &c, refused(), now),
            };
            if rule.is_some() {
                return rule;
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn failing_often_but_never_in_a_row_ejects_by_success_rate() {
        let now = Instant::now();
        let peers: Vec<Breaker> = (0..2).map(|_| Breaker::default()).collect();
        assert_eq!(tries(&peers[1], &peers, "s", 20, now), None);
        // Two successes, then a failure: never three failures in a row, 67 % success.
        let rule = tries(&peers[0], &peers, "ssf", 10, now);
        assert_eq!(rule, Some(Rule::SuccessRate));
        let later = now + Duration::from_millis(100);
        match peers[0].standing(later) {
            Standing::Ejected { rule, .. } => {
                assert_eq!(rule, Rule::SuccessRate);
                let reason = peers[0].ejection_reason().unwrap();
                assert!(
                    reason.starts_with("success rate 67 % of 12 tries"),
                    "{reason}"
                );
            }
            other => panic!("not ejected: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_failing_alike_ejects_none() {
        let now = Instant::now();
        let peers: Vec<Breaker> = (0..3).map(|_| Breaker::default()).collect();
        for round in 0..20 {
            for b in &peers {
                let start = now + Duration::from_millis(10 * round);
                assert_eq!(tries(b, &peers, "ssf", 1, start), None);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn back_from_ejection_an_endpoint_starts_with_a_clean_slate() {
        let c = config();
        let now = Instant::now();
        let peers: Vec<Breaker> = (0..2).map(|_| Breaker::default()).collect();
        tries(&peers[1], &peers, "s", 20, now);
        assert_eq!(
            tries(&peers[0], &peers, "ssf", 10, now),
            Some(Rule::SuccessRate)
        );
        let probe_time = now + c.backoff + Duration::from_secs(1);
        tries(&peers[1], &peers, "s", 20, probe_time);
        let probe = Probe::claim(&peers[0], &c, probe_time).expect("its ejection ran out");
        assert!(peers[0].success(probe_time), "the probe passed: back");
        probe.settle();
        assert_eq!(
            peers[0].success_rate(probe_time).tries(),
            1,
            "old outcomes forgotten"
        );
        let failure = peers[0].record_failure(peers.iter(), &c, refused(), probe_time);
        assert_eq!(failure, None, "one failure is no outlier yet");
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
        assert!(matches!(e.standing(t), Standing::ProbeDue { .. }));
        assert!(Probe::claim(&e, &c, t).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_answers_is_given_up_on_after_the_probe_wait() {
        let c = config();
        let now = Instant::now();
        let e = ejected(&c, now);
        let t = now + Duration::from_secs(30);
        let hanging = Probe::claim(&e, &c, t).unwrap();
        assert!(
            e.standing(t + c.probe_wait - Duration::from_millis(1))
                .is_ejected()
        );
        let later = t + c.probe_wait;
        assert!(matches!(e.standing(later), Standing::ProbeDue { .. }));
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
        assert!(
            e.failure(&c, refused(), room(true), t).is_some(),
            "a failed probe ejects"
        );
        probe.settle();
        assert!(e.standing(t + Duration::from_secs(59)).is_ejected());
        let later = e.standing(t + Duration::from_secs(60));
        assert!(matches!(later, Standing::ProbeDue { .. }));
    }
}
