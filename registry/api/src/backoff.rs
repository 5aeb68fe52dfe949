//! Capped exponential backoff with full jitter, for loops that retry the registry.

use std::time::Duration;

use rand::Rng;

/// Each failure doubles the ceiling (from `base` up to `cap`); the actual delay is drawn
/// uniformly below it, so a fleet of sidecars that lost the registry together does not
/// come back in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

// === impl Backoff ===

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// The delay before the next attempt, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next_ceiling();
        rand::rng().random_range(Duration::ZERO..=ceiling)
    }

    /// Like [`Backoff::next_delay`], but drawn from the upper half below the ceiling and
    /// never shorter than `base`: for loops that must slow down for certain, not only on
    /// average, because each attempt costs the other side a request.
    pub fn next_delay_at_least_base(&mut self) -> Duration {
        let ceiling = self.next_ceiling();
        let floor = (ceiling / 2).max(self.base).min(ceiling);
        rand::rng().random_range(floor..=ceiling)
    }

    /// The current ceiling, counting one more failure.
    fn next_ceiling(&mut self) -> Duration {
        let ceiling = Self::ceiling(self.base, self.cap, self.failures);
        self.failures = self.failures.saturating_add(1);
        ceiling
    }

    /// `base` doubled `doublings` times, at most `cap`: the one formula of every
    /// backoff in the mesh (registry loops here, the sidecar's retries and ejections).
    pub fn ceiling(base: Duration, cap: Duration, doublings: u32) -> Duration {
        base.saturating_mul(1u32 << doublings.min(20)).min(cap)
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_ceiling_and_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        for ceiling_ms in [10, 20, 40, 80, 100, 100, 100] {
            assert!(b.next_delay() <= Duration::from_millis(ceiling_ms));
        }
        assert_eq!(b.failures(), 7);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn floored_delays_are_never_below_base_nor_half_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        for (low, high) in [(10, 10), (10, 20), (20, 40), (40, 80), (50, 100), (50, 100)] {
            let d = b.next_delay_at_least_base();
            assert!(
                (Duration::from_millis(low)..=Duration::from_millis(high)).contains(&d),
                "{d:?} not within {low}-{high} ms"
            );
        }
    }
}
