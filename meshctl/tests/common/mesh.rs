//! Apps and sidecars serving in-process beside a test registry, each stopped when dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_proxy::inbound::AppProtocol;
use mesh_proxy::listeners::Upstream;
use mesh_proxy::tls::TlsMode;
use mesh_proxy::{Config, Listeners};
use mesh_test_support::{JOIN_TOKEN, PATIENCE, Registry, eventually, listener, nxdomain_dns};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An app answering `/status/N` with status N and anything else with 200.
pub struct App {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl App {
    pub async fn start() -> App {
        let listener = listener().await;
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let status = req
                        .uri()
                        .path()
                        .strip_prefix("/status/")
                        .and_then(|code| code.parse().ok())
                        .and_then(|code| StatusCode::from_u16(code).ok())
                        .unwrap_or(StatusCode::OK);
                    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        App { addr, task }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a sidecar is set up with beyond its service.
#[derive(Default)]
pub struct Shape {
    pub tls: TlsMode,
    /// `--app-protocol`.
    pub protocol: Option<AppProtocol>,
    /// The service of an upstream listener.
    pub upstream: Option<&'static str>,
    /// `--metadata` pairs it registers with.
    pub metadata: Vec<(String, String)>,
    /// `--registry-token`.
    pub registry_token: Option<&'static str>,
    /// `--tap-headers`.
    pub tap_headers: &'static [&'static str],
}

/// A sidecar registered as an instance of `service` in front of its own app.
pub struct Sidecar {
    pub service: String,
    pub id: String,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    /// The upstream listener, with [`Shape::upstream`].
    pub upstream: Option<SocketAddr>,
    pub admin: SocketAddr,
    _app: App,
    stop: Option<oneshot::Sender<()>>,
}

impl Sidecar {
    pub async fn start(registry: &Registry, service: &str) -> Sidecar {
        Self::start_with(registry, service, TlsMode::Off).await
    }

    /// A sidecar with mTLS in `tls` (the registry needs a CA for anything but off).
    /// Returns once the registry lists it as passing.
    pub async fn start_with(registry: &Registry, service: &str, tls: TlsMode) -> Sidecar {
        let shape = Shape {
            tls,
            ..Shape::default()
        };
        Self::start_shaped(registry, service, shape).await
    }

    /// A sidecar as `shape` says. Returns once the registry lists it as passing.
    pub async fn start_shaped(registry: &Registry, service: &str, shape: Shape) -> Sidecar {
        let Shape {
            tls,
            protocol,
            upstream,
            metadata,
            registry_token,
            tap_headers,
        } = shape;
        let app = App::start().await;
        let mut upstreams = Vec::new();
        if let Some(name) = upstream {
            let l = listener().await;
            let listen = l.local_addr().unwrap();
            let service = name.to_owned();
            let upstream = Upstream {
                service,
                port: None,
                listen,
            };
            upstreams.push((upstream, l));
        }
        let listeners = Listeners {
            inbound: Some(listener().await),
            outbound: listener().await,
            upstreams,
            admin: listener().await,
        };
        let address = |l: &TcpListener| l.local_addr().unwrap();
        let upstream = listeners.upstreams.first().map(|(_, l)| address(l));
        let inbound = address(listeners.inbound.as_ref().unwrap());
        let (outbound, admin) = (address(&listeners.outbound), address(&listeners.admin));
        let id = format!("{service}-{}", inbound.port());

        let mut config = Config::default();
        config.registry.url = registry.url();
        config.registry.token = registry_token.map(str::to_owned);
        // No lookup leaves the machine.
        config.discovery.dns_server = Some(nxdomain_dns().await);
        config.observe.tap_headers = tap_headers.iter().map(|h| (*h).to_owned()).collect();
        if let (Some(tls), true) = (registry.tls, tls != TlsMode::Off) {
            config.registry.url = format!("https://{tls}");
            config.registry.ca = registry.ca_cert();
        }
        let r = &mut config.registration;
        r.service = Some(service.to_owned());
        r.app = Some(app.addr);
        r.app_protocol = protocol;
        r.advertise = Some(inbound.to_string());
        r.instance_id = Some(id.clone());
        r.health_interval = Duration::from_millis(100);
        r.metadata = metadata;
        config.listen.inbound = inbound;
        config.tls.mode = tls;
        config.tls.join_token = (tls != TlsMode::Off).then(|| JOIN_TOKEN.to_owned());

        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            mesh_proxy::run(listeners, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let sidecar = Sidecar {
            service: service.to_owned(),
            id,
            inbound,
            outbound,
            upstream,
            admin,
            _app: app,
            stop: Some(stop),
        };
        sidecar.until_passing(registry).await;
        sidecar
    }

    /// `service/id`, as meshctl names it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.service, self.id)
    }

    /// Waits until the registry lists it as passing and its `/ready` says so too (it
    /// learns of its registration a moment after the registry).
    async fn until_passing(&self, registry: &Registry) {
        let what = format!("{} registered as passing and ready", self.name());
        eventually(PATIENCE, &what, async || {
            let listing = registry.client.service(&self.service).await.unwrap();
            listing.instances.iter().any(|i| i.id == self.id)
                && super::call(self.admin, "admin", "/ready").await == StatusCode::OK
        })
        .await;
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
