//! In-process meshes for meshctl's tests: a real registry, apps and sidecars on
//! 127.0.0.1:0, and meshctl run as the binary users run.

#![allow(dead_code)]

mod mesh;

pub use mesh::*;

use std::net::SocketAddr;
use std::process::Stdio;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What a meshctl run printed, and how it exited.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }

    /// The table row (cells split on whitespace) whose first cell is `first`.
    pub fn row(&self, first: &str) -> Vec<String> {
        self.stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cells| cells.first().is_some_and(|c| c == first))
            .unwrap_or_else(|| panic!("no row {first}:\n{}", self.stdout))
    }
}

/// The meshctl binary with `args` against the registry at `registry`, in an environment
/// without any of meshctl's variables.
pub fn meshctl(registry: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshctl"));
    command
        .env_clear()
        .arg("--registry")
        .arg(registry)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs meshctl to the end.
pub async fn run(registry: &str, args: &[&str]) -> Run {
    finish(meshctl(registry, args).spawn().unwrap()).await
}

pub async fn finish(child: tokio::process::Child) -> Run {
    let out = child.wait_with_output().await.unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// One HTTP/1.1 GET through a sidecar's outbound listener to service `host`.
pub async fn call(outbound: SocketAddr, host: &str, path: &str) -> StatusCode {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::get(format!("http://{outbound}{path}"))
        .header(header::HOST, host)
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

/// An address nothing listens on (it was free a moment ago).
pub fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// How long a test waits for a state it needs before giving up: generous, for a loaded
/// machine.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Polls `condition` until it holds, for at most `bound`; panics naming `what` otherwise.
pub async fn eventually<F: AsyncFn() -> bool>(
    bound: std::time::Duration,
    what: &str,
    condition: F,
) {
    let started = std::time::Instant::now();
    while started.elapsed() < bound {
        if condition().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {bound:?}");
}
