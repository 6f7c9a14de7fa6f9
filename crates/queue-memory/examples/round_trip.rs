//! A fixed workload for instruction-count profiling (`valgrind --tool=callgrind`):
//! `round_trip <batch> <depth> <messages>` sends, receives and completes `messages`
//! 1 KiB messages in batches of `batch` on one current-thread runtime, with `depth`
//! other messages waiting in the queue. Deterministic apart from the allocator, so
//! instruction counts compare before and after a change.

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

async fn run(batch: usize, depth: usize, messages: usize) {
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
    for _ in 0..messages / batch {
        if batch == 1 {
            p.send(&q, Message::new(body.clone())).await.expect("send");
        } else {
            let msgs = (0..batch).map(|_| Message::new(body.clone())).collect();
            p.send_batch(&q, msgs).await.expect("send");
        }
        let got = p
            .receive(&q, ReceiveOptions::new(batch, Duration::from_secs(5)))
            .await
            .expect("receive");
        assert_eq!(got.len(), batch);
        for m in &got {
            p.complete(&m.receipt).await.expect("complete");
        }
    }
}

fn main() {
    let (batch, depth, messages) = (arg(1, 1), arg(2, 1), arg(3, 100_000));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(batch, depth, messages));
}
