//! The waits of the crate root for tests without a runtime (the demo's, which drive
//! processes from plain threads): the same contract, on the real clock.

use std::time::{Duration, Instant};

/// How often a blocking wait looks again: each look is usually a request to another
/// process, so less often than [`POLL`](crate::POLL).
pub const POLL: Duration = Duration::from_millis(50);

/// Calls `probe` every `every` until it gives a value, and returns that; `None` once
/// `bound` has passed without one. The probe runs at least once.
pub fn within_every<T>(
    bound: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let waited = started.elapsed();
        if waited >= bound {
            return None;
        }
        std::thread::sleep(every.min(bound - waited));
    }
}

/// [`within_every`] at the usual [`POLL`].
pub fn within<T>(bound: Duration, probe: impl FnMut() -> Option<T>) -> Option<T> {
    within_every(bound, POLL, probe)
}

/// Calls `condition` until it holds; panics naming `what` once `bound` has passed.
pub fn eventually(bound: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    if within(bound, || condition().then_some(())).is_none() {
        panic!("waited {bound:?} for {what}, in vain");
    }
}

/// Calls `probe` until it gives a value, and returns that; panics naming `what` once
/// `bound` has passed.
pub fn eventually_some<T>(bound: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
    match within(bound, probe) {
        Some(value) => value,
        None => panic!("waited {bound:?} for {what}, in vain"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_wait_returns_the_first_value_and_gives_up_at_its_bound() {
        let mut looks = 0;
        let value = eventually_some(Duration::from_secs(5), "the second look", || {
            looks += 1;
            (looks == 2).then_some(looks)
        });
        assert_eq!(value, 2);
        let started = Instant::now();
        assert_eq!(within::<()>(Duration::from_millis(60), || None), None);
        assert!(started.elapsed() >= Duration::from_millis(60));
    }
}
