//! The intake on Azure Service Bus: the in-process emulator on its TLS port (as a real
//! namespace is reached), real HTTP requests on 127.0.0.1. Deliveries land in one session per
//! pull request or ref, in order, once each (the broker de-duplicates redeliveries on the
//! delivery id), and a broker that goes away is answered with 503 and `Retry-After` within the
//! enqueue deadline.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use queue_azure::ServiceBusProvider;
use queue_core::{QueueName, SharedQueueProvider};
use queue_webhook::{DUPLICATE_WINDOW, SecretString, WebhookIntake, WebhookVerifier};
use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};

mod common;
use common::*;

/// The namespace key: a canary that must never reach an HTTP answer.
const KEY: &str = "CANARY-webhook-sb-6e1f";

fn queue() -> QueueName {
    QueueName::new("github-events").unwrap()
}

/// The emulator with the queue a deployment would create for webhook events: sessions
/// required and duplicate detection on (Service Bus queues are created through Azure
/// Resource Manager, not over AMQP, so the intake cannot create it).
async fn emulator() -> Emulator {
    let spec = QueueConfig::new()
        .with_requires_session(true)
        .with_duplicate_detection(DUPLICATE_WINDOW);
    let config = EmulatorConfig::new()
        .with_key("RootManageSharedAccessKey", KEY)
        .with_queue(queue().as_str(), spec);
    Emulator::start_tls(config).await.unwrap()
}

fn provider(emu: &Emulator) -> SharedQueueProvider {
    let provider = ServiceBusProvider::builder()
        .with_connection_string(&emu.tls_connection_string(true).unwrap())
        .dangerous_add_test_root_certificate(emu.ca_pem().unwrap().as_bytes())
        .with_operation_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    Arc::new(provider)
}

fn intake(provider: SharedQueueProvider) -> WebhookIntake {
    let verifier = WebhookVerifier::new(SecretString::from(SECRET));
    WebhookIntake::new(provider, queue(), verifier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_land_in_service_bus_sessions_in_order_once_each() {
    let emu = emulator().await;
    let provider = provider(&emu);
    let addr = serve(&intake(provider.clone())).await;
    let deliveries = [
        (
            "pull_request",
            "5b1c7e10-cc78-11e3-81ab-4c9367dc0958",
            PULL_REQUEST,
        ),
        (
            "issue_comment",
            "5b1c7e11-cc78-11e3-81ab-4c9367dc0958",
            ISSUE_COMMENT,
        ),
        ("push", "5b1c7e12-cc78-11e3-81ab-4c9367dc0958", PUSH),
    ];
    for (event, delivery, body) in deliveries {
        let (status, reply) = deliver(addr, event, delivery, body.as_bytes(), SECRET).await;
        assert_eq!(status, 202, "{event}: {reply}");
        assert!(reply.contains(delivery), "{reply}");
    }
    // GitHub redelivers the first one: accepted, and dropped by the broker.
    let (first_event, first_id, first_body) = deliveries[0];
    let (status, _) = deliver(addr, first_event, first_id, first_body.as_bytes(), SECRET).await;
    assert_eq!(status, 202);
    let (status, _) = deliver(addr, "push", "forged-1", PUSH.as_bytes(), "wrong").await;
    assert_eq!(status, 401);

    let pr = drain_session(&provider, &queue(), "octo-org/widgets#42").await;
    let ids: Vec<&str> = pr.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(
        ids,
        [deliveries[0].1, deliveries[1].1],
        "in order, no duplicate"
    );
    assert_eq!(pr[0].message.body.as_ref(), PULL_REQUEST.as_bytes());
    let event = pr[1].message.attributes.get("github-event");
    assert_eq!(event.map(String::as_str), Some("issue_comment"));
    let push = drain_session(&provider, &queue(), "octo-org/widgets@refs/heads/main").await;
    assert_eq!(push.len(), 1);
    assert_eq!(push[0].message_id.as_str(), deliveries[2].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_is_answered_503_with_retry_after_within_the_deadline() {
    let emu = emulator().await;
    let deadline = Duration::from_secs(4);
    let intake = intake(provider(&emu)).with_enqueue_deadline(deadline);
    let addr = serve(&intake).await;
    let (status, reply) = deliver(addr, "push", "before-stop", PUSH.as_bytes(), SECRET).await;
    assert_eq!(status, 202, "{reply}");

    drop(emu); // the broker goes away: listeners closed, connections cut
    let headers = [
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", "after-stop"),
        ("Content-Type", "application/json"),
    ];
    let signature = sign(SECRET, PUSH.as_bytes());
    let mut all = headers.to_vec();
    all.push(("X-Hub-Signature-256", signature.as_str()));
    let started = Instant::now();
    let (status, head, body) = exchange(addr, "POST /webhook", &all, PUSH.as_bytes()).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 30"),
        "{head}"
    );
    assert!(
        took <= deadline + Duration::from_secs(1),
        "answered after {took:?}"
    );
    assert!(body.contains("redeliver later"), "{body}");
    assert!(!head.contains(KEY) && !body.contains(KEY), "the key leaked");
    // Liveness does not depend on the broker.
    assert_eq!(request(addr, "GET /healthz", &[], b"").await.0, 200);
}
