//! What the mesh's integration tests share, so that each crate's `tests/common` keeps only
//! what is its own.
//!
//! Tests wait for the state they need, never for a fixed while that a loaded machine can
//! outlast: [`eventually`] polls a condition under a bound and names what it waited for
//! when it fails ([`blocking`] has the same waits for tests without a runtime). Beside
//! them: loopback servers a sidecar needs ([`nxdomain_dns`], [`listener`]), reading
//! Prometheus text ([`metric`], [`metric_sum`]), and a guard that kills a child process
//! when a test ends ([`ChildGuard`]). With features: whole HTTP answers (`http`:
//! [`client`]) and a registry serving in-process (`registry`: `Registry`).
//!
//! A dev-dependency only: nothing here is fit for production code.

pub mod blocking;
mod metrics;
mod net;
mod process;
mod wait;

#[cfg(feature = "http")]
pub mod client;
#[cfg(feature = "registry")]
mod registry;

pub use crate::metrics::{metric, metric_or_zero, metric_sum};
pub use crate::net::{closed_port, listener, nxdomain_dns};
pub use crate::process::ChildGuard;
#[cfg(feature = "registry")]
pub use crate::registry::{JOIN_TOKEN, Registry};
pub use crate::wait::{PATIENCE, POLL, eventually, eventually_some, within};
