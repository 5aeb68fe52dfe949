//! The `recommendations` demo service: a gRPC server that recommends books by category.
//!
//! It follows the tutorial's `recommendations.proto` (no package, so the method path is
//! `/Recommendations/Recommend`), serves `grpc.health.v1.Health`, and can be told to fail a
//! share of calls or to answer slowly, so a mesh has something to retry, balance and time out.
//! Every answer names the instance that produced it in the `x-served-by` metadata.
//!
//! [`run`] takes an already-bound listener so tests can serve on `127.0.0.1:0` in-process.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;

mod catalog;
pub mod config;
mod error;
mod service;

pub use config::{Config, FailRate, InstanceName, Latency};
pub use error::Error;
pub use service::RecommendationsService;

/// Code generated from `proto/recommendations.proto`: messages, client and server.
///
/// Clients: `pb::recommendations_client::RecommendationsClient`; servers implement
/// `pb::recommendations_server::Recommendations`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

type RecommendationsServer =
    pb::recommendations_server::RecommendationsServer<RecommendationsService>;

/// Metadata key naming the instance that answered a call, on successes and errors alike.
pub const SERVED_BY: &str = "x-served-by";

/// Serves recommendations and health checks on `listener` until `shutdown` completes, then
/// waits for in-flight calls to finish.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RecommendationsServer>().await;
    let shutdown = async move {
        shutdown.await;
        // Health watchers learn the instance is leaving before its connections close.
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health.set_not_serving::<RecommendationsServer>().await;
    };

    tracing::info!(
        instance = %config.instance_name,
        fail_rate = %config.fail_rate,
        latency = %config.latency,
        "serving recommendations",
    );
    let recommendations = RecommendationsService::new(config).into_server();
    // gRPC calls are small request/response pairs: don't let Nagle hold them back.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    Server::builder()
        .add_service(health_service)
        .add_service(recommendations)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(Error::Serve)
}
