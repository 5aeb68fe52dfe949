//! A sidecar serving in-process.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use mesh_proxy::config::Upstream;
use mesh_proxy::inbound::AppProtocol;
use mesh_proxy::{Config, Listeners};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{get, listener};

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
    pub extra: Vec<&'a str>,
}

impl<'a> SidecarSpec<'a> {
    pub fn client(registry: &'a str) -> Self {
        SidecarSpec {
            registry,
            app: None,
            upstreams: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn server(registry: &'a str, service: &'a str, app: SocketAddr) -> Self {
        SidecarSpec {
            app: Some((service, app, None)),
            ..Self::client(registry)
        }
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
        let inbound = match spec.app {
            Some(_) => Some(listener().await),
            None => None,
        };
        let outbound = listener().await;
        let admin = listener().await;
        let mut args: Vec<String> = vec![
            "mesh-proxy".into(),
            "--registry".into(),
            spec.registry.into(),
        ];
        // Quick health checks and short leases, unless the test sets its own.
        for (flag, value) in [("--health-interval", "100ms"), ("--ttl", "2s")] {
            if !spec.extra.contains(&flag) {
                args.extend([flag.into(), value.into()]);
            }
        }
        if let (Some((service, app, protocol)), Some(inbound)) = (spec.app, &inbound) {
            let inbound_addr = inbound.local_addr().unwrap();
            args.extend([
                "--service".into(),
                service.into(),
                "--app".into(),
                app.to_string(),
                "--advertise".into(),
                inbound_addr.to_string(),
                "--inbound".into(),
                inbound_addr.to_string(),
                "--instance-id".into(),
                format!("{service}-{}", inbound_addr.port()),
            ]);
            if let Some(p) = protocol {
                let name = match p {
                    AppProtocol::Http => "http",
                    AppProtocol::H2 => "h2",
                    AppProtocol::Grpc => "grpc",
                };
                args.extend(["--app-protocol".into(), name.into()]);
            }
        }
        if !spec.extra.contains(&"--dns-server") {
            // Names the registry does not know never reach the machine's resolver.
            args.extend(["--dns-server".into(), super::nxdomain_dns().await]);
        }
        args.extend(spec.extra.iter().map(|s| s.to_string()));
        let config = Config::try_parse_from_args(&args);
        let mut upstreams = Vec::new();
        let mut upstream_addrs = Vec::new();
        for name in spec.upstreams {
            let l = listener().await;
            let addr = l.local_addr().unwrap();
            upstream_addrs.push(addr);
            upstreams.push((
                Upstream {
                    service: name.into(),
                    port: None,
                    listen: addr,
                },
                l,
            ));
        }
        let addrs = (
            inbound.as_ref().map(|l| l.local_addr().unwrap()),
            outbound.local_addr().unwrap(),
            admin.local_addr().unwrap(),
        );
        let listeners = Listeners {
            inbound,
            outbound,
            upstreams,
            admin,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            mesh_proxy::run(listeners, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Sidecar {
            inbound: addrs.0,
            outbound: addrs.1,
            upstreams: upstream_addrs,
            admin: addrs.2,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn until_ready(&self) {
        for _ in 0..500 {
            let r = get(&format!("http://{}/ready", self.admin)).await;
            if r.status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("sidecar never became ready");
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

/// `Config::try_parse_from` without pulling clap into every test file.
trait ParseArgs {
    fn try_parse_from_args(args: &[String]) -> Config;
}

impl ParseArgs for Config {
    fn try_parse_from_args(args: &[String]) -> Config {
        <Config as clap::Parser>::try_parse_from(args).unwrap()
    }
}
