//! HTTP/1.1 Upgrade (RFC 9110 §7.8): WebSocket, and any other protocol a client asks to
//! switch to, through the mesh.
//!
//! An upgrade request is an HTTP/1.1 request with an `Upgrade` header that its
//! `Connection` header names. It is routed and balanced like any request, but its
//! `Upgrade` / `Connection` pair travels on (both are otherwise hop-by-hop), over a
//! connection of its own to the next hop (never a pooled one, which it would take over),
//! and it is never retried once sent. When the app answers `101 Switching Protocols`, the
//! caller gets the `101` and from then on the two connections are spliced byte for byte
//! ([`splice`](crate::splice)), with the listener's idle timeout, until either side
//! closes. A `101` to a request that asked for no upgrade is the next hop's error.
//!
//! `h2c` is not carried: a client offering to switch to HTTP/2 gets an HTTP/1.1 answer,
//! as it would from any server that declines (the mesh speaks HTTP/2 to the next hop
//! anyway when the caller does).

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::endpoint::InFlight;
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::ServiceMetrics;
use crate::server::Held;
use crate::splice;

/// The protocol an upgrade request asks for (its `Upgrade` header), if it is one.
pub fn requested<B>(request: &Request<B>) -> Option<&HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let upgrade = request.headers().get(header::UPGRADE)?;
    let h2c = upgrade.to_str().is_ok_and(|protocols| {
        protocols
            .split(',')
            .all(|p| p.trim().eq_ignore_ascii_case("h2c"))
    });
    let named = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    (named && !h2c).then_some(upgrade)
}

/// Puts the upgrade pair back on a message whose hop-by-hop headers were removed.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// An accepted upgrade request's side of the splice: the caller's connection once the
/// `101` has been written to it, and the listener's hold on that connection.
pub struct Accepted {
    on_upgrade: OnUpgrade,
    held: Option<Arc<Held>>,
}

impl Accepted {
    /// Takes the caller's connection out of an upgrade request, which the listener
    /// marked; `None` for any other request.
    pub fn take<B>(request: &mut Request<B>) -> Option<Accepted> {
        request.extensions().get::<OnUpgrade>()?;
        requested(request)?;
        let held = request.extensions_mut().remove::<Arc<Held>>();
        Some(Accepted {
            on_upgrade: hyper::upgrade::on(request),
            held,
        })
    }

    /// Given the next hop's answer: a `101` starts the splice between the caller and the
    /// next hop in a task of its own, which keeps `in_flight` (the endpoint counts busy
    /// until it ends) and is counted in `metrics`' spliced series. Any other answer
    /// passes as it is, and `in_flight` comes back to follow it.
    pub fn answered<B>(
        self,
        response: &mut Response<B>,
        in_flight: Option<InFlight>,
        metrics: &Arc<ServiceMetrics>,
    ) -> Option<InFlight> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return in_flight;
        }
        let counted = metrics.spliced();
        let in_flight = in_flight.map(InFlight::spliced);
        let next_hop = hyper::upgrade::on(response);
        let Accepted { on_upgrade, held } = self;
        let idle = held.as_ref().and_then(|held| held.idle);
        tokio::spawn(async move {
            let (caller, next_hop) = match tokio::try_join!(on_upgrade, next_hop) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade not completed");
                    return;
                }
            };
            let drained = async {
                match &held {
                    Some(held) => held.drained().await,
                    None => std::future::pending().await,
                }
            };
            let (caller, next_hop) = (TokioIo::new(caller), TokioIo::new(next_hop));
            let spliced = splice::splice(caller, next_hop, idle, drained).await;
            tracing::debug!(?spliced, "upgraded connection closed");
            drop(in_flight);
            counted.closed(&spliced);
        });
        None
    }
}

/// The error for a `101` the caller did not ask for: the next hop's fault, and the
/// connection it came on is unusable.
pub fn unasked(address: &str) -> ProxyError {
    ProxyError::new(
        ErrorKind::UpstreamFailed,
        format!(
            "{address} answered 101 Switching Protocols to a request that asked for no upgrade"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut request = Request::get("/chat").version(version);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    #[test]
    fn an_upgrade_is_an_http11_upgrade_header_that_connection_names() {
        let websocket = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        assert_eq!(
            requested(&request(Version::HTTP_11, &websocket)).unwrap(),
            "websocket"
        );
        assert!(requested(&request(Version::HTTP_10, &websocket)).is_none());
        assert!(requested(&request(Version::HTTP_11, &[("upgrade", "websocket")])).is_none());
        let h2c = [
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ];
        assert!(requested(&request(Version::HTTP_11, &h2c)).is_none());
    }
}
