//! Drives the emulator with the official Python SDK (`azure-servicebus`).
//!
//! The interpreter comes from `QUEUE_TEST_PYTHON` (a venv with `azure-servicebus`).
//! Unset: each test prints a skip note and passes, except under `CI`, where it fails.

use std::{path::PathBuf, time::Duration};

use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig, Transport};

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

/// How a scenario reaches the emulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Plaintext AMQP (`UseDevelopmentEmulator=true`).
    Plain,
    /// AMQP over TLS, trusting the generated CA with `connection_verify=`.
    Tls,
    /// AMQP over WebSockets over TLS (needs `websocket-client`).
    Wss,
}

/// Starts an emulator with `cfg`, runs `tests/python/<name>` with the connection string
/// followed by `args`, and fails the test with the script's output if it exits non-zero
/// or runs past its timeout.
async fn run(name: &str, cfg: EmulatorConfig, conn_override: Option<String>, args: &[&str]) {
    run_in(Mode::Plain, name, cfg, conn_override, args).await
}

async fn run_in(
    mode: Mode,
    name: &str,
    cfg: EmulatorConfig,
    conn_override: Option<String>,
    args: &[&str],
) {
    let Some(py) = python() else { return };
    let emu = match mode {
        Mode::Plain => Emulator::start(cfg, "127.0.0.1:0".parse().unwrap()).await,
        Mode::Tls | Mode::Wss => Emulator::start_tls(cfg).await,
    }
    .expect("emulator starts");
    let mut cmd = tokio::process::Command::new(py);
    let ca_file = std::env::temp_dir().join(format!(
        "sbemu-ca-{}-{}-{mode:?}.pem",
        std::process::id(),
        name.trim_end_matches(".py")
    ));
    let conn = match mode {
        Mode::Plain => emu.connection_string(true),
        Mode::Tls | Mode::Wss => {
            std::fs::write(&ca_file, emu.ca_pem().expect("generated CA")).unwrap();
            let (env, t) = match mode {
                Mode::Tls => ("tls", Transport::Amqps),
                _ => ("wss", Transport::Wss),
            };
            let port = emu.addr(t).expect("listener").port();
            cmd.env("SBEMU_TRANSPORT", env)
                .env("SBEMU_CA_FILE", &ca_file)
                .env("SBEMU_ENDPOINT", format!("sb://localhost:{port}"));
            emu.tls_connection_string(true).expect("TLS listener")
        }
    };
    let conn = conn_override
        .map(|c| c.replace("{addr}", &emu.local_addr().to_string()))
        .unwrap_or(conn);
    cmd.arg(script(name))
        .arg(&conn)
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{name} ({mode:?}) timed out"))
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let _ = std::fs::remove_file(&ca_file);
    let text = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let verdict = if out.status.success() {
        "passed"
    } else {
        "FAILED"
    };
    report(&format!("azure-servicebus {name} over {mode:?}: {verdict}"));
    assert!(out.status.success(), "{name} ({mode:?}) failed\n{text}");
}

/// Appends a line to the summary `cargo xtask test` prints at the end, when it asks.
fn report(line: &str) {
    use std::io::Write;
    let Some(p) = std::env::var_os("QUEUE_TEST_SDK_SUMMARY") else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
    {
        let _ = writeln!(f, "{line}");
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_trusting_the_generated_ca() {
    let cfg = keyed(EmulatorConfig::new().with_queue("orders", QueueConfig::new()));
    run_in(Mode::Tls, "basic_queue.py", cfg, None, &["orders"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_over_tls_with_the_asyncio_client() {
    let q = QueueConfig::new()
        .with_requires_session(true)
        .with_lock_duration(Duration::from_secs(30));
    let cfg = keyed(EmulatorConfig::new().with_queue("orders", q));
    run_in(Mode::Tls, "async_sessions.py", cfg, None, &["orders"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_websockets_with_tls() {
    let cfg = keyed(EmulatorConfig::new().with_queue("orders", QueueConfig::new()));
    run_in(Mode::Wss, "basic_queue.py", cfg, None, &["orders"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_fail_fast_and_limits_states_and_release_match_service_bus() {
    let cfg = keyed(
        EmulatorConfig::new()
            .with_queue("events", QueueConfig::new().with_requires_session(true))
            .with_queue("plain", QueueConfig::new()),
    );
    run("fidelity.py", cfg, None, &["events", "plain"]).await;
}
