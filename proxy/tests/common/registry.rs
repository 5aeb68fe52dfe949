//! A registry serving in-process.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{PATIENCE, eventually, listener};
use tokio::net::TcpListener;

/// A registry serving in-process; stopped when dropped.
pub struct Registry {
    pub addr: SocketAddr,
    pub client: mesh_registry_api::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Holds the CA files of a registry that signs certificates.
    _ca_dir: Option<tempfile::TempDir>,
}

/// The join token of test registries with a CA.
pub const JOIN_TOKEN: &str = "join-the-mesh";

impl Registry {
    pub async fn start() -> Registry {
        Self::start_on(listener().await).await
    }

    /// A registry whose CA issues certificates valid for `cert_ttl`.
    pub async fn start_with_ca(cert_ttl: Duration) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh_registry::ca::Ca::generate("mesh.local").unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("ca-key.pem"), &ca.key_pem).unwrap();
        let config = mesh_registry::Config {
            ca_cert: Some(dir.path().join("ca.pem")),
            ca_key: Some(dir.path().join("ca-key.pem")),
            join_token: Some(JOIN_TOKEN.into()),
            cert_ttl,
            ..mesh_registry::Config::default()
        };
        let mut registry = Self::start_configured(listener().await, config).await;
        registry._ca_dir = Some(dir);
        registry
    }

    pub async fn start_on(listener: TcpListener) -> Registry {
        Self::start_configured(listener, mesh_registry::Config::default()).await
    }

    async fn start_configured(listener: TcpListener, config: mesh_registry::Config) -> Registry {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            mesh_registry::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Registry {
            addr,
            client: mesh_registry_api::Client::new(&format!("http://{addr}")).unwrap(),
            stop: Some(stop),
            task,
            _ca_dir: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it and waits until it is gone.
    pub async fn kill(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = (&mut self.task).await;
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
