//! Blocking queries: hold an answer until the index a client saw has moved.
//!
//! Each parked query holds a connection and a task, so one client may park only so many
//! at once ([`Parking`]). Past that, a query is refused with 429 rather than answered at
//! once with the state it already has: a watch loop would take an unchanged answer as
//! "nothing new yet" and ask again immediately, in a tight loop, where an error makes it
//! back off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntGauge;
use rand::Rng;
use tokio::sync::watch;

use crate::error::ApiError;

/// Blocking queries one client IP may have parked at once, unless `--max-parked-per-client`
/// says otherwise. A sidecar parks one per destination it follows, and mesh-proxy follows
/// up to 1000 (`--max-destinations`); sidecars behind one NAT share an IP.
pub const DEFAULT_MAX_PARKED_PER_CLIENT: usize = 1024;

/// The blocking queries parked, by client IP, and the most one IP may park. Sidecars
/// behind a NAT share an IP, so the cap is per IP and generous.
pub struct Parking {
    max_per_client: usize,
    /// A std Mutex: it is held for a lookup, never across an `.await`.
    parked: Mutex<HashMap<IpAddr, usize>>,
    /// `mesh_registry_watchers`: every query parked.
    watchers: IntGauge,
}

/// One parked query, counted until it is dropped: when it is answered, and also when the
/// client went away and hyper dropped the waiting future.
pub struct Parked<'a> {
    parking: &'a Parking,
    client: IpAddr,
}

/// Waits until `index_rx` shows an index above `seen`, `wait` (plus jitter) elapses, or
/// the registry starts shutting down; whichever comes first. Without `seen` there is
/// nothing to wait for: the first answer of a watch always carries the full state. A
/// query that would wait is refused when `client` has as many parked as it may.
pub async fn until_changed(
    index_rx: &mut watch::Receiver<u64>,
    seen: Option<u64>,
    wait: Duration,
    shutdown: &mut watch::Receiver<bool>,
    parking: &Parking,
    client: IpAddr,
) -> Result<(), ApiError> {
    let Some(seen) = seen else { return Ok(()) };
    if *index_rx.borrow() > seen {
        return Ok(());
    }
    let _parked = parking.park(client)?;
    // Spread the time-outs of watchers that started together, as Consul does, so they do
    // not all come back in the same instant.
    let jitter = rand::rng().random_range(Duration::ZERO..=wait / 16);
    tokio::select! {
        _ = index_rx.wait_for(|index| *index > seen) => {}
        () = tokio::time::sleep(wait + jitter) => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    Ok(())
}

// === impl Parking ===

impl Parking {
    pub fn new(max_per_client: usize, watchers: IntGauge) -> Self {
        Parking {
            max_per_client,
            parked: Mutex::new(HashMap::new()),
            watchers,
        }
    }

    /// Counts one more query of `client` parked, unless it has as many as it may.
    pub fn park(&self, client: IpAddr) -> Result<Parked<'_>, ApiError> {
        let client = client.to_canonical();
        let mut parked = self.parked.lock().expect("never poisoned");
        let count = parked.entry(client).or_insert(0);
        if *count >= self.max_per_client {
            return Err(ApiError::TooManyBlockingQueries(format!(
                "client {client} has {count} blocking queries parked already, as many as \
                 one client IP may (--max-parked-per-client); retry after one is answered",
                count = *count
            )));
        }
        *count += 1;
        self.watchers.inc();
        Ok(Parked {
            parking: self,
            client,
        })
    }

    /// How many queries `client` has parked.
    #[cfg(test)]
    fn parked(&self, client: IpAddr) -> usize {
        let parked = self.parked.lock().expect("never poisoned");
        parked.get(&client.to_canonical()).copied().unwrap_or(0)
    }
}

// === impl Parked ===

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        let mut parked = self.parking.parked.lock().expect("never poisoned");
        if let Some(count) = parked.get_mut(&self.client) {
            *count -= 1;
            // Forget clients with nothing parked, so the map holds only current ones.
            if *count == 0 {
                parked.remove(&self.client);
            }
        }
        self.parking.watchers.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_newer_index_and_no_longer_than_wait_plus_jitter() {
        let parking = Parking::new(8, IntGauge::new("w", "w").unwrap());
        let (tx, mut rx) = watch::channel(5u64);
        let (_stop_tx, mut stop) = watch::channel(false);
        let ten = Duration::from_secs(10);

        // Already past what the client saw: no wait at all.
        let t = tokio::time::Instant::now();
        until_changed(&mut rx, Some(4), ten, &mut stop, &parking, CLIENT)
            .await
            .unwrap();
        assert_eq!(t.elapsed(), Duration::ZERO);

        // Nothing changes: the wait runs out (10 s plus at most 10/16 s).
        until_changed(&mut rx, Some(5), ten, &mut stop, &parking, CLIENT)
            .await
            .unwrap();
        let waited = t.elapsed();
        assert!(waited >= Duration::from_secs(10) && waited <= Duration::from_millis(10_625));

        // A change wakes the watcher early.
        let t = tokio::time::Instant::now();
        let waiter = async {
            until_changed(&mut rx, Some(5), ten, &mut stop, &parking, CLIENT)
                .await
                .unwrap()
        };
        let changer = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(parking.watchers.get(), 1);
            assert_eq!(parking.parked(CLIENT), 1);
            tx.send_replace(6);
        };
        tokio::join!(waiter, changer);
        assert_eq!(t.elapsed(), Duration::from_secs(1));
        assert_eq!(parking.watchers.get(), 0);
        assert_eq!(parking.parked(CLIENT), 0);
    }

    #[test]
    fn each_client_ip_parks_at_most_its_share() {
        let parking = Parking::new(2, IntGauge::new("w", "w").unwrap());
        let other: IpAddr = "10.0.0.7".parse().unwrap();
        let first = parking.park(CLIENT).unwrap();
        let _second = parking.park(CLIENT).unwrap();
        let refused = parking.park(CLIENT).err().expect("a third is refused");
        assert!(matches!(refused, ApiError::TooManyBlockingQueries(m) if m.contains("127.0.0.1")));
        // The same client over IPv6 (a dual-stack listener) is the same client.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(parking.park(mapped).is_err());
        // Others are not held to this one's count.
        let _elsewhere = parking.park(other).unwrap();
        assert_eq!(parking.watchers.get(), 3);
        drop(first);
        let _again = parking.park(CLIENT).unwrap();
        assert_eq!((parking.parked(CLIENT), parking.parked(other)), (2, 1));
    }
}
