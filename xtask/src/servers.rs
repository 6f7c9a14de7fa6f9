//! `cargo xtask test`: the test servers and the workspace tests.
//!
//! 1. A Python virtual environment at `<target-dir>/test-venv` with the pinned packages of
//!    `xtask/requirements-test.txt` (installed once, again only when that file changes).
//! 2. `moto_server -H 127.0.0.1 -p <free port>` in the background, waited for until it
//!    answers HTTP, for the SQS provider's tests (`QUEUE_TEST_SQS_ENDPOINT`).
//! 3. `cargo test --workspace --all-features --no-fail-fast` with the endpoint, dummy AWS credentials and
//!    `QUEUE_TEST_PYTHON` (the venv's Python with `azure-servicebus`, which the Service Bus
//!    emulator's tests use to drive the emulator they start in-process), `QUEUE_TEST_NODE_DIR`
//!    (`<target-dir>/js-sdk`, where `npm ci` installed the JavaScript SDK pinned by
//!    `crates/servicebus-emulator/tests/js/package-lock.json`, for the scenarios that drive
//!    the emulator binary) and `QUEUE_TEST_SDK_SUMMARY` (the file those scenarios report
//!    to; printed after the tests as the SDKs' pass counts).
//!    Also Redis (`QUEUE_TEST_REDIS_URL`, see `redis.rs`) and Azurite's blob service
//!    (`QUEUE_TEST_AZURITE_BLOB_ENDPOINT`, see `azurite.rs`).
//! 4. moto is stopped afterwards, also when the tests fail. moto runs under a small Python
//!    watchdog that stops it when its stdin closes, which happens when xtask exits for any
//!    reason (including Ctrl-C or a kill), so no server outlives the run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::background::{Server, Spec};
use crate::cmd::{self, Ctx, Failure};
use crate::venv::Venv;

const REQUIREMENTS: &str = include_str!("../requirements-test.txt");

/// Stops the child (moto_server) when its stdin reaches EOF, then exits with its status.
const WATCHDOG: &str = r#"
import signal, subprocess, sys, threading
signal.signal(signal.SIGINT, signal.SIG_IGN)
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
def watch():
    try:
        sys.stdin.buffer.read()
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
threading.Thread(target=watch, daemon=True).start()
sys.exit(child.wait())
"#;

/// How long moto may take to answer its first request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

pub(crate) fn test(ctx: &Ctx, no_servers: bool, passthrough: &[String]) -> Result<(), Failure> {
    let mut cargo = cargo_test(ctx, passthrough);

    if no_servers {
        cmd::section("test: without test servers (--no-servers)");
        println!(
            "test servers: none started; tests that need QUEUE_TEST_SQS_ENDPOINT or QUEUE_TEST_PYTHON skip unless you set them"
        );
        return ctx.run(&mut cargo);
    }

    cmd::section("test: test servers");
    let target = ctx.target_dir()?;
    let venv = ensure_venv(&target)?;
    let log = target.join("xtask").join("moto_server.log");
    let moto = Moto::start(&venv, &log)?;
    let redis = crate::redis::Redis::start(&target.join("xtask").join("redis-server.log"))?;
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let aws_dir = target.join("xtask").join("no-aws-config");
    println!("test servers:");
    println!(
        "  SQS:         moto_server at {endpoint} (pid {}, log {})",
        moto.pid(),
        log.display()
    );
    println!(
        "  Service Bus: the emulator's tests start crates/servicebus-emulator in-process and drive it with the official Python SDK at {}",
        venv.python.display()
    );
    println!(
        "  Redis:       redis-server at {} (pid {})",
        redis.url(),
        redis.pid()
    );
    let azurite = crate::azurite::Azurite::start(&target)?;
    if let Some(azurite) = &azurite {
        println!(
            "  Azure Blob:  azurite-blob at {} (pid {})",
            azurite.endpoint(),
            azurite.pid()
        );
        cargo.env("QUEUE_TEST_AZURITE_BLOB_ENDPOINT", azurite.endpoint());
    }
    let js_sdk = ensure_js_sdk(&target)?;
    // One file per run: several `cargo xtask test` runs may share a target dir.
    let sdk_summary = target
        .join("xtask")
        .join(format!("sdk-scenarios-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&sdk_summary);
    cargo.env("QUEUE_TEST_SDK_SUMMARY", &sdk_summary);
    if let Some(dir) = &js_sdk {
        println!(
            "  Service Bus: the emulator's tests also run its binary under the official JavaScript SDK from {}",
            dir.display()
        );
        cargo.env("QUEUE_TEST_NODE_DIR", dir);
    }
    cargo
        .env("QUEUE_TEST_REDIS_URL", redis.url())
        .env("QUEUE_TEST_SQS_ENDPOINT", &endpoint)
        .env("QUEUE_TEST_PYTHON", &venv.python);
    dummy_aws_env(&mut cargo, &aws_dir);
    cmd::section("test: cargo test");
    let result = ctx.run(&mut cargo);
    moto.stop();
    redis.stop();
    if let Some(azurite) = azurite {
        azurite.stop();
    }
    print_sdk_summary(&sdk_summary);
    let _ = std::fs::remove_file(&sdk_summary);
    result
}

/// `cargo test --workspace --all-features --no-fail-fast [--locked] <passthrough>`
/// (`--workspace` only when no package is named).
fn cargo_test(ctx: &Ctx, passthrough: &[String]) -> Command {
    let mut cargo = ctx.cargo();
    cargo.arg("test");
    if !passthrough
        .iter()
        .any(|a| a == "-p" || a == "--package" || a.starts_with("--package="))
    {
        cargo.arg("--workspace");
    }
    cargo.arg("--all-features");
    // Run every test binary even when one fails, so the output shows every failure and
    // every count (the exit code still reports the failure).
    if !passthrough.iter().any(|a| a == "--no-fail-fast") {
        cargo.arg("--no-fail-fast");
    }
    if ctx.locked {
        cargo.arg("--locked");
    }
    cargo.args(passthrough);
    cargo
}

/// Dummy AWS credentials and region for moto; never the instance metadata service (a
/// non-loopback address) nor the developer's own AWS profile.
fn dummy_aws_env(cargo: &mut Command, aws_dir: &Path) {
    cargo
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", aws_dir.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", aws_dir.join("credentials"));
}

/// The official JavaScript SDK's pinned packages (`npm ci` installs exactly the lock).
const JS_PACKAGE: &str = include_str!("../../crates/servicebus-emulator/tests/js/package.json");
const JS_LOCK: &str = include_str!("../../crates/servicebus-emulator/tests/js/package-lock.json");

/// Installs `@azure/service-bus` (pinned by the emulator's package-lock.json) into
/// `<target>/js-sdk` with `npm ci`, once (again only when the lock changes). Without Node
/// and npm this is a skip note, except under `CI`, where it fails.
fn ensure_js_sdk(target: &Path) -> Result<Option<PathBuf>, Failure> {
    cmd::NpmInstall {
        name: "the JavaScript SDK",
        needed_by: "the JavaScript SDK scenarios",
        package: JS_PACKAGE,
        lock: JS_LOCK,
        marker: "node_modules/@azure/service-bus/package.json",
    }
    .ensure(&target.join("js-sdk"))
}

/// Prints what the official-SDK scenarios reported (pass counts per SDK and transport).
fn print_sdk_summary(path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    let passed = lines.iter().filter(|l| l.ends_with(": passed")).count();
    cmd::section("test: official Service Bus SDK scenarios against the emulator");
    for l in &lines {
        println!("  {l}");
    }
    println!("  ({passed} of {} runs green)", lines.len());
}

/// Creates or reuses `<target>/test-venv` with the packages of `requirements-test.txt`.
pub(crate) fn ensure_venv(target: &Path) -> Result<Venv, Failure> {
    let venv = Venv::create(&target.join("test-venv"))?;
    venv.install(REQUIREMENTS, &[], |v| v.bin().join("moto_server").exists())?;
    Ok(venv)
}

/// `moto_server -H 127.0.0.1 -p <port>` under the Python watchdog.
struct Moto;

impl Moto {
    fn start(venv: &Venv, log: &Path) -> Result<Server, Failure> {
        let server = venv.dir.join("bin").join("moto_server");
        let command = |port: u16| {
            let mut command = Command::new(&venv.python);
            command.arg("-c").arg(WATCHDOG).arg(&server).args([
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ]);
            let shown = format!("{} -H 127.0.0.1 -p {port}", server.display());
            (command, shown)
        };
        Server::start(&Spec {
            name: "moto_server",
            log,
            startup_timeout: STARTUP_TIMEOUT,
            command: &command,
            ready: http_answers,
        })
    }
}

/// True when something on `127.0.0.1:port` answers a GET with an HTTP status line.
pub(crate) fn http_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_probe_needs_an_http_answer() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            for reply in [
                &b"SSH-2.0-nope\r\n"[..],
                &b"HTTP/1.1 404 Not Found\r\n\r\n"[..],
            ] {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                s.write_all(reply).expect("reply");
            }
        });
        assert!(!http_answers(port), "a non-HTTP answer is not ready");
        assert!(http_answers(port), "any HTTP status line is ready");
        server.join().expect("server thread");
        assert!(
            !http_answers(crate::background::free_port().expect("port")),
            "nothing listening"
        );
    }

    #[test]
    fn javascript_sdk_is_pinned_exactly() {
        // Every dependency of package.json names one exact version (no ^, ~, ranges).
        let deps = JS_PACKAGE
            .split("\"dependencies\"")
            .nth(1)
            .and_then(|d| d.split('}').next())
            .expect("dependencies");
        assert!(deps.contains("\"@azure/service-bus\": \""), "{deps}");
        for line in deps.lines().skip(1).filter(|l| l.contains(':')) {
            let version = line.rsplit(':').next().unwrap_or_default();
            let version = version.trim().trim_end_matches(',').trim_matches('"');
            assert!(
                !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.'),
                "not pinned: {line}"
            );
        }
        assert!(JS_LOCK.contains("\"node_modules/@azure/service-bus\""));
    }

    #[test]
    fn requirements_are_pinned() {
        let pins = crate::venv::requirement_names(REQUIREMENTS);
        assert!(
            pins.iter().any(|p| p.starts_with("moto[server]==")),
            "{pins:?}"
        );
        assert!(
            pins.iter().any(|p| p.starts_with("azure-servicebus==")),
            "{pins:?}"
        );
        assert!(pins.iter().all(|p| p.contains("==")), "unpinned: {pins:?}");
    }
}
