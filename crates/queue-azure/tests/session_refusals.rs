//! A receiver that does not match the queue is refused by Service Bus (`amqp:not-allowed`);
//! the provider reports that as a permanent [`QueueError::Unsupported`], never as an outage.

mod common;

use std::time::Duration;

use queue_core::{
    Message, QueueError, QueueName, QueueProvider, ReceiveOptions, RetryClass, SessionId,
    SessionSelector,
};
use servicebus_emulator::QueueConfig;

fn assert_unsupported(e: &QueueError, words: &str) {
    assert!(
        matches!(
            e,
            QueueError::Unsupported {
                provider: "service-bus",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.retry_class(), RetryClass::Permanent, "{e:?}");
    assert!(e.to_string().contains(words), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_session_on_a_queue_without_sessions_is_unsupported() {
    let emu = common::start(vec![("plain".to_owned(), QueueConfig::new())]).await;
    let p = common::provider(&emu);
    let q = QueueName::new("plain").unwrap();
    for selector in [
        SessionSelector::Next,
        SessionSelector::Named(SessionId::new("s-1").unwrap()),
    ] {
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            p.accept_session(&q, selector, Duration::from_secs(1)),
        )
        .await
        .expect("the refusal is not retried");
        let Err(e) = res else {
            panic!("a session was accepted on a queue without sessions");
        };
        assert_unsupported(&e, "queue without sessions");
    }
    // The queue itself is fine for session-less use.
    p.send(&q, Message::new("x")).await.unwrap();
    let got = p
        .receive(&q, ReceiveOptions::new(1, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_without_a_session_on_a_session_queue_is_unsupported() {
    let emu = common::start(vec![(
        "sess".to_owned(),
        QueueConfig::new().with_requires_session(true),
    )])
    .await;
    let p = common::provider(&emu);
    let q = QueueName::new("sess").unwrap();
    let g = SessionId::new("g").unwrap();
    for i in 0..3 {
        p.send(&q, Message::new(format!("m{i}")).with_session_id(g.clone()))
            .await
            .unwrap();
    }
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        p.receive(&q, ReceiveOptions::new(10, Duration::from_secs(1))),
    )
    .await
    .expect("the refusal is not retried");
    let e = match res {
        Ok(msgs) => panic!("a plain receive got {} session messages", msgs.len()),
        Err(e) => e,
    };
    assert_unsupported(&e, "queue that requires sessions");

    // The refused receive holds no session lock: the session is available at once, in order.
    let s = p
        .accept_session(&q, SessionSelector::Next, Duration::from_secs(2))
        .await
        .unwrap()
        .expect("session g is available");
    assert_eq!(s.session_id(), &g);
    let got = s
        .receive(ReceiveOptions::new(3, Duration::from_secs(5)))
        .await
        .unwrap();
    let bodies: Vec<_> = got.iter().map(|m| m.body().clone()).collect();
    assert_eq!(bodies, ["m0", "m1", "m2"].map(bytes_of));
}

fn bytes_of(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}
