//! What can stop a command, as one line for the operator.

use mesh_registry_api::ClientError;

use crate::reach::SidecarError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--registry: {0}")]
    RegistryUrl(ClientError),
    #[error(transparent)]
    Registry(#[from] ClientError),
    #[error("--via {via}: {reason}")]
    Via { via: String, reason: String },
    #[error("sidecar {sidecar}: {source}")]
    Sidecar {
        sidecar: String,
        #[source]
        source: SidecarError,
    },
    #[error("{file}: {reason}")]
    PolicyFile { file: String, reason: String },
    #[error(transparent)]
    Inject(#[from] crate::inject::InjectError),
    #[error("inject-webhook: {0}")]
    Webhook(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}
