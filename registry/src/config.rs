//! Command-line flags (each also read from an environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The mesh's discovery registry: instances register over HTTP, hold leases renewed by
/// heartbeats, and sidecars watch services with blocking queries.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mesh-registry",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address the HTTP API listens on.
    #[arg(long, env = "REGISTRY_LISTEN", default_value = "0.0.0.0:7700")]
    pub listen: SocketAddr,

    /// Address of the API over TLS (needs a CA): the same API, with a certificate from
    /// the mesh CA, where sidecars write with their own certificates (a client
    /// certificate naming service S may write S's instances only).
    #[arg(long, env = "REGISTRY_TLS_LISTEN", value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,

    /// DNS names and IP addresses the TLS listener's certificate carries besides the
    /// registry's SPIFFE ID (which the mesh's own clients check), for clients that check
    /// names (curl --cacert). Comma-separated.
    #[arg(
        long,
        env = "REGISTRY_TLS_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,::1",
        value_name = "NAMES"
    )]
    pub tls_names: Vec<String>,

    /// Directory for the catalog snapshot (`catalog.json`). Without it the catalog lives in
    /// memory only and is lost on restart.
    #[arg(long, env = "REGISTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// etcd endpoints, comma-separated (`http://a:2379,http://b:2379`): keep the catalog
    /// in that etcd cluster instead of this process, so any number of replicas can serve
    /// it. Without it the catalog is this process's own (memory and `--data-dir`).
    #[arg(
        long,
        env = "REGISTRY_ETCD_ENDPOINTS",
        value_delimiter = ',',
        conflicts_with = "data_dir"
    )]
    pub etcd_endpoints: Vec<String>,

    /// The key prefix of the catalog in etcd: several meshes can share one cluster.
    #[arg(long, env = "REGISTRY_ETCD_PREFIX", default_value = "/mesh")]
    pub etcd_prefix: String,

    /// The operator token: a bearer token that may write (register, heartbeat,
    /// deregister) instances of any service, and remove any instance. For operators
    /// (meshctl, scripts), not for sidecars.
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File of service tokens, for a registry without a CA: one per line, `SERVICES
    /// TOKEN` (services separated by commas, or `*`); a token may write the instances of
    /// its services only. `#` comments and blank lines allowed.
    #[arg(long, env = "REGISTRY_TOKENS", value_name = "FILE")]
    pub tokens: Option<PathBuf>,

    /// On a registry with no credentials at all (no --token, --tokens or CA), the host
    /// names besides IP addresses and `localhost` that writes may arrive under (their
    /// `Host` header). Comma-separated. Keeps a web page that rebinds its DNS name to the
    /// registry from writing through a visitor's browser.
    #[arg(
        long,
        env = "REGISTRY_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    pub allowed_hosts: Vec<String>,

    /// How long an instance whose lease ran out stays listed as critical before removal.
    #[arg(long, env = "REGISTRY_CRITICAL_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub critical_grace: Duration,

    /// How often leases are checked: the precision of expiry.
    #[arg(long, env = "REGISTRY_SWEEP_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,

    /// Quiet time after a change before the snapshot is written (bursts cost one write).
    #[arg(long, env = "REGISTRY_SNAPSHOT_DEBOUNCE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub snapshot_debounce: Duration,

    /// CA certificate (PEM) for signing sidecars' certificates; with `--ca-key` it turns
    /// on `POST /v1/ca/sign`. Create one with `mesh-registry gen-ca`.
    #[arg(long, env = "REGISTRY_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,

    /// The CA's private key (PEM).
    #[arg(long, env = "REGISTRY_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// Directory holding the CA as `ca.pem` and `ca-key.pem`, created there (as by
    /// `gen-ca`) on first start when missing: the simplest way to run the mesh's CA.
    #[arg(long, env = "REGISTRY_CA_DIR", conflicts_with = "ca_cert")]
    pub ca_dir: Option<PathBuf>,

    /// Bearer token sidecars present to get a certificate signed, for any service name
    /// (separate from --token). The simple choice for the local demo or one team.
    #[arg(long, env = "REGISTRY_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// File of join tokens scoped to services, one per line: `SERVICES TOKEN`, services
    /// separated by commas (or `*` for any); `#` comments and blank lines allowed. A token
    /// may only get certificates for its services. Combines with --join-token.
    #[arg(long, env = "REGISTRY_JOIN_TOKENS")]
    pub join_tokens: Option<PathBuf>,

    /// Trust domain of the SPIFFE IDs the CA issues: spiffe://<domain>/service/<name>.
    #[arg(long, env = "REGISTRY_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,

    /// Lifetime of issued certificates (sidecars renew at two thirds of it).
    #[arg(long, env = "REGISTRY_CERT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,

    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "REGISTRY_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Connections served at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "REGISTRY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// A new connection must send a whole request head this soon, and an HTTP/1.1 one
    /// each next head this soon after the previous answer, or it is closed.
    #[arg(long, env = "REGISTRY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// An HTTP/2 connection with no request open for this long is closed (GOAWAY).
    #[arg(long, env = "REGISTRY_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Blocking queries one client IP may have parked at once; past it a query is
    /// answered 429 at once. Sidecars behind one NAT share an IP: keep it generous.
    #[arg(long, env = "REGISTRY_MAX_PARKED_PER_CLIENT", default_value_t = crate::watch::DEFAULT_MAX_PARKED_PER_CLIENT)]
    pub max_parked_per_client: usize,

    /// Sidecar admin pages relayed at once; past it a relay is answered 503 at once.
    #[arg(long, env = "REGISTRY_MAX_ADMIN_RELAYS", default_value_t = crate::sidecar::DEFAULT_MAX_RELAYS)]
    pub max_admin_relays: usize,
}

/// Subcommands besides serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Writes a new CA certificate and key (ECDSA P-256) for the mesh: `ca.pem` and
    /// `ca-key.pem` in `--out`. Existing files are kept unless `--force`.
    GenCa {
        /// Directory to write `ca.pem` and `ca-key.pem` (mode 0600) into.
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
        /// Trust domain of the SPIFFE IDs the CA will issue.
        #[arg(long, default_value = "mesh.local")]
        trust_domain: String,
        /// Replace a CA already in `--out`.
        #[arg(long)]
        force: bool,
        /// Also copy the CA certificate (`ca.pem`, never the key) into this directory:
        /// what sidecars need to check the registry (`--registry-ca`), to hand out apart
        /// from the key. Done for an existing CA too.
        #[arg(long, value_name = "DIR")]
        bundle_out: Option<PathBuf>,
    },
    /// Writes a serving certificate from the mesh CA for another HTTPS server of the mesh
    /// (the injection webhook): `tls.crt` (the chain) and `tls.key` in `--out`. It names
    /// only `--name`s: no SPIFFE ID, so it stands for neither the registry nor a service.
    GenCert {
        /// Directory holding the CA's `ca.pem` and `ca-key.pem`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// A DNS name or IP address the certificate is for; repeat for several.
        #[arg(long = "name", required = true, value_name = "NAME")]
        names: Vec<String>,
        /// How long it is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Directory to write `tls.crt` and `tls.key` (mode 0600) into.
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
    },
}

// === impl Config ===

impl Config {
    /// The etcd endpoints as base URLs, when the catalog is kept in etcd.
    pub fn etcd(&self) -> Option<Vec<String>> {
        let endpoints: Vec<String> = self
            .etcd_endpoints
            .iter()
            .map(|e| e.trim().trim_end_matches('/').to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        (!endpoints.is_empty()).then_some(endpoints)
    }

    fn validate_etcd(&self) -> Result<(), String> {
        for endpoint in self.etcd().unwrap_or_default() {
            let uri: http::Uri = endpoint.parse().map_err(|_| {
                format!("--etcd-endpoints: {endpoint:?} is not a URL (http://host:port)")
            })?;
            if uri.scheme_str() != Some("http") || uri.port_u16().is_none() || uri.path() != "/" {
                return Err(format!(
                    "--etcd-endpoints: {endpoint:?} must be http://host:port (TLS to etcd is \
                     not supported: keep etcd on a private network)"
                ));
            }
        }
        let prefix = &self.etcd_prefix;
        let valid = prefix.starts_with('/')
            && prefix.len() <= 128
            && prefix.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(format!(
                "--etcd-prefix {prefix:?} must start with / and hold at most 128 printable \
                 ASCII characters"
            ));
        }
        Ok(())
    }

    fn validate_bounds(&self) -> Result<(), String> {
        let within = |value: usize, flag: &str, most: usize| {
            if (1..=most).contains(&value) {
                Ok(())
            } else {
                Err(format!("{flag} must be between 1 and {most}"))
            }
        };
        within(self.max_connections, "--max-connections", 1_000_000)?;
        within(
            self.max_parked_per_client,
            "--max-parked-per-client",
            1_000_000,
        )?;
        within(self.max_admin_relays, "--max-admin-relays", 10_000)?;
        let timeouts = [
            (self.header_read_timeout, "--header-read-timeout"),
            (self.idle_timeout, "--idle-timeout"),
        ];
        for (timeout, flag) in timeouts {
            if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&timeout) {
                return Err(format!("{flag} must be between 100ms and 1h"));
            }
        }
        Ok(())
    }

    /// Checks values clap cannot; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&self.sweep_interval) {
            return Err("--sweep-interval must be between 10ms and 10s".into());
        }
        if self.snapshot_debounce > Duration::from_secs(60) {
            return Err("--snapshot-debounce must be at most 60s".into());
        }
        self.validate_etcd()?;
        let has_ca = self.ca_cert.is_some() || self.ca_dir.is_some();
        let flag = match (&self.join_token, &self.join_tokens) {
            (Some(_), _) => Some("--join-token"),
            (None, Some(_)) => Some("--join-tokens"),
            (None, None) => None,
        };
        if let Some(flag) = flag
            && !has_ca
        {
            return Err(format!(
                "{flag} needs a CA to sign with: add --ca-dir DIR, or --ca-cert FILE and \
                 --ca-key FILE (without a CA the registry issues no certificates)"
            ));
        }
        if self
            .join_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err("--join-token must not be empty".into());
        }
        if has_ca && flag.is_none() {
            return Err(
                "a CA (--ca-cert or --ca-dir) needs --join-token or --join-tokens: \
                 without one anyone could get a certificate"
                    .into(),
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(365 * 24 * 3600)).contains(&self.cert_ttl)
        {
            return Err("--cert-ttl must be between 1s and 365 days".into());
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err("--token must not be empty (omit it to disable authentication)".into());
        }
        if self.tls_listen.is_some() && !has_ca {
            return Err(
                "--tls-listen needs a CA to issue the listener's certificate: add --ca-dir \
                 DIR, or --ca-cert FILE and --ca-key FILE"
                    .into(),
            );
        }
        if self.tls_names.iter().any(|n| n.trim().is_empty()) {
            return Err("--tls-names must not hold an empty name".into());
        }
        self.validate_bounds()?;
        Ok(())
    }
}

impl Default for Config {
    /// The flags' defaults, ignoring the environment (for tests and embedding).
    fn default() -> Self {
        Config {
            command: None,
            ca_cert: None,
            ca_key: None,
            ca_dir: None,
            join_token: None,
            join_tokens: None,
            trust_domain: "mesh.local".into(),
            cert_ttl: Duration::from_secs(24 * 3600),
            listen: ([0, 0, 0, 0], 7700).into(),
            tls_listen: None,
            tls_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            tokens: None,
            allowed_hosts: Vec::new(),
            data_dir: None,
            etcd_endpoints: Vec::new(),
            etcd_prefix: "/mesh".into(),
            token: None,
            critical_grace: Duration::from_secs(30),
            sweep_interval: Duration::from_millis(100),
            snapshot_debounce: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_parked_per_client: crate::watch::DEFAULT_MAX_PARKED_PER_CLIENT,
            max_admin_relays: crate::sidecar::DEFAULT_MAX_RELAYS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_flags() {
        let parsed = Config::try_parse_from(["mesh-registry"]).unwrap();
        let default = Config::default();
        assert_eq!(parsed.listen, default.listen);
        assert_eq!(parsed.critical_grace, default.critical_grace);
        assert_eq!(parsed.sweep_interval, default.sweep_interval);
        assert_eq!(parsed.snapshot_debounce, default.snapshot_debounce);
        assert_eq!(parsed.drain_timeout, default.drain_timeout);
        assert_eq!(parsed.max_connections, default.max_connections);
        assert_eq!(parsed.header_read_timeout, default.header_read_timeout);
        assert_eq!(parsed.idle_timeout, default.idle_timeout);
        assert_eq!(parsed.max_parked_per_client, default.max_parked_per_client);
        assert_eq!(parsed.max_admin_relays, default.max_admin_relays);
        assert!(default.validate().is_ok());
    }

    #[test]
    fn bad_values_name_their_flag() {
        let c = Config {
            sweep_interval: Duration::from_secs(60),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("--sweep-interval"));
        let c = Config {
            token: Some(" ".into()),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("--token"));
        let c = Config {
            max_connections: 0,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("--max-connections"));
        let c = Config {
            header_read_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("--header-read-timeout"));
    }

    #[test]
    fn a_join_token_without_a_ca_is_refused_naming_the_missing_flags() {
        let c = Config {
            join_token: Some("s3cret".into()),
            ..Config::default()
        };
        let err = c.validate().unwrap_err();
        assert!(err.contains("--join-token"), "{err}");
        assert!(
            err.contains("--ca-dir") && err.contains("--ca-cert"),
            "{err}"
        );
        let with_ca = Config {
            ca_dir: Some("/var/lib/mesh/ca".into()),
            ..c
        };
        assert!(with_ca.validate().is_ok());

        let scoped = Config {
            join_tokens: Some("/etc/mesh/join-tokens".into()),
            ..Config::default()
        };
        let err = scoped.validate().unwrap_err();
        assert!(
            err.contains("--join-tokens") && err.contains("--ca-dir"),
            "{err}"
        );
        let scoped_with_ca = Config {
            ca_dir: Some("/var/lib/mesh/ca".into()),
            ..scoped
        };
        assert!(scoped_with_ca.validate().is_ok());
        let ca_alone = Config {
            ca_dir: Some("/var/lib/mesh/ca".into()),
            ..Config::default()
        };
        let err = ca_alone.validate().unwrap_err();
        assert!(err.contains("--join-token or --join-tokens"), "{err}");
    }
}
