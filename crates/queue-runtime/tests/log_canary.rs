//! No secret in any log, whoever logs it: every target at `TRACE`, canary AWS keys and
//! session token, canary Service Bus key; real calls against moto (SQS) and the Service
//! Bus emulator, succeeding and failing. The output of the subscriber that
//! `queue_runtime::telemetry` builds must hold no canary. A second, unguarded layer
//! records the same events raw, to show that the SDKs do log these secrets (so this test
//! fails if the guard stops working).
//!
//! Needs `QUEUE_TEST_SQS_ENDPOINT` (moto, started by `cargo xtask test`); without it the
//! test says so and skips, except under `CI=true`, where it fails.
#![cfg(all(feature = "telemetry", feature = "aws", feature = "azure"))]
#![allow(clippy::print_stderr, reason = "a skipped test says so")]

use std::{
    io,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use queue_runtime::{
    Message, QueueName, QueueProvider, QueueRuntimeConfig, QueueSpec, ReceiveOptions,
    build_provider,
    telemetry::{SecretGuard, redacting},
};
use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};
use tracing_subscriber::{Layer, filter::LevelFilter, fmt, prelude::*};

const ACCESS_KEY_ID: &str = "AKIACANARYQ7X9Z2W5VT";
const SECRET_ACCESS_KEY: &str = "CanarySecretAccessKey0123456789abcdefXYZ";
const SESSION_TOKEN: &str = "CanarySessionTokenIQoJb3JpZ2luX2VjEJr0123456789";
const SB_KEY_NAME: &str = "RootManageSharedAccessKey";
const SB_KEY: &str = "CanaryServiceBusKey0123456789abcdefghijk=";
const CANARIES: &[&str] = &[ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN, SB_KEY];

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// (guarded output, raw output), from one global subscriber with every target at TRACE.
fn capture() -> &'static (Buffer, Buffer) {
    static CAPTURE: OnceLock<(Buffer, Buffer)> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let (guarded, raw) = (Buffer::default(), Buffer::default());
        let (g, r) = (guarded.clone(), raw.clone());
        tracing_subscriber::registry()
            .with(LevelFilter::TRACE)
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(redacting(move || g.clone()))
                    .with_filter(SecretGuard::default()),
            )
            .with(fmt::layer().with_ansi(false).with_writer(move || r.clone()))
            .try_init()
            .expect("the only subscriber of this test binary");
        (guarded, raw)
    })
}

fn sqs_endpoint() -> Option<String> {
    queue_runtime::ci::test_server(
        "QUEUE_TEST_SQS_ENDPOINT",
        module_path!(),
        "cargo xtask test starts moto",
    )
}

fn sqs_config(endpoint: &str) -> QueueRuntimeConfig {
    QueueRuntimeConfig::from_toml_str(&format!(
        r#"
        queue = "q"
        [provider]
        kind = "sqs"
        endpoint = "{endpoint}"
        region = "us-east-1"
        access_key_id = "{ACCESS_KEY_ID}"
        secret_access_key = "{SECRET_ACCESS_KEY}"
        session_token = "{SESSION_TOKEN}"
        "#
    ))
    .expect("sqs config")
}

fn sb_config(connection_string: &str) -> QueueRuntimeConfig {
    QueueRuntimeConfig::from_toml_str(&format!(
        "queue = \"q\"\n[provider]\nkind = \"service-bus\"\nconnection_string = \"{connection_string}\"\n"
    ))
    .expect("service bus config")
}

/// A send, a receive and a completion on a fresh queue; then failures: a missing queue.
async fn round_trip(provider: &dyn QueueProvider, queue: &QueueName, create: bool) {
    if create {
        provider
            .create_queue(queue, &QueueSpec::default())
            .await
            .expect("create queue");
    }
    provider
        .send(queue, Message::new("canary test body"))
        .await
        .expect("send");
    let got = provider
        .receive(queue, ReceiveOptions::new(1, Duration::from_secs(5)))
        .await
        .expect("receive");
    let first = got.first().expect("the message comes back");
    provider.complete(&first.receipt).await.expect("complete");
    let missing = QueueName::new("does-not-exist-canary").unwrap();
    assert!(provider.send(&missing, Message::new("x")).await.is_err());
}

async fn sqs_calls(endpoint: &str) {
    let provider = build_provider(&sqs_config(endpoint).provider)
        .await
        .expect("sqs provider");
    let queue = QueueName::new(format!("canary-{}", std::process::id())).unwrap();
    round_trip(provider.as_ref(), &queue, true).await;
    let _ = provider.delete_queue(&queue).await;
    // Nothing listens here: connection refused, retried, then an error.
    let dead = format!("http://127.0.0.1:{}", closed_port());
    if let Ok(p) = build_provider(&sqs_config(&dead).provider).await {
        let q = QueueName::new("q").unwrap();
        assert!(p.send(&q, Message::new("x")).await.is_err());
    }
}

async fn service_bus_calls() {
    let cfg = EmulatorConfig::new()
        .with_key(SB_KEY_NAME, SB_KEY)
        .with_queue("q", QueueConfig::new());
    let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("emulator starts");
    let good = emu.connection_string(true);
    let provider = build_provider(&sb_config(&good).provider)
        .await
        .expect("service bus provider");
    round_trip(provider.as_ref(), &QueueName::new("q").unwrap(), false).await;
    // A wrong key: the emulator refuses the token.
    let wrong = good.replace(SB_KEY, "CanaryWrongKeyAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    if let Ok(p) = build_provider(&sb_config(&wrong).provider).await {
        let q = QueueName::new("q").unwrap();
        assert!(p.send(&q, Message::new("x")).await.is_err());
    }
    // Nothing listens here.
    let port = emu_port(&good);
    let dead = good.replace(&format!(":{port}"), &format!(":{}", closed_port()));
    if let Ok(p) = build_provider(&sb_config(&dead).provider).await {
        let q = QueueName::new("q").unwrap();
        assert!(p.send(&q, Message::new("x")).await.is_err());
    }
}

fn emu_port(connection_string: &str) -> String {
    let after = connection_string.split("sb://").nth(1).expect("endpoint");
    let host_port = after.split(['/', ';']).next().expect("host");
    host_port.rsplit(':').next().expect("port").to_owned()
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_reaches_the_guarded_output_at_trace() {
    let Some(endpoint) = sqs_endpoint() else {
        return;
    };
    let (guarded, raw) = capture();
    tokio::time::timeout(Duration::from_secs(120), async {
        sqs_calls(&endpoint).await;
        service_bus_calls().await;
    })
    .await
    .expect("the calls finish within 2 minutes");
    let (guarded, raw) = (guarded.text(), raw.text());
    assert!(
        guarded.lines().count() >= 3,
        "the guarded layer saw events:\n{guarded}"
    );
    for canary in CANARIES {
        if let Some(at) = guarded.find(canary) {
            let line = guarded[..at].rsplit('\n').next().unwrap_or_default();
            panic!("canary {canary} in the guarded output, in a line starting: {line}");
        }
    }
    for sig in guarded.split("sig=").skip(1) {
        assert!(
            sig.starts_with("[REDACTED]"),
            "a SAS signature in the guarded output"
        );
    }
    // The control: without the guard, the AWS SDK does log the access key id (DEBUG) and
    // the session token (TRACE), so the assertions above are what keeps them out.
    for canary in [ACCESS_KEY_ID, SESSION_TOKEN] {
        assert!(
            raw.contains(canary),
            "the unguarded output no longer shows {canary}: the control is void"
        );
    }
}
