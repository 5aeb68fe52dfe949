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
use tokio::task::JoinHandle;

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

/// The app's health as it is being checked, and the task checking it.
pub struct Checking {
    pub status: watch::Receiver<Status>,
    pub output: watch::Receiver<Option<String>>,
    pub task: JoinHandle<()>,
}

// === impl HealthCheck ===

impl HealthCheck {
    /// Checks the app in a task of its own, until the returned task is aborted (once
    /// the instance is deregistered). The status receiver sees each change of status,
    /// which the registration reports without waiting for its next heartbeat; an
    /// unchanged status is not published, so heartbeats keep their own pace. The output
    /// receiver holds what the last check saw (why it failed), which heartbeats carry.
    pub fn spawn(self) -> Checking {
        let (status, receiver) = watch::channel(Status::Critical);
        let (output, outputs) = watch::channel(Some("not checked yet".to_owned()));
        Checking {
            status: receiver,
            output: outputs,
            task: tokio::spawn(self.run(status, output)),
        }
    }

    /// Checks faster until the app first passes.
    async fn run(self, status: watch::Sender<Status>, output: watch::Sender<Option<String>>) {
        let app = self.app;
        let mut wait = FIRST_CHECK_WAIT.min(self.interval);
        let mut passed = false;
        loop {
            let verdict = match tokio::time::timeout(CHECK_TIMEOUT, self.probe()).await {
                Ok(verdict) => verdict,
                Err(_) => critical(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            // The output first: the registration, woken by the status, reads it.
            output.send_if_modified(|current| {
                let changed = *current != verdict.output;
                *current = verdict.output.clone();
                changed
            });
            let now = verdict.status;
            status.send_if_modified(|current| {
                if *current == now {
                    return false;
                }
                let saw = verdict.output.as_deref().unwrap_or("");
                tracing::info!(%app, from = %*current, to = %now, "app health changed: {saw}");
                *current = now;
                true
            });
            passed |= now == Status::Passing;
            let next = if passed { self.interval } else { wait };
            wait = (wait * 2).min(self.interval);
            tokio::time::sleep(next).await;
        }
    }

    async fn probe(&self) -> Verdict {
        let (clients, pool) = (&self.clients, self.pool.as_ref());
        match &self.check {
            Check::Tcp => tcp(self.app).await,
            Check::Http { path } => {
                let request = Request::get(path.as_str()).body(body::empty());
                let Ok(request) = request else {
                    return critical(format!("{path:?} is not a path to GET"));
                };
                match clients.send(request, pool, Wire::Http1, None).await {
                    Ok(r) if r.status().is_success() => {
                        Verdict::passing(format!("GET {path} answered {}", r.status()))
                    }
                    Ok(r) => critical(format!("GET {path} answered {}", r.status())),
                    Err(e) => critical(format!("GET {path}: {e}")),
                }
            }
            Check::Grpc => grpc(self.app, clients, pool).await,
        }
    }
}

/// A health check's outcome: the status, and what the check saw (for a failed one, why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    pub output: Option<String>,
}

impl Verdict {
    fn passing(what: String) -> Verdict {
        Verdict {
            status: Status::Passing,
            output: Some(what),
        }
    }
}

fn critical(why: String) -> Verdict {
    Verdict {
        status: Status::Critical,
        output: Some(why),
    }
}

async fn tcp(app: SocketAddr) -> Verdict {
    match TcpStream::connect(app).await {
        Ok(_) => Verdict::passing(format!("connected to {app}")),
        Err(e) => critical(format!("cannot connect to {app}: {e}")),
    }
}

/// One `grpc.health.v1.Health/Check` for the whole server (`service: ""`), encoded by
/// hand: the request is an empty message, the answer's field 1 is the serving status.
async fn grpc(app: SocketAddr, clients: &Clients, pool: &Pool) -> Verdict {
    let request = Request::post("/grpc.health.v1.Health/Check")
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(body::full(Bytes::from_static(&[0, 0, 0, 0, 0])));
    let Ok(request) = request else {
        return critical("cannot build the gRPC health check".into());
    };
    let response = match clients.send(request, pool, Wire::Http2, None).await {
        Ok(response) => response,
        Err(e) => return critical(format!("gRPC health check: {e}")),
    };
    let header_status = crate::grpc::status_of(response.headers());
    let Ok(collected) = response.into_body().collect().await else {
        return critical("gRPC health check: the answer broke off".into());
    };
    let code = collected
        .trailers()
        .and_then(crate::grpc::status_of)
        .or(header_status);
    match code {
        Some(0) => {}
        Some(UNIMPLEMENTED) => return tcp(app).await,
        Some(code) => return critical(format!("gRPC health check answered grpc-status {code}")),
        None => return critical("gRPC health check answered no grpc-status".into()),
    }
    // Frame: 1 byte compressed flag, 4 bytes length, then `08 <status>` for field 1.
    let bytes = collected.to_bytes();
    match bytes.get(5..) {
        Some([0x08, 1, ..]) => Verdict::passing("gRPC health check: SERVING".into()),
        _ => critical("gRPC health check: the app is not SERVING".into()),
    }
}
