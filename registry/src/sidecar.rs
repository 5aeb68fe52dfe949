//! Reading a sidecar's admin pages on the dashboard's behalf
//! (`GET /v1/services/{service}/instances/{id}/admin/{page}`).
//!
//! Browsers cannot reach sidecars' admin ports; the registry usually can, and it knows
//! where they are (instance metadata `admin`). It is deliberately no proxy: three fixed
//! pages, GET only, only to the address the instance registered, one fresh HTTP/1.1
//! connection per fetch, redirects never followed, a deadline and a cap on the answer.
//! A slow or hostile sidecar costs the registry one connection for [`FETCH_TIMEOUT`] and
//! at most [`MAX_BODY`] of memory, and never holds up anything else.

use std::fmt::Display;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::rt::TokioIo;
use mesh_registry_api::{ADMIN_METADATA, validate};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::catalog::{Catalog, UnknownInstance};
use crate::error::ApiError;

/// Deadline of one fetch: connecting, sending, and reading the whole answer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read from a sidecar (its `/metrics` is a few tens of KiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// Response header naming the sidecar admin address an answer was read from; only
/// answers passed on from a sidecar carry it, the registry's own errors do not.
pub const SIDECAR_HEADER: &str = "x-mesh-sidecar";

/// The admin pages the registry reads; there are no others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminPage {
    Ready,
    Metrics,
    DebugEndpoints,
}

/// A sidecar's answer, passed on as it came.
#[derive(Debug)]
pub struct AdminAnswer {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    pub body: Bytes,
}

// === impl AdminPage ===

impl AdminPage {
    pub fn path(self) -> &'static str {
        match self {
            AdminPage::Ready => "/ready",
            AdminPage::Metrics => "/metrics",
            AdminPage::DebugEndpoints => "/debug/endpoints",
        }
    }
}

// === impl AdminAnswer ===

impl AdminAnswer {
    /// The answer to the registry's client: the sidecar's status, content type and body.
    pub fn into_response(self, admin: &str) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, self.content_type);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(admin) = HeaderValue::from_str(admin) {
            headers.insert(SIDECAR_HEADER, admin);
        }
        response
    }
}

// === impl Catalog ===

impl Catalog {
    /// The sidecar admin address an instance registered (metadata `admin`), if any.
    pub fn admin_address(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Option<String>, UnknownInstance> {
        let svc = self.services.get(service).ok_or(UnknownInstance)?;
        let entry = svc.instances.get(id).ok_or(UnknownInstance)?;
        Ok(entry.registration.metadata.get(ADMIN_METADATA).cloned())
    }
}

/// GETs `page` from the sidecar admin port at `admin` (`host:port`) within
/// [`FETCH_TIMEOUT`].
pub async fn fetch(admin: &str, page: AdminPage) -> Result<AdminAnswer, ApiError> {
    validate::address(admin).map_err(|m| {
        sidecar_unreachable(
            admin,
            format!("the registered address is not host:port ({m})"),
        )
    })?;
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(FETCH_TIMEOUT, exchange(admin, page))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::SidecarTimeout(format!(
                "the sidecar admin port {admin} did not answer GET {} within {}",
                page.path(),
                humantime::format_duration(FETCH_TIMEOUT)
            )))
        });
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &answer {
        Ok(a) => {
            tracing::debug!(%admin, path = page.path(), status = a.status.as_u16(), elapsed_ms, "sidecar admin page read")
        }
        // At debug too: the request's own log line has the status, the client the reason.
        Err(e) => {
            tracing::debug!(%admin, path = page.path(), error = %e, elapsed_ms, "sidecar admin page not read")
        }
    }
    answer
}

/// One request on a connection of its own.
async fn exchange(admin: &str, page: AdminPage) -> Result<AdminAnswer, ApiError> {
    let failed = |what: &str, e: &dyn Display| sidecar_unreachable(admin, format!("{what}: {e}"));
    let stream = TcpStream::connect(admin)
        .await
        .map_err(|e| failed("cannot connect", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed("cannot speak HTTP/1.1 to it", &e))?;
    // The connection runs beside the exchange and is aborted with it, on the deadline
    // too, so nothing of a fetch outlives it.
    let _connection = AbortOnDrop(tokio::spawn(connection));

    let request = Request::get(page.path())
        .header(header::HOST, admin)
        .header(
            header::USER_AGENT,
            concat!("mesh-registry/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .expect("a validated address is a valid Host header");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed("no answer", &e))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(sidecar_unreachable(
            admin,
            format!("it answered {status}, and redirects are not followed"),
        ));
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let body = match Limited::new(response.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(sidecar_unreachable(
                admin,
                format!("its answer is larger than {MAX_BODY} bytes"),
            ));
        }
        Err(e) => return Err(failed("the answer broke off", &e)),
    };
    Ok(AdminAnswer {
        status,
        content_type,
        body,
    })
}

fn sidecar_unreachable(admin: &str, why: String) -> ApiError {
    ApiError::SidecarUnreachable(format!(
        "the sidecar admin port {admin} is unreachable: {why}"
    ))
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_and_a_bad_address_are_unreachable_naming_the_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        match fetch(&address, AdminPage::Metrics).await {
            Err(ApiError::SidecarUnreachable(m)) => {
                assert!(m.contains(&address) && m.contains("cannot connect"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        match fetch("not an address", AdminPage::Ready).await {
            Err(ApiError::SidecarUnreachable(m)) => assert!(m.contains("host:port"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
