//! The in-memory provider's tricky semantics, on a paused tokio clock: lock expiry,
//! dead-lettering, TTL, scheduling, duplicate detection, sessions, limits, concurrency.

use std::{collections::HashSet, sync::Arc, time::Duration};

use bytes::Bytes;
use queue_core::{
    DeadLetterReason, MAX_DELIVERY_COUNT_EXCEEDED, Message, MessageId, QueueError, QueueName,
    QueueProvider, QueueSpec, Receipt, ReceiveOptions, ReceivedMessage, SessionId, SessionSelector,
};
use queue_memory::{InMemoryProvider, MemorySettings, Profile};
use tokio::time::{Instant, advance, sleep};

const LOCK: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::ZERO;

fn name(s: &str) -> QueueName {
    QueueName::new(s).unwrap()
}

fn sid(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}

async fn provider_with(spec: QueueSpec) -> (InMemoryProvider, QueueName) {
    let q = name("q");
    let p = InMemoryProvider::builder()
        .with_queue(q.clone(), spec)
        .build()
        .unwrap();
    (p, q)
}

async fn recv(p: &InMemoryProvider, q: &QueueName, max: usize) -> Vec<ReceivedMessage> {
    p.receive(q, ReceiveOptions::new(max, NO_WAIT))
        .await
        .unwrap()
}

fn body(m: &ReceivedMessage) -> &str {
    std::str::from_utf8(m.body()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn lock_expires_exactly_at_lock_duration() {
    let (p, q) = provider_with(QueueSpec::default().with_lock_duration(LOCK)).await;
    p.send(&q, Message::new("m")).await.unwrap();
    let first = recv(&p, &q, 1).await;
    let m = &first[0];
    assert_eq!(
        m.locked_until
            .unwrap()
            .duration_since(m.enqueued_at)
            .unwrap(),
        LOCK
    );
    advance(LOCK - Duration::from_millis(1)).await;
    assert!(
        recv(&p, &q, 1).await.is_empty(),
        "still locked 1 ms before expiry"
    );
    advance(Duration::from_millis(1)).await;
    let second = recv(&p, &q, 1).await;
    assert_eq!(second.len(), 1, "available at expiry");
    assert_eq!(second[0].delivery_count, 2);
    for op in [
        p.complete(&m.receipt).await,
        p.abandon(&m.receipt, None).await,
        p.renew_lock(&m.receipt).await.map(|_| ()),
    ] {
        assert!(matches!(op, Err(QueueError::LockLost { .. })), "{op:?}");
    }
    p.complete(&second[0].receipt).await.unwrap();
    assert_eq!(p.message_count(&q).unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn renew_extends_from_now_by_the_lock_duration() {
    let (p, q) = provider_with(QueueSpec::default().with_lock_duration(LOCK)).await;
    p.send(&q, Message::new("m")).await.unwrap();
    let m = recv(&p, &q, 1).await.remove(0);
    advance(Duration::from_secs(20)).await;
    let until = p.renew_lock(&m.receipt).await.unwrap();
    assert_eq!(until.duration_since(p.now()).unwrap(), LOCK);
    advance(Duration::from_secs(29)).await;
    assert!(recv(&p, &q, 1).await.is_empty(), "renewed lock still holds");
    p.complete(&m.receipt).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn lock_expiry_counts_towards_max_deliveries() {
    let spec = QueueSpec::default()
        .with_lock_duration(LOCK)
        .with_max_delivery_count(2);
    let (p, q) = provider_with(spec).await;
    p.send(&q, Message::new("m")).await.unwrap();
    assert_eq!(recv(&p, &q, 1).await[0].delivery_count, 1);
    advance(LOCK).await;
    assert_eq!(recv(&p, &q, 1).await[0].delivery_count, 2);
    advance(LOCK).await;
    assert!(recv(&p, &q, 1).await.is_empty());
    assert_eq!(p.message_count(&q).unwrap(), 0);
    assert_eq!(p.dead_letter_count(&q).unwrap(), 1);
    let dead = p
        .receive_dead_letters(&q, ReceiveOptions::new(10, NO_WAIT))
        .await
        .unwrap();
    let reason = dead[0].dead_letter.as_ref().unwrap();
    assert_eq!(reason.reason, MAX_DELIVERY_COUNT_EXCEEDED);
    assert!(reason.description.contains('2'), "{}", reason.description);
    // Abandoning in the DLQ keeps it there; completing removes it.
    p.abandon(&dead[0].receipt, None).await.unwrap();
    let dead = p
        .receive_dead_letters(&q, ReceiveOptions::new(10, NO_WAIT))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let err = p
        .dead_letter(&dead[0].receipt, DeadLetterReason::new("x", "y"))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::InvalidMessage { .. }), "{err}");
    p.complete(&dead[0].receipt).await.unwrap();
    assert_eq!(p.dead_letter_count(&q).unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn ttl_expires_silently_but_not_while_locked() {
    let spec = QueueSpec::default()
        .with_lock_duration(LOCK)
        .with_default_ttl(Duration::from_secs(60));
    let (p, q) = provider_with(spec).await;
    let ttl =
        |b: &str, secs| Message::new(b.to_owned()).with_time_to_live(Duration::from_secs(secs));
    p.send(&q, Message::new("default-ttl")).await.unwrap();
    p.send(&q, ttl("own-ttl", 10)).await.unwrap();
    p.send(&q, ttl("held", 40)).await.unwrap();
    let all = recv(&p, &q, 3).await;
    p.abandon(&all[0].receipt, None).await.unwrap();
    p.abandon(&all[1].receipt, None).await.unwrap();
    // t = 10: own-ttl is gone; held is locked.
    advance(Duration::from_secs(10)).await;
    let got = recv(&p, &q, 10).await;
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["default-ttl"]);
    p.abandon(&got[0].receipt, None).await.unwrap();
    // t = 45: held is past its TTL but still locked (renewed), so it can be settled.
    advance(Duration::from_secs(15)).await;
    p.renew_lock(&all[2].receipt).await.unwrap();
    advance(Duration::from_secs(20)).await;
    p.abandon(&all[2].receipt, None).await.unwrap();
    // Released past its TTL, it expires at once.
    let got = recv(&p, &q, 10).await;
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["default-ttl"]);
    p.abandon(&got[0].receipt, None).await.unwrap();
    // t = 60: the queue's default TTL ends.
    advance(Duration::from_secs(15)).await;
    assert!(recv(&p, &q, 10).await.is_empty());
    assert_eq!(p.message_count(&q).unwrap(), 0);
    assert_eq!(
        p.dead_letter_count(&q).unwrap(),
        0,
        "expiry does not dead-letter"
    );
}

#[tokio::test(start_paused = true)]
async fn scheduled_messages_appear_exactly_when_due() {
    let (p, q) = provider_with(QueueSpec::default()).await;
    let due = p.now() + Duration::from_secs(90);
    p.send(&q, Message::new("later").with_scheduled_enqueue_time(due))
        .await
        .unwrap();
    p.send(
        &q,
        Message::new("past").with_scheduled_enqueue_time(p.now() - Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let past = recv(&p, &q, 10).await;
    assert_eq!(past.iter().map(body).collect::<Vec<_>>(), ["past"]);
    p.complete(&past[0].receipt).await.unwrap();
    advance(Duration::from_secs(89)).await;
    assert!(recv(&p, &q, 10).await.is_empty());
    // A waiting receive wakes at the due time, not before and without polling.
    let start = Instant::now();
    let got = p
        .receive(&q, ReceiveOptions::new(1, Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(body(&got[0]), "later");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn duplicates_inside_the_window_are_dropped() {
    let window = Duration::from_secs(600);
    let (p, q) = provider_with(QueueSpec::default().with_duplicate_detection(window)).await;
    let id = MessageId::new("delivery-1").unwrap();
    let msg = |b: &str| Message::new(b.to_owned()).with_message_id(id.clone());
    assert_eq!(p.send(&q, msg("a")).await.unwrap(), id);
    // Inside one batch too.
    let ids = p.send_batch(&q, vec![msg("b"), msg("c")]).await.unwrap();
    assert_eq!(ids, [id.clone(), id.clone()]);
    assert_eq!(p.message_count(&q).unwrap(), 1);
    // Even after the first copy is completed, the window still holds.
    let got = recv(&p, &q, 10).await;
    p.complete(&got[0].receipt).await.unwrap();
    advance(window - Duration::from_secs(1)).await;
    p.send(&q, msg("d")).await.unwrap();
    assert_eq!(p.message_count(&q).unwrap(), 0);
    advance(Duration::from_secs(1)).await;
    p.send(&q, msg("e")).await.unwrap();
    assert_eq!(
        recv(&p, &q, 10).await.iter().map(body).collect::<Vec<_>>(),
        ["e"]
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_window_same_ids_are_both_stored() {
    let (p, q) = provider_with(QueueSpec::default()).await;
    let id = MessageId::new("same").unwrap();
    p.send(&q, Message::new("a").with_message_id(id.clone()))
        .await
        .unwrap();
    p.send(&q, Message::new("b").with_message_id(id))
        .await
        .unwrap();
    assert_eq!(p.message_count(&q).unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn plain_receive_skips_session_messages() {
    let (p, q) = provider_with(QueueSpec::default()).await;
    p.send(&q, Message::new("s").with_session_id(sid("s1")))
        .await
        .unwrap();
    p.send(&q, Message::new("plain")).await.unwrap();
    assert_eq!(
        recv(&p, &q, 10).await.iter().map(body).collect::<Vec<_>>(),
        ["plain"]
    );
}

#[tokio::test(start_paused = true)]
async fn session_queue_requires_a_session_id() {
    let (p, q) = provider_with(QueueSpec::default().with_sessions(true)).await;
    let err = p.send(&q, Message::new("x")).await.unwrap_err();
    assert!(matches!(err, QueueError::InvalidMessage { .. }), "{err}");
    assert_eq!(p.message_count(&q).unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn accept_next_skips_sessions_without_available_messages_and_waits() {
    let (p, q) = provider_with(QueueSpec::default().with_sessions(true)).await;
    let later = p.now() + Duration::from_secs(60);
    p.send(
        &q,
        Message::new("scheduled")
            .with_session_id(sid("future"))
            .with_scheduled_enqueue_time(later),
    )
    .await
    .unwrap();
    let none = p
        .accept_session(&q, SessionSelector::Next, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        none.is_none(),
        "a session with only a scheduled message was offered"
    );

    let sender = {
        let p = p.clone();
        let q = q.clone();
        tokio::spawn(async move {
            sleep(Duration::from_secs(2)).await;
            p.send(&q, Message::new("now").with_session_id(sid("present")))
                .await
        })
    };
    let start = Instant::now();
    let s = p
        .accept_session(&q, SessionSelector::Next, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("woken by the send");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(s.session_id().as_str(), "present");
    sender.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn session_steal_locks_out_the_old_receiver() {
    let spec = QueueSpec::default()
        .with_sessions(true)
        .with_lock_duration(LOCK);
    let (p, q) = provider_with(spec).await;
    let s = sid("pr-1");
    p.send(&q, Message::new("A").with_session_id(s.clone()))
        .await
        .unwrap();
    let old = p
        .accept_session(&q, SessionSelector::Named(s.clone()), NO_WAIT)
        .await
        .unwrap()
        .unwrap();
    let a = old.receive(ReceiveOptions::new(1, NO_WAIT)).await.unwrap();
    assert_eq!(a[0].locked_until, Some(old.locked_until()));
    // Renewal keeps it; the message lock follows the session lock.
    advance(Duration::from_secs(25)).await;
    old.renew_session_lock().await.unwrap();
    advance(Duration::from_secs(25)).await;
    let err = p
        .accept_session(&q, SessionSelector::Named(s.clone()), NO_WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::SessionLocked { .. }), "{err}");
    old.set_state(Some(Bytes::from_static(b"st")))
        .await
        .unwrap();
    advance(LOCK).await;
    let thief = p
        .accept_session(&q, SessionSelector::Named(s.clone()), NO_WAIT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        thief.get_state().await.unwrap().as_deref(),
        Some(&b"st"[..])
    );
    let lost = |r: queue_core::Result<()>| {
        assert!(
            matches!(r, Err(QueueError::SessionLockLost { .. })),
            "expected SessionLockLost, got {r:?}"
        );
    };
    lost(old.complete(&a[0].receipt).await);
    lost(
        old.receive(ReceiveOptions::new(1, NO_WAIT))
            .await
            .map(|_| ()),
    );
    lost(old.renew_session_lock().await.map(|_| ()));
    lost(old.get_state().await.map(|_| ()));
    lost(old.set_state(None).await);
    // Settling through the provider with the stale receipt fails too.
    assert!(matches!(
        p.complete(&a[0].receipt).await,
        Err(QueueError::LockLost { .. })
    ));
    // The old receiver's close must not release the thief's lock.
    old.close().await.unwrap();
    let again = thief
        .receive(ReceiveOptions::new(1, NO_WAIT))
        .await
        .unwrap();
    assert_eq!(again[0].delivery_count, 2);
    let err = p
        .accept_session(&q, SessionSelector::Named(s.clone()), NO_WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::SessionLocked { .. }), "{err}");
    // A receipt from the thief cannot be settled through another session receiver.
    assert!(old.complete(&again[0].receipt).await.is_err());
    thief.complete(&again[0].receipt).await.unwrap();
    thief.close().await.unwrap();
    thief.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn session_strict_fifo_with_abandon_and_auto_dead_letter() {
    let spec = QueueSpec::default()
        .with_sessions(true)
        .with_max_delivery_count(2);
    let (p, q) = provider_with(spec).await;
    let s = sid("pr-2");
    let msgs = ["A", "B", "C"]
        .iter()
        .map(|b| Message::new(*b).with_session_id(s.clone()))
        .collect();
    p.send_batch(&q, msgs).await.unwrap();
    let r = p
        .accept_session(&q, SessionSelector::Next, NO_WAIT)
        .await
        .unwrap()
        .unwrap();
    let batch = r.receive(ReceiveOptions::new(10, NO_WAIT)).await.unwrap();
    assert_eq!(batch.iter().map(body).collect::<Vec<_>>(), ["A", "B", "C"]);
    r.abandon(&batch[0].receipt).await.unwrap();
    r.complete(&batch[1].receipt).await.unwrap();
    let a = r.receive(ReceiveOptions::new(10, NO_WAIT)).await.unwrap();
    assert_eq!(a.iter().map(body).collect::<Vec<_>>(), ["A"]);
    assert_eq!(a[0].delivery_count, 2);
    // Second release of A (by closing) uses up its deliveries.
    r.close().await.unwrap();
    assert_eq!(p.dead_letter_count(&q).unwrap(), 1);
    let r = p
        .accept_session(&q, SessionSelector::Next, NO_WAIT)
        .await
        .unwrap()
        .unwrap();
    let c = r.receive(ReceiveOptions::new(10, NO_WAIT)).await.unwrap();
    assert_eq!(c.iter().map(body).collect::<Vec<_>>(), ["C"]);
    assert_eq!(c[0].delivery_count, 2, "C was released by the close");
    r.complete(&c[0].receipt).await.unwrap();
}

/// The `memory` and `service-bus` profiles store a batch all or nothing (Service Bus
/// sends a batch as one transaction); the `sqs` profile sends the accepted entries.
#[tokio::test(start_paused = true)]
async fn oversize_batch_entries_follow_the_profile_and_profiles_set_limits() {
    let q = name("q");
    for profile in [Profile::Memory, Profile::ServiceBus] {
        let p = InMemoryProvider::builder()
            .with_profile(profile)
            .with_queue(q.clone(), QueueSpec::default())
            .build()
            .unwrap();
        let caps = p.capabilities();
        assert!(caps.batch_atomic, "{profile}");
        let big = Message::new(vec![0u8; caps.max_message_size + 1]);
        let err = p
            .send_batch(&q, vec![Message::new("ok"), big, Message::new("ok")])
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::MessageTooLarge { .. }), "{err}");
        assert_eq!(p.message_count(&q).unwrap(), 0, "{profile}");
    }
    let p = InMemoryProvider::builder()
        .with_profile(Profile::Sqs)
        .with_queue(q.clone(), QueueSpec::default())
        .build()
        .unwrap();
    let caps = p.capabilities();
    assert_eq!(caps.max_batch_size, 10);
    assert_eq!(caps.max_message_size, 1024 * 1024);
    assert!(!caps.batch_atomic);
    let big = Message::new(vec![0u8; caps.max_message_size + 1]);
    let err = p
        .send_batch(&q, vec![Message::new("ok"), big])
        .await
        .unwrap_err();
    match err {
        QueueError::PartialBatch { failed, .. } => match &failed[..] {
            [f] => match &f.error {
                QueueError::MessageTooLarge { size, max, .. } => {
                    assert_eq!(f.index, 1);
                    assert_eq!(
                        (*size, *max),
                        (caps.max_message_size + 1, caps.max_message_size)
                    );
                }
                e => panic!("{e}"),
            },
            other => panic!("{other:?}"),
        },
        e => panic!("{e}"),
    }
    assert_eq!(
        p.message_count(&q).unwrap(),
        1,
        "the accepted entry is sent"
    );
    let exact = Message::new(vec![0u8; caps.max_message_size]);
    p.send(&q, exact).await.unwrap();
    let many: Vec<_> = (0..25).map(|i| Message::new(format!("{i}"))).collect();
    assert_eq!(p.send_batch(&q, many).await.unwrap().len(), 25);
    assert_eq!(
        recv(&p, &q, 100).await.len(),
        10,
        "clamped to the batch limit"
    );
}

#[tokio::test(start_paused = true)]
async fn the_sqs_profile_carries_nine_attributes_like_the_sqs_provider() {
    let q = name("q");
    let p = InMemoryProvider::builder()
        .with_profile(Profile::Sqs)
        .with_queue(q.clone(), QueueSpec::default())
        .build()
        .unwrap();
    assert_eq!(p.capabilities().max_attributes, Some(9));
    let nine = (0..9).fold(Message::new("x"), |m, i| {
        m.with_attribute(format!("a{i}"), "v")
    });
    p.send(&q, nine.clone()).await.unwrap();
    let err = p
        .send_batch(&q, vec![nine.with_attribute("a9", "v")])
        .await
        .unwrap_err();
    assert!(matches!(&err, QueueError::InvalidMessage { .. }), "{err}");
    assert!(err.to_string().contains("10 attributes"), "{err}");
    assert_eq!(
        p.message_count(&q).unwrap(),
        1,
        "the refused entry is not stored"
    );
    let plain = InMemoryProvider::new();
    assert_eq!(plain.capabilities().max_attributes, None);
}

#[tokio::test(start_paused = true)]
async fn configuration_is_validated() {
    let sqs = InMemoryProvider::from_settings(&settings(Some("sqs"))).unwrap();
    assert_eq!(sqs.profile(), Profile::Sqs);
    let sb = InMemoryProvider::from_settings(&settings(Some("service-bus"))).unwrap();
    assert_eq!(sb.limits().max_lock_duration, Duration::from_secs(300));
    let default = InMemoryProvider::from_settings(&settings(None)).unwrap();
    assert_eq!(default.profile(), Profile::Memory);
    let err = InMemoryProvider::from_settings(&settings(Some("kafka"))).unwrap_err();
    assert!(
        matches!(&err, QueueError::Config { field, .. } if field == "memory.profile"),
        "{err}"
    );
    let err = sb
        .create_queue(
            &name("q"),
            &QueueSpec::default().with_lock_duration(Duration::from_secs(301)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Config { .. }), "{err}");
    let err = InMemoryProvider::builder()
        .with_max_batch_size(0)
        .build()
        .unwrap_err();
    assert!(matches!(err, QueueError::Config { .. }), "{err}");
}

fn settings(profile: Option<&str>) -> MemorySettings {
    let mut s = MemorySettings::default();
    s.profile = profile.map(str::to_owned);
    s
}

#[tokio::test(start_paused = true)]
async fn queues_must_exist_and_create_is_idempotent() {
    let p = InMemoryProvider::new();
    let q = name("jobs");
    let err = p.send(&q, Message::new("x")).await.unwrap_err();
    assert!(matches!(err, QueueError::QueueNotFound { .. }), "{err}");
    assert!(p.check_access(&q).await.is_err());
    p.create_queue(&q, &QueueSpec::default().with_max_delivery_count(1))
        .await
        .unwrap();
    // A second create keeps the first spec.
    p.create_queue(&q, &QueueSpec::default()).await.unwrap();
    p.check_access(&q).await.unwrap();
    p.send(&q, Message::new("x")).await.unwrap();
    let m = recv(&p, &q, 1).await.remove(0);
    p.abandon(&m.receipt, None).await.unwrap();
    assert_eq!(
        p.dead_letter_count(&q).unwrap(),
        1,
        "max_delivery_count 1 kept"
    );

    // Deleting wakes a waiting receiver, which reports the queue as gone.
    let waiter = {
        let p = p.clone();
        let q = q.clone();
        tokio::spawn(async move {
            p.receive(&q, ReceiveOptions::new(1, Duration::from_secs(3600)))
                .await
        })
    };
    tokio::task::yield_now().await;
    p.delete_queue(&q).await.unwrap();
    let err = waiter.await.unwrap().unwrap_err();
    assert!(matches!(err, QueueError::QueueNotFound { .. }), "{err}");
    assert!(p.delete_queue(&q).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn receipts_are_tied_to_their_provider_and_delivery() {
    let (p1, q) = provider_with(QueueSpec::default()).await;
    let (p2, _) = provider_with(QueueSpec::default()).await;
    p1.send(&q, Message::new("1")).await.unwrap();
    p2.send(&q, Message::new("2")).await.unwrap();
    let m1 = recv(&p1, &q, 1).await.remove(0);
    assert!(matches!(
        p2.complete(&m1.receipt).await,
        Err(QueueError::LockLost { .. })
    ));
    let forged = Receipt::new("sqs", q.clone(), None, m1.receipt.token());
    assert!(p1.complete(&forged).await.is_err());
    p1.complete(&m1.receipt).await.unwrap();
    assert_eq!(p2.message_count(&q).unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn abandon_with_delay_and_huge_durations() {
    let (p, q) = provider_with(QueueSpec::default()).await;
    p.send(&q, Message::new("x").with_time_to_live(Duration::MAX))
        .await
        .unwrap();
    let m = recv(&p, &q, 1).await.remove(0);
    p.abandon(&m.receipt, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let start = Instant::now();
    let again = p
        .receive(&q, ReceiveOptions::new(1, Duration::MAX))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(again[0].delivery_count, 2);
}

#[tokio::test(start_paused = true)]
async fn debug_output_never_shows_bodies() {
    let canary = "CANARY-body-3b9f";
    let (p, q) = provider_with(QueueSpec::default()).await;
    p.send(&q, Message::new(canary).with_session_id(sid("s")))
        .await
        .unwrap();
    let r = p
        .accept_session(&q, SessionSelector::Next, NO_WAIT)
        .await
        .unwrap()
        .unwrap();
    let m = r.receive(ReceiveOptions::new(1, NO_WAIT)).await.unwrap();
    for text in [format!("{p:?}"), format!("{r:?}"), format!("{m:?}")] {
        assert!(!text.contains("CANARY"), "{text}");
    }
}

/// Many producers and consumers on real threads: every message is delivered and
/// completed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_and_consumers_settle_each_message_once() {
    const PRODUCERS: usize = 4;
    const EACH: usize = 250;
    let (p, q) = provider_with(QueueSpec::default()).await;
    let p = Arc::new(p);
    let mut producers = Vec::new();
    for t in 0..PRODUCERS {
        let (p, q) = (p.clone(), q.clone());
        producers.push(tokio::spawn(async move {
            for i in 0..EACH {
                p.send(&q, Message::new(format!("{t}-{i}"))).await.unwrap();
            }
        }));
    }
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let (p, q) = (p.clone(), q.clone());
        consumers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let batch = p
                    .receive(&q, ReceiveOptions::new(7, Duration::from_millis(200)))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return seen;
                }
                for m in batch {
                    p.complete(&m.receipt).await.unwrap();
                    seen.push(body(&m).to_owned());
                }
            }
        }));
    }
    for t in producers {
        t.await.unwrap();
    }
    let mut all = Vec::new();
    for c in consumers {
        all.extend(c.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        PRODUCERS * EACH,
        "some messages lost or duplicated"
    );
    assert_eq!(unique.len(), PRODUCERS * EACH);
    assert_eq!(p.message_count(&q).unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn accept_next_prefers_the_session_with_the_oldest_message() {
    let (p, q) = provider_with(QueueSpec::default().with_sessions(true)).await;
    for s in ["b", "a", "c", "a"] {
        p.send(&q, Message::new(s).with_session_id(sid(s)))
            .await
            .unwrap();
    }
    let mut order = Vec::new();
    while let Some(r) = p
        .accept_session(&q, SessionSelector::Next, NO_WAIT)
        .await
        .unwrap()
    {
        order.push(r.session_id().as_str().to_owned());
        for m in r.receive(ReceiveOptions::new(10, NO_WAIT)).await.unwrap() {
            r.complete(&m.receipt).await.unwrap();
        }
        r.close().await.unwrap();
    }
    assert_eq!(order, ["b", "a", "c"]);
    assert_eq!(p.message_count(&q).unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn waiting_receivers_wake_at_lock_expiry() {
    let spec = QueueSpec::default()
        .with_sessions(false)
        .with_lock_duration(LOCK);
    let (p, q) = provider_with(spec).await;
    p.send(&q, Message::new("m")).await.unwrap();
    let first = recv(&p, &q, 1).await;
    let start = Instant::now();
    let again = p
        .receive(&q, ReceiveOptions::new(1, Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), LOCK, "woke exactly when the lock ran out");
    assert_eq!(again[0].message_id, first[0].message_id);

    // A session receiver waiting past its own lock learns that it lost it.
    p.send(&q, Message::new("s").with_session_id(sid("pr")))
        .await
        .unwrap();
    let r = p
        .accept_session(&q, SessionSelector::Next, NO_WAIT)
        .await
        .unwrap()
        .unwrap();
    let held = r.receive(ReceiveOptions::new(1, NO_WAIT)).await.unwrap();
    assert_eq!(held.len(), 1);
    let start = Instant::now();
    let err = r
        .receive(ReceiveOptions::new(1, Duration::from_secs(3600)))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::SessionLockLost { .. }), "{err}");
    assert_eq!(start.elapsed(), LOCK);
}
