//! `mesh-demo`: flags → [`mesh_demo::launcher::run`] or [`mesh_demo::traffic::run`].
//!
//! Run with: `cargo run --release -p mesh-demo`, then in another terminal
//! `cargo run --release -p mesh-demo -- traffic`.

use std::{io::IsTerminal, process::ExitCode};

use clap::{Parser, Subcommand};
use mesh_demo::{TrafficConfig, UpConfig};
use tracing_subscriber::EnvFilter;

/// The mesh on 127.0.0.1 in one command: the registry, three recommendations instances
/// and the marketplace, each app behind its own sidecar. Ctrl-C stops everything.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    up: UpConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a steady rate of GETs to the page, printing a summary every second.
    Traffic(TrafficConfig),

    /// Started by the launcher: stops its children if it dies.
    #[command(name = mesh_demo::watchdog::SUBCOMMAND, hide = true)]
    Watchdog,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    // The message alone, with its causes: a backtrace would bury "port 5000 is in use".
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => mesh_demo::launcher::run(cli.up).await?,
        Some(Command::Traffic(config)) => {
            mesh_demo::traffic::run(config).await;
        }
        Some(Command::Watchdog) => mesh_demo::watchdog::run().await?,
    }
    Ok(())
}
