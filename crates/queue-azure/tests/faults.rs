//! Every call is bounded and every outage is visible: the emulator stopped, restarted and
//! dropping connections, a broker that accepts TCP and never answers, and the log lines an
//! outage leaves (lost, reconnecting, restored: once each).

mod common;

use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use queue_azure::ServiceBusProvider;
use queue_core::{Message, QueueError, QueueName, QueueProvider, ReceiveOptions, SessionSelector};
use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};
use tokio::{net::TcpListener, time::Instant};

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

async fn start_at(addr: SocketAddr, queues: &[&str]) -> Emulator {
    let mut cfg = EmulatorConfig::new().with_key(common::KEY_NAME, common::KEY);
    for name in queues {
        cfg = cfg.with_queue(*name, QueueConfig::new());
    }
    // The port of a stopped emulator can take a moment to be free again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Emulator::start(cfg.clone(), addr).await {
            Ok(e) => return e,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("emulator restarts on {addr}: {e}"),
        }
    }
}

fn provider_for(addr: SocketAddr, timeout: Duration, max_backoff: Duration) -> ServiceBusProvider {
    ServiceBusProvider::builder()
        .with_connection_string(&format!(
            "Endpoint=sb://{addr};SharedAccessKeyName={};SharedAccessKey={};UseDevelopmentEmulator=true",
            common::KEY_NAME,
            common::KEY
        ))
        .with_operation_timeout(timeout)
        .with_reconnect_backoff(Duration::from_millis(50))
        .with_max_reconnect_backoff(max_backoff)
        .build()
        .unwrap()
}

fn assert_transient_outage(e: &QueueError) {
    assert!(
        matches!(
            e,
            QueueError::Connection { .. } | QueueError::Timeout { .. }
        ),
        "expected a Connection or Timeout error, got {e:?}"
    );
    assert!(e.is_transient(), "{e:?}");
}

/// A free loopback address with nothing listening on it.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_every_call_fails_fast_with_a_transient_error() {
    let addr = dead_addr().await;
    let p = provider_for(addr, Duration::from_secs(60), Duration::from_secs(5));
    let queue = q("down");
    let started = Instant::now();
    // Sends are retried (three attempts), each waiting for the next connect attempt.
    let e = p.send(&queue, Message::new("x")).await.unwrap_err();
    assert_transient_outage(&e);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let e = p.check_access(&queue).await.unwrap_err();
    assert_transient_outage(&e);
    let e = p
        .receive(&queue, ReceiveOptions::new(1, Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert_transient_outage(&e);
    let e = p
        .accept_session(&queue, SessionSelector::Next, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_transient_outage(&e);
    // Refused connections are reported as soon as an attempt fails, far inside the 60 s
    // operation timeout (a waiting call waits at most one backoff step, here 5 s).
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    let cause = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("tcp connect")),
        "names the cause: {e} / {cause:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_do_not_queue_behind_a_reconnect() {
    let addr = dead_addr().await;
    let p = provider_for(addr, Duration::from_secs(2), Duration::from_millis(400));
    let queue = q("down");
    // Let the backoff reach its cap.
    for _ in 0..4 {
        let _ = p.send(&queue, Message::new("x")).await;
    }
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let p = p.clone();
            let queue = queue.clone();
            tokio::spawn(async move { p.check_access(&queue).await })
        })
        .collect();
    for c in calls {
        let e = c.await.unwrap().unwrap_err();
        assert_transient_outage(&e);
    }
    // Each waits for the next attempt (one capped backoff step, 400 ms), not for the
    // other callers in turn.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

/// A "broker" that accepts TCP connections and never says a word.
async fn silent_broker() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_fails_calls_at_the_operation_timeout() {
    let (addr, task) = silent_broker().await;
    let timeout = Duration::from_millis(800);
    let p = provider_for(addr, timeout, Duration::from_millis(200));
    let queue = q("silent");
    for _ in 0..3 {
        let started = Instant::now();
        let e = p.send(&queue, Message::new("x")).await.unwrap_err();
        assert_transient_outage(&e);
        let took = started.elapsed();
        assert!(took <= timeout + Duration::from_millis(300), "{took:?}");
    }
    let started = Instant::now();
    let e = p.check_access(&queue).await.unwrap_err();
    assert_transient_outage(&e);
    assert!(started.elapsed() <= timeout + Duration::from_millis(300));
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn the_default_operation_timeout_is_60_seconds_on_a_silent_broker() {
    let (addr, task) = silent_broker().await;
    let p = ServiceBusProvider::builder()
        .with_connection_string(&format!(
            "Endpoint=sb://{addr};SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true"
        ))
        .build()
        .unwrap();
    let started = Instant::now();
    let e = p.send(&q("silent"), Message::new("x")).await.unwrap_err();
    assert_transient_outage(&e);
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(61), "{took:?}");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_the_broker_returns_succeeds_within_one_backoff_step() {
    let emu = start_at("127.0.0.1:0".parse().unwrap(), &["back"]).await;
    let addr = emu.local_addr();
    let max_backoff = Duration::from_millis(500);
    let p = provider_for(addr, Duration::from_secs(10), max_backoff);
    let queue = q("back");
    p.send(&queue, Message::new("before")).await.unwrap();
    drop(emu);
    // Dropping the emulator only signals its tasks to stop: a send right after it can
    // still be served. The outage starts with the first send that fails.
    let down = Instant::now() + Duration::from_secs(5);
    while p.send(&queue, Message::new("x")).await.is_ok() {
        assert!(Instant::now() < down, "the stopped emulator still answers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A long enough outage for the backoff to reach its cap.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(2) {
        let e = p.send(&queue, Message::new("x")).await.unwrap_err();
        assert_transient_outage(&e);
    }
    let emu = start_at(addr, &["back"]).await;
    let back = Instant::now();
    p.send(&queue, Message::new("after")).await.unwrap();
    let took = back.elapsed();
    assert!(
        took < max_backoff + Duration::from_millis(700),
        "first call after the return took {took:?}"
    );
    let got = p
        .receive(&queue, ReceiveOptions::new(5, Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body().as_ref(), b"after");
    p.complete(&got[0].receipt).await.unwrap();
    drop(emu);
}

/// Log lines written by the code under test, for the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

// A current-thread runtime: every task (the emulator's and the provider's background
// tasks) runs on this thread, under the capturing subscriber.
#[tokio::test(flavor = "current_thread")]
async fn an_outage_is_logged_once_lost_reconnecting_restored_with_its_cause() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let emu = start_at("127.0.0.1:0".parse().unwrap(), &["logs"]).await;
    let p = provider_for(
        emu.local_addr(),
        Duration::from_secs(10),
        Duration::from_secs(1),
    );
    let queue = q("logs");
    p.send(&queue, Message::new("a")).await.unwrap();
    let got = p
        .receive(&queue, ReceiveOptions::new(1, Duration::from_secs(2)))
        .await
        .unwrap();
    emu.drop_connections();
    // Several calls notice the loss; it is still one outage.
    for _ in 0..4 {
        let _ = p.complete(&got[0].receipt).await;
        let _ = p.send(&queue, Message::new("b")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while logs.count("connection restored") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = logs.text();
    assert_eq!(logs.count("Service Bus connection lost"), 1, "{text}");
    assert_eq!(logs.count("reconnecting to Service Bus"), 1, "{text}");
    assert_eq!(logs.count("Service Bus connection restored"), 1, "{text}");
    let lost = text
        .lines()
        .find(|l| l.contains("connection lost"))
        .unwrap();
    assert!(lost.contains("WARN"), "{lost}");
    assert!(lost.contains("cause="), "names the cause: {lost}");
    assert!(
        !text.to_lowercase().contains("lock"),
        "no lock was lost: {text}"
    );
    assert!(!text.contains(common::KEY), "no secret in the logs");
    p.send(&queue, Message::new("c")).await.unwrap();
}

/// Waits until `done` holds, for at most `within`; returns whether it does.
async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

// `drop_connections` only signals the emulator's connection tasks; a send issued right
// after it races the cut (under CPU load its transfer can reach the old connection first,
// and then the reconnect follows in the background after the send returned). So the test
// waits for each reconnect with a deadline instead of counting at a fixed moment, and
// runs on one thread, where the woken connection task runs before the send's transfer is
// written: the cut always comes first, so every send really fails once and is retried.
#[tokio::test(flavor = "current_thread")]
async fn a_send_is_retried_over_a_dropped_connection_with_the_same_message_id() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let retried = || logs.count("send failed; retrying with the same message id");

    let emu = start_at("127.0.0.1:0".parse().unwrap(), &[]).await;
    emu.create_queue(
        "retry",
        QueueConfig::new().with_duplicate_detection(Duration::from_secs(60)),
    )
    .unwrap();
    let p = provider_for(
        emu.local_addr(),
        Duration::from_secs(10),
        Duration::from_secs(1),
    );
    let queue = q("retry");
    p.send(&queue, Message::new("warm-up")).await.unwrap();
    assert_eq!(p.connections_opened(), 1);
    for i in 0..3 {
        emu.drop_connections();
        let id = queue_core::MessageId::new(format!("m{i}")).unwrap();
        let sent = p
            .send(
                &queue,
                Message::new(format!("after-drop-{i}")).with_message_id(id.clone()),
            )
            .await
            .expect("the send rides over the dropped connection");
        assert_eq!(sent, id);
        assert!(retried() > i, "send {i} was retried: {}", logs.text());
        // One reconnect per drop, done before the next drop (which must hit a connection).
        let want = u64::try_from(i).unwrap() + 2;
        assert!(
            eventually(Duration::from_secs(10), || p.connections_opened() >= want).await,
            "reconnect after drop {i}: {} connections",
            p.connections_opened()
        );
    }
    let mut bodies = Vec::new();
    loop {
        let got = p
            .receive(&queue, ReceiveOptions::new(10, Duration::from_millis(500)))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for m in got {
            bodies.push(String::from_utf8_lossy(m.body()).into_owned());
            p.complete(&m.receipt).await.unwrap();
        }
    }
    assert_eq!(
        bodies,
        ["warm-up", "after-drop-0", "after-drop-1", "after-drop-2"]
    );
    assert_eq!(p.connections_opened(), 4, "one reconnect per drop");
}
