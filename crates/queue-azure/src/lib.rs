//! Azure Service Bus provider for queue-runtime, speaking AMQP 1.0 with sessions.
//!
//! [`ServiceBusProvider`] implements [`queue_core::QueueProvider`] over one AMQP
//! connection per provider (TLS with certificate validation; plain AMQP only for a
//! loopback development emulator), with links attached lazily and re-attached after a
//! reconnect. Authorization uses `$cbs` put-token: SAS tokens generated from a shared key
//! and refreshed before they expire, a ready-made SAS token, or a Microsoft Entra ID
//! [`TokenCredential`]. Lock renewal, settlement fallbacks, session locks and session state
//! use the `$management` node, as the official SDKs do.
//!
//! ```no_run
//! # async fn run() -> queue_core::Result<()> {
//! use std::time::Duration;
//! use queue_azure::ServiceBusProvider;
//! use queue_core::{QueueName, QueueProvider, SessionSelector};
//!
//! let provider = ServiceBusProvider::builder()
//!     .with_connection_string("Endpoint=sb://localhost:5672;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true")
//!     .build()?;
//! let queue = QueueName::new("orders")?;
//! if let Some(session) = provider
//!     .accept_session(&queue, SessionSelector::Next, Duration::from_secs(5))
//!     .await?
//! {
//!     for msg in session.receive(Default::default()).await? {
//!         session.complete(&msg.receipt).await?;
//!     }
//!     session.close().await?;
//! }
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod amqp;
mod config;
mod convert;
mod credential;
mod error;
mod provider;
mod session;

pub use config::{ConnectionString, Credential, ServiceBusConfig, ServiceBusConfigBuilder};
pub use credential::{AccessToken, SERVICE_BUS_SCOPE, TokenCredential};
pub use provider::{ServiceBusProvider, ServiceBusProviderBuilder};
