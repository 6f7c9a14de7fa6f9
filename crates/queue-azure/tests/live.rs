//! Against a real Service Bus namespace, only when configured:
//! `QUEUE_TEST_SERVICEBUS_CONNECTION_STRING` (a SAS connection string) and
//! `QUEUE_TEST_SERVICEBUS_QUEUE` (an existing queue, without sessions), plus optionally
//! `QUEUE_TEST_SERVICEBUS_SESSION_QUEUE` (an existing session queue). Unset: the test says
//! so and passes, also in CI (CI has no cloud namespace). The round trip runs twice: over
//! AMQP with TLS on port 5671, and over AMQP over WebSockets (TLS, port 443), with the
//! public web PKI roots and host-name validation, exactly as in production.

use std::time::Duration;

use queue_azure::{ServiceBusProvider, Transport};
use queue_core::{Message, QueueName, QueueProvider, ReceiveOptions, SessionId, SessionSelector};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_namespace_round_trip() {
    let (Some(conn), Some(queue)) = (
        var("QUEUE_TEST_SERVICEBUS_CONNECTION_STRING"),
        var("QUEUE_TEST_SERVICEBUS_QUEUE"),
    ) else {
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "skipping live Service Bus test: set QUEUE_TEST_SERVICEBUS_CONNECTION_STRING and \
                 QUEUE_TEST_SERVICEBUS_QUEUE to run it"
            );
        }
        return;
    };
    for transport in [Transport::Amqp, Transport::AmqpWebSockets] {
        let p = ServiceBusProvider::builder()
            .with_connection_string(&conn)
            .with_transport(transport)
            .build()
            .expect("connection string");
        round_trip(&p, &queue).await;
        p.close().await;
    }
}

async fn round_trip(p: &ServiceBusProvider, queue: &str) {
    let queue = QueueName::new(queue).unwrap();
    p.check_access(&queue).await.expect("check_access");
    let marker = format!("live-{}", uuid::Uuid::new_v4());
    p.send(&queue, Message::new(marker.clone())).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut found = false;
    while !found && tokio::time::Instant::now() < deadline {
        for m in p
            .receive(&queue, ReceiveOptions::new(10, Duration::from_secs(5)))
            .await
            .unwrap()
        {
            if m.body().as_ref() == marker.as_bytes() {
                found = true;
                p.renew_lock(&m.receipt).await.unwrap();
                p.complete(&m.receipt).await.unwrap();
            } else {
                p.abandon(&m.receipt, None).await.unwrap();
            }
        }
    }
    assert!(found, "the sent message did not come back");

    if let Some(sq) = var("QUEUE_TEST_SERVICEBUS_SESSION_QUEUE") {
        let sq = QueueName::new(&sq).unwrap();
        let sid = SessionId::new(format!("live-{}", uuid::Uuid::new_v4())).unwrap();
        for i in 0..3 {
            p.send(
                &sq,
                Message::new(format!("{i}")).with_session_id(sid.clone()),
            )
            .await
            .unwrap();
        }
        let r = p
            .accept_session(
                &sq,
                SessionSelector::Named(sid.clone()),
                Duration::from_secs(10),
            )
            .await
            .unwrap()
            .unwrap();
        let mut bodies = Vec::new();
        while bodies.len() < 3 {
            let got = r
                .receive(ReceiveOptions::new(3, Duration::from_secs(10)))
                .await
                .unwrap();
            assert!(!got.is_empty());
            for m in got {
                bodies.push(String::from_utf8_lossy(m.body()).into_owned());
                r.complete(&m.receipt).await.unwrap();
            }
        }
        assert_eq!(bodies, ["0", "1", "2"]);
        r.set_state(Some("done".into())).await.unwrap();
        r.set_state(None).await.unwrap();
        r.close().await.unwrap();
    }
}
