//! A fixed workload for instruction-count profiling (`valgrind --tool=callgrind`):
//! `round_trip <batch> <depth> <messages> [dyn]` sends, receives and completes `messages`
//! 1 KiB messages in batches of `batch` on one current-thread runtime, with `depth`
//! other messages waiting in the queue; through the provider's inherent methods, or with
//! `dyn` through `dyn QueueProvider` (a boxed future per call). Deterministic apart from
//! the allocator, so instruction counts compare before and after a change.

use std::time::Duration;

use bytes::Bytes;
use queue_core::{Message, QueueName, QueueProvider, QueueSpec, ReceiveOptions};
use queue_memory::InMemoryProvider;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

async fn run(batch: usize, depth: usize, messages: usize, through_dyn: bool) {
    let p = InMemoryProvider::new();
    let q = QueueName::new("profile").expect("name");
    p.create_queue(&q, &QueueSpec::default())
        .await
        .expect("create");
    let body = Bytes::from(vec![b'x'; 1024]);
    let mut left = depth;
    while left > 0 {
        let n = left.min(10_000);
        let msgs = (0..n).map(|_| Message::new(body.clone())).collect();
        p.send_batch(&q, msgs).await.expect("prefill");
        left -= n;
    }
    let rounds = messages / batch;
    if through_dyn {
        let shared: &dyn QueueProvider = &p;
        for _ in 0..rounds {
            round(shared, &q, batch, &body).await;
        }
    } else {
        for _ in 0..rounds {
            round_direct(&p, &q, batch, &body).await;
        }
    }
}

async fn round(p: &dyn QueueProvider, q: &QueueName, batch: usize, body: &Bytes) {
    if batch == 1 {
        p.send(q, Message::new(body.clone())).await.expect("send");
    } else {
        let msgs = (0..batch).map(|_| Message::new(body.clone())).collect();
        p.send_batch(q, msgs).await.expect("send");
    }
    let got = p
        .receive(q, ReceiveOptions::new(batch, Duration::from_secs(5)))
        .await
        .expect("receive");
    assert_eq!(got.len(), batch);
    for m in &got {
        p.complete(&m.receipt).await.expect("complete");
    }
}

async fn round_direct(p: &InMemoryProvider, q: &QueueName, batch: usize, body: &Bytes) {
    if batch == 1 {
        p.send(q, Message::new(body.clone())).await.expect("send");
    } else {
        let msgs = (0..batch).map(|_| Message::new(body.clone())).collect();
        p.send_batch(q, msgs).await.expect("send");
    }
    let got = p
        .receive(q, ReceiveOptions::new(batch, Duration::from_secs(5)))
        .await
        .expect("receive");
    assert_eq!(got.len(), batch);
    for m in &got {
        p.complete(&m.receipt).await.expect("complete");
    }
}

fn main() {
    let (batch, depth, messages) = (arg(1, 1), arg(2, 1), arg(3, 100_000));
    let through_dyn = std::env::args().nth(4).as_deref() == Some("dyn");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(batch, depth, messages, through_dyn));
}
