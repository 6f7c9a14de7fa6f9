//! Coalesced settlement: concurrent completions share `update-disposition` requests, and
//! each caller still gets the broker's verdict for its own message.

mod common;

use std::time::Duration;

use queue_core::{Message, QueueError, QueueName, QueueProvider, ReceiveOptions};
use servicebus_emulator::{
    QueueConfig,
    broker::{EntityRef, SubQueue},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completions_each_get_their_own_verdict() {
    const N: usize = 50;
    let emu = common::start(vec![(
        "coalesce".to_owned(),
        QueueConfig::new().with_lock_duration(Duration::from_secs(30)),
    )])
    .await;
    let p = common::provider(&emu);
    // A second client: it settles by lock token without having received the messages.
    let other = common::provider(&emu);
    let queue = QueueName::new("coalesce").unwrap();
    let batch = (0..N).map(|i| Message::new(format!("m{i}"))).collect();
    p.send_batch(&queue, batch).await.unwrap();
    let mut got = Vec::new();
    while got.len() < N {
        let more = p
            .receive(
                &queue,
                ReceiveOptions::new(N - got.len(), Duration::from_secs(5)),
            )
            .await
            .unwrap();
        assert!(!more.is_empty());
        got.extend(more);
    }
    // The first message is completed already: its lock is gone on the broker.
    p.complete(&got[0].receipt).await.unwrap();
    let results = futures::future::join_all(got.iter().map(|m| other.complete(&m.receipt))).await;
    assert!(
        matches!(results[0], Err(QueueError::LockLost { .. })),
        "{:?}",
        results[0]
    );
    for (i, r) in results.iter().enumerate().skip(1) {
        assert!(r.is_ok(), "message {i}: {r:?}");
    }
    let main = EntityRef {
        queue: "coalesce".into(),
        sub: SubQueue::Main,
    };
    assert_eq!(emu.broker().count(&main), 0, "every completion was applied");
}
