//! Provider-agnostic core of queue-runtime.
//!
//! This crate holds what every provider and every consumer share: validated names
//! ([`QueueName`], [`SessionId`], [`MessageId`]), messages ([`Message`],
//! [`ReceivedMessage`], [`Receipt`]), the provider SPI ([`QueueProvider`],
//! [`SessionReceiver`]), [`Capabilities`], the one error type [`QueueError`] with its
//! [`RetryClass`], secret types and the open [`ProviderSettings`] each provider crate
//! parses into its own typed settings (the core does not know which providers exist). It
//! has no cloud SDK and no async runtime dependency.
//!
//! ```
//! use queue_core::{Message, QueueName, QueueProvider, QueueProviderExt, SessionId};
//!
//! async fn enqueue(provider: &dyn QueueProvider) -> queue_core::Result<()> {
//!     let queue = QueueName::new("pull-requests")?;
//!     let msg = Message::new("{}").with_session_id(SessionId::new("octo/repo#1")?);
//!     provider.send(&queue, msg).await?;
//!     if let Some(got) = provider.receive_one(&queue, std::time::Duration::from_secs(1)).await? {
//!         provider.complete(&got.receipt).await?;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Implementing a provider
//! Anyone may implement [`QueueProvider`]. A provider is correct when it passes the
//! `queue-conformance` suite and reports its gaps in [`Capabilities`]. Methods added to
//! the trait in minor releases come with default bodies returning
//! [`QueueError::Unsupported`], so adding one does not break existing providers.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
pub mod ci;
pub mod config;
pub mod error;
pub mod gate;
pub mod layer;
pub mod message;
pub mod names;
pub mod provider;
pub mod redrive;
pub mod secret;

pub use config::{ProviderSettings, TypedSettings};
pub use error::{AuthFailure, BatchEntryError, BoxError, NameKind, QueueError, Result, RetryClass};
pub use gate::{MessageGate, Rejection};
pub use message::{
    Attributes, DeadLetterReason, MAX_DELIVERY_COUNT_EXCEEDED, Message, Receipt, ReceivedMessage,
    TTL_EXPIRED,
};
pub use names::{MessageId, QueueName, SessionId};
pub use provider::{
    Capabilities, DynQueueProvider, QueueProvider, QueueProviderExt, QueueSpec, ReceiveOptions,
    SessionReceiver, SessionSelector, SessionSupport, SharedQueueProvider,
};
pub use redrive::{
    DEAD_LETTER_ATTRIBUTES, ORIGINAL_MESSAGE_ID_ATTRIBUTE, RedriveError, RedriveOptions,
    RedriveReport, Redriven,
};
pub use secret::{ExposeSecret, SecretString};
