//! Recycling of plain receive links: fe2o3-amqp remembers every peek-locked delivery of a
//! link until it is settled on that link, and this provider settles through `$management`,
//! so the provider detaches a link after a number of deliveries and attaches a new one.

mod common;

use std::{collections::BTreeMap, time::Duration};

use queue_azure::ServiceBusProvider;
use queue_core::{Message, QueueName, QueueProvider, ReceiveOptions, ReceivedMessage};
use servicebus_emulator::{Emulator, QueueConfig};

const THRESHOLD: u64 = 7;

async fn setup(name: &str) -> (Emulator, ServiceBusProvider, QueueName) {
    let emu = common::start(vec![(
        name.to_owned(),
        QueueConfig::new().with_lock_duration(Duration::from_secs(30)),
    )])
    .await;
    let p = ServiceBusProvider::builder()
        .with_connection_string(&common::connection_string(&emu))
        .with_operation_timeout(Duration::from_secs(10))
        .with_receive_link_recycle(THRESHOLD)
        .build()
        .unwrap();
    (emu, p, QueueName::new(name).unwrap())
}

fn opts(max: usize) -> ReceiveOptions {
    ReceiveOptions::new(max, Duration::from_millis(500))
}

fn body(m: &ReceivedMessage) -> String {
    String::from_utf8(m.message.body.to_vec()).unwrap()
}

async fn send_n(p: &ServiceBusProvider, queue: &QueueName, n: usize) {
    for i in 0..n {
        p.send(queue, Message::new(format!("m{i}"))).await.unwrap();
    }
}

async fn assert_empty(p: &ServiceBusProvider, queue: &QueueName) {
    let rest = p.receive(queue, opts(10)).await.unwrap();
    assert!(
        rest.is_empty(),
        "left over: {:?}",
        rest.iter().map(body).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_recycled_and_every_message_is_completed_exactly_once() {
    let (_emu, p, queue) = setup("recycle").await;
    send_n(&p, &queue, 50).await;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut calls = 0;
    while seen.len() < 50 && calls < 200 {
        calls += 1;
        for m in p.receive(&queue, opts(3)).await.unwrap() {
            *seen.entry(body(&m)).or_default() += 1;
            p.complete(&m.receipt).await.unwrap();
        }
    }
    assert_eq!(seen.len(), 50, "not every message came: {seen:?}");
    assert!(seen.values().all(|&c| c == 1), "duplicates: {seen:?}");
    assert_empty(&p, &queue).await;
    // 50 deliveries, a new link after each 7 (checked before each receive call of 3).
    let generations = p.receive_link_generations();
    assert!(
        (6..=8).contains(&generations),
        "receive link generations: {generations}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_messages_delay_the_recycle_and_settle_fine_after_it() {
    let (_emu, p, queue) = setup("held").await;
    send_n(&p, &queue, 20).await;

    // 10 deliveries, past the threshold, all still locked: the link is kept.
    let mut held = p.receive(&queue, opts(10)).await.unwrap();
    assert_eq!(held.len(), 10);
    assert_eq!(p.receive_link_generations(), 1);
    held.extend(p.receive(&queue, opts(4)).await.unwrap());
    assert_eq!(held.len(), 14);
    assert_eq!(
        p.receive_link_generations(),
        1,
        "a link with locked messages is kept below twice the threshold"
    );

    // 14 = twice the threshold: recycled even with messages locked.
    let rest = p.receive(&queue, opts(10)).await.unwrap();
    assert_eq!(rest.len(), 6);
    assert_eq!(p.receive_link_generations(), 2);

    // Messages received on the detached link are still locked and settle by lock token:
    // some complete, one abandoned (and delivered again), one dead-lettered.
    let abandoned = held.pop().unwrap();
    p.abandon(&abandoned.receipt, None).await.unwrap();
    let dead = held.pop().unwrap();
    p.dead_letter(
        &dead.receipt,
        queue_core::DeadLetterReason::new("test", "recycled link"),
    )
    .await
    .unwrap();
    for m in held.iter().chain(rest.iter()) {
        p.complete(&m.receipt).await.unwrap();
    }
    let again = p.receive(&queue, opts(10)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(body(&again[0]), body(&abandoned));
    assert_eq!(again[0].delivery_count, 2);
    p.complete(&again[0].receipt).await.unwrap();
    assert_empty(&p, &queue).await;
    let dlq = p.receive_dead_letters(&queue, opts(10)).await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(body(&dlq[0]), body(&dead));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_is_recycled_once_its_messages_are_settled() {
    let (_emu, p, queue) = setup("quiet").await;
    send_n(&p, &queue, 10).await;
    let first = p.receive(&queue, opts(8)).await.unwrap();
    assert_eq!(first.len(), 8);
    // Past the threshold but two still locked: kept.
    for m in &first[..6] {
        p.complete(&m.receipt).await.unwrap();
    }
    let ninth = p.receive(&queue, opts(1)).await.unwrap();
    assert_eq!(ninth.len(), 1);
    assert_eq!(p.receive_link_generations(), 1);
    for m in first[6..].iter().chain(ninth.iter()) {
        p.complete(&m.receipt).await.unwrap();
    }
    // All settled: the next receive attaches a new link.
    let tenth = p.receive(&queue, opts(10)).await.unwrap();
    assert_eq!(tenth.len(), 1);
    assert_eq!(p.receive_link_generations(), 2);
    p.complete(&tenth[0].receipt).await.unwrap();
    assert_empty(&p, &queue).await;
}
