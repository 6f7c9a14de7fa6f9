//! Errors of the emulator.

/// Error returned by the emulator's public API and its semantic core.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The configuration is invalid.
    #[error("invalid emulator configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The emulator may only listen on loopback addresses.
    #[error(
        "refusing to bind non-loopback address {addr}: the emulator is a test server and binds loopback only"
    )]
    NonLoopbackBind {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
    },
    /// A TLS certificate or key could not be made, read or used.
    #[error("TLS: {reason}")]
    Tls {
        /// What is wrong (never key material).
        reason: String,
    },
    /// Binding or accepting failed.
    #[error("network error: {reason}")]
    Io {
        /// The I/O error text.
        reason: String,
    },
    /// No such queue (or sub-queue).
    #[error("entity `{entity}` does not exist")]
    EntityNotFound {
        /// The address asked for.
        entity: String,
    },
    /// The lock token is unknown or its lock expired.
    #[error("the message lock was lost or the lock token is unknown")]
    LockLost,
    /// The session is locked by another receiver, or not locked by this one.
    #[error("the session lock was lost or is held by another receiver")]
    SessionLockLost,
    /// The session is held by another receiver.
    #[error("session `{session}` is locked by another receiver")]
    SessionCannotBeLocked {
        /// The session id.
        session: String,
    },
    /// No unlocked session with messages is available.
    #[error("no session is available")]
    NoSessionAvailable,
    /// The queue is full.
    #[error("queue `{entity}` is full")]
    QuotaExceeded {
        /// The queue.
        entity: String,
    },
    /// The operation is not allowed on this entity (Service Bus: `amqp:not-allowed`, an
    /// invalid-operation error in the SDKs), e.g. a session-less message to a session queue.
    #[error("not allowed: {reason}")]
    NotAllowed {
        /// Why.
        reason: String,
    },
    /// The request is malformed or not allowed on this entity.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong.
        reason: String,
    },
}
