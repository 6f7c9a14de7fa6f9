//! [`Harness`]: the provider under test, unique queue names and timing knobs.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use queue_core::{
    Capabilities, MessageId, QueueName, QueueSpec, ReceiveOptions, ReceivedMessage,
    SharedQueueProvider,
};
use tokio::time::Instant;

type ClockFn = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The provider under test and how patient to be with it.
///
/// Defaults suit a local emulator: locks of 2 s, receive calls that wait up to 1 s, and
/// 10 s of slack for anything that should arrive "soon". Under a paused tokio clock all of
/// these are virtual and cost nothing.
#[derive(Clone)]
pub struct Harness {
    provider: SharedQueueProvider,
    prefix: String,
    lock_duration: Duration,
    receive_wait: Duration,
    slack: Duration,
    clock: ClockFn,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("provider", &self.provider.name())
            .field("prefix", &self.prefix)
            .field("lock_duration", &self.lock_duration)
            .field("receive_wait", &self.receive_wait)
            .field("slack", &self.slack)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// A harness for `provider` with the default knobs.
    pub fn new(provider: SharedQueueProvider) -> Self {
        Self {
            provider,
            prefix: "qc".to_owned(),
            lock_duration: Duration::from_secs(2),
            receive_wait: Duration::from_secs(1),
            slack: Duration::from_secs(10),
            clock: Arc::new(SystemTime::now),
        }
    }

    /// Prefix of the queue names the cases create (default `qc`; letters, digits, `-`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Lock duration of the queues the cases create (default 2 s). Raise it for brokers
    /// with a higher minimum (Service Bus: 5 s).
    pub fn with_lock_duration(mut self, d: Duration) -> Self {
        self.lock_duration = d;
        self
    }

    /// How long a single receive call waits (default 1 s).
    pub fn with_receive_wait(mut self, d: Duration) -> Self {
        self.receive_wait = d;
        self
    }

    /// Extra time granted for anything expected "soon" (default 10 s).
    pub fn with_slack(mut self, d: Duration) -> Self {
        self.slack = d;
        self
    }

    /// The wall clock the provider schedules by (default [`SystemTime::now`]). Providers
    /// on tokio's clock pass theirs so scheduled times work under a paused clock.
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The provider under test.
    pub fn provider(&self) -> &SharedQueueProvider {
        &self.provider
    }

    /// The provider's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.provider.capabilities()
    }

    /// Now, on the provider's wall clock.
    pub fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// Lock duration of the queues the cases create.
    pub fn lock_duration(&self) -> Duration {
        self.lock_duration
    }

    /// How long a single receive call waits.
    pub fn receive_wait(&self) -> Duration {
        self.receive_wait
    }

    /// Extra time granted for anything expected soon.
    pub fn slack(&self) -> Duration {
        self.slack
    }

    /// A fresh queue name: `<prefix>-<stem>-<random>`, with `.fifo` for session queues.
    pub fn unique_name(&self, stem: &str, fifo: bool) -> QueueName {
        let random: String = MessageId::random()
            .as_str()
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(12)
            .collect();
        let suffix = if fifo { ".fifo" } else { "" };
        let mut stem: String = stem.chars().take(40).collect();
        while stem.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
            stem.pop();
        }
        QueueName::new(format!("{}-{stem}-{random}{suffix}", self.prefix))
            .unwrap_or_else(|e| panic!("conformance queue name for `{stem}` is invalid: {e}"))
    }

    /// The spec the cases start from: the harness lock duration, 10 deliveries.
    pub fn spec(&self) -> QueueSpec {
        QueueSpec::default().with_lock_duration(self.lock_duration)
    }

    /// Creates a fresh queue for a case (a `.fifo` one when the spec requires sessions).
    /// Panics if the provider cannot create it.
    pub async fn queue(&self, stem: &str, spec: QueueSpec) -> TestQueue {
        let name = self.unique_name(stem, spec.requires_session);
        if let Err(e) = self.provider.create_queue(&name, &spec).await {
            panic!("creating queue `{name}` failed: {e}");
        }
        TestQueue {
            name,
            provider: self.provider.clone(),
        }
    }

    /// Receives with the harness wait, panicking on error.
    pub(crate) async fn recv(&self, q: &QueueName, max: usize) -> Vec<ReceivedMessage> {
        self.recv_wait(q, max, self.receive_wait).await
    }

    pub(crate) async fn recv_wait(
        &self,
        q: &QueueName,
        max: usize,
        wait: Duration,
    ) -> Vec<ReceivedMessage> {
        match self
            .provider
            .receive(q, ReceiveOptions::new(max, wait))
            .await
        {
            Ok(v) => v,
            Err(e) => panic!("receive from `{q}` failed: {e}"),
        }
    }

    /// Receives until `n` messages arrived or `within` passed.
    pub(crate) async fn recv_n(
        &self,
        q: &QueueName,
        n: usize,
        within: Duration,
    ) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + within;
        let max = self.capabilities().max_batch_size.max(1);
        let mut got = Vec::new();
        while got.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = self.receive_wait.min(deadline - now);
            got.extend(self.recv_wait(q, max.min(n - got.len()), wait).await);
        }
        got
    }

    /// Receives until `n` messages arrived or `within` passed, completing each message as
    /// it arrives (so slow brokers cannot let locks run out while the rest trickles in).
    pub(crate) async fn take_n(
        &self,
        q: &QueueName,
        n: usize,
        per_call: usize,
        within: Duration,
    ) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = self.receive_wait.min(deadline - now);
            let want = per_call.min(n - got.len());
            let batch = self.recv_wait(q, want, wait).await;
            assert!(
                batch.len() <= want,
                "asked for at most {want} messages, got {}",
                batch.len()
            );
            for m in batch {
                if let Err(e) = self.provider.complete(&m.receipt).await {
                    panic!("complete on `{q}` failed: {e}");
                }
                got.push(m);
            }
        }
        got
    }

    /// Reads the dead-letter queue until `n` messages arrived or `within` passed.
    pub(crate) async fn recv_dead_n(
        &self,
        q: &QueueName,
        n: usize,
        within: Duration,
    ) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = self.receive_wait.min(deadline - now);
            match self
                .provider
                .receive_dead_letters(q, ReceiveOptions::new(n - got.len(), wait))
                .await
            {
                Ok(v) => got.extend(v),
                Err(e) => panic!("receive_dead_letters from `{q}` failed: {e}"),
            }
        }
        got
    }
}

/// A queue created for one case. Call [`TestQueue::delete`] at the end.
#[derive(Debug)]
pub struct TestQueue {
    name: QueueName,
    provider: SharedQueueProvider,
}

impl TestQueue {
    /// The queue's name.
    pub fn name(&self) -> &QueueName {
        &self.name
    }

    /// Deletes the queue, ignoring failures (cleanup is best effort).
    pub async fn delete(self) {
        let _ = self.provider.delete_queue(&self.name).await;
    }
}

/// What the macro calls with the factory's result: the harness, or `None` after printing
/// that the case is skipped because no server is configured.
///
/// # Panics
/// When the factory returned `None` and the environment variable `CI` is set (to anything
/// but empty, `0` or `false`): in CI every provider's server must be configured.
pub fn harness_or_skip(case: &str, harness: Option<Harness>) -> Option<Harness> {
    if harness.is_some() {
        return harness;
    }
    if queue_core::ci::is_ci() {
        panic!(
            "conformance case `{case}`: the provider under test is not configured, and CI is set \
             (configure its server, see the provider crate's tests/conformance.rs)"
        );
    }
    note(
        case,
        "provider not configured (set its QUEUE_TEST_* variables to run it)",
    );
    None
}

/// Prints why a case is skipped.
#[allow(clippy::print_stderr)]
pub(crate) fn note(case: &str, why: &str) {
    eprintln!("conformance `{case}` skipped: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_list_is_complete_and_unique() {
        let unique: std::collections::HashSet<_> = crate::CASES.iter().collect();
        assert_eq!(unique.len(), crate::CASES.len());
        assert_eq!(crate::CASES.len(), 35);
    }

    #[test]
    fn unique_names_are_valid_distinct_and_fifo_for_sessions() {
        let provider: SharedQueueProvider = Arc::new(Dummy);
        let h = Harness::new(provider).with_prefix("t");
        let a = h.unique_name("some-case-", false);
        let b = h.unique_name("some-case-", false);
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("t-some-case-"), "{a}");
        assert!(!a.is_fifo());
        let long = "x".repeat(200);
        assert!(h.unique_name(&long, true).is_fifo());
    }

    #[derive(Debug)]
    struct Dummy;

    #[async_trait::async_trait]
    impl queue_core::QueueProvider for Dummy {
        fn name(&self) -> &'static str {
            "dummy"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        async fn send(
            &self,
            _: &QueueName,
            _: queue_core::Message,
        ) -> queue_core::Result<MessageId> {
            Err(queue_core::QueueError::unsupported("dummy", "send"))
        }
        async fn send_batch(
            &self,
            _: &QueueName,
            _: Vec<queue_core::Message>,
        ) -> queue_core::Result<Vec<MessageId>> {
            Err(queue_core::QueueError::unsupported("dummy", "send_batch"))
        }
        async fn receive(
            &self,
            _: &QueueName,
            _: ReceiveOptions,
        ) -> queue_core::Result<Vec<ReceivedMessage>> {
            Ok(Vec::new())
        }
        async fn complete(&self, _: &queue_core::Receipt) -> queue_core::Result<()> {
            Ok(())
        }
        async fn abandon(
            &self,
            _: &queue_core::Receipt,
            _: Option<Duration>,
        ) -> queue_core::Result<()> {
            Ok(())
        }
        async fn dead_letter(
            &self,
            _: &queue_core::Receipt,
            _: queue_core::DeadLetterReason,
        ) -> queue_core::Result<()> {
            Ok(())
        }
        async fn renew_lock(&self, _: &queue_core::Receipt) -> queue_core::Result<SystemTime> {
            Ok(SystemTime::now())
        }
        async fn receive_dead_letters(
            &self,
            _: &QueueName,
            _: ReceiveOptions,
        ) -> queue_core::Result<Vec<ReceivedMessage>> {
            Ok(Vec::new())
        }
        async fn check_access(&self, _: &QueueName) -> queue_core::Result<()> {
            Ok(())
        }
    }
}
