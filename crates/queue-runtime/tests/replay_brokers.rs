//! Replay protection keyed to broker identity, on real brokers: the Service Bus emulator
//! (sequence numbers) and SQS on moto (the SQS `MessageId`, reported as
//! `broker_message_id`). A redelivery of the same broker message passes; the same signed
//! message in another broker message is a replay.
#![cfg(all(feature = "security", feature = "azure"))]
#![allow(clippy::print_stderr, reason = "a skipped test says so")]

use std::time::Duration;

use queue_runtime::{
    Message, MessageGate, MessageId, QueueName, QueueProvider, QueueRuntimeConfig, ReceiveOptions,
    ReceivedMessage, build_provider,
    security::{KeyRing, MessageSigner, SignatureGate, generate_key, reason},
};
use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};

fn ring() -> KeyRing {
    let ring = KeyRing::new();
    ring.insert("k1", generate_key().unwrap()).unwrap();
    ring.set_active("k1").unwrap();
    ring
}

async fn receive_one(p: &dyn QueueProvider, q: &QueueName) -> ReceivedMessage {
    for _ in 0..20 {
        let got = p
            .receive(q, ReceiveOptions::new(1, Duration::from_secs(2)))
            .await
            .expect("receive");
        if let Some(m) = got.into_iter().next() {
            return m;
        }
    }
    panic!("no message within 40 s");
}

/// What the broker says identifies one stored message across its deliveries.
fn identity(m: &ReceivedMessage) -> Option<String> {
    m.broker_message_id
        .clone()
        .or_else(|| m.sequence_number.map(|s| format!("seq:{s}")))
}

/// Original: checked, abandoned, redelivered (passes). Copy: another broker message with
/// the same signature (a replay, when the broker lets it through at all).
async fn scenario(p: &dyn QueueProvider, q: &QueueName, copy_expected: bool) {
    let ring = ring();
    let gate = SignatureGate::new(ring.clone());
    let mut msg = Message::new("{\"n\":1}")
        .with_message_id(MessageId::new(format!("m-{}", std::process::id())).unwrap());
    MessageSigner::new(ring).sign(q, &mut msg).unwrap();
    p.send(q, msg.clone()).await.expect("send original");
    let first = receive_one(p, q).await;
    let id = identity(&first).expect("the broker reports an identity");
    gate.check(&first).await.expect("original passes");
    p.abandon(&first.receipt, None).await.expect("abandon");
    let again = receive_one(p, q).await;
    assert_eq!(identity(&again).as_deref(), Some(id.as_str()));
    assert!(again.delivery_count >= 2);
    gate.check(&again).await.expect("a redelivery passes");
    p.complete(&again.receipt).await.expect("complete");
    if !copy_expected {
        return;
    }
    p.send(q, msg).await.expect("send copy");
    let copy = receive_one(p, q).await;
    assert_ne!(
        identity(&copy).as_deref(),
        Some(id.as_str()),
        "a new broker message"
    );
    let rejection = gate.check(&copy).await.expect_err("the copy is a replay");
    assert_eq!(rejection.reason, reason::REPLAYED);
    p.complete(&copy.receipt).await.expect("complete copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_bus_emulator_redelivery_passes_copy_is_replay() {
    let cfg = EmulatorConfig::new()
        .with_key("RootManageSharedAccessKey", "replay-test-key")
        .with_queue("q", QueueConfig::new());
    let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("emulator starts");
    let config = QueueRuntimeConfig::from_toml_str(&format!(
        "queue = \"q\"\n[provider]\nkind = \"service-bus\"\nconnection_string = \"{}\"\n",
        emu.connection_string(true)
    ))
    .unwrap();
    let p = build_provider(&config.provider).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(120),
        scenario(p.as_ref(), &QueueName::new("q").unwrap(), true),
    )
    .await
    .expect("bounded");
}

/// SQS on moto (a standard queue, which takes the copy as a new message).
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_redelivery_passes_copy_is_replay() {
    let Some(endpoint) = queue_runtime::ci::test_server(
        "QUEUE_TEST_SQS_ENDPOINT",
        "sqs_redelivery_passes_copy_is_replay",
        "cargo xtask test starts moto",
    ) else {
        return;
    };
    let config = QueueRuntimeConfig::from_toml_str(&format!(
        "queue = \"q\"\n[provider]\nkind = \"sqs\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n"
    ))
    .unwrap();
    let p = build_provider(&config.provider).await.unwrap();
    let q = QueueName::new(format!("replay-{}", std::process::id())).unwrap();
    p.create_queue(&q, &queue_runtime::QueueSpec::default())
        .await
        .expect("create queue");
    tokio::time::timeout(Duration::from_secs(120), scenario(p.as_ref(), &q, true))
        .await
        .expect("bounded");
    let _ = p.delete_queue(&q).await;
}
