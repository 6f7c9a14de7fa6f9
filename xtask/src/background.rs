//! A test server run in the background under a stop-on-exit watchdog (moto, Redis): started
//! on a free 127.0.0.1 port (three tries, since a port the OS picked can be taken before the
//! server binds it), waited for until it answers, stopped when the tests end. The watchdog
//! stops the server when its stdin closes, which happens when xtask exits for any reason.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::Failure;

/// How to start one kind of server.
pub(crate) struct Spec<'a> {
    /// The server's name in messages (`moto_server`, `redis-server`).
    pub(crate) name: &'static str,
    /// Where its stdout and stderr go.
    pub(crate) log: &'a Path,
    /// How long it may take to answer after it was started.
    pub(crate) startup_timeout: Duration,
    /// The watchdog command for a port (stdio is set by [`Server::start`]) and the command
    /// line to show for it.
    pub(crate) command: &'a dyn Fn(u16) -> (Command, String),
    /// True once the server answers on the port.
    pub(crate) ready: fn(u16) -> bool,
}

/// A running server under its watchdog.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    name: &'static str,
    pub(crate) port: u16,
}

impl Server {
    /// Starts the server on a free port and waits until it answers.
    pub(crate) fn start(spec: &Spec<'_>) -> Result<Self, Failure> {
        if let Some(parent) = spec.log.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::new(format!("cannot create {}: {e}", parent.display())))?;
        }
        let mut last_error = None;
        for _attempt in 0..3 {
            let mut server = Self::spawn(spec, free_port()?)?;
            match server.wait_until_ready(spec) {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.stop();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Failure::new(format!("{} did not start", spec.name))))
    }

    fn spawn(spec: &Spec<'_>, port: u16) -> Result<Self, Failure> {
        let log = spec.log;
        let log_file = std::fs::File::create(log)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| Failure::new(format!("cannot reopen {}: {e}", log.display())))?;
        let (mut command, shown) = (spec.command)(port);
        println!("$ {shown}  (under a stop-on-exit watchdog)");
        let child = command
            .stdin(Stdio::piped())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| Failure::new(format!("could not start {}: {e}", spec.name)))?;
        Ok(Self {
            child,
            name: spec.name,
            port,
        })
    }

    /// The watchdog's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_until_ready(&mut self, spec: &Spec<'_>) -> Result<(), Failure> {
        let started = Instant::now();
        let log = spec.log;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Failure::new(format!(
                    "{} exited with {status} before answering; its log ({}):\n{}",
                    self.name,
                    log.display(),
                    tail(log, 30)
                )));
            }
            if (spec.ready)(self.port) {
                println!(
                    "{} answers on port {} after {:.1}s",
                    self.name,
                    self.port,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if started.elapsed() > spec.startup_timeout {
                return Err(Failure::new(format!(
                    "{} did not answer on 127.0.0.1:{} within {}s; its log ({}):\n{}",
                    self.name,
                    self.port,
                    spec.startup_timeout.as_secs(),
                    log.display(),
                    tail(log, 30)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Closes the watchdog's stdin (which stops the server), waits, kills as a last resort.
    pub(crate) fn stop(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        println!("test servers: stopped {} (port {})", self.name, self.port);
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, Failure> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Failure::new(format!("cannot find a free port on 127.0.0.1: {e}")))
}

/// The last `lines` lines of a log file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
