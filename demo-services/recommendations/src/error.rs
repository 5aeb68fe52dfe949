//! What can go wrong, and the one place it becomes a gRPC status.

use tonic::{Code, Status};

use crate::config::FailRate;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request's category is not one of `BookCategory`'s values. The message is the
    /// tutorial's, word for word: clients may match on it.
    #[error("Category not found")]
    CategoryNotFound,

    /// `--fail-rate` picked this call to fail, so a mesh has failures to retry.
    #[error("injected failure: this instance fails a share {0} of calls (--fail-rate)")]
    InjectedFailure(FailRate),

    /// The server itself stopped on an I/O or protocol error.
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = match error {
            Error::CategoryNotFound => Code::NotFound,
            // UNAVAILABLE is what clients and proxies treat as safe to retry.
            Error::InjectedFailure(_) => Code::Unavailable,
            // Never produced by a call; listed so the mapping stays total.
            Error::Serve(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}
