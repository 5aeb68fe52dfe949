//! Wire types and client of the mesh registry's HTTP API (v1).
//!
//! The proxy and any tool that talks to the registry use this crate; it depends on an
//! HTTP client only, never on the server.
//!
//! - [`types`]: the JSON bodies, exactly as the contract spells them.
//! - [`validate`]: the naming and address rules, shared with the server.
//! - [`Client`]: one call per API operation; [`ClientError`] says what failed and whether
//!   it is worth retrying.
//! - [`Watch`]: long-polls one service and yields its full endpoint set on every change.
//! - [`Registrar`]: keeps one instance registered for as long as it runs.
//! - [`call`]: one call as a sidecar saw it (access log and tap lines), and the tap's
//!   filter.
//! - [`policy`]: the traffic policy documents (routes, intentions, limits), checked.
//! - [`sidecar`]: the JSON of a sidecar's `/ready` and `/debug/endpoints`, written by
//!   the proxy and read by operators' tools.
//! - [`spiffe`]: the mesh identities in certificates, and the verifier that checks them.
//! - [`Client::readyz`] and [`Client::admin`]: what operators' tools ask, the registry's
//!   readiness and clock, and sidecars' admin pages relayed by the registry.

mod admin;
mod backoff;
pub mod call;
mod client;
mod error;
pub mod policy;
mod readiness;
mod registrar;
mod rotation;
pub mod sidecar;
pub mod spiffe;
pub mod types;
pub mod validate;
mod watch;

pub use admin::{AdminAnswer, AdminPath};
pub use backoff::Backoff;
pub use client::Client;
pub use error::ClientError;
pub use readiness::{CaSummary, Readiness, Ready, StoreStatus};
pub use registrar::Registrar;
pub use rotation::Rotation;
pub use types::*;
pub use watch::{DEFAULT_WAIT, Watch};
