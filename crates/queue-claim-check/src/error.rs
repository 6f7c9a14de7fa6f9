//! [`ClaimCheckError`], its retry classification and the dead-letter reasons it maps to.

use std::time::Duration;

use queue_core::{BoxError, QueueError, RetryClass};

/// Provider id used in the [`QueueError`]s this crate returns for store failures.
pub const STORE_PROVIDER: &str = "claim-check";

/// Dead-letter reasons for claim-checked messages that can never be delivered.
pub mod reason {
    /// The referenced blob is gone (deleted, swept, or never written).
    pub const BLOB_MISSING: &str = "ClaimCheckBlobMissing";
    /// The blob's size or SHA-256 differs from the reference: it was altered.
    pub const BLOB_ALTERED: &str = "ClaimCheckBlobAltered";
    /// The reference attribute cannot be parsed, or names a key this layer would not write.
    pub const REFERENCE_INVALID: &str = "ClaimCheckReferenceInvalid";
    /// The reference declares a body larger than the layer accepts.
    pub const TOO_LARGE: &str = "ClaimCheckTooLarge";
}

/// What went wrong between a message and its blob.
///
/// Messages name the object key (a message id and a digest, never body bytes) and the
/// operation; store errors keep the `object_store` error as their source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimCheckError {
    /// The blob does not exist.
    #[error("claim-check blob `{key}` does not exist")]
    BlobMissing {
        /// The object key.
        key: String,
    },

    /// The blob's size or digest differs from what the reference declares.
    #[error("claim-check blob `{key}` does not match its reference: {what}")]
    BlobAltered {
        /// The object key.
        key: String,
        /// What differs (`size` or `SHA-256 digest`).
        what: &'static str,
    },

    /// The reference attribute is malformed or names a key outside this layer's layout.
    #[error("invalid claim-check reference: {reason}")]
    MalformedReference {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The reference declares more bytes than the layer accepts.
    #[error("claim-check reference declares {declared} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Declared size.
        declared: u64,
        /// The layer's limit.
        max: u64,
    },

    /// A store call did not finish within the layer's timeout.
    #[error("object store {operation} timed out after {after:?}")]
    Timeout {
        /// The store operation (`put`, `get`, `delete`, `list`).
        operation: &'static str,
        /// The timeout.
        after: Duration,
    },

    /// The object store failed.
    #[error("object store {operation} failed")]
    Store {
        /// The store operation (`put`, `get`, `delete`, `list`).
        operation: &'static str,
        /// Whether retrying can help.
        class: RetryClass,
        /// The `object_store` error.
        #[source]
        source: BoxError,
    },

    /// A setting is invalid.
    #[error("invalid claim-check configuration `{field}`: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl ClaimCheckError {
    /// Whether retrying the same call can succeed.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Self::Timeout { .. } => RetryClass::Transient,
            Self::Store { class, .. } => *class,
            _ => RetryClass::Permanent,
        }
    }

    /// The dead-letter reason for errors that make a message undeliverable for good
    /// (missing or altered blob, invalid reference, oversize declaration); `None` for store
    /// and configuration failures, which say nothing about the message.
    pub fn dead_letter_reason(&self) -> Option<&'static str> {
        match self {
            Self::BlobMissing { .. } => Some(reason::BLOB_MISSING),
            Self::BlobAltered { .. } => Some(reason::BLOB_ALTERED),
            Self::MalformedReference { .. } => Some(reason::REFERENCE_INVALID),
            Self::TooLarge { .. } => Some(reason::TOO_LARGE),
            _ => None,
        }
    }

    /// Maps an `object_store` error from `operation`, classifying it.
    pub(crate) fn store(operation: &'static str, key: &str, error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { .. } => Self::BlobMissing {
                key: key.to_owned(),
            },
            other => Self::Store {
                operation,
                class: classify(&other),
                source: Box::new(other),
            },
        }
    }
}

/// Permanent when the store said the request itself is wrong (missing permission, failed
/// authentication, invalid path or configuration, unsupported operation, failed
/// precondition); transient otherwise: connection failures, timeouts, 5xx answers and
/// other errors that `object_store` reports as `Generic` after its own retries. A
/// transient error that keeps coming back is bounded by the caller's retry budget.
fn classify(error: &object_store::Error) -> RetryClass {
    use object_store::Error as E;
    match error {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. } => RetryClass::Permanent,
        _ => RetryClass::Transient,
    }
}

impl From<ClaimCheckError> for QueueError {
    fn from(error: ClaimCheckError) -> Self {
        match error {
            ClaimCheckError::Timeout { operation, after } => QueueError::Timeout {
                provider: STORE_PROVIDER,
                operation,
                after,
            },
            ClaimCheckError::Config { field, reason } => {
                QueueError::config(format!("claim_check.{field}"), reason)
            }
            other => QueueError::Provider {
                provider: STORE_PROVIDER,
                operation: other.operation(),
                class: other.retry_class(),
                source: Box::new(other),
            },
        }
    }
}

impl ClaimCheckError {
    fn operation(&self) -> &'static str {
        match self {
            Self::Store { operation, .. } | Self::Timeout { operation, .. } => operation,
            _ => "claim_check",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic() -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: Box::new(std::io::Error::other("reset")),
        }
    }

    #[test]
    fn classification_table() {
        let not_found = object_store::Error::NotFound {
            path: "k".into(),
            source: Box::new(std::io::Error::other("gone")),
        };
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: Box::new(std::io::Error::other("no")),
        };
        let cases = [
            (
                ClaimCheckError::store("get", "k", not_found),
                RetryClass::Permanent,
                Some(reason::BLOB_MISSING),
            ),
            (
                ClaimCheckError::store("get", "k", denied),
                RetryClass::Permanent,
                None,
            ),
            (
                ClaimCheckError::store("put", "k", generic()),
                RetryClass::Transient,
                None,
            ),
            (
                ClaimCheckError::Timeout {
                    operation: "get",
                    after: Duration::from_secs(1),
                },
                RetryClass::Transient,
                None,
            ),
            (
                ClaimCheckError::BlobAltered {
                    key: "k".into(),
                    what: "size",
                },
                RetryClass::Permanent,
                Some(reason::BLOB_ALTERED),
            ),
            (
                ClaimCheckError::TooLarge {
                    declared: 2,
                    max: 1,
                },
                RetryClass::Permanent,
                Some(reason::TOO_LARGE),
            ),
        ];
        for (error, class, reason) in cases {
            assert_eq!(error.retry_class(), class, "{error}");
            assert_eq!(error.dead_letter_reason(), reason, "{error}");
            let queue_error = QueueError::from(error);
            assert_eq!(queue_error.retry_class(), class, "{queue_error}");
        }
    }

    #[test]
    fn store_errors_keep_their_source() {
        let e = QueueError::from(ClaimCheckError::store("put", "k", generic()));
        assert!(e.to_string().contains("claim-check"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
