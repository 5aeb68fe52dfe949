//! The local service's instance in the registry: registered once the sidecar can serve
//! peers (with mTLS on, once it has its certificate), kept alive by heartbeats that carry
//! the app's health, and withdrawn first at shutdown so peers stop sending before the
//! listeners drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_registry_api::{Client, Registrar, Status, validate};
use mesh_registry_api::{MAX_TTL, MAX_WEIGHT, MIN_TTL};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::flags::Invalid;
use crate::inbound::AppProtocol;
use crate::metrics::Metrics;
use crate::tls::{IdentitySlot, TLS_METADATA, TlsMode};

/// Deadline for the deregistration at shutdown, so a dead registry cannot hold it up.
const DEREGISTER_WAIT: Duration = Duration::from_secs(6);
/// How long registration waits for the service's policy to be read first: the registry
/// answers in milliseconds; an unreachable one must not hold the instance back.
const FIRST_POLICY: Duration = Duration::from_secs(3);

/// The local service, its app, and how its instance is registered.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Local service")]
pub struct RegistrationConfig {
    /// Name of the local service. Without it the sidecar is outbound-only: it registers
    /// nothing and opens no inbound listener.
    #[arg(long, env = "MESH_SERVICE")]
    pub service: Option<String>,

    /// Address of the local app, which peers' calls are forwarded to: `IP:PORT`, or
    /// `HOST:PORT` with a host name resolved once at start-up (an IPv4 address first).
    #[arg(long, env = "MESH_APP", value_parser = parse_app)]
    pub app: Option<SocketAddr>,

    /// How to speak to the app; by default in the caller's HTTP version. `tcp`: carry
    /// every connection to it as bytes (and register the instance as `tcp`).
    #[arg(long, env = "MESH_APP_PROTOCOL", value_enum)]
    pub app_protocol: Option<AppProtocol>,

    /// Address peers dial to reach this instance (registered in the registry); by
    /// default the inbound address, with 127.0.0.1 for an unspecified IP.
    #[arg(long, env = "MESH_ADVERTISE")]
    pub advertise: Option<String>,

    /// Instance id in the registry; by default `<service>-<hostname>-<inbound port>`.
    #[arg(long, env = "MESH_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Relative share of traffic this instance asks for (1-1000, the registry's bound).
    #[arg(long, env = "MESH_WEIGHT", default_value_t = 1)]
    pub weight: u32,

    /// Registration metadata, `KEY=VALUE` pairs (comma-separated or repeated), which
    /// callers' routes select subsets by (e.g. `version=v2`). `tls` and `admin` are the
    /// sidecar's own.
    #[arg(long, env = "MESH_METADATA", value_delimiter = ',', value_parser = parse_metadata)]
    pub metadata: Vec<(String, String)>,

    /// Lease of the registration; heartbeats go at a third of it.
    #[arg(long, env = "MESH_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// How often the app's health is checked.
    #[arg(long, env = "MESH_HEALTH_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,

    /// HTTP path to check the app's health with (HTTP apps); without it a TCP connect
    /// is the check (gRPC apps are asked `grpc.health.v1.Health/Check`).
    #[arg(long, env = "MESH_HEALTH_PATH")]
    pub health_path: Option<String>,
}

/// The instance's registration while the sidecar runs.
pub struct Registration {
    deregister: oneshot::Sender<()>,
    task: JoinHandle<()>,
    state: RegistrationState,
}

/// What `/ready` says of the registration.
#[derive(Clone)]
pub struct RegistrationState {
    /// True from the first successful registration on: the sidecar is ready.
    pub ready: watch::Receiver<bool>,
    /// The registry holds a live lease for the instance, as far as we know.
    pub registered: watch::Receiver<bool>,
    /// The app's health: the status the instance is registered with.
    pub health: watch::Receiver<Status>,
}

/// One `--metadata` pair.
fn parse_metadata(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{value:?} is not KEY=VALUE (e.g. version=v2)")),
    }
}

/// `--app`: an address, or a host name and port resolved now.
fn parse_app(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    if value
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(format!("{value:?} is not HOST:PORT (e.g. 127.0.0.1:8080)"));
    }
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {value:?}: {e}; give the app's IP:PORT instead"))?
        .collect();
    // `localhost` often lists ::1 first while apps commonly listen on 127.0.0.1 only.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{value:?} resolves to no address; give the app's IP:PORT instead"))
}

// === impl RegistrationConfig ===

impl RegistrationConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(service) = &self.service {
            validate::service_name(service)
                .map_err(|e| Invalid::new("--service", e.to_string()))?;
            if self.app.is_none() {
                return Err(Invalid::new(
                    "--app",
                    "required with --service: the address of the local app",
                ));
            }
        }
        if let Some(id) = &self.instance_id {
            validate::instance_id(id).map_err(|e| Invalid::new("--instance-id", e.to_string()))?;
        }
        if let Some(advertise) = &self.advertise {
            validate::address(advertise).map_err(|e| Invalid::new("--advertise", e.to_string()))?;
        }
        if let Some((key, _)) = self
            .metadata
            .iter()
            .find(|(k, _)| k == TLS_METADATA || k == mesh_registry_api::ADMIN_METADATA)
        {
            return Err(Invalid::new(
                "--metadata",
                format!("{key:?} is set by the sidecar itself; choose another key"),
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            let why = format!("must be within 1-{MAX_WEIGHT}");
            return Err(Invalid::new("--weight", why));
        }
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            let (min, max) = (
                humantime::format_duration(MIN_TTL),
                humantime::format_duration(MAX_TTL),
            );
            return Err(Invalid::new("--ttl", format!("must be within {min}-{max}")));
        }
        Ok(())
    }

    /// The address registered for peers to dial, for an inbound listener at `inbound`.
    pub fn advertised(&self, inbound: SocketAddr) -> String {
        self.advertise.clone().unwrap_or_else(|| {
            let ip = if inbound.ip().is_unspecified() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                inbound.ip()
            };
            SocketAddr::new(ip, inbound.port()).to_string()
        })
    }

    /// The admin address registered for Prometheus: the advertised host with the admin
    /// port.
    pub fn advertised_admin(&self, inbound: SocketAddr, admin_port: u16) -> String {
        let advertised = self.advertised(inbound);
        let host = advertised
            .rsplit_once(':')
            .map(|(host, _)| host)
            .unwrap_or(&advertised);
        format!("{host}:{admin_port}")
    }

    /// The registered instance id.
    pub fn instance(&self, service: &str, inbound: SocketAddr) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("pid{}", std::process::id()));
            let raw = format!("{service}-{host}-{}", inbound.port());
            raw.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '-'
                    }
                })
                .take(validate::MAX_INSTANCE_ID)
                .collect()
        })
    }

    /// The registrar of `service`'s instance behind the inbound listener at `inbound`:
    /// the registry is told where peers and Prometheus (`admin_port`) reach it, how to
    /// speak to it, its weight and lease, and its mTLS mode (which also marks it as a
    /// sidecar).
    pub fn registrar(
        &self,
        registry: Client,
        service: &str,
        inbound: SocketAddr,
        admin_port: u16,
        tls: TlsMode,
    ) -> Registrar {
        let mut spec = mesh_registry_api::Registration::new(self.advertised(inbound));
        spec.protocol = match self.app_protocol {
            Some(AppProtocol::Grpc) => mesh_registry_api::Protocol::Grpc,
            Some(AppProtocol::H2) => mesh_registry_api::Protocol::H2,
            Some(AppProtocol::Tcp) => mesh_registry_api::Protocol::Tcp,
            _ => mesh_registry_api::Protocol::Http,
        };
        spec.weight = self.weight;
        spec.ttl = self.ttl;
        spec.metadata.extend(self.metadata.iter().cloned());
        spec.metadata
            .insert(TLS_METADATA.into(), tls.as_str().into());
        spec.metadata.insert(
            mesh_registry_api::ADMIN_METADATA.into(),
            self.advertised_admin(inbound, admin_port),
        );
        let id = self.instance(service, inbound);
        tracing::info!(%service, %id, address = %spec.address, "registering");
        Registrar::new(registry, service, &id, spec)
    }
}

// === impl Registration ===

impl Registration {
    /// Registers the instance in the background, with `health` as its status, once
    /// `identity` (with mTLS on) has a certificate: peers could not call it before.
    /// Registers once the certificate (with mTLS) is there and the service's policy has
    /// been read once (`policy_read`, or [`FIRST_POLICY`] has passed): a caller that finds
    /// the instance finds its intentions and limits in force.
    pub fn start(
        registrar: Registrar,
        identity: Option<Arc<IdentitySlot>>,
        mut policy_read: watch::Receiver<bool>,
        health: watch::Receiver<Status>,
        metrics: &Metrics,
    ) -> Registration {
        let state = RegistrationState {
            ready: follow_registered(registrar.subscribe_registered(), metrics),
            registered: registrar.subscribe_registered(),
            health: health.clone(),
        };
        let (deregister, mut deregistered) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Some(slot) = identity {
                tokio::select! {
                    () = slot.wait() => {}
                    _ = &mut deregistered => return,
                }
            }
            let policy = tokio::time::timeout(FIRST_POLICY, policy_read.wait_for(|read| *read));
            tokio::select! {
                _ = policy => {}
                _ = &mut deregistered => return,
            }
            registrar
                .run(health, async {
                    let _ = deregistered.await;
                })
                .await
        });
        Registration {
            deregister,
            task,
            state,
        }
    }

    pub fn state(&self) -> RegistrationState {
        self.state.clone()
    }

    /// Deregisters (waiting a bounded time for the registry), so peers stop sending
    /// new requests here.
    pub async fn withdraw(self) {
        tracing::info!("shutting down: deregistering");
        let _ = self.deregister.send(());
        let mut task = self.task;
        if tokio::time::timeout(DEREGISTER_WAIT, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("deregistration did not finish in time");
            task.abort();
            let _ = task.await;
        }
    }
}

/// Reports the registration's calls to the registry's reachability; the returned flag
/// turns true at the first registration and stays so.
fn follow_registered(
    mut registered: watch::Receiver<bool>,
    metrics: &Metrics,
) -> watch::Receiver<bool> {
    let (ready, receiver) = watch::channel(false);
    let connected = metrics.registry_connected.clone();
    tokio::spawn(async move {
        while registered.changed().await.is_ok() {
            let now = *registered.borrow_and_update();
            connected.report(now);
            if now {
                ready.send_replace(true);
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Config;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["mesh-proxy"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn the_app_may_be_named_by_host_name() {
        let c = parse(&["--app", "localhost:5000"]);
        assert_eq!(c.registration.app, Some("127.0.0.1:5000".parse().unwrap()));
        assert_eq!(
            parse(&["--app", "[::1]:5000"]).registration.app,
            Some("[::1]:5000".parse().unwrap())
        );
        let refused = |value: &str| {
            Config::try_parse_from(["mesh-proxy", "--app", value])
                .unwrap_err()
                .to_string()
        };
        assert!(
            refused("localhost").contains("not HOST:PORT"),
            "{}",
            refused("localhost")
        );
    }

    #[test]
    fn the_admin_address_is_advertised_with_the_same_host() {
        let c = parse(&["--advertise", "web-1:4143"]);
        let inbound = c.listen.inbound;
        assert_eq!(c.registration.advertised_admin(inbound, 4191), "web-1:4191");
        let c = parse(&["--advertise", "[::1]:4143"]);
        assert_eq!(c.registration.advertised_admin(inbound, 9), "[::1]:9");
    }

    #[test]
    fn the_advertised_address_defaults_to_a_dialable_inbound() {
        let advertised = |args: &[&str]| {
            let c = parse(args);
            c.registration.advertised(c.listen.inbound)
        };
        assert_eq!(advertised(&[]), "127.0.0.1:4143");
        assert_eq!(advertised(&["--inbound", "10.1.2.3:4143"]), "10.1.2.3:4143");
        assert_eq!(advertised(&["--advertise", "web-1:4143"]), "web-1:4143");
        let c = parse(&["--instance-id", "x"]);
        assert_eq!(c.registration.instance("web", c.listen.inbound), "x");
        let c = parse(&[]);
        assert!(validate::instance_id(&c.registration.instance("web", c.listen.inbound)).is_ok());
    }
}
