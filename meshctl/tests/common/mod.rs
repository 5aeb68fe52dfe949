//! In-process meshes for meshctl's tests: a real registry, apps and sidecars on
//! 127.0.0.1:0, and meshctl run as the binary users run.

#![allow(dead_code, unused_imports)]

mod mesh;

pub use mesh::*;

use std::net::SocketAddr;
use std::process::Stdio;

use http::StatusCode;
use mesh_test_support::client::get_h1;

pub use mesh_test_support::{PATIENCE, Registry, closed_port, eventually};

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
    get_h1(outbound, host, path).await.status
}
