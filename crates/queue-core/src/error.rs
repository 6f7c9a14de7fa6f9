//! The one error type of queue-runtime and its retry classification.
//!
//! Provider crates keep their SDK errors private and convert them into [`QueueError`] in
//! one place. SDK error values may sit behind `source()` (boxed); their text must be
//! redacted first, since SDK messages can echo credentials.

use std::{fmt, time::Duration};

use crate::names::{MessageId, SessionId};

/// A boxed error usable as a `source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`QueueError`] as the default error.
pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// Whether retrying the failed operation can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryClass {
    /// The same call may succeed later (throttling, timeouts, connection loss, busy servers).
    Transient,
    /// The same call will fail again (missing queue, bad credentials, oversize message...).
    Permanent,
    /// The failure was transient but the retry budget is spent.
    Exhausted,
}

/// Which identifier failed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameKind {
    /// A queue name.
    Queue,
    /// A session id.
    Session,
    /// A message id.
    Message,
    /// A message attribute name.
    Attribute,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Queue => "queue name",
            Self::Session => "session id",
            Self::Message => "message id",
            Self::Attribute => "attribute name",
        })
    }
}

/// Authentication (who you are) versus authorization (what you may do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthFailure {
    /// Credentials missing, malformed, expired or rejected.
    Authentication,
    /// Credentials accepted but lacking the permission for this operation.
    Authorization,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Authentication => "authentication",
            Self::Authorization => "authorization",
        })
    }
}

/// One failed entry of a batch operation.
#[derive(Debug)]
#[non_exhaustive]
pub struct BatchEntryError {
    /// Index of the entry in the input batch.
    pub index: usize,
    /// Why it failed.
    pub error: QueueError,
}

impl BatchEntryError {
    /// Creates an entry failure.
    pub fn new(index: usize, error: QueueError) -> Self {
        Self { index, error }
    }
}

/// Every error queue-runtime returns.
///
/// Messages name the provider, the queue and the operation, but never credentials or
/// message bodies. Use [`QueueError::retry_class`] to decide whether to retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue does not exist (or is not visible with these credentials).
    #[error("queue `{queue}` does not exist on {provider} (during {operation})")]
    QueueNotFound {
        /// Provider id.
        provider: &'static str,
        /// Queue name as given.
        queue: String,
        /// Operation that failed.
        operation: &'static str,
    },

    /// The message is larger than the provider or queue accepts. Nothing was sent.
    #[error("message of {size} bytes exceeds the {max}-byte limit of {provider} queue `{queue}`")]
    MessageTooLarge {
        /// Provider id.
        provider: &'static str,
        /// Queue name.
        queue: String,
        /// Encoded size of the message in bytes.
        size: usize,
        /// Largest size the queue accepts.
        max: usize,
    },

    /// The receipt is unknown, already settled, or its lock expired.
    #[error(
        "{operation} on {provider} queue `{queue}` failed: the lock is lost or the receipt is invalid"
    )]
    LockLost {
        /// Provider id.
        provider: &'static str,
        /// Queue name.
        queue: String,
        /// Operation that failed.
        operation: &'static str,
    },

    /// Another receiver holds the session's lock.
    #[error("session `{session}` of {provider} queue `{queue}` is locked by another receiver")]
    SessionLocked {
        /// Provider id.
        provider: &'static str,
        /// Queue name.
        queue: String,
        /// The session asked for.
        session: SessionId,
    },

    /// This receiver's session lock expired or was taken over.
    #[error(
        "the lock on session `{session}` of {provider} queue `{queue}` is lost (during {operation})"
    )]
    SessionLockLost {
        /// Provider id.
        provider: &'static str,
        /// Queue name.
        queue: String,
        /// The session whose lock is lost.
        session: SessionId,
        /// Operation that failed.
        operation: &'static str,
    },

    /// The provider asked the caller to slow down.
    #[error("{provider} throttled {operation}")]
    Throttled {
        /// Provider id.
        provider: &'static str,
        /// Operation that was throttled.
        operation: &'static str,
        /// How long the provider asked to wait, if it said.
        retry_after: Option<Duration>,
    },

    /// Credentials were rejected or lack a permission.
    #[error("{kind} failed on {provider} during {operation}: {detail}")]
    Auth {
        /// Provider id.
        provider: &'static str,
        /// Operation that failed.
        operation: &'static str,
        /// Authentication or authorization.
        kind: AuthFailure,
        /// A redacted, human-readable explanation (never the credential itself).
        detail: String,
    },

    /// A configuration value is missing or invalid.
    #[error("invalid configuration `{field}`: {reason}")]
    Config {
        /// The configuration field, dotted (`aws.endpoint`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An identifier failed validation.
    #[error("invalid {kind}: {reason}")]
    InvalidName {
        /// Which identifier.
        kind: NameKind,
        /// What is wrong with it.
        reason: String,
    },

    /// A message cannot be sent as built (too many attributes, a bad attribute value...).
    #[error("invalid message for {provider}: {reason}")]
    InvalidMessage {
        /// Provider id.
        provider: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The operation did not finish in time.
    #[error("{operation} on {provider} timed out after {after:?}")]
    Timeout {
        /// Provider id.
        provider: &'static str,
        /// Operation that timed out.
        operation: &'static str,
        /// How long we waited.
        after: Duration,
    },

    /// The connection to the provider failed or dropped.
    #[error("connection to {provider} failed during {operation}")]
    Connection {
        /// Provider id.
        provider: &'static str,
        /// Operation that failed.
        operation: &'static str,
        /// The underlying failure (redacted).
        #[source]
        source: BoxError,
    },

    /// The provider cannot do this at all; see [`crate::Capabilities`].
    #[error("{operation} is not supported by {provider}")]
    Unsupported {
        /// Provider id.
        provider: &'static str,
        /// Operation asked for.
        operation: &'static str,
    },

    /// Some entries of a batch failed; the others succeeded.
    #[error("{} of {total} entries of a {operation} batch to {provider} queue `{queue}` failed", failed.len())]
    PartialBatch {
        /// Provider id.
        provider: &'static str,
        /// Queue name.
        queue: String,
        /// Operation.
        operation: &'static str,
        /// Number of entries in the batch.
        total: usize,
        /// Entries that succeeded: input index and message id.
        succeeded: Vec<(usize, MessageId)>,
        /// Entries that failed.
        failed: Vec<BatchEntryError>,
    },

    /// A transient failure kept recurring until the retry budget ran out.
    #[error("{operation} on {provider} still failing after {attempts} attempts")]
    RetriesExhausted {
        /// Provider id.
        provider: &'static str,
        /// Operation.
        operation: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<QueueError>,
    },

    /// The provider was closed or is shutting down.
    #[error("{provider} is closed")]
    Closed {
        /// Provider id.
        provider: &'static str,
    },

    /// Any other provider failure, classified by the provider.
    #[error("{provider} failed during {operation}")]
    Provider {
        /// Provider id.
        provider: &'static str,
        /// Operation that failed.
        operation: &'static str,
        /// Whether a retry can help.
        class: RetryClass,
        /// The underlying failure (redacted).
        #[source]
        source: BoxError,
    },
}

impl QueueError {
    /// Whether retrying the same call may succeed.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Self::Throttled { .. }
            | Self::Timeout { .. }
            | Self::Connection { .. }
            | Self::SessionLocked { .. } => RetryClass::Transient,
            Self::Provider { class, .. } => *class,
            Self::PartialBatch { failed, .. } => {
                if failed
                    .iter()
                    .all(|f| f.error.retry_class() == RetryClass::Transient)
                {
                    RetryClass::Transient
                } else {
                    RetryClass::Permanent
                }
            }
            Self::RetriesExhausted { .. } => RetryClass::Exhausted,
            _ => RetryClass::Permanent,
        }
    }

    /// Shorthand for `retry_class() == RetryClass::Transient`.
    pub fn is_transient(&self) -> bool {
        self.retry_class() == RetryClass::Transient
    }

    /// A short, stable, bounded label for metrics (`"queue_not_found"`, `"throttled"`...).
    pub fn kind_label(&self) -> &'static str {
        match self {
            Self::QueueNotFound { .. } => "queue_not_found",
            Self::MessageTooLarge { .. } => "message_too_large",
            Self::LockLost { .. } => "lock_lost",
            Self::SessionLocked { .. } => "session_locked",
            Self::SessionLockLost { .. } => "session_lock_lost",
            Self::Throttled { .. } => "throttled",
            Self::Auth { .. } => "auth",
            Self::Config { .. } => "config",
            Self::InvalidName { .. } => "invalid_name",
            Self::InvalidMessage { .. } => "invalid_message",
            Self::Timeout { .. } => "timeout",
            Self::Connection { .. } => "connection",
            Self::Unsupported { .. } => "unsupported",
            Self::PartialBatch { .. } => "partial_batch",
            Self::RetriesExhausted { .. } => "retries_exhausted",
            Self::Closed { .. } => "closed",
            Self::Provider { .. } => "provider",
        }
    }

    /// Builds a [`QueueError::Config`] naming `field`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Builds a [`QueueError::Unsupported`].
    pub fn unsupported(provider: &'static str, operation: &'static str) -> Self {
        Self::Unsupported {
            provider,
            operation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let io = || -> BoxError { Box::new(std::io::Error::other("reset")) };
        let cases: Vec<(QueueError, RetryClass)> = vec![
            (
                QueueError::Throttled {
                    provider: "p",
                    operation: "send",
                    retry_after: None,
                },
                RetryClass::Transient,
            ),
            (
                QueueError::Timeout {
                    provider: "p",
                    operation: "receive",
                    after: Duration::from_secs(1),
                },
                RetryClass::Transient,
            ),
            (
                QueueError::Connection {
                    provider: "p",
                    operation: "send",
                    source: io(),
                },
                RetryClass::Transient,
            ),
            (
                QueueError::QueueNotFound {
                    provider: "p",
                    queue: "q".into(),
                    operation: "send",
                },
                RetryClass::Permanent,
            ),
            (
                QueueError::MessageTooLarge {
                    provider: "p",
                    queue: "q".into(),
                    size: 2,
                    max: 1,
                },
                RetryClass::Permanent,
            ),
            (
                QueueError::Auth {
                    provider: "p",
                    operation: "send",
                    kind: AuthFailure::Authentication,
                    detail: "expired".into(),
                },
                RetryClass::Permanent,
            ),
            (
                QueueError::Provider {
                    provider: "p",
                    operation: "send",
                    class: RetryClass::Transient,
                    source: io(),
                },
                RetryClass::Transient,
            ),
            (
                QueueError::RetriesExhausted {
                    provider: "p",
                    operation: "send",
                    attempts: 3,
                    last: Box::new(QueueError::Closed { provider: "p" }),
                },
                RetryClass::Exhausted,
            ),
            (
                QueueError::unsupported("p", "accept_session"),
                RetryClass::Permanent,
            ),
        ];
        for (err, class) in cases {
            assert_eq!(err.retry_class(), class, "{err}");
            assert!(!err.kind_label().is_empty());
        }
    }

    #[test]
    fn messages_name_context() {
        let e = QueueError::MessageTooLarge {
            provider: "sqs",
            queue: "jobs".into(),
            size: 300_000,
            max: 262_144,
        };
        let text = e.to_string();
        assert!(
            text.contains("300000") && text.contains("262144") && text.contains("jobs"),
            "{text}"
        );
        let e = QueueError::config("aws.endpoint", "plain http is only allowed for loopback");
        assert!(e.to_string().contains("aws.endpoint"));
    }
}
