//! Model-based property test: random sends, receives, settlements and clock jumps on one
//! queue, checked after every step against a model of peek-lock semantics.

use std::{collections::HashMap, time::Duration};

use proptest::prelude::*;
use queue_core::{
    MAX_DELIVERY_COUNT_EXCEEDED, Message, MessageId, QueueError, QueueName, QueueProvider,
    QueueSpec, Receipt, ReceiveOptions,
};
use queue_memory::InMemoryProvider;
use tokio::time::{Instant, advance};

const LOCK: Duration = Duration::from_secs(10);
const MAX_DELIVERIES: u32 = 3;

#[derive(Clone, Debug)]
enum Op {
    Send(usize),
    Receive(usize),
    Complete(usize),
    Abandon(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..4usize).prop_map(Op::Send),
        (1..5usize).prop_map(Op::Receive),
        any::<usize>().prop_map(Op::Complete),
        any::<usize>().prop_map(Op::Abandon),
        (0..16u64).prop_map(Op::Advance),
    ]
}

/// A delivery the test holds: its receipt, message and lock expiry.
struct Held {
    receipt: Receipt,
    id: MessageId,
    until: Instant,
}

async fn run(ops: Vec<Op>) {
    let q = QueueName::new("model").unwrap();
    let p = InMemoryProvider::builder()
        .with_queue(
            q.clone(),
            QueueSpec::default()
                .with_lock_duration(LOCK)
                .with_max_delivery_count(MAX_DELIVERIES),
        )
        .build()
        .unwrap();
    let mut held: Vec<Held> = Vec::new();
    let mut sent = 0usize;
    let mut completed = 0usize;
    let mut deliveries: HashMap<MessageId, u32> = HashMap::new();
    for op in ops {
        let now = Instant::now();
        match op {
            Op::Send(n) => {
                let msgs = (0..n)
                    .map(|i| Message::new(format!("{sent}-{i}")))
                    .collect();
                p.send_batch(&q, msgs).await.unwrap();
                sent += n;
            }
            Op::Receive(n) => {
                for m in p
                    .receive(&q, ReceiveOptions::new(n, Duration::ZERO))
                    .await
                    .unwrap()
                {
                    // Nobody else may hold a live lock on this message.
                    assert!(
                        !held.iter().any(|h| h.id == m.message_id && h.until > now),
                        "message delivered while another delivery's lock was live"
                    );
                    let count = deliveries.entry(m.message_id.clone()).or_default();
                    *count += 1;
                    assert_eq!(m.delivery_count, *count, "delivery count drifted");
                    assert!(m.delivery_count <= MAX_DELIVERIES);
                    held.push(Held {
                        receipt: m.receipt,
                        id: m.message_id,
                        until: now + LOCK,
                    });
                }
            }
            Op::Complete(i) | Op::Abandon(i) if !held.is_empty() => {
                let h = held.remove(i % held.len());
                let live = h.until > now;
                let result = if matches!(op, Op::Complete(_)) {
                    p.complete(&h.receipt).await
                } else {
                    p.abandon(&h.receipt, None).await
                };
                match (live, result) {
                    (true, Ok(())) => {
                        if matches!(op, Op::Complete(_)) {
                            completed += 1;
                        }
                    }
                    (false, Err(QueueError::LockLost { .. })) => {}
                    (live, r) => panic!("settling a {live}-live lock gave {r:?}"),
                }
            }
            Op::Complete(_) | Op::Abandon(_) => {}
            Op::Advance(s) => advance(Duration::from_secs(s)).await,
        }
        // Nothing is lost or duplicated: every sent message is completed, dead-lettered
        // or still in the queue.
        let in_queue = p.message_count(&q).unwrap();
        let dead = p.dead_letter_count(&q).unwrap();
        assert_eq!(
            sent,
            completed + in_queue + dead,
            "messages lost or duplicated"
        );
    }
    // Drain: after every lock has expired, everything left is delivered or dead-lettered.
    advance(LOCK).await;
    let dead = p
        .receive_dead_letters(&q, ReceiveOptions::new(100, Duration::ZERO))
        .await
        .unwrap();
    for m in &dead {
        let reason = m.dead_letter.as_ref().expect("DLQ messages carry a reason");
        assert_eq!(reason.reason, MAX_DELIVERY_COUNT_EXCEEDED);
        assert_eq!(deliveries.get(&m.message_id), Some(&MAX_DELIVERIES));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn peek_lock_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(ops));
    }
}

#[derive(Clone, Debug)]
enum SessionOp {
    Send(usize, usize),
    AcceptNext,
    Receive(usize, usize),
    Complete(usize),
    Abandon(usize),
    Close(usize),
    Advance(u64),
}

fn session_op() -> impl Strategy<Value = SessionOp> {
    prop_oneof![
        (0..3usize, 1..4usize).prop_map(|(s, n)| SessionOp::Send(s, n)),
        Just(SessionOp::AcceptNext),
        (any::<usize>(), 1..4usize).prop_map(|(r, n)| SessionOp::Receive(r, n)),
        any::<usize>().prop_map(SessionOp::Complete),
        any::<usize>().prop_map(SessionOp::Abandon),
        any::<usize>().prop_map(SessionOp::Close),
        (0..16u64).prop_map(SessionOp::Advance),
    ]
}

struct Rx {
    receiver: Box<dyn queue_core::SessionReceiver>,
    session: usize,
    until: Instant,
    closed: bool,
}

impl Rx {
    fn live(&self, now: Instant) -> bool {
        !self.closed && self.until > now
    }
}

struct HeldInSession {
    rx: usize,
    session: usize,
    body: String,
    receipt: Receipt,
}

async fn run_sessions(ops: Vec<SessionOp>) {
    use queue_core::{SessionId, SessionSelector};
    let q = QueueName::new("model-sessions").unwrap();
    let p = InMemoryProvider::builder()
        .with_queue(
            q.clone(),
            QueueSpec::default()
                .with_sessions(true)
                .with_lock_duration(LOCK)
                .with_max_delivery_count(1000),
        )
        .build()
        .unwrap();
    let ids: Vec<SessionId> = (0..3)
        .map(|s| SessionId::new(format!("s{s}")).unwrap())
        .collect();
    let mut sent: Vec<Vec<String>> = vec![Vec::new(); 3];
    let mut completed: Vec<std::collections::HashSet<String>> = vec![Default::default(); 3];
    let mut rxs: Vec<Rx> = Vec::new();
    let mut held: Vec<HeldInSession> = Vec::new();
    for op in ops {
        let now = Instant::now();
        match op {
            SessionOp::Send(s, n) => {
                for _ in 0..n {
                    let body = format!("{s}-{}", sent[s].len());
                    p.send(
                        &q,
                        Message::new(body.clone()).with_session_id(ids[s].clone()),
                    )
                    .await
                    .unwrap();
                    sent[s].push(body);
                }
            }
            SessionOp::AcceptNext => {
                if let Some(r) = p
                    .accept_session(&q, SessionSelector::Next, Duration::ZERO)
                    .await
                    .unwrap()
                {
                    let session = ids.iter().position(|i| i == r.session_id()).unwrap();
                    assert!(
                        !rxs.iter().any(|x| x.session == session && x.live(now)),
                        "Next returned a session another receiver holds"
                    );
                    rxs.push(Rx {
                        receiver: r,
                        session,
                        until: now + LOCK,
                        closed: false,
                    });
                }
            }
            SessionOp::Receive(r, n) if !rxs.is_empty() => {
                let r = r % rxs.len();
                let rx = &rxs[r];
                let result = rx
                    .receiver
                    .receive(ReceiveOptions::new(n, Duration::ZERO))
                    .await;
                let msgs = match (rx.live(now), result) {
                    (true, Ok(m)) => m,
                    (false, Err(QueueError::SessionLockLost { .. })) => continue,
                    (live, other) => panic!("receive on a {live}-live session gave {other:?}"),
                };
                let s = rx.session;
                for m in msgs {
                    let body = String::from_utf8(m.body().to_vec()).unwrap();
                    let pos = sent[s].iter().position(|b| *b == body).unwrap();
                    // Strict FIFO: everything earlier is completed or held by this receiver.
                    for earlier in &sent[s][..pos] {
                        assert!(
                            completed[s].contains(earlier)
                                || held.iter().any(|h| h.rx == r && h.body == *earlier),
                            "{body} delivered before {earlier} was settled"
                        );
                    }
                    held.push(HeldInSession {
                        rx: r,
                        session: s,
                        body,
                        receipt: m.receipt,
                    });
                }
            }
            SessionOp::Complete(i) | SessionOp::Abandon(i) if !held.is_empty() => {
                let h = held.remove(i % held.len());
                let rx = &rxs[h.rx];
                let complete = matches!(op, SessionOp::Complete(_));
                let result = if complete {
                    rx.receiver.complete(&h.receipt).await
                } else {
                    rx.receiver.abandon(&h.receipt).await
                };
                match (rx.live(now), result) {
                    (true, Ok(())) => {
                        if complete {
                            completed[h.session].insert(h.body);
                        }
                    }
                    (false, Err(QueueError::SessionLockLost { .. })) => {}
                    (live, other) => panic!("settling on a {live}-live session gave {other:?}"),
                }
            }
            SessionOp::Close(r) if !rxs.is_empty() => {
                let r = r % rxs.len();
                rxs[r].receiver.close().await.unwrap();
                rxs[r].closed = true;
                held.retain(|h| h.rx != r);
            }
            SessionOp::Advance(secs) => {
                advance(Duration::from_secs(secs)).await;
                let now = Instant::now();
                held.retain(|h| rxs[h.rx].live(now));
            }
            _ => {}
        }
    }
    let total: usize = sent.iter().map(Vec::len).sum();
    let done: usize = completed.iter().map(|c| c.len()).sum();
    assert_eq!(p.message_count(&q).unwrap(), total - done);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sessions_are_exclusive_and_strictly_ordered(
        ops in proptest::collection::vec(session_op(), 1..80)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run_sessions(ops));
    }
}
