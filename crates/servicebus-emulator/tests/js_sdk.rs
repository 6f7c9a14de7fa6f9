//! Drives the emulator binary with the official JavaScript SDK (`@azure/service-bus` on
//! rhea), through Node's built-in test runner, over plaintext AMQP, AMQP over TLS (the
//! generated CA trusted through `NODE_EXTRA_CA_CERTS`) and AMQP over WebSockets over TLS.
//!
//! `QUEUE_TEST_NODE_DIR` names a folder whose `node_modules` holds the pinned packages of
//! `tests/js/package-lock.json` (`cargo xtask test` installs them under the target dir).
//! Unset: each test prints a skip note and passes, except under `CI`, where it fails.
//! Every scenario has a 60 s timeout (`node --test-timeout`), the whole run 240 s.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const BIN: &str = env!("CARGO_BIN_EXE_servicebus-emulator");
const KEY: &str = "js-emulator-key-Q2FuYXJ5";
const CONFIG: &str = r#"key_name = "RootManageSharedAccessKey"
key = "js-emulator-key-Q2FuYXJ5"
[queues.basic]
[queues.peek]
[queues.sched]
[queues.renew]
lock_duration_secs = 5
[queues.batch]
[queues.plain]
[queues.sessions]
requires_session = true
lock_duration_secs = 30
[queues.sessions2]
requires_session = true
"#;

fn node_dir() -> Option<PathBuf> {
    match std::env::var_os("QUEUE_TEST_NODE_DIR") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but QUEUE_TEST_NODE_DIR is not: the JavaScript SDK scenarios must run in CI"
            );
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipping JavaScript SDK scenarios: QUEUE_TEST_NODE_DIR is not set");
            }
            None
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Plain,
    Tls,
    Wss,
}

/// The emulator binary with every listener, and what it printed.
struct Running {
    child: Child,
    plain_conn: String,
    tls_conn: String,
    wss_port: u16,
    ca: PathBuf,
    config: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.ca);
        let _ = std::fs::remove_file(&self.config);
    }
}

async fn start_binary(tag: &str) -> Running {
    let tmp = std::env::temp_dir();
    let config = tmp.join(format!("sbemu-js-{}-{tag}.toml", std::process::id()));
    let ca = tmp.join(format!("sbemu-js-{}-{tag}-ca.pem", std::process::id()));
    std::fs::write(&config, CONFIG).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args([
            "--port",
            "0",
            "--tls-port",
            "0",
            "--wss-port",
            "0",
            "--show-key",
        ])
        .arg("--tls-generate")
        .arg(&ca)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the emulator binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    while out.len() < 5 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the emulator prints its listeners in time")
            .unwrap()
            .expect("the emulator printed its listeners");
        out.push(line);
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let wss_port = out[3].rsplit(':').next().unwrap().parse().unwrap();
    Running {
        child,
        plain_conn: out[1].clone(),
        tls_conn: out[4].clone(),
        wss_port,
        ca,
        config,
    }
}

/// The TAP summary counts `# pass N` / `# fail N` / `# cancelled N`.
fn count(tap: &str, what: &str) -> Option<u32> {
    tap.lines()
        .find_map(|l| l.strip_prefix(&format!("# {what} "))?.trim().parse().ok())
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

async fn run(mode: Mode) {
    let Some(dir) = node_dir() else { return };
    let emu = start_binary(&format!("{mode:?}")).await;
    // ESM resolves packages from the script's folder upwards: run a copy next to node_modules.
    let scripts = dir.join("scenarios");
    std::fs::create_dir_all(&scripts).unwrap();
    let script = scripts.join(format!("scenarios-{mode:?}.test.mjs"));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/scenarios.test.mjs");
    std::fs::copy(&source, &script).unwrap();
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-timeout=60000", "--test-reporter=tap"])
        .arg(&script)
        .kill_on_drop(true);
    match mode {
        Mode::Plain => cmd.env("SBEMU_CONN", &emu.plain_conn),
        Mode::Tls => cmd
            .env("SBEMU_CONN", &emu.tls_conn)
            .env("NODE_EXTRA_CA_CERTS", &emu.ca),
        Mode::Wss => cmd
            .env(
                "SBEMU_CONN",
                format!(
                    "Endpoint=sb://localhost:{}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={KEY}",
                    emu.wss_port
                ),
            )
            .env("SBEMU_WS", "1")
            .env("NODE_EXTRA_CA_CERTS", &emu.ca),
    };
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("JavaScript SDK scenarios ({mode:?}) hung past 240 s"))
        .expect("node runs (Node 20+ must be on PATH)");
    let tap = String::from_utf8_lossy(&out.stdout);
    let (pass, fail, cancelled) = (
        count(&tap, "pass").unwrap_or(0),
        count(&tap, "fail").unwrap_or(0),
        count(&tap, "cancelled").unwrap_or(0),
    );
    let total = count(&tap, "tests").unwrap_or(0);
    let green = out.status.success() && fail == 0 && cancelled == 0 && pass > 0 && pass == total;
    let verdict = if green { "passed" } else { "FAILED" };
    let line = format!(
        "@azure/service-bus scenarios.test.mjs over {mode:?}: {pass}/{total} scenarios: {verdict}"
    );
    report(&line);
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{line}");
    }
    assert!(
        green,
        "{line}\n--- stdout\n{tap}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_sdk_over_plaintext() {
    run(Mode::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_sdk_over_tls_trusting_the_generated_ca() {
    run(Mode::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_sdk_over_websockets_with_tls() {
    run(Mode::Wss).await;
}
