//! Signature format, tamper, rotation, freshness and replay tests on hand-built deliveries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use queue_core::{Message, MessageGate, MessageId, QueueName, Receipt, ReceivedMessage, SessionId};
use queue_security::{
    AttributeCoverage, Envelope, GateOutcome, KeyRing, Limits, MessageSigner, SIGNATURE_ATTRIBUTE,
    SecurityError, SignatureGate, SignatureVerifier, UnsignedPolicy, reason,
};
use secrecy::SecretSlice;

const KEY1: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const KEY2: &[u8; 32] = b"fedcba9876543210fedcba9876543210";
const QUEUE: &str = "jobs";

fn ring() -> KeyRing {
    let ring = KeyRing::new();
    ring.insert("k1", SecretSlice::from(KEY1.to_vec())).unwrap();
    ring.insert("k2", SecretSlice::from(KEY2.to_vec())).unwrap();
    ring.set_active("k1").unwrap();
    ring
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_764_470_000_123)
}

fn sample() -> Message {
    Message::new(&b"{\"pr\":42}"[..])
        .with_content_type("application/json")
        .with_session_id(SessionId::new("octo/repo#42").unwrap())
        .with_correlation_id("corr-1")
        .with_subject("pull_request.opened")
        .with_message_id(MessageId::new("msg-1").unwrap())
        .with_attribute("event", "pull_request")
        .with_attribute("action", "opened")
}

fn deliver(msg: Message, dc: u32, enqueued_at: SystemTime) -> ReceivedMessage {
    let id = msg.message_id.clone().expect("signed messages have ids");
    let receipt = Receipt::new(
        "test",
        QueueName::new(QUEUE).unwrap(),
        msg.session_id.clone(),
        "receipt-token",
    );
    ReceivedMessage::new(msg, id, dc, enqueued_at, receipt)
}

/// A delivery of broker message number `seq` (the broker's sequence number).
fn deliver_seq(msg: Message, seq: i64, dc: u32, enqueued_at: SystemTime) -> ReceivedMessage {
    deliver(msg, dc, enqueued_at).with_sequence_number(seq)
}

fn signed_sample(at: SystemTime) -> Message {
    let mut msg = sample();
    MessageSigner::new(ring())
        .sign_at(&QueueName::new(QUEUE).unwrap(), &mut msg, at)
        .unwrap();
    msg
}

fn envelope_of(msg: &Message) -> Envelope {
    msg.attributes[SIGNATURE_ATTRIBUTE].parse().unwrap()
}

fn lp(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

#[test]
fn v1_format_matches_the_documented_encoding() {
    let msg = signed_sample(t0());
    let env = envelope_of(&msg);
    // Built by hand from the specification in docs/security.md.
    let mut expected = Vec::new();
    lp(&mut expected, b"queue-runtime/signature/v1");
    lp(&mut expected, b"k1");
    expected.extend_from_slice(&1_764_470_000_123u64.to_be_bytes());
    expected.push(0); // no not-before
    lp(&mut expected, b"jobs");
    lp(&mut expected, b"msg-1");
    expected.push(1);
    lp(&mut expected, b"octo/repo#42");
    expected.push(1);
    lp(&mut expected, b"corr-1");
    expected.push(1);
    lp(&mut expected, b"application/json");
    expected.push(1);
    lp(&mut expected, b"pull_request.opened");
    expected.extend_from_slice(&2u32.to_be_bytes());
    lp(&mut expected, b"action");
    lp(&mut expected, b"opened");
    lp(&mut expected, b"event");
    lp(&mut expected, b"pull_request");
    expected.extend_from_slice(&9u64.to_be_bytes());
    expected.extend_from_slice(b"{\"pr\":42}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY1);
    let mac = ring::hmac::sign(&key, &expected);
    assert_eq!(env.mac.as_slice(), mac.as_ref());
    assert_eq!(
        msg.attributes[SIGNATURE_ATTRIBUTE],
        format!(
            "v=1;k=k1;t=1764470000123;a=action,event;s={}",
            hex::encode(mac.as_ref())
        )
    );
}

#[test]
fn signer_assigns_a_message_id_and_replaces_old_signatures() {
    let signer = MessageSigner::new(ring());
    let q = QueueName::new(QUEUE).unwrap();
    let mut msg = Message::new("x").with_attribute(SIGNATURE_ATTRIBUTE, "v=9;junk");
    signer.sign_at(&q, &mut msg, t0()).unwrap();
    assert!(msg.message_id.is_some());
    let verifier = SignatureVerifier::new(ring());
    verifier.verify(&deliver(msg, 1, t0())).unwrap();
}

#[test]
fn untouched_message_verifies() {
    let msg = signed_sample(t0());
    let v = SignatureVerifier::new(ring())
        .verify(&deliver(msg, 1, t0()))
        .unwrap();
    assert_eq!(v.key_id.as_str(), "k1");
    assert_eq!(v.signed_at, t0());
    assert_eq!(
        v.covered_attributes().collect::<Vec<_>>(),
        ["action", "event"]
    );
}

fn assert_rejected(rm: &ReceivedMessage, what: &str) {
    let err = SignatureVerifier::new(ring()).verify(rm).unwrap_err();
    assert_eq!(err.reason(), reason::SIGNATURE_INVALID, "{what}: {err}");
}

#[test]
fn flipping_any_covered_field_is_rejected() {
    let base = deliver(signed_sample(t0()), 1, t0());
    type Tamper = Box<dyn Fn(&mut ReceivedMessage)>;
    let tampers: Vec<(&str, Tamper)> = vec![
        (
            "message id",
            Box::new(|m| m.message_id = MessageId::new("msg-2").unwrap()),
        ),
        (
            "session id",
            Box::new(|m| m.message.session_id = Some(SessionId::new("octo/repo#43").unwrap())),
        ),
        ("session removed", Box::new(|m| m.message.session_id = None)),
        (
            "correlation id",
            Box::new(|m| m.message.correlation_id = Some("corr-2".into())),
        ),
        (
            "correlation removed",
            Box::new(|m| m.message.correlation_id = None),
        ),
        (
            "content type",
            Box::new(|m| m.message.content_type = Some("text/plain".into())),
        ),
        (
            "content type removed",
            Box::new(|m| m.message.content_type = None),
        ),
        (
            "subject",
            Box::new(|m| m.message.subject = Some("pull_request.closed".into())),
        ),
        ("subject removed", Box::new(|m| m.message.subject = None)),
        (
            "subject emptied",
            Box::new(|m| m.message.subject = Some(String::new())),
        ),
        (
            "attribute value",
            Box::new(|m| {
                m.message
                    .attributes
                    .insert("action".into(), "closed".into());
            }),
        ),
        (
            "covered attribute removed",
            Box::new(|m| {
                m.message.attributes.remove("event");
            }),
        ),
        (
            "queue",
            Box::new(|m| {
                m.receipt = Receipt::new("test", QueueName::new("other").unwrap(), None, "t");
            }),
        ),
        (
            "body appended",
            Box::new(|m| {
                let mut b = m.message.body.to_vec();
                b.push(b' ');
                m.message.body = b.into();
            }),
        ),
        (
            "body truncated",
            Box::new(|m| m.message.body = m.message.body.slice(..m.message.body.len() - 1)),
        ),
    ];
    for (what, tamper) in tampers {
        let mut rm = base.clone();
        tamper(&mut rm);
        assert_rejected(&rm, what);
    }
    for i in 0..base.message.body.len() {
        for bit in 0..8 {
            let mut rm = base.clone();
            let mut b = rm.message.body.to_vec();
            b[i] ^= 1 << bit;
            rm.message.body = b.into();
            assert_rejected(&rm, &format!("body byte {i} bit {bit}"));
        }
    }
}

#[test]
fn adding_a_subject_to_a_message_signed_without_one_is_rejected() {
    let mut msg = sample();
    msg.subject = None;
    MessageSigner::new(ring())
        .sign_at(&QueueName::new(QUEUE).unwrap(), &mut msg, t0())
        .unwrap();
    let rm = deliver(msg, 1, t0());
    SignatureVerifier::new(ring()).verify(&rm).unwrap();
    for subject in ["", "push"] {
        let mut tampered = rm.clone();
        tampered.message.subject = Some(subject.into());
        assert_rejected(&tampered, &format!("subject {subject:?} added"));
    }
}

#[test]
fn tampering_with_the_envelope_is_rejected() {
    let base = deliver(signed_sample(t0()), 1, t0());
    let env = envelope_of(&base.message);
    let text = env.to_string();
    let mac_hex = hex::encode(env.mac);
    let mut flipped = env.mac;
    flipped[31] ^= 1;
    let variants = [
        ("other key id", text.replace("k=k1", "k=k2")),
        (
            "earlier timestamp",
            text.replace("t=1764470000123", "t=1764470000122"),
        ),
        (
            "not-before added",
            text.replace(";a=", ";n=1764470000123;a="),
        ),
        (
            "mac bit flipped",
            text.replace(&mac_hex, &hex::encode(flipped)),
        ),
    ];
    for (what, new_text) in variants {
        assert_ne!(new_text, text, "{what} changed nothing");
        let mut rm = base.clone();
        rm.message
            .attributes
            .insert(SIGNATURE_ATTRIBUTE.into(), new_text);
        assert_rejected(&rm, what);
    }
    // Dropping a name from the covered list leaves an uncovered attribute: rejected by
    // default, and still a bad MAC when uncovered attributes are allowed.
    let mut rm = base.clone();
    rm.message.attributes.insert(
        SIGNATURE_ATTRIBUTE.into(),
        text.replace("a=action,event", "a=event"),
    );
    let err = SignatureVerifier::new(ring()).verify(&rm).unwrap_err();
    assert!(
        matches!(err, SecurityError::UncoveredAttribute { .. }),
        "{err}"
    );
    let err = SignatureVerifier::new(ring())
        .with_allow_uncovered_attributes(true)
        .verify(&rm)
        .unwrap_err();
    assert!(matches!(err, SecurityError::SignatureInvalid), "{err}");
}

#[test]
fn uncovered_attributes_policy() {
    let mut rm = deliver(signed_sample(t0()), 1, t0());
    rm.message
        .attributes
        .insert("injected".into(), "delete-everything".into());
    let err = SignatureVerifier::new(ring()).verify(&rm).unwrap_err();
    assert_eq!(err.reason(), reason::SIGNATURE_INVALID);
    assert!(err.to_string().contains("injected"));
    let ok = SignatureVerifier::new(ring())
        .with_allow_uncovered_attributes(true)
        .verify(&rm)
        .unwrap();
    assert!(!ok.covered_attributes().any(|name| name == "injected"));
}

#[test]
fn partial_coverage_signs_only_the_chosen_attributes() {
    let mut msg = sample();
    MessageSigner::new(ring())
        .with_coverage(AttributeCoverage::Only(["event".to_owned()].into()))
        .sign_at(&QueueName::new(QUEUE).unwrap(), &mut msg, t0())
        .unwrap();
    assert_eq!(envelope_of(&msg).covered, vec!["event"]);
    let mut rm = deliver(msg, 1, t0());
    SignatureVerifier::new(ring())
        .with_allow_uncovered_attributes(true)
        .verify(&rm)
        .unwrap();
    rm.message.attributes.insert("action".into(), "x".into());
    SignatureVerifier::new(ring())
        .with_allow_uncovered_attributes(true)
        .verify(&rm)
        .unwrap();
    rm.message.attributes.insert("event".into(), "x".into());
    assert!(
        SignatureVerifier::new(ring())
            .with_allow_uncovered_attributes(true)
            .verify(&rm)
            .is_err()
    );
}

#[test]
fn rotation_old_keys_verify_until_retired() {
    let ring = ring();
    let signer = MessageSigner::new(ring.clone());
    let verifier = SignatureVerifier::new(ring.clone());
    let q = QueueName::new(QUEUE).unwrap();
    let mut old = sample();
    signer.sign_at(&q, &mut old, t0()).unwrap();
    ring.set_active("k2").unwrap();
    let mut new = sample();
    assert_eq!(signer.sign_at(&q, &mut new, t0()).unwrap().as_str(), "k2");
    assert_eq!(envelope_of(&new).key_id.as_str(), "k2");
    verifier.verify(&deliver(old.clone(), 1, t0())).unwrap();
    verifier.verify(&deliver(new.clone(), 1, t0())).unwrap();
    ring.retire("k1").unwrap();
    let err = verifier.verify(&deliver(old, 1, t0())).unwrap_err();
    assert_eq!(err.reason(), reason::UNKNOWN_KEY);
    assert!(err.to_string().contains("k1"));
    verifier.verify(&deliver(new, 1, t0())).unwrap();
    // A key id nobody ever had.
    let mut stranger = signed_sample(t0());
    let text = stranger.attributes[SIGNATURE_ATTRIBUTE].replace("k=k1", "k=k9");
    stranger.attributes.insert(SIGNATURE_ATTRIBUTE.into(), text);
    let err = SignatureVerifier::new(ring)
        .verify(&deliver(stranger, 1, t0()))
        .unwrap_err();
    assert!(matches!(err, SecurityError::UnknownKey { .. }));
}

#[test]
fn signing_without_an_active_key_fails() {
    let ring = KeyRing::new();
    let mut msg = sample();
    let err = MessageSigner::new(ring)
        .sign_at(&QueueName::new(QUEUE).unwrap(), &mut msg, t0())
        .unwrap_err();
    assert!(matches!(err, SecurityError::NoActiveKey));
    assert!(!msg.attributes.contains_key(SIGNATURE_ATTRIBUTE));
}

#[test]
fn freshness_window_around_the_broker_accept_time() {
    let skew = Duration::from_secs(60);
    let v = SignatureVerifier::new(ring()).with_max_skew(skew).unwrap();
    let msg = signed_sample(t0());
    let ms = Duration::from_millis(1);
    for ok in [t0(), t0() + skew, t0() - skew] {
        v.verify(&deliver(msg.clone(), 1, ok)).unwrap();
    }
    let late = v
        .verify(&deliver(msg.clone(), 1, t0() + skew + ms))
        .unwrap_err();
    assert!(
        matches!(
            late,
            SecurityError::Stale {
                direction: "before",
                ..
            }
        ),
        "{late}"
    );
    assert_eq!(late.reason(), reason::MESSAGE_STALE);
    let early = v
        .verify(&deliver(msg.clone(), 1, t0() - skew - ms))
        .unwrap_err();
    assert!(matches!(
        early,
        SecurityError::Stale {
            direction: "after",
            ..
        }
    ));
}

#[test]
fn scheduled_messages_are_fresh_at_their_scheduled_time() {
    let skew = Duration::from_secs(60);
    let v = SignatureVerifier::new(ring()).with_max_skew(skew).unwrap();
    let at = t0() + Duration::from_secs(3_600);
    let mut msg = sample().with_scheduled_enqueue_time(at);
    MessageSigner::new(ring())
        .sign_at(&QueueName::new(QUEUE).unwrap(), &mut msg, t0())
        .unwrap();
    assert!(envelope_of(&msg).not_before_ms.is_some());
    v.verify(&deliver(msg.clone(), 1, t0())).unwrap();
    v.verify(&deliver(msg.clone(), 1, at)).unwrap();
    assert!(
        v.verify(&deliver(msg, 1, at + skew + Duration::from_millis(1)))
            .is_err()
    );
}

fn gate_at(now: SystemTime) -> SignatureGate {
    SignatureGate::new(ring())
        .with_max_skew(Duration::from_secs(300))
        .unwrap()
        .with_clock(move || now)
}

#[tokio::test]
async fn a_copy_is_a_replay_but_redeliveries_of_the_same_broker_message_pass() {
    let gate = gate_at(t0());
    let msg = signed_sample(t0());
    gate.check(&deliver_seq(msg.clone(), 1, 1, t0()))
        .await
        .unwrap();
    // The broker redelivers (handler failed, lock expired): legitimate.
    gate.check(&deliver_seq(msg.clone(), 1, 2, t0()))
        .await
        .unwrap();
    gate.check(&deliver_seq(msg.clone(), 1, 7, t0()))
        .await
        .unwrap();
    // An attacker re-sends the captured message within the skew: another broker message.
    let later = t0() + Duration::from_secs(30);
    let rejection = gate
        .check(&deliver_seq(msg.clone(), 2, 1, later))
        .await
        .unwrap_err();
    assert_eq!(rejection.reason, reason::REPLAYED);
    assert!(rejection.description.contains("msg-1"));
    // ... and stays one when the broker redelivers the copy.
    let again = gate.check(&deliver_seq(msg.clone(), 2, 3, later)).await;
    assert_eq!(again.unwrap_err().reason, reason::REPLAYED);
    // Broker message ids (SQS) identify a broker message as well as sequence numbers.
    let by_id = |id: &str, dc| deliver(msg.clone(), dc, t0()).with_broker_message_id(id);
    let gate = gate_at(t0());
    gate.check(&by_id("sqs-a", 1)).await.unwrap();
    gate.check(&by_id("sqs-a", 2)).await.unwrap();
    assert_eq!(
        gate.check(&by_id("sqs-b", 1)).await.unwrap_err().reason,
        reason::REPLAYED
    );
}

#[tokio::test]
async fn a_copy_checked_first_makes_the_unchecked_original_a_replay() {
    // The original's first delivery never reached the gate (consumer crashed, lock lost);
    // a copy arrives and is handled; then the broker redelivers the original.
    let gate = gate_at(t0());
    let msg = signed_sample(t0());
    gate.check(&deliver_seq(msg.clone(), 2, 1, t0()))
        .await
        .unwrap();
    let original = gate.check(&deliver_seq(msg.clone(), 1, 2, t0())).await;
    assert_eq!(original.unwrap_err().reason, reason::REPLAYED);
}

#[tokio::test]
async fn without_a_broker_identity_first_deliveries_are_checked() {
    let gate = gate_at(t0());
    let msg = signed_sample(t0());
    gate.check(&deliver(msg.clone(), 1, t0())).await.unwrap();
    gate.check(&deliver(msg.clone(), 2, t0())).await.unwrap();
    let copy = gate.check(&deliver(msg, 1, t0())).await;
    assert_eq!(copy.unwrap_err().reason, reason::REPLAYED);
}

#[tokio::test]
async fn scheduled_messages_are_not_handled_before_their_time() {
    let skew = Duration::from_secs(60);
    let at = t0() + Duration::from_secs(3_600);
    let mut msg = sample().with_scheduled_enqueue_time(at);
    MessageSigner::new(ring())
        .sign_at(&QueueName::new(QUEUE).unwrap(), &mut msg, t0())
        .unwrap();
    let gate_now = |now: SystemTime| {
        SignatureGate::new(ring())
            .with_max_skew(skew)
            .unwrap()
            .with_clock(move || now)
    };
    // An early copy, sent unscheduled right away: rejected, and not remembered.
    let store = std::sync::Arc::new(queue_security::InMemoryReplayStore::new(10));
    let early = gate_now(t0())
        .with_replay_store(store.clone())
        .verify(&deliver_seq(msg.clone(), 9, 1, t0()))
        .await;
    let err = early.unwrap_err();
    assert_eq!(err.reason(), reason::NOT_YET_DUE);
    assert!(matches!(err, SecurityError::NotYetDue { .. }));
    assert_eq!(store.len(), 0, "an early copy must not claim the nonce");
    let just_early = gate_now(at - skew - Duration::from_secs(1))
        .verify(&deliver_seq(msg.clone(), 9, 1, at))
        .await;
    assert_eq!(just_early.unwrap_err().reason(), reason::NOT_YET_DUE);
    // The real one at its time (within the skew) passes and claims the nonce ...
    let gate = gate_now(at - skew).with_replay_store(store.clone());
    gate.verify(&deliver_seq(msg.clone(), 1, 1, at))
        .await
        .unwrap();
    assert_eq!(store.len(), 1);
    // ... so the early copy, redelivered once due, is a replay.
    let late_copy = gate.verify(&deliver_seq(msg, 9, 2, t0())).await;
    assert_eq!(late_copy.unwrap_err().reason(), reason::REPLAYED);
}

#[test]
fn windows_beyond_the_maximum_are_refused_at_construction() {
    for huge in [
        Duration::MAX,
        queue_security::MAX_WINDOW + Duration::from_millis(1),
    ] {
        let skew = SignatureGate::new(ring()).with_max_skew(huge);
        assert!(
            matches!(
                skew,
                Err(SecurityError::InvalidWindow {
                    what: "max skew",
                    ..
                })
            ),
            "{huge:?}"
        );
        let window = SignatureGate::new(ring()).with_replay_window(huge);
        assert!(matches!(
            window,
            Err(SecurityError::InvalidWindow {
                what: "replay window",
                ..
            })
        ));
        assert!(SignatureVerifier::new(ring()).with_max_skew(huge).is_err());
        let err = SignatureGate::new(ring()).with_max_skew(huge).unwrap_err();
        let q: queue_core::QueueError = err.into();
        assert_eq!(q.kind_label(), "config");
    }
}

#[tokio::test]
async fn the_largest_windows_work_without_overflow() {
    let max = queue_security::MAX_WINDOW;
    // The latest signing time an envelope can carry (15 decimal digits of milliseconds).
    let far = SystemTime::UNIX_EPOCH + Duration::from_millis(999_999_999_999_999);
    let gate = SignatureGate::new(ring())
        .with_max_skew(max)
        .unwrap()
        .with_replay_window(max)
        .unwrap()
        .with_clock(move || far);
    let msg = signed_sample(far);
    gate.check(&deliver_seq(msg.clone(), 1, 1, far))
        .await
        .unwrap();
    let copy = gate.check(&deliver_seq(msg, 2, 1, far)).await;
    assert_eq!(copy.unwrap_err().reason, reason::REPLAYED);
}

#[tokio::test]
async fn an_hour_old_message_redelivered_passes_but_resent_is_stale() {
    let hour = Duration::from_secs(3_600);
    let gate = gate_at(t0() + hour);
    let msg = signed_sample(t0());
    // Sent an hour ago, handler kept failing: delivery 4 arrives now with the original
    // accept time. Passes.
    let outcome = gate.verify(&deliver(msg.clone(), 4, t0())).await.unwrap();
    assert!(matches!(outcome, GateOutcome::Verified(_)));
    // The same bytes captured and re-sent now get a new accept time: stale.
    let err = gate
        .verify(&deliver(msg, 1, t0() + hour))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), reason::MESSAGE_STALE);
}

#[tokio::test]
async fn the_same_id_on_another_queue_is_not_a_replay_but_needs_its_own_signature() {
    let gate = gate_at(t0());
    let q2 = QueueName::new("other").unwrap();
    let mut m2 = sample();
    MessageSigner::new(ring())
        .sign_at(&q2, &mut m2, t0())
        .unwrap();
    gate.check(&deliver(signed_sample(t0()), 1, t0()))
        .await
        .unwrap();
    let id = m2.message_id.clone().unwrap();
    let rm = ReceivedMessage::new(m2, id, 1, t0(), Receipt::new("test", q2, None, "t"));
    gate.check(&rm).await.unwrap();
}

#[tokio::test]
async fn unsigned_policy_is_a_gate_setting() {
    let unsigned = deliver(sample(), 1, t0());
    let strict = gate_at(t0());
    let rejection = strict.check(&unsigned).await.unwrap_err();
    assert_eq!(rejection.reason, reason::UNSIGNED);
    let lenient = gate_at(t0()).with_unsigned_policy(UnsignedPolicy::AllowWithWarning);
    assert_eq!(
        lenient.verify(&unsigned).await.unwrap(),
        GateOutcome::UnsignedAllowed
    );
    assert_eq!(lenient.unsigned_accepted(), 1);
    // A signed but tampered message is still rejected under the lenient policy.
    let mut tampered = deliver(signed_sample(t0()), 1, t0());
    tampered.message.body = "{}".into();
    assert_eq!(
        lenient.check(&tampered).await.unwrap_err().reason,
        reason::SIGNATURE_INVALID
    );
}

#[tokio::test]
async fn malformed_and_unknown_versions_have_their_own_reasons() {
    let gate = gate_at(t0());
    let mut rm = deliver(signed_sample(t0()), 1, t0());
    rm.message
        .attributes
        .insert(SIGNATURE_ATTRIBUTE.into(), "v=2;k=k1;whatever".into());
    assert_eq!(
        gate.check(&rm).await.unwrap_err().reason,
        reason::UNSUPPORTED_VERSION
    );
    rm.message
        .attributes
        .insert(SIGNATURE_ATTRIBUTE.into(), "garbage".into());
    assert_eq!(
        gate.check(&rm).await.unwrap_err().reason,
        reason::SIGNATURE_MALFORMED
    );
}

#[tokio::test]
async fn body_size_is_checked_before_anything_else() {
    let gate = gate_at(t0()).with_limits(queue_security::Limits::default().with_max_body_size(4));
    // Unsigned *and* too large: the size wins, proving it ran first.
    let rm = deliver(sample(), 1, t0());
    let rejection = gate.check(&rm).await.unwrap_err();
    assert_eq!(rejection.reason, reason::TOO_LARGE);
    let mut big = sample();
    big.body = vec![0u8; 5].into();
    let err = MessageSigner::new(ring())
        .with_limits(queue_security::Limits::default().with_max_body_size(4))
        .sign_at(&QueueName::new(QUEUE).unwrap(), &mut big, t0())
        .unwrap_err();
    assert!(matches!(err, SecurityError::TooLarge { .. }));
}

#[derive(Debug)]
struct BrokenStore;

#[async_trait::async_trait]
impl queue_security::ReplayStore for BrokenStore {
    async fn check_and_record(
        &self,
        _nonce: &str,
        _identity: &str,
        _now: SystemTime,
        _expires_at: SystemTime,
    ) -> Result<queue_security::ReplayVerdict, queue_core::BoxError> {
        Err("store unreachable".into())
    }
}

#[tokio::test]
async fn replay_store_failures_follow_the_policy() {
    let msg = signed_sample(t0());
    let closed = gate_at(t0()).with_replay_store(std::sync::Arc::new(BrokenStore));
    assert_eq!(
        closed
            .check(&deliver(msg.clone(), 1, t0()))
            .await
            .unwrap_err()
            .reason,
        reason::REPLAY_CHECK_FAILED
    );
    let redelivery = closed.check(&deliver_seq(msg.clone(), 1, 2, t0())).await;
    assert_eq!(redelivery.unwrap_err().reason, reason::REPLAY_CHECK_FAILED);
    // Without a broker identity a redelivery cannot be checked, so it skips the store.
    closed.check(&deliver(msg.clone(), 2, t0())).await.unwrap();
    let open = gate_at(t0())
        .with_replay_store(std::sync::Arc::new(BrokenStore))
        .with_replay_store_failure(queue_security::ReplayStoreFailure::Allow);
    open.check(&deliver(msg.clone(), 1, t0())).await.unwrap();
    let off = gate_at(t0()).without_replay_protection();
    off.check(&deliver(msg.clone(), 1, t0())).await.unwrap();
    off.check(&deliver(msg, 1, t0())).await.unwrap();
}

#[test]
fn a_failed_signing_leaves_no_signature_and_no_new_id() {
    let q = QueueName::new(QUEUE).unwrap();
    let strict =
        MessageSigner::new(ring()).with_limits(Limits::default().with_max_attribute_value_len(12));
    let mut msg = signed_sample(t0());
    msg.attributes
        .insert("event".into(), "a-value-too-long".into());
    assert!(matches!(
        strict.sign_at(&q, &mut msg, t0()),
        Err(SecurityError::InvalidAttribute { .. })
    ));
    assert!(!msg.attributes.contains_key(SIGNATURE_ATTRIBUTE));
    assert_eq!(msg.message_id.as_ref().unwrap().as_str(), "msg-1");

    let mut fresh = Message::new("x").with_attribute("1-bad-name", "v");
    assert!(strict.sign_at(&q, &mut fresh, t0()).is_err());
    assert!(fresh.message_id.is_none());
    assert!(!fresh.attributes.contains_key(SIGNATURE_ATTRIBUTE));
}

#[test]
fn without_a_signing_key_the_message_limits_are_named_first() {
    let q = QueueName::new(QUEUE).unwrap();
    let keyless = MessageSigner::new(KeyRing::new());
    let mut bad = Message::new("x").with_attribute("1-bad-name", "v");
    assert!(matches!(
        keyless.sign_at(&q, &mut bad, t0()),
        Err(SecurityError::InvalidAttribute { .. })
    ));
    let mut fine = Message::new("x").with_attribute("event", "v");
    assert!(matches!(
        keyless.sign_at(&q, &mut fine, t0()),
        Err(SecurityError::NoActiveKey)
    ));
}

#[test]
fn the_attribute_limit_does_not_count_a_previous_signature() {
    let q = QueueName::new(QUEUE).unwrap();
    let signer = MessageSigner::new(ring()).with_limits(Limits::default().with_max_attributes(2));
    let mut msg = signed_sample(t0());
    assert_eq!(msg.attributes.len(), 3, "two attributes and the signature");
    signer.sign_at(&q, &mut msg, t0()).unwrap();
    let verifier =
        SignatureVerifier::new(ring()).with_limits(Limits::default().with_max_attributes(2));
    verifier.verify(&deliver(msg.clone(), 1, t0())).unwrap();
    msg.attributes.insert("third".into(), "3".into());
    assert!(matches!(
        signer.sign_at(&q, &mut msg, t0()),
        Err(SecurityError::TooManyAttributes { count: 3, max: 2 })
    ));
}

#[test]
fn covered_names_match_whole_and_a_missing_one_outranks_an_uncovered_one() {
    // The sample covers `action` and `event`; each is renamed to a prefix or an
    // extension of itself, or to a name sorting elsewhere.
    let base = deliver(signed_sample(t0()), 1, t0());
    let strict = SignatureVerifier::new(ring());
    let lenient = SignatureVerifier::new(ring()).with_allow_uncovered_attributes(true);
    for (from, to) in [
        ("event", "even"),
        ("event", "events"),
        ("event", "a"),
        ("action", "a"),
        ("action", "actions"),
        ("action", "zzz"),
    ] {
        let mut rm = base.clone();
        let value = rm.message.attributes.remove(from).unwrap();
        rm.message.attributes.insert(to.into(), value);
        for verifier in [&strict, &lenient] {
            assert!(
                matches!(verifier.verify(&rm), Err(SecurityError::SignatureInvalid)),
                "{from} -> {to}"
            );
        }
    }
}
