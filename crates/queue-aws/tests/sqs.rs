//! SQS-specific behaviour against an SQS-compatible server (moto in CI): FIFO groups,
//! de-duplication, redrive, batching and partial failures, lock renewal, long polling
//! and the typed errors raised before anything is sent.
//!
//! Runs when `QUEUE_TEST_SQS_ENDPOINT` is set; otherwise each test prints a skip note
//! and passes, except under `CI`, where it fails.

mod common;

use std::time::{Duration, Instant, SystemTime};

use queue_aws::{SqsProvider, dlq_name};
use queue_core::{
    MAX_DELIVERY_COUNT_EXCEEDED, Message, MessageId, ORIGINAL_MESSAGE_ID_ATTRIBUTE, QueueError,
    QueueName, QueueProvider, QueueProviderExt, QueueSpec, Receipt, ReceiveOptions,
    ReceivedMessage, RedriveOptions, SessionId, SessionSelector,
};

fn sid(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}

fn body(m: &ReceivedMessage) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

async fn create(p: &SqsProvider, stem: &str, spec: QueueSpec) -> QueueName {
    let q = common::unique(stem, spec.requires_session);
    p.create_queue(&q, &spec).await.expect("create_queue");
    q
}

async fn recv(p: &SqsProvider, q: &QueueName, max: usize, wait: Duration) -> Vec<ReceivedMessage> {
    p.receive(q, ReceiveOptions::new(max, wait))
        .await
        .expect("receive")
}

/// Receives until `n` messages arrived or `within` passed.
async fn recv_n(
    p: &SqsProvider,
    q: &QueueName,
    n: usize,
    within: Duration,
) -> Vec<ReceivedMessage> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(recv(p, q, (n - got.len()).min(10), Duration::from_secs(1)).await);
    }
    got
}

/// Messages of one group come in order while another group proceeds, and a group with a
/// message in flight hands out nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_keep_order_and_block_while_in_flight() {
    let Some(p) = common::provider("fifo_groups_keep_order_and_block_while_in_flight").await else {
        return;
    };
    let q = create(&p, "groups", QueueSpec::default().with_sessions(true)).await;
    let (a, b) = (sid("octo/repo#1"), sid("octo/repo#2"));
    let msgs = ["a0", "b0", "a1", "b1", "a2", "b2"]
        .iter()
        .map(|x| {
            Message::new(*x).with_session_id(if x.starts_with('a') {
                a.clone()
            } else {
                b.clone()
            })
        })
        .collect();
    p.send_batch(&q, msgs).await.expect("send_batch");

    let held = recv(&p, &q, 1, Duration::from_secs(2)).await;
    assert_eq!(held.iter().map(body).collect::<Vec<_>>(), ["a0"]);
    // Group b proceeds, in order, while a0 is in flight; group a stays blocked.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let got = recv(&p, &q, 1, Duration::from_secs(2)).await;
        assert_eq!(
            got.len(),
            1,
            "group b stalled while group a had a message in flight"
        );
        seen.push(body(&got[0]));
        p.complete(&got[0].receipt).await.expect("complete");
    }
    assert_eq!(seen, ["b0", "b1", "b2"]);
    let blocked = recv(&p, &q, 10, Duration::from_secs(1)).await;
    assert!(
        blocked.is_empty(),
        "group a handed out {:?} while a0 was in flight",
        blocked.iter().map(body).collect::<Vec<_>>()
    );
    p.complete(&held[0].receipt).await.expect("complete a0");
    let rest = recv_n(&p, &q, 2, Duration::from_secs(10)).await;
    assert_eq!(rest.iter().map(body).collect::<Vec<_>>(), ["a1", "a2"]);
    for m in &rest {
        assert_eq!(m.session_id(), Some(&a));
        p.complete(&m.receipt).await.expect("complete");
    }
    p.delete_queue(&q).await.expect("delete_queue");
}

/// A retry with a delay keeps the group blocked: the later message waits behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_stays_blocked_during_a_delayed_retry() {
    let Some(p) = common::provider("group_stays_blocked_during_a_delayed_retry").await else {
        return;
    };
    let q = create(&p, "retry", QueueSpec::default().with_sessions(true)).await;
    let g = sid("g");
    for x in ["first", "second"] {
        p.send(&q, Message::new(x).with_session_id(g.clone()))
            .await
            .expect("send");
    }
    let got = recv(&p, &q, 1, Duration::from_secs(2)).await;
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["first"]);
    let start = Instant::now();
    p.abandon(&got[0].receipt, Some(Duration::from_secs(3)))
        .await
        .expect("abandon");
    let early = recv(&p, &q, 10, Duration::from_secs(1)).await;
    assert!(
        early.is_empty(),
        "the group moved on during the retry delay"
    );
    let again = recv_n(&p, &q, 2, Duration::from_secs(15)).await;
    assert!(
        start.elapsed() >= Duration::from_millis(2500),
        "retry came early"
    );
    assert_eq!(
        again.iter().map(body).collect::<Vec<_>>(),
        ["first", "second"]
    );
    assert_eq!(again[0].delivery_count, 2);
    for m in &again {
        p.complete(&m.receipt).await.expect("complete");
    }
    p.delete_queue(&q).await.expect("delete_queue");
}

/// Within the de-duplication window a second send of a message id is accepted and
/// dropped; with content-based de-duplication the same holds for equal bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_window_drops_resends() {
    let Some(p) = common::provider("dedup_window_drops_resends").await else {
        return;
    };
    let q = create(&p, "dedup", QueueSpec::default().with_sessions(true)).await;
    let g = sid("g");
    let id = MessageId::new("gh-delivery-42").unwrap();
    let first = Message::new("first")
        .with_session_id(g.clone())
        .with_message_id(id.clone());
    let resend = Message::new("resent")
        .with_session_id(g.clone())
        .with_message_id(id.clone());
    assert_eq!(p.send(&q, first).await.expect("send"), id);
    assert_eq!(p.send(&q, resend).await.expect("resend"), id);
    let other = p
        .send(&q, Message::new("other").with_session_id(g.clone()))
        .await
        .expect("send");
    assert_ne!(other, id);
    let got = recv_n(&p, &q, 3, Duration::from_secs(4)).await;
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["first", "other"]);
    assert_eq!(got[0].message_id, id);
    for m in &got {
        p.complete(&m.receipt).await.expect("complete");
    }
    p.delete_queue(&q).await.expect("delete_queue");

    // Content-based: no message id, equal bodies.
    let endpoint = common::endpoint("dedup_window_drops_resends").expect("endpoint");
    let cp = common::builder(&endpoint)
        .with_content_based_deduplication(true)
        .build()
        .await
        .expect("build");
    let q = create(
        &cp,
        "content-dedup",
        QueueSpec::default().with_sessions(true),
    )
    .await;
    for x in ["same", "same", "different"] {
        cp.send(&q, Message::new(x).with_session_id(g.clone()))
            .await
            .expect("send");
    }
    let got = recv_n(&cp, &q, 3, Duration::from_secs(4)).await;
    assert_eq!(
        got.iter().map(body).collect::<Vec<_>>(),
        ["same", "different"]
    );
    for m in &got {
        cp.complete(&m.receipt).await.expect("complete");
    }
    cp.delete_queue(&q).await.expect("delete_queue");
}

/// After `maxReceiveCount` receives the redrive policy moves the message to the
/// dead-letter queue; `redrive` brings it back with body and attributes intact, under a
/// fresh id with the original in `ORIGINAL_MESSAGE_ID_ATTRIBUTE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_policy_and_redrive_back() {
    let Some(p) = common::provider("redrive_policy_and_redrive_back").await else {
        return;
    };
    let spec = QueueSpec::default()
        .with_lock_duration(Duration::from_secs(1))
        .with_max_delivery_count(2);
    let q = create(&p, "redrive", spec).await;
    let id = p
        .send(
            &q,
            Message::new("poison")
                .with_attribute("event", "push")
                .with_content_type("text/plain"),
        )
        .await
        .expect("send");
    for n in 1..=2 {
        let got = recv_n(&p, &q, 1, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1, "delivery {n} missing");
        assert_eq!(got[0].delivery_count, n);
        p.abandon(&got[0].receipt, None).await.expect("abandon");
    }
    assert!(
        recv(&p, &q, 1, Duration::from_secs(1)).await.is_empty(),
        "delivered a third time"
    );
    let dead = p
        .receive_dead_letters(&q, ReceiveOptions::new(1, Duration::from_secs(3)))
        .await
        .expect("receive_dead_letters");
    assert_eq!(dead.len(), 1, "not in the dead-letter queue");
    assert_eq!(dead[0].message_id, id);
    assert_eq!(
        dead[0].dead_letter.as_ref().unwrap().reason,
        MAX_DELIVERY_COUNT_EXCEEDED
    );
    // Put it back in the dead-letter queue at once, then redrive.
    p.abandon(&dead[0].receipt, None)
        .await
        .expect("abandon in DLQ");
    let report = p.redrive(&q, RedriveOptions::new()).await.expect("redrive");
    assert_eq!(report.moved, 1);
    let back = recv_n(&p, &q, 1, Duration::from_secs(5)).await;
    assert_eq!(back.len(), 1, "redriven message did not arrive");
    assert_eq!(back[0].message_id, report.moved_ids[0].to);
    assert_eq!(
        back[0]
            .message
            .attributes
            .get(ORIGINAL_MESSAGE_ID_ATTRIBUTE)
            .map(String::as_str),
        Some(id.as_str())
    );
    assert_eq!(body(&back[0]), "poison");
    assert_eq!(
        back[0].message.attributes.get("event").map(String::as_str),
        Some("push")
    );
    assert_eq!(back[0].message.content_type.as_deref(), Some("text/plain"));
    assert!(back[0].dead_letter.is_none());
    p.complete(&back[0].receipt).await.expect("complete");
    let empty = p
        .redrive(&q, RedriveOptions::new())
        .await
        .expect("redrive of an empty DLQ");
    assert_eq!((empty.received, empty.moved), (0, 0));
    p.delete_queue(&q).await.expect("delete_queue");
}

/// Explicitly dead-lettered FIFO messages come back from `redrive` in group order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_redrive_keeps_group_order() {
    let Some(p) = common::provider("fifo_redrive_keeps_group_order").await else {
        return;
    };
    let q = create(&p, "fifo-redrive", QueueSpec::default().with_sessions(true)).await;
    assert!(dlq_name(&q).unwrap().as_str().ends_with("-dlq.fifo"));
    let (g, h) = (sid("g"), sid("h"));
    let msgs: Vec<Message> = ["g0", "h0", "g1", "g2", "h1", "g3"]
        .iter()
        .map(|x| {
            Message::new(*x).with_session_id(if x.starts_with('g') {
                g.clone()
            } else {
                h.clone()
            })
        })
        .collect();
    p.send_batch(&q, msgs).await.expect("send_batch");
    let mut dead = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead < 6 && Instant::now() < deadline {
        for m in recv(&p, &q, 1, Duration::from_secs(1)).await {
            p.dead_letter(
                &m.receipt,
                queue_core::DeadLetterReason::new("Test", "order"),
            )
            .await
            .expect("dead_letter");
            dead += 1;
        }
    }
    assert_eq!(dead, 6);
    let report = p.redrive(&q, RedriveOptions::new()).await.expect("redrive");
    assert_eq!(report.moved, 6);
    let mut per_group: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut total = 0;
    while total < 6 && Instant::now() < deadline {
        for m in recv(&p, &q, 1, Duration::from_secs(1)).await {
            assert!(m.dead_letter.is_none());
            per_group
                .entry(m.session_id().unwrap().as_str().to_owned())
                .or_default()
                .push(body(&m));
            p.complete(&m.receipt).await.expect("complete");
            total += 1;
        }
    }
    assert_eq!(per_group["g"], ["g0", "g1", "g2", "g3"]);
    assert_eq!(per_group["h"], ["h0", "h1"]);
    p.delete_queue(&q).await.expect("delete_queue");
}

/// 25 messages go out in chunks of at most 10 (the server rejects more) and are
/// completed with `complete_batch`, also in chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_25_are_chunked() {
    let Some(p) = common::provider("batches_of_25_are_chunked").await else {
        return;
    };
    let q = create(&p, "chunks", QueueSpec::default()).await;
    let msgs: Vec<Message> = (0..25).map(|i| Message::new(format!("m{i:02}"))).collect();
    let ids = p.send_batch(&q, msgs).await.expect("send_batch of 25");
    assert_eq!(ids.len(), 25);
    let got = recv_n(&p, &q, 25, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 25, "only {} of 25 arrived", got.len());
    let mut bodies: Vec<String> = got.iter().map(body).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        (0..25).map(|i| format!("m{i:02}")).collect::<Vec<_>>()
    );
    // Ids come back in input order.
    for m in &got {
        let i: usize = body(m)[1..].parse().unwrap();
        assert_eq!(m.message_id, ids[i]);
    }
    let receipts: Vec<Receipt> = got.iter().map(|m| m.receipt.clone()).collect();
    p.complete_batch(&receipts)
        .await
        .expect("complete_batch of 25");
    assert!(recv(&p, &q, 10, Duration::from_secs(1)).await.is_empty());
    // Completed receipts are settled: a second batch reports every entry as lost.
    match p.complete_batch(&receipts[..3]).await {
        Err(QueueError::PartialBatch {
            failed, succeeded, ..
        }) => {
            assert!(succeeded.is_empty());
            assert_eq!(failed.len(), 3);
            assert!(
                failed
                    .iter()
                    .all(|f| matches!(f.error, QueueError::LockLost { .. }))
            );
        }
        other => panic!("expected PartialBatch, got {other:?}"),
    }
    p.delete_queue(&q).await.expect("delete_queue");
}

/// Bad entries fail alone: the rest of the batch is sent, and each failure names its
/// input index and a typed error. A receipt the server rejects fails alone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_batch_failures_are_per_entry() {
    let Some(p) = common::provider("partial_batch_failures_are_per_entry").await else {
        return;
    };
    let q = create(&p, "partial", QueueSpec::default()).await;
    let mut msgs: Vec<Message> = (0..12).map(|i| Message::new(format!("ok{i}"))).collect();
    msgs[3] = Message::new(vec![b'x'; 1024 * 1024 + 1]);
    let mut crowded = Message::new("crowded");
    for i in 0..10 {
        crowded = crowded.with_attribute(format!("a{i}"), "v");
    }
    msgs[7] = crowded;
    msgs[10] = Message::new("grouped").with_session_id(sid("g"));
    match p.send_batch(&q, msgs).await {
        Err(QueueError::PartialBatch {
            total,
            succeeded,
            failed,
            ..
        }) => {
            assert_eq!(total, 12);
            let failed_idx: Vec<usize> = failed.iter().map(|f| f.index).collect();
            assert_eq!(failed_idx, [3, 7, 10]);
            assert!(
                matches!(failed[0].error, QueueError::MessageTooLarge { .. }),
                "{}",
                failed[0].error
            );
            assert!(
                matches!(failed[1].error, QueueError::InvalidMessage { .. }),
                "{}",
                failed[1].error
            );
            assert!(
                matches!(failed[2].error, QueueError::InvalidMessage { .. }),
                "{}",
                failed[2].error
            );
            assert_eq!(succeeded.len(), 9);
        }
        other => panic!("expected PartialBatch, got {other:?}"),
    }
    let got = recv_n(&p, &q, 9, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 9);
    assert!(got.iter().all(|m| body(m).starts_with("ok")));
    assert!(
        recv(&p, &q, 10, Duration::from_secs(1)).await.is_empty(),
        "a bad entry was sent"
    );

    // A well-formed but unknown receipt handle: the server rejects that entry only.
    let until_ms = (SystemTime::now() + Duration::from_secs(600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let bogus = Receipt::new("sqs", q.clone(), None, format!("m:{until_ms}:not-a-handle"));
    let receipts = vec![got[0].receipt.clone(), bogus, got[1].receipt.clone()];
    match p.complete_batch(&receipts).await {
        Err(QueueError::PartialBatch {
            succeeded, failed, ..
        }) => {
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].index, 1);
            assert!(
                matches!(failed[0].error, QueueError::LockLost { .. }),
                "{}",
                failed[0].error
            );
            assert_eq!(
                succeeded.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                [0, 2]
            );
        }
        other => panic!("expected PartialBatch, got {other:?}"),
    }
    let rest: Vec<Receipt> = got[2..].iter().map(|m| m.receipt.clone()).collect();
    p.complete_batch(&rest).await.expect("complete the rest");
    p.delete_queue(&q).await.expect("delete_queue");
}

/// Renewing the lock keeps a slow message from a competing receiver well past the
/// visibility timeout; without renewal it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_slow_message_from_redelivery() {
    let Some(p) = common::provider("renewal_keeps_a_slow_message_from_redelivery").await else {
        return;
    };
    let lock = Duration::from_secs(2);
    let q = create(&p, "renewal", QueueSpec::default().with_lock_duration(lock)).await;
    p.send(&q, Message::new("slow")).await.expect("send");
    let got = recv_n(&p, &q, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let competitor = {
        let (p, q) = (p.clone(), q.clone());
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(7);
            let mut stolen = Vec::new();
            while Instant::now() < end {
                stolen.extend(recv(&p, &q, 1, Duration::from_secs(1)).await);
            }
            stolen
        })
    };
    let mut last = got[0].locked_until.unwrap();
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let until = p.renew_lock(&got[0].receipt).await.expect("renew_lock");
        assert!(until > last, "renewal did not move the lock forward");
        last = until;
    }
    let stolen = competitor.await.unwrap();
    assert!(
        stolen.is_empty(),
        "a renewed message was delivered to another receiver"
    );
    p.complete(&got[0].receipt)
        .await
        .expect("complete after renewals");
    assert!(
        recv(&p, &q, 1, Duration::from_secs(3)).await.is_empty(),
        "came back after completion"
    );

    // Control: without renewal the message returns after the lock, and the old receipt
    // is refused (SQS itself would accept its stale handle).
    p.send(&q, Message::new("dropped")).await.expect("send");
    let first = recv_n(&p, &q, 1, Duration::from_secs(5)).await;
    let second = recv_n(&p, &q, 1, lock + Duration::from_secs(8)).await;
    assert_eq!(second.len(), 1, "not redelivered after the lock ran out");
    assert_eq!(second[0].delivery_count, 2);
    let err = p
        .complete(&first[0].receipt)
        .await
        .expect_err("stale receipt");
    assert!(matches!(err, QueueError::LockLost { .. }), "{err}");
    let err = p
        .renew_lock(&first[0].receipt)
        .await
        .expect_err("stale renewal");
    assert!(matches!(err, QueueError::LockLost { .. }), "{err}");
    p.complete(&second[0].receipt).await.expect("complete");
    p.delete_queue(&q).await.expect("delete_queue");
}

/// Long polling waits whole seconds and returns early when a message arrives; a
/// sub-second wait is not stretched to a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_waits_and_wakes() {
    let Some(p) = common::provider("long_polling_waits_and_wakes").await else {
        return;
    };
    let q = create(&p, "poll", QueueSpec::default()).await;
    let start = Instant::now();
    assert!(recv(&p, &q, 1, Duration::from_secs(3)).await.is_empty());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "a 3 s long poll returned after {took:?}"
    );
    let start = Instant::now();
    assert!(recv(&p, &q, 1, Duration::from_millis(300)).await.is_empty());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(950),
        "a 300 ms wait took {took:?}"
    );
    let sender = {
        let (p, q) = (p.clone(), q.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            p.send(&q, Message::new("wake")).await
        })
    };
    let start = Instant::now();
    let got = recv(&p, &q, 1, Duration::from_secs(15)).await;
    sender.await.unwrap().expect("send");
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["wake"]);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "long poll did not wake up"
    );
    p.complete(&got[0].receipt).await.expect("complete");
    p.delete_queue(&q).await.expect("delete_queue");

    // The lock of a message that arrives late in a long poll counts from its arrival, not
    // from the start of the poll: a 2 s lock after a 3 s wait still settles.
    let q = create(
        &p,
        "poll-lock",
        QueueSpec::default().with_lock_duration(Duration::from_secs(2)),
    )
    .await;
    let sender = {
        let (p, q) = (p.clone(), q.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            p.send(&q, Message::new("late")).await
        })
    };
    let got = recv(&p, &q, 1, Duration::from_secs(10)).await;
    sender.await.unwrap().expect("send");
    assert_eq!(got.len(), 1, "the late message did not arrive");
    assert!(
        got[0].locked_until.unwrap() > SystemTime::now(),
        "lock already over on arrival"
    );
    p.complete(&got[0].receipt)
        .await
        .expect("complete right after a long poll that waited longer than the lock");
    p.delete_queue(&q).await.expect("delete_queue");
}

/// Uses SQS cannot honour fail with typed errors before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_uses_fail_before_sending() {
    let Some(p) = common::provider("unsupported_uses_fail_before_sending").await else {
        return;
    };
    let std_q = create(&p, "typed", QueueSpec::default()).await;
    let fifo_q = create(&p, "typed", QueueSpec::default().with_sessions(true)).await;
    let cases: Vec<(&QueueName, Message, &str)> = vec![
        (
            &std_q,
            Message::new("x").with_session_id(sid("g")),
            "invalid_message",
        ),
        (&fifo_q, Message::new("x"), "invalid_message"),
        (
            &std_q,
            Message::new("x").with_delay(Duration::from_secs(16 * 60)),
            "invalid_message",
        ),
        (
            &fifo_q,
            Message::new("x")
                .with_session_id(sid("g"))
                .with_delay(Duration::from_secs(60)),
            "unsupported",
        ),
        (
            &std_q,
            Message::new("x").with_attribute("AWS.reserved", "v"),
            "invalid_name",
        ),
    ];
    for (q, msg, label) in cases {
        let err = p.send(q, msg).await.expect_err("must fail");
        assert_eq!(err.kind_label(), label, "{err}");
    }
    assert!(
        recv(&p, &std_q, 10, Duration::from_secs(1))
            .await
            .is_empty()
    );
    assert!(
        recv(&p, &fifo_q, 10, Duration::from_secs(1))
            .await
            .is_empty()
    );
    let err = p
        .create_queue(
            &common::unique("not-fifo", false),
            &QueueSpec::default().with_sessions(true),
        )
        .await
        .expect_err("a session queue needs .fifo");
    assert_eq!(err.kind_label(), "invalid_name", "{err}");
    let err = p
        .accept_session(&fifo_q, SessionSelector::Next, Duration::from_millis(10))
        .await
        .expect_err("accept_session is unsupported");
    assert_eq!(err.kind_label(), "unsupported", "{err}");
    let err = p
        .abandon(
            &Receipt::new("sqs", std_q.clone(), None, "m:99999999999999:x"),
            Some(Duration::from_secs(13 * 3600)),
        )
        .await
        .expect_err("abandon delay over 12 h");
    assert_eq!(err.kind_label(), "unsupported", "{err}");
    p.delete_queue(&std_q).await.expect("delete_queue");
    p.delete_queue(&fifo_q).await.expect("delete_queue");
}

/// `check_access` asks the server about the queue; a time to live drops stale messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_access_and_time_to_live() {
    let Some(p) = common::provider("check_access_and_time_to_live").await else {
        return;
    };
    let q = create(&p, "access", QueueSpec::default()).await;
    p.check_access(&q)
        .await
        .expect("check_access on an existing queue");
    let err = p
        .check_access(&common::unique("missing", false))
        .await
        .expect_err("check_access on a missing queue");
    assert!(matches!(err, QueueError::QueueNotFound { .. }), "{err}");

    p.send(
        &q,
        Message::new("stale").with_time_to_live(Duration::from_millis(500)),
    )
    .await
    .expect("send");
    p.send(
        &q,
        Message::new("fresh").with_time_to_live(Duration::from_secs(600)),
    )
    .await
    .expect("send");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let got = recv_n(&p, &q, 2, Duration::from_secs(3)).await;
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["fresh"]);
    assert!(got[0].message.time_to_live.is_some());
    p.complete(&got[0].receipt).await.expect("complete");
    p.delete_queue(&q).await.expect("delete_queue");
    let err = p
        .send(&q, Message::new("x"))
        .await
        .expect_err("deleted queue");
    assert!(matches!(err, QueueError::QueueNotFound { .. }), "{err}");
}

/// When a later chunk of `complete_batch` fails (here: the dead-letter queue was deleted
/// behind the provider's back), the error accounts for every receipt: the main-queue ones
/// were deleted (with their message ids), the dead-letter ones were not (with the error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_batch_says_which_receipts_were_deleted_when_a_later_chunk_fails() {
    let test = "complete_batch_says_which_receipts_were_deleted_when_a_later_chunk_fails";
    let Some(p) = common::provider(test).await else {
        return;
    };
    let q = create(&p, "partial-later", QueueSpec::default()).await;
    let msgs: Vec<Message> = (0..14).map(|i| Message::new(format!("m{i:02}"))).collect();
    p.send_batch(&q, msgs).await.expect("send_batch");
    let got = recv_n(&p, &q, 14, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 14);
    for m in &got[12..] {
        p.dead_letter(&m.receipt, queue_core::DeadLetterReason::new("T", "t"))
            .await
            .expect("dead_letter");
    }
    let dead = p
        .receive_dead_letters(&q, ReceiveOptions::new(2, Duration::from_secs(5)))
        .await
        .expect("receive_dead_letters");
    assert_eq!(dead.len(), 2);
    // Another provider value deletes the dead-letter queue; `p` still has it cached.
    let other = common::provider(test).await.unwrap();
    other
        .delete_queue(&dlq_name(&q).unwrap())
        .await
        .expect("delete the DLQ");
    let mut receipts: Vec<Receipt> = got[..12].iter().map(|m| m.receipt.clone()).collect();
    receipts.extend(dead.iter().map(|m| m.receipt.clone()));
    match p.complete_batch(&receipts).await {
        Err(QueueError::PartialBatch {
            total,
            succeeded,
            failed,
            ..
        }) => {
            assert_eq!(total, 14);
            let done: Vec<usize> = succeeded.iter().map(|(i, _)| *i).collect();
            assert_eq!(done, (0..12).collect::<Vec<_>>());
            for (i, id) in &succeeded {
                assert_eq!(id, &got[*i].message_id, "entry {i} names the wrong message");
            }
            let not: Vec<usize> = failed.iter().map(|f| f.index).collect();
            assert_eq!(not, [12, 13]);
            assert!(
                failed
                    .iter()
                    .all(|f| matches!(f.error, QueueError::QueueNotFound { .. })),
                "{failed:?}"
            );
        }
        other => panic!("expected PartialBatch, got {other:?}"),
    }
    assert!(
        recv(&p, &q, 10, Duration::from_secs(1)).await.is_empty(),
        "a receipt reported deleted was not"
    );
    p.delete_queue(&q).await.expect("delete_queue");
}

/// An invalid spec is refused before anything is created: no orphan dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spec_creates_no_dead_letter_queue() {
    let Some(p) = common::provider("invalid_spec_creates_no_dead_letter_queue").await else {
        return;
    };
    let q = common::unique("orphan", false);
    let spec = QueueSpec::default().with_duplicate_detection(Duration::from_secs(60));
    let err = p
        .create_queue(&q, &spec)
        .await
        .expect_err("standard queues do not de-duplicate");
    assert!(matches!(err, QueueError::Unsupported { .. }), "{err}");
    for name in [q.clone(), dlq_name(&q).unwrap()] {
        match p.check_access(&name).await {
            Err(QueueError::QueueNotFound { .. }) => {}
            other => panic!("`{name}` exists after a refused create_queue: {other:?}"),
        }
    }
}

/// On a FIFO queue with content-based de-duplication a redrive within the five-minute
/// window is not taken for a duplicate of the original send (same body): it arrives,
/// under a fresh id that is also its de-duplication id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_on_content_deduplicated_fifo_is_not_dropped() {
    let test = "redrive_on_content_deduplicated_fifo_is_not_dropped";
    let Some(endpoint) = common::endpoint(test) else {
        return;
    };
    let p = common::builder(&endpoint)
        .with_content_based_deduplication(true)
        .build()
        .await
        .expect("build");
    let q = create(
        &p,
        "content-redrive",
        QueueSpec::default().with_sessions(true),
    )
    .await;
    let g = sid("octo/repo#9");
    let id = p
        .send(&q, Message::new("same body").with_session_id(g.clone()))
        .await
        .expect("send");
    let got = recv_n(&p, &q, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    p.dead_letter(&got[0].receipt, queue_core::DeadLetterReason::new("T", "t"))
        .await
        .expect("dead_letter");
    let report = p
        .redrive(&q, RedriveOptions::new().with_max_messages(1))
        .await
        .expect("redrive");
    assert_eq!((report.received, report.moved), (1, 1), "{report:?}");
    let back = recv_n(&p, &q, 1, Duration::from_secs(5)).await;
    assert_eq!(
        back.len(),
        1,
        "the redriven message was dropped as a duplicate"
    );
    assert_eq!(body(&back[0]), "same body");
    assert_eq!(back[0].session_id(), Some(&g));
    assert_eq!(
        back[0]
            .message
            .attributes
            .get(ORIGINAL_MESSAGE_ID_ATTRIBUTE)
            .map(String::as_str),
        Some(id.as_str())
    );
    p.complete(&back[0].receipt).await.expect("complete");
    p.delete_queue(&q).await.expect("delete_queue");
}
