//! A 25 MiB GitHub `push` delivery end to end: real HTTP into the intake, through the
//! claim-check layer (body to an object store, reference on the queue), out of the queue
//! with its body intact. On the in-memory provider always; on SQS (moto, when
//! `QUEUE_TEST_SQS_ENDPOINT` is set) and on the Service Bus emulator's TLS port. GitHub caps
//! payloads at 25 MB, far above what either queue takes (SQS 1 MiB, Service Bus Standard
//! 256 KiB), so without the layer the intake would answer 503 for such an event.

#![allow(clippy::print_stderr)] // the SQS test says why it skips

use std::{sync::Arc, time::Duration};

use queue_claim_check::{BlobStore, ClaimCheck, object_store::memory::InMemory};
use queue_core::{
    QueueName, QueueProvider, ReceiveOptions, ReceivedMessage, SessionSelector, SessionSupport,
    SharedQueueProvider,
};
use queue_webhook::{DUPLICATE_WINDOW, SecretString, WebhookIntake, WebhookVerifier};

mod common;
use common::*;

/// GitHub's cap (25 MB) rounded up to 25 MiB, plus room for the JSON's closing bytes.
const MAX_BODY: usize = 26 * 1024 * 1024;
const DELIVERY: &str = "d2e1b0a0-cc78-11e3-81ab-4c9367dc0958";

/// A `push` body of at least 25 MiB: many commits with ids, messages and file lists.
fn big_push() -> Vec<u8> {
    let target = 25 * 1024 * 1024;
    let mut out = String::with_capacity(target + 4096);
    out.push_str(r#"{"ref":"refs/heads/main","before":"9049f1265b7d61be4a8904a9a27120d2064dab3b","after":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","repository":{"id":1296269,"full_name":"octo-org/widgets"},"pusher":{"name":"octocat"},"commits":["#);
    let mut n: u64 = 0;
    while out.len() < target {
        if n > 0 {
            out.push(',');
        }
        let id = format!("{:040x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        out.push_str(&format!(
            r#"{{"id":"{id}","message":"Vendor dependency {n}","author":{{"name":"Octo Cat","email":"octocat@example.com"}},"added":["vendor/dep_{n}/lib.rs","vendor/dep_{n}/Cargo.toml"],"removed":[],"modified":["Cargo.lock"]}}"#
        ));
        n += 1;
    }
    out.push_str("]}");
    out.into_bytes()
}

fn claim_checked(provider: impl QueueProvider) -> SharedQueueProvider {
    let store = BlobStore::new(Arc::new(InMemory::new()));
    Arc::new(ClaimCheck::new(provider, store))
}

/// The one message on `queue`, through a session where the provider locks sessions.
async fn receive_the_delivery(
    provider: &SharedQueueProvider,
    queue: &QueueName,
) -> ReceivedMessage {
    let wait = Duration::from_secs(20);
    if provider.capabilities().sessions == SessionSupport::Locked {
        let session = provider
            .accept_session(queue, SessionSelector::Next, wait)
            .await
            .unwrap()
            .expect("a session with the delivery");
        let got = session.receive(ReceiveOptions::new(1, wait)).await.unwrap();
        let got = got.into_iter().next().expect("the delivery");
        session.complete(&got.receipt).await.unwrap();
        session.close().await.unwrap();
        got
    } else {
        let got = provider
            .receive(queue, ReceiveOptions::new(1, wait))
            .await
            .unwrap();
        let got = got.into_iter().next().expect("the delivery");
        provider.complete(&got.receipt).await.unwrap();
        got
    }
}

/// Delivers a 25 MiB push over HTTP, expects 202, and receives the body unchanged.
async fn push_of_25_mib_end_to_end(provider: SharedQueueProvider, queue: QueueName, create: bool) {
    let verifier = WebhookVerifier::new(SecretString::from(SECRET));
    let intake =
        WebhookIntake::new(provider.clone(), queue.clone(), verifier).with_max_body_size(MAX_BODY);
    if create {
        intake.create_queue().await.unwrap();
    }
    let addr = serve(&intake).await;
    let body = big_push();
    let (status, answer) = deliver(addr, "push", DELIVERY, &body, SECRET).await;
    assert_eq!(status, 202, "{answer}");
    let got = receive_the_delivery(&provider, &queue).await;
    assert_eq!(got.body().len(), body.len());
    assert!(
        got.body().as_ref() == body.as_slice(),
        "the body is the one GitHub sent"
    );
    assert_eq!(got.message_id.as_str(), DELIVERY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_25_mib_push_goes_through_the_intake_on_the_memory_provider() {
    let provider = claim_checked(queue_memory::InMemoryProvider::new());
    push_of_25_mib_end_to_end(provider, QueueName::new("github-events").unwrap(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_claim_check_the_same_push_is_refused() {
    let provider: SharedQueueProvider = Arc::new(queue_memory::InMemoryProvider::new());
    let queue = QueueName::new("github-events").unwrap();
    let verifier = WebhookVerifier::new(SecretString::from(SECRET));
    let intake = WebhookIntake::new(provider, queue, verifier).with_max_body_size(MAX_BODY);
    intake.create_queue().await.unwrap();
    let addr = serve(&intake).await;
    let (status, _) = deliver(addr, "push", DELIVERY, &big_push(), SECRET).await;
    assert_eq!(status, 503, "the queue alone cannot take 25 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_25_mib_push_goes_through_the_intake_on_sqs() {
    let Some(endpoint) = queue_core::ci::test_server(
        "QUEUE_TEST_SQS_ENDPOINT",
        "a_25_mib_push_goes_through_the_intake_on_sqs",
        "`cargo xtask test` starts moto",
    ) else {
        return;
    };
    let credentials =
        queue_aws::StaticCredentials::new(SecretString::from("test"), SecretString::from("test"));
    let sqs = queue_aws::SqsProvider::builder()
        .with_region("us-east-1")
        .with_endpoint(endpoint)
        .with_credentials(credentials)
        .build()
        .await
        .unwrap();
    let queue = QueueName::new(format!("webhook-large-{}.fifo", std::process::id())).unwrap();
    let provider = claim_checked(sqs);
    push_of_25_mib_end_to_end(provider.clone(), queue.clone(), true).await;
    provider.delete_queue(&queue).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_25_mib_push_goes_through_the_intake_on_service_bus() {
    use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};
    let queue = QueueName::new("github-events").unwrap();
    let spec = QueueConfig::new()
        .with_requires_session(true)
        .with_duplicate_detection(DUPLICATE_WINDOW);
    let config = EmulatorConfig::new()
        .with_key("RootManageSharedAccessKey", "claim-check-webhook-key")
        .with_queue(queue.as_str(), spec);
    let emu = Emulator::start_tls(config).await.unwrap();
    let service_bus = queue_azure::ServiceBusProvider::builder()
        .with_connection_string(&emu.tls_connection_string(true).unwrap())
        .dangerous_add_test_root_certificate(emu.ca_pem().unwrap().as_bytes())
        .build()
        .unwrap();
    push_of_25_mib_end_to_end(claim_checked(service_bus), queue, false).await;
}
