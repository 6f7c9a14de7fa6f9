//! Drives the emulator with the official Python SDK (`azure-servicebus`).
//!
//! The interpreter comes from `QUEUE_TEST_PYTHON` (a venv with `azure-servicebus`).
//! Unset: each test prints a skip note and passes, except under `CI`, where it fails.

use std::{path::PathBuf, time::Duration};

use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};

fn python() -> Option<String> {
    match std::env::var("QUEUE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "CI is set but QUEUE_TEST_PYTHON is not: the Python SDK scenarios must run in CI"
                );
            }
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipping Python SDK scenario: QUEUE_TEST_PYTHON is not set");
            }
            None
        }
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Starts an emulator with `cfg`, runs `tests/python/<name>` with the connection string
/// followed by `args`, and fails the test with the script's output if it exits non-zero.
async fn run(name: &str, cfg: EmulatorConfig, conn_override: Option<String>, args: &[&str]) {
    let Some(py) = python() else { return };
    let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("emulator starts");
    let conn = conn_override
        .map(|c| c.replace("{addr}", &emu.local_addr().to_string()))
        .unwrap_or_else(|| emu.connection_string(true));
    let mut cmd = tokio::process::Command::new(py);
    cmd.arg(script(name))
        .arg(&conn)
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{name} timed out"))
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let text = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} failed\n{text}");
}

const KEY: &str = "emulator-test-key-Zm9vYmFy";

fn keyed(cfg: EmulatorConfig) -> EmulatorConfig {
    cfg.with_key("RootManageSharedAccessKey", KEY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_receive_complete_abandon_dead_letter() {
    let cfg = keyed(EmulatorConfig::new().with_queue("orders", QueueConfig::new()));
    run("basic_queue.py", cfg, None, &["orders"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_refused() {
    let cfg = keyed(EmulatorConfig::new().with_queue("orders", QueueConfig::new()));
    let conn = "Endpoint=sb://{addr};SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=not-the-key;UseDevelopmentEmulator=true".to_owned();
    run("wrong_key.py", cfg, Some(conn), &["orders"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_schedule_peek_expiry_ttl_dedup_receive_and_delete() {
    let q = QueueConfig::new()
        .with_lock_duration(Duration::from_secs(4))
        .with_max_delivery_count(2)
        .with_duplicate_detection(Duration::from_secs(600));
    let cfg = keyed(EmulatorConfig::new().with_queue("work", q));
    run("management.py", cfg, None, &["work"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_and_next_available_sessions_state_and_lock_renewal() {
    let long = QueueConfig::new()
        .with_requires_session(true)
        .with_lock_duration(Duration::from_secs(30));
    let short = QueueConfig::new()
        .with_requires_session(true)
        .with_lock_duration(Duration::from_secs(4));
    let cfg = keyed(
        EmulatorConfig::new()
            .with_queue("events", long)
            .with_queue("events-short", short),
    );
    run("sessions.py", cfg, None, &["events", "events-short"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncio_client_sessions_settlement_and_dead_letter() {
    let q = QueueConfig::new()
        .with_requires_session(true)
        .with_lock_duration(Duration::from_secs(30));
    let cfg = keyed(EmulatorConfig::new().with_queue("orders", q));
    run("async_sessions.py", cfg, None, &["orders"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_that_do_not_match_the_entity_are_refused() {
    let cfg = keyed(
        EmulatorConfig::new()
            .with_queue("events", QueueConfig::new().with_requires_session(true))
            .with_queue("plain", QueueConfig::new()),
    );
    run("receiver_kinds.py", cfg, None, &["events", "plain"]).await;
}
