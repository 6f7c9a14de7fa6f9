//! The `sqs` profile's SQS FIFO semantics, on a paused tokio clock: message groups come
//! through the plain receive in order, a group is blocked while one of its messages is in
//! flight, receives count towards `maxReceiveCount`, and group order survives lock expiry.

use std::time::Duration;

use queue_core::{
    Capabilities, MAX_DELIVERY_COUNT_EXCEEDED, Message, QueueError, QueueName, QueueProvider,
    QueueSpec, ReceiveOptions, ReceivedMessage, SessionId, SessionSelector, SessionSupport,
};
use queue_memory::{InMemoryProvider, Profile};
use tokio::time::advance;

const LOCK: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::ZERO;

fn sqs(spec: QueueSpec) -> (InMemoryProvider, QueueName) {
    let q = QueueName::new("events.fifo").unwrap();
    let p = InMemoryProvider::builder()
        .with_profile(Profile::Sqs)
        .with_queue(q.clone(), spec.with_lock_duration(LOCK))
        .build()
        .unwrap();
    (p, q)
}

async fn send(p: &InMemoryProvider, q: &QueueName, group: &str, bodies: &[&str]) {
    let group = SessionId::new(group).unwrap();
    for b in bodies {
        p.send(
            q,
            Message::new(b.to_string()).with_session_id(group.clone()),
        )
        .await
        .unwrap();
    }
}

async fn recv(p: &InMemoryProvider, q: &QueueName, max: usize) -> Vec<ReceivedMessage> {
    p.receive(q, ReceiveOptions::new(max, NO_WAIT))
        .await
        .unwrap()
}

fn bodies(got: &[ReceivedMessage]) -> Vec<&str> {
    got.iter()
        .map(|m| std::str::from_utf8(m.body()).unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_group_is_blocked_while_one_of_its_messages_is_in_flight() {
    let (p, q) = sqs(QueueSpec::default());
    send(&p, &q, "a", &["a1", "a2"]).await;
    send(&p, &q, "b", &["b1"]).await;
    let first = recv(&p, &q, 1).await;
    assert_eq!(bodies(&first), ["a1"]);
    assert_eq!(
        first[0].receipt.session().map(SessionId::as_str),
        Some("a"),
        "the receipt names the group, as the SQS provider's does"
    );
    assert_eq!(bodies(&recv(&p, &q, 10).await), ["b1"], "a2 waits for a1");
    assert!(recv(&p, &q, 10).await.is_empty());
    p.complete(&first[0].receipt).await.unwrap();
    let next = recv(&p, &q, 10).await;
    assert_eq!(bodies(&next), ["a2"]);
    assert_eq!(next[0].delivery_count, 1);
}

#[tokio::test(start_paused = true)]
async fn one_receive_takes_a_group_together_and_the_oldest_message_first() {
    let (p, q) = sqs(QueueSpec::default());
    send(&p, &q, "a", &["a1"]).await;
    p.send(&q, Message::new("plain")).await.unwrap();
    send(&p, &q, "b", &["b1"]).await;
    send(&p, &q, "a", &["a2", "a3"]).await;
    let got = recv(&p, &q, 10).await;
    assert_eq!(bodies(&got), ["a1", "a2", "a3", "plain", "b1"]);
    let capped = {
        let (p, q) = sqs(QueueSpec::default());
        send(&p, &q, "a", &["a1", "a2", "a3"]).await;
        let two = recv(&p, &q, 2).await;
        assert_eq!(bodies(&two), ["a1", "a2"]);
        recv(&p, &q, 10).await
    };
    assert!(capped.is_empty(), "a3 waits while a1 and a2 are in flight");
}

/// Real SQS keeps group order when a group's in-flight messages expire together (moto
/// 5.2.5 hands them back last-first; this provider follows SQS).
#[tokio::test(start_paused = true)]
async fn messages_whose_locks_expire_together_come_back_in_group_order() {
    let (p, q) = sqs(QueueSpec::default());
    send(&p, &q, "a", &["a1", "a2", "a3"]).await;
    let got = recv(&p, &q, 10).await;
    assert_eq!(bodies(&got), ["a1", "a2", "a3"]);
    advance(LOCK).await;
    let again = recv(&p, &q, 10).await;
    assert_eq!(bodies(&again), ["a1", "a2", "a3"]);
    assert!(again.iter().all(|m| m.delivery_count == 2));
    for m in &got {
        assert!(matches!(
            p.complete(&m.receipt).await,
            Err(QueueError::LockLost { .. })
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn a_group_stays_blocked_until_its_last_message_in_flight_is_released() {
    let (p, q) = sqs(QueueSpec::default());
    send(&p, &q, "a", &["a1", "a2", "a3"]).await;
    let got = recv(&p, &q, 2).await;
    advance(LOCK / 2).await;
    p.renew_lock(&got[1].receipt).await.unwrap();
    advance(LOCK / 2).await;
    assert!(
        recv(&p, &q, 10).await.is_empty(),
        "a1 expired, but a2 is still in flight"
    );
    p.complete(&got[1].receipt).await.unwrap();
    let next = recv(&p, &q, 10).await;
    assert_eq!(bodies(&next), ["a1", "a3"]);
    assert_eq!(next[0].delivery_count, 2);
}

#[tokio::test(start_paused = true)]
async fn abandoning_with_a_delay_keeps_the_group_blocked_until_it_passes() {
    let (p, q) = sqs(QueueSpec::default());
    send(&p, &q, "a", &["a1", "a2"]).await;
    send(&p, &q, "b", &["b1"]).await;
    let a1 = recv(&p, &q, 1).await;
    p.abandon(&a1[0].receipt, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(bodies(&recv(&p, &q, 10).await), ["b1"]);
    advance(Duration::from_secs(9)).await;
    assert!(recv(&p, &q, 10).await.is_empty(), "a1 is still delayed");
    // A waiting receiver wakes when the delay passes.
    let waited = p
        .receive(&q, ReceiveOptions::new(10, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(bodies(&waited), ["a1", "a2"]);
    assert_eq!(waited[0].delivery_count, 2);
}

#[tokio::test(start_paused = true)]
async fn receives_past_max_receive_count_redrive_to_the_dead_letter_queue() {
    let (p, q) = sqs(QueueSpec::default().with_max_delivery_count(3));
    send(&p, &q, "a", &["poison", "next"]).await;
    for n in 1..=3 {
        let got = recv(&p, &q, 1).await;
        assert_eq!((bodies(&got)[0], got[0].delivery_count), ("poison", n));
        if n < 3 {
            p.abandon(&got[0].receipt, None).await.unwrap();
        } else {
            advance(LOCK).await; // the last lock expires instead
        }
    }
    let next = recv(&p, &q, 10).await;
    assert_eq!(bodies(&next), ["next"], "the group moves on");
    let dead = p
        .receive_dead_letters(&q, ReceiveOptions::new(10, NO_WAIT))
        .await
        .unwrap();
    assert_eq!(bodies(&dead), ["poison"]);
    let reason = dead[0].dead_letter.as_ref().unwrap();
    assert_eq!(reason.reason, MAX_DELIVERY_COUNT_EXCEEDED);
    assert_eq!(p.dead_letter_count(&q).unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_sqs_profile_answers_like_the_sqs_provider() {
    let (p, q) = sqs(QueueSpec::default().with_sessions(true));
    let caps: Capabilities = p.capabilities();
    assert_eq!(caps.sessions, SessionSupport::Grouped);
    assert!(!caps.session_state);
    assert_eq!(caps.max_schedule_delay, Some(Duration::from_secs(15 * 60)));
    assert_eq!(caps.max_batch_size, 10);
    let err = p
        .accept_session(&q, SessionSelector::Next, NO_WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Unsupported { .. }), "{err}");
    let group = SessionId::new("a").unwrap();
    let later = p.now() + Duration::from_secs(60);
    let err = p
        .send(
            &q,
            Message::new("x")
                .with_session_id(group)
                .with_scheduled_enqueue_time(later),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Unsupported { .. }), "{err}");
    let err = p.send(&q, Message::new("no group")).await.unwrap_err();
    assert!(matches!(err, QueueError::InvalidMessage { .. }), "{err}");
    assert_eq!(p.message_count(&q).unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_sqs_profile_delays_plain_messages_by_at_most_fifteen_minutes() {
    let (p, q) = sqs(QueueSpec::default());
    let in_15 = p.now() + Duration::from_secs(15 * 60);
    p.send(&q, Message::new("ok").with_scheduled_enqueue_time(in_15))
        .await
        .unwrap();
    let too_far = in_15 + Duration::from_secs(1);
    let err = p
        .send(&q, Message::new("no").with_scheduled_enqueue_time(too_far))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::InvalidMessage { .. }), "{err}");
    assert!(err.to_string().contains("at most"), "{err}");
    let plain = InMemoryProvider::new();
    assert_eq!(plain.capabilities().max_schedule_delay, None);
    assert_eq!(plain.capabilities().sessions, SessionSupport::Locked);
}

/// Seven groups under a mix of completes, abandons and lock expiries: every receive hands
/// out each group's messages in send order from its oldest unsettled one, and every message
/// is completed exactly once (a complete on a stale receipt would fail).
#[tokio::test(start_paused = true)]
async fn groups_keep_order_and_exclusivity_under_churn() {
    let (p, q) = sqs(QueueSpec::default().with_max_delivery_count(100));
    let groups = 7;
    for n in 0..20 {
        for g in 0..groups {
            let group = SessionId::new(format!("g{g}")).unwrap();
            let body = format!("{g}:{n}");
            p.send(&q, Message::new(body).with_session_id(group))
                .await
                .unwrap();
        }
    }
    let mut next = vec![0u32; groups];
    let mut step = 0u64;
    while next.iter().any(|n| *n < 20) {
        step += 1;
        let got = recv(&p, &q, 1 + (step % 10) as usize).await;
        if got.is_empty() {
            advance(LOCK).await;
            continue;
        }
        // Like a consumer: once a message of a group is not completed, the group's later
        // messages in this batch are left alone (they come again after it).
        let mut stopped = vec![false; groups];
        let mut expected = next.clone();
        for (i, m) in got.iter().enumerate() {
            let (g, n) = bodies(std::slice::from_ref(m))[0].split_once(':').unwrap();
            let (g, n): (usize, u32) = (g.parse().unwrap(), n.parse().unwrap());
            assert_eq!(n, expected[g], "group {g} out of order");
            expected[g] += 1;
            if stopped[g] {
                continue;
            }
            match (step + i as u64) % 5 {
                0 => {
                    p.abandon(&m.receipt, None).await.unwrap();
                    stopped[g] = true;
                }
                1 => stopped[g] = true, // left to expire
                _ => {
                    p.complete(&m.receipt).await.unwrap();
                    next[g] += 1;
                }
            }
        }
        // Anything not completed from this receive is released before the next check.
        advance(LOCK).await;
    }
    assert_eq!(p.message_count(&q).unwrap(), 0);
}

/// The refusals `SqsProvider` reports per entry (what queue-aws's
/// `partial_batch_failures_are_per_entry` asserts against moto): an oversize entry
/// (`MessageTooLarge`) and one with ten attributes (`InvalidMessage`) fail alone, plus a
/// scheduled message of a group (`Unsupported`, as on a FIFO queue); the nine others are
/// stored in input order under the ids the error reports.
#[tokio::test(start_paused = true)]
async fn a_batch_sends_its_accepted_entries_and_reports_the_refused_ones() {
    let (p, q) = sqs(QueueSpec::default());
    assert!(!p.capabilities().batch_atomic);
    let mut msgs: Vec<Message> = (0..12).map(|i| Message::new(format!("ok{i}"))).collect();
    msgs[3] = Message::new(vec![b'x'; 1024 * 1024 + 1]);
    msgs[7] = (0..10).fold(Message::new("crowded"), |m, i| {
        m.with_attribute(format!("a{i}"), "v")
    });
    msgs[10] = Message::new("later")
        .with_session_id(SessionId::new("g").unwrap())
        .with_scheduled_enqueue_time(p.now() + Duration::from_secs(60));
    let (succeeded, failed) = match p.send_batch(&q, msgs).await {
        Err(QueueError::PartialBatch {
            total,
            succeeded,
            failed,
            operation,
            ..
        }) => {
            assert_eq!((total, operation), (12, "send_batch"));
            (succeeded, failed)
        }
        other => panic!("expected PartialBatch, got {other:?}"),
    };
    let failed_at: Vec<usize> = failed.iter().map(|f| f.index).collect();
    assert_eq!(failed_at, [3, 7, 10]);
    assert!(matches!(
        failed[0].error,
        QueueError::MessageTooLarge { .. }
    ));
    assert!(matches!(failed[1].error, QueueError::InvalidMessage { .. }));
    assert!(matches!(failed[2].error, QueueError::Unsupported { .. }));
    let sent_at: Vec<usize> = succeeded.iter().map(|(i, _)| *i).collect();
    assert_eq!(sent_at, [0, 1, 2, 4, 5, 6, 8, 9, 11]);
    let got = recv(&p, &q, 10).await;
    assert_eq!(
        bodies(&got),
        [
            "ok0", "ok1", "ok2", "ok4", "ok5", "ok6", "ok8", "ok9", "ok11"
        ]
    );
    for (m, (_, id)) in got.iter().zip(&succeeded) {
        assert_eq!(&m.message_id, id, "the reported id is the stored message's");
    }
}

/// Refusals found before the queue is locked (limits) and by the queue (a session-less
/// message on a queue that requires sessions) are reported together in index order.
#[tokio::test(start_paused = true)]
async fn refusals_of_both_kinds_come_back_in_index_order() {
    let (p, q) = sqs(QueueSpec::default().with_sessions(true));
    let g = SessionId::new("g").unwrap();
    let big = Message::new(vec![b'x'; 1024 * 1024 + 1]).with_session_id(g.clone());
    let msgs = vec![
        Message::new("a").with_session_id(g.clone()),
        Message::new("no group"),
        big,
        Message::new("b").with_session_id(g.clone()),
        Message::new("no group either"),
    ];
    match p.send_batch(&q, msgs).await {
        Err(QueueError::PartialBatch {
            succeeded, failed, ..
        }) => {
            let at: Vec<usize> = failed.iter().map(|f| f.index).collect();
            assert_eq!(at, [1, 2, 4]);
            assert!(matches!(failed[0].error, QueueError::InvalidMessage { .. }));
            assert!(matches!(
                failed[1].error,
                QueueError::MessageTooLarge { .. }
            ));
            assert!(matches!(failed[2].error, QueueError::InvalidMessage { .. }));
            let at: Vec<usize> = succeeded.iter().map(|(i, _)| *i).collect();
            assert_eq!(at, [0, 3]);
        }
        other => panic!("expected PartialBatch, got {other:?}"),
    }
    assert_eq!(bodies(&recv(&p, &q, 10).await), ["a", "b"]);
}

/// What refuses a batch as a whole: a missing queue. An empty batch sends nothing and
/// succeeds, a one-entry batch fails with its entry's own error, and a batch whose every
/// entry is refused is still a `PartialBatch` (as `SqsProvider` reports it).
#[tokio::test(start_paused = true)]
async fn whole_batch_refusals_and_edge_sizes() {
    let (p, q) = sqs(QueueSpec::default());
    let missing = QueueName::new("missing.fifo").unwrap();
    let err = p
        .send_batch(&missing, vec![Message::new("a"), Message::new("b")])
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::QueueNotFound { .. }), "{err}");
    assert!(p.send_batch(&q, Vec::new()).await.unwrap().is_empty());
    let big = || Message::new(vec![b'x'; 1024 * 1024 + 1]);
    let err = p.send_batch(&q, vec![big()]).await.unwrap_err();
    assert!(matches!(err, QueueError::MessageTooLarge { .. }), "{err}");
    match p.send_batch(&q, vec![big(), big()]).await {
        Err(QueueError::PartialBatch {
            succeeded, failed, ..
        }) => {
            assert!(succeeded.is_empty());
            assert_eq!(failed.len(), 2);
        }
        other => panic!("expected PartialBatch, got {other:?}"),
    }
    assert_eq!(p.message_count(&q).unwrap(), 0);
}

/// Duplicate detection applies entry by entry, as on single sends: a repeated id inside
/// the window counts as sent under that id and is stored once, beside a refused entry.
#[tokio::test(start_paused = true)]
async fn duplicates_in_a_partly_refused_batch_count_as_sent_once() {
    let (p, q) = sqs(QueueSpec::default().with_duplicate_detection(Duration::from_secs(300)));
    let id = queue_core::MessageId::new("same").unwrap();
    let msgs = vec![
        Message::new("first").with_message_id(id.clone()),
        Message::new(vec![b'x'; 1024 * 1024 + 1]),
        Message::new("again").with_message_id(id.clone()),
    ];
    match p.send_batch(&q, msgs).await {
        Err(QueueError::PartialBatch {
            succeeded, failed, ..
        }) => {
            assert_eq!(succeeded, [(0, id.clone()), (2, id.clone())]);
            assert_eq!(failed.len(), 1);
        }
        other => panic!("expected PartialBatch, got {other:?}"),
    }
    assert_eq!(bodies(&recv(&p, &q, 10).await), ["first"]);
}
