//! Conformance cases every `ReplayStore` must pass, run against the in-process store and
//! against a real Redis (`QUEUE_TEST_REDIS_URL`, set by `cargo xtask test`).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use queue_security::{ReplayStore, ReplayVerdict};

fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap_or_default()
        .as_nanos();
    format!("{prefix}-{}-{t}-{n}", std::process::id())
}

/// First sighting records; the same identity again is a redelivery; another identity is
/// a replay; the first identity stays the one remembered.
async fn first_redelivery_replay(store: &dyn ReplayStore) {
    let nonce = unique("nonce");
    let now = SystemTime::now();
    let until = now + Duration::from_secs(60);
    let check = |id: &'static str| store.check_and_record(&nonce, id, now, until);
    assert_eq!(check("seq:1").await.unwrap(), ReplayVerdict::First);
    assert_eq!(check("seq:1").await.unwrap(), ReplayVerdict::Redelivery);
    assert_eq!(check("seq:2").await.unwrap(), ReplayVerdict::Replay);
    assert_eq!(check("seq:1").await.unwrap(), ReplayVerdict::Redelivery);
}

/// Different nonces never interfere.
async fn nonces_are_independent(store: &dyn ReplayStore) {
    let now = SystemTime::now();
    let until = now + Duration::from_secs(60);
    for _ in 0..20 {
        let nonce = unique("independent");
        let verdict = store.check_and_record(&nonce, "id:same", now, until).await;
        assert_eq!(verdict.unwrap(), ReplayVerdict::First);
    }
}

/// After its expiry a nonce is forgotten (real time: the Redis store uses server TTLs).
async fn expiry_forgets(store: &dyn ReplayStore) {
    let nonce = unique("expiry");
    let now = SystemTime::now();
    let verdict = store
        .check_and_record(&nonce, "id:a", now, now + Duration::from_millis(200))
        .await;
    assert_eq!(verdict.unwrap(), ReplayVerdict::First);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = SystemTime::now();
    let verdict = store
        .check_and_record(&nonce, "id:b", later, later + Duration::from_secs(60))
        .await;
    assert_eq!(
        verdict.unwrap(),
        ReplayVerdict::First,
        "expired nonce still remembered"
    );
}

/// Of concurrent first sightings with different identities exactly one wins; the others
/// are replays.
async fn concurrent_first_sightings(store: Arc<dyn ReplayStore>) {
    let nonce = unique("race");
    let now = SystemTime::now();
    let until = now + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let nonce = nonce.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("id:{i}");
            store
                .check_and_record(&nonce, &id, now, until)
                .await
                .unwrap()
        }));
    }
    let mut first = 0;
    for task in tasks {
        match task.await.unwrap() {
            ReplayVerdict::First => first += 1,
            ReplayVerdict::Replay => {}
            other => panic!("distinct identities seen as one: {other:?}"),
        }
    }
    assert_eq!(first, 1, "exactly one first sighting");
}

/// Runs every case above.
async fn run_all(store: Arc<dyn ReplayStore>) {
    first_redelivery_replay(store.as_ref()).await;
    nonces_are_independent(store.as_ref()).await;
    expiry_forgets(store.as_ref()).await;
    concurrent_first_sightings(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_conformance() {
    run_all(Arc::new(queue_security::InMemoryReplayStore::new(10_000))).await;
}

/// `QUEUE_TEST_REDIS_URL` (set by `cargo xtask test`), or `None` with a message. Under
/// `CI=true` a missing URL fails the test: CI must run these against a real Redis.
#[cfg(feature = "redis")]
#[allow(clippy::print_stderr, reason = "a skipped test says so")]
fn redis_url() -> Option<String> {
    queue_core::ci::test_server(
        "QUEUE_TEST_REDIS_URL",
        module_path!(),
        "cargo xtask test starts Redis",
    )
}

#[cfg(feature = "redis")]
mod redis_store {
    use std::{sync::Arc, time::Duration};

    use queue_core::{Message, MessageGate, MessageId, QueueName, Receipt, ReceivedMessage};
    use queue_security::{
        KeyRing, MessageSigner, RedisReplayStore, ReplayStoreFailure, SignatureGate, reason,
    };
    use secrecy::SecretSlice;

    use super::*;

    async fn store(url: &str) -> RedisReplayStore {
        RedisReplayStore::connect(url)
            .await
            .expect("QUEUE_TEST_REDIS_URL is set but Redis is unreachable")
            .with_prefix(unique("test:"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_conformance() {
        let Some(url) = redis_url() else { return };
        run_all(Arc::new(store(&url).await)).await;
    }

    fn ring() -> KeyRing {
        let ring = KeyRing::new();
        ring.insert("k1", SecretSlice::from(vec![7u8; 32])).unwrap();
        ring.set_active("k1").unwrap();
        ring
    }

    fn delivery(msg: &Message, seq: i64, dc: u32) -> ReceivedMessage {
        let queue = QueueName::new("events").unwrap();
        let id = msg.message_id.clone().unwrap();
        let receipt = Receipt::new("test", queue, None, format!("r-{seq}-{dc}"));
        ReceivedMessage::new(msg.clone(), id, dc, SystemTime::now(), receipt)
            .with_sequence_number(seq)
    }

    fn signed() -> Message {
        let mut msg = Message::new("body").with_message_id(MessageId::new(unique("m")).unwrap());
        MessageSigner::new(ring())
            .sign(&QueueName::new("events").unwrap(), &mut msg)
            .unwrap();
        msg
    }

    /// Two consumer processes (two gates, one Redis): a copy handled by one makes the
    /// original a replay on the other, and redeliveries pass on either.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gates_on_two_instances_share_the_replay_guarantee() {
        let Some(url) = redis_url() else { return };
        let shared = Arc::new(store(&url).await);
        let a = SignatureGate::new(ring()).with_replay_store(shared.clone());
        let b = SignatureGate::new(ring()).with_replay_store(Arc::new(
            // Another connection, the same keys.
            RedisReplayStore::connect(&url)
                .await
                .unwrap()
                .with_prefix(shared.prefix()),
        ));
        let msg = signed();
        a.check(&delivery(&msg, 1, 1)).await.unwrap();
        b.check(&delivery(&msg, 1, 2)).await.unwrap();
        let copy = b.check(&delivery(&msg, 2, 1)).await.unwrap_err();
        assert_eq!(copy.reason, reason::REPLAYED);
        let copy_on_a = a.check(&delivery(&msg, 2, 2)).await.unwrap_err();
        assert_eq!(copy_on_a.reason, reason::REPLAYED);
    }

    /// A Redis that does not answer within the timeout: the gate rejects (fail closed,
    /// the default) or accepts with an error log (fail open), as configured.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unanswering_redis_fails_closed_or_open_per_policy() {
        let Some(url) = redis_url() else { return };
        let timeout = Duration::from_millis(300);
        let slow = Arc::new(
            RedisReplayStore::connect_with(&url, timeout)
                .await
                .unwrap()
                .with_prefix(unique("test:")),
        );
        let closed = SignatureGate::new(ring()).with_replay_store(slow.clone());
        let open = SignatureGate::new(ring())
            .with_replay_store(slow)
            .with_replay_store_failure(ReplayStoreFailure::Allow);
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut admin = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1_500)
            .arg("WRITE")
            .query_async(&mut admin)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let rejected = closed.check(&delivery(&signed(), 1, 1)).await.unwrap_err();
        assert_eq!(rejected.reason, reason::REPLAY_CHECK_FAILED);
        open.check(&delivery(&signed(), 1, 1)).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(1_400),
            "waits are bounded"
        );
        let _: () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query_async(&mut admin)
            .await
            .unwrap();
    }
}
