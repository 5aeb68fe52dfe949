//! Blocking queries: hold an answer until the index a client saw has moved.

use std::time::Duration;

use prometheus::IntGauge;
use rand::Rng;
use tokio::sync::watch;

/// Waits until `index_rx` shows an index above `seen`, `wait` (plus jitter) elapses, or
/// the registry starts shutting down; whichever comes first. Without `seen` there is
/// nothing to wait for: the first answer of a watch always carries the full state.
pub async fn until_changed(
    index_rx: &mut watch::Receiver<u64>,
    seen: Option<u64>,
    wait: Duration,
    shutdown: &mut watch::Receiver<bool>,
    watchers: &IntGauge,
) {
    let Some(seen) = seen else { return };
    if *index_rx.borrow() > seen {
        return;
    }
    // Spread the time-outs of watchers that started together, as Consul does, so they do
    // not all come back in the same instant.
    let jitter = rand::rng().random_range(Duration::ZERO..=wait / 16);
    let _counted = Counted::new(watchers);
    tokio::select! {
        _ = index_rx.wait_for(|index| *index > seen) => {}
        () = tokio::time::sleep(wait + jitter) => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}

/// Keeps a gauge raised while alive, including when the waiting future is dropped
/// because the client went away.
struct Counted<'a>(&'a IntGauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_newer_index_and_no_longer_than_wait_plus_jitter() {
        let gauge = IntGauge::new("w", "w").unwrap();
        let (tx, mut rx) = watch::channel(5u64);
        let (_stop_tx, mut stop) = watch::channel(false);

        // Already past what the client saw: no wait at all.
        let t = tokio::time::Instant::now();
        until_changed(&mut rx, Some(4), Duration::from_secs(10), &mut stop, &gauge).await;
        assert_eq!(t.elapsed(), Duration::ZERO);

        // Nothing changes: the wait runs out (10 s plus at most 10/16 s).
        until_changed(&mut rx, Some(5), Duration::from_secs(10), &mut stop, &gauge).await;
        let waited = t.elapsed();
        assert!(waited >= Duration::from_secs(10) && waited <= Duration::from_millis(10_625));

        // A change wakes the watcher early.
        let t = tokio::time::Instant::now();
        let waiter = async {
            until_changed(&mut rx, Some(5), Duration::from_secs(10), &mut stop, &gauge).await
        };
        let changer = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(gauge.get(), 1);
            tx.send_replace(6);
        };
        tokio::join!(waiter, changer);
        assert_eq!(t.elapsed(), Duration::from_secs(1));
        assert_eq!(gauge.get(), 0);
    }
}
