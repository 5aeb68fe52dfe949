//! A registry serving in-process, on the test's own runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_registry::{Config, Error};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{PATIENCE, client, eventually, listener, metric};

/// The join token of test registries with a CA.
pub const JOIN_TOKEN: &str = "join-the-mesh";

/// A registry serving on 127.0.0.1 at a port the kernel chose; stopped (as SIGTERM stops
/// it) when dropped.
pub struct Registry {
    pub addr: SocketAddr,
    pub client: mesh_registry_api::Client,
    /// With [`Registry::start_with_ca_and_tls`]: the TLS listener, where sidecars write
    /// with their certificates.
    pub tls: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), Error>>>,
    /// Holds the CA's files, for as long as the registry serves.
    ca_dir: Option<tempfile::TempDir>,
}

// === impl Registry ===

impl Registry {
    pub async fn start() -> Registry {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> Registry {
        Self::start_on(listener().await, config)
    }

    /// A registry on a listener the test bound (to know, or reuse, its address).
    pub fn start_on(listener: TcpListener, config: Config) -> Registry {
        Self::serve(listener, None, config, None)
    }

    /// A registry whose CA issues certificates valid for `cert_ttl` to holders of
    /// [`JOIN_TOKEN`]. Without a TLS listener no writer can prove a certificate, so writes
    /// stay open, over plain HTTP.
    pub async fn start_with_ca(cert_ttl: Duration) -> Registry {
        Self::with_ca(cert_ttl, false).await
    }

    /// [`Registry::start_with_ca`], with a TLS listener where sidecars write with their
    /// certificates, as deployments run it: writes then need a certificate.
    pub async fn start_with_ca_and_tls(cert_ttl: Duration) -> Registry {
        Self::with_ca(cert_ttl, true).await
    }

    async fn with_ca(cert_ttl: Duration, tls: bool) -> Registry {
        // Written before the registry starts, so they are there when this returns.
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh_registry::ca::Ca::generate("mesh.local").unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("ca-key.pem"), &ca.key_pem).unwrap();
        let config = Config {
            ca_cert: Some(dir.path().join("ca.pem")),
            ca_key: Some(dir.path().join("ca-key.pem")),
            join_token: Some(JOIN_TOKEN.into()),
            cert_ttl,
            ..Config::default()
        };
        let tls = if tls { Some(listener().await) } else { None };
        Self::serve(listener().await, tls, config, Some(dir))
    }

    fn serve(
        listener: TcpListener,
        tls: Option<TcpListener>,
        config: Config,
        ca_dir: Option<tempfile::TempDir>,
    ) -> Registry {
        let addr = listener.local_addr().unwrap();
        let tls_addr = tls.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = match tls {
            Some(tls) => tokio::spawn(mesh_registry::run_with_tls(
                listener,
                Some(tls),
                config,
                shutdown,
            )),
            None => tokio::spawn(mesh_registry::run(listener, config, shutdown)),
        };
        Registry {
            addr,
            client: mesh_registry_api::Client::new(&format!("http://{addr}")).unwrap(),
            tls: tls_addr,
            stop: Some(stop),
            task: Some(task),
            ca_dir,
        }
    }

    /// `http://` and its address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The CA's certificate, which sidecars check the TLS listener with.
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.ca_dir.as_ref().map(|dir| dir.path().join("ca.pem"))
    }

    /// Shuts it down the way SIGTERM does and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), Error> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        client::get(&format!("{}/metrics", self.url())).await.text
    }

    /// The value of one series in its `/metrics` (see [`metric`](crate::metric)).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.metrics().await, series)
    }

    /// Waits until `service` lists exactly `n` passing instances.
    pub async fn until_passing(&self, service: &str, n: usize) {
        let what = format!("{n} passing instances of {service}");
        eventually(PATIENCE, &what, async || {
            self.client.service(service).await.unwrap().instances.len() == n
        })
        .await;
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
