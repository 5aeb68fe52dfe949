//! A sidecar serving in-process.

use std::net::SocketAddr;
use std::time::Duration;

use clap::ValueEnum;
use http::StatusCode;
use mesh_proxy::inbound::AppProtocol;
use mesh_proxy::listeners::{H1Engine, Upstream};
use mesh_proxy::{Config, Listeners};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{PATIENCE, eventually, get, listener};

/// A sidecar serving in-process, with the addresses of its listeners.
pub struct Sidecar {
    pub inbound: Option<SocketAddr>,
    pub outbound: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

pub struct SidecarSpec<'a> {
    pub registry: &'a str,
    /// `(service name, app address, app protocol)` for a sidecar that registers.
    pub app: Option<(&'a str, SocketAddr, Option<AppProtocol>)>,
    pub upstreams: Vec<&'a str>,
    /// The sidecar's settings: the defaults, with quick health checks and short leases.
    /// The harness fills in the registry, the listeners, the service and its app, and
    /// (unless set) a DNS server that knows no name.
    pub config: Config,
}

impl<'a> SidecarSpec<'a> {
    pub fn client(registry: &'a str) -> Self {
        let mut config = Config::default();
        config.registration.health_interval = Duration::from_millis(100);
        config.registration.ttl = Duration::from_secs(2);
        config.listen.h1_engine = h1_engine();
        SidecarSpec {
            registry,
            app: None,
            upstreams: Vec::new(),
            config,
        }
    }

    pub fn server(registry: &'a str, service: &'a str, app: SocketAddr) -> Self {
        SidecarSpec {
            app: Some((service, app, None)),
            ..Self::client(registry)
        }
    }
}

/// The HTTP/1.1 engine the suite runs on: `MESH_H1_ENGINE` (`own` or `hyper`), else the
/// default. CI runs the proxy's tests once with each.
pub fn h1_engine() -> H1Engine {
    match std::env::var("MESH_H1_ENGINE") {
        Ok(engine) => H1Engine::from_str(&engine, true)
            .unwrap_or_else(|e| panic!("MESH_H1_ENGINE={engine}: {e}")),
        Err(_) => H1Engine::default(),
    }
}

impl Sidecar {
    /// Starts a sidecar and waits until `/ready` answers 200.
    pub async fn start(spec: SidecarSpec<'_>) -> Sidecar {
        let sidecar = Self::start_unready(spec).await;
        sidecar.until_ready().await;
        sidecar
    }

    /// Starts a sidecar without waiting for it to become ready.
    pub async fn start_unready(spec: SidecarSpec<'_>) -> Sidecar {
        let mut config = spec.config;
        config.registry.url = spec.registry.to_owned();
        let inbound = match spec.app {
            Some((service, app, protocol)) => {
                let inbound = listener().await;
                let addr = inbound.local_addr().unwrap();
                let registration = &mut config.registration;
                registration.service = Some(service.to_owned());
                registration.app = Some(app);
                registration.app_protocol = protocol;
                registration.advertise = Some(addr.to_string());
                registration.instance_id = Some(format!("{service}-{}", addr.port()));
                config.listen.inbound = addr;
                Some(inbound)
            }
            None => None,
        };
        if config.discovery.dns_server.is_none() {
            // Names the registry does not know never reach the machine's resolver.
            config.discovery.dns_server = Some(super::nxdomain_dns().await);
        }
        let mut upstreams = Vec::new();
        for name in spec.upstreams {
            let l = listener().await;
            let listen = l.local_addr().unwrap();
            let upstream = Upstream {
                service: name.into(),
                port: None,
                listen,
            };
            upstreams.push((upstream, l));
        }
        let listeners = Listeners {
            inbound,
            outbound: listener().await,
            upstreams,
            admin: listener().await,
        };
        Self::run(listeners, config)
    }

    /// Runs the sidecar in a task of its own.
    fn run(listeners: Listeners, config: Config) -> Sidecar {
        let address = |l: &tokio::net::TcpListener| l.local_addr().unwrap();
        let inbound = listeners.inbound.as_ref().map(address);
        let (outbound, admin) = (address(&listeners.outbound), address(&listeners.admin));
        let upstreams = listeners
            .upstreams
            .iter()
            .map(|(_, l)| address(l))
            .collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            mesh_proxy::run(listeners, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Sidecar {
            inbound,
            outbound,
            upstreams,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn until_ready(&self) {
        let ready = format!("http://{}/ready", self.admin);
        eventually(PATIENCE, "the sidecar ready", async || {
            get(&ready).await.status == StatusCode::OK
        })
        .await;
    }

    /// Starts the shutdown (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn metrics(&self) -> String {
        get(&format!("http://{}/metrics", self.admin)).await.text
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}
