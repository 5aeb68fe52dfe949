//! How sidecars' admin pages are fetched: through the registry's relay, or by dialling the
//! sidecar's admin address.
//!
//! meshctl usually runs on a host that reaches the registry but not the sidecars' admin
//! ports (compose publishes none of them), so the registry's relay is the default. With
//! `--direct`, or as soon as the registry answers that it has no relay (an older
//! release), meshctl dials the admin addresses itself, which works where it runs beside
//! the sidecars.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client as HttpClient, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use mesh_registry_api::{AdminAnswer, AdminPath, Client, ClientError};

use crate::sidecars::Sidecar;

/// Deadline for a sidecar's answer, the same as the registry's relay gives it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a sidecar's page could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("registered without an admin address")]
    NoAdmin,
    #[error("admin {admin} unreachable: {reason}")]
    Unreachable { admin: String, reason: String },
    #[error("admin {admin} did not answer within {:?}", ADMIN_TIMEOUT)]
    Timeout { admin: String },
    #[error("admin answered {status} to {path}")]
    Status { status: u16, path: AdminPath },
    #[error("admin answered {path} with something unreadable: {reason}")]
    Unreadable { path: AdminPath, reason: String },
    #[error(transparent)]
    Registry(ClientError),
}

/// Fetches sidecars' admin pages; shared by concurrent fetches.
pub struct Admins {
    registry: Client,
    /// Set by `--direct`, or once the registry turned out to have no relay.
    direct: AtomicBool,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
}

// === impl Admins ===

impl Admins {
    pub fn new(registry: Client, direct: bool) -> Self {
        Admins {
            registry,
            direct: AtomicBool::new(direct),
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// True when meshctl dials sidecars itself (hints then say where it must run).
    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// The sidecar's answer to `path`, whatever its status.
    pub async fn get(
        &self,
        sidecar: &Sidecar,
        path: AdminPath,
    ) -> Result<AdminAnswer, SidecarError> {
        if !self.is_direct() {
            match self
                .registry
                .admin(&sidecar.service, &sidecar.id, path)
                .await
            {
                Err(e) if e.is_no_route() => self.fall_back(),
                Err(e) => return Err(refusal(sidecar, e)),
                Ok(answer) => return Ok(answer),
            }
        }
        self.dial(&sidecar.admin, path).await
    }

    /// The body of a 2xx answer to `path`.
    pub async fn get_ok(&self, sidecar: &Sidecar, path: AdminPath) -> Result<Bytes, SidecarError> {
        let answer = self.get(sidecar, path).await?;
        if !answer.is_success() {
            return Err(SidecarError::Status {
                status: answer.status,
                path,
            });
        }
        Ok(answer.body)
    }

    fn fall_back(&self) {
        // Said once per run, on stderr, so that `-o json` output stays a document.
        if !self.direct.swap(true, Ordering::Relaxed) {
            crate::output::note(&format!(
                "note: the registry at {} cannot relay sidecars' admin pages (an older \
                 release); dialling their admin addresses directly",
                self.registry.base_url()
            ));
        }
    }

    async fn dial(&self, admin: &str, path: AdminPath) -> Result<AdminAnswer, SidecarError> {
        let unreachable = |reason: String| SidecarError::Unreachable {
            admin: admin.to_owned(),
            reason,
        };
        let request = Request::get(format!("http://{admin}{path}"))
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| unreachable(root_cause(&e)))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok(AdminAnswer {
                status: parts.status.as_u16(),
                content_type,
                body: body.to_bytes(),
            })
        };
        tokio::time::timeout(ADMIN_TIMEOUT, exchange)
            .await
            .map_err(|_| SidecarError::Timeout {
                admin: admin.to_owned(),
            })?
    }
}

/// The registry's refusal to relay, in the words of a direct fetch where it is one.
fn refusal(sidecar: &Sidecar, e: ClientError) -> SidecarError {
    let admin = sidecar.admin.clone();
    match e.code() {
        Some("no_admin") => SidecarError::NoAdmin,
        Some("sidecar_unreachable") => SidecarError::Unreachable {
            admin,
            reason: e.to_string(),
        },
        Some("sidecar_timeout") => SidecarError::Timeout { admin },
        _ => SidecarError::Registry(e),
    }
}

/// The innermost cause of a client error: "connection refused" rather than "client
/// error (Connect)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
