//! Test doubles and helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use queue_memory::InMemoryProvider;
use queue_runtime::CancellationToken;
use queue_runtime::DynQueueProvider;
use queue_runtime::{
    Message, Processor, QueueError, QueueName, QueueProvider, QueueSpec, Receipt, ReceiveOptions,
    ReceivedMessage, Result, SessionId, SessionReceiver, SessionSelector, SharedQueueProvider,
    ShutdownReport,
};
use tokio::time::Instant;

/// A current-thread runtime with a paused clock.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A memory provider with `queue` created from `spec`.
pub async fn memory(
    queue: &str,
    spec: QueueSpec,
) -> (InMemoryProvider, SharedQueueProvider, QueueName) {
    let provider = InMemoryProvider::new();
    let queue = QueueName::new(queue).unwrap();
    provider.create_queue(&queue, &spec).await.unwrap();
    let shared: SharedQueueProvider = Arc::new(provider.clone());
    (provider, shared, queue)
}

/// An SQS FIFO queue on the memory provider's `sqs` profile (`SessionSupport::Grouped`:
/// message groups through the plain receive, a group blocked while one of its messages is in
/// flight, receives counted and redriven to the dead-letter queue at `max_receives`), with
/// `queue` created with a visibility timeout of `lock`.
pub async fn sqs_fifo(
    queue: &str,
    lock: Duration,
    max_receives: u32,
) -> (InMemoryProvider, SharedQueueProvider, QueueName) {
    let provider = InMemoryProvider::builder()
        .with_profile(queue_memory::Profile::Sqs)
        .build()
        .unwrap();
    let queue = QueueName::new(queue).unwrap();
    let spec = QueueSpec::default()
        .with_lock_duration(lock)
        .with_max_delivery_count(max_receives);
    provider.create_queue(&queue, &spec).await.unwrap();
    let shared: SharedQueueProvider = Arc::new(provider.clone());
    (provider, shared, queue)
}

/// Polls `cond` every 100 ms of (virtual) time until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond()
}

/// Spawns `fut` and returns its handle (helper to keep tests short).
pub fn spawn<F: Future + Send + 'static>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F::Output: Send + 'static,
{
    tokio::spawn(fut)
}

/// A processor running in a task, with the token that shuts it down.
pub struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<ShutdownReport>>,
}

/// Spawns `processor.run(..)` with a fresh shutdown token.
pub fn start(processor: Processor) -> Running {
    let shutdown = CancellationToken::new();
    let task = spawn(processor.run(shutdown.clone()));
    Running { shutdown, task }
}

impl Running {
    /// Cancels the processor and returns its shutdown report.
    pub async fn stop(self) -> ShutdownReport {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap()
    }

    /// Waits (asserted, polling for at most `limit`) until `done` holds, then [`Self::stop`]s.
    pub async fn stop_when(self, limit: Duration, done: impl FnMut() -> bool) -> ShutdownReport {
        assert!(
            wait_until(limit, done).await,
            "the condition did not hold within {limit:?}"
        );
        self.stop().await
    }
}

/// Runs `processor` until `done` holds (asserted, within `limit`) and returns its report.
pub async fn run_until(
    processor: Processor,
    limit: Duration,
    done: impl FnMut() -> bool,
) -> ShutdownReport {
    start(processor).stop_when(limit, done).await
}

/// [`run_until`] the memory queue `queue` holds no messages.
pub async fn run_until_drained(
    processor: Processor,
    mem: &InMemoryProvider,
    queue: &QueueName,
    limit: Duration,
) -> ShutdownReport {
    run_until(processor, limit, || mem.message_count(queue).unwrap() == 0).await
}

/// Sends `bodies`, in order, to `queue` in session `session`.
pub async fn send_to_session(
    provider: &SharedQueueProvider,
    queue: &QueueName,
    session: &str,
    bodies: impl IntoIterator<Item = String>,
) {
    let sid = SessionId::new(session).unwrap();
    for body in bodies {
        provider
            .send(queue, Message::new(body).with_session_id(sid.clone()))
            .await
            .unwrap();
    }
}

/// Failure switches for [`Faulty`].
#[derive(Debug, Default)]
pub struct Faults {
    /// Receive and accept-session calls fail with a connection error.
    pub outage: AtomicBool,
    /// Lock renewals (message and session) fail with a lost lock.
    pub lose_locks: AtomicBool,
    /// Receive/accept calls attempted (including failed ones).
    pub receive_calls: AtomicU64,
    /// Calls attempted while the outage was on.
    pub calls_during_outage: AtomicU64,
}

/// A provider wrapper that fails on demand.
#[derive(Debug, Clone)]
pub struct Faulty {
    pub inner: SharedQueueProvider,
    pub faults: Arc<Faults>,
}

impl Faulty {
    pub fn new(inner: SharedQueueProvider) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    fn check_outage(&self, operation: &'static str) -> Result<()> {
        self.faults.receive_calls.fetch_add(1, Ordering::SeqCst);
        if self.faults.outage.load(Ordering::SeqCst) {
            self.faults
                .calls_during_outage
                .fetch_add(1, Ordering::SeqCst);
            return Err(QueueError::Connection {
                provider: "faulty",
                operation,
                source: Box::new(std::io::Error::other("connection refused")),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl queue_runtime::layer::Forward for Faulty {
    type Inner = DynQueueProvider;

    fn inner(&self) -> &DynQueueProvider {
        &*self.inner
    }

    fn name(&self) -> &'static str {
        "faulty"
    }
    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.check_outage("receive")?;
        self.inner.receive(queue, options).await
    }
    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        if self.faults.lose_locks.load(Ordering::SeqCst) {
            return Err(QueueError::LockLost {
                provider: "faulty",
                queue: receipt.queue().to_string(),
                operation: "renew_lock",
            });
        }
        self.inner.renew_lock(receipt).await
    }
    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        self.check_outage("accept_session")?;
        let session = self.inner.accept_session(queue, selector, wait).await?;
        Ok(session.map(|inner| {
            Box::new(FaultySession {
                inner,
                faults: self.faults.clone(),
            }) as Box<dyn SessionReceiver>
        }))
    }
}

#[derive(Debug)]
struct FaultySession {
    inner: Box<dyn SessionReceiver>,
    faults: Arc<Faults>,
}

#[async_trait]
impl queue_runtime::layer::ForwardSession for FaultySession {
    fn inner(&self) -> &dyn SessionReceiver {
        &*self.inner
    }

    async fn renew_session_lock(&self) -> Result<SystemTime> {
        if self.faults.lose_locks.load(Ordering::SeqCst) {
            return Err(QueueError::SessionLockLost {
                provider: "faulty",
                queue: self.inner.queue().to_string(),
                session: self.inner.session_id().clone(),
                operation: "renew_session_lock",
            });
        }
        self.inner.renew_session_lock().await
    }
}

/// A `tracing` writer collecting everything written, to search logs for leaks.
#[derive(Clone, Default)]
pub struct CapturedLogs(pub Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// A TRACE `fmt` subscriber (with span events, without colours) writing into these logs.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_ansi(false)
            .finish()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The in-process Service Bus emulator with one queue, `queue`, and the runtime
/// configuration (`service-bus`, a connection string with a canary key) that reaches it.
#[cfg(feature = "azure")]
pub async fn emulator_with_queue(
    queue: &str,
    key: &str,
    config: servicebus_emulator::QueueConfig,
) -> (
    servicebus_emulator::Emulator,
    queue_runtime::QueueRuntimeConfig,
) {
    let cfg = servicebus_emulator::EmulatorConfig::new()
        .with_key("RootManageSharedAccessKey", key)
        .with_queue(queue, config);
    let emu = servicebus_emulator::Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let runtime = queue_runtime::QueueRuntimeConfig::from_toml_str(&format!(
        "queue = \"{queue}\"\n[provider]\nkind = \"service-bus\"\nconnection_string = \"{}\"\n",
        emu.connection_string(true)
    ))
    .unwrap();
    (emu, runtime)
}
