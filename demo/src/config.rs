//! Flags of `mesh-demo` (bring the mesh up) and `mesh-demo traffic`, each also read from an
//! environment variable. Every value is checked while parsing, so a bad one is refused
//! before anything starts, with a message naming the flag.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use crate::ports::PortLayout;

/// How to bring the mesh up. The port layout is documented on [`PortLayout`].
#[derive(Clone, Debug, clap::Args)]
pub struct UpConfig {
    /// Directory holding mesh-registry, mesh-proxy, recommendations and marketplace.
    /// Without it they are built with cargo (when run by `cargo run`) and taken from the
    /// directory of this executable.
    #[arg(long, env = "MESH_DEMO_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Port of the registry's HTTP API.
    #[arg(long, env = "MESH_DEMO_REGISTRY_PORT", default_value_t = 7700, value_parser = port)]
    pub registry_port: u16,

    /// Port of the registry's TLS listener, where sidecars write their instances with
    /// their certificates (with `--tls` on).
    #[arg(long, env = "MESH_DEMO_REGISTRY_TLS_PORT", default_value_t = 7743, value_parser = port)]
    pub registry_tls_port: u16,

    /// Port of the marketplace web page.
    #[arg(long, env = "MESH_DEMO_MARKETPLACE_PORT", default_value_t = 5000, value_parser = port)]
    pub marketplace_port: u16,

    /// Port the marketplace dials for recommendations (as `localhost`): its sidecar's
    /// upstream listener, which balances over the registered instances. (The tutorial's
    /// 50051 lies in Linux's ephemeral range, where other programs' outgoing connections
    /// may hold it.)
    #[arg(long, env = "MESH_DEMO_RECOMMENDATIONS_PORT", default_value_t = 5051, value_parser = port)]
    pub recommendations_port: u16,

    /// Port of the first recommendations app; instance N listens on this + N - 1.
    #[arg(long, env = "MESH_DEMO_APP_PORT", default_value_t = 5052, value_parser = port)]
    pub app_port: u16,

    /// First sidecar port. Sidecar K (0 for the marketplace's, N for recommendations-N)
    /// takes base + 10K (inbound), + 1 (outbound) and + 2 (admin: /metrics, /ready).
    #[arg(long, env = "MESH_DEMO_BASE_PORT", default_value_t = 4140, value_parser = port)]
    pub base_port: u16,

    /// How many recommendations instances to run, from 1 to 9.
    #[arg(
        long,
        env = "MESH_DEMO_INSTANCES",
        default_value_t = 3,
        value_parser = clap::value_parser!(u8).range(1..=9)
    )]
    pub instances: u8,

    /// How many recommendations instances (the last ones) run as version 2: their sidecars
    /// register metadata `version=v2`, the others `version=v1`, so traffic policy can split
    /// calls between the versions (docs/traffic.md). From 0 to `--instances`.
    #[arg(long, env = "MESH_DEMO_V2", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub v2: u8,

    /// Latency version 2 adds to every answer (`200ms`, or a range `50ms..300ms`), so a
    /// canary's cost shows in `meshctl top`.
    #[arg(long, env = "MESH_DEMO_V2_LATENCY", default_value = "0ms")]
    pub v2_latency: String,

    /// Share of recommendations calls each instance fails on purpose (UNAVAILABLE), from
    /// 0.0 to 1.0: a way to watch retries without killing anything.
    #[arg(long, env = "MESH_DEMO_FAIL_RATE", default_value_t = 0.0, value_parser = share)]
    pub fail_rate: f64,

    /// How long the whole mesh may take to come up (every process ready, every instance
    /// registered, the page served) before the launcher gives up and stops it.
    #[arg(long, env = "MESH_DEMO_READY_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub ready_timeout: Duration,

    /// mTLS between the sidecars: `strict` (the default: every call encrypted and
    /// authenticated, recommendations only accepts the marketplace), `permissive` or
    /// `off`. The registry acts as the CA, with a CA made for this run.
    #[arg(long, env = "MESH_DEMO_TLS", default_value = "strict", value_parser = ["off", "permissive", "strict"])]
    pub tls: String,

    /// How long each process may take to exit after SIGTERM before it gets SIGKILL.
    #[arg(long, env = "MESH_DEMO_STOP_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub stop_timeout: Duration,

    /// OTLP/HTTP endpoint every sidecar sends its spans to, e.g.
    /// `http://127.0.0.1:4318/v1/traces`. Unset: no spans.
    #[arg(long, env = "MESH_DEMO_TRACE_COLLECTOR", value_parser = collector_url)]
    pub trace_collector: Option<String>,

    /// Share of page views traced, from 0.0 to 1.0; a page request that carries a sampled
    /// `traceparent` is traced anyway. Needs `--trace-collector`; 1.0 when it is set alone,
    /// so every view of the demo's page shows up.
    #[arg(long, env = "MESH_DEMO_TRACE_SAMPLE_RATIO", value_parser = share)]
    pub trace_sample_ratio: Option<f64>,

    /// Directory the sidecars write their access logs to (one JSON line per call, a file
    /// per sidecar), created if missing and kept after the run. Unset: a private temporary
    /// directory, removed when the demo stops.
    #[arg(long, env = "MESH_DEMO_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
}

// === impl UpConfig ===

impl UpConfig {
    /// Whether recommendations instance `n` (from 1) runs as version 2.
    pub fn is_v2(&self, n: u8) -> bool {
        n > self.instances.saturating_sub(self.v2)
    }

    /// Flags that make no sense together, named.
    pub fn check(&self) -> Result<(), String> {
        if self.v2 > self.instances {
            return Err(format!(
                "--v2 {}: more version 2 instances than --instances {}",
                self.v2, self.instances
            ));
        }
        if let (Some(ratio), None) = (self.trace_sample_ratio, &self.trace_collector) {
            return Err(format!(
                "--trace-sample-ratio {ratio}: needs --trace-collector, where the spans go"
            ));
        }
        Ok(())
    }

    /// The collector and the share of traces every sidecar records, when tracing is on.
    pub fn tracing(&self) -> Option<(&str, f64)> {
        let collector = self.trace_collector.as_deref()?;
        Some((collector, self.trace_sample_ratio.unwrap_or(1.0)))
    }

    /// Every port the demo uses, derived from the port flags.
    pub fn ports(&self) -> PortLayout {
        PortLayout {
            registry: self.registry_port,
            registry_tls: (self.tls != "off").then_some(self.registry_tls_port),
            marketplace: self.marketplace_port,
            recommendations: self.recommendations_port,
            app_base: self.app_port,
            sidecar_base: self.base_port,
            instances: self.instances,
        }
    }
}

/// How `mesh-demo traffic` loads the page.
#[derive(Clone, Debug, clap::Args)]
pub struct TrafficConfig {
    /// Page to request; only loopback addresses (127.0.0.0/8, ::1, localhost).
    #[arg(long, env = "MESH_DEMO_TRAFFIC_URL", default_value = "http://127.0.0.1:5000/", value_parser = loopback_url)]
    pub url: http::Uri,

    /// Requests per second, from 1 to 1000.
    #[arg(
        long,
        env = "MESH_DEMO_TRAFFIC_RATE",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub rate: u32,

    /// How long to send for (at most 1h); the generator stops by itself after it.
    #[arg(long, env = "MESH_DEMO_TRAFFIC_DURATION", default_value = "60s", value_parser = bounded_duration)]
    pub duration: Duration,

    /// How long one request may take before it counts as failed.
    #[arg(long, env = "MESH_DEMO_TRAFFIC_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub timeout: Duration,
}

/// A port to listen on: 0 would let the system pick one nobody else knows.
fn port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("expected a port from 1 to 65535, got {text:?}")),
        Ok(port) => Ok(port),
    }
}

fn share(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("expected a number from 0.0 to 1.0, got {text:?}")),
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err("expected a duration above zero".to_owned()),
        Err(error) => Err(format!(
            "expected a duration like `30s`, got {text:?}: {error}"
        )),
    }
}

/// The traffic generator's run time: above zero and at most an hour, so a forgotten
/// terminal does not load the machine forever.
fn bounded_duration(text: &str) -> Result<Duration, String> {
    let duration = positive_duration(text)?;
    if duration > Duration::from_secs(3600) {
        return Err(format!("expected at most 1h, got {text:?}"));
    }
    Ok(duration)
}

/// An OTLP/HTTP collector: an `http://` URL with a host (the sidecars speak no TLS to it).
fn collector_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let uri: http::Uri = text
        .parse()
        .map_err(|error| format!("not a URL: {text:?}: {error}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
            "expected an http:// URL such as http://127.0.0.1:4318/v1/traces, got {text:?}"
        ));
    }
    Ok(text.to_owned())
}

/// An `http://` URL whose host is a loopback address: the generator must never load
/// another machine.
pub fn loopback_url(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .trim()
        .parse()
        .map_err(|error| format!("not a URL: {text:?}: {error}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("expected an http:// URL, got {text:?}"));
    }
    let host = uri.host().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(format!(
            "only loopback hosts (127.0.0.0/8, [::1], localhost) may be loaded, got {host:?}"
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Up {
        #[command(flatten)]
        config: UpConfig,
    }

    #[derive(Debug, Parser)]
    struct Traffic {
        #[command(flatten)]
        config: TrafficConfig,
    }

    #[test]
    fn defaults_are_the_documented_ports() {
        let up = Up::try_parse_from(["mesh-demo"]).unwrap().config;
        assert_eq!(up.registry_port, 7700);
        assert_eq!(up.registry_tls_port, 7743);
        assert_eq!(up.marketplace_port, 5000);
        assert_eq!(up.recommendations_port, 5051);
        assert_eq!(up.app_port, 5052);
        assert_eq!(up.base_port, 4140);
        assert_eq!(up.instances, 3);
        assert_eq!(up.fail_rate, 0.0);
    }

    /// Linux hands out 32768–60999 for outgoing connections: a default port in there can be
    /// held by any other program's connection on a busy machine.
    #[test]
    fn default_ports_stay_below_the_ephemeral_range() {
        let most = Up::try_parse_from(["mesh-demo", "--instances", "9"])
            .unwrap()
            .config;
        let uses = most.ports().uses().unwrap();
        assert_eq!(uses.len(), 4 + 9 + 10 * 3);
        for used in uses {
            assert!(used.port < 32768, "{} on {}", used.what, used.port);
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_name() {
        for (flag, value) in [
            ("--registry-port", "0"),
            ("--marketplace-port", "70000"),
            ("--instances", "0"),
            ("--instances", "10"),
            ("--fail-rate", "1.5"),
            ("--ready-timeout", "0s"),
            ("--stop-timeout", "soon"),
            ("--trace-sample-ratio", "2"),
            ("--trace-collector", "https://collector:4318/v1/traces"),
            ("--trace-collector", "collector:4318"),
        ] {
            let error = Up::try_parse_from(["mesh-demo", flag, value]).unwrap_err();
            assert!(error.to_string().contains(flag), "{flag}: {error}");
        }
        for (flag, value) in [
            ("--rate", "0"),
            ("--rate", "5000"),
            ("--duration", "2h"),
            ("--url", "http://example.com/"),
        ] {
            let error = Traffic::try_parse_from(["traffic", flag, value]).unwrap_err();
            assert!(error.to_string().contains(flag), "{flag}: {error}");
        }
    }

    #[test]
    fn tracing_needs_a_collector_and_traces_every_view_by_default() {
        let parse = |flags: &[&str]| {
            let argv = ["mesh-demo"].iter().chain(flags);
            Up::try_parse_from(argv).unwrap().config
        };
        assert_eq!(parse(&[]).tracing(), None);
        let collector = "http://127.0.0.1:4318/v1/traces";
        assert_eq!(
            parse(&["--trace-collector", collector]).tracing(),
            Some((collector, 1.0))
        );
        let some = parse(&[
            "--trace-collector",
            collector,
            "--trace-sample-ratio",
            "0.1",
        ]);
        assert_eq!(some.tracing(), Some((collector, 0.1)));
        let error = parse(&["--trace-sample-ratio", "0.5"]).check().unwrap_err();
        assert!(error.contains("needs --trace-collector"), "{error}");
    }

    #[test]
    fn only_loopback_urls_are_loaded() {
        for good in [
            "http://127.0.0.1:5000/",
            "http://127.9.9.9/",
            "http://localhost:5000/",
            "http://LOCALHOST/",
            "http://[::1]:5000/",
        ] {
            assert!(loopback_url(good).is_ok(), "{good} was refused");
        }
        for bad in [
            "http://10.0.0.1/",
            "http://192.168.1.1:5000/",
            "http://example.com/",
            "http://localhost.example.com/",
            "https://127.0.0.1/",
            "127.0.0.1:5000",
            "http://[::2]/",
        ] {
            assert!(loopback_url(bad).is_err(), "{bad} was accepted");
        }
    }
}
