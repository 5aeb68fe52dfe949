//! `mesh-demo`: the whole mesh on 127.0.0.1 with one command, no containers.
//!
//! The launcher starts the registry, three `recommendations` instances and the
//! `marketplace`, each app behind its own `mesh-proxy` sidecar, as separate processes:
//!
//! ```text
//! registry :7700
//! marketplace :5000 ──> sidecar/marketplace (upstream :5051) ──┬─> sidecar/recommendations-1 ─> recommendations-1 :5052
//!                                                               ├─> sidecar/recommendations-2 ─> recommendations-2 :5053
//!                                                               └─> sidecar/recommendations-3 ─> recommendations-3 :5054
//! ```
//!
//! How a run goes, one module per step:
//!
//! 1. [`config`]: flags, validated once; [`ports`]: every port the plan needs, derived from
//!    a few flags and checked to be free before anything starts.
//! 2. [`binaries`]: under `cargo run`, build the other binaries; then find them.
//! 3. [`plan`]: the command line of every process; [`logs`]: where the sidecars write
//!    their access logs.
//! 4. [`launcher`]: start them in order, wait until the mesh is ready (`ready`), print
//!    where to look (`banner`), supervise, and stop them in order on Ctrl-C or SIGTERM.
//!    [`child`] is one supervised process; [`watchdog`] makes sure none outlives the
//!    launcher.
//!
//! [`traffic`] is the `mesh-demo traffic` load generator, summarised by [`stats`]; both it
//! and the readiness checks use the small HTTP client in [`http`].
//!
//! Run with: `cargo run --release -p mesh-demo`

mod banner;
pub mod binaries;
pub mod child;
pub mod config;
mod error;
pub mod http;
pub mod launcher;
pub mod logs;
pub mod plan;
pub mod ports;
mod ready;
pub mod stats;
pub mod traffic;
pub mod watchdog;

pub use config::{TrafficConfig, UpConfig};
pub use error::Error;
