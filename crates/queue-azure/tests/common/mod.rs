//! Shared test helpers: the in-process Service Bus emulator and providers pointed at it.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use queue_azure::ServiceBusProvider;
use queue_core::{
    Capabilities, DeadLetterReason, Message, MessageId, QueueName, QueueProvider, QueueSpec,
    Receipt, ReceiveOptions, ReceivedMessage, Result, SessionReceiver, SessionSelector,
};
use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};
use tokio::sync::OnceCell;

pub const KEY_NAME: &str = "RootManageSharedAccessKey";
pub const KEY: &str = "emulator-test-key";

/// Maps a conformance queue spec onto the emulator's queue settings.
pub fn queue_config(spec: &QueueSpec) -> QueueConfig {
    let mut q = QueueConfig::new()
        .with_lock_duration(spec.lock_duration)
        .with_max_delivery_count(spec.max_delivery_count)
        .with_requires_session(spec.requires_session);
    if let Some(ttl) = spec.default_ttl {
        q = q.with_default_ttl(ttl);
    }
    if let Some(w) = spec.duplicate_detection_window {
        q = q.with_duplicate_detection(w);
    }
    q
}

/// Starts an emulator with `queues`, requiring the test key.
pub async fn start(queues: Vec<(String, QueueConfig)>) -> Emulator {
    let mut cfg = EmulatorConfig::new().with_key(KEY_NAME, KEY);
    for (name, q) in queues {
        cfg = cfg.with_queue(name, q);
    }
    Emulator::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("emulator starts")
}

/// The connection string of `emu` with the real key.
pub fn connection_string(emu: &Emulator) -> String {
    emu.connection_string(true)
}

/// A provider for `emu`.
pub fn provider(emu: &Emulator) -> ServiceBusProvider {
    ServiceBusProvider::builder()
        .with_connection_string(&connection_string(emu))
        .with_duplicate_detection(true)
        .with_operation_timeout(Duration::from_secs(10))
        .build()
        .expect("provider config")
}

/// A provider whose `create_queue` starts an emulator holding that queue.
///
/// Service Bus creates queues through Azure Resource Manager, which the provider does not
/// speak, and the emulator fixes its queues at start-up; so each conformance case gets its
/// own emulator, started when the case creates its queue (or, for cases that never create
/// one, on first use with no queues). Everything else is delegated unchanged.
#[derive(Debug, Default)]
pub struct PerCaseEmulator {
    inner: OnceCell<(Emulator, ServiceBusProvider)>,
}

impl PerCaseEmulator {
    async fn init(&self, queues: Vec<(String, QueueConfig)>) -> &(Emulator, ServiceBusProvider) {
        self.inner
            .get_or_init(|| async {
                let emu = start(queues).await;
                let p = provider(&emu);
                (emu, p)
            })
            .await
    }

    async fn p(&self) -> &ServiceBusProvider {
        &self.init(Vec::new()).await.1
    }
}

#[async_trait]
impl QueueProvider for PerCaseEmulator {
    fn name(&self) -> &'static str {
        "service-bus"
    }
    fn capabilities(&self) -> Capabilities {
        let mut c = ServiceBusProvider::builder()
            .with_connection_string(
                "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
            )
            .with_duplicate_detection(true)
            .build()
            .expect("config")
            .capabilities();
        c.queue_management = true;
        c
    }
    async fn send(&self, q: &QueueName, m: Message) -> Result<MessageId> {
        self.p().await.send(q, m).await
    }
    async fn send_batch(&self, q: &QueueName, m: Vec<Message>) -> Result<Vec<MessageId>> {
        self.p().await.send_batch(q, m).await
    }
    async fn receive(&self, q: &QueueName, o: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        self.p().await.receive(q, o).await
    }
    async fn complete(&self, r: &Receipt) -> Result<()> {
        self.p().await.complete(r).await
    }
    async fn abandon(&self, r: &Receipt, d: Option<Duration>) -> Result<()> {
        self.p().await.abandon(r, d).await
    }
    async fn dead_letter(&self, r: &Receipt, why: DeadLetterReason) -> Result<()> {
        self.p().await.dead_letter(r, why).await
    }
    async fn renew_lock(&self, r: &Receipt) -> Result<SystemTime> {
        self.p().await.renew_lock(r).await
    }
    async fn accept_session(
        &self,
        q: &QueueName,
        s: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        self.p().await.accept_session(q, s, wait).await
    }
    async fn receive_dead_letters(
        &self,
        q: &QueueName,
        o: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.p().await.receive_dead_letters(q, o).await
    }
    async fn check_access(&self, q: &QueueName) -> Result<()> {
        self.p().await.check_access(q).await
    }
    async fn create_queue(&self, q: &QueueName, spec: &QueueSpec) -> Result<()> {
        let (emu, _) = self
            .init(vec![(q.as_str().to_owned(), queue_config(spec))])
            .await;
        assert!(
            emu.broker().has_queue(q.as_str()),
            "PerCaseEmulator holds one queue per case; `{q}` came second"
        );
        Ok(())
    }
    async fn delete_queue(&self, _q: &QueueName) -> Result<()> {
        Ok(())
    }
}
