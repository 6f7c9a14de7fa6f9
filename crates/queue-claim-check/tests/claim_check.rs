//! The claim-check layer on the in-memory provider, with blobs in memory and in a local
//! directory: the 25 MiB round trip, small messages untouched, tampered, missing and
//! forged blobs dead-lettered with a reason, a crash between upload and send swept, store
//! outages classified and the message kept, sessions, dead-letter purges, and signing.

mod common;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use common::{GITHUB_MAX, blobs, github_push, receive_one, round_trip_github_push};
use queue_claim_check::{
    BlobReference, BlobStore, ClaimCheck, Cleanup, REFERENCE_ATTRIBUTE,
    object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, memory::InMemory, path::Path},
    reason,
};
use queue_core::{
    Message, MessageId, QueueError, QueueName, QueueProvider, QueueSpec, ReceiveOptions,
    ReceivedMessage, RetryClass, SessionId, SessionSelector,
};
use queue_memory::InMemoryProvider;

const WAIT: Duration = Duration::from_secs(5);

fn queue() -> QueueName {
    QueueName::new("events").unwrap()
}

struct Setup {
    provider: ClaimCheck<InMemoryProvider>,
    objects: Arc<dyn ObjectStore>,
    store: BlobStore,
}

async fn setup_with(objects: Arc<dyn ObjectStore>, spec: QueueSpec) -> Setup {
    let store = BlobStore::new(objects.clone());
    let provider = ClaimCheck::new(InMemoryProvider::new(), store.clone());
    provider.create_queue(&queue(), &spec).await.unwrap();
    Setup {
        provider,
        objects,
        store,
    }
}

async fn setup() -> Setup {
    setup_with(Arc::new(InMemory::new()), QueueSpec::default()).await
}

async fn one_dead_letter(s: &Setup) -> ReceivedMessage {
    let got = s
        .provider
        .receive_dead_letters(&queue(), ReceiveOptions::new(10, WAIT))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "exactly one dead letter");
    got.into_iter().next().unwrap()
}

/// Sends a 1 MiB message and returns its id and the reference its stub carries (read
/// straight from the inner provider, then abandoned).
async fn send_large(s: &Setup) -> (MessageId, BlobReference, Bytes) {
    let body = github_push(1 << 20);
    let id = s
        .provider
        .send(&queue(), Message::new(body.clone()))
        .await
        .unwrap();
    let inner = s.provider.inner_provider();
    let stub = inner
        .receive(&queue(), ReceiveOptions::new(1, WAIT))
        .await
        .unwrap();
    let stub = stub.into_iter().next().expect("stub");
    assert!(stub.body().is_empty(), "the queue carries an empty body");
    let reference = BlobReference::parse(&stub.message.attributes[REFERENCE_ATTRIBUTE]).unwrap();
    inner.abandon(&stub.receipt, None).await.unwrap();
    (id, reference, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_push_of_25_mib_round_trips_with_blobs_in_memory() {
    let s = setup().await;
    assert!(s.provider.threshold() < 256 * 1024);
    round_trip_github_push(&s.provider, &queue(), &s.objects, &s.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_push_of_25_mib_round_trips_with_blobs_in_a_directory() {
    let dir = std::env::temp_dir().join(format!("claim-check-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let local = queue_claim_check::object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .unwrap()
        .with_automatic_cleanup(true);
    let s = setup_with(Arc::new(local), QueueSpec::default()).await;
    round_trip_github_push(&s.provider, &queue(), &s.objects, &s.store).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn small_messages_pass_through_unchanged() {
    let s = setup().await;
    let msg = Message::new("{}").with_attribute("event", "ping");
    s.provider.send(&queue(), msg).await.unwrap();
    assert!(blobs(&s.objects, &s.store).await.is_empty());
    let got = receive_one(&s.provider, &queue(), WAIT).await.unwrap();
    assert_eq!(got.body().as_ref(), b"{}");
    assert_eq!(got.message.attributes.len(), 1);
    s.provider.complete(&got.receipt).await.unwrap();
}

#[tokio::test]
async fn a_tampered_blob_is_dead_lettered_and_kept() {
    let s = setup().await;
    let (id, reference, body) = send_large(&s).await;
    // Same length, one byte changed: only the digest can tell.
    let mut altered = body.to_vec();
    altered[1000] ^= 0x20;
    let path = Path::from(reference.key.as_str());
    s.objects
        .put(&path, PutPayload::from(altered))
        .await
        .unwrap();
    let got = s
        .provider
        .receive(&queue(), ReceiveOptions::new(10, WAIT))
        .await
        .unwrap();
    assert!(got.is_empty(), "the handler never sees it");
    let dead = one_dead_letter(&s).await;
    assert_eq!(dead.message_id, id);
    let why = dead.dead_letter.clone().expect("reason");
    assert_eq!(why.reason, reason::BLOB_ALTERED);
    assert!(why.description.contains("SHA-256"), "{}", why.description);
    // The dead letter keeps its (altered) blob, and its reference, for inspection.
    assert!(dead.message.attributes.contains_key(REFERENCE_ATTRIBUTE));
    assert_eq!(blobs(&s.objects, &s.store).await.len(), 1);
}

#[tokio::test]
async fn a_blob_of_another_size_is_dead_lettered_without_reading_it_whole() {
    let s = setup().await;
    let (_, reference, _) = send_large(&s).await;
    let path = Path::from(reference.key.as_str());
    s.objects
        .put(&path, PutPayload::from(vec![b'x'; 64 << 20]))
        .await
        .unwrap();
    let got = s
        .provider
        .receive(&queue(), ReceiveOptions::new(10, WAIT))
        .await
        .unwrap();
    assert!(got.is_empty());
    let why = one_dead_letter(&s).await.dead_letter.unwrap();
    assert_eq!(why.reason, reason::BLOB_ALTERED);
    assert!(why.description.contains("size"), "{}", why.description);
}

#[tokio::test]
async fn a_missing_blob_is_dead_lettered_with_a_reason() {
    let s = setup().await;
    let (id, reference, _) = send_large(&s).await;
    s.objects
        .delete(&Path::from(reference.key.as_str()))
        .await
        .unwrap();
    let got = s
        .provider
        .receive(&queue(), ReceiveOptions::new(10, WAIT))
        .await
        .unwrap();
    assert!(got.is_empty());
    let dead = one_dead_letter(&s).await;
    assert_eq!(dead.message_id, id);
    assert_eq!(dead.dead_letter.unwrap().reason, reason::BLOB_MISSING);
}

#[tokio::test]
async fn references_to_other_keys_or_oversize_bodies_are_refused_before_any_fetch() {
    let s = setup().await;
    let inner = s.provider.inner_provider();
    // A blob that exists, under a key this message id does not give.
    let (_, reference, _) = send_large(&s).await;
    let got = s
        .provider
        .receive(&queue(), ReceiveOptions::new(10, WAIT))
        .await
        .unwrap();
    s.provider.complete(&got[0].receipt).await.unwrap();
    s.objects
        .put(
            &Path::from(reference.key.as_str()),
            PutPayload::from(vec![1u8; 10]),
        )
        .await
        .unwrap();
    let forged = [
        BlobReference::new(reference.key.clone(), reference.size, reference.sha256).to_string(),
        format!("v=1;k=x;n={};d={}", 1u64 << 40, "00".repeat(32)),
        "v=1;k=../etc/passwd;n=1;d=00".to_owned(),
    ];
    let want = [
        reason::REFERENCE_INVALID,
        reason::TOO_LARGE,
        reason::REFERENCE_INVALID,
    ];
    for (text, want) in forged.iter().zip(want) {
        let msg = Message::new(Bytes::new()).with_attribute(REFERENCE_ATTRIBUTE, text.as_str());
        inner.send(&queue(), msg).await.unwrap();
        let got = s
            .provider
            .receive(&queue(), ReceiveOptions::new(10, WAIT))
            .await
            .unwrap();
        assert!(got.is_empty(), "{text}");
        let dead = one_dead_letter(&s).await;
        assert_eq!(dead.dead_letter.as_ref().unwrap().reason, want, "{text}");
        inner.complete(&dead.receipt).await.unwrap();
    }
}

#[tokio::test]
async fn the_reference_attribute_is_reserved_on_send() {
    let s = setup().await;
    let msg = Message::new("x").with_attribute(REFERENCE_ATTRIBUTE, "v=1");
    let err = s.provider.send(&queue(), msg).await.unwrap_err();
    assert!(matches!(err, QueueError::InvalidMessage { .. }), "{err}");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_before_upload() {
    let s = setup().await;
    let provider =
        ClaimCheck::new(InMemoryProvider::new(), s.store.clone()).with_max_body_size(1 << 20);
    let err = provider
        .send(&queue(), Message::new(vec![0u8; (1 << 20) + 1]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, QueueError::MessageTooLarge { max, .. } if max == 1 << 20),
        "{err}"
    );
    assert!(blobs(&s.objects, &s.store).await.is_empty());
}

/// A provider whose send never returns: the process "crashes" (the task is aborted)
/// between the upload and the send.
mod hang {
    use queue_core::{Message, MessageId, QueueName, Result, layer::Forward};
    use queue_memory::InMemoryProvider;

    #[derive(Debug)]
    pub(crate) struct Hangs(pub(crate) InMemoryProvider);

    #[async_trait::async_trait]
    impl Forward for Hangs {
        type Inner = InMemoryProvider;
        fn inner(&self) -> &InMemoryProvider {
            &self.0
        }
        async fn send(&self, _: &QueueName, _: Message) -> Result<MessageId> {
            std::future::pending().await
        }
    }
}
use hang::Hangs;

#[tokio::test]
async fn a_crash_between_upload_and_send_leaves_an_orphan_that_the_sweep_removes() {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let store = BlobStore::new(objects.clone());
    let provider = Arc::new(ClaimCheck::new(
        Hangs(InMemoryProvider::new()),
        store.clone(),
    ));
    let sender = provider.clone();
    let task = tokio::spawn(async move {
        let _ = sender
            .send(&queue(), Message::new(github_push(1 << 20)))
            .await;
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while blobs(&objects, &store).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the upload happens");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    let _ = task.await;
    let young = provider.sweep(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(
        (young.listed, young.deleted),
        (1, 0),
        "a young blob may still be sent"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let old = provider.sweep(Duration::from_millis(10)).await.unwrap();
    assert_eq!((old.listed, old.deleted, old.failed), (1, 1, 0));
    assert!(
        blobs(&objects, &store).await.is_empty(),
        "the orphan is gone"
    );
}

#[tokio::test]
async fn a_refused_send_deletes_its_blob_at_once() {
    let s = setup().await;
    // The queue does not exist: a permanent error, so nothing was sent.
    let missing = QueueName::new("nowhere").unwrap();
    let err = s
        .provider
        .send(&missing, Message::new(github_push(1 << 20)))
        .await
        .unwrap_err();
    assert_eq!(err.retry_class(), RetryClass::Permanent, "{err}");
    assert!(blobs(&s.objects, &s.store).await.is_empty());
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn an_unreachable_store_keeps_the_message_and_fails_the_receive_as_transient() {
    use queue_claim_check::object_store::{ClientOptions, RetryConfig, aws::AmazonS3Builder};
    let s = setup().await;
    let (id, _, body) = send_large(&s).await;
    // A reader whose store refuses connections (nothing listens on the port).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = AmazonS3Builder::new()
        .with_bucket_name("claims")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_retry(RetryConfig {
            max_retries: 1,
            retry_timeout: Duration::from_secs(2),
            ..RetryConfig::default()
        })
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .build()
        .unwrap();
    let reader = ClaimCheck::from_arc(
        s.provider.inner_provider().clone(),
        BlobStore::new(Arc::new(down)),
    );
    let err = reader
        .receive(&queue(), ReceiveOptions::new(10, WAIT))
        .await
        .unwrap_err();
    assert_eq!(err.retry_class(), RetryClass::Transient, "{err}");
    // The message was abandoned, not dead-lettered: the healthy reader gets it.
    let got = receive_one(&s.provider, &queue(), WAIT)
        .await
        .expect("redelivered");
    assert_eq!((got.message_id.clone(), got.body().clone()), (id, body));
    assert_eq!(
        got.delivery_count, 3,
        "stub peek, failed fetch, this delivery"
    );
    s.provider.complete(&got.receipt).await.unwrap();
}

#[tokio::test]
async fn session_receivers_restore_bodies_and_clean_up() {
    let s = setup_with(
        Arc::new(InMemory::new()),
        QueueSpec::default().with_sessions(true),
    )
    .await;
    let session = SessionId::new("octo-org/monorepo#refs/heads/main").unwrap();
    for n in 0..2u8 {
        let body = vec![n; 512 * 1024];
        let msg = Message::new(body).with_session_id(session.clone());
        s.provider.send(&queue(), msg).await.unwrap();
    }
    assert_eq!(blobs(&s.objects, &s.store).await.len(), 2);
    let receiver = s
        .provider
        .accept_session(&queue(), SessionSelector::Named(session), WAIT)
        .await
        .unwrap()
        .expect("session");
    for n in 0..2u8 {
        let got = receiver
            .receive(ReceiveOptions::new(1, WAIT))
            .await
            .unwrap();
        assert_eq!(
            got[0].body().as_ref(),
            vec![n; 512 * 1024].as_slice(),
            "in order"
        );
        receiver.complete(&got[0].receipt).await.unwrap();
    }
    receiver.close().await.unwrap();
    assert!(blobs(&s.objects, &s.store).await.is_empty());
}

#[tokio::test]
async fn dead_letters_keep_their_blob_until_purged_and_redrive_re_offloads() {
    let s = setup().await;
    let body = github_push(1 << 20);
    s.provider
        .send(&queue(), Message::new(body.clone()))
        .await
        .unwrap();
    let got = receive_one(&s.provider, &queue(), WAIT).await.unwrap();
    let why = queue_core::DeadLetterReason::new("HandlerFailed", "test");
    s.provider.dead_letter(&got.receipt, why).await.unwrap();
    assert_eq!(
        blobs(&s.objects, &s.store).await.len(),
        1,
        "kept for inspection"
    );
    let report = queue_core::QueueProviderExt::redrive(&s.provider, &queue(), Default::default())
        .await
        .unwrap();
    assert_eq!(report.moved, 1);
    // The old blob went with the purged dead letter; the redriven copy has its own.
    let blobs_now = blobs(&s.objects, &s.store).await;
    assert_eq!(blobs_now.len(), 1);
    let again = receive_one(&s.provider, &queue(), WAIT).await.unwrap();
    assert!(again.body() == &body);
    s.provider.complete(&again.receipt).await.unwrap();
    assert!(blobs(&s.objects, &s.store).await.is_empty());
}

#[tokio::test]
async fn sweep_only_keeps_blobs_after_complete() {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let store = BlobStore::new(objects.clone());
    let provider =
        ClaimCheck::new(InMemoryProvider::new(), store.clone()).with_cleanup(Cleanup::SweepOnly);
    provider
        .create_queue(&queue(), &QueueSpec::default())
        .await
        .unwrap();
    provider
        .send(&queue(), Message::new(vec![7u8; 300 * 1024]))
        .await
        .unwrap();
    let got = receive_one(&provider, &queue(), WAIT).await.unwrap();
    provider.complete(&got.receipt).await.unwrap();
    assert_eq!(blobs(&objects, &store).await.len(), 1);
}

#[tokio::test]
async fn capabilities_report_the_body_limit_and_the_reference_slot() {
    let s = setup().await;
    let inner = s.provider.inner_provider().capabilities();
    let caps = s.provider.capabilities();
    assert_eq!(
        caps.max_message_size,
        queue_claim_check::DEFAULT_MAX_BODY_SIZE
    );
    assert_eq!(caps.max_attributes, inner.max_attributes.map(|n| n - 1));
    assert!(GITHUB_MAX < caps.max_message_size);
}
