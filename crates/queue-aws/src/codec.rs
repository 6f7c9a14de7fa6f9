//! How a [`Message`] is laid out on SQS, and read back.
//!
//! * Body: sent as is when it is non-empty text SQS accepts (XML 1.0 characters);
//!   otherwise base64 (binary bodies, control characters) or a placeholder (empty body),
//!   flagged in the metadata attribute.
//! * Application attributes: one SQS message attribute each, data type `String`. An
//!   attribute with an empty value (which SQS rejects) is carried by name in the metadata.
//! * Metadata: one reserved attribute, [`META_ATTRIBUTE`], holding compact JSON with the
//!   message id, content type, correlation id, subject, expiry, body encoding and, in a
//!   dead-letter queue, the dead-letter reason and description. So a message may carry
//!   at most [`MAX_APP_ATTRIBUTES`] (9) application attributes with non-empty values (a
//!   signature is one of them), reported as `Capabilities::max_attributes`.
//! * Session id: `MessageGroupId` (FIFO only). Message id: also the
//!   `MessageDeduplicationId` on FIFO queues.
//! * Schedule: `DelaySeconds` (standard queues, at most 15 minutes).

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine as _;
use queue_core::{
    Attributes, DeadLetterReason, MAX_DELIVERY_COUNT_EXCEEDED, Message, MessageId, NameKind,
    ORIGINAL_MESSAGE_ID_ATTRIBUTE, QueueError, QueueName, Result, SessionId,
};
use serde::{Deserialize, Serialize};

use crate::PROVIDER;

/// Largest SQS message: body plus attribute names, types and values.
pub(crate) const MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// SQS's limit on message attributes per message.
pub(crate) const MAX_SQS_ATTRIBUTES: usize = 10;
/// Application attributes per message: the SQS limit minus [`META_ATTRIBUTE`].
pub const MAX_APP_ATTRIBUTES: usize = MAX_SQS_ATTRIBUTES - 1;
/// The message attribute queue-runtime reserves for its metadata.
pub const META_ATTRIBUTE: &str = "queue-runtime";
/// Longest `DelaySeconds`.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Longest dead-letter reason and description stored with a message.
const MAX_REASON_LEN: usize = 256;
const MAX_DESCRIPTION_LEN: usize = 1024;
const STRING: &str = "String";

/// The metadata attribute's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ct: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) corr: Option<String>,
    /// Subject (a short label such as the event type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sub: Option<String>,
    /// Expiry, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) exp: Option<u64>,
    /// Body encoding: absent (text), `b64` or `empty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) enc: Option<String>,
    /// Attributes whose value is the empty string.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) empty: Vec<String>,
    /// Dead-letter reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dlr: Option<String>,
    /// Dead-letter description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dld: Option<String>,
    /// The id a redriven message had before its first redrive (the attribute
    /// [`ORIGINAL_MESSAGE_ID_ATTRIBUTE`], kept here so it costs no SQS attribute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) oid: Option<String>,
}

/// What a queue accepts, as far as encoding cares.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) fifo: bool,
    pub(crate) max_size: usize,
    /// Leave the de-duplication id unset when the message has no id (content-based).
    pub(crate) content_dedup: bool,
}

/// A message ready for `SendMessage` / a batch entry.
#[derive(Clone, Debug)]
pub(crate) struct Encoded {
    pub(crate) body: String,
    pub(crate) attributes: HashMap<String, MessageAttributeValue>,
    pub(crate) group_id: Option<String>,
    pub(crate) dedup_id: Option<String>,
    pub(crate) delay_seconds: Option<i32>,
    pub(crate) message_id: MessageId,
    pub(crate) size: usize,
}

fn invalid(reason: impl Into<String>) -> QueueError {
    QueueError::InvalidMessage {
        provider: PROVIDER,
        reason: reason.into(),
    }
}

/// Whether SQS accepts `s` as body or attribute text (XML 1.0 characters).
pub(crate) fn sqs_text_ok(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
    })
}

/// Checks an application attribute name against SQS's rules and the reserved name.
pub(crate) fn validate_attribute_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(QueueError::InvalidName {
            kind: NameKind::Attribute,
            reason: format!("`{name}` {reason}"),
        })
    };
    if name.is_empty() || name.len() > 256 {
        return bad("must be 1 to 256 characters long on SQS");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return bad("may only contain ASCII letters, digits, `_`, `-` and `.` on SQS");
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return bad("must not start or end with `.` or contain `..` on SQS");
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("aws.") || lower.starts_with("amazon.") {
        return bad("must not start with `AWS.` or `Amazon.` (reserved by SQS)");
    }
    if lower == META_ATTRIBUTE {
        return bad("is reserved by queue-runtime for its metadata");
    }
    Ok(())
}

fn string_attr(value: impl Into<String>) -> Result<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type(STRING)
        .string_value(value)
        .build()
        .map_err(|e| invalid(format!("cannot build a message attribute: {e}")))
}

/// SQS's size of a message: body plus every attribute's name, data type and value.
pub(crate) fn sqs_size(body: &str, attributes: &HashMap<String, MessageAttributeValue>) -> usize {
    body.len()
        + attributes
            .iter()
            .map(|(name, v)| {
                name.len()
                    + v.data_type().len()
                    + v.string_value().map_or(0, str::len)
                    + v.binary_value().map_or(0, |b| b.as_ref().len())
            })
            .sum::<usize>()
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Lays out `msg` for `queue`.
pub(crate) fn encode(
    msg: Message,
    queue: &QueueName,
    limits: Limits,
    now: SystemTime,
) -> Result<Encoded> {
    // Ordering key and schedule first: they depend on the queue type.
    let group_id = group_id(&msg, queue, limits)?;
    let delay_seconds = delay_seconds(&msg, limits, now)?;
    let given_id = msg.message_id.clone();
    let message_id = given_id.clone().unwrap_or_else(MessageId::random);
    let dedup_id = match (limits.fifo, &given_id, limits.content_dedup) {
        (false, _, _) => None,
        (true, Some(id), _) => Some(id.as_str().to_owned()),
        (true, None, true) => None,
        (true, None, false) => Some(message_id.as_str().to_owned()),
    };
    let mut meta = Meta {
        id: Some(message_id.as_str().to_owned()),
        ct: msg.content_type.clone(),
        corr: msg.correlation_id.clone(),
        sub: msg.subject.clone(),
        exp: msg.time_to_live.map(|ttl| unix_millis(now + ttl)),
        ..Meta::default()
    };
    let mut attributes = app_attributes(&msg, &mut meta)?;
    let body = body_text(&msg, &mut meta);
    let meta_text = serde_json::to_string(&meta)
        .map_err(|e| invalid(format!("cannot encode message metadata: {e}")))?;
    if !sqs_text_ok(&meta_text) {
        return Err(invalid(
            "the content type, correlation id or subject has characters SQS does not accept",
        ));
    }
    attributes.insert(META_ATTRIBUTE.to_owned(), string_attr(meta_text)?);
    let size = sqs_size(&body, &attributes);
    if size > limits.max_size {
        return Err(QueueError::MessageTooLarge {
            provider: PROVIDER,
            queue: queue.as_str().to_owned(),
            size,
            max: limits.max_size,
        });
    }
    Ok(Encoded {
        body,
        attributes,
        group_id,
        dedup_id,
        delay_seconds,
        message_id,
        size,
    })
}

/// `MessageGroupId`: the session id, required on FIFO queues and refused elsewhere.
fn group_id(msg: &Message, queue: &QueueName, limits: Limits) -> Result<Option<String>> {
    match (&msg.session_id, limits.fifo) {
        (Some(s), true) => Ok(Some(s.as_str().to_owned())),
        (None, false) => Ok(None),
        (Some(_), false) => Err(invalid(format!(
            "a session id needs a FIFO queue (a name ending in `.fifo`); `{queue}` is a standard SQS queue"
        ))),
        (None, true) => Err(invalid(format!(
            "FIFO queue `{queue}` needs a session id (MessageGroupId) on every message"
        ))),
    }
}

/// `DelaySeconds` for a scheduled message (standard queues, at most 15 minutes).
fn delay_seconds(msg: &Message, limits: Limits, now: SystemTime) -> Result<Option<i32>> {
    let Some(at) = msg.scheduled_enqueue_time else {
        return Ok(None);
    };
    let d = match at.duration_since(now) {
        Ok(d) if !d.is_zero() => d,
        _ => return Ok(None),
    };
    if limits.fifo {
        return Err(QueueError::unsupported(
            PROVIDER,
            "scheduled delivery on a FIFO queue (SQS FIFO has no per-message delay)",
        ));
    }
    // Round up: never deliver before the scheduled time.
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if secs > MAX_DELAY.as_secs() {
        return Err(invalid(format!(
            "scheduled {secs} s ahead; SQS delays messages by at most {} s (15 minutes)",
            MAX_DELAY.as_secs()
        )));
    }
    Ok(Some(i32::try_from(secs).unwrap_or(i32::MAX)))
}

/// Application attributes as SQS `String` attributes; empty values and a redrive's
/// original id go into the metadata instead.
fn app_attributes(
    msg: &Message,
    meta: &mut Meta,
) -> Result<HashMap<String, MessageAttributeValue>> {
    let mut attributes = HashMap::with_capacity(msg.attributes.len() + 1);
    for (name, value) in &msg.attributes {
        if name == ORIGINAL_MESSAGE_ID_ATTRIBUTE {
            meta.oid = Some(value.clone());
            continue;
        }
        validate_attribute_name(name)?;
        if value.is_empty() {
            meta.empty.push(name.clone());
            continue;
        }
        if !sqs_text_ok(value) {
            return Err(invalid(format!(
                "attribute `{name}` has characters SQS does not accept (only XML 1.0 characters)"
            )));
        }
        attributes.insert(name.clone(), string_attr(value.as_str())?);
    }
    if attributes.len() > MAX_APP_ATTRIBUTES {
        return Err(invalid(format!(
            "{} attributes with values; SQS allows {MAX_SQS_ATTRIBUTES} per message and queue-runtime uses one (`{META_ATTRIBUTE}`), so at most {MAX_APP_ATTRIBUTES} remain",
            attributes.len()
        )));
    }
    Ok(attributes)
}

/// The body as SQS text: as is, base64 (flagged) or a placeholder for an empty body.
fn body_text(msg: &Message, meta: &mut Meta) -> String {
    match std::str::from_utf8(&msg.body) {
        Ok(text) if !text.is_empty() && sqs_text_ok(text) => text.to_owned(),
        Ok("") => {
            meta.enc = Some("empty".to_owned());
            "-".to_owned()
        }
        _ => {
            meta.enc = Some("b64".to_owned());
            base64::engine::general_purpose::STANDARD.encode(&msg.body)
        }
    }
}

/// Reads the metadata attribute; a message from another producer has none.
pub(crate) fn read_meta(attributes: Option<&HashMap<String, MessageAttributeValue>>) -> Meta {
    attributes
        .and_then(|a| a.get(META_ATTRIBUTE))
        .and_then(|v| v.string_value())
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// Rewrites the metadata attribute in place.
pub(crate) fn write_meta(
    attributes: &mut HashMap<String, MessageAttributeValue>,
    meta: &Meta,
) -> Result<()> {
    let text = serde_json::to_string(meta)
        .map_err(|e| invalid(format!("cannot encode message metadata: {e}")))?;
    attributes.insert(META_ATTRIBUTE.to_owned(), string_attr(text)?);
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Adds a dead-letter reason to a message's attributes, fitting `max_size`.
///
/// The description is dropped first, then the reason shortened, if the message would
/// otherwise not fit.
pub(crate) fn add_dead_letter_reason(
    body: &str,
    attributes: &mut HashMap<String, MessageAttributeValue>,
    reason: &DeadLetterReason,
    max_size: usize,
) -> Result<()> {
    let mut meta = read_meta(Some(attributes));
    let reason_text = truncate(&reason.reason, MAX_REASON_LEN);
    let description = truncate(&reason.description, MAX_DESCRIPTION_LEN);
    let attempts = [
        (Some(reason_text.clone()), Some(description)),
        (Some(reason_text.clone()), None),
        (Some(truncate(&reason_text, 32)), None),
    ];
    for (dlr, dld) in attempts {
        meta.dlr = dlr.filter(|s| sqs_text_ok(s) && !s.is_empty());
        meta.dld = dld.filter(|s| sqs_text_ok(s) && !s.is_empty());
        write_meta(attributes, &meta)?;
        if sqs_size(body, attributes) <= max_size {
            return Ok(());
        }
    }
    Err(invalid(
        "the message is too close to the size limit to carry a dead-letter reason",
    ))
}

/// A message read back from SQS.
#[derive(Clone, Debug)]
pub(crate) struct Decoded {
    pub(crate) message: Message,
    pub(crate) message_id: MessageId,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) dead_letter: Option<DeadLetterReason>,
}

/// Rebuilds the message. Messages from other producers (no metadata) decode too: their id
/// is the de-duplication id or the SQS message id, their body the raw text, and their
/// `String`/`Number` attributes become attributes (`Binary` ones are skipped).
pub(crate) fn decode(
    body: &str,
    attributes: Option<&HashMap<String, MessageAttributeValue>>,
    group_id: Option<&str>,
    dedup_id: Option<&str>,
    sqs_message_id: &str,
) -> Decoded {
    let meta = read_meta(attributes);
    let body_bytes: bytes::Bytes = match meta.enc.as_deref() {
        Some("b64") => base64::engine::general_purpose::STANDARD
            .decode(body)
            .map(bytes::Bytes::from)
            .unwrap_or_else(|_| bytes::Bytes::copy_from_slice(body.as_bytes())),
        Some("empty") => bytes::Bytes::new(),
        _ => bytes::Bytes::copy_from_slice(body.as_bytes()),
    };
    let mut app = Attributes::new();
    if let Some(attrs) = attributes {
        for (name, value) in attrs {
            if name == META_ATTRIBUTE {
                continue;
            }
            let ty = value.data_type();
            if (ty.starts_with("String") || ty.starts_with("Number"))
                && let Some(v) = value.string_value()
            {
                app.insert(name.clone(), v.to_owned());
            }
        }
    }
    for name in &meta.empty {
        app.insert(name.clone(), String::new());
    }
    if let Some(oid) = &meta.oid {
        app.insert(ORIGINAL_MESSAGE_ID_ATTRIBUTE.to_owned(), oid.clone());
    }
    let message_id = meta
        .id
        .as_deref()
        .or(dedup_id)
        .and_then(|id| MessageId::new(id).ok())
        .or_else(|| MessageId::new(sqs_message_id).ok())
        .unwrap_or_else(MessageId::random);
    let mut message = Message::new(body_bytes);
    message.content_type = meta.ct.clone();
    message.correlation_id = meta.corr.clone();
    message.subject = meta.sub.clone();
    message.attributes = app;
    message.session_id = group_id.and_then(|g| SessionId::new(g).ok());
    message.message_id = Some(message_id.clone());
    let expires_at = meta.exp.map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    if let Some(at) = expires_at {
        message.time_to_live = at.duration_since(SystemTime::now()).ok();
    }
    let dead_letter = meta
        .dlr
        .as_ref()
        .map(|r| DeadLetterReason::new(r.clone(), meta.dld.clone().unwrap_or_default()));
    Decoded {
        message,
        message_id,
        expires_at,
        dead_letter,
    }
}

/// The reason reported for a message the redrive policy moved (it carries none).
pub(crate) fn native_dead_letter_reason() -> DeadLetterReason {
    DeadLetterReason::new(
        MAX_DELIVERY_COUNT_EXCEEDED,
        "moved by the SQS redrive policy after maxReceiveCount receives",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> QueueName {
        QueueName::new(name).unwrap()
    }

    const STD: Limits = Limits {
        fifo: false,
        max_size: MAX_MESSAGE_SIZE,
        content_dedup: false,
    };
    const FIFO: Limits = Limits {
        fifo: true,
        max_size: MAX_MESSAGE_SIZE,
        content_dedup: false,
    };

    fn round_trip(msg: Message, limits: Limits, queue: &str) -> (Encoded, Decoded) {
        let enc = encode(msg, &q(queue), limits, SystemTime::now()).unwrap();
        let dec = decode(
            &enc.body,
            Some(&enc.attributes),
            enc.group_id.as_deref(),
            enc.dedup_id.as_deref(),
            "sqs-id",
        );
        (enc, dec)
    }

    #[test]
    fn text_message_round_trips_with_metadata() {
        let msg = Message::new("{\"a\":1}")
            .with_content_type("application/json")
            .with_correlation_id("corr-1")
            .with_attribute("event", "pull_request")
            .with_attribute("empty", "")
            .with_message_id(MessageId::new("gh-delivery-1").unwrap());
        let (enc, dec) = round_trip(msg.clone(), STD, "jobs");
        assert_eq!(enc.body, "{\"a\":1}");
        assert_eq!(
            enc.attributes.len(),
            2,
            "event + metadata; the empty one rides in metadata"
        );
        assert_eq!(
            enc.dedup_id, None,
            "standard queues have no de-duplication id"
        );
        assert_eq!(dec.message.body, msg.body);
        assert_eq!(dec.message.attributes, msg.attributes);
        assert_eq!(
            dec.message.content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(dec.message.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(dec.message.subject, None);
        assert_eq!(dec.message_id.as_str(), "gh-delivery-1");
    }

    #[test]
    fn subject_rides_in_the_metadata_attribute() {
        let msg = Message::new("x")
            .with_subject("pull_request.opened")
            .with_attribute("event", "pull_request");
        let (enc, dec) = round_trip(msg, STD, "jobs");
        assert_eq!(
            enc.attributes.len(),
            2,
            "no attribute of its own: event + metadata"
        );
        let meta = read_meta(Some(&enc.attributes));
        assert_eq!(meta.sub.as_deref(), Some("pull_request.opened"));
        assert_eq!(dec.message.subject.as_deref(), Some("pull_request.opened"));
        assert_eq!(dec.message.attributes.len(), 1);

        // U+FFFE is no XML character and JSON does not escape it (control characters it does).
        let err = encode(
            Message::new("x").with_subject("bad\u{FFFE}subject"),
            &q("jobs"),
            STD,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(matches!(err, QueueError::InvalidMessage { .. }), "{err}");
    }

    #[test]
    fn subject_counts_within_the_size_limit() {
        let plain = encode(
            Message::new(vec![b'a'; 800]),
            &q("jobs"),
            STD,
            SystemTime::now(),
        )
        .unwrap();
        let limits = Limits {
            max_size: plain.size + 50,
            ..STD
        };
        let fits = Message::new(vec![b'a'; 800]).with_subject("s".repeat(40));
        let enc = encode(fits, &q("jobs"), limits, SystemTime::now()).unwrap();
        assert!(enc.size > plain.size + 40, "{} vs {}", enc.size, plain.size);
        let too_long = Message::new(vec![b'a'; 800]).with_subject("s".repeat(60));
        let err = encode(too_long, &q("jobs"), limits, SystemTime::now()).unwrap_err();
        assert!(matches!(err, QueueError::MessageTooLarge { .. }), "{err:?}");
    }

    #[test]
    fn binary_and_empty_bodies_round_trip() {
        for body in [vec![0u8, 159, 146, 150, 255], vec![], b"bell\x07".to_vec()] {
            let (enc, dec) = round_trip(Message::new(body.clone()), STD, "jobs");
            assert!(!enc.body.is_empty() && sqs_text_ok(&enc.body));
            assert_eq!(dec.message.body.as_ref(), body.as_slice());
        }
    }

    #[test]
    fn fifo_uses_group_and_dedup_ids() {
        let msg = Message::new("x")
            .with_session_id(SessionId::new("octo/repo#1").unwrap())
            .with_message_id(MessageId::new("d-1").unwrap());
        let (enc, dec) = round_trip(msg, FIFO, "jobs.fifo");
        assert_eq!(enc.group_id.as_deref(), Some("octo/repo#1"));
        assert_eq!(enc.dedup_id.as_deref(), Some("d-1"));
        assert_eq!(dec.message.session_id.unwrap().as_str(), "octo/repo#1");
        // Without an id, a random one is the dedup id, unless content-based dedup is on.
        let msg = Message::new("x").with_session_id(SessionId::new("g").unwrap());
        let enc = encode(msg.clone(), &q("a.fifo"), FIFO, SystemTime::now()).unwrap();
        assert_eq!(enc.dedup_id.as_deref(), Some(enc.message_id.as_str()));
        let content = Limits {
            content_dedup: true,
            ..FIFO
        };
        let enc = encode(msg, &q("a.fifo"), content, SystemTime::now()).unwrap();
        assert_eq!(enc.dedup_id, None);
    }

    #[test]
    fn queue_type_mismatches_are_typed_errors() {
        let with_session = Message::new("x").with_session_id(SessionId::new("g").unwrap());
        let err = encode(with_session, &q("jobs"), STD, SystemTime::now()).unwrap_err();
        assert!(matches!(err, QueueError::InvalidMessage { .. }), "{err}");
        assert!(err.to_string().contains(".fifo"), "{err}");
        let err = encode(Message::new("x"), &q("jobs.fifo"), FIFO, SystemTime::now()).unwrap_err();
        assert!(matches!(err, QueueError::InvalidMessage { .. }), "{err}");
        let delayed = Message::new("x")
            .with_session_id(SessionId::new("g").unwrap())
            .with_delay(Duration::from_secs(30));
        let err = encode(delayed, &q("jobs.fifo"), FIFO, SystemTime::now()).unwrap_err();
        assert!(matches!(err, QueueError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn delay_rounds_up_and_is_bounded() {
        let now = SystemTime::now();
        let msg = Message::new("x").with_scheduled_enqueue_time(now + Duration::from_millis(1500));
        let enc = encode(msg, &q("jobs"), STD, now).unwrap();
        assert_eq!(enc.delay_seconds, Some(2));
        let msg = Message::new("x").with_scheduled_enqueue_time(now + Duration::from_secs(900));
        assert_eq!(
            encode(msg, &q("jobs"), STD, now).unwrap().delay_seconds,
            Some(900)
        );
        let msg = Message::new("x").with_scheduled_enqueue_time(now + Duration::from_secs(901));
        let err = encode(msg, &q("jobs"), STD, now).unwrap_err();
        assert!(matches!(err, QueueError::InvalidMessage { .. }), "{err}");
        let past = Message::new("x").with_scheduled_enqueue_time(now - Duration::from_secs(5));
        assert_eq!(
            encode(past, &q("jobs"), STD, now).unwrap().delay_seconds,
            None
        );
    }

    #[test]
    fn attribute_limit_counts_the_metadata_attribute() {
        let mut nine = Message::new("x");
        for i in 0..MAX_APP_ATTRIBUTES {
            nine = nine.with_attribute(format!("a{i}"), "v");
        }
        let enc = encode(nine.clone(), &q("jobs"), STD, SystemTime::now()).unwrap();
        assert_eq!(enc.attributes.len(), MAX_SQS_ATTRIBUTES);
        // What the provider tells signers and the runtime.
        assert_eq!(
            crate::SqsProvider::sqs_capabilities().max_attributes,
            Some(MAX_APP_ATTRIBUTES)
        );
        let ten = nine.with_attribute("one-more", "v");
        let err = encode(ten, &q("jobs"), STD, SystemTime::now()).unwrap_err();
        assert!(matches!(err, QueueError::InvalidMessage { .. }), "{err}");
        assert!(err.to_string().contains(META_ATTRIBUTE), "{err}");
    }

    #[test]
    fn original_id_of_a_redrive_costs_no_attribute() {
        let mut nine = Message::new("x");
        for i in 0..MAX_APP_ATTRIBUTES {
            nine = nine.with_attribute(format!("a{i}"), "v");
        }
        let redriven = nine.with_attribute(ORIGINAL_MESSAGE_ID_ATTRIBUTE, "github-delivery-7");
        let (enc, dec) = round_trip(redriven, STD, "jobs");
        assert_eq!(enc.attributes.len(), MAX_SQS_ATTRIBUTES);
        assert_eq!(
            dec.message
                .attributes
                .get(ORIGINAL_MESSAGE_ID_ATTRIBUTE)
                .map(String::as_str),
            Some("github-delivery-7")
        );
        assert_eq!(dec.message.attributes.len(), MAX_APP_ATTRIBUTES + 1);
    }

    #[test]
    fn attribute_names_follow_sqs_rules() {
        for ok in ["event", "x-github-event", "a.b", "A_1"] {
            validate_attribute_name(ok).unwrap();
        }
        for bad in [
            "",
            "has space",
            ".lead",
            "trail.",
            "a..b",
            "AWS.x",
            "amazon.y",
            "queue-runtime",
            "ü",
        ] {
            let err = validate_attribute_name(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    QueueError::InvalidName {
                        kind: NameKind::Attribute,
                        ..
                    }
                ),
                "{bad}"
            );
        }
        let err = encode(
            Message::new("x").with_attribute("k", "bad\u{1}value"),
            &q("jobs"),
            STD,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(matches!(err, QueueError::InvalidMessage { .. }));
        assert!(!err.to_string().contains("bad\u{1}value"));
    }

    #[test]
    fn size_limit_is_checked_on_the_sqs_encoding() {
        let small = Limits {
            max_size: 1000,
            ..STD
        };
        let err = encode(
            Message::new(vec![b'a'; 1001]),
            &q("jobs"),
            small,
            SystemTime::now(),
        )
        .unwrap_err();
        match err {
            QueueError::MessageTooLarge { size, max, .. } => {
                assert!(size > 1001);
                assert_eq!(max, 1000);
            }
            other => panic!("{other:?}"),
        }
        let enc = encode(
            Message::new(vec![b'a'; 800]),
            &q("jobs"),
            small,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(enc.size, sqs_size(&enc.body, &enc.attributes));
    }

    #[test]
    fn dead_letter_reason_round_trips_and_clears() {
        let msg = Message::new("x")
            .with_attribute("k", "v")
            .with_subject("push");
        let (mut enc, _) = round_trip(msg, STD, "jobs");
        add_dead_letter_reason(
            &enc.body,
            &mut enc.attributes,
            &DeadLetterReason::new("SignatureInvalid", "bad hmac"),
            MAX_MESSAGE_SIZE,
        )
        .unwrap();
        let dec = decode(&enc.body, Some(&enc.attributes), None, None, "id");
        let dl = dec.dead_letter.unwrap();
        assert_eq!(
            (dl.reason.as_str(), dl.description.as_str()),
            ("SignatureInvalid", "bad hmac")
        );
        assert_eq!(
            dec.message.attributes.get("k").map(String::as_str),
            Some("v")
        );
        assert_eq!(
            dec.message.subject.as_deref(),
            Some("push"),
            "kept in the DLQ"
        );
        // A redrive re-sends the decoded message: the reason does not travel with it.
        let (_, again) = round_trip(dec.message, STD, "jobs");
        assert!(again.dead_letter.is_none());
        assert_eq!(
            again.message.subject.as_deref(),
            Some("push"),
            "kept on redrive"
        );
    }

    #[test]
    fn foreign_messages_decode() {
        let mut attrs = HashMap::new();
        attrs.insert(
            "n".to_owned(),
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value("42")
                .build()
                .unwrap(),
        );
        let dec = decode(
            "plain",
            Some(&attrs),
            None,
            None,
            "6f1c2d3e-aaaa-bbbb-cccc-000000000000",
        );
        assert_eq!(dec.message.body.as_ref(), b"plain");
        assert_eq!(
            dec.message.attributes.get("n").map(String::as_str),
            Some("42")
        );
        assert_eq!(
            dec.message_id.as_str(),
            "6f1c2d3e-aaaa-bbbb-cccc-000000000000"
        );
    }

    #[test]
    fn ttl_is_carried_as_expiry() {
        let now = SystemTime::now();
        let msg = Message::new("x").with_time_to_live(Duration::from_secs(60));
        let enc = encode(msg, &q("jobs"), STD, now).unwrap();
        let dec = decode(&enc.body, Some(&enc.attributes), None, None, "id");
        let exp = dec.expires_at.unwrap();
        let delta = exp.duration_since(now).unwrap();
        assert!(delta <= Duration::from_secs(60) && delta >= Duration::from_secs(59));
    }
}
