//! In-process meshes for the tests: a registry, sidecars and apps on 127.0.0.1:0.

#![allow(dead_code, unused_imports)]

mod app;
mod client;
mod registry;
mod sidecar;

pub use app::*;
pub use client::*;
pub use registry::*;
pub use sidecar::*;

use tokio::net::TcpListener;

pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Metric value of one exact series line (`name{labels}`) in a Prometheus text body.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
}
