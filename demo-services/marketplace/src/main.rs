//! The `marketplace` binary: flags, logging, signals; the web app is in the library.
//!
//! Run with: `cargo run -p marketplace -- --listen 127.0.0.1:5000`

use std::{io::IsTerminal, net::SocketAddr};

use anyhow::Context;
use clap::Parser;
use marketplace::Config;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Demo web shop page listing the books the recommendations service suggests.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to serve HTTP on.
    #[arg(long, env = "MARKETPLACE_LISTEN", default_value = "0.0.0.0:5000")]
    listen: SocketAddr,

    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Colours only for a person at a terminal, not in compose or Kubernetes logs.
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding --listen {}", cli.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(url = %format!("http://{address}/"), "marketplace listening");

    marketplace::run(listener, cli.config, shutdown_signal()).await?;
    tracing::info!("marketplace stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM (what `docker stop` and Kubernetes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let sigterm = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = sigterm => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
