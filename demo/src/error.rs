//! Everything that stops the launcher or the traffic generator, each with what to do next.

use std::{path::PathBuf, time::Duration};

use crate::ports::PortError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port is taken, planned twice, or out of range.
    #[error(transparent)]
    Ports(#[from] PortError),

    /// The CA for mTLS could not be made.
    #[error("cannot make the mesh's CA for --tls: {0} (or run with --tls off)")]
    Ca(String),

    /// The directory for the sidecars' access logs could not be made.
    #[error("cannot create the access logs' directory {} (--log-dir)", dir.display())]
    LogDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A flag's value makes no sense; the message names the flag.
    #[error("{0}")]
    Config(String),

    /// Where the launcher's own executable is, hence where the other binaries are.
    #[error("cannot tell where the mesh-demo executable is; pass --bin-dir")]
    OwnLocation(#[source] std::io::Error),

    #[error("cannot run `{command}`")]
    BuildSpawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}); its output is above")]
    Build { command: String, status: String },

    #[error(
        "missing in {}: {}; build them with `cargo build --release -p mesh-registry -p mesh-proxy \
         -p recommendations -p marketplace`, or point --bin-dir at the directory holding them",
        dir.display(),
        missing.join(", ")
    )]
    MissingBinaries { dir: PathBuf, missing: Vec<String> },

    #[error("cannot start {name} ({})", program.display())]
    Spawn {
        name: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot start the watchdog process that stops the children if the launcher dies")]
    Watchdog(#[source] std::io::Error),

    /// A process exited while the mesh was still coming up.
    #[error("{name} (pid {pid}) exited during start-up: {status}; its output above says why")]
    DiedDuringStartup {
        name: String,
        pid: u32,
        status: String,
    },

    /// A readiness condition did not hold in time.
    #[error(
        "{what} was not ready within {} (--ready-timeout); last check: {last}",
        humantime::format_duration(*timeout)
    )]
    NotReady {
        what: String,
        timeout: Duration,
        last: String,
    },

    /// Ctrl-C or SIGTERM arrived before the mesh was up.
    #[error("interrupted during start-up")]
    Interrupted,

    /// Installing the SIGINT/SIGTERM handlers failed.
    #[error("cannot listen for {0}")]
    Signal(&'static str, #[source] std::io::Error),
}
