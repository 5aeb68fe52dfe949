//! DNS for destinations the registry does not know: an un-meshed service such as a Docker
//! DNS name or a Kubernetes Service. Answers are cached for their TTL.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

/// Re-resolve at least this often and at most this rarely, whatever the TTL says.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(300);
/// Retry after a failed lookup.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

/// Addresses of one name and when to ask again.
#[derive(Debug)]
pub struct Answer {
    pub addresses: Vec<IpAddr>,
    pub refresh_at: Instant,
}

#[derive(Debug, thiserror::Error)]
#[error("DNS lookup of {name} failed: {reason}")]
pub struct DnsError {
    pub name: String,
    pub reason: String,
    pub retry_at: Instant,
}

// === impl Dns ===

impl Dns {
    /// A resolver asking `server` (`--dns-server`), else configured from the system
    /// (`/etc/resolv.conf`); `/etc/hosts` is read either way.
    pub fn new(server: Option<SocketAddr>) -> Result<Self, String> {
        let mut builder = match server {
            Some(server) => {
                let connection = |mut c: ConnectionConfig| {
                    c.port = server.port();
                    c
                };
                let name_server = NameServerConfig::new(
                    server.ip(),
                    true,
                    vec![
                        connection(ConnectionConfig::udp()),
                        connection(ConnectionConfig::tcp()),
                    ],
                );
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![name_server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
        };
        // IPv4 when the name has any, so dual-stack names do not send half the traffic to
        // addresses the destination may not listen on.
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        let resolver = builder.build().map_err(|e| e.to_string())?;
        Ok(Dns { resolver })
    }

    pub async fn lookup(&self, name: &str) -> Result<Answer, DnsError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Answer {
                addresses: vec![ip],
                refresh_at: Instant::now() + MAX_TTL,
            });
        }
        match self.resolver.lookup_ip(name).await {
            Ok(lookup) => {
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now())
                    .clamp(MIN_TTL, MAX_TTL);
                Ok(Answer {
                    addresses: lookup.iter().collect(),
                    refresh_at: Instant::now() + ttl,
                })
            }
            Err(e) => Err(DnsError {
                name: name.to_owned(),
                reason: e.to_string(),
                retry_at: Instant::now() + RETRY,
            }),
        }
    }
}
