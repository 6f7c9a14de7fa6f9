//! The in-memory provider of queue-runtime: the reference semantics, deterministic and fast.
//!
//! [`InMemoryProvider`] implements [`queue_core::QueueProvider`] with the behaviour every
//! provider must honour (the `queue-conformance` suite runs against it on every
//! `cargo test`). Use it in tests, demos and single-process deployments.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! use std::time::Duration;
//! use queue_core::{Message, QueueName, QueueProvider, QueueSpec, ReceiveOptions, SessionId,
//!     SessionSelector};
//! use queue_memory::InMemoryProvider;
//!
//! let provider = InMemoryProvider::new();
//! let queue = QueueName::new("pull-requests")?;
//! provider.create_queue(&queue, &QueueSpec::default().with_sessions(true)).await?;
//! let pr = SessionId::new("octo/repo#42")?;
//! for action in ["opened", "synchronize", "closed"] {
//!     provider.send(&queue, Message::new(action).with_session_id(pr.clone())).await?;
//! }
//! let session = provider
//!     .accept_session(&queue, SessionSelector::Next, Duration::from_secs(1))
//!     .await?
//!     .expect("a session with messages");
//! let batch = session.receive(ReceiveOptions::new(10, Duration::from_secs(1))).await?;
//! let bodies: Vec<_> = batch.iter().map(|m| m.body().clone()).collect();
//! assert_eq!(bodies, ["opened", "synchronize", "closed"]);
//! for m in &batch {
//!     session.complete(&m.receipt).await?;
//! }
//! session.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Semantics
//! - **Queues** must be created first ([`QueueProvider::create_queue`], idempotent: an
//!   existing queue keeps its spec) or with [`InMemoryBuilder::with_queue`]. Any
//!   other call on an unknown queue fails with [`QueueError::QueueNotFound`].
//! - **Peek-lock.** A receive locks each message for the queue's
//!   [`lock_duration`](queue_core::QueueSpec::lock_duration). When a lock expires the
//!   message is available again, its next delivery has `delivery_count + 1`, and the old
//!   receipt fails with [`QueueError::LockLost`]. `complete`, `abandon` (with an optional
//!   delay), `dead_letter` and `renew_lock` settle or extend a live lock.
//! - **Dead-lettering.** A message released (abandoned, lock expired, session closed)
//!   after [`max_delivery_count`](queue_core::QueueSpec::max_delivery_count) deliveries
//!   moves to the dead-letter queue with reason
//!   [`MAX_DELIVERY_COUNT_EXCEEDED`](queue_core::MAX_DELIVERY_COUNT_EXCEEDED).
//!   [`QueueProvider::receive_dead_letters`] reads it under a lock, with
//!   [`ReceivedMessage::dead_letter`](queue_core::ReceivedMessage::dead_letter) set;
//!   completing such a message removes it from the dead-letter queue.
//! - **Time to live** (the message's, else the queue's default) counts from when the
//!   message becomes visible. An expired message is dropped silently, as Service Bus does
//!   by default (dead-lettering on expiry is an opt-in there). A locked message does not
//!   expire until its lock is released.
//! - **Scheduled delivery.** A message with a `scheduled_enqueue_time` stays invisible
//!   until then.
//! - **Duplicate detection.** On a queue with a
//!   [`duplicate_detection_window`](queue_core::QueueSpec::duplicate_detection_window),
//!   sending a message whose id was sent within the window returns `Ok` with that id and
//!   stores nothing.
//! - **Sessions** ([`SessionSupport::Locked`](queue_core::SessionSupport::Locked)).
//!   Messages with a session id are only delivered through a session receiver; a plain
//!   receive returns session-less messages only. Accepting a session locks it for the
//!   queue's lock duration: a second accept of the same session fails with
//!   [`QueueError::SessionLocked`], and
//!   [`SessionSelector::Next`](queue_core::SessionSelector::Next) skips locked sessions
//!   and sessions with nothing available. Within a session delivery is strictly in send
//!   order, and an abandoned message comes again before later ones. Messages received
//!   through a session are locked by the session lock. When the session lock expires
//!   (or the receiver closes) its unsettled messages are released; another receiver may
//!   then accept the session, and the old receiver's calls fail with
//!   [`QueueError::SessionLockLost`]. Session state is kept per session. Unlike Service
//!   Bus, any queue accepts session messages; [`QueueSpec::with_sessions`] additionally
//!   *requires* a session id on every message. With the `sqs` [`Profile`] session ids
//!   are SQS FIFO message groups instead
//!   ([`SessionSupport::Grouped`](queue_core::SessionSupport::Grouped)): no session
//!   locks, group messages come in order through the plain receive, and a group is
//!   blocked while one of its messages is in flight.
//! - **Limits** come from a [`Profile`] (`memory`, `sqs`, `service-bus`). A message larger
//!   than the profile allows fails with [`QueueError::MessageTooLarge`] and nothing is
//!   stored; a batch with one such message stores none of them. A receive's
//!   `max_messages` is clamped to `1..=` the profile's batch size; `send_batch` takes any
//!   number of messages.
//! - **Receive with wait** returns as soon as at least one message is available, or an
//!   empty vector at the deadline, never an error. Waiting receivers sleep on a
//!   [`tokio::sync::Notify`] and on the queue's next deadline; they never poll.
//!
//! # Clock
//! All lock, TTL, schedule and duplicate-window arithmetic runs on tokio's clock
//! ([`tokio::time::Instant`]), so tests can run under
//! `#[tokio::test(start_paused = true)]` and move time with `tokio::time::advance`
//! (tokio feature `test-util`), or let tokio auto-advance while every task sleeps,
//! without real sleeping. The
//! provider therefore needs a tokio runtime with the time driver enabled. Wall-clock
//! values (`enqueued_at`, `locked_until`, `scheduled_enqueue_time`) are mapped through an
//! anchor: the [`SystemTime`](std::time::SystemTime) read when the provider was built plus
//! the tokio time elapsed since. Under a paused clock, compute scheduled times from
//! [`InMemoryProvider::now`] rather than `SystemTime::now()` (which keeps running).
//!
//! [`QueueProvider::create_queue`]: queue_core::QueueProvider::create_queue
//! [`QueueProvider::receive_dead_letters`]: queue_core::QueueProvider::receive_dead_letters
//! [`QueueError::QueueNotFound`]: queue_core::QueueError::QueueNotFound
//! [`QueueError::LockLost`]: queue_core::QueueError::LockLost
//! [`QueueError::SessionLocked`]: queue_core::QueueError::SessionLocked
//! [`QueueError::SessionLockLost`]: queue_core::QueueError::SessionLockLost
//! [`QueueError::MessageTooLarge`]: queue_core::QueueError::MessageTooLarge
//! [`QueueSpec::with_sessions`]: queue_core::QueueSpec::with_sessions
#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
mod ids;
mod profile;
mod provider;
mod session;
mod settings;
mod slab;
mod state;

pub use profile::{Limits, Profile};
pub use provider::{InMemoryBuilder, InMemoryProvider};
pub use settings::MemorySettings;
