//! Every provider's send path retries the same way: through the `Retrying` layer of the
//! default stack, never inside a provider or SDK.
//!
//! Per provider (memory always; SQS on moto when `QUEUE_TEST_SQS_ENDPOINT` is set; Service
//! Bus on the in-process emulator with feature `azure`): the bare provider behind
//! `FaultInjecting` and the default stack; the first send attempt fails before reaching the
//! broker and the second lands but loses its reply, so the third attempt is a re-send of
//! a message the broker already has. The caller gets one id, the send was tried exactly
//! three times, and the queue (duplicate detection on) holds exactly one copy.
//!
//! Plus, without any server: a provider built from configuration pointed at a port that
//! accepts and drops every connection makes exactly `max_attempts` (3) connection attempts
//! per send, so no SDK retries hide under the layer.
//!
//! And a batch with a refused entry through the same layer on the in-memory provider: the
//! `sqs` profile (not `batch_atomic`, like SQS) ends in a `PartialBatch` over the caller's
//! indices with the accepted entries stored once; the `memory` profile (atomic) ends in the
//! entry's own error with nothing stored.

#[cfg(feature = "aws")]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::{sync::Arc, time::Duration};

use queue_runtime::QueueError;
#[cfg(feature = "aws")]
use queue_runtime::RetryClass;
use queue_runtime::{
    Message, QueueName, QueueProvider, QueueSpec, ReceiveOptions, SharedQueueProvider,
    layer::{Fault, FaultInjecting, Faults, RetryConfig, When, default_stack},
};

/// `provider` behind a send that fails, then loses its reply, then works.
fn flaky_stack(provider: SharedQueueProvider) -> (SharedQueueProvider, Arc<Faults>) {
    let faults = Arc::new(
        Faults::seeded(1)
            .on("send", When::Calls(vec![1]), Fault::Transient)
            .on("send", When::Calls(vec![2]), Fault::LostReply),
    );
    let flaky = FaultInjecting::from_arc(provider, faults.clone());
    let retry = RetryConfig::default().with_seed(2);
    (default_stack(Arc::new(flaky), retry), faults)
}

/// Sends one message through the flaky stack and checks the queue holds it once.
async fn sends_once_after_retries(provider: SharedQueueProvider, queue: &QueueName, msg: Message) {
    let (stack, faults) = flaky_stack(provider.clone());
    let id = stack
        .send(queue, msg)
        .await
        .expect("the third attempt lands");
    assert_eq!(faults.calls("send"), 3, "one send, three attempts");
    let mut got = Vec::new();
    for _ in 0..5 {
        let batch = provider
            .receive(queue, ReceiveOptions::new(10, Duration::from_secs(1)))
            .await
            .unwrap();
        for m in &batch {
            provider.complete(&m.receipt).await.unwrap();
        }
        got.extend(batch.into_iter().map(|m| m.message_id));
        if !got.is_empty() {
            // One more short look for a duplicate.
            let more = provider
                .receive(queue, ReceiveOptions::new(10, Duration::from_millis(500)))
                .await
                .unwrap();
            got.extend(more.into_iter().map(|m| m.message_id));
            break;
        }
    }
    assert_eq!(
        got,
        vec![id],
        "exactly one copy under the id the caller got"
    );
}

#[tokio::test]
async fn memory_send_retries_in_the_layer() {
    let memory = queue_memory::InMemoryProvider::new();
    let queue = QueueName::new("send-retry").unwrap();
    let spec = QueueSpec::default().with_duplicate_detection(Duration::from_secs(600));
    memory.create_queue(&queue, &spec).await.unwrap();
    sends_once_after_retries(Arc::new(memory), &queue, Message::new("m")).await;
}

/// `[ok-1, oversize, ok-2]` through the flaky default stack: the first
/// `send_batch` lands but loses its reply, so the layer re-sends the batch under the same
/// ids. Returns the answer, the number of `send_batch` calls and the bodies then stored.
async fn batch_with_a_refused_entry(
    profile: queue_memory::Profile,
) -> (
    queue_runtime::Result<Vec<queue_runtime::MessageId>>,
    u64,
    Vec<String>,
) {
    let memory = queue_memory::InMemoryProvider::builder()
        .with_profile(profile)
        .build()
        .unwrap();
    let queue = QueueName::new("batch-retry.fifo").unwrap();
    let spec = QueueSpec::default().with_duplicate_detection(Duration::from_secs(600));
    memory.create_queue(&queue, &spec).await.unwrap();
    let provider: SharedQueueProvider = Arc::new(memory.clone());
    let faults =
        Arc::new(Faults::seeded(1).on("send_batch", When::Calls(vec![1]), Fault::LostReply));
    let flaky = FaultInjecting::from_arc(provider, faults.clone());
    let stack = default_stack(Arc::new(flaky), RetryConfig::default().with_seed(2));
    let oversize = vec![b'x'; memory.capabilities().max_message_size + 1];
    let batch = [b"ok-1".to_vec(), oversize, b"ok-2".to_vec()]
        .into_iter()
        .map(Message::new)
        .collect();
    let answer = stack.send_batch(&queue, batch).await;
    let got = memory
        .receive(&queue, ReceiveOptions::new(10, Duration::ZERO))
        .await
        .unwrap();
    let bodies = got
        .iter()
        .map(|m| String::from_utf8_lossy(m.body()).into_owned())
        .collect();
    (answer, faults.calls("send_batch"), bodies)
}

#[tokio::test(start_paused = true)]
async fn memory_sqs_profile_partial_batch_through_the_layer() {
    let (answer, calls, stored) = batch_with_a_refused_entry(queue_memory::Profile::Sqs).await;
    assert_eq!(
        calls, 2,
        "one re-send after the lost reply, none for the refusal"
    );
    match answer {
        Err(QueueError::PartialBatch {
            total,
            succeeded,
            failed,
            ..
        }) => {
            assert_eq!(total, 3);
            let sent: Vec<usize> = succeeded.iter().map(|(i, _)| *i).collect();
            assert_eq!(sent, [0, 2]);
            assert!(
                matches!(&failed[..], [f] if f.index == 1
                    && matches!(f.error, QueueError::MessageTooLarge { .. })),
                "{failed:?}"
            );
        }
        other => panic!("expected PartialBatch, got {other:?}"),
    }
    assert_eq!(stored, ["ok-1", "ok-2"], "the accepted entries, once each");
}

#[tokio::test(start_paused = true)]
async fn memory_atomic_profile_refuses_the_whole_batch_through_the_layer() {
    let (answer, calls, stored) = batch_with_a_refused_entry(queue_memory::Profile::Memory).await;
    assert_eq!(calls, 2);
    assert!(
        matches!(answer, Err(QueueError::MessageTooLarge { .. })),
        "{answer:?}"
    );
    assert!(
        stored.is_empty(),
        "an atomic batch with a refused entry stores nothing"
    );
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn sqs_send_retries_in_the_layer() {
    let Some(endpoint) = sqs_endpoint("sqs_send_retries_in_the_layer") else {
        return;
    };
    let provider = queue_aws::SqsProvider::builder()
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_credentials(queue_aws::StaticCredentials::new(
            "test".into(),
            "test".into(),
        ))
        .build()
        .await
        .unwrap();
    let provider: SharedQueueProvider = Arc::new(provider);
    // A FIFO queue: SQS de-duplicates on the message id (MessageDeduplicationId).
    let queue = QueueName::new(format!("send-retry-{}.fifo", std::process::id())).unwrap();
    provider
        .create_queue(&queue, &QueueSpec::default().with_sessions(true))
        .await
        .unwrap();
    let group = queue_runtime::SessionId::new("g").unwrap();
    let msg = Message::new("m").with_session_id(group);
    sends_once_after_retries(provider.clone(), &queue, msg).await;
    provider.delete_queue(&queue).await.unwrap();
}

#[cfg(feature = "aws")]
fn sqs_endpoint(test: &str) -> Option<String> {
    queue_runtime::ci::test_server(
        "QUEUE_TEST_SQS_ENDPOINT",
        test,
        "cargo xtask test starts moto",
    )
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_bus_send_retries_in_the_layer() {
    use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};
    let cfg = EmulatorConfig::new()
        .with_key("RootManageSharedAccessKey", "send-retry-key")
        .with_queue(
            "send-retry",
            QueueConfig::new().with_duplicate_detection(Duration::from_secs(600)),
        );
    let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let provider = queue_azure::ServiceBusProvider::builder()
        .with_connection_string(&emu.connection_string(true))
        .with_duplicate_detection(true)
        .build()
        .unwrap();
    let queue = QueueName::new("send-retry").unwrap();
    sends_once_after_retries(Arc::new(provider), &queue, Message::new("m")).await;
}

/// A TCP port that accepts connections, counts them and drops them at once.
#[cfg(feature = "aws")]
async fn dropping_port() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (addr, count)
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn sqs_from_config_makes_exactly_the_layers_attempts() {
    let (addr, connections) = dropping_port().await;
    let config = queue_runtime::QueueRuntimeConfig::from_toml_str(&format!(
        "queue = \"q\"\n[provider]\nkind = \"sqs\"\nregion = \"us-east-1\"\n\
         endpoint = \"http://{addr}\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n"
    ))
    .unwrap();
    let provider = queue_runtime::build_provider(&config.provider)
        .await
        .unwrap();
    let queue = QueueName::new("q").unwrap();
    let err = provider.send(&queue, Message::new("m")).await.unwrap_err();
    let attempts = match &err {
        QueueError::RetriesExhausted { attempts, .. } => *attempts,
        other => panic!("expected the layer to give up after retries, got {other}"),
    };
    assert_eq!(err.retry_class(), RetryClass::Exhausted);
    assert_eq!(attempts, RetryConfig::default().max_attempts);
    // One connection per attempt: the SDK itself did not retry.
    assert_eq!(
        connections.load(Ordering::SeqCst),
        attempts as usize,
        "{err}"
    );
}
