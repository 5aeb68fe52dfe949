//! What the mesh's long-running binaries (`mesh-proxy`, `mesh-registry`,
//! `meshctl inject-webhook`) share at start-up and shutdown: one log format and one
//! meaning of "stop".
//!
//! The demo services are the tutorial's apps, which the mesh carries: they keep their own.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs to standard error at `RUST_LOG`'s levels (`info` without it), in colour only for
/// a person at a terminal. A second call does nothing.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` and Kubernetes send). Where a
/// handler cannot be installed it says so and waits on the other.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
