//! `mesh-registry`: the mesh's discovery registry.
//!
//! Instances register over HTTP with a lease (TTL) and renew it with heartbeats; sidecars
//! follow services with blocking queries on per-service indexes. The catalog lives in
//! memory, optionally persisted as an atomic snapshot file (`--data-dir`).
//!
//! [`run`] serves on an already-bound listener, so tests bind `127.0.0.1:0`.
//!
//! Module map, in the order a request meets them: [`server`] (connections) →
//! [`api`] (the routing table and handlers; [`route`] matches paths, [`auth`] checks
//! tokens, [`respond`] builds answers) → [`request`] (parsing, validation) →
//! [`catalog`] (state, indexes; one [`entry`] per instance; [`events`] records what
//! changed) → [`watch`] (blocking queries); beside them [`lease`] (expiry sweep),
//! [`snapshot`] (persistence), [`metrics`], [`prometheus_sd`] (scrape targets for
//! Prometheus), and for the dashboard at `/ui/`, [`ui`] (its files) and [`sidecar`]
//! (reading sidecars' admin pages on its behalf). With `--etcd-endpoints`, [`etcd`] keeps
//! the catalog in etcd instead, as a mirror each replica follows.

pub mod api;
mod auth;
pub mod ca;
pub mod catalog;
pub mod config;
mod entry;
mod error;
pub mod etcd;
mod events;
mod lease;
pub mod metrics;
mod prometheus_sd;
pub mod request;
mod respond;
pub mod route;
mod server;
mod sidecar;
mod snapshot;
mod store;
mod tls;
mod tokens;
pub mod ui;
mod watch;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::catalog::Catalog;
pub use crate::config::Config;
pub use crate::error::Error;
use crate::metrics::Metrics;

/// Serves the registry on `listener` until `shutdown` resolves, then drains in-flight
/// requests and writes a final snapshot.
///
/// With `config.data_dir`, the snapshot found there is loaded first (a corrupt one is an
/// error, never an empty start) and one is written at once, so an unwritable directory
/// fails here rather than at the first change.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let tls =
        match config.tls_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                Error::Config(format!("cannot listen on {addr} (--tls-listen): {e}"))
            })?),
            None => None,
        };
    run_with_tls(listener, tls, config, shutdown).await
}

/// [`run`], with the TLS listener already bound (`config.tls_listen` is then ignored):
/// tests bind `127.0.0.1:0`. It needs a CA.
pub async fn run_with_tls(
    listener: TcpListener,
    tls_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate().map_err(Error::Config)?;
    let metrics = Arc::new(Metrics::new());
    let (catalog, etcd) = match config.etcd() {
        Some(endpoints) => {
            let catalog = Arc::new(Catalog::new(config.critical_grace));
            let etcd_metrics = Arc::new(etcd::metrics::EtcdMetrics::new(&metrics));
            let store = etcd::EtcdStore::new(
                endpoints.clone(),
                &config.etcd_prefix,
                catalog.clone(),
                etcd_metrics,
            );
            tracing::info!(endpoints = %endpoints.join(","), prefix = %config.etcd_prefix, "the catalog is kept in etcd");
            (catalog, Some(Arc::new(store)))
        }
        None => (Arc::new(load_catalog(&config)?), None),
    };

    // `stopping` turns true when shutdown starts (blocking queries answer, /readyz fails);
    // `stopped` once requests are drained, for the sweeper and the final snapshot.
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let (stopped, stopped_rx) = tokio::sync::watch::channel(false);
    let background = Background::spawn(&config, &catalog, &metrics, etcd.as_ref(), stopped_rx);

    let ca = load_ca(&config)?.map(|(ca, join_tokens)| (Arc::new(ca), join_tokens));
    // Client certificates are taken as credentials where they can be presented.
    let tls = match (tls_listener, &ca) {
        (Some(listener), Some((ca, _))) => {
            let names = config
                .tls_names
                .iter()
                .map(|n| n.trim().to_owned())
                .collect();
            let tls = tls::TlsListener::new(ca.clone(), names).map_err(Error::Ca)?;
            Some((listener, Arc::new(tls)))
        }
        (Some(_), None) => {
            return Err(Error::Config(
                "--tls-listen needs a CA (--ca-dir, or --ca-cert and --ca-key)".into(),
            ));
        }
        (None, _) => None,
    };
    let credentials = credentials(&config, tls.is_some())?;
    let mut state = api::State::new(catalog.clone(), metrics, credentials, stopping_rx)
        .with_bounds(config.max_admin_relays, config.max_parked_per_client);
    if let Some(etcd) = etcd {
        state = state.with_etcd(etcd);
    }
    if let Some((ca, join_tokens)) = ca {
        state = state.with_ca(ca, join_tokens);
    }
    let state = Arc::new(state);
    let local = listener.local_addr()?;
    tracing::info!(
        "registry listening on http://{local} (services: http://{local}/v1/services, metrics: http://{local}/metrics)"
    );
    let renewal = match &tls {
        Some((listener, tls)) => {
            let at = listener.local_addr()?;
            tracing::info!(
                "TLS listener on https://{at}: sidecars write with their mesh certificates (registry identity {})",
                mesh_registry_api::spiffe::registry_id(&config.trust_domain)
            );
            Some(tokio::spawn(tls.clone().renew(stopped.subscribe())))
        }
        None => None,
    };
    let bounds = server::Bounds {
        max_connections: config.max_connections,
        limits: server::Limits {
            header_read: config.header_read_timeout,
            idle: config.idle_timeout,
            write: server::WRITE_TIMEOUT,
        },
        drain: config.drain_timeout,
    };
    server::serve(listener, tls, state, shutdown, &stopping, bounds).await;

    stopped.send_replace(true);
    if let Some(renewal) = renewal {
        let _ = renewal.await;
    }
    background.finish().await;
    tracing::info!("registry stopped");
    Ok(())
}

/// The tasks that run beside the server: the lease sweeper and, with `--data-dir`, the
/// snapshot writer; with etcd, the store's tasks instead. All stop once `stopped` turns
/// true, the writer after a final write.
struct Background {
    sweeper: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    etcd: Option<etcd::Tasks>,
}

// === impl Background ===

impl Background {
    fn spawn(
        config: &Config,
        catalog: &Arc<Catalog>,
        metrics: &Arc<Metrics>,
        etcd: Option<&Arc<etcd::EtcdStore>>,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        if let Some(store) = etcd {
            let tasks = etcd::Tasks::spawn(store, metrics, config.sweep_interval, stopped);
            return Background {
                sweeper: None,
                writer: None,
                etcd: Some(tasks),
            };
        }
        let sweeper = tokio::spawn({
            let (catalog, metrics) = (catalog.clone(), metrics.clone());
            let interval = config.sweep_interval;
            let stopped = stopped.clone();
            async move {
                let sweep = |now| std::future::ready(catalog.sweep(now));
                lease::run_sweeper(sweep, &metrics, interval, stopped).await
            }
        });
        let writer = config.data_dir.clone().map(|dir| {
            tokio::spawn(snapshot::run_writer(
                catalog.clone(),
                metrics.clone(),
                dir,
                config.snapshot_debounce,
                stopped,
            ))
        });
        Background {
            sweeper: Some(sweeper),
            writer,
            etcd: None,
        }
    }

    /// Waits for them to end, once `stopped` has turned true.
    async fn finish(self) {
        for task in [self.sweeper, self.writer].into_iter().flatten() {
            let _ = task.await;
        }
        if let Some(tasks) = self.etcd {
            tasks.finish().await;
        }
    }
}

/// What proves who writes, from the flags; an open registry says so loudly.
fn credentials(config: &Config, has_ca: bool) -> Result<auth::Credentials, Error> {
    let tokens = match &config.tokens {
        Some(path) => tokens::ScopedTokens::load(path, "--tokens").map_err(Error::Config)?,
        None => tokens::ScopedTokens::default(),
    };
    let allowed_hosts = config
        .allowed_hosts
        .iter()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    let credentials =
        auth::Credentials::new(config.token.as_deref(), tokens, has_ca, allowed_hosts);
    if credentials.is_open() {
        tracing::warn!(
            "OPEN REGISTRY: no --token, --tokens or CA, so anyone who can reach it may \
             register, replace and remove any service's instances (and so redirect its \
             calls); for local development only (/readyz says \"writes\": [\"open\"])"
        );
    } else {
        tracing::info!(accepted = %credentials.kinds().join(","), "writes are bound to an identity");
    }
    Ok(credentials)
}

/// The CA and the join tokens it signs for, when the flags name a CA. With `--ca-dir`,
/// a CA missing there is created first.
fn load_ca(config: &Config) -> Result<Option<(ca::Ca, tokens::ScopedTokens)>, Error> {
    let (cert, key) = match (&config.ca_dir, &config.ca_cert, &config.ca_key) {
        // Replicas must share one CA: two replicas creating one each at the same moment
        // would sign with different keys.
        (Some(dir), _, _) if config.etcd().is_some() && !dir.join("ca-key.pem").exists() => {
            return Err(Error::Ca(format!(
                "{} holds no CA, and with --etcd-endpoints every replica must sign with the \
                 same one: create it once with `mesh-registry gen-ca --out {}` and give every \
                 replica the same files",
                dir.display(),
                dir.display()
            )));
        }
        (Some(dir), _, _) => {
            let said = ca::write_new(dir, &config.trust_domain, false).map_err(Error::Ca)?;
            tracing::info!("{said}");
            (dir.join("ca.pem"), dir.join("ca-key.pem"))
        }
        (None, Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => return Ok(None),
    };
    let ca = ca::Ca::load(&cert, &key, &config.trust_domain, config.cert_ttl).map_err(Error::Ca)?;
    let join_tokens = tokens::ScopedTokens::from_flags(
        config.join_tokens.as_deref(),
        config.join_token.as_deref(),
    )
    .map_err(Error::Config)?;
    tracing::info!(trust_domain = %config.trust_domain, cert_ttl = %humantime::format_duration(config.cert_ttl), "signing sidecar certificates at POST /v1/ca/sign");
    Ok(Some((ca, join_tokens)))
}

fn load_catalog(config: &Config) -> Result<Catalog, Error> {
    let grace = config.critical_grace;
    let Some(dir) = &config.data_dir else {
        tracing::info!("no --data-dir: the catalog is kept in memory only");
        return Ok(Catalog::new(grace));
    };
    let write_error = |cause| Error::SnapshotWrite {
        dir: dir.clone(),
        cause,
    };
    std::fs::create_dir_all(dir).map_err(write_error)?;
    let catalog = match snapshot::load(dir, grace, Instant::now())? {
        Some(catalog) => {
            let instances: usize = catalog
                .service_list()
                .services
                .iter()
                .map(|s| s.instances)
                .sum();
            tracing::info!(path = %snapshot::path(dir).display(), instances, "snapshot restored; every instance has a fresh lease");
            catalog
        }
        None => {
            tracing::info!(path = %snapshot::path(dir).display(), "no snapshot yet: starting empty");
            Catalog::new(grace)
        }
    };
    snapshot::write(dir, &catalog).map_err(write_error)?;
    Ok(catalog)
}
