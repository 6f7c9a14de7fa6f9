//! The only place that touches fe2o3-amqp's `__private` items: encoding a whole AMQP
//! message to bytes (and back, in tests). fe2o3 exposes these wrappers without a stability
//! promise, which is why its crates are pinned to exact versions in `Cargo.toml`; an
//! upgrade has to revisit this module (and only this module).

use fe2o3_amqp_types::messaging::message::__private::Serializable;

use crate::convert::Outgoing;

/// Encodes `m` as the AMQP sections of one message, or `None` if it cannot be encoded.
pub(crate) fn encode_message(m: &Outgoing) -> Option<Vec<u8>> {
    serde_amqp::to_vec(&Serializable(m)).ok()
}

/// Decodes one message from its encoded sections (tests only).
#[cfg(test)]
pub(crate) fn decode_message(bytes: &[u8]) -> crate::convert::Incoming {
    let back: fe2o3_amqp_types::messaging::message::__private::Deserializable<
        crate::convert::Incoming,
    > = serde_amqp::from_slice(bytes).expect("a message this crate encoded decodes");
    back.0
}
