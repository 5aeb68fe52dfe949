//! Command-line flags (each also read from an environment variable), checked once at
//! start-up with messages that name the flag.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use mesh_registry_api::validate;

use crate::balance::Strategy;
use crate::inbound::AppProtocol;

/// The mesh's sidecar: routes the app's outbound calls to discovered instances, forwards
/// peers' calls to the app, registers the app in the registry, and exports metrics.
#[derive(Parser, Debug, Clone)]
#[command(name = "mesh-proxy", version)]
pub struct Config {
    /// Name of the local service. Without it the sidecar is outbound-only: it registers
    /// nothing and opens no inbound listener.
    #[arg(long, env = "MESH_SERVICE")]
    pub service: Option<String>,

    /// Address of the local app, which peers' calls are forwarded to.
    #[arg(long, env = "MESH_APP")]
    pub app: Option<SocketAddr>,

    /// How to speak to the app; by default in the caller's HTTP version.
    #[arg(long, env = "MESH_APP_PROTOCOL", value_enum)]
    pub app_protocol: Option<AppProtocol>,

    /// Registry base URL.
    #[arg(long, env = "MESH_REGISTRY", default_value = "http://127.0.0.1:7700")]
    pub registry: String,

    /// Bearer token for registry writes (the registry's `--token`).
    #[arg(long, env = "MESH_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<String>,

    /// Listener for peers' calls to the local app.
    #[arg(long, env = "MESH_INBOUND", default_value = "0.0.0.0:4143")]
    pub inbound: SocketAddr,

    /// Address peers dial to reach this instance (registered in the registry); by
    /// default the inbound address, with 127.0.0.1 for an unspecified IP.
    #[arg(long, env = "MESH_ADVERTISE")]
    pub advertise: Option<String>,

    /// Listener for the app's calls, routed by `Host` / `:authority`.
    #[arg(long, env = "MESH_OUTBOUND", default_value = "127.0.0.1:4140")]
    pub outbound: SocketAddr,

    /// A listener dedicated to one service: `NAME=ADDR`, e.g.
    /// `recommendations=127.0.0.1:50051`. Repeatable; the env var takes a comma list.
    #[arg(long = "upstream", env = "MESH_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<Upstream>,

    /// Admin listener: /metrics, /ready, /live, /debug/endpoints, /shutdown.
    #[arg(long, env = "MESH_ADMIN", default_value = "0.0.0.0:4191")]
    pub admin: SocketAddr,

    /// Instance id in the registry; by default `<service>-<hostname>-<inbound port>`.
    #[arg(long, env = "MESH_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Load-balancing strategy.
    #[arg(long, env = "MESH_BALANCER", value_enum, default_value = "p2c")]
    pub balancer: Strategy,

    /// Relative share of traffic this instance asks for (1-1000).
    #[arg(long, env = "MESH_WEIGHT", default_value_t = 1)]
    pub weight: u32,

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

    /// Deadline for opening a connection to a peer or the app.
    #[arg(long, env = "MESH_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Threads serving requests. 1 runs everything on one thread with no cross-thread
    /// wake-ups, the cheapest per request; by default one per CPU (or
    /// `TOKIO_WORKER_THREADS`).
    #[arg(long, env = "MESH_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// How long shutdown waits for in-flight requests after deregistering.
    #[arg(long, env = "MESH_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// A client must send its request head within this time (slowloris protection);
    /// open streams and idle connections are never timed out by the proxy.
    #[arg(long, env = "MESH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Tries per request in total, the first included (1 disables retries).
    #[arg(long, env = "MESH_RETRY_ATTEMPTS", default_value_t = 3)]
    pub retry_attempts: u32,

    /// Backoff before the first retry; it doubles per retry (full jitter).
    #[arg(long, env = "MESH_RETRY_BACKOFF", default_value = "25ms", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,

    /// Longest backoff between retries.
    #[arg(long, env = "MESH_RETRY_BACKOFF_MAX", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub retry_backoff_max: Duration,

    /// Retries allowed on top of original requests, as a share (0.2 = 20 %).
    #[arg(long, env = "MESH_RETRY_BUDGET", default_value_t = 0.2)]
    pub retry_budget: f64,

    /// Retries per second allowed whatever the traffic.
    #[arg(long, env = "MESH_RETRY_MIN_PER_SECOND", default_value_t = 10)]
    pub retry_min_per_second: u32,

    /// HTTP statuses retried for idempotent (or `mesh-retry: true`) requests.
    #[arg(
        long,
        env = "MESH_RETRY_STATUSES",
        value_delimiter = ',',
        default_value = "502,503,504"
    )]
    pub retry_statuses: Vec<u16>,

    /// gRPC codes retried, as numbers or names (UNAVAILABLE is always retried).
    #[arg(long, env = "MESH_RETRY_GRPC_CODES", value_delimiter = ',', value_parser = parse_grpc_code)]
    pub retry_grpc_codes: Vec<u32>,

    /// Bytes of a request body (and of a gRPC answer) kept to make a retry possible;
    /// larger ones stream through and are not retried.
    #[arg(long, env = "MESH_RETRY_BUFFER", default_value_t = 64 * 1024)]
    pub retry_buffer: usize,

    /// Total deadline per request (none by default: long polls and streams are common);
    /// the `mesh-timeout` and `grpc-timeout` headers shorten it per request.
    #[arg(long, env = "MESH_TIMEOUT", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// Deadline per try; the `mesh-per-try-timeout` header shortens it.
    #[arg(long, env = "MESH_PER_TRY_TIMEOUT", value_parser = humantime::parse_duration)]
    pub per_try_timeout: Option<Duration>,

    /// Consecutive failures (connect errors, 5xx, gRPC UNAVAILABLE) that eject an endpoint.
    #[arg(long, env = "MESH_EJECT_AFTER", default_value_t = 5)]
    pub eject_after: u32,

    /// First ejection's length; it doubles per repeat.
    #[arg(long, env = "MESH_EJECT_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    pub eject_backoff: Duration,

    /// Longest ejection.
    #[arg(long, env = "MESH_EJECT_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub eject_backoff_max: Duration,

    /// Largest share of a service's endpoints ejected at once, in percent.
    #[arg(long, env = "MESH_EJECT_MAX_PERCENT", default_value_t = 50)]
    pub eject_max_percent: u32,

    /// Requests in flight per destination before new ones get a fast 503 (`overloaded`).
    #[arg(long, env = "MESH_MAX_PENDING", default_value_t = 10_000)]
    pub max_pending: usize,

    /// mTLS between sidecars: off, permissive (inbound also takes plaintext) or strict.
    #[arg(long, env = "MESH_TLS", value_enum, default_value = "off")]
    pub tls: crate::tls::TlsMode,

    /// Token that lets this sidecar get its certificate from the registry's CA (the
    /// registry's `--join-token`).
    #[arg(long, env = "MESH_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// Trust domain of the mesh's SPIFFE IDs (as the registry's `--trust-domain`).
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,

    /// Services allowed to call this one, by mTLS identity (comma list). Empty: every
    /// meshed caller.
    #[arg(long, env = "MESH_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,

    /// Connections served at once per listener.
    #[arg(long, env = "MESH_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// A destination no request used for this long is dropped, with its registry watch
    /// and DNS refreshes; the next request for it starts afresh.
    #[arg(long, env = "MESH_DESTINATION_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub destination_idle_timeout: Duration,

    /// Destinations followed at once; past them, requests for new names get a fast 503
    /// (`overloaded`) until some fall idle.
    #[arg(long, env = "MESH_MAX_DESTINATIONS", default_value_t = 1000)]
    pub max_destinations: usize,

    /// A destination this sidecar may call in plaintext even under `--tls strict` (an
    /// un-meshed service). Repeatable; the env var takes a comma list.
    #[arg(
        long = "plaintext-to",
        env = "MESH_PLAINTEXT_TO",
        value_delimiter = ','
    )]
    pub plaintext_to: Vec<String>,

    /// DNS server (`IP:PORT`) for names the registry does not know; by default the
    /// system's (`/etc/resolv.conf`). `/etc/hosts` is read either way.
    #[arg(long, env = "MESH_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
}

/// A gRPC status code by number (`8`) or name (`RESOURCE_EXHAUSTED`).
fn parse_grpc_code(s: &str) -> Result<u32, String> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return if (n as usize) < NAMES.len() {
            Ok(n)
        } else {
            Err(format!("{n} is not a gRPC code (0-16)"))
        };
    }
    let upper = s.trim().to_ascii_uppercase();
    NAMES
        .iter()
        .position(|n| *n == upper)
        .map(|i| i as u32)
        .ok_or_else(|| {
            format!("{s:?} is not a gRPC code name like UNAVAILABLE or RESOURCE_EXHAUSTED")
        })
}

/// One `--upstream NAME=ADDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub service: String,
    /// Port for DNS answers when `NAME` is `host:port` (un-meshed destinations).
    pub port: Option<u16>,
    pub listen: SocketAddr,
}

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, addr) = s.split_once('=').ok_or_else(|| {
            format!("{s:?} is not NAME=ADDR (e.g. recommendations=127.0.0.1:50051)")
        })?;
        let listen = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {s:?} is not an IP:port to listen on"))?;
        let (service, port) = match name.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse()
                    .map_err(|_| format!("{port:?} in {s:?} is not a port"))?;
                (host.to_owned(), Some(port))
            }
            None => (name.to_owned(), None),
        };
        if service.is_empty() {
            return Err(format!("{s:?} names no service"));
        }
        Ok(Upstream {
            service,
            port,
            listen,
        })
    }
}

// === impl Config ===

impl Config {
    /// Checks what clap cannot; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(service) = &self.service {
            validate::service_name(service).map_err(|e| format!("--service: {e}"))?;
            if self.app.is_none() {
                return Err(
                    "--app is required with --service: the address of the local app".into(),
                );
            }
        }
        if let Some(id) = &self.instance_id {
            validate::instance_id(id).map_err(|e| format!("--instance-id: {e}"))?;
        }
        if let Some(advertise) = &self.advertise {
            validate::address(advertise).map_err(|e| format!("--advertise: {e}"))?;
        }
        if !(1..=1000).contains(&self.weight) {
            return Err("--weight must be within 1-1000".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.ttl) {
            return Err("--ttl must be within 1s-1h".into());
        }
        if self.tls != crate::tls::TlsMode::Off {
            if self.service.is_none() {
                return Err(
                    "--tls needs --service: the certificate names the local service".into(),
                );
            }
            if self
                .join_token
                .as_deref()
                .is_none_or(|t| t.trim().is_empty())
            {
                return Err(
                    "--tls needs --join-token to get a certificate from the registry".into(),
                );
            }
        }
        for caller in &self.allow {
            validate::service_name(caller).map_err(|e| format!("--allow: {e}"))?;
        }
        if !self.allow.is_empty() && self.tls == crate::tls::TlsMode::Off {
            return Err(
                "--allow needs --tls permissive or strict: callers are known by their certificates"
                    .into(),
            );
        }
        if self.retry_attempts == 0 {
            return Err("--retry-attempts must be at least 1 (1 disables retries)".into());
        }
        if !(0.0..=10.0).contains(&self.retry_budget) {
            return Err("--retry-budget must be a share between 0.0 and 10.0".into());
        }
        if self.retry_backoff > self.retry_backoff_max {
            return Err("--retry-backoff must not exceed --retry-backoff-max".into());
        }
        if self.eject_max_percent > 100 {
            return Err("--eject-max-percent must be at most 100".into());
        }
        if self.max_pending == 0 {
            return Err("--max-pending must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.max_destinations == 0 {
            return Err("--max-destinations must be at least 1".into());
        }
        if self.destination_idle_timeout < Duration::from_millis(100) {
            return Err("--destination-idle-timeout must be at least 100ms".into());
        }
        let longest = crate::deadline::MAX_DEADLINE;
        for (flag, value) in [
            ("--timeout", self.timeout),
            ("--per-try-timeout", self.per_try_timeout),
        ] {
            if value.is_some_and(|d| d > longest) {
                return Err(format!(
                    "{flag} must be at most {}",
                    humantime::format_duration(longest)
                ));
            }
        }
        if self.service.is_some() && self.app == Some(self.inbound) {
            return Err(format!(
                "--app {} is this sidecar's own --inbound: peers' calls would loop back into it",
                self.inbound
            ));
        }
        if self.plaintext_to.iter().any(|d| d.trim().is_empty()) {
            return Err("--plaintext-to needs a destination name".into());
        }
        mesh_registry_api::Client::new(&self.registry).map_err(|e| format!("--registry: {e}"))?;
        Ok(())
    }

    /// The retry policy the flags describe.
    pub fn retry(&self) -> crate::retry::RetryConfig {
        let mut grpc_codes = self.retry_grpc_codes.clone();
        if !grpc_codes.contains(&crate::grpc::UNAVAILABLE) {
            grpc_codes.push(crate::grpc::UNAVAILABLE);
        }
        crate::retry::RetryConfig {
            max_attempts: self.retry_attempts,
            backoff_base: self.retry_backoff,
            backoff_cap: self.retry_backoff_max,
            statuses: self.retry_statuses.clone(),
            grpc_codes,
            buffer_limit: self.retry_buffer,
            budget: crate::budget::BudgetConfig {
                ratio: self.retry_budget,
                min_per_second: self.retry_min_per_second,
            },
        }
    }

    /// The outlier-ejection policy the flags describe.
    pub fn ejection(&self) -> crate::breaker::EjectionConfig {
        crate::breaker::EjectionConfig {
            consecutive_failures: self.eject_after,
            base: self.eject_backoff,
            max: self.eject_backoff_max,
            max_percent: self.eject_max_percent,
            ..crate::breaker::EjectionConfig::default()
        }
    }

    /// The address registered for peers to dial.
    pub fn advertised(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| {
            let ip = if self.inbound.ip().is_unspecified() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                self.inbound.ip()
            };
            SocketAddr::new(ip, self.inbound.port()).to_string()
        })
    }

    /// The admin address registered for Prometheus: the advertised host with the admin
    /// port.
    pub fn advertised_admin(&self, admin_port: u16) -> String {
        let advertised = self.advertised();
        let host = advertised
            .rsplit_once(':')
            .map(|(host, _)| host)
            .unwrap_or(&advertised);
        format!("{host}:{admin_port}")
    }

    /// The registered instance id.
    pub fn instance(&self, service: &str) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("pid{}", std::process::id()));
            let raw = format!("{service}-{host}-{}", self.inbound.port());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["mesh-proxy"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn upstreams_parse_with_an_optional_port() {
        let c = parse(&[
            "--upstream",
            "recommendations=127.0.0.1:50051",
            "--upstream",
            "api.example.com:8080=127.0.0.1:9000",
        ]);
        assert_eq!(c.upstreams[0].service, "recommendations");
        assert_eq!(c.upstreams[0].port, None);
        assert_eq!(c.upstreams[1].port, Some(8080));
        assert!("recommendations".parse::<Upstream>().is_err());
        assert!("r=nowhere".parse::<Upstream>().is_err());
    }

    #[test]
    fn validation_names_the_flag() {
        assert!(
            parse(&["--service", "Bad"])
                .validate()
                .unwrap_err()
                .contains("--service")
        );
        assert!(
            parse(&["--service", "web"])
                .validate()
                .unwrap_err()
                .contains("--app")
        );
        assert!(
            parse(&["--weight", "0"])
                .validate()
                .unwrap_err()
                .contains("--weight")
        );
        assert!(
            parse(&["--registry", "https://r"])
                .validate()
                .unwrap_err()
                .contains("--registry")
        );
        assert!(
            parse(&["--service", "web", "--app", "127.0.0.1:1"])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn unsafe_values_are_refused_before_anything_starts() {
        let error = |args: &[&str]| parse(args).validate().unwrap_err();
        assert!(error(&["--timeout", "100000d"]).contains("--timeout"));
        assert!(error(&["--per-try-timeout", "1000000000000s"]).contains("--per-try-timeout"));
        assert!(error(&["--max-destinations", "0"]).contains("--max-destinations"));
        assert!(
            error(&[
                "--service",
                "web",
                "--app",
                "127.0.0.1:4143",
                "--inbound",
                "127.0.0.1:4143"
            ])
            .contains("--app")
        );
        assert!(error(&["--registry", "http://r:7700/v1"]).contains("--registry"));
        let defaults = parse(&[]);
        assert_eq!(defaults.destination_idle_timeout, Duration::from_secs(10));
        assert_eq!(defaults.max_destinations, 1000);
    }

    #[test]
    fn the_admin_address_is_advertised_with_the_same_host() {
        let c = parse(&["--advertise", "web-1:4143"]);
        assert_eq!(c.advertised_admin(4191), "web-1:4191");
        assert_eq!(
            parse(&["--advertise", "[::1]:4143"]).advertised_admin(9),
            "[::1]:9"
        );
    }

    #[test]
    fn the_advertised_address_defaults_to_a_dialable_inbound() {
        assert_eq!(parse(&[]).advertised(), "127.0.0.1:4143");
        assert_eq!(
            parse(&["--inbound", "10.1.2.3:4143"]).advertised(),
            "10.1.2.3:4143"
        );
        assert_eq!(
            parse(&["--advertise", "web-1:4143"]).advertised(),
            "web-1:4143"
        );
        let id = parse(&["--instance-id", "x"]).instance("web");
        assert_eq!(id, "x");
        assert!(validate::instance_id(&parse(&[]).instance("web")).is_ok());
    }
}
