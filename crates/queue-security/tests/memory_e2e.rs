//! The signing decorator and the gate around the in-memory provider, on tokio's virtual
//! clock: what the consumer runtime does with a gate (check, then dead-letter with the
//! rejection's reason), done by hand. Messages carry no session id here: the memory
//! provider hands session messages out only through `accept_session`, and session-id
//! coverage is tested in `signature.rs`.

use std::time::Duration;

use queue_core::{
    DeadLetterReason, Message, MessageGate, QueueName, QueueProvider, QueueSpec, ReceiveOptions,
    ReceivedMessage,
};
use queue_memory::{InMemoryProvider, Profile};
use queue_security::{
    KeyRing, Limits, MessageSigner, SecurityError, SignatureGate, Signing, generate_key, reason,
};

struct Fixture {
    raw: InMemoryProvider,
    producer: Signing<InMemoryProvider>,
    gate: SignatureGate,
    queue: QueueName,
}

fn fixture() -> Fixture {
    fixture_on(Profile::Memory)
}

/// The memory provider imitating `profile`'s limits.
fn fixture_on(profile: Profile) -> Fixture {
    let queue = QueueName::new("events").unwrap();
    let raw = InMemoryProvider::builder()
        .with_profile(profile)
        .with_queue(
            queue.clone(),
            QueueSpec::default().with_lock_duration(Duration::from_secs(30)),
        )
        .build()
        .unwrap();
    let ring = KeyRing::new();
    ring.insert("k1", generate_key().unwrap()).unwrap();
    ring.set_active("k1").unwrap();
    let clock = raw.clone();
    let producer = Signing::new(
        raw.clone(),
        MessageSigner::new(ring.clone()).with_clock(move || clock.now()),
    );
    let clock = raw.clone();
    let gate = SignatureGate::new(ring)
        .with_max_skew(Duration::from_secs(120))
        .expect("skew within MAX_WINDOW")
        .with_clock(move || clock.now());
    Fixture {
        raw,
        producer,
        gate,
        queue,
    }
}

impl Fixture {
    async fn receive(&self) -> ReceivedMessage {
        self.raw
            .receive(
                &self.queue,
                ReceiveOptions::new(1, Duration::from_millis(10)),
            )
            .await
            .unwrap()
            .into_iter()
            .next()
            .expect("a message")
    }

    /// What the runtime does: gate, then complete or dead-letter with the reason.
    async fn process(&self, got: &ReceivedMessage) -> Result<(), &'static str> {
        match self.gate.check(got).await {
            Ok(()) => {
                self.raw.complete(&got.receipt).await.unwrap();
                Ok(())
            }
            Err(rejection) => {
                self.raw
                    .dead_letter(
                        &got.receipt,
                        DeadLetterReason::new(rejection.reason, rejection.description),
                    )
                    .await
                    .unwrap();
                Err(rejection.reason)
            }
        }
    }
}

fn event(n: u32) -> Message {
    Message::new(format!("{{\"n\":{n}}}"))
        .with_content_type("application/json")
        .with_correlation_id("flow-1")
        .with_attribute("github-event", "pull_request")
}

#[tokio::test(start_paused = true)]
async fn signed_messages_pass_and_redeliveries_an_hour_later_still_pass() {
    let f = fixture();
    f.producer.send(&f.queue, event(1)).await.unwrap();
    let first = f.receive().await;
    assert_eq!(first.delivery_count, 1);
    f.gate.check(&first).await.unwrap();
    // The handler fails; the message comes back after an hour of retries.
    f.raw.abandon(&first.receipt, None).await.unwrap();
    tokio::time::advance(Duration::from_secs(3_600)).await;
    let again = f.receive().await;
    assert!(again.delivery_count >= 2);
    assert_eq!(again.enqueued_at, first.enqueued_at);
    assert_eq!(f.process(&again).await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn send_batch_signs_every_message() {
    let f = fixture();
    f.producer
        .send_batch(&f.queue, vec![event(1), event(2), event(3)])
        .await
        .unwrap();
    for _ in 0..3 {
        let got = f.receive().await;
        assert!(got.message.attributes.contains_key("qr-sig"));
        assert_eq!(f.process(&got).await, Ok(()));
    }
}

#[tokio::test(start_paused = true)]
async fn attacks_are_dead_lettered_with_their_reason() {
    let f = fixture();
    f.producer.send(&f.queue, event(1)).await.unwrap();
    let original = f.receive().await;
    assert_eq!(f.process(&original).await, Ok(()));

    // Replay right away: a second first delivery of the same id.
    f.raw
        .send(&f.queue, original.message.clone())
        .await
        .unwrap();
    let replay = f.receive().await;
    assert_eq!(f.process(&replay).await, Err(reason::REPLAYED));

    // Replay an hour later: stale before the replay cache is even asked.
    tokio::time::advance(Duration::from_secs(3_600)).await;
    f.raw
        .send(&f.queue, original.message.clone())
        .await
        .unwrap();
    let late = f.receive().await;
    assert_eq!(f.process(&late).await, Err(reason::MESSAGE_STALE));

    // Tampered body.
    f.producer.send(&f.queue, event(2)).await.unwrap();
    let mut captured = f.receive().await;
    f.raw.complete(&captured.receipt).await.unwrap();
    captured.message.body = "{\"n\":999}".into();
    f.raw.send(&f.queue, captured.message).await.unwrap();
    let tampered = f.receive().await;
    assert_eq!(f.process(&tampered).await, Err(reason::SIGNATURE_INVALID));

    // Unsigned message from someone with send rights but no key.
    f.raw.send(&f.queue, event(3)).await.unwrap();
    let unsigned = f.receive().await;
    assert_eq!(f.process(&unsigned).await, Err(reason::UNSIGNED));

    let dead = f
        .raw
        .receive_dead_letters(&f.queue, ReceiveOptions::new(10, Duration::from_millis(10)))
        .await
        .unwrap();
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| d.dead_letter.as_ref().unwrap().reason.clone())
        .collect();
    assert_eq!(
        reasons,
        ["Replayed", "MessageStale", "SignatureInvalid", "Unsigned"]
    );
}

#[tokio::test(start_paused = true)]
async fn signing_failures_send_nothing() {
    let f = fixture();
    let too_many = (0..20).fold(event(1), |m, i| m.with_attribute(format!("a{i}"), "v"));
    let err = f
        .producer
        .send_batch(&f.queue, vec![event(1), too_many])
        .await
        .unwrap_err();
    assert_eq!(err.kind_label(), "invalid_message");
    assert_eq!(f.raw.message_count(&f.queue).unwrap(), 0);
}

/// The original's first delivery never reaches the gate (the consumer crashed and the lock
/// ran out); a copy sent meanwhile is checked first and handled. The original's
/// redelivery then carries the same signed message in another broker message (another
/// sequence number): a replay, not a second handling.
#[tokio::test(start_paused = true)]
async fn a_copy_handled_first_makes_the_unchecked_original_a_replay() {
    let f = fixture();
    f.producer.send(&f.queue, event(7)).await.unwrap();
    let original = f.receive().await;
    let original_seq = original
        .sequence_number
        .expect("memory reports sequence numbers");
    // The lock is lost: the original comes back, but only after a while.
    f.raw
        .abandon(&original.receipt, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    // The attacker's copy: the same bytes, sent again (a new broker message).
    f.raw
        .send(&f.queue, original.message.clone())
        .await
        .unwrap();
    let copy = f.receive().await;
    assert_ne!(copy.sequence_number, Some(original_seq));
    assert_eq!(
        f.process(&copy).await,
        Ok(()),
        "the copy is checked first and passes"
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    let redelivered = f.receive().await;
    assert_eq!(redelivered.sequence_number, Some(original_seq));
    assert_eq!(redelivered.delivery_count, 2);
    assert_eq!(f.process(&redelivered).await, Err(reason::REPLAYED));
}

/// A redelivery of the same broker message passes however often it comes back.
#[tokio::test(start_paused = true)]
async fn redeliveries_of_one_broker_message_pass() {
    let f = fixture();
    f.producer.send(&f.queue, event(8)).await.unwrap();
    for attempt in 1..=3 {
        let got = f.receive().await;
        assert_eq!(got.delivery_count, attempt);
        f.gate.check(&got).await.unwrap();
        f.raw.abandon(&got.receipt, None).await.unwrap();
    }
    let last = f.receive().await;
    assert_eq!(f.process(&last).await, Ok(()));
}

/// `event(0)` with `count` application attributes in all.
fn with_attributes(count: usize) -> Message {
    (1..count).fold(event(0), |m, i| m.with_attribute(format!("a{i}"), "v"))
}

#[tokio::test(start_paused = true)]
async fn a_signed_message_that_needs_more_slots_than_sqs_carries_is_refused_up_front() {
    let f = fixture_on(Profile::Sqs);
    // 8 application attributes + the signature = 9, what the SQS provider carries.
    f.producer.send(&f.queue, with_attributes(8)).await.unwrap();
    let got = f.receive().await;
    assert_eq!(got.message.attributes.len(), 9);
    assert_eq!(f.process(&got).await, Ok(()));

    // 9 + the signature: refused with the count, nothing sent, in a batch nothing at all.
    let err = f
        .producer
        .send(&f.queue, with_attributes(9))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("9 application attributes plus the signature need 10 attribute slots"),
        "{text}"
    );
    assert!(text.contains("at most 8 application attributes"), "{text}");
    let err = f
        .producer
        .send_batch(&f.queue, vec![event(1), with_attributes(9)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("need 10 attribute slots"), "{err}");
    assert_eq!(f.raw.message_count(&f.queue).unwrap(), 0);

    // Without the check, the provider itself refuses the signed message (as SQS does).
    let ring = f.producer.signer().keys().clone();
    let mut signed = with_attributes(9);
    MessageSigner::new(ring)
        .sign(&f.queue, &mut signed)
        .unwrap();
    assert!(f.raw.send(&f.queue, signed).await.is_err());

    // The same 9 attributes fit a provider without the bound.
    let unbounded = fixture();
    unbounded
        .producer
        .send(&unbounded.queue, with_attributes(9))
        .await
        .unwrap();
    assert_eq!(unbounded.process(&unbounded.receive().await).await, Ok(()));
}

#[test]
fn limits_fitted_to_a_provider_leave_a_slot_for_the_signature() {
    let sqs = InMemoryProvider::builder()
        .with_profile(Profile::Sqs)
        .build()
        .unwrap()
        .capabilities();
    let limits = Limits::default().fitted_to(&sqs);
    assert_eq!(limits.max_attributes, 8);
    assert!(
        limits
            .check_attributes(&with_attributes(8).attributes)
            .is_ok()
    );
    assert!(matches!(
        limits.check_attributes(&with_attributes(9).attributes),
        Err(SecurityError::TooManyAttributes { count: 9, max: 8 })
    ));
    assert!(matches!(
        Limits::check_attribute_slots(&with_attributes(9).attributes, "sqs", Some(9)),
        Err(SecurityError::TooManyAttributeSlots {
            attributes: 9,
            provider: "sqs",
            max: 9
        })
    ));
    assert!(Limits::check_attribute_slots(&with_attributes(50).attributes, "x", None).is_ok());
}
