//! What the application writes: a [`Handler`] returning an [`Outcome`].
//!
//! Closures become handlers with [`handler_fn`] (raw message) or [`json_handler`] (decoded
//! body); a type implements [`Handler`] when it carries state. Each outcome settles the
//! message differently, and an `Err` is a failure the retry policy deals with:
//!
//! ```
//! use std::time::Duration;
//! use queue_runtime::{Handler, HandlerError, MessageContext, Outcome, ReceivedMessage};
//!
//! struct Labeler;
//!
//! #[async_trait::async_trait]
//! impl Handler for Labeler {
//!     async fn handle(
//!         &self,
//!         message: ReceivedMessage,
//!         ctx: MessageContext,
//!     ) -> Result<Outcome, HandlerError> {
//!         match ctx.attributes().get("github-event").map(String::as_str) {
//!             Some("pull_request") if message.body().is_empty() => {
//!                 // Never retried: moved to the dead-letter queue with this reason.
//!                 Ok(Outcome::dead_letter("EmptyPayload", "pull_request without a body"))
//!             }
//!             // Done: the message is removed.
//!             Some("pull_request") => Ok(Outcome::Complete),
//!             // Redelivered after 30 s, within the attempt budget.
//!             Some("check_run") => Ok(Outcome::retry_after(Duration::from_secs(30), "CI busy")),
//!             // Transient errors are retried with backoff; permanent ones dead-lettered.
//!             Some(_) => Err(HandlerError::transient("GitHub API unavailable")),
//!             None => Err(HandlerError::permanent("no github-event attribute")),
//!         }
//!     }
//! }
//! # let _: Box<dyn Handler> = Box::new(Labeler);
//! ```

use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use queue_core::{Attributes, MessageId, QueueName, ReceivedMessage, SessionId};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Dead-letter reasons the runtime itself uses (bounded; also metric labels).
pub mod reasons {
    /// The handler already ran `retry.max_attempts` times without settling the message (the
    /// process stopped or the lock was lost during its last run); it is not run again.
    pub const MAX_ATTEMPTS_EXCEEDED: &str = "MaxAttemptsExceeded";
    /// The handler kept failing (error, panic or retry outcome) until attempts ran out.
    pub const RETRIES_EXHAUSTED: &str = "RetriesExhausted";
    /// The handler reported a permanent failure.
    pub const PERMANENT_FAILURE: &str = "PermanentFailure";
    /// The body could not be decoded into the handler's message type.
    pub const UNDECODABLE_BODY: &str = "UndecodableBody";
    /// Label for dead-letter reasons chosen by the handler (free text is not a label).
    pub const HANDLER: &str = "HandlerDeadLettered";

    /// The bounded metric label for a dead-letter reason: the runtime's own reasons keep
    /// their name, anything else a handler chose becomes [`HANDLER`].
    pub fn label(reason: &str) -> &'static str {
        [
            MAX_ATTEMPTS_EXCEEDED,
            RETRIES_EXHAUSTED,
            PERMANENT_FAILURE,
            UNDECODABLE_BODY,
        ]
        .into_iter()
        .find(|known| *known == reason)
        .unwrap_or(HANDLER)
    }
}

/// What to do with a message after the handler ran.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: remove the message.
    Complete,
    /// Deliver it again, after `delay` if given (otherwise the retry policy's backoff).
    /// Once attempts run out the message is dead-lettered.
    Retry {
        /// Delay before redelivery.
        delay: Option<Duration>,
        /// Why (logged, and the dead-letter description if attempts run out). No secrets.
        reason: String,
    },
    /// Never retry: move to the dead-letter queue.
    DeadLetter {
        /// Short machine-readable reason.
        reason: String,
        /// Human-readable description. No secrets, no body text.
        description: String,
    },
}

impl Outcome {
    /// [`Outcome::Complete`].
    pub fn complete() -> Self {
        Self::Complete
    }

    /// Retry with the policy's backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            delay: None,
            reason: reason.into(),
        }
    }

    /// Retry after `delay`.
    pub fn retry_after(delay: Duration, reason: impl Into<String>) -> Self {
        Self::Retry {
            delay: Some(delay),
            reason: reason.into(),
        }
    }

    /// Dead-letter with `reason` and `description`.
    pub fn dead_letter(reason: impl Into<String>, description: impl Into<String>) -> Self {
        Self::DeadLetter {
            reason: reason.into(),
            description: description.into(),
        }
    }
}

/// A handler failure. Transient failures are retried with backoff; permanent ones are
/// dead-lettered at once.
///
/// Any `std::error::Error` converts into a transient `HandlerError` with `?`; its `Display`
/// text becomes the retry reason, so keep secrets and body text out of your error messages.
#[derive(Debug)]
pub struct HandlerError {
    message: String,
    permanent: bool,
}

impl HandlerError {
    /// A failure that may succeed on a later delivery.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that will not go away: dead-letter the message.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }

    /// Whether this failure is permanent.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(err: E) -> Self {
        Self::transient(err.to_string())
    }
}

/// What a handler knows about the delivery besides the message itself.
#[derive(Clone)]
pub struct MessageContext {
    pub(crate) queue: QueueName,
    pub(crate) message_id: MessageId,
    pub(crate) session_id: Option<SessionId>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) attributes: Attributes,
    pub(crate) delivery_count: u32,
    pub(crate) attempt: u32,
    pub(crate) enqueued_at: SystemTime,
    pub(crate) cancellation: Arc<RunCancel>,
}

/// A handler run's cancellation. Its [`CancellationToken`] is made only when the handler
/// asks for it (issue 18: most handlers never do, and a token is an allocation with a lock
/// and a tree node).
#[derive(Default)]
pub(crate) struct RunCancel {
    cancelled: AtomicBool,
    token: OnceLock<CancellationToken>,
}

impl RunCancel {
    /// Cancels the run: sets the flag, then cancels the token if one was made.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(token) = self.token.get() {
            token.cancel();
        }
    }

    fn token(&self) -> &CancellationToken {
        let token = self.token.get_or_init(CancellationToken::new);
        // Cancelled while the token was being made, `cancel` may have found none: the flag,
        // set before `cancel` looked, is seen here.
        if self.cancelled.load(Ordering::SeqCst) {
            token.cancel();
        }
        token
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

impl MessageContext {
    pub(crate) fn new(
        queue: QueueName,
        msg: &ReceivedMessage,
        attempt: u32,
        cancellation: Arc<RunCancel>,
    ) -> Self {
        Self {
            queue,
            message_id: msg.message_id.clone(),
            session_id: msg.session_id().cloned(),
            correlation_id: msg.message.correlation_id.clone(),
            attributes: msg.message.attributes.clone(),
            delivery_count: msg.delivery_count,
            attempt,
            enqueued_at: msg.enqueued_at,
            cancellation,
        }
    }

    /// The queue.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }
    /// The message id.
    pub fn message_id(&self) -> &MessageId {
        &self.message_id
    }
    /// The session (ordering key), if any.
    pub fn session_id(&self) -> Option<&SessionId> {
        self.session_id.as_ref()
    }
    /// The correlation id, if any.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }
    /// The message attributes.
    pub fn attributes(&self) -> &Attributes {
        &self.attributes
    }
    /// This delivery's number, starting at 1, as the broker counts it: deliveries whose
    /// handler never ran (buffered when a process died, released to keep order) included.
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }
    /// Which handler run of this message this is, starting at 1, counted in the processor's
    /// [`AttemptStore`](crate::AttemptStore): runs retried in process and runs on earlier
    /// deliveries included, deliveries whose handler never ran excluded. Retry limits apply
    /// to this number.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// When the broker accepted the message.
    pub fn enqueued_at(&self) -> SystemTime {
        self.enqueued_at
    }
    /// Fires when the handler should stop: the lock is lost, lock renewal reached
    /// `max_lock_renewal`, or the shutdown deadline passed. Whatever the handler returns
    /// after that may not be settled.
    pub fn cancellation(&self) -> &CancellationToken {
        self.cancellation.token()
    }
    /// Shorthand for `cancellation().is_cancelled()` (without making the token).
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }
}

impl fmt::Debug for MessageContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageContext")
            .field("queue", &self.queue)
            .field("message_id", &self.message_id)
            .field("session_id", &self.session_id)
            .field("delivery_count", &self.delivery_count)
            .field("attempt", &self.attempt)
            .field("cancelled", &self.cancellation.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Handles one message. Implement it, or use [`handler_fn`] / [`json_handler`].
///
/// A panic in the handler is caught and counts as a transient failure (the message is
/// retried); the consumer keeps running.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Processes `message` and says what to do with it.
    async fn handle(
        &self,
        message: ReceivedMessage,
        ctx: MessageContext,
    ) -> Result<Outcome, HandlerError>;
}

/// A [`Handler`] from an async closure taking the raw message; see [`handler_fn`].
pub struct FnHandler<F> {
    f: F,
}

impl<F> fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnHandler")
    }
}

/// Wraps `f(message, ctx) -> Future<Output = Result<Outcome, HandlerError>>` as a handler.
///
/// ```
/// use queue_runtime::{handler_fn, Outcome};
/// let handler = handler_fn(|msg, _ctx| async move {
///     let _bytes = msg.body().len();
///     Ok(Outcome::Complete)
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(ReceivedMessage, MessageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
{
    FnHandler { f }
}

// Written out rather than through `#[async_trait]`: the boxed future is then the closure's
// own future, not one wrapping it and holding the message and context a second time.
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(ReceivedMessage, MessageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
{
    fn handle<'life0, 'async_trait>(
        &'life0 self,
        message: ReceivedMessage,
        ctx: MessageContext,
    ) -> Pin<Box<dyn Future<Output = Result<Outcome, HandlerError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin((self.f)(message, ctx))
    }
}

/// A [`Handler`] that decodes a JSON body into `T` first; see [`json_handler`].
pub struct JsonHandler<T, F> {
    f: F,
    _t: PhantomData<fn() -> T>,
}

impl<T, F> fmt::Debug for JsonHandler<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonHandler")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

/// Wraps `f(value: T, ctx)` as a handler of JSON messages. A body that does not decode into
/// `T` is dead-lettered with reason [`reasons::UNDECODABLE_BODY`] and a description that
/// names the type and the position of the error, never the body text.
///
/// ```
/// use queue_runtime::{json_handler, Outcome};
/// #[derive(serde::Deserialize)]
/// struct Event { action: String }
/// let handler = json_handler(|event: Event, _ctx| async move {
///     assert!(!event.action.is_empty());
///     Ok(Outcome::Complete)
/// });
/// # let _ = handler;
/// ```
pub fn json_handler<T, F, Fut>(f: F) -> JsonHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, MessageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
{
    JsonHandler { f, _t: PhantomData }
}

/// Decodes a JSON body into `T`, with an error description free of body text.
pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "data does not match the type",
            serde_json::error::Category::Eof => "unexpected end of input",
        };
        format!(
            "body is not a JSON `{}`: {kind} at line {} column {}",
            std::any::type_name::<T>(),
            e.line(),
            e.column()
        )
    })
}

#[async_trait]
impl<T, F, Fut> Handler for JsonHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, MessageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
{
    async fn handle(
        &self,
        message: ReceivedMessage,
        ctx: MessageContext,
    ) -> Result<Outcome, HandlerError> {
        match decode_json::<T>(message.body()) {
            Ok(value) => (self.f)(value, ctx).await,
            Err(description) => Ok(Outcome::dead_letter(reasons::UNDECODABLE_BODY, description)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_token_is_made_on_demand_and_sees_an_earlier_cancel() {
        let early = RunCancel::default();
        early.cancel();
        assert!(early.is_cancelled());
        assert!(
            early.token().is_cancelled(),
            "made after the cancel, still cancelled"
        );
        let late = RunCancel::default();
        let token = late.token().clone();
        assert!(!token.is_cancelled() && !late.is_cancelled());
        late.cancel();
        assert!(token.is_cancelled() && late.is_cancelled());
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Event {
        number: u32,
    }

    #[test]
    fn decode_errors_never_quote_the_body() {
        let canary = "CANARY-json-body-77";
        for body in [
            format!("{{\"number\":\"{canary}\"}}"),
            format!("{{\"{canary}\":1}}"),
            format!("not json {canary}"),
            format!("{{\"number\":1,\"x\":\"{canary}"),
        ] {
            let err = decode_json::<Event>(body.as_bytes()).unwrap_err();
            assert!(!err.contains(canary), "{err}");
            assert!(err.contains("Event"), "{err}");
        }
        assert_eq!(decode_json::<Event>(b"{\"number\":7}").unwrap().number, 7);
    }

    #[test]
    fn errors_convert_to_transient() {
        fn fails() -> Result<(), HandlerError> {
            let _: u8 = "300".parse()?;
            Ok(())
        }
        let err = fails().unwrap_err();
        assert!(!err.is_permanent());
        assert!(HandlerError::permanent("bad").is_permanent());
    }
}
