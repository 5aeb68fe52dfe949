//! Waiting for a state, not for a while.
//!
//! Time is tokio's: under a paused clock (`start_paused`) a wait costs no real time, and a
//! bound that runs out fails at once instead of after half a minute.

use std::time::Duration;

use tokio::time::Instant;

/// How long a test waits for a state it expects before it fails: far more than anything
/// takes on an idle machine, so that a loaded one does not fail the test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often a wait looks again: often enough that a test goes on soon after the state
/// arrives, seldom enough that looking does not load what it looks at.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` every [`POLL`] until it gives a value, and returns that; `None` once
/// `bound` has passed without one. The probe runs at least once.
pub async fn within<T>(bound: Duration, probe: impl AsyncFn() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        let waited = started.elapsed();
        if waited >= bound {
            return None;
        }
        tokio::time::sleep(POLL.min(bound - waited)).await;
    }
}

/// Polls `condition` until it holds; panics naming `what` (what the test was waiting for)
/// once `bound` has passed.
pub async fn eventually(bound: Duration, what: &str, condition: impl AsyncFn() -> bool) {
    if within(bound, async || condition().await.then_some(()))
        .await
        .is_none()
    {
        panic!("waited {bound:?} for {what}, in vain");
    }
}

/// Polls `probe` until it gives a value, and returns that; panics naming `what` once
/// `bound` has passed.
pub async fn eventually_some<T>(
    bound: Duration,
    what: &str,
    probe: impl AsyncFn() -> Option<T>,
) -> T {
    match within(bound, probe).await {
        Some(value) => value,
        None => panic!("waited {bound:?} for {what}, in vain"),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_returns_as_soon_as_the_state_holds() {
        let started = Instant::now();
        let looks = Cell::new(0);
        let value = eventually_some(PATIENCE, "the third look", async || {
            looks.set(looks.get() + 1);
            (looks.get() == 3).then_some("here")
        })
        .await;
        assert_eq!(value, "here");
        assert_eq!(started.elapsed(), POLL * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_gives_up_at_its_bound_after_a_last_look() {
        let started = Instant::now();
        let bound = Duration::from_millis(50);
        let looked_at = std::cell::RefCell::new(Vec::new());
        let found: Option<()> = within(bound, async || {
            looked_at.borrow_mut().push(started.elapsed());
            None
        })
        .await;
        assert_eq!(found, None);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(*looked_at.borrow(), [ms(0), ms(20), ms(40), ms(50)]);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "waited 1s for the impossible, in vain")]
    async fn a_failed_wait_names_what_it_waited_for() {
        eventually(Duration::from_secs(1), "the impossible", async || false).await;
    }
}
