//! The broker's error type: each variant is one gRPC status code at the edge.

use crate::provider::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Bad input; `field` names the request field.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// A configured bound was hit; the message names it.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this (a merge without a valid human approval).
    #[error("{0}")]
    PermissionDenied(String),
    /// Shutting down, or a provider could not do it now.
    #[error("{0}")]
    Unavailable(String),
}

impl BrokerError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> BrokerError {
        BrokerError::InvalidArgument { field: field.into(), message: message.into() }
    }
}

impl From<ProviderError> for BrokerError {
    fn from(error: ProviderError) -> BrokerError {
        match error {
            ProviderError::InvalidArgument { field, message } => BrokerError::invalid(field, message),
            ProviderError::NotFound(message) => BrokerError::NotFound(message),
            ProviderError::TooLarge(message) => BrokerError::ResourceExhausted(message),
            ProviderError::FailedPrecondition(message) => BrokerError::FailedPrecondition(message),
            ProviderError::Unavailable(message) => BrokerError::Unavailable(message),
        }
    }
}
