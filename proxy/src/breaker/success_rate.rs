//! Success-rate ejection, beside consecutive failures: an endpoint that fails often but
//! not in a row (30 % of its tries, say) never reaches a streak, yet costs every caller a
//! retry. Over the last [`WINDOW`], once an endpoint and its peers in rotation have had
//! enough tries to judge, an endpoint whose success rate is below a share of its peers'
//! is an outlier. Judged against its peers, not a fixed bar: when a whole service fails
//! alike, ejecting any of it would not help.

use std::time::Duration;

use crate::flags::Invalid;

/// How far back success rates look.
pub const WINDOW: Duration = Duration::from_secs(10);

/// When an endpoint is an outlier by its success rate (flags `--eject-success-rate-*`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct SuccessRateConfig {
    /// An endpoint whose success rate over the last 10 s is below this share of its
    /// peers' is ejected (0.8: 75 % against peers' 100 %). 0 turns the rule off.
    #[arg(
        long = "eject-success-rate-factor",
        env = "MESH_EJECT_SUCCESS_RATE_FACTOR",
        value_name = "EJECT_SUCCESS_RATE_FACTOR",
        default_value_t = 0.8
    )]
    pub factor: f64,

    /// Tries an endpoint, and its peers together, must have had in those 10 s before
    /// its success rate is judged.
    #[arg(
        long = "eject-success-rate-min-requests",
        env = "MESH_EJECT_SUCCESS_RATE_MIN_REQUESTS",
        value_name = "EJECT_SUCCESS_RATE_MIN_REQUESTS",
        default_value_t = 10
    )]
    pub min_requests: u64,
}

/// Successes and failures counted over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub succeeded: u64,
    pub failed: u64,
}

/// Why an endpoint is an outlier.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outlier {
    pub rate: f64,
    pub tries: u64,
    pub peers_rate: f64,
}

// === impl SuccessRateConfig ===

impl SuccessRateConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(0.0..=1.0).contains(&self.factor) {
            return Err(Invalid::new(
                "--eject-success-rate-factor",
                "must be a share between 0.0 (off) and 1.0",
            ));
        }
        if self.min_requests == 0 {
            return Err(Invalid::new(
                "--eject-success-rate-min-requests",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Judges an endpoint's `own` outcomes against its `peers'` (those in rotation,
    /// together).
    pub fn outlier(&self, own: Outcomes, peers: Outcomes) -> Option<Outlier> {
        if self.factor == 0.0
            || own.tries() < self.min_requests
            || peers.tries() < self.min_requests
        {
            return None;
        }
        let (rate, peers_rate) = (own.rate(), peers.rate());
        (rate < peers_rate * self.factor).then_some(Outlier {
            rate,
            tries: own.tries(),
            peers_rate,
        })
    }
}

// === impl Outcomes ===

impl Outcomes {
    pub fn tries(self) -> u64 {
        self.succeeded + self.failed
    }

    /// The share of tries that succeeded (1 without any).
    pub fn rate(self) -> f64 {
        match self.tries() {
            0 => 1.0,
            tries => self.succeeded as f64 / tries as f64,
        }
    }
}

impl std::ops::AddAssign for Outcomes {
    fn add_assign(&mut self, other: Outcomes) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
    }
}

// === impl Outlier ===

impl std::fmt::Display for Outlier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "success rate {:.0} % of {} tries in the last {} s, {:.0} % for its peers",
            self.rate * 100.0,
            self.tries,
            WINDOW.as_secs(),
            self.peers_rate * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SuccessRateConfig {
        SuccessRateConfig {
            factor: 0.8,
            min_requests: 10,
        }
    }

    fn outcomes(succeeded: u64, failed: u64) -> Outcomes {
        Outcomes { succeeded, failed }
    }

    #[test]
    fn an_endpoint_far_below_its_peers_is_an_outlier() {
        let judged = config().outlier(outcomes(7, 3), outcomes(100, 0)).unwrap();
        assert_eq!((judged.tries, judged.peers_rate), (10, 1.0));
        assert_eq!(
            judged.to_string(),
            "success rate 70 % of 10 tries in the last 10 s, 100 % for its peers"
        );
        assert!(
            config().outlier(outcomes(9, 1), outcomes(100, 0)).is_none(),
            "90 % is within 0.8 of 100 %"
        );
    }

    #[test]
    fn a_service_failing_alike_has_no_outlier() {
        assert!(config().outlier(outcomes(7, 3), outcomes(70, 30)).is_none());
        assert!(config().outlier(outcomes(0, 10), outcomes(0, 50)).is_none());
    }

    #[test]
    fn too_few_tries_are_not_judged_and_zero_turns_the_rule_off() {
        assert!(config().outlier(outcomes(0, 9), outcomes(100, 0)).is_none());
        assert!(config().outlier(outcomes(0, 10), outcomes(9, 0)).is_none());
        let off = SuccessRateConfig {
            factor: 0.0,
            ..config()
        };
        assert!(off.outlier(outcomes(0, 100), outcomes(100, 0)).is_none());
    }
}
