//! Reliable, ordered consumption of cloud queues.
//!
//! `queue-runtime` is the crate applications depend on. It re-exports the provider-agnostic
//! core ([`QueueProvider`], [`Message`], [`QueueError`]...), the providers enabled by
//! features, and adds the consumer runtime:
//!
//! * [`Processor`]: turns a [`Handler`] into a consumer that keeps per-session order,
//!   renews locks, retries with backoff, dead-letters poison messages, runs [`MessageGate`]s,
//!   backs off through a [`CircuitBreaker`] and shuts down gracefully with a
//!   [`ShutdownReport`].
//! * [`QueueRuntimeConfig`]: configuration from a file plus `QUEUE_RUNTIME__...` environment
//!   variables, and [`build_provider`] to pick the provider at run time.
//!
//! # Features
//! * `memory` (default): the in-memory provider, as `queue_runtime::memory`.
//! * `aws`: the AWS SQS provider (standard and FIFO queues), as `queue_runtime::aws`.
//! * `azure`: the Azure Service Bus provider (queues with and without sessions, over AMQP 1.0),
//!   as `queue_runtime::azure`. Configuration selects it with `kind = "service-bus"` and a
//!   connection string (a real namespace, or the local emulator with
//!   `UseDevelopmentEmulator=true`).
//! * `azure-entra`: `azure` plus `queue_runtime::azure::AzureCoreCredential`, which adapts an
//!   `azure_core` / `azure_identity` credential for Microsoft Entra ID. Such a provider is built
//!   in code (`ServiceBusProvider::builder().with_namespace(..).with_token_credential(..)`) and
//!   passed to [`Processor::new`]; a configuration file carries only connection strings. Not in
//!   `full`, since it pulls in `azure_core`.
//! * `security`: message signing, replay protection and GitHub webhook verification, as
//!   `queue_runtime::security` (its gates plug into [`Processor::with_gate`]).
//! * `webhook`: GitHub webhook intake, as `queue_runtime::webhook`: an axum `Router` that
//!   verifies signatures against a rotating secret set, enqueues one message per delivery
//!   and serves `/healthz`, `/readyz` and `/metrics`.
//! * `full`: `memory`, `aws`, `azure`, `security` and `webhook`.
//!
//! A provider kind whose feature is off still parses in configuration; building it returns
//! [`QueueError::Config`] naming the feature to enable.
//!
//! # Example
//! ```
//! # #[cfg(feature = "memory")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_runtime::Result<()> {
//! use std::sync::Arc;
//! use queue_runtime::{
//!     json_handler, Message, Outcome, Processor, ProcessorSettings, QueueName,
//!     QueueProvider, QueueProviderExt, SessionId, SharedQueueProvider,
//! };
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(serde::Deserialize)]
//! struct Event { action: String }
//!
//! let provider: SharedQueueProvider = Arc::new(queue_runtime::memory::InMemoryProvider::new());
//! let queue = QueueName::new("events")?;
//! provider.create_queue(&queue, &Default::default()).await?;
//! let msg = Message::new(r#"{"action":"opened"}"#).with_session_id(SessionId::new("octo/repo#1")?);
//! provider.send(&queue, msg).await?;
//!
//! let shutdown = CancellationToken::new();
//! let stop = shutdown.clone();
//! let processor = Processor::new(provider, queue, json_handler(move |event: Event, _ctx| {
//!     let stop = stop.clone();
//!     async move {
//!         assert_eq!(event.action, "opened");
//!         stop.cancel(); // one message is all this example waits for
//!         Ok(Outcome::Complete)
//!     }
//! }))
//! .with_settings(ProcessorSettings::default().with_receive_wait(std::time::Duration::from_millis(50)));
//! let report = processor.run(shutdown).await?;
//! assert_eq!(report.completed, 1);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod config;
pub mod handler;
pub mod processor;
pub mod retry;
pub mod signal;
pub mod telemetry;

pub use queue_core::*;

pub use breaker::{CircuitBreaker, CircuitState};
pub use config::{
    CircuitBreakerSettings, ConfigFormat, ProcessorSettings, QueueRuntimeConfig, RetrySettings,
    SessionMode, build_bare_provider, build_provider,
};
pub use handler::{
    FnHandler, Handler, HandlerError, JsonHandler, MessageContext, Outcome, decode_json,
    handler_fn, json_handler,
};
pub use processor::{
    AttemptStore, FileAttemptStore, MemoryAttemptStore, Processor, ProcessorError, ProcessorHandle,
    ProcessorState, SHUTDOWN_GRACE, ShutdownReport,
};
pub use retry::RetryPolicy;
pub use signal::{shutdown_signal, shutdown_token};

/// The tokio-util cancellation token used for shutdown and handler cancellation.
pub use tokio_util::sync::CancellationToken;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use queue_memory as memory;

#[cfg(feature = "aws")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws")))]
pub use queue_aws as aws;

#[cfg(feature = "azure")]
#[cfg_attr(docsrs, doc(cfg(feature = "azure")))]
pub use queue_azure as azure;

/// The workspace README's Rust examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "memory"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "security")]
#[cfg_attr(docsrs, doc(cfg(feature = "security")))]
pub use queue_security as security;

#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub use queue_webhook as webhook;

#[cfg(feature = "claim-check")]
#[cfg_attr(docsrs, doc(cfg(feature = "claim-check")))]
pub use queue_claim_check as claim_check;
