//! AWS SQS provider for queue-runtime, on `aws-sdk-sqs` (rustls, no OpenSSL).
//!
//! ```no_run
//! use queue_aws::SqsProvider;
//! use queue_core::{Message, QueueName, QueueProvider, QueueProviderExt, SessionId};
//! use std::time::Duration;
//!
//! # async fn demo() -> queue_core::Result<()> {
//! let sqs = SqsProvider::builder()
//!     .with_region("us-east-1")
//!     .with_endpoint("http://127.0.0.1:5000") // a local emulator; omit for AWS
//!     .build()
//!     .await?;
//! let queue = QueueName::new("pull-requests.fifo")?;
//! sqs.check_access(&queue).await?;
//! sqs.send(&queue, Message::new("{}").with_session_id(SessionId::new("octo/repo#1")?))
//!     .await?;
//! if let Some(got) = sqs.receive_one(&queue, Duration::from_secs(5)).await? {
//!     sqs.complete(&got.receipt).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # How queue-runtime concepts map onto SQS
//!
//! | queue-runtime | SQS |
//! |---|---|
//! | session id | `MessageGroupId` (FIFO queues only: names ending in `.fifo`) |
//! | message id | `MessageDeduplicationId` on FIFO queues (5-minute window), and in the metadata attribute |
//! | lock / renew | visibility timeout / `ChangeMessageVisibility` with the queue's timeout |
//! | abandon (with delay) | `ChangeMessageVisibility` to 0 (or the delay, at most 12 hours) |
//! | complete | `DeleteMessage` |
//! | delivery count / enqueued at | `ApproximateReceiveCount` / `SentTimestamp` |
//! | attributes | message attributes of type `String`, at most [`MAX_APP_ATTRIBUTES`] (9) |
//! | content type, correlation id, message id, time to live | the reserved attribute [`META_ATTRIBUTE`] |
//! | scheduled delivery | `DelaySeconds` (standard queues, at most 15 minutes) |
//! | max delivery count, dead-letter queue | redrive policy (`maxReceiveCount`) to `<name>-dlq` / `<stem>-dlq.fifo` |
//!
//! **Attributes.** SQS allows 10 message attributes; queue-runtime uses one,
//! [`META_ATTRIBUTE`], for the message id, content type, correlation id, expiry, body
//! encoding and dead-letter reason, so 9 remain for the application. Attributes with an
//! empty value travel inside the metadata and do not count. More is
//! [`QueueError::InvalidMessage`](queue_core::QueueError::InvalidMessage), never a
//! silent loss; a name SQS would refuse is
//! [`QueueError::InvalidName`](queue_core::QueueError::InvalidName).
//!
//! **Size.** The limit (1 MiB, or the queue's smaller `MaximumMessageSize`) is checked
//! on what SQS counts, before sending: the body as sent plus every attribute's name,
//! type and value. Bodies that are not SQS text (binary, control characters) are sent
//! base64-encoded, which makes them a third larger.
//!
//! **Sessions.** SQS has no session lock: [`QueueProvider::accept_session`] is
//! unsupported and [`Capabilities::sessions`] is
//! [`SessionSupport::Grouped`](queue_core::SessionSupport::Grouped). On a FIFO queue a
//! plain receive returns each group's messages in order and holds back a group while
//! one of its messages is in flight, including while it waits for a retry (abandon
//! with a delay keeps the message in flight for the delay). Capabilities are per
//! provider, but SQS decides per queue: sessions and duplicate detection need a FIFO
//! queue, scheduled delivery a standard one; the other combination fails with a typed
//! error before anything is sent.
//!
//! **Dead letters.** The redrive policy moves a message after `maxReceiveCount`
//! receives (read back with reason
//! [`MAX_DELIVERY_COUNT_EXCEEDED`](queue_core::MAX_DELIVERY_COUNT_EXCEEDED)).
//! [`QueueProvider::dead_letter`] sends a copy with the reason to the dead-letter queue
//! and only then deletes the original, so a crash in between duplicates and never
//! loses; it needs the message as received by the same provider value (kept in memory
//! until settled). [`SqsProvider::redrive`] moves dead letters back, keeping per-group
//! order.
//!
//! **Receipts and locks.** SQS accepts a stale receipt handle for `DeleteMessage`: after
//! a redelivery, deleting with the first delivery's handle still deletes the message,
//! which another consumer may be working on. So the provider checks receipts itself: the
//! receipt carries its lock expiry (counted conservatively from a second before the
//! receive answer), the provider value remembers renewals and settlements of the
//! deliveries it handed out, and an expired or already settled receipt fails with
//! [`QueueError::LockLost`](queue_core::QueueError::LockLost) without calling SQS. A
//! renewal made through another provider value (another process) is not known here.
//! Locks are renewed to the queue's visibility timeout; the queue's settings (URL,
//! visibility timeout, maximum size, dead-letter queue) are cached per provider value
//! and refreshed by [`QueueProvider::check_access`](queue_core::QueueProvider::check_access).
//!
//! **Receiving.** A receive long-polls in whole seconds (`WaitTimeSeconds`, at most 20
//! per call, repeated for longer waits) and spends a sub-second rest of the wait in
//! short polls, so a 300 ms wait is not stretched to a second. At most 10 messages per
//! call. A message whose time to live ran out is deleted instead of delivered.
//!
//! **Batches.** [`QueueProvider::send_batch`](queue_core::QueueProvider::send_batch) and
//! [`SqsProvider::complete_batch`] go out in chunks of at most 10 entries (and, for
//! sends, at most the queue's maximum size in total); entries that fail, before sending
//! (validation) or at SQS, are reported by input index in
//! [`QueueError::PartialBatch`](queue_core::QueueError::PartialBatch) while the others
//! are sent.
//!
//! **Transport.** `https://` endpoints always; plain `http://` only to loopback hosts
//! (`localhost`, `127.0.0.0/8`, `[::1]`), also when the endpoint comes from
//! `AWS_ENDPOINT_URL(_SQS)` or a profile. Credentials come from the default chain
//! (environment, profiles, IAM roles for EC2/ECS/EKS, web identity; SSO profiles with
//! the `sso` feature) or from [`StaticCredentials`].
//!
//! [`Capabilities::sessions`]: queue_core::Capabilities::sessions
//! [`QueueProvider::accept_session`]: queue_core::QueueProvider::accept_session
//! [`QueueProvider::dead_letter`]: queue_core::QueueProvider::dead_letter
#![cfg_attr(docsrs, feature(doc_cfg))]

mod codec;
mod config;
mod error;
mod provider;

pub use codec::{MAX_APP_ATTRIBUTES, META_ATTRIBUTE};
pub use config::{DEFAULT_OPERATION_TIMEOUT, SqsConfig, StaticCredentials};
pub use provider::{MAX_BATCH, MAX_VISIBILITY, MAX_WAIT, SqsProvider, dlq_name};

/// The provider id used in errors, receipts and metrics.
pub const PROVIDER: &str = "sqs";
