//! Command-line flags (each also read from an environment variable).
//!
//! The global flags may come before or after the command (`meshctl -o json services`,
//! `meshctl services -o json`), as operators type them either way.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mesh_registry_api::call::{MAX_TAP_RPS, TapFilter};
use mesh_registry_api::policy::PolicyKind;
use mesh_registry_api::{MAX_TTL, MAX_WEIGHT, MIN_TTL, Protocol, Status, validate};

use crate::output::Format;

/// The mesh's operators' CLI: health checks, services and instances, endpoints as
/// sidecars see them, and live golden metrics. Everything goes through the registry.
#[derive(Parser, Debug)]
// A flag given twice takes its last value, so an alias with `--registry` can be overridden.
#[command(name = "meshctl", version, args_override_self = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The registry's base URL (`http://host:port`), or the URLs of several registry
    /// replicas, comma-separated (`http://r1:7700,http://r2:7700`), tried in order: a
    /// replica that cannot be reached, does not answer in time or answers 503 hands the
    /// request to the next.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "MESH_REGISTRY",
        default_value = "http://127.0.0.1:7700"
    )]
    pub registry: String,

    /// Output format: aligned columns, or JSON for scripts.
    #[arg(short = 'o', long, global = true, env = "MESHCTL_OUTPUT", value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// Bearer token for registry writes (register, deregister): the registry's operator
    /// token (`--token`), or a service token (`--tokens`) for its services. Taps through
    /// the registry need the operator token where the registry has credentials.
    #[arg(
        long,
        global = true,
        env = "MESH_REGISTRY_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Dial sidecars' admin addresses directly instead of through the registry's relay
    /// (which needs only the registry reachable). Without it, meshctl falls back to
    /// dialling by itself when the registry has no relay.
    #[arg(long, global = true, env = "MESHCTL_DIRECT")]
    pub direct: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Checks the mesh's health, one line per check; exits 1 if any check fails.
    Check,
    /// Lists services with their instance counts.
    Services,
    /// Lists every instance of a service, whatever its status.
    Instances {
        /// The service.
        service: String,
    },
    /// Shows the endpoints of a service as sidecars see them (state, ejection, latency).
    Endpoints {
        /// The destination service.
        service: String,
        /// The sidecar to ask, as `service/instance-id` or an instance id; without it,
        /// every sidecar that follows SERVICE is asked.
        #[arg(long, env = "MESHCTL_VIA", value_name = "SIDECAR")]
        via: Option<String>,
    },
    /// Registers an instance (it holds a lease of --ttl: without heartbeats it turns
    /// critical when that runs out).
    Register(RegisterArgs),
    /// Removes an instance.
    Deregister {
        /// The instance's service.
        service: String,
        /// The instance's id.
        id: String,
    },
    /// Live golden metrics of the calls sidecars make, per destination service.
    Top(TopArgs),
    /// A destination's routes as each calling sidecar applies them (the policy index it
    /// read), and how its calls of the last 10 s split between the subsets.
    Routes {
        /// The destination service.
        service: String,
    },
    /// Traffic policy (routes, intentions, limits): apply from files, read, delete.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The calls sidecars see, live, one line each (`-o json`: the JSON lines), until
    /// interrupted: SERVICE's own instances' inbound calls, or with --via one sidecar's
    /// calls of SERVICE (its outbound calls to it too).
    Tap(TapArgs),
    /// Adds the sidecar to the pods of Kubernetes manifests that ask for it (annotation
    /// `mesh.dev/inject: enabled`, a namespace labelled `mesh.dev/injection: enabled`, or
    /// --all) and prints the manifests; the sidecar's settings come from the pods'
    /// `mesh.dev/*` annotations. Injecting twice is injecting once.
    Inject(InjectArgs),
    /// Serves the injection as a Kubernetes mutating admission webhook (HTTPS, POST
    /// /inject), until interrupted.
    InjectWebhook(WebhookArgs),
    /// Takes the sidecar, and what inject added with it, out of Kubernetes manifests.
    Uninject {
        /// Manifest files, directories (read recursively), or `-` for standard input.
        #[arg(required = true, value_name = "FILE")]
        inputs: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct InjectArgs {
    /// Manifest files, directories (read recursively), or `-` for standard input.
    #[arg(required = true, value_name = "FILE")]
    pub inputs: Vec<String>,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
    /// Mesh every pod that does not opt out with `mesh.dev/inject: disabled`.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct WebhookArgs {
    /// The address to serve HTTPS on.
    #[arg(long, env = "MESHCTL_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: std::net::SocketAddr,
    /// The serving certificate chain (PEM), issued for the webhook Service's DNS name.
    #[arg(long, env = "MESHCTL_WEBHOOK_CERT", value_name = "FILE")]
    pub cert: std::path::PathBuf,
    /// The serving certificate's private key (PEM).
    #[arg(long, env = "MESHCTL_WEBHOOK_KEY", value_name = "FILE")]
    pub key: std::path::PathBuf,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// What every injected sidecar gets unless its pod's annotations say otherwise.
#[derive(Args, Debug)]
pub struct SidecarArgs {
    /// `native`: an init container with `restartPolicy: Always` (Kubernetes 1.29+);
    /// `container`: a second container, for older clusters.
    #[arg(long, env = "MESHCTL_SIDECAR", value_enum, default_value = "native")]
    pub sidecar: crate::inject::Mode,
    /// The sidecar's image (annotation `mesh.dev/proxy-image` overrides it per pod).
    #[arg(long, env = "MESHCTL_PROXY_IMAGE", default_value = "mesh/proxy")]
    pub proxy_image: String,
    /// The registry's URL as sidecars reach it (annotation `mesh.dev/registry`
    /// overrides it per pod).
    #[arg(
        long,
        env = "MESHCTL_REGISTRY_URL",
        value_name = "URL",
        default_value = "https://registry.mesh.svc:7743"
    )]
    pub registry_url: String,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Writes the documents of a policy file (YAML or JSON; several documents, one per
    /// service, separated by `---`). Everything is checked first: a file with one
    /// mistake changes nothing. Documents equal to the registry's are not written.
    Apply {
        /// The file, or `-` for standard input.
        #[arg(short = 'f', long, env = "MESHCTL_FILE", value_name = "FILE")]
        file: String,
        /// Write nothing: print what would change, as a diff against the registry.
        #[arg(long, env = "MESHCTL_DIFF")]
        diff: bool,
    },
    /// Shows a service's policy documents (`-o json`: as `apply` takes them back).
    Get {
        /// The service.
        service: String,
    },
    /// Deletes one policy document of a service.
    Delete {
        /// The service.
        service: String,
        /// routes, intentions or limits.
        #[arg(value_parser = policy_kind)]
        kind: PolicyKind,
    },
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// The service (a DNS label).
    pub service: String,
    /// The instance's id, unique within the service.
    pub id: String,

    /// `host:port` peers dial: the instance's sidecar inbound listener.
    #[arg(long, env = "MESHCTL_ADDRESS", value_name = "HOST:PORT", value_parser = address)]
    pub address: String,

    /// How peers talk to it: http (HTTP/1.1), h2 (h2c) or grpc.
    #[arg(long, env = "MESHCTL_PROTOCOL", default_value = "http", value_parser = protocol)]
    pub protocol: Protocol,

    /// Its share of traffic, 1-1000.
    #[arg(long, env = "MESHCTL_WEIGHT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WEIGHT)))]
    pub weight: u32,

    /// Lease length, 1s-1h.
    #[arg(long, env = "MESHCTL_TTL", default_value = "10s", value_parser = ttl)]
    pub ttl: Duration,

    /// Status to register with: passing, warning or critical.
    #[arg(long, env = "MESHCTL_STATUS", default_value = "passing", value_parser = status)]
    pub status: Status,

    /// A tag (repeatable).
    #[arg(
        long = "tag",
        env = "MESHCTL_TAGS",
        value_delimiter = ',',
        value_name = "TAG"
    )]
    pub tags: Vec<String>,

    /// A metadata entry `KEY=VALUE` (repeatable).
    #[arg(long = "meta", env = "MESHCTL_META", value_delimiter = ',', value_name = "KEY=VALUE", value_parser = meta)]
    pub metadata: Vec<(String, String)>,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Only this destination service.
    pub service: Option<String>,

    /// Time between samples: each line is the rate over one interval.
    #[arg(long, env = "MESHCTL_INTERVAL", default_value = "2s", value_parser = interval)]
    pub interval: Duration,

    /// Print one sample (taken over one interval) and exit.
    #[arg(long, env = "MESHCTL_ONCE")]
    pub once: bool,
}

#[derive(Args, Debug)]
pub struct TapArgs {
    /// The service whose calls are shown.
    pub service: String,

    /// Only inbound calls (peers' calls to the app) or outbound ones (the app's calls to
    /// SERVICE, which needs --via: SERVICE's own sidecars are tapped otherwise).
    #[arg(long, env = "MESHCTL_DIRECTION", value_parser = ["inbound", "outbound"])]
    pub direction: Option<String>,

    /// Only requests whose path starts with this (it starts with /).
    #[arg(long, env = "MESHCTL_PATH_PREFIX", value_name = "PREFIX", value_parser = tap_filter("path_prefix"))]
    pub path_prefix: Option<String>,

    /// Only requests of this method (GET, POST, ...).
    #[arg(long, env = "MESHCTL_METHOD", value_parser = tap_filter("method"))]
    pub method: Option<String>,

    /// Only answers of this status (503) or class (5xx).
    #[arg(long, env = "MESHCTL_STATUS", value_parser = tap_filter("status"))]
    pub status: Option<String>,

    /// At most this many calls per second from each sidecar, 1-100 (the sidecar's most).
    #[arg(long, env = "MESHCTL_MAX_RPS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_TAP_RPS)))]
    pub max_rps: Option<u32>,

    /// Tap this sidecar only, as `service/instance-id` or an instance id, for its calls
    /// of SERVICE in both directions.
    #[arg(
        long,
        env = "MESHCTL_VIA",
        value_name = "SIDECAR",
        required_if_eq("direction", "outbound")
    )]
    pub via: Option<String>,
}

/// A value of the tap's filter, checked as the sidecar will check it.
fn tap_filter(
    param: &'static str,
) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync + 'static {
    move |value: &str| {
        let mut filter = TapFilter::default();
        let field = match param {
            "path_prefix" => &mut filter.path_prefix,
            "method" => &mut filter.method,
            _ => &mut filter.status,
        };
        *field = Some(value.to_owned());
        TapFilter::parse(&filter.to_query())
            .map(|_| value.to_owned())
            .map_err(|e| e.why)
    }
}

fn policy_kind(value: &str) -> Result<PolicyKind, String> {
    value.parse()
}

fn address(value: &str) -> Result<String, String> {
    validate::address(value).map(|()| value.to_owned())
}

fn protocol(value: &str) -> Result<Protocol, String> {
    value.parse()
}

fn status(value: &str) -> Result<Status, String> {
    match value {
        "passing" => Ok(Status::Passing),
        "warning" => Ok(Status::Warning),
        "critical" => Ok(Status::Critical),
        _ => Err("must be passing, warning or critical".into()),
    }
}

fn ttl(value: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        let (min, max) = (
            humantime::format_duration(MIN_TTL),
            humantime::format_duration(MAX_TTL),
        );
        return Err(format!("must be within {min}-{max}"));
    }
    Ok(ttl)
}

fn interval(value: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    // Shorter than this, a sample is mostly the time it takes to fetch the metrics.
    if interval < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(interval)
}

fn meta(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("must be KEY=VALUE".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = Cli::try_parse_from(["meshctl", "services", "-o", "json"]).unwrap();
        assert_eq!(cli.global.output, Format::Json);
        let cli = Cli::try_parse_from(["meshctl", "--output", "json", "--direct", "check"]);
        let cli = cli.unwrap();
        assert!(cli.global.direct);
        assert_eq!(cli.global.output, Format::Json);
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (
                &["register", "web", "a", "--address", "nope"][..],
                "--address",
            ),
            (
                &["register", "web", "a", "--address", "h:1", "--weight", "0"],
                "--weight",
            ),
            (
                &["register", "web", "a", "--address", "h:1", "--meta", "x"],
                "--meta",
            ),
            (&["top", "--interval", "1ms"], "--interval"),
            (&["tap", "web", "--status", "6xx"], "--status"),
            (&["tap", "web", "--path-prefix", "api"], "--path-prefix"),
            (&["tap", "web", "--method", "G T"], "--method"),
            (&["tap", "web", "--max-rps", "0"], "--max-rps"),
            (&["tap", "web", "--direction", "outbound"], "--via"),
        ] {
            let err = Cli::try_parse_from(std::iter::once("meshctl").chain(args.iter().copied()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn metadata_and_tags_repeat() {
        let cli = Cli::try_parse_from([
            "meshctl",
            "register",
            "web",
            "a",
            "--address",
            "h:1",
            "--tag",
            "v2",
            "--tag",
            "canary",
            "--meta",
            "zone=eu-1",
            "--meta",
            "url=a=b",
        ])
        .unwrap();
        let Command::Register(args) = cli.command else {
            panic!("not register")
        };
        assert_eq!(args.tags, ["v2", "canary"]);
        assert_eq!(args.metadata[1], ("url".to_owned(), "a=b".to_owned()));
    }
}
