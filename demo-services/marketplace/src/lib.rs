//! The `marketplace` demo service: a web page listing the books `recommendations` suggests.
//!
//! As in the tutorial, it knows nothing about the mesh: it dials
//! `RECOMMENDATIONS_HOST:RECOMMENDATIONS_PORT` over one long-lived HTTP/2 channel and renders
//! whatever comes back, or a 502 page naming the gRPC status when the call fails. Like any
//! instrumented app it passes the page request's W3C trace context on to that call
//! (`trace_context`), so one page view is one trace.
//!
//! [`run`] takes an already-bound listener so tests can serve on `127.0.0.1:0` in-process;
//! [`app`] is the router on its own.

use std::{future::Future, time::Duration};

use axum::{Router, extract::State, http::HeaderMap, response::Html, routing::get};
use recommendations::{
    SERVED_BY,
    pb::{BookCategory, RecommendationRequest, recommendations_client::RecommendationsClient},
};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

mod error;
mod page;
mod trace_context;

pub use error::Error;

/// The longest a page waits for recommendations, sent along as the call's gRPC deadline so
/// the server (and any proxy in between) can give up too.
const DEADLINE: Duration = Duration::from_secs(5);

/// How long opening a connection to recommendations may take; the deadline above only
/// starts counting once a connection is up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where to find the recommendations service.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Host name or IP address of the recommendations service.
    #[arg(long, env = "RECOMMENDATIONS_HOST", default_value = "localhost")]
    pub recommendations_host: String,

    /// Port of the recommendations service.
    #[arg(long, env = "RECOMMENDATIONS_PORT", default_value_t = 50051)]
    pub recommendations_port: u16,
}

// === impl Config ===

impl Config {
    /// The recommendations endpoint, refused with the flags' names when they make no URI.
    pub fn recommendations_endpoint(&self) -> Result<Endpoint, Error> {
        let host = &self.recommendations_host;
        // An IPv6 literal needs brackets to be told apart from the port.
        let uri = if host.contains(':') && !host.starts_with('[') {
            format!("http://[{host}]:{}", self.recommendations_port)
        } else {
            format!("http://{host}:{}", self.recommendations_port)
        };
        match Endpoint::from_shared(uri.clone()) {
            Ok(endpoint) => Ok(endpoint.connect_timeout(CONNECT_TIMEOUT)),
            Err(source) => Err(Error::RecommendationsAddress { uri, source }),
        }
    }
}

/// Serves the marketplace on `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let endpoint = config.recommendations_endpoint()?;
    tracing::info!(recommendations = %endpoint.uri(), "serving marketplace");
    // One channel for the process, like the tutorial's module-level channel: page views
    // multiplex on it, and it connects on first use, so the marketplace starts (and shows
    // an error page) while recommendations is not up yet.
    let client = RecommendationsClient::new(endpoint.connect_lazy());
    axum::serve(listener, app(client))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

/// The marketplace's routes; a path not listed is a 404, a method not listed a 405.
pub fn app(client: RecommendationsClient<Channel>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .with_state(client)
}

/// The tutorial's page: three mystery books recommended for user 1.
async fn index(
    State(mut client): State<RecommendationsClient<Channel>>,
    headers: HeaderMap,
) -> Result<Html<String>, Error> {
    let mut request = tonic::Request::new(RecommendationRequest {
        user_id: 1,
        category: BookCategory::Mystery.into(),
        max_results: 3,
    });
    request.set_timeout(DEADLINE);
    trace_context::propagate(&headers, request.metadata_mut());
    let response = client.recommend(request).await?;
    let served_by = response
        .metadata()
        .get(SERVED_BY)
        .and_then(|name| name.to_str().ok())
        .map(str::to_owned);
    let books = response.into_inner().recommendations;
    Ok(Html(page::recommendations(&books, served_by.as_deref())))
}

/// Liveness: the process answers HTTP. Says nothing about recommendations on purpose, so
/// an orchestrator does not restart the marketplace for another service's outage.
async fn healthz() -> &'static str {
    "ok"
}
