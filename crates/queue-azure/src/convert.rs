//! Mapping between queue-core messages and AMQP messages, the way the official Service Bus
//! SDKs lay them out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fe2o3_amqp_types::{
    messaging::{
        AmqpValue, ApplicationProperties, Batch, Body, Data, Header, Message as AmqpMessage,
        MessageAnnotations, MessageId as AmqpMessageId, Properties, annotations::OwnedKey,
    },
    primitives::{Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value},
};
use queue_core::{
    Attributes, DeadLetterReason, Message, MessageId, QueueName, Receipt, ReceivedMessage,
    SessionId,
};

use crate::error::PROVIDER;

pub(crate) const SCHEDULED_ENQUEUE_TIME: &str = "x-opt-scheduled-enqueue-time";
const ENQUEUED_TIME: &str = "x-opt-enqueued-time";
const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
const LOCKED_UNTIL: &str = "x-opt-locked-until";
const LOCK_TOKEN: &str = "x-opt-lock-token";
const DEAD_LETTER_REASON: &str = "DeadLetterReason";
const DEAD_LETTER_DESCRIPTION: &str = "DeadLetterErrorDescription";

/// What is sent: the AMQP message with a Data body section.
pub(crate) type Outgoing = AmqpMessage<Batch<Data>>;
/// What is received: any body section.
pub(crate) type Incoming = AmqpMessage<Body<Value>>;

pub(crate) fn timestamp(t: SystemTime) -> Timestamp {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_milliseconds(ms)
}

pub(crate) fn system_time(t: &Timestamp) -> SystemTime {
    let ms = t.milliseconds();
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH
    }
}

/// Builds the AMQP message for `msg` with message id `id`.
pub(crate) fn to_amqp(msg: &Message, id: &MessageId) -> Outgoing {
    let properties = Properties {
        message_id: Some(AmqpMessageId::String(id.as_str().to_owned())),
        correlation_id: msg
            .correlation_id
            .as_ref()
            .map(|c| AmqpMessageId::String(c.clone())),
        content_type: msg.content_type.as_ref().map(|c| Symbol::from(c.as_str())),
        // The SDKs' `subject` (.NET `Subject`, formerly `Label`) is the AMQP subject.
        subject: msg.subject.clone(),
        group_id: msg.session_id.as_ref().map(|s| s.as_str().to_owned()),
        ..Properties::default()
    };
    let header = msg.time_to_live.map(|ttl| Header {
        durable: true,
        ttl: Some(u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX)),
        ..Header::default()
    });
    let application_properties = (!msg.attributes.is_empty()).then(|| {
        let mut m = OrderedMap::new();
        for (k, v) in &msg.attributes {
            m.insert(k.clone(), SimpleValue::String(v.clone()));
        }
        ApplicationProperties(m)
    });
    let message_annotations = msg.scheduled_enqueue_time.map(|at| {
        let mut m = OrderedMap::new();
        m.insert(
            OwnedKey::Symbol(Symbol::from(SCHEDULED_ENQUEUE_TIME)),
            Value::Timestamp(timestamp(at)),
        );
        MessageAnnotations(m)
    });
    AmqpMessage {
        header,
        delivery_annotations: None,
        message_annotations,
        properties: Some(properties),
        application_properties,
        body: Batch::new(vec![Data(Binary::from(msg.body.to_vec()))]),
        footer: None,
    }
}

/// The encoded size of an outgoing message, compared against the entity's limit.
pub(crate) fn encoded_len(m: &Outgoing) -> usize {
    crate::wire::encode_message(m).map_or(usize::MAX, |v| v.len())
}

/// The encoded message, for `$management` `schedule-message`.
pub(crate) fn encode(m: &Outgoing) -> Vec<u8> {
    crate::wire::encode_message(m).unwrap_or_default()
}

fn annotation<'a>(m: &'a Incoming, key: &str) -> Option<&'a Value> {
    m.message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(key)))
}

fn id_text(id: &AmqpMessageId) -> String {
    match id {
        AmqpMessageId::String(s) => s.clone(),
        AmqpMessageId::Ulong(n) => n.to_string(),
        AmqpMessageId::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).to_string(),
        AmqpMessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

fn simple_text(v: &SimpleValue) -> Option<String> {
    Some(match v {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.0.clone(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Float(f) => f.to_string(),
        SimpleValue::Double(f) => f.to_string(),
        SimpleValue::Char(c) => c.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        SimpleValue::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).to_string(),
        SimpleValue::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        _ => return None,
    })
}

fn body_bytes(body: &Body<Value>) -> Bytes {
    match body {
        Body::Data(batch) => {
            if batch.len() == 1 {
                return Bytes::from(batch[0].0.to_vec());
            }
            let mut out = Vec::new();
            for d in batch.iter() {
                out.extend_from_slice(&d.0);
            }
            out.into()
        }
        Body::Value(AmqpValue(Value::Binary(b))) => Bytes::from(b.to_vec()),
        Body::Value(AmqpValue(Value::String(s))) => Bytes::from(s.clone().into_bytes()),
        Body::Value(AmqpValue(v)) => serde_amqp::to_vec(v).unwrap_or_default().into(),
        Body::Sequence(s) => serde_amqp::to_vec(s).unwrap_or_default().into(),
        _ => Bytes::new(),
    }
}

/// The lock token of a delivery: the delivery tag (a GUID in .NET byte order), or the
/// `x-opt-lock-token` annotation.
pub(crate) fn lock_token(tag: &[u8], m: &Incoming) -> Option<uuid::Uuid> {
    if let Ok(bytes) = <[u8; 16]>::try_from(tag) {
        return Some(uuid::Uuid::from_bytes_le(bytes));
    }
    match annotation(m, LOCK_TOKEN)? {
        Value::Uuid(u) => Some(uuid::Uuid::from_bytes(*u.as_inner())),
        _ => None,
    }
}

/// The fields read off a received AMQP message.
pub(crate) struct Decoded {
    pub(crate) message: Message,
    pub(crate) message_id: MessageId,
    pub(crate) delivery_count: u32,
    pub(crate) enqueued_at: SystemTime,
    pub(crate) sequence_number: Option<i64>,
    pub(crate) locked_until: Option<SystemTime>,
    pub(crate) dead_letter: Option<DeadLetterReason>,
}

/// Reads a received message. Ids the core cannot hold (empty, too long) are replaced by a
/// fresh id rather than dropping the message.
pub(crate) fn from_amqp(m: &Incoming) -> Decoded {
    let props = m.properties.as_ref();
    let message_id = props
        .and_then(|p| p.message_id.as_ref())
        .and_then(|id| MessageId::new(id_text(id)).ok())
        .unwrap_or_else(MessageId::random);
    let session_id = props
        .and_then(|p| p.group_id.as_deref())
        .and_then(|g| SessionId::new(g).ok());
    let mut attributes = Attributes::new();
    if let Some(ap) = &m.application_properties {
        for (k, v) in &ap.0 {
            if let Some(text) = simple_text(v) {
                attributes.insert(k.clone(), text);
            }
        }
    }
    let dead_letter = match (
        attributes.get(DEAD_LETTER_REASON),
        attributes.get(DEAD_LETTER_DESCRIPTION),
    ) {
        (None, None) => None,
        (r, d) => Some(DeadLetterReason::new(
            r.cloned().unwrap_or_default(),
            d.cloned().unwrap_or_default(),
        )),
    };
    let mut message = Message::new(body_bytes(&m.body));
    message.content_type = props
        .and_then(|p| p.content_type.as_ref())
        .map(|c| c.0.clone());
    message.correlation_id = props.and_then(|p| p.correlation_id.as_ref()).map(id_text);
    message.subject = props.and_then(|p| p.subject.clone());
    message.session_id = session_id;
    message.message_id = Some(message_id.clone());
    message.attributes = attributes;
    message.time_to_live = m
        .header
        .as_ref()
        .and_then(|h| h.ttl)
        .map(|ms| Duration::from_millis(u64::from(ms)));
    let ts = |key| match annotation(m, key) {
        Some(Value::Timestamp(t)) => Some(system_time(t)),
        _ => None,
    };
    let sequence_number = match annotation(m, SEQUENCE_NUMBER) {
        Some(Value::Long(n)) => Some(*n),
        _ => None,
    };
    Decoded {
        message,
        message_id,
        // The header counts earlier deliveries; the SDKs report this one included.
        delivery_count: m
            .header
            .as_ref()
            .map_or(0, |h| h.delivery_count)
            .saturating_add(1),
        enqueued_at: ts(ENQUEUED_TIME).unwrap_or_else(SystemTime::now),
        sequence_number,
        locked_until: ts(LOCKED_UNTIL),
        dead_letter,
    }
}

impl Decoded {
    /// Assembles the received message with its receipt.
    pub(crate) fn into_received(
        self,
        queue: &QueueName,
        session: Option<SessionId>,
        token: String,
    ) -> ReceivedMessage {
        let receipt = Receipt::new(PROVIDER, queue.clone(), session, token);
        let mut r = ReceivedMessage::new(
            self.message,
            self.message_id,
            self.delivery_count,
            self.enqueued_at,
            receipt,
        );
        if let Some(at) = self.locked_until {
            r = r.with_locked_until(at);
        }
        if let Some(seq) = self.sequence_number {
            r = r.with_sequence_number(seq);
        }
        if let Some(dl) = self.dead_letter {
            r = r.with_dead_letter(dl);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_property_survives_encode_and_decode() {
        let sid = SessionId::new("octo/repo#1").unwrap();
        let id = MessageId::new("m-1").unwrap();
        let at = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let msg = Message::new("body")
            .with_content_type("application/json")
            .with_correlation_id("corr")
            .with_subject("pull_request.opened")
            .with_session_id(sid.clone())
            .with_attribute("event", "push")
            .with_time_to_live(Duration::from_secs(90))
            .with_scheduled_enqueue_time(at);
        let out = to_amqp(&msg, &id);
        let props = out.properties.as_ref().unwrap();
        assert_eq!(props.group_id.as_deref(), Some("octo/repo#1"));
        assert_eq!(props.subject.as_deref(), Some("pull_request.opened"));
        assert_eq!(out.header.as_ref().unwrap().ttl, Some(90_000));
        // Decode what was encoded, as a receiver sees it.
        let bytes = encode(&out);
        let mut back = crate::wire::decode_message(&bytes);
        back.header
            .get_or_insert_with(Header::default)
            .delivery_count = 2;
        let d = from_amqp(&back);
        assert_eq!(d.message.body, Bytes::from_static(b"body"));
        assert_eq!(d.message_id, id);
        assert_eq!(d.message.session_id, Some(sid));
        assert_eq!(d.message.correlation_id.as_deref(), Some("corr"));
        assert_eq!(d.message.subject.as_deref(), Some("pull_request.opened"));
        assert!(
            !d.message.attributes.contains_key("subject"),
            "a property, not an application property"
        );
        assert_eq!(d.message.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            d.message.attributes.get("event").map(String::as_str),
            Some("push")
        );
        assert_eq!(d.message.time_to_live, Some(Duration::from_secs(90)));
        assert_eq!(d.delivery_count, 3);
        assert!(d.dead_letter.is_none());
        assert_eq!(
            annotation(&back, SCHEDULED_ENQUEUE_TIME),
            Some(&Value::Timestamp(timestamp(at)))
        );
    }

    #[test]
    fn no_subject_leaves_the_amqp_subject_unset() {
        let out = to_amqp(&Message::new("b"), &MessageId::new("m-2").unwrap());
        assert_eq!(out.properties.as_ref().unwrap().subject, None);
        let bytes = encode(&out);
        let back = crate::wire::decode_message(&bytes);
        assert_eq!(from_amqp(&back).message.subject, None);
    }

    #[test]
    fn lock_token_reads_the_dotnet_ordered_tag() {
        let u = uuid::Uuid::new_v4();
        let m: Incoming = AmqpMessage {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: None,
            application_properties: None,
            body: Body::Empty,
            footer: None,
        };
        assert_eq!(lock_token(&u.to_bytes_le(), &m), Some(u));
        assert_eq!(lock_token(b"short", &m), None);
    }
}
