//! The sidecar's listeners: where they listen (flags), their limits, and binding them
//! before [`run`](crate::run), so tests can bind `127.0.0.1:0` instead.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::flags::Invalid;
use crate::loops::OwnListeners;
use crate::server::{Limits, MAX_HEADER_BYTES};

/// Where each listener listens, and the limits they all apply.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Listeners")]
pub struct Listen {
    /// Listener for peers' calls to the local app.
    #[arg(long, env = "MESH_INBOUND", default_value = "0.0.0.0:4143")]
    pub inbound: SocketAddr,

    /// Listener for the app's calls, routed by `Host` / `:authority`.
    #[arg(long, env = "MESH_OUTBOUND", default_value = "127.0.0.1:4140")]
    pub outbound: SocketAddr,

    /// A listener dedicated to one service: `NAME=ADDR`, e.g.
    /// `recommendations=127.0.0.1:50051`. Repeatable; the env var takes a comma list.
    #[arg(
        long = "upstream",
        value_name = "NAME=ADDR",
        env = "MESH_UPSTREAMS",
        value_delimiter = ','
    )]
    pub upstreams: Vec<Upstream>,

    /// Admin listener: /metrics, /ready, /live, /debug/endpoints, /shutdown.
    #[arg(long, env = "MESH_ADMIN", default_value = "0.0.0.0:4191")]
    pub admin: SocketAddr,

    /// Connections served at once per listener.
    #[arg(long, env = "MESH_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// A client must send its request head within this time once it has begun it, a new
    /// connection its first byte, and an HTTP/2 connection open its first stream
    /// (slowloris protection); open streams are never timed out by the proxy.
    #[arg(long, env = "MESH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// An HTTP/1.1 connection kept alive this long without a new request, or an HTTP/2
    /// one without an open stream, is closed (0: never). Longer than callers' connection
    /// pools keep theirs idle, so they close first.
    #[arg(id = "connection_idle_timeout", long = "idle-timeout",
        value_name = "IDLE_TIMEOUT", env = "MESH_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// What serves HTTP/1.1 on the outbound and upstream listeners and sends plaintext
    /// HTTP/1.1 requests without a body on: `own`, the proxy's own engine (parsed in
    /// place, in the request's task, no buffer held between requests), or `hyper`.
    /// Either way HTTP/2, upgrades, CONNECT, `Expect: 100-continue` and mTLS are hyper's.
    #[arg(long, env = "MESH_H1_ENGINE", value_enum, default_value = "own")]
    pub h1_engine: H1Engine,

    /// How long shutdown waits for in-flight requests after deregistering.
    #[arg(long, env = "MESH_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

/// What serves HTTP/1.1 on the app's side (`--h1-engine`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum H1Engine {
    #[default]
    Own,
    Hyper,
}

/// One `--upstream NAME=ADDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub service: String,
    /// Port for DNS answers when `NAME` is `host:port` (un-meshed destinations).
    pub port: Option<u16>,
    pub listen: SocketAddr,
}

/// The sidecar's listeners, bound before [`run`](crate::run).
pub struct Listeners {
    /// Present with `--service`.
    pub inbound: Option<TcpListener>,
    pub outbound: TcpListener,
    pub upstreams: Vec<(Upstream, TcpListener)>,
    pub admin: TcpListener,
}

/// A listener that could not be bound, with the flag that chose its address. The message
/// carries the cause, so it is no `source` too (a printed chain would say it twice).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({flag}): {cause}")]
pub struct BindError {
    pub flag: &'static str,
    pub addr: SocketAddr,
    pub cause: std::io::Error,
}

// === impl Listen ===

impl Listen {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_connections == 0 {
            return Err(Invalid::new("--max-connections", "must be at least 1"));
        }
        if self.header_read_timeout < Duration::from_millis(1) {
            return Err(Invalid::new(
                "--header-read-timeout",
                "must be at least 1ms",
            ));
        }
        Ok(())
    }

    /// The limits every listener applies.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_header_bytes: MAX_HEADER_BYTES,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: Some(self.idle_timeout).filter(|t| !t.is_zero()),
        }
    }
}

// === impl Upstream ===

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

// === impl Listeners ===

impl Listeners {
    /// Binds every listener `listen` names (the inbound one only for a sidecar with a
    /// local service); an address in use is reported with the flag that chose it.
    pub async fn bind(listen: &Listen, local_service: bool) -> Result<Self, BindError> {
        async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
            TcpListener::bind(addr)
                .await
                .map_err(|cause| BindError { flag, addr, cause })
        }
        let inbound = match local_service {
            true => Some(bind("--inbound", listen.inbound).await?),
            false => None,
        };
        let mut upstreams = Vec::new();
        for upstream in &listen.upstreams {
            upstreams.push((upstream.clone(), bind("--upstream", upstream.listen).await?));
        }
        Ok(Listeners {
            inbound,
            outbound: bind("--outbound", listen.outbound).await?,
            upstreams,
            admin: bind("--admin", listen.admin).await?,
        })
    }

    /// The listeners that route requests again: a destination there would loop.
    pub fn own(&self) -> OwnListeners {
        OwnListeners::new(
            std::iter::once(&self.outbound)
                .chain(self.upstreams.iter().map(|(_, l)| l))
                .chain(std::iter::once(&self.admin))
                .filter_map(|l| l.local_addr().ok())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse_with_an_optional_port() {
        let plain: Upstream = "recommendations=127.0.0.1:50051".parse().unwrap();
        assert_eq!(plain.service, "recommendations");
        assert_eq!(plain.port, None);
        let dns: Upstream = "api.example.com:8080=127.0.0.1:9000".parse().unwrap();
        assert_eq!(dns.port, Some(8080));
        assert!("recommendations".parse::<Upstream>().is_err());
        assert!("r=nowhere".parse::<Upstream>().is_err());
    }
}
