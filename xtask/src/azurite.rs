//! `cargo xtask test`: Azurite, the Azure Storage emulator, for the claim-check tests on
//! Azure Blob.
//!
//! The npm package `azurite`, pinned by `xtask/azurite/package-lock.json`, is installed with
//! `npm ci --ignore-scripts` into `<target-dir>/azurite` (once, again only when the lock
//! changes). Its blob service alone (`azurite-blob`) runs on 127.0.0.1 on a free port, in
//! memory, with its telemetry off, under `sh` as a watchdog that stops it when its stdin
//! closes (when xtask exits for any reason). The tests get its account URL in
//! `QUEUE_TEST_AZURITE_BLOB_ENDPOINT` (`http://127.0.0.1:<port>/devstoreaccount1`, the
//! well-known development account). Without npm this is a skip note, except under `CI`,
//! where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::background::{Server, Spec};
use crate::cmd::{self, Failure};

const PACKAGE: &str = include_str!("../azurite/package.json");
const LOCK: &str = include_str!("../azurite/package-lock.json");

/// How long azurite-blob may take to answer its first request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `azurite-blob` under the watchdog.
#[derive(Debug)]
pub(crate) struct Azurite(Server);

impl Azurite {
    /// Installs Azurite if needed and starts its blob service; `None` when npm is missing
    /// outside CI.
    pub(crate) fn start(target: &Path) -> Result<Option<Self>, Failure> {
        let Some(dir) = ensure_installed(target)? else {
            return Ok(None);
        };
        let bin = dir.join("node_modules/.bin/azurite-blob");
        let log = target.join("xtask").join("azurite-blob.log");
        let command = |port: u16| {
            let port = port.to_string();
            let args = [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port,
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ];
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(crate::redis::WATCHDOG)
                .arg("azurite-watchdog")
                .arg(&bin)
                .args(args)
                .current_dir(&dir);
            (command, format!("{} {}", bin.display(), args.join(" ")))
        };
        Server::start(&Spec {
            name: "azurite-blob",
            log: &log,
            startup_timeout: STARTUP_TIMEOUT,
            command: &command,
            ready: crate::servers::http_answers,
        })
        .map(|s| Some(Self(s)))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// The account URL the tests get in `QUEUE_TEST_AZURITE_BLOB_ENDPOINT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/devstoreaccount1", self.0.port)
    }

    /// Stops azurite-blob (see [`Server::stop`]).
    pub(crate) fn stop(self) {
        self.0.stop();
    }
}

/// `npm ci` of the pinned Azurite into `<target>/azurite`, unless the same lock is there.
fn ensure_installed(target: &Path) -> Result<Option<PathBuf>, Failure> {
    cmd::NpmInstall {
        name: "Azurite",
        needed_by: "the claim-check tests on Azure Blob",
        package: PACKAGE,
        lock: LOCK,
        marker: "node_modules/.bin/azurite-blob",
    }
    .ensure(&target.join("azurite"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azurite_is_pinned_exactly() {
        let deps = PACKAGE
            .split("\"dependencies\"")
            .nth(1)
            .and_then(|d| d.split('}').next())
            .expect("dependencies");
        let version = deps
            .split("\"azurite\":")
            .nth(1)
            .expect("azurite is a dependency")
            .trim()
            .trim_end_matches(|c: char| c.is_whitespace() || c == ',')
            .trim_matches('"');
        assert!(
            !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.'),
            "not pinned: {version}"
        );
        assert!(LOCK.contains("\"node_modules/azurite\""));
    }
}
