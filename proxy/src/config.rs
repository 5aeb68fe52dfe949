//! Command-line flags (each also read from an environment variable), grouped by concern:
//! each group is the settings of the part of the proxy it configures, declared beside
//! that part and flattened in here. Checked once at start-up by [`Config::validate`],
//! whose error names the flag.
//!
//! `Config::default()` is what a command line without flags (and without `MESH_*`
//! variables) gives: tests start from it and change fields.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser};

use crate::breaker::EjectionConfig;
use crate::discover::DiscoveryConfig;
pub use crate::flags::{Invalid, defaults};
use crate::listeners::Listen;
use crate::observe::ObserveConfig;
use crate::outbound::OutboundConfig;
use crate::register::RegistrationConfig;
use crate::retry::RetryConfig;
use crate::tls::{IdentitySlot, TlsConfig, TlsMode};

/// The mesh's sidecar: routes the app's outbound calls to discovered instances, forwards
/// peers' calls to the app, registers the app in the registry, and exports metrics.
#[derive(Parser, Debug, Clone)]
#[command(name = "mesh-proxy", version)]
pub struct Config {
    #[command(flatten)]
    pub registration: RegistrationConfig,

    #[command(flatten)]
    pub registry: RegistryConfig,

    #[command(flatten)]
    pub listen: Listen,

    #[command(flatten)]
    pub discovery: DiscoveryConfig,

    #[command(flatten)]
    pub outbound: OutboundConfig,

    #[command(flatten)]
    pub retry: RetryConfig,

    #[command(flatten)]
    pub ejection: EjectionConfig,

    #[command(flatten)]
    pub tls: TlsConfig,

    #[command(flatten)]
    pub observe: ObserveConfig,

    /// Deadline for opening a connection to a peer or the app.
    #[arg(long, env = "MESH_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration, help_heading = "Runtime")]
    pub connect_timeout: Duration,

    /// Threads serving requests. 1 runs everything on one thread with no cross-thread
    /// wake-ups, the cheapest per request; by default one per CPU (or
    /// `TOKIO_WORKER_THREADS`).
    #[arg(long, env = "MESH_THREADS", value_parser = clap::value_parser!(u16).range(1..), help_heading = "Runtime")]
    pub threads: Option<u16>,
}

/// Where the registry is, and the token for writing to it.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Registry")]
pub struct RegistryConfig {
    /// Registry base URL, or the URLs of several registry replicas, comma-separated
    /// (`http://r1:7700,http://r2:7700`): requests go to one and fail over to the next
    /// when it cannot be reached, does not answer in time, or answers 503.
    #[arg(
        long = "registry",
        value_name = "REGISTRY",
        env = "MESH_REGISTRY",
        default_value = "http://127.0.0.1:7700"
    )]
    pub url: String,

    /// Bearer token for registry writes: a service token scoped to this sidecar's
    /// service (the registry's `--tokens`), on a registry without a CA.
    #[arg(
        long = "registry-token",
        value_name = "REGISTRY_TOKEN",
        env = "MESH_REGISTRY_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// The mesh CA's certificate (PEM), for `https://` registry URLs (the registry's
    /// `--tls-listen`): the registry must present a certificate from it naming the
    /// registry. With `--tls`, this sidecar then writes its instances with its own
    /// certificate.
    #[arg(
        long = "registry-ca",
        value_name = "REGISTRY_CA",
        env = "MESH_REGISTRY_CA"
    )]
    pub ca: Option<std::path::PathBuf>,
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        defaults()
    }
}

impl Config {
    /// Checks what clap cannot, group by group, then what spans groups.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.registration.validate()?;
        self.registry.client(None, &self.tls.trust_domain)?;
        self.listen.validate()?;
        self.discovery.validate()?;
        self.outbound.validate()?;
        self.retry.validate()?;
        self.ejection.validate()?;
        self.tls.validate()?;
        self.observe.validate()?;
        let service = self.registration.service.as_ref();
        if self.tls.mode != TlsMode::Off && service.is_none() {
            return Err(Invalid::new(
                "--tls",
                "needs --service: the certificate names the local service",
            ));
        }
        if service.is_some() && self.registration.app == Some(self.listen.inbound) {
            return Err(Invalid::new(
                "--app",
                format!(
                    "{} is this sidecar's own --inbound: peers' calls would loop back into it",
                    self.listen.inbound
                ),
            ));
        }
        Ok(())
    }
}

// === impl RegistryConfig ===

impl RegistryConfig {
    /// A client for the registry, with the write token when there is one, and TLS to
    /// `https://` registries checked against `--registry-ca`, presenting `identity`'s
    /// certificate once there is one.
    pub fn client(
        &self,
        identity: Option<&Arc<IdentitySlot>>,
        trust_domain: &str,
    ) -> Result<mesh_registry_api::Client, Invalid> {
        let mut client = mesh_registry_api::Client::new(&self.url)
            .map_err(|e| Invalid::new("--registry", e.to_string()))?;
        let https = self
            .url
            .split(',')
            .any(|url| url.trim().starts_with("https://"));
        match (&self.ca, https) {
            (Some(ca), true) => {
                let config = crate::tls::registry_client_config(ca, trust_domain, identity)
                    .map_err(|e| Invalid::new("--registry-ca", e))?;
                client = client.with_tls(config);
            }
            (None, true) => {
                return Err(Invalid::new(
                    "--registry-ca",
                    "needed for an https:// --registry: the mesh CA's certificate, to check \
                     the registry's",
                ));
            }
            (Some(_), false) => {
                return Err(Invalid::new(
                    "--registry-ca",
                    "only used with https:// --registry URLs (the registry's --tls-listen)",
                ));
            }
            (None, false) => {}
        }
        Ok(match &self.token {
            Some(token) => client.with_token(token.clone()),
            None => client,
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

    fn refused(args: &[&str]) -> &'static str {
        parse(args).validate().unwrap_err().flag
    }

    #[test]
    fn validation_names_the_flag() {
        assert_eq!(refused(&["--service", "Bad"]), "--service");
        assert_eq!(refused(&["--service", "web"]), "--app");
        assert_eq!(refused(&["--weight", "0"]), "--weight");
        assert_eq!(refused(&["--registry", "ftp://r"]), "--registry");
        // https needs the CA to check the registry with, and only https uses one.
        assert_eq!(refused(&["--registry", "https://r:7743"]), "--registry-ca");
        assert_eq!(
            refused(&["--registry", "http://r:7700", "--registry-ca", "/ca.pem"]),
            "--registry-ca"
        );
        assert_eq!(
            refused(&[
                "--registry",
                "https://r:7743",
                "--registry-ca",
                "/missing/ca.pem"
            ]),
            "--registry-ca"
        );
        assert_eq!(
            refused(&["--eject-max-percent", "101"]),
            "--eject-max-percent"
        );
        assert_eq!(refused(&["--retry-attempts", "0"]), "--retry-attempts");
        assert_eq!(
            refused(&["--tls", "strict", "--join-token", "t"]),
            "--tls",
            "a certificate names a service"
        );
        let error = parse(&["--weight", "0"]).validate().unwrap_err();
        assert_eq!(error.to_string(), "--weight: must be within 1-1000");
        assert!(
            parse(&["--service", "web", "--app", "127.0.0.1:1"])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn unsafe_values_are_refused_before_anything_starts() {
        assert_eq!(refused(&["--timeout", "100000d"]), "--timeout");
        assert_eq!(
            refused(&["--per-try-timeout", "1000000000000s"]),
            "--per-try-timeout"
        );
        assert_eq!(refused(&["--max-destinations", "0"]), "--max-destinations");
        assert_eq!(
            refused(&[
                "--service",
                "web",
                "--app",
                "127.0.0.1:4143",
                "--inbound",
                "127.0.0.1:4143"
            ]),
            "--app"
        );
        assert_eq!(refused(&["--registry", "http://r:7700/v1"]), "--registry");
        let defaults = parse(&[]);
        assert_eq!(defaults.discovery.idle_timeout, Duration::from_secs(10));
        assert_eq!(defaults.discovery.max_destinations, 1000);
        assert_eq!(
            refused(&["--header-read-timeout", "0s"]),
            "--header-read-timeout"
        );
        // Idle kept-alive connections last an hour by default; 0 keeps them.
        assert_eq!(
            defaults.listen.limits().idle_timeout,
            Some(Duration::from_secs(3600))
        );
        let never = parse(&["--idle-timeout", "0"]).listen.limits().idle_timeout;
        assert_eq!(never, None);
    }

    #[test]
    fn upstreams_repeat_or_come_as_a_list() {
        let c = parse(&[
            "--upstream",
            "recommendations=127.0.0.1:50051",
            "--upstream",
            "api.example.com:8080=127.0.0.1:9000",
        ]);
        assert_eq!(c.listen.upstreams[0].service, "recommendations");
        assert_eq!(c.listen.upstreams[1].port, Some(8080));
    }

    /// `--help` shows in each value's place the flag's own name, or a form to type
    /// (`NAME=ADDR`), never the id of the field behind it (`<connection_idle_timeout>`).
    #[test]
    fn help_names_each_value_after_its_flag() {
        use clap::CommandFactory;
        for arg in Config::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if !arg.get_action().takes_values() {
                continue;
            }
            let name = match arg.get_value_names() {
                Some([name]) => name.to_string(),
                Some(names) => panic!("--{long} takes {} values", names.len()),
                None => arg.get_id().to_string(),
            };
            let form = !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            assert!(
                form || name == long.to_uppercase().replace('-', "_"),
                "--{long} <{name}>"
            );
        }
    }

    #[test]
    fn the_default_is_the_command_line_without_flags() {
        let (default, parsed) = (Config::default(), parse(&[]));
        assert_eq!(format!("{default:?}"), format!("{parsed:?}"));
        assert_eq!(default.retry.attempts, 3);
        assert_eq!(default.ejection.after, 5);
        assert_eq!(default.listen.outbound.to_string(), "127.0.0.1:4140");
        assert!(default.validate().is_ok());
    }
}
