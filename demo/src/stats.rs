//! What the traffic generator prints: success share and latency percentiles over a window
//! of responses (one second, or the whole run).

use std::{collections::BTreeMap, fmt::Write, time::Duration};

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer, with the recommendations instance the page names, if any.
    Ok { served_by: Option<String> },
    /// Any other status (`HTTP 502`), a timeout or a transport error, as a short label.
    Failed(String),
}

/// Responses gathered over some time.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Latency of every response, successful or not.
    latencies: Vec<Duration>,
    ok: u64,
    failures: BTreeMap<String, u64>,
    served_by: BTreeMap<String, u64>,
}

/// A window, summarised.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub ok: u64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub failures: BTreeMap<String, u64>,
    pub served_by: BTreeMap<String, u64>,
}

// === impl Window ===

impl Window {
    pub fn record(&mut self, latency: Duration, outcome: Outcome) {
        self.latencies.push(latency);
        match outcome {
            Outcome::Ok { served_by } => {
                self.ok += 1;
                if let Some(instance) = served_by {
                    *self.served_by.entry(instance).or_default() += 1;
                }
            }
            Outcome::Failed(label) => *self.failures.entry(label).or_default() += 1,
        }
    }

    /// Moves everything from `other` into this window, leaving `other` empty.
    pub fn absorb(&mut self, other: &mut Window) {
        self.latencies.append(&mut other.latencies);
        self.ok += std::mem::take(&mut other.ok);
        for (label, n) in std::mem::take(&mut other.failures) {
            *self.failures.entry(label).or_default() += n;
        }
        for (instance, n) in std::mem::take(&mut other.served_by) {
            *self.served_by.entry(instance).or_default() += n;
        }
    }

    pub fn summary(&self) -> Summary {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        Summary {
            count: sorted.len() as u64,
            ok: self.ok,
            p50: percentile(&sorted, 0.50),
            p99: percentile(&sorted, 0.99),
            failures: self.failures.clone(),
            served_by: self.served_by.clone(),
        }
    }
}

/// The nearest-rank percentile: the smallest value at least `q` of the values are at or
/// below. `None` for no values.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

// === impl Summary ===

impl Summary {
    /// Share of successful responses, in percent; 0 for none.
    pub fn success_percent(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            100.0 * self.ok as f64 / self.count as f64
        }
    }

    /// `ok 100.0%  p50 3.2ms  p99 7.9ms  served by recommendations-1 7, …  failed: HTTP 502 ×2`
    pub fn describe(&self) -> String {
        if self.count == 0 {
            return "no responses".to_owned();
        }
        let mut line = format!(
            "ok {:5.1}%  p50 {}  p99 {}",
            self.success_percent(),
            millis(self.p50),
            millis(self.p99)
        );
        if !self.served_by.is_empty() {
            line.push_str("  served by ");
            line.push_str(&counts(&self.served_by, " "));
        }
        if !self.failures.is_empty() {
            line.push_str("  failed: ");
            line.push_str(&counts(&self.failures, " ×"));
        }
        line
    }
}

fn counts(counts: &BTreeMap<String, u64>, between: &str) -> String {
    let mut text = String::new();
    for (i, (label, n)) in counts.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "{label}{between}{n}");
    }
    text
}

/// Milliseconds with one decimal, padded so columns line up.
fn millis(duration: Option<Duration>) -> String {
    match duration {
        Some(d) => format!("{:6.1}ms", d.as_secs_f64() * 1000.0),
        None => "     -".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ok() -> Outcome {
        Outcome::Ok { served_by: None }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<_> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&hundred, 0.50), Some(ms(50)));
        assert_eq!(percentile(&hundred, 0.99), Some(ms(99)));
        assert_eq!(percentile(&hundred, 1.0), Some(ms(100)));
        assert_eq!(percentile(&hundred, 0.0), Some(ms(1)));

        // Few values: p99 is the slowest, not an interpolation past it.
        let ten: Vec<_> = (1..=10).map(ms).collect();
        assert_eq!(percentile(&ten, 0.99), Some(ms(10)));
        assert_eq!(percentile(&ten, 0.50), Some(ms(5)));
        assert_eq!(percentile(&[ms(7)], 0.50), Some(ms(7)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn summary_sorts_and_counts() {
        let mut window = Window::default();
        for latency in [9, 1, 5, 3, 7] {
            window.record(ms(latency), ok());
        }
        window.record(ms(100), Outcome::Failed("HTTP 502".to_owned()));
        let summary = window.summary();
        assert_eq!(summary.count, 6);
        assert_eq!(summary.ok, 5);
        assert_eq!(summary.p50, Some(ms(5)));
        assert_eq!(summary.p99, Some(ms(100)));
        assert!((summary.success_percent() - 83.333).abs() < 0.01);
        assert_eq!(
            summary.describe(),
            "ok  83.3%  p50    5.0ms  p99  100.0ms  failed: HTTP 502 ×1"
        );
    }

    #[test]
    fn windows_add_up_into_the_total() {
        let served = |name: &str| Outcome::Ok {
            served_by: Some(name.to_owned()),
        };
        let mut total = Window::default();
        let mut second = Window::default();
        second.record(ms(2), served("recommendations-1"));
        second.record(ms(4), served("recommendations-2"));
        total.absorb(&mut second);
        assert_eq!(second.summary().count, 0);
        second.record(ms(6), served("recommendations-1"));
        second.record(ms(8), Outcome::Failed("timeout".to_owned()));
        total.absorb(&mut second);

        let summary = total.summary();
        assert_eq!((summary.count, summary.ok), (4, 3));
        assert_eq!(summary.served_by["recommendations-1"], 2);
        assert_eq!(
            summary.describe(),
            "ok  75.0%  p50    4.0ms  p99    8.0ms  served by recommendations-1 2, \
             recommendations-2 1  failed: timeout ×1"
        );
        assert_eq!(Window::default().summary().describe(), "no responses");
        assert_eq!(Window::default().summary().success_percent(), 0.0);
    }
}
