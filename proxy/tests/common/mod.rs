//! In-process meshes for the tests: a registry, sidecars and apps on 127.0.0.1:0.

#![allow(dead_code, unused_imports)]

mod app;
mod client;
mod otel;
mod policy;
mod sidecar;
mod upgrade;

pub use app::*;
pub use client::*;
pub use otel::*;
pub use policy::*;
pub use sidecar::*;
pub use upgrade::*;

pub use mesh_test_support::client::{Answer, get, get_h1, h1, send};
pub use mesh_test_support::{
    JOIN_TOKEN, PATIENCE, Registry, closed_port, eventually, eventually_some, listener, metric,
    metric_or_zero, metric_sum, nxdomain_dns, within,
};
