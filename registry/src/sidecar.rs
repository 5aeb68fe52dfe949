//! Reading a sidecar's admin pages on the dashboard's behalf
//! (`GET /v1/services/{service}/instances/{id}/admin/{page}`).
//!
//! Browsers cannot reach sidecars' admin ports; the registry usually can, and it knows
//! where they are (instance metadata `admin`). It is deliberately no proxy: three fixed
//! pages, GET only, only to the address the instance registered, one fresh HTTP/1.1
//! connection per fetch, redirects never followed.
//!
//! What a sidecar answers is passed on as data, never as a page: the registry serves its
//! dashboard from the same origin, so the content type is the page's own whatever the
//! sidecar said, browsers are told not to sniff another, and a sandbox policy keeps
//! anything that is rendered anyway from running script there.
//!
//! A relay is bounded in every direction: at most `--max-admin-relays` at once (more are
//! answered 503 at once), the sidecar's head within [`FETCH_TIMEOUT`], its body within
//! [`RELAY_TIMEOUT`] more, at most [`MAX_BODY`] of it. The body is streamed as it
//! arrives rather than collected, so a relay holds a few small buffers, not the page: a
//! client that does not read stops the relay reading too, and is cut off by the
//! server's write timeout.

use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use mesh_registry_api::{ADMIN_METADATA, AdminPath};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use crate::catalog::{Catalog, UnknownInstance};
use crate::error::ApiError;
use crate::respond;

/// Deadline of the sidecar's answer: connecting, sending, and reading its head.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of the body, from the answer's head to its last byte; past it the answer is
/// cut off.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer relayed from a sidecar (its `/metrics` is a few tens of KiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// Relays under way at once, unless `--max-admin-relays` says otherwise. Browsers open
/// six connections per origin, meshctl one relay per sidecar; each relay holds a few
/// buffers of [`READ_BUFFER`] at most.
pub const DEFAULT_MAX_RELAYS: usize = 64;
/// Response header naming the sidecar admin address an answer was read from; only
/// answers passed on from a sidecar carry it, the registry's own errors do not.
pub const SIDECAR_HEADER: &str = "x-mesh-sidecar";
/// What a relayed answer may do in a browser that renders it anyway: nothing.
const SANDBOX: &str = "sandbox; default-src 'none'";
/// The read buffer of the connection to a sidecar, and so the largest piece of a body
/// in flight: hyper's smallest.
const READ_BUFFER: usize = 8 * 1024;

/// The relays under way, at most a fixed number at once.
pub struct Relays {
    slots: Arc<Semaphore>,
    max: usize,
}

/// A sidecar's page on its way to the client: the sidecar's body as it arrives, counted
/// against [`MAX_BODY`] and [`RELAY_TIMEOUT`]. It holds the relay's slot and the
/// connection to the sidecar, which both end when it does.
pub struct RelayBody {
    body: Incoming,
    relayed: usize,
    deadline: Pin<Box<Sleep>>,
    admin: String,
    _slot: OwnedSemaphorePermit,
    _connection: AbortOnDrop<()>,
}

/// Why a relayed body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the answer of the sidecar admin port {admin} was cut off: {why}")]
pub struct Cut {
    admin: String,
    why: String,
}

// === impl Relays ===

impl Relays {
    pub fn new(max: usize) -> Self {
        Relays {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// GETs `page` from the sidecar admin port at `admin` (`host:port`, as registrations
    /// are held to) and answers with its status and body, as the page's type.
    pub async fn relay(
        &self,
        admin: &str,
        page: AdminPath,
    ) -> Result<Response<respond::Body>, ApiError> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::RelaysBusy(format!(
                "the registry is relaying {} sidecar admin pages already \
                 (--max-admin-relays); try again in a moment",
                self.max
            ))
        })?;
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(FETCH_TIMEOUT, head(admin, page))
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::SidecarTimeout(format!(
                    "the sidecar admin port {admin} did not answer GET {page} within {}",
                    humantime::format_duration(FETCH_TIMEOUT)
                )))
            });
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let (status, body, connection) = match answer {
            Ok(answer) => answer,
            // At debug: the request's own log line has the status, the client the reason.
            Err(e) => {
                tracing::debug!(%admin, %page, error = %e, elapsed_ms, "sidecar admin page not read");
                return Err(e);
            }
        };
        tracing::debug!(%admin, %page, status = status.as_u16(), elapsed_ms, "sidecar admin page relayed");
        let body = RelayBody {
            body,
            relayed: 0,
            deadline: Box::pin(tokio::time::sleep(RELAY_TIMEOUT)),
            admin: admin.to_owned(),
            _slot: slot,
            _connection: connection,
        };
        let mut response = Response::new(Either::Right(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        let fixed = [
            (header::CONTENT_TYPE, page.content_type()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, SANDBOX),
            (header::CACHE_CONTROL, "no-store"),
        ];
        for (name, value) in fixed {
            headers.insert(name, HeaderValue::from_static(value));
        }
        if let Ok(admin) = HeaderValue::from_str(admin) {
            headers.insert(SIDECAR_HEADER, admin);
        }
        Ok(response)
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
        let entry = self.entry(service, id).ok_or(UnknownInstance)?;
        Ok(entry.registration.metadata.get(ADMIN_METADATA).cloned())
    }
}

/// One request on a connection of its own, up to the answer's head: a status a page can
/// have, and a body no longer than [`MAX_BODY`] if it says how long it is.
async fn head(
    admin: &str,
    page: AdminPath,
) -> Result<(StatusCode, Incoming, AbortOnDrop<()>), ApiError> {
    let failed = |what: &str, e: &dyn Display| sidecar_unreachable(admin, format!("{what}: {e}"));
    let stream = TcpStream::connect(admin)
        .await
        .map_err(|e| failed("cannot connect", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(READ_BUFFER)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed("cannot speak HTTP/1.1 to it", &e))?;
    // The connection runs beside the exchange and is aborted with it (on a deadline too),
    // or with the body relaying its answer, so nothing of a relay outlives it.
    let connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));

    let request = Request::get(format!("{page}"))
        .header(header::HOST, admin)
        .header(
            header::USER_AGENT,
            concat!("mesh-registry/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .expect("a registered admin address is a valid Host header");
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
    // A sidecar's pages answer 200, or 503 while it is not ready. Anything else (an
    // interim 101 would take the client's connection over; a 404 or 500 has a body that
    // is no page of ours) is not a sidecar answering.
    if status != StatusCode::OK && status != StatusCode::SERVICE_UNAVAILABLE {
        return Err(sidecar_unreachable(
            admin,
            format!("it answered {status}; a sidecar's admin pages answer 200 or 503"),
        ));
    }
    if response.body().size_hint().lower() > MAX_BODY as u64 {
        return Err(sidecar_unreachable(
            admin,
            format!("its answer is larger than {MAX_BODY} bytes"),
        ));
    }
    Ok((status, response.into_body(), connection))
}

fn sidecar_unreachable(admin: &str, why: String) -> ApiError {
    ApiError::SidecarUnreachable(format!(
        "the sidecar admin port {admin} is unreachable: {why}"
    ))
}

// === impl RelayBody ===

impl RelayBody {
    fn cut(&self, why: String) -> Cut {
        tracing::debug!(admin = %self.admin, %why, relayed = self.relayed, "sidecar admin page cut off");
        Cut {
            admin: self.admin.clone(),
            why,
        }
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = &mut *self;
        if this.deadline.as_mut().poll(cx).is_ready() {
            let why = format!(
                "not relayed within {}",
                humantime::format_duration(RELAY_TIMEOUT)
            );
            return Poll::Ready(Some(Err(this.cut(why))));
        }
        loop {
            let frame = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(this.cut(format!("it broke off: {e}")))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            // Data only: trailers are the sidecar's business.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            this.relayed += data.len();
            if this.relayed > MAX_BODY {
                let why = format!("it is larger than {MAX_BODY} bytes");
                return Poll::Ready(Some(Err(this.cut(why))));
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
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
    async fn a_refused_connection_is_unreachable_naming_the_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        match Relays::new(1).relay(&address, AdminPath::Metrics).await {
            Err(ApiError::SidecarUnreachable(m)) => {
                assert!(m.contains(&address) && m.contains("cannot connect"), "{m}")
            }
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }
}
