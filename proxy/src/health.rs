//! The local app's health, checked on a timer: the status its instance is registered
//! with (only `passing` instances get traffic).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::BodyExt;
use mesh_registry_api::Status;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::body;
use crate::forward::{Clients, Wire};
use crate::inbound::AppProtocol;
use crate::pool::Pool;

/// Deadline for one health check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Until the app first passes, checks start this often and double up to the interval:
/// an app that comes up a moment after its sidecar is routable a moment later.
const FIRST_CHECK_WAIT: Duration = Duration::from_millis(100);
/// gRPC status UNIMPLEMENTED: the app has no health service.
const UNIMPLEMENTED: u32 = 12;

/// How the app's health is checked.
#[derive(Clone, Debug)]
pub enum Check {
    /// A TCP connection can be opened.
    Tcp,
    /// `GET path` answers 2xx.
    Http { path: String },
    /// `grpc.health.v1.Health/Check` answers SERVING (a TCP connect when the app has no
    /// health service).
    Grpc,
}

impl Check {
    pub fn choose(protocol: Option<AppProtocol>, health_path: Option<&str>) -> Check {
        match (protocol, health_path) {
            (_, Some(path)) => Check::Http {
                path: path.to_owned(),
            },
            (Some(AppProtocol::Grpc), None) => Check::Grpc,
            _ => Check::Tcp,
        }
    }
}

/// The health check of the local app, at `interval` once it has passed.
pub struct HealthCheck {
    pub app: SocketAddr,
    pub check: Check,
    /// The app's connections, shared with peers' calls.
    pub clients: Clients,
    pub pool: Arc<Pool>,
    pub interval: Duration,
}

// === impl HealthCheck ===

impl HealthCheck {
    /// Checks the app in a task of its own, for the life of the process. The receiver
    /// sees each change of status, which the registration reports without waiting for
    /// its next heartbeat; an unchanged status is not published, so heartbeats keep
    /// their own pace.
    pub fn spawn(self) -> watch::Receiver<Status> {
        let (status, receiver) = watch::channel(Status::Critical);
        tokio::spawn(self.run(status));
        receiver
    }

    /// Checks faster until the app first passes.
    async fn run(self, status: watch::Sender<Status>) {
        let app = self.app;
        let mut wait = FIRST_CHECK_WAIT.min(self.interval);
        let mut passed = false;
        loop {
            let now = match tokio::time::timeout(CHECK_TIMEOUT, self.probe()).await {
                Ok(s) => s,
                Err(_) => Status::Critical,
            };
            status.send_if_modified(|current| {
                if *current == now {
                    return false;
                }
                tracing::info!(%app, from = %*current, to = %now, "app health changed");
                *current = now;
                true
            });
            passed |= now == Status::Passing;
            let next = if passed { self.interval } else { wait };
            wait = (wait * 2).min(self.interval);
            tokio::time::sleep(next).await;
        }
    }

    async fn probe(&self) -> Status {
        let (clients, pool) = (&self.clients, self.pool.as_ref());
        match &self.check {
            Check::Tcp => tcp(self.app).await,
            Check::Http { path } => {
                let request = Request::get(path.as_str()).body(body::empty());
                let Ok(request) = request else {
                    return Status::Critical;
                };
                match clients.send(request, pool, Wire::Http1, None).await {
                    Ok(r) if r.status().is_success() => Status::Passing,
                    _ => Status::Critical,
                }
            }
            Check::Grpc => grpc(self.app, clients, pool).await,
        }
    }
}

async fn tcp(app: SocketAddr) -> Status {
    match TcpStream::connect(app).await {
        Ok(_) => Status::Passing,
        Err(_) => Status::Critical,
    }
}

/// One `grpc.health.v1.Health/Check` for the whole server (`service: ""`), encoded by
/// hand: the request is an empty message, the answer's field 1 is the serving status.
async fn grpc(app: SocketAddr, clients: &Clients, pool: &Pool) -> Status {
    let request = Request::post("/grpc.health.v1.Health/Check")
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(body::full(Bytes::from_static(&[0, 0, 0, 0, 0])));
    let Ok(request) = request else {
        return Status::Critical;
    };
    let Ok(response) = clients.send(request, pool, Wire::Http2, None).await else {
        return Status::Critical;
    };
    let header_status = crate::grpc::status_of(response.headers());
    let Ok(collected) = response.into_body().collect().await else {
        return Status::Critical;
    };
    let code = collected
        .trailers()
        .and_then(crate::grpc::status_of)
        .or(header_status);
    match code {
        Some(0) => {}
        Some(UNIMPLEMENTED) => return tcp(app).await,
        _ => return Status::Critical,
    }
    // Frame: 1 byte compressed flag, 4 bytes length, then `08 <status>` for field 1.
    let bytes = collected.to_bytes();
    match bytes.get(5..) {
        Some([0x08, 1, ..]) => Status::Passing,
        _ => Status::Critical,
    }
}
