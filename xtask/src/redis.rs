//! `cargo xtask test`: a Redis server for the shared replay store's tests.
//!
//! Debian's `redis-server` is installed when missing (`apt-get update && apt-get install -y
//! redis-server`, as root, as on a brand-new CI machine), started on 127.0.0.1 on a free
//! port with persistence off, waited for until it answers `PING`, handed to the tests as
//! `QUEUE_TEST_REDIS_URL`, and stopped at the end. It runs under `sh` as a watchdog that
//! stops it when its stdin closes, which happens when xtask exits for any reason, so no
//! server outlives the run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::background::{Server, Spec};
use crate::cmd::Failure;

/// How long redis-server may take to answer its first `PING`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts the server given as `$@`, then stops it (TERM, then KILL) when stdin closes.
pub(crate) const WATCHDOG: &str = r#""$@" & pid=$!
trap '' INT
cat >/dev/null
kill "$pid" 2>/dev/null
for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.5; done
kill -9 "$pid" 2>/dev/null
"#;

/// A running `redis-server` under the watchdog.
#[derive(Debug)]
pub(crate) struct Redis(Server);

impl Redis {
    /// Installs redis-server if needed and starts it on a free 127.0.0.1 port.
    pub(crate) fn start(log: &Path) -> Result<Self, Failure> {
        let server = ensure_installed()?;
        let command = |port: u16| {
            let port = port.to_string();
            let args = [
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ];
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(WATCHDOG)
                .arg("redis-watchdog")
                .arg(&server)
                .args(args);
            (command, format!("{} {}", server.display(), args.join(" ")))
        };
        Server::start(&Spec {
            name: "redis-server",
            log,
            startup_timeout: STARTUP_TIMEOUT,
            command: &command,
            ready: answers_ping,
        })
        .map(Self)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// The URL the tests get in `QUEUE_TEST_REDIS_URL`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.0.port)
    }

    /// Stops redis-server (see [`Server::stop`]).
    pub(crate) fn stop(self) {
        self.0.stop();
    }
}

/// The path of `redis-server`, installing Debian's package when it is missing.
fn ensure_installed() -> Result<PathBuf, Failure> {
    if let Some(found) = find_server() {
        return Ok(found);
    }
    if !is_root() {
        return Err(Failure::new(
            "redis-server is not installed; install it with `sudo apt-get install -y redis-server` \
             (cargo xtask test installs it itself when run as root, as in CI)",
        ));
    }
    println!("redis-server not found: installing Debian's package");
    for args in [
        &["update"][..],
        &["install", "-y", "--no-install-recommends", "redis-server"][..],
    ] {
        println!("$ apt-get {}", args.join(" "));
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| Failure::new(format!("could not run apt-get: {e}")))?;
        if !status.success() {
            return Err(Failure::new(format!(
                "apt-get {} failed with {status}",
                args.join(" ")
            )));
        }
    }
    find_server().ok_or_else(|| {
        Failure::new("apt-get installed redis-server but no redis-server binary was found")
    })
}

fn find_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// True when something on `127.0.0.1:port` answers `PING` with `+PONG`.
fn answers_ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"+PONG"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_probe_needs_a_pong() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 6];
            let _ = s.read_exact(&mut buf);
            let _ = s.write_all(b"-ERR no\r\n");
        });
        assert!(!answers_ping(port));
        server.join().expect("server thread");
    }
}
