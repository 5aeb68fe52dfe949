//! The `Recommendations` gRPC service: fault injection, then the catalog.

use tonic::{Request, Response, Status};

use crate::{
    SERVED_BY, catalog,
    config::Config,
    error::Error,
    pb::{
        BookCategory, RecommendationRequest, RecommendationResponse,
        recommendations_server::{Recommendations, RecommendationsServer},
    },
};

/// Answers `Recommend` calls according to a [`Config`].
#[derive(Debug)]
pub struct RecommendationsService {
    config: Config,
}

// === impl RecommendationsService ===

impl RecommendationsService {
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// Wraps the service for `tonic::transport::Server::add_service`.
    pub fn into_server(self) -> RecommendationsServer<Self> {
        RecommendationsServer::new(self)
    }

    async fn recommend(
        &self,
        request: &RecommendationRequest,
    ) -> Result<RecommendationResponse, Error> {
        // The delay comes first, so injected failures are slow too, as real ones often are.
        let delay = self.config.latency.sample();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.config.fail_rate.strikes() {
            return Err(Error::InjectedFailure(self.config.fail_rate));
        }
        let category =
            BookCategory::try_from(request.category).map_err(|_| Error::CategoryNotFound)?;
        Ok(RecommendationResponse {
            recommendations: catalog::recommend(category, request.max_results),
        })
    }
}

#[tonic::async_trait]
impl Recommendations for RecommendationsService {
    async fn recommend(
        &self,
        request: Request<RecommendationRequest>,
    ) -> Result<Response<RecommendationResponse>, Status> {
        let request = request.into_inner();
        let served_by = self.config.instance_name.metadata();
        match self.recommend(&request).await {
            Ok(answer) => {
                tracing::debug!(
                    ?request,
                    books = answer.recommendations.len(),
                    "recommended"
                );
                let mut response = Response::new(answer);
                response.metadata_mut().insert(SERVED_BY, served_by);
                Ok(response)
            }
            Err(error) => {
                tracing::info!(?request, %error, "recommend failed");
                let mut status = Status::from(error);
                status.metadata_mut().insert(SERVED_BY, served_by);
                Err(status)
            }
        }
    }
}
