//! Whether the registry answers: one fact, reported by everything that calls the
//! registry (each destination's watch, the registration) as its calls succeed or fail,
//! read by `/ready`, and shown as `mesh_registry_connected`, which is derived from it.

use prometheus::IntGauge;
use tokio::sync::watch;

/// The registry's reachability, as the last call to it found it.
pub struct RegistryReach {
    connected: watch::Sender<bool>,
    gauge: IntGauge,
}

// === impl RegistryReach ===

impl RegistryReach {
    pub(super) fn new(gauge: IntGauge) -> RegistryReach {
        RegistryReach {
            connected: watch::Sender::new(false),
            gauge,
        }
    }

    /// A call to the registry was answered (true) or not.
    pub fn report(&self, answered: bool) {
        // The gauge follows under the watch's lock, so it can never show another value.
        self.connected.send_modify(|connected| {
            *connected = answered;
            self.gauge.set(i64::from(answered));
        });
    }

    /// Whether the last call to the registry was answered.
    pub fn connected(&self) -> bool {
        *self.connected.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_shows_the_last_report_from_any_thread() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let reach = std::sync::Arc::new(RegistryReach::new(gauge.clone()));
        assert!(!reach.connected());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let reach = reach.clone();
                std::thread::spawn(move || {
                    for n in 0..1000 {
                        reach.report((i + n) % 2 == 0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(gauge.get(), i64::from(reach.connected()));
        reach.report(true);
        assert_eq!((reach.connected(), gauge.get()), (true, 1));
    }
}
