//! Shared test helpers: the in-process Service Bus emulator and providers pointed at it.
#![allow(dead_code, unreachable_pub)]

use std::{sync::OnceLock, time::Duration};

use async_trait::async_trait;
use queue_azure::ServiceBusProvider;
use queue_core::{Capabilities, QueueError, QueueName, QueueProvider, QueueSpec, Result};
use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};

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

/// One emulator for the whole test binary. It runs on a runtime of its own, kept for the
/// life of the process: every `#[tokio::test]` has its own runtime, and one that ends would
/// take an emulator started on it down with it.
pub fn shared_emulator() -> &'static Emulator {
    static SHARED: OnceLock<(tokio::runtime::Runtime, Emulator)> = OnceLock::new();
    &SHARED
        .get_or_init(|| {
            // `block_on` may not run inside a test's runtime, so start it from a plain thread.
            std::thread::spawn(|| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("emulator runtime");
                let emu = rt.block_on(start(Vec::new()));
                (rt, emu)
            })
            .join()
            .expect("emulator thread")
        })
        .1
}

/// The provider under test, with queue management added the way a deployment does it
/// out of band: Service Bus creates queues through Azure Resource Manager, which the
/// provider does not speak (it reports `queue_management: false`), so `create_queue` and
/// `delete_queue` go to the shared emulator directly, with the spec mapped onto
/// [`QueueConfig`]. Everything else is delegated unchanged to a [`ServiceBusProvider`].
#[derive(Debug)]
pub struct EmulatorQueues {
    emu: &'static Emulator,
    inner: ServiceBusProvider,
}

impl EmulatorQueues {
    /// A provider for the shared emulator.
    pub fn new() -> Self {
        let emu = shared_emulator();
        Self {
            emu,
            inner: provider(emu),
        }
    }

    fn p(&self) -> &ServiceBusProvider {
        &self.inner
    }
}

impl Default for EmulatorQueues {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl queue_core::layer::Forward for EmulatorQueues {
    type Inner = ServiceBusProvider;

    fn inner(&self) -> &ServiceBusProvider {
        &self.inner
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = self.inner.capabilities();
        assert!(
            !c.queue_management,
            "the provider itself does not manage queues"
        );
        c.queue_management = true;
        c
    }
    async fn create_queue(&self, q: &QueueName, spec: &QueueSpec) -> Result<()> {
        self.emu
            .create_queue(q.as_str(), queue_config(spec))
            .map_err(|e| QueueError::config("queue", e.to_string()))
    }
    async fn delete_queue(&self, q: &QueueName) -> Result<()> {
        self.emu
            .delete_queue(q.as_str())
            .map_err(|_| QueueError::QueueNotFound {
                provider: "service-bus",
                queue: q.as_str().to_owned(),
                operation: "delete_queue",
            })
    }
}
