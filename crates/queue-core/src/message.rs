//! Outgoing and received messages, and the opaque receipt used to settle them.

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, SystemTime},
};

use bytes::Bytes;

use crate::names::{MessageId, QueueName, SessionId, Text};

/// String attributes (application properties) carried next to the body.
pub type Attributes = BTreeMap<String, String>;

/// A message to send.
///
/// Built with [`Message::new`] and the `with_*` methods. Its `Debug` output shows the body
/// length and attribute names only, never the body or attribute values.
///
/// ```
/// use queue_core::{Message, SessionId};
/// let msg = Message::new("{\"action\":\"opened\"}")
///     .with_content_type("application/json")
///     .with_session_id(SessionId::new("octo/repo#42")?)
///     .with_attribute("event", "pull_request");
/// assert_eq!(msg.body.len(), 19);
/// # Ok::<(), queue_core::QueueError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The payload.
    pub body: Bytes,
    /// MIME type of the body, e.g. `application/json`.
    pub content_type: Option<String>,
    /// Application attributes.
    pub attributes: Attributes,
    /// The ordering key; messages with the same session id are delivered in order.
    pub session_id: Option<SessionId>,
    /// Correlation id, for tracing a flow across messages.
    pub correlation_id: Option<String>,
    /// A short label, often naming the event type (Service Bus `Subject`, formerly `Label`).
    pub subject: Option<String>,
    /// Message id, also used for duplicate detection. A random id is assigned if unset.
    pub message_id: Option<MessageId>,
    /// How long the message may wait in the queue before it expires.
    pub time_to_live: Option<Duration>,
    /// Do not deliver before this time.
    pub scheduled_enqueue_time: Option<SystemTime>,
}

impl Message {
    /// A message with `body` and nothing else set.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            content_type: None,
            attributes: Attributes::new(),
            session_id: None,
            correlation_id: None,
            subject: None,
            message_id: None,
            time_to_live: None,
            scheduled_enqueue_time: None,
        }
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds or replaces one attribute.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Sets the session id (ordering key).
    pub fn with_session_id(mut self, session_id: SessionId) -> Self {
        self.session_id = Some(session_id);
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Sets the subject (a short label such as the event type).
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the message id (and so the de-duplication id).
    pub fn with_message_id(mut self, message_id: MessageId) -> Self {
        self.message_id = Some(message_id);
        self
    }

    /// Sets the time to live.
    pub fn with_time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// Schedules delivery for `at`.
    pub fn with_scheduled_enqueue_time(mut self, at: SystemTime) -> Self {
        self.scheduled_enqueue_time = Some(at);
        self
    }

    /// Schedules delivery `delay` from now.
    pub fn with_delay(self, delay: Duration) -> Self {
        self.with_scheduled_enqueue_time(SystemTime::now() + delay)
    }

    /// A provider-neutral size estimate: body plus content type, subject, ids and attributes.
    ///
    /// Providers compare their own encoded size against their limit; this estimate is what
    /// the in-memory provider and pre-send checks use.
    #[inline]
    pub fn encoded_size(&self) -> usize {
        self.body.len()
            + self.content_type.as_deref().map_or(0, str::len)
            + self.correlation_id.as_deref().map_or(0, str::len)
            + self.subject.as_deref().map_or(0, str::len)
            + self.session_id.as_ref().map_or(0, SessionId::len)
            + self.message_id.as_ref().map_or(0, MessageId::len)
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("body_len", &self.body.len())
            .field("content_type", &self.content_type)
            .field(
                "attribute_names",
                &self.attributes.keys().collect::<Vec<_>>(),
            )
            .field("session_id", &self.session_id)
            .field("correlation_id", &self.correlation_id)
            .field("subject", &self.subject)
            .field("message_id", &self.message_id)
            .field("time_to_live", &self.time_to_live)
            .field("scheduled_enqueue_time", &self.scheduled_enqueue_time)
            .finish()
    }
}

/// An opaque handle that settles one delivery of one message.
///
/// Providers create receipts; applications only pass them back. A receipt is tied to one
/// delivery: after the lock expires or the message is settled it is no longer valid.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Receipt {
    provider: &'static str,
    queue: QueueName,
    session: Option<SessionId>,
    token: Text<INLINE_TOKEN>,
}

/// Longest receipt token kept inline (no allocation), such as the in-memory provider's
/// 16 characters; longer ones (SQS receipt handles, Service Bus lock tokens) are shared.
const INLINE_TOKEN: usize = 24;

impl Receipt {
    /// For provider implementations: wraps a provider-specific `token` (a copy of it).
    pub fn new(
        provider: &'static str,
        queue: QueueName,
        session: Option<SessionId>,
        token: impl AsRef<str>,
    ) -> Self {
        Self {
            provider,
            queue,
            session,
            token: Text::new(token.as_ref()),
        }
    }

    /// Id of the provider that issued the receipt.
    #[inline]
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// The queue the message was received from (a dead-letter receipt names the main queue).
    #[inline]
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The session the message was received through, if any.
    #[inline]
    pub fn session(&self) -> Option<&SessionId> {
        self.session.as_ref()
    }

    /// For provider implementations: the provider-specific token.
    #[inline]
    pub fn token(&self) -> &str {
        self.token.as_str()
    }

    /// For provider implementations: the token's bytes (UTF-8), without the check that
    /// [`token`](Self::token) makes of a short token kept inline.
    #[inline]
    pub fn token_bytes(&self) -> &[u8] {
        self.token.as_bytes()
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token grants settlement rights; keep it out of logs.
        f.debug_struct("Receipt")
            .field("provider", &self.provider)
            .field("queue", &self.queue)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Why a message was dead-lettered, as stored with it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterReason {
    /// A short machine-readable reason, e.g. `MaxDeliveryCountExceeded`.
    pub reason: String,
    /// A human-readable description (must not contain secrets or body text).
    pub description: String,
}

impl DeadLetterReason {
    /// Creates a reason.
    pub fn new(reason: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            description: description.into(),
        }
    }
}

/// Reason used by providers that dead-letter automatically after too many deliveries.
pub const MAX_DELIVERY_COUNT_EXCEEDED: &str = "MaxDeliveryCountExceeded";
/// Reason used when a message's time to live ran out (where the provider dead-letters it).
pub const TTL_EXPIRED: &str = "TTLExpiredException";

/// A message delivered under a lock.
#[derive(Clone)]
#[non_exhaustive]
pub struct ReceivedMessage {
    /// The message as sent (message id always set).
    pub message: Message,
    /// The message id (also in `message.message_id`).
    pub message_id: MessageId,
    /// How many times this message has been delivered, this delivery included (starts at 1).
    pub delivery_count: u32,
    /// When the broker accepted the message.
    pub enqueued_at: SystemTime,
    /// Until when this delivery's lock holds, if the provider reports it.
    pub locked_until: Option<SystemTime>,
    /// Broker-assigned sequence number, where the provider has one.
    pub sequence_number: Option<i64>,
    /// Broker-assigned id of this broker message (SQS `MessageId`), where the provider
    /// has one distinct from [`message_id`](Self::message_id). The same across
    /// redeliveries; a copy sent again gets a new one.
    pub broker_message_id: Option<String>,
    /// Dead-letter reason, for messages read from a dead-letter queue.
    pub dead_letter: Option<DeadLetterReason>,
    /// The handle that settles this delivery.
    pub receipt: Receipt,
}

impl ReceivedMessage {
    /// For provider implementations: assembles a received message.
    #[inline]
    pub fn new(
        message: Message,
        message_id: MessageId,
        delivery_count: u32,
        enqueued_at: SystemTime,
        receipt: Receipt,
    ) -> Self {
        Self {
            message,
            message_id,
            delivery_count,
            enqueued_at,
            locked_until: None,
            sequence_number: None,
            broker_message_id: None,
            dead_letter: None,
            receipt,
        }
    }

    /// Sets the lock expiry.
    #[inline]
    pub fn with_locked_until(mut self, at: SystemTime) -> Self {
        self.locked_until = Some(at);
        self
    }

    /// Sets the sequence number.
    #[inline]
    pub fn with_sequence_number(mut self, seq: i64) -> Self {
        self.sequence_number = Some(seq);
        self
    }

    /// Sets the broker-assigned message id.
    pub fn with_broker_message_id(mut self, id: impl Into<String>) -> Self {
        self.broker_message_id = Some(id.into());
        self
    }

    /// Sets the dead-letter reason.
    pub fn with_dead_letter(mut self, reason: DeadLetterReason) -> Self {
        self.dead_letter = Some(reason);
        self
    }

    /// The body.
    #[inline]
    pub fn body(&self) -> &Bytes {
        &self.message.body
    }

    /// The session id, if any.
    #[inline]
    pub fn session_id(&self) -> Option<&SessionId> {
        self.message.session_id.as_ref()
    }
}

impl fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("message", &self.message)
            .field("delivery_count", &self.delivery_count)
            .field("enqueued_at", &self.enqueued_at)
            .field("locked_until", &self.locked_until)
            .field("sequence_number", &self.sequence_number)
            .field("broker_message_id", &self.broker_message_id)
            .field("dead_letter", &self.dead_letter)
            .field("receipt", &self.receipt)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_body_or_attribute_values() {
        let canary = "CANARY-body-7f3a";
        let msg = Message::new(canary.to_string()).with_attribute("token", "CANARY-attr-91bc");
        let text = format!("{msg:?}");
        assert!(!text.contains("CANARY"), "{text}");
        assert!(text.contains("token"), "attribute names are fine: {text}");
        let receipt = Receipt::new(
            "memory",
            QueueName::new("q").unwrap(),
            None,
            "CANARY-receipt",
        );
        let rm = ReceivedMessage::new(msg, MessageId::random(), 1, SystemTime::now(), receipt);
        let text = format!("{rm:?}");
        assert!(!text.contains("CANARY"), "{text}");
    }

    #[test]
    fn receipt_tokens_keep_their_text_inline_or_not() {
        let q = QueueName::new("q").unwrap();
        for token in [
            "t",
            "ABCDEFGHabcdefgh",
            &"x".repeat(24),
            &"x".repeat(25),
            &"h".repeat(900),
        ] {
            let a = Receipt::new("p", q.clone(), None, token);
            // Callers pass a `&str`, a `String` or an `Arc<str>`.
            #[expect(clippy::unnecessary_to_owned, reason = "a `String` argument compiles")]
            let b = Receipt::new("p", q.clone(), None, token.to_owned());
            let c = Receipt::new("p", q.clone(), None, std::sync::Arc::<str>::from(token));
            assert_eq!(a.token(), token);
            assert_eq!(a.token_bytes(), token.as_bytes());
            assert!(a == b && b == c);
            assert_ne!(a, Receipt::new("p", q.clone(), None, format!("{token}!")));
        }
    }

    #[test]
    fn encoded_size_counts_body_and_metadata() {
        let m = Message::new(vec![0u8; 10]).with_attribute("ab", "cd");
        assert_eq!(m.encoded_size(), 14);
        let m = m.with_subject("push");
        assert_eq!(m.encoded_size(), 18);
    }

    #[test]
    fn subject_is_shown_in_debug() {
        let msg = Message::new("b").with_subject("pull_request.opened");
        assert_eq!(msg.subject.as_deref(), Some("pull_request.opened"));
        let text = format!("{msg:?}");
        assert!(text.contains("pull_request.opened"), "{text}");
    }
}
