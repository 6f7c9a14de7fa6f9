//! Attribute slots of signed messages on SQS (moto): the provider's metadata attribute and
//! the signature take 2 of SQS's 10 message attributes. A signed message with 8 application
//! attributes is sent, received and verified; one with 9 is refused by `Signing` before
//! anything is sent, with an error naming the count.
#![cfg(all(feature = "security", feature = "aws"))]
#![allow(clippy::print_stderr, reason = "a skipped test says so")]

use std::time::Duration;

use queue_runtime::{
    Message, MessageGate, QueueName, QueueProvider, QueueRuntimeConfig, QueueSpec, ReceiveOptions,
    build_provider,
    security::{KeyRing, MessageSigner, SignatureGate, Signing, generate_key},
};

fn ring() -> KeyRing {
    let ring = KeyRing::new();
    ring.insert("k1", generate_key().unwrap()).unwrap();
    ring.set_active("k1").unwrap();
    ring
}

fn with_attributes(count: usize) -> Message {
    (0..count).fold(Message::new("{\"n\":1}"), |m, i| {
        m.with_attribute(format!("a{i}"), "v")
    })
}

fn moto_endpoint() -> Option<String> {
    queue_runtime::ci::test_server(
        "QUEUE_TEST_SQS_ENDPOINT",
        module_path!(),
        "cargo xtask test starts moto",
    )
}

async fn scenario(signed: &Signing<dyn QueueProvider>, q: &QueueName) {
    let raw = signed.inner();
    assert_eq!(raw.capabilities().max_attributes, Some(9));

    signed.send(q, with_attributes(8)).await.expect("8 fit");
    let got = loop {
        let batch = raw
            .receive(q, ReceiveOptions::new(1, Duration::from_secs(2)))
            .await
            .expect("receive");
        if let Some(m) = batch.into_iter().next() {
            break m;
        }
    };
    assert_eq!(got.message.attributes.len(), 9, "8 + the signature");
    SignatureGate::new(signed.signer().keys().clone())
        .check(&got)
        .await
        .expect("verifies");
    raw.complete(&got.receipt).await.expect("complete");

    let err = signed.send(q, with_attributes(9)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("9 application attributes plus the signature need 10 attribute slots"),
        "{text}"
    );
    assert!(text.contains("sqs"), "{text}");
    // Without the check the SQS provider refuses it too, only later and less clearly.
    let mut bypass = with_attributes(9);
    MessageSigner::new(signed.signer().keys().clone())
        .sign(q, &mut bypass)
        .unwrap();
    assert!(raw.send(q, bypass).await.is_err());
    let left = raw
        .receive(q, ReceiveOptions::new(10, Duration::from_secs(1)))
        .await
        .expect("receive");
    assert!(left.is_empty(), "nothing else was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_signed_messages_fit_or_are_refused_up_front() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let config = QueueRuntimeConfig::from_toml_str(&format!(
        "queue = \"q\"\n[provider]\nkind = \"sqs\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n"
    ))
    .unwrap();
    let p = build_provider(&config.provider).await.unwrap();
    let q = QueueName::new(format!("slots-{}", std::process::id())).unwrap();
    p.create_queue(&q, &QueueSpec::default())
        .await
        .expect("create queue");
    let signed = Signing::from_arc(p.clone(), MessageSigner::new(ring()));
    tokio::time::timeout(Duration::from_secs(120), scenario(&signed, &q))
        .await
        .expect("bounded");
    let _ = p.delete_queue(&q).await;
}
