//! Replay protection keyed to broker identity, on a real broker: the Service Bus emulator
//! (sequence numbers). A redelivery of the same broker message passes; the same signed
//! message in another broker message is a replay.
//!
//! SQS is not here yet: the SQS provider reports no broker identity (FIFO sequence numbers
//! are 128-bit and do not fit `sequence_number: i64`; `broker_message_id` is not set from the
//! SQS `MessageId` yet), so on SQS the gate falls back to checking first deliveries only,
//! as `docs/security.md` says.
#![cfg(all(feature = "security", feature = "azure"))]

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
    let seq = first
        .sequence_number
        .expect("the broker reports sequence numbers");
    gate.check(&first).await.expect("original passes");
    p.abandon(&first.receipt, None).await.expect("abandon");
    let again = receive_one(p, q).await;
    assert_eq!(again.sequence_number, Some(seq));
    assert!(again.delivery_count >= 2);
    gate.check(&again).await.expect("a redelivery passes");
    p.complete(&again.receipt).await.expect("complete");
    if !copy_expected {
        return;
    }
    p.send(q, msg).await.expect("send copy");
    let copy = receive_one(p, q).await;
    assert_ne!(copy.sequence_number, Some(seq), "a new broker message");
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
