//! Stopping the sidecar without failing a request: each stage stops only once nothing
//! can still need it.
//!
//! 1. The instance is deregistered, so peers stop sending new requests here.
//! 2. The inbound listener stops accepting and drains peers' requests in flight.
//! 3. The app's own listeners (outbound, upstream) stay open until the app has exited
//!    (an app finishing its work may still make calls), or the drain timeout ends.
//! 4. The admin listener stops last, so `/metrics` and `/ready` answer throughout.
//! 5. The tasks that outlive listeners (destinations' followers, certificate renewal)
//!    are stopped, and [`Shutdown::run`] returns only once every task has ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::discover::Discovery;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::register::Registration;
use crate::server::Servers;

/// The running sidecar's stages, in the order they stop.
pub struct Shutdown {
    /// With `--service`.
    pub local: Option<LocalApp>,
    pub outbound: Servers,
    pub admin: Servers,
    /// How long in-flight requests, and the app, may take to finish.
    pub drain: Duration,
    /// Followed by the outbound listeners until they stop.
    pub discovery: Arc<Discovery>,
    /// With mTLS on: the task obtaining and renewing the certificate.
    pub renewal: Option<JoinHandle<()>>,
    /// Open taps end cleanly before the admin listener stops.
    pub metrics: Arc<Metrics>,
}

/// The local app's stage: the inbound listener in front of it, its registration, and
/// the follower of its policy.
pub struct LocalApp {
    pub app: SocketAddr,
    pub inbound: Servers,
    pub registration: Registration,
    /// Checks the app's health for the registration; stopped once it is withdrawn.
    pub health: JoinHandle<()>,
    pub policy: Arc<Policy>,
    /// Keeps `policy` current; stopped once the inbound listener is.
    pub follower: JoinHandle<()>,
}

// === impl Shutdown ===

impl Shutdown {
    pub async fn run(self) {
        let mut inbound = None;
        if let Some(local) = self.local {
            local.registration.withdraw().await;
            stop(local.health).await;
            inbound = Some((local.inbound, local.app, local.follower));
        }
        let drain_ends = Instant::now() + self.drain;
        tracing::info!(drain = ?self.drain, "draining in-flight requests");
        if let Some((servers, app, follower)) = inbound {
            servers.stop().await;
            stop(follower).await;
            if tokio::time::timeout_at(drain_ends, app_exited(app))
                .await
                .is_err()
            {
                tracing::info!(%app, "the app is still running at the end of the drain; closing its listeners");
            }
        }
        self.outbound.stop().await;
        self.discovery.stop().await;
        self.metrics.observers.tap.close();
        self.admin.stop().await;
        if let Some(renewal) = self.renewal {
            stop(renewal).await;
        }
        tracing::info!("stopped");
    }
}

/// Aborts a task and returns once it has ended.
async fn stop(task: JoinHandle<()>) {
    task.abort();
    let _ = task.await;
}

/// Resolves once the app no longer accepts connections.
async fn app_exited(app: SocketAddr) {
    while tokio::net::TcpStream::connect(app).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
