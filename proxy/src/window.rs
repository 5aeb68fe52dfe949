//! A sliding window of two counts (requests and retries, successes and failures), kept in
//! ten slots: counts older than the window fall out as time moves on, so decisions read
//! recent behaviour only.

use std::time::Duration;

use tokio::time::Instant;

/// Slots in a window.
const SLOTS: usize = 10;

#[derive(Debug)]
pub struct Window {
    /// Length of one slot: a tenth of the window.
    slot: Duration,
    /// The two counts per slot, in a ring.
    slots: [[u64; 2]; SLOTS],
    /// Start of the newest slot.
    newest: Instant,
    current: usize,
}

// === impl Window ===

impl Window {
    /// An empty window `length` long, starting at `now`.
    pub fn new(length: Duration, now: Instant) -> Self {
        Window {
            slot: (length / SLOTS as u32).max(Duration::from_millis(1)),
            slots: [[0; 2]; SLOTS],
            newest: now,
            current: 0,
        }
    }

    pub fn length(&self) -> Duration {
        self.slot * SLOTS as u32
    }

    /// Adds `counts` to those of `now`.
    pub fn add(&mut self, now: Instant, counts: [u64; 2]) {
        let i = self.advance(now);
        self.slots[i][0] += counts[0];
        self.slots[i][1] += counts[1];
    }

    /// The counts over the window ending at `now`.
    pub fn totals(&mut self, now: Instant) -> [u64; 2] {
        self.advance(now);
        self.slots
            .iter()
            .fold([0, 0], |[a, b], [x, y]| [a + x, b + y])
    }

    /// Forgets every count.
    pub fn clear(&mut self) {
        self.slots = [[0; 2]; SLOTS];
    }

    /// Moves the window to `now`, clearing slots that fell out; returns the slot of now.
    fn advance(&mut self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.newest);
        if elapsed < self.slot {
            return self.current;
        }
        let steps = (elapsed.as_nanos() / self.slot.as_nanos()) as usize;
        if steps >= SLOTS {
            // Idle for longer than the window: start afresh.
            self.clear();
            self.newest = now;
            return self.current;
        }
        for _ in 0..steps {
            self.current = (self.current + 1) % SLOTS;
            self.slots[self.current] = [0, 0];
        }
        self.newest += self.slot * steps as u32;
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_fall_out_after_the_window() {
        let start = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), start);
        w.add(start, [3, 1]);
        w.add(start + Duration::from_secs(4), [1, 1]);
        assert_eq!(w.totals(start + Duration::from_secs(9)), [4, 2]);
        assert_eq!(
            w.totals(start + Duration::from_secs(12)),
            [1, 1],
            "the first slot fell out"
        );
        assert_eq!(w.totals(start + Duration::from_secs(60)), [0, 0]);
        w.add(start + Duration::from_secs(60), [1, 0]);
        assert_eq!(w.totals(start + Duration::from_secs(61)), [1, 0]);
        w.clear();
        assert_eq!(w.totals(start + Duration::from_secs(61)), [0, 0]);
    }
}
