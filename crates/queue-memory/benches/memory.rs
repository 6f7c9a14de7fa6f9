//! Cost of the in-memory provider's peek-lock bookkeeping, against baselines measured in
//! the same run.
//!
//! * `round_trip/*`: 1000 messages enqueued and consumed. Baseline `channel` = a tokio
//!   unbounded mpsc channel (the floor for an in-process queue); `memory` = `send_batch`
//!   in chunks of 100, then `receive` 100 at a time and `complete` each (peek-lock).
//! * `sessions/*`: 1000 session messages drained through `accept_session(Next)` and
//!   session receives. Baseline `1x1000` = one session; `50x20` = fifty sessions of twenty.
//!   Their ratio shows what spreading messages over many sessions costs.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use queue_core::{
    Message, QueueName, QueueProvider, QueueSpec, ReceiveOptions, SessionId, SessionSelector,
};
use queue_memory::InMemoryProvider;

const N: usize = 1000;
const NO_WAIT: Duration = Duration::ZERO;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn channel_round_trip() -> Duration {
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..N {
        tx.send(Message::new(format!("m{i}")))
            .expect("open channel");
    }
    let mut got = 0;
    while got < N {
        rx.recv().await.expect("message");
        got += 1;
    }
    start.elapsed()
}

async fn memory_round_trip() -> Duration {
    let provider = InMemoryProvider::new();
    let q = QueueName::new("bench").expect("name");
    provider
        .create_queue(&q, &QueueSpec::default())
        .await
        .expect("create");
    let start = Instant::now();
    let msgs: Vec<Message> = (0..N).map(|i| Message::new(format!("m{i}"))).collect();
    for chunk in msgs.chunks(100) {
        provider.send_batch(&q, chunk.to_vec()).await.expect("send");
    }
    let mut got = 0;
    while got < N {
        for m in provider
            .receive(&q, ReceiveOptions::new(100, NO_WAIT))
            .await
            .expect("receive")
        {
            provider.complete(&m.receipt).await.expect("complete");
            got += 1;
        }
    }
    start.elapsed()
}

async fn drain_sessions(sessions: usize) -> Duration {
    let provider = InMemoryProvider::new();
    let q = QueueName::new("bench-sessions").expect("name");
    provider
        .create_queue(&q, &QueueSpec::default().with_sessions(true))
        .await
        .expect("create");
    let per = N / sessions;
    let mut msgs = Vec::with_capacity(N);
    for n in 0..per {
        for s in 0..sessions {
            let id = SessionId::new(format!("pr-{s}")).expect("session id");
            msgs.push(Message::new(format!("{n}")).with_session_id(id));
        }
    }
    provider.send_batch(&q, msgs).await.expect("send");
    let start = Instant::now();
    let mut got = 0;
    while let Some(session) = provider
        .accept_session(&q, SessionSelector::Next, NO_WAIT)
        .await
        .expect("accept")
    {
        loop {
            let batch = session
                .receive(ReceiveOptions::new(100, NO_WAIT))
                .await
                .expect("receive");
            if batch.is_empty() {
                break;
            }
            for m in batch {
                session.complete(&m.receipt).await.expect("complete");
                got += 1;
            }
        }
        session.close().await.expect("close");
    }
    assert_eq!(got, N);
    start.elapsed()
}

fn round_trip(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("channel", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += channel_round_trip().await;
            }
            total
        });
    });
    group.bench_function("memory", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += memory_round_trip().await;
            }
            total
        });
    });
    group.finish();
}

fn sessions(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("sessions");
    group.throughput(Throughput::Elements(N as u64));
    for (name, count) in [("1x1000", 1), ("50x20", 50)] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += drain_sessions(count).await;
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = round_trip, sessions
}
criterion_main!(benches);
