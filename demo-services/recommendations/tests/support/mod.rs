//! Starts a recommendations server in-process on an ephemeral port.

use std::net::SocketAddr;

use recommendations::{Config, Error, pb::recommendations_client::RecommendationsClient};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};

/// A running server; dropping it (or calling [`Server::stop`]) shuts the server down.
pub struct Server {
    pub address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), Error>>,
}

impl Server {
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        };
        let task = tokio::spawn(recommendations::run(listener, config, shutdown));
        Self {
            address,
            stop,
            task,
        }
    }

    /// A channel to the server. The listener is bound before `start` returns, so
    /// connecting needs no waiting.
    #[allow(dead_code)]
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    #[allow(dead_code)]
    pub async fn client(&self) -> RecommendationsClient<Channel> {
        RecommendationsClient::new(self.channel().await)
    }

    /// Asks for a graceful shutdown and returns how `run` ended.
    #[allow(dead_code)]
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}
