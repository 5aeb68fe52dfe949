//! The retry budget of one destination: retries may add at most a share of the original
//! requests (default 20 %) plus a floor (default 10 per second), counted over a sliding
//! ten-second window. When a whole service is failing, retries stop multiplying its load.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::window::Window;

/// How far back the budget looks.
const WINDOW: Duration = Duration::from_secs(10);

/// How many retries a destination may send (flags `--retry-budget`,
/// `--retry-min-per-second`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct BudgetConfig {
    /// Retries allowed on top of original requests, as a share (0.2 = 20 %).
    #[arg(
        long = "retry-budget",
        value_name = "RETRY_BUDGET",
        env = "MESH_RETRY_BUDGET",
        default_value_t = 0.2
    )]
    pub ratio: f64,

    /// Retries per second allowed whatever the traffic, so low-traffic services can
    /// still retry.
    #[arg(
        long = "retry-min-per-second",
        value_name = "RETRY_MIN_PER_SECOND",
        env = "MESH_RETRY_MIN_PER_SECOND",
        default_value_t = 10
    )]
    pub min_per_second: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl BudgetConfig {
    pub fn validate(&self) -> Result<(), crate::flags::Invalid> {
        if !(0.0..=10.0).contains(&self.ratio) {
            return Err(crate::flags::Invalid::new(
                "--retry-budget",
                "must be a share between 0.0 and 10.0",
            ));
        }
        Ok(())
    }
}

pub struct RetryBudget {
    config: BudgetConfig,
    /// Requests and retries. A std Mutex: a few additions under it, never an await.
    window: Mutex<Window>,
}

// === impl RetryBudget ===

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        RetryBudget {
            config,
            window: Mutex::new(Window::new(WINDOW, Instant::now())),
        }
    }

    /// Counts an original request (which earns `ratio` of a retry).
    pub fn deposit(&self) {
        let mut w = self.window.lock().expect("budget lock");
        w.add(Instant::now(), [1, 0]);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut w = self.window.lock().expect("budget lock");
        let now = Instant::now();
        let [requests, retries] = w.totals(now);
        let floor = f64::from(self.config.min_per_second) * w.length().as_secs_f64();
        let allowed = requests as f64 * self.config.ratio + floor;
        if (retries as f64) < allowed.floor() {
            w.add(now, [0, 1]);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_at_the_ratio_plus_the_floor() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            min_per_second: 1,
        });
        for _ in 0..100 {
            budget.deposit();
        }
        // 100 requests × 20 % + 1/s × 10 s = 30 retries in the window.
        let granted = (0..50).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.0,
            min_per_second: 1,
        });
        assert_eq!((0..20).filter(|_| budget.withdraw()).count(), 10);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            (0..20).filter(|_| budget.withdraw()).count(),
            0,
            "still in the window"
        );
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(
            (0..20).filter(|_| budget.withdraw()).count(),
            10,
            "the old retries aged out"
        );
    }
}
