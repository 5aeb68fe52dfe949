//! `mesh-proxy`: the mesh's sidecar.
//!
//! It runs beside one app and owns four kinds of listener:
//! - **outbound** (`--outbound`): the app's calls, routed by `Host` / `:authority`;
//! - **upstream** (`--upstream NAME=ADDR`): the app's calls to one fixed service;
//! - **inbound** (`--inbound`): peers' calls, forwarded to the app (`--app`);
//! - **admin** (`--admin`): `/metrics`, `/ready`, `/live`, `/debug/endpoints`, `/shutdown`.
//!
//! The outbound request path is in [`outbound`]; [`discover`] keeps each destination's
//! endpoints, [`balance`] picks one per request, [`forward`] sends it over pooled
//! connections. With `--service`, [`register`] keeps the instance registered with the
//! app's health.
//!
//! [`run`] takes already-bound listeners, so tests bind `127.0.0.1:0`.

pub mod admin;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod budget;
pub mod config;
pub mod deadline;
pub mod discover;
pub mod dns;
pub mod endpoint;
pub mod error;
pub mod forward;
pub mod grpc;
pub mod headers;
pub mod inbound;
pub mod io;
pub mod loops;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod register;
pub mod replay;
pub mod retry;
pub mod server;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mesh_registry_api::{Registrar, Registration, Status};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::config::Config;
use crate::config::Upstream;
use crate::discover::{DialPolicy, Discovery, DiscoveryConfig};
use crate::forward::Clients;
use crate::inbound::{AppProtocol, Inbound};
use crate::metrics::{Direction, Metrics};
use crate::outbound::{Outbound, Route};
use crate::server::Limits;
use crate::tls::{IdentitySlot, TlsMode};

/// Deadline for the deregistration at shutdown, so a dead registry cannot hold it up.
const DEREGISTER_WAIT: Duration = Duration::from_secs(6);

/// The sidecar's listeners, bound before [`run`].
pub struct Listeners {
    /// Present with `--service`.
    pub inbound: Option<TcpListener>,
    pub outbound: TcpListener,
    pub upstreams: Vec<(Upstream, TcpListener)>,
    pub admin: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        flag: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

// === impl Listeners ===

impl Listeners {
    /// Binds every listener the configuration asks for; an address in use is reported
    /// with the flag that chose it.
    pub async fn bind(config: &Config) -> Result<Self, Error> {
        async fn bind(
            flag: &'static str,
            addr: std::net::SocketAddr,
        ) -> Result<TcpListener, Error> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { flag, addr, source })
        }
        let inbound = match config.service {
            Some(_) => Some(bind("--inbound", config.inbound).await?),
            None => None,
        };
        let mut upstreams = Vec::new();
        for upstream in &config.upstreams {
            upstreams.push((upstream.clone(), bind("--upstream", upstream.listen).await?));
        }
        Ok(Listeners {
            inbound,
            outbound: bind("--outbound", config.outbound).await?,
            upstreams,
            admin: bind("--admin", config.admin).await?,
        })
    }
}

/// Runs the sidecar until `shutdown` resolves (or `POST /shutdown`), then, in order:
/// deregisters, drains in-flight requests, and returns.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate().map_err(Error::Config)?;
    let metrics = Metrics::new();
    let mut registry = mesh_registry_api::Client::new(&config.registry)
        .map_err(|e| Error::Config(format!("--registry: {e}")))?;
    if let Some(token) = &config.registry_token {
        registry = registry.with_token(token.clone());
    }
    let dns = match dns::Dns::new(config.dns_server) {
        Ok(dns) => Some(dns),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver: names unknown to the registry will not resolve");
            None
        }
    };
    let retry = config.retry();
    // Listeners that route requests again: a destination there would loop.
    let own = loops::OwnListeners::new(
        std::iter::once(&listeners.outbound)
            .chain(listeners.upstreams.iter().map(|(_, l)| l))
            .chain(std::iter::once(&listeners.admin))
            .filter_map(|l| l.local_addr().ok())
            .collect(),
    );
    let discovery = Discovery::new(
        registry.clone(),
        dns,
        metrics.clone(),
        DiscoveryConfig {
            budget: retry.budget,
            idle_timeout: config.destination_idle_timeout,
            max_destinations: config.max_destinations,
            dial: DialPolicy {
                own: own.clone(),
                strict: config.tls == TlsMode::Strict,
                plaintext_to: config.plaintext_to.clone(),
            },
        },
    );
    // With mTLS on, the certificate is fetched in the background: admin answers at once
    // and says why the sidecar is not ready, the data listeners refuse until it is here.
    let identity = match (&config.service, config.tls) {
        (Some(service), mode) if mode != TlsMode::Off => {
            let slot = Arc::new(IdentitySlot::default());
            let token = config.join_token.clone().unwrap_or_default();
            let (registry, service, trust_domain) = (
                registry.clone(),
                service.clone(),
                config.trust_domain.clone(),
            );
            let (filled, metrics) = (slot.clone(), metrics.clone());
            tokio::spawn(async move {
                let identity = filled
                    .obtain(&registry, &service, &trust_domain, &token)
                    .await;
                identity.renew_forever(registry, token, metrics).await;
            });
            Some(slot)
        }
        _ => None,
    };
    let inbound_tls = identity.as_ref().map(|slot| server::InboundTls {
        identity: slot.clone(),
        mode: config.tls,
        trust_domain: config.trust_domain.clone(),
    });
    let clients = Clients::new(config.connect_timeout, identity.clone(), own);
    let limits = Limits {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout,
        ..Limits::default()
    };

    let serving = |name, direction| server::Serve {
        name,
        direction,
        metrics: metrics.clone(),
        limits,
        drain: config.drain_timeout,
        tls: None,
    };

    // Inbound stops first (after deregistering); the app's own listeners stay open until
    // the app has exited, since an app finishing its work may still make calls.
    let (stop_inbound_tx, stop_inbound) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let (ready_tx, ready) = watch::channel(false);
    let (admin_shutdown, mut admin_shutdown_rx) = watch::channel(false);
    let mut inbound_servers = Vec::new();
    let mut servers = Vec::new();

    // Registration: the app's health feeds the heartbeats.
    let mut registration = None;
    let mut registration_state = None;
    if let (Some(service), Some(app), Some(inbound_listener)) =
        (&config.service, config.app, listeners.inbound)
    {
        // The app's connections, shared by peers' calls and the health checks.
        let app_pool = Arc::new(pool::Pool::new(app.to_string()));
        let inbound = Arc::new(Inbound {
            service: service.clone(),
            app,
            app_protocol: config.app_protocol,
            clients: clients.clone(),
            pool: app_pool.clone(),
            metrics: metrics.clone(),
            service_metrics: metrics.service(Direction::Inbound, service),
            allow: config.allow.clone(),
        });
        if !config.allow.is_empty() {
            metrics.policy_added(service);
        }
        let handler = move |request, peer| {
            let inbound = inbound.clone();
            async move { inbound.handle(request, peer).await }
        };
        tracing::info!(
            "inbound listening on {} → app {app}",
            inbound_listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        inbound_servers.push(spawn_server(
            server::Serve {
                tls: inbound_tls,
                ..serving("inbound", Some(Direction::Inbound))
            },
            inbound_listener,
            handler,
            &stop_inbound,
        ));

        let (health_tx, health) = watch::channel(Status::Critical);
        let check = register::Check::choose(config.app_protocol, config.health_path.as_deref());
        tokio::spawn(register::watch_health(
            app,
            check,
            clients.clone(),
            app_pool,
            config.health_interval,
            health_tx,
        ));

        let mut spec = Registration::new(config.advertised());
        spec.protocol = match config.app_protocol {
            Some(AppProtocol::Grpc) => mesh_registry_api::Protocol::Grpc,
            Some(AppProtocol::H2) => mesh_registry_api::Protocol::H2,
            _ => mesh_registry_api::Protocol::Http,
        };
        spec.weight = config.weight;
        spec.ttl = config.ttl;
        // Where Prometheus scrapes this sidecar: the registry's service discovery for
        // Prometheus reads it from here.
        let admin_port = listeners
            .admin
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(config.admin.port());
        spec.metadata
            .insert(discover::TLS_METADATA.into(), config.tls.as_str().into());
        spec.metadata.insert(
            mesh_registry_api::ADMIN_METADATA.into(),
            config.advertised_admin(admin_port),
        );
        let id = config.instance(service);
        tracing::info!(%service, %id, address = %spec.address, registry = %config.registry, "registering");
        let registrar = Registrar::new(registry.clone(), service, &id, spec);
        let mut registered = registrar.subscribe_registered();
        registration_state = Some(admin::RegistrationState {
            registered: registrar.subscribe_registered(),
            health: health.clone(),
        });
        let (deregister_tx, mut deregister_rx) = tokio::sync::oneshot::channel::<()>();
        let waiting_for = identity.clone();
        let task = tokio::spawn(async move {
            // Peers could not call an instance without a certificate: register once
            // there is one.
            if let Some(slot) = waiting_for {
                tokio::select! {
                    () = slot.wait() => {}
                    _ = &mut deregister_rx => return,
                }
            }
            registrar
                .run(health, async {
                    let _ = deregister_rx.await;
                })
                .await
        });
        let (ready_tx, connected) = (ready_tx.clone(), metrics.registry_connected.clone());
        tokio::spawn(async move {
            // Ready from the first registration on; the registration state also tells
            // whether the registry is reachable.
            while registered.changed().await.is_ok() {
                let now = *registered.borrow_and_update();
                connected.set(i64::from(now));
                if now {
                    ready_tx.send_replace(true);
                }
            }
        });
        registration = Some((deregister_tx, task));
    } else {
        ready_tx.send_replace(true);
    }

    // The app's calls.
    let outbound = Arc::new(Outbound {
        discovery: discovery.clone(),
        clients: clients.clone(),
        strategy: config.balancer,
        metrics: metrics.clone(),
        retry,
        ejection: config.ejection(),
        timeout: config.timeout,
        per_try_timeout: config.per_try_timeout,
        max_pending: config.max_pending,
        identity: identity.clone(),
    });
    let mut routes = vec![("outbound", listeners.outbound, Route::ByHost)];
    for (upstream, listener) in listeners.upstreams {
        let route = Route::Fixed {
            service: upstream.service.clone(),
            port: upstream.port,
        };
        routes.push(("upstream", listener, route));
    }
    for (name, listener, route) in routes {
        tracing::info!(
            "{name} listening on {} → {route:?}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        let outbound = outbound.clone();
        let route = Arc::new(route);
        let handler = move |request, _peer| {
            let (outbound, route) = (outbound.clone(), route.clone());
            async move { outbound.handle(&route, request).await }
        };
        servers.push(spawn_server(
            serving(name, Some(Direction::Outbound)),
            listener,
            handler,
            &stop,
        ));
    }

    // Admin, stopped last so /metrics and /ready answer during the drain.
    let admin_addr = listeners
        .admin
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin = Arc::new(admin::Admin {
        metrics: metrics.clone(),
        discovery,
        ready,
        identity,
        registration: registration_state,
        shutdown: admin_shutdown,
    });
    let (admin_stop_tx, admin_stop) = watch::channel(false);
    let admin_handler = move |request, peer: server::Peer| {
        let admin = admin.clone();
        async move { admin.handle(request, peer.addr) }
    };
    let admin_task = spawn_server(
        server::Serve {
            drain: Duration::from_secs(1),
            ..serving("admin", None)
        },
        listeners.admin,
        admin_handler,
        &admin_stop,
    );
    tracing::info!("admin on http://{admin_addr} (/metrics, /ready, /debug/endpoints)");

    tokio::select! {
        () = shutdown => {}
        _ = admin_shutdown_rx.wait_for(|s| *s) => {}
    }

    // Deregister first, so peers stop sending new requests here, then drain.
    if let Some((deregister, task)) = registration {
        tracing::info!("shutting down: deregistering");
        let _ = deregister.send(());
        if tokio::time::timeout(DEREGISTER_WAIT, task).await.is_err() {
            tracing::warn!("deregistration did not finish in time");
        }
    }
    let drain_ends = tokio::time::Instant::now() + config.drain_timeout;
    tracing::info!(drain = ?config.drain_timeout, "draining in-flight requests");
    stop_inbound_tx.send_replace(true);
    for server in inbound_servers {
        let _ = server.await;
    }
    if let Some(app) = config.app.filter(|_| config.service.is_some())
        && tokio::time::timeout_at(drain_ends, app_exited(app))
            .await
            .is_err()
    {
        tracing::info!(%app, "the app is still running at the end of the drain; closing its listeners");
    }
    stop_tx.send_replace(true);
    for server in servers {
        let _ = server.await;
    }
    admin_stop_tx.send_replace(true);
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves once the app no longer accepts connections.
async fn app_exited(app: std::net::SocketAddr) {
    while tokio::net::TcpStream::connect(app).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_server<H, F>(
    serve: server::Serve,
    listener: TcpListener,
    handler: H,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(http::Request<hyper::body::Incoming>, server::Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<body::BoxBody>> + Send + 'static,
{
    tokio::spawn(server::serve(serve, listener, handler, stop.clone()))
}
