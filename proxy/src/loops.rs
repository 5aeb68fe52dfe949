//! Requests that would come back to a proxy they already went through: a destination
//! that resolves to this sidecar's own listeners (`curl localhost:4140/` sends exactly
//! that as its `Host`), and a loop round several proxies (a registry entry pointing at
//! another sidecar's outbound listener). The first is spotted by address, before and at
//! connect time; the second by the `mesh-hops` count every outbound pass adds.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::{ErrorKind, ProxyError};

/// Outbound passes a request has made so far. Kept end to end (an app that is itself a
/// proxy forwards it), so a loop through proxies ends after [`MAX_HOPS`].
pub const MESH_HOPS: HeaderName = HeaderName::from_static("mesh-hops");

/// Outbound passes after which a request is taken to be going round in a loop.
pub const MAX_HOPS: u32 = 16;

/// The listeners of this sidecar that route requests again (outbound, upstream, admin):
/// a destination there is a loop. The inbound listener is not among them: an app that
/// calls its own service goes outbound → its own inbound → itself, which is no loop.
#[derive(Clone, Debug, Default)]
pub struct OwnListeners(Arc<[SocketAddr]>);

// === impl OwnListeners ===

impl OwnListeners {
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        OwnListeners(addrs.into())
    }

    /// True if a connection to `addr` would reach one of these listeners.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.0.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == addr.ip() || (own.ip().is_unspecified() && is_local(addr.ip())))
        })
    }

    /// The loop error for a destination at `addr`, if it is one of these listeners.
    pub fn check(&self, addr: SocketAddr) -> Result<(), ProxyError> {
        if self.contains(addr) {
            return Err(ProxyError::new(
                ErrorKind::Loop,
                format!(
                    "{addr} is this sidecar's own listener: the request would loop back into it \
                     (send the destination service's name as the Host)"
                ),
            ));
        }
        Ok(())
    }
}

/// An address of this host: loopback, or one a socket can be bound to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Counts one more outbound pass in `mesh-hops`; a request that has already made
/// [`MAX_HOPS`] is going round in a loop.
pub fn count_hop(headers: &mut HeaderMap) -> Result<(), ProxyError> {
    // The first pass (most requests) finds no count.
    let counted = crate::headers::holds(headers, &MESH_HOPS);
    let hops = match counted.then(|| headers.get(&MESH_HOPS)).flatten() {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                ProxyError::new(ErrorKind::BadRequest, "mesh-hops is not a number of hops")
            })?,
    };
    if hops >= MAX_HOPS {
        return Err(ProxyError::new(
            ErrorKind::Loop,
            format!(
                "the request has already passed {hops} mesh proxies: it is going round in a \
                 loop (is a registry entry pointing at a proxy's outbound listener?)"
            ),
        ));
    }
    let counted = match hops {
        0 => HeaderValue::from_static("1"),
        n => HeaderValue::from(n + 1),
    };
    headers.insert(MESH_HOPS, counted);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_listeners_match_exactly_or_through_a_wildcard_bind() {
        let own = OwnListeners::new(vec![
            "127.0.0.1:4140".parse().unwrap(),
            "0.0.0.0:4191".parse().unwrap(),
        ]);
        assert!(own.contains("127.0.0.1:4140".parse().unwrap()));
        assert!(!own.contains("127.0.0.2:4140".parse().unwrap()));
        assert!(!own.contains("127.0.0.1:4141".parse().unwrap()));
        assert!(own.contains("127.0.0.1:4191".parse().unwrap()));
        assert!(own.contains("127.0.0.9:4191".parse().unwrap()));
        // TEST-NET-3: never an address of this host.
        assert!(!own.contains("203.0.113.7:4191".parse().unwrap()));
        assert_eq!(
            own.check("127.0.0.1:4140".parse().unwrap())
                .unwrap_err()
                .kind,
            ErrorKind::Loop
        );
    }

    #[test]
    fn hops_are_counted_up_to_the_limit() {
        let mut h = HeaderMap::new();
        count_hop(&mut h).unwrap();
        assert_eq!(h[MESH_HOPS], "1");
        h.insert(MESH_HOPS, HeaderValue::from(MAX_HOPS - 1));
        count_hop(&mut h).unwrap();
        assert_eq!(count_hop(&mut h).unwrap_err().kind, ErrorKind::Loop);
        h.insert(MESH_HOPS, "many".parse().unwrap());
        assert_eq!(count_hop(&mut h).unwrap_err().kind, ErrorKind::BadRequest);
    }
}
