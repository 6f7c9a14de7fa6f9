//! Service Bus specific behaviour against the in-process emulator: sessions, lock renewal,
//! lock loss, reconnect after a dropped connection (cut by a TCP relay, and dropped by the
//! emulator itself), SAS refresh and refusal, scheduling.

mod common;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use queue_azure::{ServiceBusBuilder, ServiceBusProvider};
use queue_core::{
    AuthFailure, DeadLetterReason, Message, QueueError, QueueName, QueueProvider, ReceiveOptions,
    SessionId, SessionReceiver, SessionSelector,
};
use servicebus_emulator::{
    Emulator, QueueConfig,
    broker::{EntityRef, SubQueue},
};
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

fn sid(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}

fn lock(secs: u64) -> QueueConfig {
    QueueConfig::new().with_lock_duration(Duration::from_secs(secs))
}

async fn one_queue(name: &str, cfg: QueueConfig) -> (Emulator, ServiceBusProvider) {
    let emu = common::start(vec![(name.to_owned(), cfg)]).await;
    let p = common::provider(&emu);
    (emu, p)
}

/// A queue that requires sessions, with locks of `secs` seconds.
fn sessions(secs: u64) -> QueueConfig {
    lock(secs).with_requires_session(true)
}

/// The main sub-queue of `queue` on the emulator.
fn main_queue(queue: &str) -> EntityRef {
    EntityRef {
        queue: queue.into(),
        sub: SubQueue::Main,
    }
}

/// A provider builder for `emu` with the real key.
fn builder(emu: &Emulator) -> ServiceBusBuilder {
    ServiceBusProvider::builder().with_connection_string(&common::connection_string(emu))
}

/// The connection string for an emulator (or relay) at `addr` signing with `key`.
fn key_connection_string(addr: std::net::SocketAddr, key: &str) -> String {
    format!(
        "Endpoint=sb://{addr};SharedAccessKeyName={};SharedAccessKey={key};UseDevelopmentEmulator=true",
        common::KEY_NAME,
    )
}

/// Sends `m0`, `m1`, ... `m{n-1}` to `queue`.
async fn send_numbered(p: &ServiceBusProvider, queue: &QueueName, n: usize) {
    for i in 0..n {
        p.send(queue, Message::new(format!("m{i}"))).await.unwrap();
    }
}

/// Sends `body` to `queue` in session `s`.
async fn send_in_session(
    p: &ServiceBusProvider,
    queue: &QueueName,
    s: &SessionId,
    body: impl Into<bytes::Bytes>,
) {
    p.send(queue, Message::new(body).with_session_id(s.clone()))
        .await
        .unwrap();
}

/// Accepts session `s` of `queue`, waiting up to `wait` for it.
async fn try_accept_named(
    p: &ServiceBusProvider,
    queue: &QueueName,
    s: &SessionId,
    wait: Duration,
) -> queue_core::Result<Option<Box<dyn SessionReceiver>>> {
    p.accept_session(queue, SessionSelector::Named(s.clone()), wait)
        .await
}

/// Accepts session `s` of `queue`, which must become available within 2 s.
async fn accept_named(
    p: &ServiceBusProvider,
    queue: &QueueName,
    s: &SessionId,
) -> Box<dyn SessionReceiver> {
    try_accept_named(p, queue, s, Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap()
}

fn opts(max: usize, wait_ms: u64) -> ReceiveOptions {
    ReceiveOptions::new(max, Duration::from_millis(wait_ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_available_session_returns_each_session_once_then_none() {
    let (_emu, p) = one_queue("s", sessions(5)).await;
    let queue = q("s");
    for s in ["a", "b"] {
        p.send(&queue, Message::new(s).with_session_id(sid(s)))
            .await
            .unwrap();
    }
    let first = p
        .accept_session(&queue, SessionSelector::Next, Duration::from_secs(2))
        .await
        .unwrap()
        .expect("a session");
    let second = p
        .accept_session(&queue, SessionSelector::Next, Duration::from_secs(2))
        .await
        .unwrap()
        .expect("another session");
    let mut ids = vec![
        first.session_id().as_str().to_owned(),
        second.session_id().as_str().to_owned(),
    ];
    ids.sort();
    assert_eq!(
        ids,
        ["a", "b"],
        "the service-assigned session ids are read back"
    );
    assert!(first.locked_until() > SystemTime::now());
    let started = tokio::time::Instant::now();
    let none = p
        .accept_session(&queue, SessionSelector::Next, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(none.is_none(), "both sessions are locked");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "waited for a session"
    );
    for r in [first, second] {
        let got = r.receive(opts(1, 1000)).await.unwrap();
        assert_eq!(got[0].body().as_ref(), r.session_id().as_str().as_bytes());
        r.complete(&got[0].receipt).await.unwrap();
        r.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_renewal_keeps_a_slow_handlers_message() {
    let (_emu, p) = one_queue("slow", lock(2)).await;
    let queue = q("slow");
    p.send(&queue, Message::new("slow")).await.unwrap();
    let got = p.receive(&queue, opts(1, 2000)).await.unwrap();
    assert_eq!(got.len(), 1);
    let first_until = got[0].locked_until.expect("locked-until is reported");
    // A handler that takes 5 s (2.5 locks), renewing every second.
    let mut last = first_until;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = p.renew_lock(&got[0].receipt).await.unwrap();
        // Meanwhile nobody else gets the message.
        assert!(p.receive(&queue, opts(1, 10)).await.unwrap().is_empty());
    }
    assert!(last > first_until, "renewal moves the expiry");
    p.complete(&got[0].receipt).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        p.receive(&queue, opts(1, 300)).await.unwrap().is_empty(),
        "the completed message came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lock_lost_is_typed() {
    let (_emu, p) = one_queue("sl", sessions(1)).await;
    let queue = q("sl");
    let s = sid("octo/repo#9");
    send_in_session(&p, &queue, &s, "x").await;
    let r = accept_named(&p, &queue, &s).await;
    let got = r.receive(opts(1, 1000)).await.unwrap();
    assert_eq!(got.len(), 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // Someone else takes the session.
    let thief = accept_named(&p, &queue, &s).await;
    for err in [
        r.receive(opts(1, 100)).await.unwrap_err(),
        r.complete(&got[0].receipt).await.unwrap_err(),
    ] {
        assert!(
            matches!(&err, QueueError::SessionLockLost { session, .. } if *session == s),
            "{err}"
        );
    }
    // The emulator answers com.microsoft:session-lock-lost, as Service Bus does.
    let err = r.renew_session_lock().await.unwrap_err();
    assert!(
        matches!(&err, QueueError::SessionLockLost { session, .. } if *session == s),
        "{err}"
    );
    // While the thief holds it, a named accept is refused as locked.
    let err = try_accept_named(&p, &queue, &s, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::SessionLocked { .. }), "{err}");
    let again = thief.receive(opts(1, 1000)).await.unwrap();
    assert_eq!(again[0].delivery_count, 2);
    thief.complete(&again[0].receipt).await.unwrap();
    thief.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_and_dead_letter_from_a_session() {
    let (_emu, p) = one_queue("st", sessions(5)).await;
    let queue = q("st");
    let s = sid("s1");
    send_in_session(&p, &queue, &s, "bad").await;
    let r = accept_named(&p, &queue, &s).await;
    assert_eq!(r.get_state().await.unwrap(), None);
    r.set_state(Some("cursor=7".into())).await.unwrap();
    assert_eq!(
        r.get_state().await.unwrap().as_deref(),
        Some(&b"cursor=7"[..])
    );
    let got = r.receive(opts(1, 1000)).await.unwrap();
    r.dead_letter(
        &got[0].receipt,
        DeadLetterReason::new("Poison", "cannot parse"),
    )
    .await
    .unwrap();
    r.set_state(None).await.unwrap();
    assert_eq!(r.get_state().await.unwrap(), None);
    r.close().await.unwrap();
    let dead = p.receive_dead_letters(&queue, opts(1, 2000)).await.unwrap();
    assert_eq!(dead.len(), 1);
    let why = dead[0].dead_letter.clone().expect("reason");
    assert_eq!(
        (why.reason.as_str(), why.description.as_str()),
        ("Poison", "cannot parse")
    );
    assert_eq!(dead[0].session_id(), Some(&s));
    p.complete(&dead[0].receipt).await.unwrap();
}

/// A TCP relay between the provider and the emulator whose live connections can be cut,
/// standing in for a network failure.
struct Relay {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(target).await {
                        let _ = copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            conns,
            accept,
        }
    }

    /// Drops every relayed connection at once, mid-stream, without an AMQP close.
    fn cut(&self) {
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Receives and completes the `n` messages waiting in `queue`, calling `cut` twice while
/// holding unsettled messages. Fails if a message whose completion returned `Ok` is ever
/// delivered again, if a settlement fails with anything but a transient or lock-lost error,
/// or if anything is left on the broker at the end. A completion that failed may still
/// have been applied (the broker's answer was lost with the connection); such a message is
/// simply never delivered again.
async fn complete_all_across_cuts(
    emu: &Emulator,
    p: &ServiceBusProvider,
    queue: &QueueName,
    n: usize,
    cut: impl Fn(),
) {
    let main = main_queue(queue.as_str());
    let mut completed = BTreeSet::new();
    let mut unconfirmed = BTreeSet::new();
    let mut cuts = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline
        && (completed.union(&unconfirmed).count() < n || emu.broker().count(&main) > 0)
    {
        match p.receive(queue, opts(5, 500)).await {
            Ok(batch) => {
                for (k, m) in batch.iter().enumerate() {
                    let body = String::from_utf8_lossy(m.body()).into_owned();
                    assert!(
                        !completed.contains(&body),
                        "{body} was reported completed and then delivered again \
                         (delivery count {})",
                        m.delivery_count
                    );
                    // Cut twice while holding unsettled messages.
                    if k == 1 && cuts < 2 && completed.len() >= 10 * (cuts + 1) {
                        cut();
                        cuts += 1;
                    }
                    match p.complete(&m.receipt).await {
                        Ok(()) => {
                            unconfirmed.remove(&body);
                            completed.insert(body);
                        }
                        Err(e) => {
                            assert!(
                                e.is_transient() || matches!(e, QueueError::LockLost { .. }),
                                "{e}"
                            );
                            unconfirmed.insert(body);
                        }
                    }
                }
            }
            Err(e) => assert!(e.is_transient(), "receive failed permanently: {e}"),
        }
    }
    assert_eq!(cuts, 2, "the connection was cut mid-stream");
    assert_eq!(
        completed.union(&unconfirmed).count(),
        n,
        "messages were lost across reconnects"
    );
    assert_eq!(emu.broker().count(&main), 0, "messages were left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_connection_drops_mid_stream_and_loses_nothing() {
    const N: usize = 60;
    let emu = common::start(vec![("r".to_owned(), lock(2))]).await;
    let relay = Relay::start(emu.local_addr()).await;
    let p = ServiceBusProvider::builder()
        .with_connection_string(&key_connection_string(relay.addr, common::KEY))
        .with_reconnect_backoff(Duration::from_millis(50))
        .build()
        .unwrap();
    let queue = q("r");
    send_numbered(&p, &queue, N).await;
    complete_all_across_cuts(&emu, &p, &queue, N, || relay.cut()).await;
    assert!(p.connections_opened() >= 3, "reconnected after each cut");
    // Sending works on the new connection too.
    p.send(&queue, Message::new("after")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_emulator_drops_every_connection_and_loses_nothing() {
    const N: usize = 40;
    let emu = common::start(vec![
        ("cut".to_owned(), lock(2)),
        ("cuts".to_owned(), sessions(2)),
    ])
    .await;
    let p = builder(&emu)
        .with_reconnect_backoff(Duration::from_millis(50))
        .with_operation_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let queue = q("cut");
    send_numbered(&p, &queue, N).await;
    complete_all_across_cuts(&emu, &p, &queue, N, || emu.drop_connections()).await;
    assert!(p.connections_opened() >= 3, "reconnected after each drop");
    p.send(&queue, Message::new("after")).await.unwrap();

    // A session held across the drop stays locked until its lock expires, then comes back
    // with its unsettled messages, in order.
    let squeue = q("cuts");
    let s = sid("octo/repo#1");
    for i in 0..4 {
        send_in_session(&p, &squeue, &s, format!("s{i}")).await;
    }
    let r = accept_named(&p, &squeue, &s).await;
    let first = r.receive(opts(2, 1000)).await.unwrap();
    assert_eq!(first.len(), 2);
    r.complete(&first[0].receipt).await.unwrap();
    // `complete` returns once the broker has applied it: drop the connections while `s1`
    // is still locked and unsettled.
    let main = main_queue("cuts");
    assert_eq!(
        emu.broker().count(&main),
        3,
        "the completion was not applied"
    );
    emu.drop_connections();
    let err = try_accept_named(&p, &squeue, &s, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::SessionLocked { .. }), "{err}");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let again = accept_named(&p, &squeue, &s).await;
    let mut rest = Vec::new();
    while rest.len() < 3 {
        let got = again.receive(opts(3, 1000)).await.unwrap();
        assert!(!got.is_empty(), "session messages went missing");
        for m in got {
            rest.push(String::from_utf8_lossy(m.body()).into_owned());
            again.complete(&m.receipt).await.unwrap();
        }
    }
    assert_eq!(rest, ["s1", "s2", "s3"]);
    again.close().await.unwrap();
}

/// Runs `complete` and, after `yields` scheduler turns, drops every connection.
async fn complete_racing_a_drop(
    emu: &Emulator,
    complete: impl std::future::Future<Output = Result<(), QueueError>>,
    yields: usize,
) -> Result<(), QueueError> {
    let (res, ()) = tokio::join!(complete, async {
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        emu.drop_connections();
    });
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_racing_a_dropped_connection_is_never_reported_falsely() {
    const N: usize = 12;
    const SESSIONS: usize = 4;
    let emu = common::start(vec![
        ("race".to_owned(), lock(1)),
        ("races".to_owned(), sessions(1)),
    ])
    .await;
    let p = builder(&emu)
        .with_reconnect_backoff(Duration::from_millis(20))
        .with_operation_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let body = |m: &queue_core::ReceivedMessage| String::from_utf8_lossy(m.body()).into_owned();
    let mut ok = BTreeSet::new();
    let mut failed = BTreeSet::new();

    // Plain queue: every completion races a drop; an `Ok` must never come back.
    let queue = q("race");
    send_numbered(&p, &queue, N).await;
    let main = main_queue("race");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut round = 0;
    while emu.broker().count(&main) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never drained"
        );
        let batch = match p.receive(&queue, opts(1, 1500)).await {
            Ok(b) => b,
            Err(e) => {
                assert!(e.is_transient(), "receive failed permanently: {e}");
                continue;
            }
        };
        for m in batch {
            let b = body(&m);
            assert!(
                !ok.contains(&b),
                "{b} was reported completed and then delivered again"
            );
            // Race the first rounds against a drop, then settle the rest undisturbed.
            let res = if round < N {
                complete_racing_a_drop(&emu, p.complete(&m.receipt), round % 6).await
            } else {
                p.complete(&m.receipt).await
            };
            round += 1;
            match res {
                Ok(()) => {
                    failed.remove(&b);
                    ok.insert(b);
                }
                Err(e) => {
                    assert!(
                        e.is_transient() || matches!(e, QueueError::LockLost { .. }),
                        "{e}"
                    );
                    failed.insert(b);
                }
            }
        }
    }
    // Every message was completed; the ones that only failed were applied by the broker
    // before the connection went (they are gone and were never delivered again).
    assert_eq!(ok.len() + failed.len(), N);

    // Session queue: the same race through a session receiver.
    let squeue = q("races");
    for i in 0..SESSIONS {
        p.send(
            &squeue,
            Message::new(format!("s{i}")).with_session_id(sid(&format!("octo/repo#{i}"))),
        )
        .await
        .unwrap();
    }
    let mut sok = BTreeSet::new();
    for i in 0..SESSIONS {
        let s = sid(&format!("octo/repo#{i}"));
        let r = loop {
            match try_accept_named(&p, &squeue, &s, Duration::from_secs(2)).await {
                Ok(Some(r)) => break r,
                Ok(None) => panic!("session {i} not available"),
                Err(e) => assert!(e.is_transient(), "accept failed permanently: {e}"),
            }
        };
        let got = r.receive(opts(1, 2000)).await.unwrap();
        assert_eq!(got.len(), 1);
        match complete_racing_a_drop(&emu, r.complete(&got[0].receipt), i).await {
            Ok(()) => {
                sok.insert(body(&got[0]));
            }
            Err(e) => assert!(
                e.is_transient()
                    || matches!(
                        e,
                        QueueError::LockLost { .. } | QueueError::SessionLockLost { .. }
                    ),
                "{e}"
            ),
        }
    }
    // Once the session locks held by the dropped connections expire, whatever was not
    // completed comes back; nothing reported completed may.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let smain = main_queue("races");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while emu.broker().count(&smain) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions never drained"
        );
        let r = match p
            .accept_session(&squeue, SessionSelector::Next, Duration::from_secs(1))
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                assert!(
                    e.is_transient() || matches!(e, QueueError::SessionLocked { .. }),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for m in r.receive(opts(1, 1000)).await.unwrap() {
            let b = body(&m);
            assert!(
                !sok.contains(&b),
                "{b} was reported completed and then delivered again"
            );
            r.complete(&m.receipt).await.unwrap();
        }
        r.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_tokens_are_refreshed_before_they_expire() {
    let emu = common::start(vec![("t".to_owned(), lock(5))]).await;
    let p = builder(&emu)
        .with_sas_token_ttl(Duration::from_secs(3))
        .build()
        .unwrap();
    let queue = q("t");
    p.check_access(&queue).await.unwrap();
    let initial = p.token_puts();
    assert!(initial >= 1);
    // Keep working for more than two token lifetimes. The emulator refuses expired tokens
    // on put-token, so every refresh had to carry a fresh, valid signature.
    for i in 0..7 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        p.send(&queue, Message::new(format!("{i}"))).await.unwrap();
    }
    let got = p.receive(&queue, opts(7, 2000)).await.unwrap();
    assert!(!got.is_empty());
    assert!(
        p.token_puts() >= initial + 2,
        "tokens were not refreshed: {} puts",
        p.token_puts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_rejected_without_leaking_it() {
    const WRONG: &str = "CANARY-wrong-key-41d9";
    let emu = common::start(vec![("w".to_owned(), lock(5))]).await;
    let p = ServiceBusProvider::builder()
        .with_connection_string(&key_connection_string(emu.local_addr(), WRONG))
        .build()
        .unwrap();
    let queue = q("w");
    for err in [
        p.check_access(&queue).await.unwrap_err(),
        p.send(&queue, Message::new("x")).await.unwrap_err(),
        p.receive(&queue, opts(1, 100)).await.unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                QueueError::Auth {
                    kind: AuthFailure::Authentication,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.is_transient());
        assert!(!format!("{err} {err:?}").contains(WRONG));
    }
    assert!(!format!("{p:?}").contains(WRONG));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_access_finds_missing_queues() {
    let (_emu, p) = one_queue("present", lock(5)).await;
    p.check_access(&q("present")).await.unwrap();
    // Refused attaches must not disturb later links (each link has its own AMQP session).
    for i in 0..5 {
        let absent = q(&format!("absent-{i}"));
        for err in [
            p.send(&absent, Message::new("x")).await.unwrap_err(),
            p.receive(&absent, opts(1, 100)).await.unwrap_err(),
            p.check_access(&absent).await.unwrap_err(),
        ] {
            assert!(matches!(err, QueueError::QueueNotFound { .. }), "{err}");
        }
    }
    p.check_access(&q("present")).await.unwrap();
    p.send(&q("present"), Message::new("still fine"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_can_be_cancelled() {
    let (_emu, p) = one_queue("sch", lock(5)).await;
    let queue = q("sch");
    let at = SystemTime::now() + Duration::from_secs(2);
    let seqs = p
        .schedule(
            &queue,
            vec![
                Message::new("cancel-me").with_scheduled_enqueue_time(at),
                Message::new("keep-me").with_scheduled_enqueue_time(at),
            ],
        )
        .await
        .unwrap();
    assert_eq!(seqs.len(), 2);
    p.cancel_scheduled(&queue, &seqs[..1]).await.unwrap();
    assert!(
        p.receive(&queue, opts(2, 500)).await.unwrap().is_empty(),
        "delivered early"
    );
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < deadline {
        got.extend(p.receive(&queue, opts(2, 500)).await.unwrap());
    }
    let bodies: Vec<_> = got.iter().map(|m| m.body().clone()).collect();
    assert_eq!(bodies, [bytes::Bytes::from_static(b"keep-me")]);
    assert!(
        p.schedule(&queue, vec![Message::new("no time")])
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_property_survives_a_round_trip() {
    let (_emu, p) = one_queue("props", lock(5)).await;
    let queue = q("props");
    let msg = Message::new(vec![0u8, 159, 146, 150])
        .with_content_type("application/octet-stream")
        .with_correlation_id("corr-1")
        .with_message_id(queue_core::MessageId::new("id-1").unwrap())
        .with_attribute("event", "push")
        .with_attribute("delivery", "abc")
        .with_time_to_live(Duration::from_secs(600));
    let before = SystemTime::now() - Duration::from_secs(1);
    p.send(&queue, msg.clone()).await.unwrap();
    let got = p.receive(&queue, opts(1, 2000)).await.unwrap();
    let m = &got[0];
    assert_eq!(m.message.body, msg.body);
    assert_eq!(m.message.content_type, msg.content_type);
    assert_eq!(m.message.correlation_id, msg.correlation_id);
    assert_eq!(m.message_id.as_str(), "id-1");
    assert_eq!(m.message.attributes, msg.attributes);
    assert_eq!(m.message.time_to_live, msg.time_to_live);
    assert_eq!(m.delivery_count, 1);
    assert!(m.sequence_number.is_some());
    assert!(m.enqueued_at >= before);
    assert!(m.locked_until.unwrap() > SystemTime::now());
    p.complete(&m.receipt).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_redriven() {
    let (_emu, p) = one_queue("rd", lock(5)).await;
    let queue = q("rd");
    for i in 0..3 {
        p.send(
            &queue,
            Message::new(format!("{i}")).with_attribute("k", "v"),
        )
        .await
        .unwrap();
    }
    let got = p.receive(&queue, opts(3, 2000)).await.unwrap();
    assert_eq!(got.len(), 3);
    for m in &got {
        p.dead_letter(&m.receipt, DeadLetterReason::new("Bad", "test"))
            .await
            .unwrap();
    }
    let options = queue_core::RedriveOptions::new()
        .with_max_messages(10)
        .with_wait(Duration::from_millis(500));
    let report = queue_core::QueueProviderExt::redrive(&p, &queue, options)
        .await
        .unwrap();
    assert_eq!(report.moved, 3);
    assert!(
        p.receive_dead_letters(&queue, opts(3, 300))
            .await
            .unwrap()
            .is_empty()
    );
    let mut back = p.receive(&queue, opts(3, 2000)).await.unwrap();
    back.sort_by(|a, b| a.body().cmp(b.body()));
    assert_eq!(back.len(), 3);
    for (i, m) in back.iter().enumerate() {
        assert_eq!(m.body().as_ref(), format!("{i}").as_bytes());
        assert!(m.dead_letter.is_none());
        assert_eq!(m.message.attributes.get("k").map(String::as_str), Some("v"));
        p.complete(&m.receipt).await.unwrap();
    }
}

#[derive(Debug, Default)]
struct FakeEntra {
    calls: std::sync::atomic::AtomicU32,
    fail: bool,
}

#[async_trait::async_trait]
impl queue_azure::TokenCredential for FakeEntra {
    async fn get_token(&self, scopes: &[&str]) -> queue_core::Result<queue_azure::AccessToken> {
        assert_eq!(scopes, [queue_azure::SERVICE_BUS_SCOPE]);
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.fail {
            return Err(QueueError::Auth {
                provider: "fake",
                operation: "get_token",
                kind: AuthFailure::Authentication,
                detail: "no identity".into(),
            });
        }
        Ok(queue_azure::AccessToken::new(
            queue_core::SecretString::from("eyJ-CANARY-jwt"),
            SystemTime::now() + Duration::from_secs(3600),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_credentials_put_bearer_tokens_on_cbs() {
    // The emulator accepts opaque bearer tokens only when it has no key.
    let emu = Emulator::start(
        servicebus_emulator::EmulatorConfig::new().with_queue("e", lock(5)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let cred = Arc::new(FakeEntra::default());
    let p = ServiceBusProvider::builder()
        .with_connection_string(&emu.connection_string(false))
        .with_token_credential(cred.clone())
        .build()
        .unwrap();
    let queue = q("e");
    p.check_access(&queue).await.unwrap();
    p.send(&queue, Message::new("hi")).await.unwrap();
    let got = p.receive(&queue, opts(1, 2000)).await.unwrap();
    p.complete(&got[0].receipt).await.unwrap();
    assert!(cred.calls.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(!format!("{p:?}").contains("CANARY"));

    let failing = ServiceBusProvider::builder()
        .with_connection_string(&emu.connection_string(false))
        .with_token_credential(Arc::new(FakeEntra {
            fail: true,
            ..Default::default()
        }))
        .build()
        .unwrap();
    let err = failing.check_access(&queue).await.unwrap_err();
    assert!(matches!(err, QueueError::Auth { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_access_signature_connection_strings_work_until_expiry() {
    use base64::Engine as _;
    let emu = common::start(vec![("sas".to_owned(), lock(5))]).await;
    let host = emu.local_addr();
    let make = |expiry: u64| {
        let sr = percent_encoding::utf8_percent_encode(
            &format!("sb://{host}/sas"),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, common::KEY.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&key, format!("{sr}\n{expiry}").as_bytes()).as_ref());
        let sig = percent_encoding::utf8_percent_encode(&sig, percent_encoding::NON_ALPHANUMERIC);
        format!(
            "Endpoint=sb://{host};SharedAccessSignature=SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={};UseDevelopmentEmulator=true",
            common::KEY_NAME
        )
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = ServiceBusProvider::builder()
        .with_connection_string(&make(now + 600))
        .build()
        .unwrap();
    good.send(&q("sas"), Message::new("signed elsewhere"))
        .await
        .unwrap();
    let expired = ServiceBusProvider::builder()
        .with_connection_string(&make(now - 10))
        .build()
        .unwrap();
    let err = expired
        .send(&q("sas"), Message::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Auth { .. }), "{err}");
}
