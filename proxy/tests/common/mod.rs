//! In-process meshes for the tests: a registry, sidecars and apps on 127.0.0.1:0.

#![allow(dead_code, unused_imports)]

mod app;
mod client;
mod otel;
mod policy;
mod registry;
mod sidecar;
mod upgrade;

pub use app::*;
pub use client::*;
pub use otel::*;
pub use policy::*;
pub use registry::*;
pub use sidecar::*;
pub use upgrade::*;

use std::time::Duration;

use tokio::net::TcpListener;

/// How long a test waits for a state it expects before it fails: far more than anything
/// takes on an idle machine, so that a loaded one does not fail the test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `condition` every 20 ms until it holds; panics naming `what` (what the test was
/// waiting for) once `bound` has passed. Tests wait for the state they need this way,
/// never with a fixed sleep that a loaded machine can outlast.
pub async fn eventually<F: AsyncFn() -> bool>(bound: Duration, what: &str, condition: F) {
    let started = tokio::time::Instant::now();
    loop {
        if condition().await {
            return;
        }
        if started.elapsed() >= bound {
            panic!("waited {bound:?} for {what}, in vain");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A DNS server on loopback that answers every query "no such name" at once: the
/// sidecars' `--dns-server` in tests that use made-up names, so none of them is sent
/// to the machine's resolver. Returns its `IP:PORT`.
pub async fn nxdomain_dns() -> String {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if n < 12 {
                continue;
            }
            let mut answer = buf[..n].to_vec();
            answer[2] |= 0x80; // a response
            answer[3] = 0x80 | 3; // recursion available, NXDOMAIN
            answer[6..12].fill(0); // no answer, authority or additional records
            // Keep the question only (drop an EDNS record in the additional section).
            let question_end = 12
                + answer[12..]
                    .iter()
                    .position(|b| *b == 0)
                    .map_or(0, |p| p + 1 + 4);
            answer.truncate(question_end.min(answer.len()));
            let _ = socket.send_to(&answer, from).await;
        }
    });
    addr
}

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

/// The sum of every series of metric `name` whose labels include `label` (`service="web"`),
/// in a Prometheus text body; 0 without any.
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once("} "))
        .filter(|(labels, _)| labels.split(',').any(|l| l == label))
        .map(|(_, value)| value.trim().parse::<f64>().unwrap())
        .sum()
}
