//! `mesh-proxy`: the mesh's sidecar.
//!
//! It runs beside one app and owns four kinds of listener:
//! - **outbound** (`--outbound`): the app's calls, routed by `Host` / `:authority`;
//! - **upstream** (`--upstream NAME=ADDR`): the app's calls to one fixed service;
//! - **inbound** (`--inbound`): peers' calls, forwarded to the app (`--app`);
//! - **admin** (`--admin`): `/metrics`, `/ready`, `/live`, `/debug/endpoints`,
//!   `/debug/policy`, `/tap`, `/shutdown`.
//!
//! Where to read:
//! - [`run`] wires the sidecar in stages: identity, discovery, the local app (inbound
//!   listener, health, registration), outbound listeners, admin; [`shutdown`] stops them
//!   in order.
//! - [`outbound`] is the request path of the app's calls, step by step: [`discover`]
//!   keeps each destination's endpoints, [`balance`] picks one per try, [`breaker`]
//!   ejects failing ones, [`retry`] and [`deadline`] decide on another try, [`forward`]
//!   sends over pooled connections, [`respond`] answers (shared with [`inbound`]).
//! - [`policy`] follows traffic policy from the registry: a destination's routes (read
//!   when a call begins), the local service's intentions and limits (asked by
//!   [`inbound`] before a call reaches the app).
//! - [`observe`] sees single calls: OpenTelemetry spans, the access log, the live tap.
//! - [`config`] holds the flags, grouped by the part they configure.
//!
//! [`run`] takes already-bound listeners, so tests bind `127.0.0.1:0`.

mod admin;
pub mod balance;
pub mod body;
mod breaker;
mod budget;
pub mod classify;
pub mod config;
pub mod deadline;
mod destination;
mod detect;
mod discover;
mod dns;
mod endpoint;
pub mod error;
mod flags;
pub mod forward;
pub mod grpc;
pub mod h1;
pub mod headers;
mod health;
pub mod inbound;
mod io;
pub mod listeners;
pub mod loops;
mod metrics;
pub mod observe;
pub mod outbound;
mod policy;
pub mod pool;
mod register;
mod replay;
mod respond;
pub mod retry;
mod server;
mod shutdown;
mod splice;
mod tcp;
pub mod tls;
pub mod upgrade;
mod window;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_registry_api::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::config::Config;
use crate::destination::DialPolicy;
use crate::discover::Discovery;
use crate::flags::Invalid;
use crate::forward::Clients;
use crate::health::{Check, HealthCheck};
use crate::inbound::AppProtocol;
use crate::inbound::Inbound;
use crate::listeners::Upstream;
pub use crate::listeners::{BindError, Listeners};
use crate::metrics::{Direction, Metrics};
use crate::observe::Observers;
use crate::outbound::{Outbound, Route};
use crate::register::{Registration, RegistrationState};
use crate::server::{Http, InboundTls, Serve, Servers};
use crate::shutdown::{LocalApp, Shutdown};
use crate::tls::{IdentitySlot, TlsMode};

/// How long the observers may take, at shutdown, to send what they still hold.
const OBSERVERS_CLOSE: Duration = Duration::from_secs(2);

/// Why the sidecar could not start. Messages carry their causes: none is a `source`, so a
/// printed chain says each once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Bind(BindError),
    #[error("invalid configuration: {0}")]
    Config(Invalid),
}

impl From<BindError> for Error {
    fn from(e: BindError) -> Self {
        Error::Bind(e)
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::Config(e)
    }
}

/// Runs the sidecar until `shutdown` resolves (or `POST /shutdown`), then stops it in
/// the order [`Shutdown`] gives.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    let service = config.registration.service.as_deref();
    let resource = observe::Resource {
        service: service.unwrap_or("mesh-proxy").to_owned(),
        instance: config.registration.instance_id.clone(),
    };
    let (observers, observing) =
        Observers::start(&config.observe, resource, &config.tls.trust_domain)?;
    let metrics = Metrics::observed(observers);
    // With mTLS on, the certificate comes from the registry's CA in the background:
    // admin answers at once and says why the sidecar is not ready meanwhile. Over the
    // registry's TLS listener, the same certificate proves which service writes.
    let identity = tls::identity::slot(service, &config.tls);
    let registry = config
        .registry
        .client(identity.as_ref(), &config.tls.trust_domain)?;
    let renewal = match (&identity, service) {
        (Some(slot), Some(service)) => Some(tls::identity::start(
            slot,
            service,
            &config.tls,
            &registry,
            &metrics,
        )),
        _ => None,
    };
    let own = listeners.own();
    let clients = Clients::new(config.connect_timeout, identity.clone(), own.clone())
        .with_h1_engine(config.listen.h1_engine);
    let dial = DialPolicy {
        own,
        strict: config.tls.mode == TlsMode::Strict,
        plaintext_to: config.tls.plaintext_to.clone(),
    };
    let (discovery, budget) = (config.discovery.clone(), config.retry.budget);
    let discovery = Discovery::new(registry.clone(), metrics.clone(), discovery, budget, dial);
    let stages = Stages {
        config: &config,
        metrics: &metrics,
        clients: &clients,
        identity: &identity,
    };
    let admin_port = port_of(&listeners.admin).unwrap_or(config.listen.admin.port());
    let local = match (
        &config.registration.service,
        config.registration.app,
        listeners.inbound,
    ) {
        (Some(service), Some(app), Some(inbound)) => {
            Some(stages.local_app(service, app, inbound, registry, admin_port))
        }
        _ => None,
    };
    let outbound = stages.outbound(listeners.outbound, listeners.upstreams, &discovery);
    let (shutdown_requested, mut requested) = watch::channel(false);
    let registration = local.as_ref().map(|l| l.registration.state());
    let serving = local.as_ref().map(|l| l.policy.clone());
    let admin = stages.admin(
        listeners.admin,
        discovery.clone(),
        registration,
        serving,
        shutdown_requested,
    );
    tokio::select! {
        () = shutdown => {}
        _ = requested.wait_for(|s| *s) => {}
    }
    let drain = config.listen.drain_timeout;
    Shutdown {
        local,
        outbound,
        admin,
        drain,
        discovery,
        renewal,
        metrics: metrics.clone(),
    }
    .run()
    .await;
    // Spans and log lines of the last requests still go out.
    metrics.observers.close(observing, OBSERVERS_CLOSE).await;
    Ok(())
}

/// What the stages of [`run`] share.
struct Stages<'a> {
    config: &'a Config,
    metrics: &'a Arc<Metrics>,
    clients: &'a Clients,
    identity: &'a Option<Arc<IdentitySlot>>,
}

// === impl Stages ===

impl Stages<'_> {
    /// The local app: peers' calls reach it through the inbound listener, its health is
    /// checked, and its instance registered with that health.
    fn local_app(
        &self,
        service: &str,
        app: SocketAddr,
        listener: TcpListener,
        registry: Client,
        admin_port: u16,
    ) -> LocalApp {
        let config = self.config;
        // The app's connections, shared by peers' calls and the health checks.
        let pool = Arc::new(pool::Pool::new(app.to_string()));
        // The service's intentions and limits, followed for as long as the app is served.
        let policy = policy::Policy::serving(service, &config.tls.trust_domain);
        let follower = tokio::spawn(policy.clone().follow(registry.clone()));
        let inbound = self.inbound(service, app, pool.clone(), listener, policy.clone());
        let registration = &config.registration;
        let health = HealthCheck {
            app,
            check: Check::choose(
                registration.app_protocol,
                registration.health_path.as_deref(),
            ),
            clients: self.clients.clone(),
            pool,
            interval: registration.health_interval,
        };
        let (inbound_at, tls) = (config.listen.inbound, config.tls.mode);
        let checking = health.spawn();
        let registrar = registration
            .registrar(registry, service, inbound_at, admin_port, tls)
            .with_output(checking.output);
        let identity = self.identity.clone();
        let policy_read = policy.received.subscribe();
        let registration = Registration::start(
            registrar,
            identity,
            policy_read,
            checking.status,
            self.metrics,
        );
        LocalApp {
            app,
            inbound,
            registration,
            health: checking.task,
            policy,
            follower,
        }
    }

    /// The inbound listener: peers' calls to the app, mTLS-checked when on.
    fn inbound(
        &self,
        service: &str,
        app: SocketAddr,
        pool: Arc<pool::Pool>,
        listener: TcpListener,
        policy: Arc<policy::Policy>,
    ) -> Servers {
        let config = self.config;
        if !config.tls.allow.is_empty() {
            self.metrics.policy_added(service);
        }
        let inbound = Arc::new(Inbound {
            service: service.to_owned(),
            app,
            app_protocol: config.registration.app_protocol,
            clients: self.clients.clone(),
            pool,
            metrics: self.metrics.clone(),
            service_metrics: self.metrics.service(Direction::Inbound, service),
            allow: config.tls.allow.clone(),
            policy,
        });
        tracing::info!("inbound listening on {} → app {app}", address_of(&listener));
        let tls = self.identity.as_ref().map(|slot| InboundTls {
            identity: slot.clone(),
            mode: config.tls.mode,
            trust_domain: config.tls.trust_domain.clone(),
        });
        let serve = Serve {
            tls,
            ..self.serve("inbound", Some(Direction::Inbound))
        };
        let mut servers = Servers::default();
        let tcp = Arc::new(tcp::InboundTcp {
            service: inbound.service.clone(),
            app,
            connect_timeout: config.connect_timeout,
            allow: inbound.allow.clone(),
            metrics: self.metrics.clone(),
            service_metrics: inbound.service_metrics.clone(),
        });
        let http = Http(move |request, peer| {
            let inbound = inbound.clone();
            async move { Ok(inbound.handle(request, peer).await) }
        });
        match config.registration.app_protocol {
            Some(AppProtocol::Tcp) => {
                servers.serve_with(serve, listener, tcp::Inbound { inner: tcp });
            }
            // Declared HTTP: nothing to detect.
            Some(_) => servers.serve_with(serve, listener, http),
            None => {
                let warned = Default::default();
                let detect = tcp::InboundDetect { http, tcp, warned };
                servers.serve_with(serve, listener, detect);
            }
        }
        servers
    }

    /// The app's calls: the outbound listener (routed by host) and one listener per
    /// `--upstream`.
    fn outbound(
        &self,
        listener: TcpListener,
        upstreams: Vec<(Upstream, TcpListener)>,
        discovery: &Arc<Discovery>,
    ) -> Servers {
        let config = self.config;
        let outbound = Arc::new(Outbound {
            discovery: discovery.clone(),
            clients: self.clients.clone(),
            metrics: self.metrics.clone(),
            identity: self.identity.clone(),
            config: config.outbound.clone(),
            retry: config.retry.clone(),
            ejection: config.ejection,
        });
        let fixed = upstreams.into_iter().map(|(upstream, listener)| {
            let route = Route::Fixed {
                service: upstream.service,
                port: upstream.port,
            };
            ("upstream", listener, route)
        });
        let mut servers = Servers::default();
        for (name, listener, route) in
            std::iter::once(("outbound", listener, Route::ByHost)).chain(fixed)
        {
            tracing::info!("{name} listening on {} → {route:?}", address_of(&listener));
            let (outbound, route) = (outbound.clone(), Arc::new(route));
            let http = {
                let (outbound, route) = (outbound.clone(), route.clone());
                Http(move |request, peer: server::Peer| {
                    let (outbound, route) = (outbound.clone(), route.clone());
                    async move { Ok(outbound.handle(&route, request, peer.addr).await) }
                })
            };
            let serve = self.serve(name, Some(Direction::Outbound));
            // A listener for one service carries its connections as bytes when that
            // service is `tcp`.
            let upstream = tcp::Upstream {
                outbound,
                route,
                http,
                engine: config.listen.h1_engine,
                warned: Default::default(),
            };
            servers.serve_with(serve, listener, upstream);
        }
        servers
    }

    /// The admin listener; `shutdown` is raised by `POST /shutdown`.
    fn admin(
        &self,
        listener: TcpListener,
        discovery: Arc<Discovery>,
        registration: Option<RegistrationState>,
        policy: Option<Arc<policy::Policy>>,
        shutdown: watch::Sender<bool>,
    ) -> Servers {
        tracing::info!(
            "admin on http://{} (/metrics, /ready, /debug/endpoints, /debug/policy, /tap)",
            address_of(&listener)
        );
        let admin = Arc::new(admin::Admin {
            metrics: self.metrics.clone(),
            discovery,
            identity: self.identity.clone(),
            registration,
            policy,
            shutdown,
        });
        let serve = Serve {
            drain: Duration::from_secs(1),
            ..self.serve("admin", None)
        };
        let mut servers = Servers::default();
        servers.serve(serve, listener, move |request, peer: server::Peer| {
            let admin = admin.clone();
            async move { Ok(admin.handle(request, peer.addr)) }
        });
        servers
    }

    /// How a listener named `name` is served (in plaintext).
    fn serve(&self, name: &'static str, direction: Option<Direction>) -> Serve {
        Serve {
            name,
            direction,
            metrics: self.metrics.clone(),
            limits: self.config.listen.limits(),
            drain: self.config.listen.drain_timeout,
            tls: None,
        }
    }
}

fn port_of(listener: &TcpListener) -> Option<u16> {
    listener.local_addr().ok().map(|a| a.port())
}

fn address_of(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}
