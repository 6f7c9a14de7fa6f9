//! Property tests: for arbitrary messages, the signature the signer writes is the HMAC of
//! the reference encoding (`SignedFields::canonical_v1`, built piece by piece from the
//! specification), the verifier accepts it, and changing any covered byte is rejected.
//! This checks the signer's and verifier's one-walk, stack-buffered encoding against the
//! reference, including headers longer than the stack buffer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use queue_core::{Message, MessageId, QueueName, Receipt, ReceivedMessage, SessionId};
use queue_security::{
    AttributeCoverage, Envelope, KeyRing, MessageSigner, SIGNATURE_ATTRIBUTE, SecurityError,
    SignatureVerifier, SignedFields,
};
use secrecy::SecretSlice;

const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

fn ring() -> KeyRing {
    let ring = KeyRing::new();
    ring.insert("key-1.a_B", SecretSlice::from(KEY.to_vec()))
        .unwrap();
    ring.set_active("key-1.a_B").unwrap();
    ring
}

#[derive(Debug, Clone)]
struct Case {
    queue: String,
    id: String,
    session: Option<String>,
    correlation: Option<String>,
    content_type: Option<String>,
    subject: Option<String>,
    attributes: Vec<(String, String)>,
    cover_only_first: bool,
    body: Vec<u8>,
    signed_at_ms: u64,
    delay_ms: Option<u64>,
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~ü]{{0,{max}}}")).unwrap()
}

fn case() -> impl Strategy<Value = Case> {
    (
        "[a-z]([a-z0-9-]{0,40}[a-z0-9])?",
        "[!-~]{1,128}",
        proptest::option::of("[!-~]{1,128}"),
        proptest::option::of(text(60)),
        proptest::option::of(text(30)),
        proptest::option::of(text(60)),
        proptest::collection::btree_map("[a-pr-zA-Z][a-z0-9_-]{0,20}", text(400), 0..9),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..2_000),
        0u64..4_000_000_000_000,
        proptest::option::of(0u64..1_000_000),
    )
        .prop_map(
            |(queue, id, session, correlation, content_type, subject, attrs, only, body, t, d)| {
                Case {
                    queue,
                    id,
                    session,
                    correlation,
                    content_type,
                    subject,
                    attributes: attrs.into_iter().collect(),
                    cover_only_first: only,
                    body,
                    signed_at_ms: t,
                    delay_ms: d,
                }
            },
        )
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn message(case: &Case) -> Message {
    let mut message =
        Message::new(case.body.clone()).with_message_id(MessageId::new(&case.id).unwrap());
    if let Some(session) = &case.session {
        message = message.with_session_id(SessionId::new(session).unwrap());
    }
    message.correlation_id.clone_from(&case.correlation);
    message.content_type.clone_from(&case.content_type);
    message.subject.clone_from(&case.subject);
    if let Some(delay) = case.delay_ms {
        message = message.with_scheduled_enqueue_time(at_ms(case.signed_at_ms + delay));
    }
    for (name, value) in &case.attributes {
        message = message.with_attribute(name.clone(), value.clone());
    }
    message
}

fn coverage(case: &Case) -> AttributeCoverage {
    match case.attributes.first() {
        Some((first, _)) if case.cover_only_first => {
            AttributeCoverage::Only([first.clone()].into())
        }
        _ => AttributeCoverage::All,
    }
}

fn receive(case: &Case, message: Message) -> ReceivedMessage {
    let id = message.message_id.clone().unwrap();
    let receipt = Receipt::new("test", QueueName::new(&case.queue).unwrap(), None, "r");
    ReceivedMessage::new(message, id, 1, at_ms(case.signed_at_ms), receipt)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn signatures_are_the_hmac_of_the_reference_encoding(case in case()) {
        let mut msg = message(&case);
        let signer = MessageSigner::new(ring()).with_coverage(coverage(&case));
        let queue = QueueName::new(&case.queue).unwrap();
        signer.sign_at(&queue, &mut msg, at_ms(case.signed_at_ms)).unwrap();
        let envelope: Envelope = msg.attributes[SIGNATURE_ATTRIBUTE].parse().unwrap();

        let covered: Vec<(&str, &str)> = msg
            .attributes
            .iter()
            .filter(|(name, _)| envelope.covered.contains(name))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let fields = SignedFields {
            key_id: "key-1.a_B",
            signed_at_ms: case.signed_at_ms,
            not_before_ms: case.delay_ms.map(|d| case.signed_at_ms + d),
            queue: &case.queue,
            message_id: &case.id,
            session_id: case.session.as_deref(),
            correlation_id: case.correlation.as_deref(),
            content_type: case.content_type.as_deref(),
            subject: case.subject.as_deref(),
            attributes: &covered,
            body: &case.body,
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY);
        let expected = ring::hmac::sign(&key, &fields.canonical_v1());
        prop_assert_eq!(envelope.mac.as_slice(), expected.as_ref());
        let expected_names: Vec<&str> = match coverage(&case) {
            AttributeCoverage::All => case.attributes.iter().map(|(n, _)| n.as_str()).collect(),
            _ => vec![case.attributes[0].0.as_str()],
        };
        prop_assert_eq!(&envelope.covered, &expected_names);

        let verifier = SignatureVerifier::new(ring())
            .with_max_skew(Duration::from_secs(3_600))
            .unwrap()
            .with_allow_uncovered_attributes(case.cover_only_first);
        let verified = verifier.verify(&receive(&case, msg.clone()));
        prop_assert!(verified.is_ok(), "{:?}", verified.err());

        // Any covered value changed by one byte fails.
        for (name, _) in &covered {
            let mut tampered = msg.clone();
            tampered.attributes.get_mut(*name).unwrap().push('x');
            prop_assert!(matches!(
                verifier.verify(&receive(&case, tampered)),
                Err(SecurityError::SignatureInvalid)
            ));
        }
    }
}
