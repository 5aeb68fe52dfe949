//! The tasks that keep a replica's mirror current and its lease alive: the watch, the
//! quorum probe, the replica's etcd lease, and the lease sweep.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::client::WatchMessage;
use super::{EtcdStore, REPLICA_LEASE_TTL};
use crate::entry::LeaseState;
use crate::lease;
use crate::metrics::Metrics;

/// How often a replica checks that etcd answers a linearizable read, and that its watch
/// keeps up with what that read shows.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Probes in a row that see the watch behind before it is opened again.
const BEHIND_PROBES: u32 = 2;

/// The running tasks of one replica.
pub struct Tasks {
    handles: Vec<JoinHandle<()>>,
    store: Arc<EtcdStore>,
}

// === impl Tasks ===

impl Tasks {
    /// Starts the tasks; they run until `stopped` turns true.
    pub fn spawn(
        store: &Arc<EtcdStore>,
        metrics: &Arc<Metrics>,
        sweep_interval: Duration,
        stopped: watch::Receiver<bool>,
    ) -> Self {
        let reopen = Arc::new(Notify::new());
        let handles = vec![
            tokio::spawn(store.clone().keep_lease(stopped.clone())),
            tokio::spawn(store.clone().follow(reopen.clone(), stopped.clone())),
            tokio::spawn(store.clone().probe(reopen, stopped.clone())),
            tokio::spawn({
                let (store, metrics) = (store.clone(), metrics.clone());
                async move {
                    let sweep = |now| {
                        let store = store.clone();
                        async move { store.sweep_leases(now).await }
                    };
                    lease::run_sweeper(sweep, &metrics, sweep_interval, stopped).await
                }
            }),
        ];
        Tasks {
            handles,
            store: store.clone(),
        }
    }

    /// Waits for the tasks to end, then gives up this replica's etcd lease, so the leases
    /// it owned pass to other replicas at once rather than after the lease's TTL.
    pub async fn finish(self) {
        for handle in self.handles {
            let _ = handle.await;
        }
        let lease = self.store.lease.send_replace(0);
        if lease != 0 {
            match self.store.etcd.revoke(lease).await {
                Ok(()) => tracing::info!("gave up this replica's etcd lease"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not give up the etcd lease; it runs out by itself")
                }
            }
        }
    }
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Holds this replica's etcd lease: granted at start, renewed at a third of its TTL,
    /// granted anew when etcd lost it (the replica was cut off for longer than the TTL;
    /// its owner keys are gone then, and its sidecars' next heartbeats claim them back).
    async fn keep_lease(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(REPLICA_LEASE_TTL / 3);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            let lease = *self.lease.borrow();
            let kept = match lease {
                0 => false,
                lease => match self.etcd.keep_alive(lease).await {
                    Ok(kept) => kept,
                    Err(e) => {
                        tracing::debug!(error = %e, "could not renew the etcd lease");
                        continue;
                    }
                },
            };
            if kept {
                continue;
            }
            match self.etcd.grant(REPLICA_LEASE_TTL).await {
                Ok(id) => {
                    if lease != 0 {
                        tracing::warn!(
                            "this replica's etcd lease ran out (cut off too long); took a new one"
                        );
                    }
                    self.lease.send_replace(id);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get an etcd lease; writes wait for one")
                }
            }
        }
    }

    /// Follows etcd: a full read, then a watch from the revision after it; a watch that
    /// ends is opened again where it stopped, and one whose revisions were compacted
    /// away starts over with a full read.
    async fn follow(self: Arc<Self>, reopen: Arc<Notify>, mut stopped: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut read_all = true;
        loop {
            if *stopped.borrow() {
                return;
            }
            let followed = tokio::select! {
                r = self.follow_once(&mut read_all) => r,
                () = reopen.notified() => Ok(()),
                _ = stopped.wait_for(|s| *s) => return,
            };
            match followed {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, "lost the etcd watch; opening it again");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One watch, from a full read when `read_all`; returns when the stream ends. May be
    /// dropped at any await (the probe asks for the watch again): each step is done once.
    async fn follow_once(&self, read_all: &mut bool) -> Result<(), super::EtcdError> {
        if *read_all {
            let (revision, kvs) = self.etcd.range_prefix(&self.prefix).await?;
            let keys = kvs.len();
            self.resync(revision, kvs);
            *read_all = false;
            tracing::info!(revision, keys, endpoint = %self.etcd.endpoint(), "read the catalog from etcd");
        }
        if !self.is_synced() {
            // Writes need the replica's etcd lease (owner keys hang on it): the API
            // opens once it holds the catalog and the lease.
            let _ = self.lease.subscribe().wait_for(|lease| *lease != 0).await;
            self.synced.send_replace(true);
        }
        let from = *self.applied.borrow() + 1;
        let mut stream = self.etcd.watch(&self.prefix, from).await?;
        tracing::debug!(from, "watching etcd");
        loop {
            match stream.next().await? {
                Some(WatchMessage::Changes(changes)) => self.apply(changes),
                Some(WatchMessage::Compacted { compact_revision }) => {
                    tracing::warn!(
                        compact_revision,
                        "etcd compacted revisions the watch had not seen; reading everything again"
                    );
                    *read_all = true;
                    return Ok(());
                }
                None => return Ok(()),
            }
        }
    }

    /// Checks once a second that etcd answers a linearizable read (no answer: the replica
    /// is stale) and that the watch keeps up: it must have shown, by each probe, the
    /// latest change the probe before saw (a second earlier). Behind that twice in a row,
    /// the watch's member is taken to be cut off and the watch is opened again, at another
    /// member. The read covers the `services/` keys only (one per service, written with
    /// every change a listing shows), so it stays cheap however many instances there are.
    async fn probe(self: Arc<Self>, reopen: Arc<Notify>, mut stopped: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let services = format!("{}services/", self.prefix);
        let (mut behind, mut seen_before) = (0, 0);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            let latest = match self.etcd.latest_under(&services).await {
                Ok(latest) => latest,
                Err(e) => {
                    self.unreachable(&e);
                    continue;
                }
            };
            self.reachable();
            let applied = *self.applied.borrow();
            behind = if applied < seen_before { behind + 1 } else { 0 };
            seen_before = latest;
            if behind >= BEHIND_PROBES {
                tracing::warn!(
                    latest,
                    applied,
                    "the etcd watch is behind; opening it again"
                );
                self.etcd.move_on();
                reopen.notify_one();
                behind = 0;
            }
        }
    }

    fn unreachable(&self, e: &super::EtcdError) {
        if !self.stale.send_replace(true) {
            tracing::error!(error = %e, "etcd is unreachable: answering reads from the last state (marked stale), refusing writes");
            self.metrics.stale.set(1);
        }
    }

    /// Back from stale: the leases this replica holds start afresh, because the
    /// heartbeats it refused while stale would otherwise expire them all at once.
    fn reachable(&self) {
        if !self.stale.send_replace(false) {
            return;
        }
        self.metrics.stale.set(0);
        let now = Instant::now();
        self.catalog.change_each(|_, instances| {
            for entry in instances.values_mut() {
                if let LeaseState::Live { expires_at } = &mut entry.lease {
                    *expires_at = (*expires_at).max(now + entry.registration.ttl);
                }
            }
            // Leases are not listed: nothing for watchers.
            false
        });
        tracing::info!("etcd is reachable again: accepting writes");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{Notify, watch};

    use crate::catalog::Catalog;
    use crate::etcd::EtcdStore;
    use crate::etcd::metrics::EtcdMetrics;
    use crate::metrics::Metrics;

    /// A peer on 127.0.0.1 that answers a range with an empty catalog at revision 5 and
    /// holds a watch open without a message; returns its URL.
    async fn quiet_etcd() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = vec![0; 4096];
                    let n = socket.read(&mut head).await?;
                    let answer = if head[..n].starts_with(b"POST /v3/watch") {
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
                    } else {
                        let body = r#"{"header":{"revision":"5"}}"#;
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    socket.write_all(answer.as_bytes()).await?;
                    // Held open: the watch never ends, the range's connection idles.
                    let _ = socket.read(&mut head).await;
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn a_watch_reopened_while_the_replica_waits_for_its_lease_still_opens_the_api() {
        let metrics = Arc::new(EtcdMetrics::new(&Metrics::new()));
        let catalog = Arc::new(Catalog::new(Duration::from_secs(30)));
        let store = EtcdStore::new(vec![quiet_etcd().await], "/t", catalog, metrics);
        let store = Arc::new(store);
        let (reopen, (_stop, stopped)) = (Arc::new(Notify::new()), watch::channel(false));
        tokio::spawn(store.clone().follow(reopen.clone(), stopped));

        // The catalog is read; the replica waits for its etcd lease before it opens.
        let mut applied = store.applied.subscribe();
        applied.wait_for(|a| *a == 5).await.unwrap();
        assert!(!store.is_synced());
        // The probe asks for the watch to be opened again meanwhile.
        reopen.notify_one();
        tokio::task::yield_now().await;
        store.lease.send_replace(7);

        let mut synced = store.synced.subscribe();
        let opened = tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s));
        assert!(opened.await.is_ok(), "the API never opens");
    }
}
