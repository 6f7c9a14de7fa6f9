//! Attempt budgets across crashes and restarts (issue 13 item 1).
//!
//! Each "process" is a processor on a tokio runtime of its own, built with a fresh
//! [`FileAttemptStore`] opened on one log file. A crash drops that runtime
//! (`shutdown_background`): every task stops at its next await, nothing is settled,
//! released or closed by the runtime, and every in-memory count is gone, which is what
//! `kill -9` does to a process (the provider's sockets close, as the OS closes a dead
//! process's sockets). Only the broker and the attempt log survive.
//!
//! The scenario, on every provider: one key holds a poison message (its handler never
//! returns: the process is killed while it runs) followed by good ones. The process is
//! killed during each of the poison's `MAX_ATTEMPTS` runs, then a last process runs. It
//! must dead-letter the poison `MaxAttemptsExceeded` without running it again (its budget
//! survived the restarts in the log), and handle every good message exactly once, on its
//! first handler run, and complete it, although the crashes raised the broker delivery
//! count of the buffered ones past `MAX_ATTEMPTS`: those receives were not handler runs.
//! Each crash costs a buffered message at most one delivery (the prefetch bound), and on
//! session queues nothing but the message being handled is received at all.
#![allow(clippy::print_stderr, reason = "a skipped test says so")]

mod common;

use std::{
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use queue_runtime::{
    CancellationToken, FileAttemptStore, HandlerError, Outcome, Processor, ProcessorSettings,
    QueueName, QueueSpec, ReceiveOptions, RetrySettings, SessionMode, SharedQueueProvider,
    ShutdownReport, handler_fn,
};

const MAX_ATTEMPTS: u32 = 3;
/// Crashes during the poison's runs: as many as it has attempts.
const CRASHES: u32 = MAX_ATTEMPTS;

/// One handler run: body, attempt, delivery count.
type Runs = Arc<Mutex<Vec<(String, u32, u32)>>>;

type MakeProvider =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = SharedQueueProvider> + Send>> + Send + Sync>;
type AfterKill = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn settings(mode: SessionMode) -> ProcessorSettings {
    ProcessorSettings::default()
        .with_session_mode(mode)
        .with_receive_wait(Duration::from_millis(200))
        .with_session_idle_timeout(Duration::from_millis(200))
        .with_lock_renewal_interval(Duration::from_millis(200))
        .with_shutdown_timeout(Duration::from_secs(5))
        .with_retry(
            RetrySettings::default()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_millis(200)),
        )
}

fn processor(
    provider: SharedQueueProvider,
    queue: QueueName,
    runs: Runs,
    log: &PathBuf,
    settings: ProcessorSettings,
) -> Processor {
    let store = Arc::new(FileAttemptStore::open(log).expect("attempt log opens"));
    Processor::new(
        provider,
        queue,
        handler_fn(move |msg, ctx| {
            let runs = runs.clone();
            async move {
                let body = String::from_utf8(msg.body().to_vec()).unwrap();
                runs.lock()
                    .unwrap()
                    .push((body.clone(), ctx.attempt(), ctx.delivery_count()));
                match body.as_str() {
                    // Killed while it runs.
                    "poison" => std::future::pending().await,
                    b if b.starts_with("bad") => Err(HandlerError::transient("downstream 502")),
                    _ => Ok(Outcome::Complete),
                }
            }
        }),
    )
    .with_settings(settings)
    .with_attempt_store(store)
}

/// A processor in a "process" of its own.
struct Process {
    rt: tokio::runtime::Runtime,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<queue_runtime::Result<ShutdownReport>>,
}

fn spawn_process(
    make: &MakeProvider,
    build: impl FnOnce(SharedQueueProvider) -> Processor + Send + 'static,
) -> Process {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let make = make.clone();
    // The provider is built inside the process, so its connections die with it.
    let task = rt.spawn(async move { build(make().await).run(token).await });
    Process { rt, shutdown, task }
}

impl Process {
    /// `kill -9`.
    fn kill(self) {
        self.rt.shutdown_background();
    }

    async fn stop(self) -> ShutdownReport {
        self.shutdown.cancel();
        let report = self.task.await.unwrap().unwrap();
        self.rt.shutdown_background();
        report
    }
}

fn count(runs: &Runs, body: &str) -> usize {
    runs.lock().unwrap().iter().filter(|r| r.0 == body).count()
}

struct Case {
    name: &'static str,
    make: MakeProvider,
    queue: QueueName,
    mode: SessionMode,
    /// Good messages behind the poison.
    goods: usize,
    max_buffered: usize,
    /// Whether the provider prefetches behind a running message (grouped receive).
    prefetches: bool,
    /// Called after each kill, before the next process starts (moto's workaround).
    after_kill: Option<AfterKill>,
}

fn log_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("queue-runtime-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.log"));
    let _ = std::fs::remove_file(&path);
    path
}

/// Kills `CRASHES` processes during the poison's runs, then runs a last one to the end.
async fn crash_loop(case: Case, provider: SharedQueueProvider) {
    let log = log_path(case.name);
    let goods: Vec<String> = (1..=case.goods).map(|n| format!("good-{n}")).collect();
    let mut bodies = vec!["poison".to_owned()];
    bodies.extend(goods.iter().cloned());
    common::send_to_session(&provider, &case.queue, "pr-1", bodies).await;
    let runs = Runs::default();
    let settings = settings(case.mode).with_max_buffered_messages(case.max_buffered);
    let start = |runs: Runs| {
        let (queue, log, settings) = (case.queue.clone(), log.clone(), settings.clone());
        spawn_process(&case.make, move |p| {
            processor(p, queue, runs, &log, settings)
        })
    };
    for crash in 1..=CRASHES as usize {
        let process = start(runs.clone());
        let ran =
            common::wait_until(Duration::from_secs(60), || count(&runs, "poison") == crash).await;
        assert!(
            ran,
            "{}: run {crash} of the poison: {:?}",
            case.name,
            runs.lock().unwrap()
        );
        process.kill();
        if let Some(after_kill) = &case.after_kill {
            after_kill().await;
        }
    }
    let process = start(runs.clone());
    let done = common::wait_until(Duration::from_secs(90), || {
        goods.iter().all(|g| count(&runs, g) >= 1)
    })
    .await;
    let report = process.stop().await;
    let runs = runs.lock().unwrap().clone();
    assert!(
        done,
        "{}: good messages not all handled: {runs:?}",
        case.name
    );
    check(&case, &goods, &runs, &report);
    let dead: Vec<(String, String)> = provider
        .receive_dead_letters(&case.queue, ReceiveOptions::new(10, Duration::from_secs(2)))
        .await
        .unwrap()
        .iter()
        .map(|m| {
            let body = String::from_utf8(m.body().to_vec()).unwrap();
            (body, m.dead_letter.as_ref().unwrap().reason.clone())
        })
        .collect();
    assert_eq!(
        dead,
        vec![("poison".to_owned(), "MaxAttemptsExceeded".to_owned())],
        "{}",
        case.name
    );
    let _ = std::fs::remove_file(&log);
}

fn check(case: &Case, goods: &[String], runs: &[(String, u32, u32)], report: &ShutdownReport) {
    let name = case.name;
    let poison: Vec<u32> = runs
        .iter()
        .filter(|r| r.0 == "poison")
        .map(|r| r.1)
        .collect();
    assert_eq!(
        poison,
        (1..=MAX_ATTEMPTS).collect::<Vec<_>>(),
        "{name}: the poison's attempts continue across restarts and stop at the budget"
    );
    let mut exposed = 0;
    for good in goods {
        let mine: Vec<_> = runs.iter().filter(|r| &r.0 == good).collect();
        assert_eq!(mine.len(), 1, "{name}: {good} handled once: {runs:?}");
        let (_, attempt, delivery) = mine[0];
        assert_eq!(
            *attempt, 1,
            "{name}: {good}: receives that ran no handler are no attempts"
        );
        assert!(
            *delivery <= CRASHES + 1,
            "{name}: {good}: a crash costs a buffered message at most one delivery ({delivery})"
        );
        if *delivery > 1 {
            exposed += 1;
        }
    }
    if case.prefetches {
        assert!(
            exposed >= 1,
            "{name}: the scenario did buffer messages: {runs:?}"
        );
        assert!(
            exposed < case.max_buffered,
            "{name}: at most max_buffered_messages ({}) deliveries, the poison included, are \
             exposed to a crash; {exposed} good ones were",
            case.max_buffered
        );
    } else {
        assert_eq!(
            exposed, 0,
            "{name}: sessions receive nothing behind the running message"
        );
    }
    assert_eq!(report.completed as usize, goods.len(), "{name}: {report:?}");
    assert_eq!(report.dead_lettered, 1, "{name}: {report:?}");
}

fn shared_memory(mem: &queue_memory::InMemoryProvider) -> MakeProvider {
    let mem = mem.clone();
    Arc::new(move || {
        let p: SharedQueueProvider = Arc::new(mem.clone());
        Box::pin(async move { p })
    })
}

/// Memory provider, session queue: sessions are received one message at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_on_memory_sessions() {
    let (mem, provider, queue) = common::memory(
        "restart",
        QueueSpec::default()
            .with_sessions(true)
            .with_lock_duration(Duration::from_millis(500)),
    )
    .await;
    let case = Case {
        name: "memory-sessions",
        make: shared_memory(&mem),
        queue,
        mode: SessionMode::Auto,
        goods: 3,
        max_buffered: 32,
        prefetches: false,
        after_kill: None,
    };
    crash_loop(case, provider).await;
}

/// SQS FIFO semantics (the memory provider's `sqs` profile, `maxReceiveCount` 10): a receive
/// takes the whole group, so the good messages sit buffered behind the poison at every
/// crash; at most `max_buffered_messages` of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_on_grouped_fifo() {
    let (mem, provider, queue) =
        common::sqs_fifo("restart.fifo", Duration::from_millis(500), 10).await;
    let case = Case {
        name: "grouped",
        make: shared_memory(&mem),
        queue,
        mode: SessionMode::Auto,
        goods: 8,
        max_buffered: 4,
        prefetches: true,
        after_kill: None,
    };
    crash_loop(case, provider).await;
}

/// Handler runs of a failing message continue across restarts: killed after its second
/// run, the next process runs attempts 3.. and dead-letters it `RetriesExhausted` after
/// exactly `MAX_ATTEMPTS` runs in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_keeps_its_attempts_across_a_restart() {
    let (mem, provider, queue) = common::memory(
        "restart-failing",
        QueueSpec::default()
            .with_sessions(true)
            .with_lock_duration(Duration::from_millis(500)),
    )
    .await;
    common::send_to_session(
        &provider,
        &queue,
        "pr-1",
        ["bad".to_owned(), "good".to_owned()],
    )
    .await;
    let log = log_path("failing");
    let runs = Runs::default();
    let make = shared_memory(&mem);
    let start = |runs: Runs| {
        let (queue, log) = (queue.clone(), log.clone());
        // Retries 300 ms apart, so the kill lands between runs 2 and 3.
        let settings = settings(SessionMode::Auto).with_retry(
            RetrySettings::default()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_delay(Duration::from_millis(300))
                .with_max_delay(Duration::from_millis(300))
                .with_jitter(0.0),
        );
        spawn_process(&make, move |p| processor(p, queue, runs, &log, settings))
    };
    let process = start(runs.clone());
    assert!(common::wait_until(Duration::from_secs(30), || count(&runs, "bad") == 2).await);
    process.kill();
    let process = start(runs.clone());
    let done = common::wait_until(Duration::from_secs(60), || count(&runs, "good") == 1).await;
    let report = process.stop().await;
    let runs = runs.lock().unwrap().clone();
    assert!(done, "{runs:?}");
    let bad: Vec<u32> = runs.iter().filter(|r| r.0 == "bad").map(|r| r.1).collect();
    assert_eq!(
        bad,
        vec![1, 2, 3],
        "one budget across both processes: {runs:?}"
    );
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert_eq!(report.completed, 1, "{report:?}");
    let dead = provider
        .receive_dead_letters(&queue, ReceiveOptions::new(10, Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].dead_letter.as_ref().unwrap().reason,
        "RetriesExhausted"
    );
    let _ = std::fs::remove_file(&log);
}

/// The Service Bus emulator, session queue (lock 2 s, `MaxDeliveryCount` 10).
#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_on_service_bus_emulator() {
    use queue_runtime::build_provider;
    use servicebus_emulator::QueueConfig;
    let (_emu, config) = common::emulator_with_queue(
        "restart",
        "CANARY-restart-key",
        QueueConfig::new()
            .with_requires_session(true)
            .with_lock_duration(Duration::from_secs(2))
            .with_max_delivery_count(10),
    )
    .await;
    let provider = build_provider(&config.provider).await.unwrap();
    let settings = config.provider.clone();
    let make: MakeProvider = Arc::new(move || {
        let settings = settings.clone();
        Box::pin(async move { build_provider(&settings).await.unwrap() })
    });
    let case = Case {
        name: "emulator",
        make,
        queue: QueueName::new("restart").unwrap(),
        mode: SessionMode::Required,
        goods: 3,
        max_buffered: 32,
        prefetches: false,
        after_kill: None,
    };
    crash_loop(case, provider).await;
}

#[cfg(feature = "aws")]
mod sqs {
    use super::*;
    use async_trait::async_trait;
    use queue_runtime::{
        Capabilities, DeadLetterReason, Message, MessageId, QueueProvider, QueueRuntimeConfig,
        Receipt, ReceivedMessage, Result, SessionReceiver, SessionSelector, build_provider,
    };
    use std::time::SystemTime;

    pub(super) fn endpoint() -> Option<String> {
        queue_runtime::ci::test_server(
            "QUEUE_TEST_SQS_ENDPOINT",
            "restart on SQS",
            "`cargo xtask test` starts moto",
        )
    }

    pub(super) async fn provider(endpoint: &str) -> (SharedQueueProvider, QueueRuntimeConfig) {
        let config = QueueRuntimeConfig::from_toml_str(&format!(
            "queue = \"q\"\n[provider]\nkind = \"sqs\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n"
        ))
        .unwrap();
        (build_provider(&config.provider).await.unwrap(), config)
    }

    /// A FIFO queue with the defaults (visibility 30 s, `maxReceiveCount` 10).
    pub(super) async fn fifo(p: &SharedQueueProvider, stem: &str) -> QueueName {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let q = QueueName::new(format!("{stem}-{}-{nanos}.fifo", std::process::id())).unwrap();
        p.create_queue(&q, &QueueSpec::default().with_sessions(true))
            .await
            .expect("create the FIFO queue");
        q
    }

    /// Deliveries a process received and had not settled: what its death leaves in flight.
    pub(super) type InFlight = Arc<Mutex<Vec<Receipt>>>;

    /// Forwards to `inner`, noting the receipts in flight.
    #[derive(Debug)]
    pub(super) struct Recording {
        pub(super) inner: SharedQueueProvider,
        pub(super) in_flight: InFlight,
    }

    impl Recording {
        fn settled(&self, receipt: &Receipt) {
            self.in_flight.lock().unwrap().retain(|r| r != receipt);
        }
    }

    #[async_trait]
    impl QueueProvider for Recording {
        fn name(&self) -> &'static str {
            self.inner.name()
        }
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
            self.inner.send(queue, message).await
        }
        async fn send_batch(
            &self,
            queue: &QueueName,
            messages: Vec<Message>,
        ) -> Result<Vec<MessageId>> {
            self.inner.send_batch(queue, messages).await
        }
        async fn receive(
            &self,
            queue: &QueueName,
            options: ReceiveOptions,
        ) -> Result<Vec<ReceivedMessage>> {
            let got = self.inner.receive(queue, options).await?;
            let mut in_flight = self.in_flight.lock().unwrap();
            in_flight.extend(got.iter().map(|m| m.receipt.clone()));
            Ok(got)
        }
        async fn complete(&self, receipt: &Receipt) -> Result<()> {
            self.inner.complete(receipt).await?;
            self.settled(receipt);
            Ok(())
        }
        async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
            self.inner.abandon(receipt, delay).await?;
            self.settled(receipt);
            Ok(())
        }
        async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
            self.inner.dead_letter(receipt, reason).await?;
            self.settled(receipt);
            Ok(())
        }
        async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
            self.inner.renew_lock(receipt).await
        }
        async fn accept_session(
            &self,
            queue: &QueueName,
            selector: SessionSelector,
            wait: Duration,
        ) -> Result<Option<Box<dyn SessionReceiver>>> {
            self.inner.accept_session(queue, selector, wait).await
        }
        async fn receive_dead_letters(
            &self,
            queue: &QueueName,
            options: ReceiveOptions,
        ) -> Result<Vec<ReceivedMessage>> {
            self.inner.receive_dead_letters(queue, options).await
        }
        async fn check_access(&self, queue: &QueueName) -> Result<()> {
            self.inner.check_access(queue).await
        }
    }
}

/// SQS FIFO on moto, queue defaults (`maxReceiveCount` 10, visibility 30 s).
///
/// Moto workaround: when a FIFO group's in-flight messages become visible together (the
/// dead process's visibility timeouts running out), moto hands them back last-first; real
/// SQS keeps group order. So instead of waiting out the visibility timeout, the test releases
/// the dead process's deliveries itself, in the order they were received (one
/// `ChangeMessageVisibility(0)` each, which moto handles in order). The receive counts are
/// what SQS would show either way: the releases do not receive anything.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_on_sqs_fifo_moto() {
    let Some(endpoint) = sqs::endpoint() else {
        return;
    };
    let (provider, config) = sqs::provider(&endpoint).await;
    let queue = sqs::fifo(&provider, "restart").await;
    let in_flight = sqs::InFlight::default();
    let (settings, recorded) = (config.provider.clone(), in_flight.clone());
    let make: MakeProvider = Arc::new(move || {
        let (settings, in_flight) = (settings.clone(), recorded.clone());
        Box::pin(async move {
            let inner = queue_runtime::build_provider(&settings).await.unwrap();
            Arc::new(sqs::Recording { inner, in_flight }) as SharedQueueProvider
        })
    });
    let (releaser, left) = (provider.clone(), in_flight.clone());
    let case = Case {
        name: "sqs-moto",
        make,
        queue: queue.clone(),
        mode: SessionMode::Auto,
        goods: 4,
        max_buffered: 32,
        prefetches: true,
        after_kill: Some(Arc::new(move || {
            let (p, left) = (releaser.clone(), left.clone());
            Box::pin(async move {
                let receipts: Vec<_> = left.lock().unwrap().drain(..).collect();
                for r in receipts {
                    p.abandon(&r, None)
                        .await
                        .expect("release a dead process's delivery");
                }
            })
        })),
    };
    crash_loop(case, provider.clone()).await;
    let _ = provider.delete_queue(&queue).await;
}

/// Issue 13 item 1 on moto, with the defaults (`maxReceiveCount` 10, `retry.max_attempts`
/// 5): one FIFO group holds three messages that always fail, then a good one. Each failing
/// one gets exactly 5 handler runs and is dead-lettered `RetriesExhausted`; the good one is
/// completed on its first delivery (before the change it reached receive count 11 and SQS
/// moved it to the DLQ, `completed 0`). Nothing expires in flight here, so moto's
/// last-first quirk plays no part.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_messages_do_not_spend_the_good_ones_budget_on_sqs_fifo_moto() {
    let Some(endpoint) = sqs::endpoint() else {
        return;
    };
    let (provider, _) = sqs::provider(&endpoint).await;
    let queue = sqs::fifo(&provider, "attempts").await;
    let bodies = ["bad-1", "bad-2", "bad-3", "good"].map(str::to_owned);
    common::send_to_session(&provider, &queue, "pr-1", bodies).await;
    let runs = Runs::default();
    let log = log_path("moto-attempts");
    let retry = RetrySettings::default()
        .with_initial_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(100));
    assert_eq!(retry.max_attempts, 5, "the default budget");
    let settings = ProcessorSettings::default()
        .with_receive_wait(Duration::from_millis(500))
        .with_retry(retry);
    let running = common::start(processor(
        provider.clone(),
        queue.clone(),
        runs.clone(),
        &log,
        settings,
    ));
    let done = common::wait_until(Duration::from_secs(120), || count(&runs, "good") == 1).await;
    let report = running.stop().await;
    let runs = runs.lock().unwrap().clone();
    assert!(done, "the good message was handled: {runs:?}");
    for bad in ["bad-1", "bad-2", "bad-3"] {
        let attempts: Vec<u32> = runs.iter().filter(|r| r.0 == bad).map(|r| r.1).collect();
        assert_eq!(attempts, vec![1, 2, 3, 4, 5], "{bad}: {runs:?}");
    }
    let good: Vec<_> = runs.iter().filter(|r| r.0 == "good").collect();
    assert_eq!(good, vec![&("good".to_owned(), 1, 1)], "{runs:?}");
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(report.dead_lettered, 3, "{report:?}");
    let mut dead = Vec::new();
    for _ in 0..10 {
        dead.extend(
            provider
                .receive_dead_letters(&queue, ReceiveOptions::new(10, Duration::from_secs(1)))
                .await
                .unwrap(),
        );
        if dead.len() >= 3 {
            break;
        }
    }
    let reasons: Vec<_> = dead
        .iter()
        .map(|m| m.dead_letter.as_ref().map(|d| d.reason.clone()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r.as_deref() == Some("RetriesExhausted")),
        "{reasons:?}"
    );
    let _ = provider.delete_queue(&queue).await;
    let _ = std::fs::remove_file(&log);
}

/// Deliveries that ran no handler (here: received and abandoned three times outside the
/// processor, as a crashed process's buffer would be) spend no attempts: with
/// `max_attempts` 3 and delivery count 4, the handler runs, as attempt 1, and completes it.
/// (Before attempts were counted in the store, this message was dead-lettered
/// `MaxAttemptsExceeded` without its handler ever running.)
#[tokio::test(start_paused = true)]
async fn deliveries_that_ran_no_handler_spend_no_attempts() {
    let (mem, provider, queue) = common::memory("unhandled", QueueSpec::default()).await;
    provider
        .send(&queue, queue_runtime::Message::new("x"))
        .await
        .unwrap();
    for _ in 0..MAX_ATTEMPTS {
        let got = provider
            .receive(&queue, ReceiveOptions::new(1, Duration::from_secs(1)))
            .await
            .unwrap();
        provider.abandon(&got[0].receipt, None).await.unwrap();
    }
    let runs = Runs::default();
    let log = log_path("unhandled");
    let report = common::run_until_drained(
        processor(
            provider.clone(),
            queue.clone(),
            runs.clone(),
            &log,
            settings(SessionMode::Auto),
        ),
        &mem,
        &queue,
        Duration::from_secs(60),
    )
    .await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs, vec![("x".to_owned(), 1, MAX_ATTEMPTS + 1)]);
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(mem.dead_letter_count(&queue).unwrap(), 0);
    let _ = std::fs::remove_file(&log);
}

/// A message whose recorded handler runs already reached `max_attempts` (the process died,
/// or the lock was lost, during its last run) is dead-lettered `MaxAttemptsExceeded`
/// without running again, whatever its delivery count says.
#[tokio::test(start_paused = true)]
async fn a_message_whose_runs_reached_the_limit_is_dead_lettered_without_running() {
    use queue_runtime::{AttemptStore, MemoryAttemptStore, MessageId};
    let (mem, provider, queue) = common::memory("spent", QueueSpec::default()).await;
    let id = MessageId::new("delivery-1").unwrap();
    provider
        .send(
            &queue,
            queue_runtime::Message::new("x").with_message_id(id.clone()),
        )
        .await
        .unwrap();
    let store = Arc::new(MemoryAttemptStore::default());
    for _ in 0..MAX_ATTEMPTS {
        store.start_run(&queue, &id);
    }
    let runs = Runs::default();
    let log = log_path("spent");
    let processor = processor(
        provider.clone(),
        queue.clone(),
        runs.clone(),
        &log,
        settings(SessionMode::Auto),
    )
    .with_attempt_store(store.clone());
    let report = common::run_until_drained(processor, &mem, &queue, Duration::from_secs(60)).await;
    assert!(runs.lock().unwrap().is_empty(), "the handler did not run");
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    let dead = provider
        .receive_dead_letters(&queue, ReceiveOptions::new(10, Duration::from_secs(1)))
        .await
        .unwrap();
    let reason = dead[0].dead_letter.as_ref().unwrap();
    assert_eq!(reason.reason, "MaxAttemptsExceeded");
    assert!(
        reason.description.contains("already ran 3 times"),
        "{}",
        reason.description
    );
    assert!(store.is_empty(), "forgotten once dead-lettered");
    let _ = std::fs::remove_file(&log);
}
