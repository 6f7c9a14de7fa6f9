//! Security for queue-runtime: signed messages, freshness and replay protection, GitHub
//! webhook verification, input limits and redaction.
//!
//! - [`MessageSigner`] and the [`Signing`] provider decorator sign every outgoing message
//!   with HMAC-SHA256 (v1 format, see `docs/security.md`) using the active key of a
//!   [`KeyRing`].
//! - [`SignatureGate`] is a [`queue_core::MessageGate`]: the consumer runtime runs it
//!   before the handler and dead-letters rejections with the reason labels in [`reason`].
//! - [`github::WebhookVerifier`] checks `X-Hub-Signature-256` and turns a delivery into a
//!   [`queue_core::Message`] with the right session and message id.
//! - [`Limits`] bounds bodies and attributes; [`redact`] decides what may be logged.
//!
//! ```
//! use queue_core::{Message, QueueName, QueueProvider};
//! use queue_security::{KeyRing, MessageSigner, SignatureGate, Signing, generate_key};
//!
//! # async fn demo(provider: impl QueueProvider) -> Result<(), Box<dyn std::error::Error>> {
//! let ring = KeyRing::new();
//! ring.insert("k1", generate_key()?)?;
//! ring.set_active("k1")?;
//! // Producer side: every send is signed.
//! let producer = Signing::new(provider, MessageSigner::new(ring.clone()));
//! producer.send(&QueueName::new("events")?, Message::new("{}")).await?;
//! // Consumer side: hand this gate to the runtime's processor builder.
//! let gate = SignatureGate::new(ring);
//! # let _ = gate; Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod connstr;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub mod github;
pub mod keys;
pub mod limits;
pub mod redact;
pub mod replay;
pub mod signature;
pub mod signing;

pub use connstr::ConnectionString;
pub use error::{SecurityError, reason};
pub use gate::{
    DEFAULT_REPLAY_WINDOW, GateOutcome, ReplayStoreFailure, SignatureGate, UnsignedPolicy,
};
pub use github::{WebhookHeaders, WebhookVerifier};
pub use keys::{DEFAULT_KEYS_ENV, KeyId, KeyRing, encode_key, generate_key};
pub use limits::Limits;
pub use redact::{MessageSummary, redact_error, redact_text};
pub use replay::{DEFAULT_REPLAY_CAPACITY, InMemoryReplayStore, ReplayStore};
pub use signature::{
    AttributeCoverage, DEFAULT_MAX_SKEW, Envelope, MessageSigner, SIGNATURE_ATTRIBUTE,
    SignatureVerifier, SignatureVersion, SignedFields, Verified,
};
pub use signing::Signing;
