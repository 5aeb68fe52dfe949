//! The host an app sees is the one its caller named (`Host` in HTTP/1.1, `:authority` in
//! HTTP/2), whichever HTTP version the caller spoke and whichever the app speaks: the
//! proxies dial endpoint and app addresses, but never put those addresses in the request.
//! In plaintext and with mTLS between the sidecars.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{H2Conn, JOIN_TOKEN, Registry, Sidecar, SidecarSpec};
use http::{Request, Response, StatusCode, Version, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_proxy::inbound::AppProtocol;
use mesh_proxy::tls::TlsMode;

/// An app that answers every request with the host it was sent to, as it sees it:
/// `h1 <Host>` or `h2 <:authority>` (then ` host <Host>` if an HTTP/2 request carries a
/// `Host` header too).
async fn host_app() -> SocketAddr {
    let listener = common::listener().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|request: Request<Incoming>| async move {
                let host = request
                    .headers()
                    .get(header::HOST)
                    .map(|h| h.to_str().unwrap().to_owned());
                let seen = if request.version() == Version::HTTP_2 {
                    let authority = request.uri().authority().map(|a| a.to_string());
                    let mut seen = format!("h2 {}", authority.unwrap_or_default());
                    if let Some(host) = host {
                        seen.push_str(&format!(" host {host}"));
                    }
                    seen
                } else {
                    format!("h1 {}", host.unwrap_or_default())
                };
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen))))
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A sidecar for `service` in front of `app`; with `tls`, strict mTLS.
async fn sidecar(
    registry: &Registry,
    service: &str,
    app: SocketAddr,
    protocol: Option<AppProtocol>,
    tls: bool,
) -> Sidecar {
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, service, app);
    spec.app = Some((service, app, protocol));
    if tls {
        spec.config.tls.mode = TlsMode::Strict;
        spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
    }
    Sidecar::start(spec).await
}

/// An HTTP/1.1 and an HTTP/2 caller call `web`, served by an HTTP/1.1 app (its sidecar
/// forced to HTTP/1.1), and `api`, served by an HTTP/2 one, through their sidecar.
async fn both_callers_name_the_service(registry: Registry, tls: bool) {
    let caller_app = host_app().await;
    let caller = sidecar(&registry, "marketplace", caller_app, None, tls).await;
    let (web_app, api_app) = (host_app().await, host_app().await);
    let _web = sidecar(&registry, "web", web_app, Some(AppProtocol::Http), tls).await;
    let _api = sidecar(&registry, "api", api_app, Some(AppProtocol::H2), tls).await;
    registry.until_passing("web", 1).await;
    registry.until_passing("api", 1).await;

    let h2 = H2Conn::connect(caller.outbound).await;
    for (service, expected) in [("web", "h1 web"), ("api", "h2 api")] {
        let answer = common::get_h1(caller.outbound, service, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.text, expected, "an HTTP/1.1 caller of {service}");

        let answer = h2.get(service, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.text, expected, "an HTTP/2 caller of {service}");
    }
}

#[tokio::test]
async fn the_app_sees_the_callers_host_in_plaintext() {
    both_callers_name_the_service(Registry::start().await, false).await;
}

#[tokio::test]
async fn the_app_sees_the_callers_host_over_mtls() {
    let registry = Registry::start_with_ca(Duration::from_secs(86_400)).await;
    both_callers_name_the_service(registry, true).await;
}
