//! Checks that run on every received message before the handler sees it.
//!
//! A [`MessageGate`] is how cross-cutting policies (signature verification, replay
//! protection, size or schema limits) plug into the consumer runtime without the runtime
//! depending on them. A [`Rejection`] is final: the runtime dead-letters the message with
//! the rejection's reason and never retries it.

use std::fmt;

use async_trait::async_trait;

use crate::message::ReceivedMessage;

/// Why a gate refused a message. Becomes the dead-letter reason and description.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// Short, bounded, machine-readable reason (also a metric label), e.g. `SignatureInvalid`.
    pub reason: &'static str,
    /// Human-readable detail; must not contain secrets or body text.
    pub description: String,
}

impl Rejection {
    /// Creates a rejection.
    pub fn new(reason: &'static str, description: impl Into<String>) -> Self {
        Self {
            reason,
            description: description.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.description)
    }
}

/// A check run on each received message before the handler.
#[async_trait]
pub trait MessageGate: fmt::Debug + Send + Sync + 'static {
    /// Accepts the message or rejects it for good.
    async fn check(&self, message: &ReceivedMessage) -> Result<(), Rejection>;
}
