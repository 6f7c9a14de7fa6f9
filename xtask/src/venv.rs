//! Python virtual environments under the target directory: the test servers' venv
//! (`test-venv`, see `servers.rs`) and the prebuilt cargo tools' venv (`tools-venv`, see
//! `cmd.rs`). Each is created once and reinstalled only when its requirements text changes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::cmd::{self, Failure};

/// A Python virtual environment made by `python3 -m venv`.
#[derive(Debug)]
pub(crate) struct Venv {
    pub(crate) dir: PathBuf,
    pub(crate) python: PathBuf,
}

impl Venv {
    /// Creates the venv at `dir` unless it exists (Python from `QUEUE_PYTHON`, default `python3`).
    pub(crate) fn create(dir: &Path) -> Result<Self, Failure> {
        let python = dir.join("bin").join("python");
        if !python.exists() {
            let base = std::env::var_os("QUEUE_PYTHON").unwrap_or_else(|| "python3".into());
            println!("creating the Python virtual environment {}", dir.display());
            let out = Command::new(&base)
                .args(["-m", "venv"])
                .arg(dir)
                .output()
                .map_err(|e| {
                    Failure::new(format!(
                        "could not run `{}` to create {}: {e}. Install Python 3 (or set QUEUE_PYTHON)",
                        base.to_string_lossy(),
                        dir.display()
                    ))
                })?;
            if !out.status.success() {
                return Err(Failure::new(format!(
                    "`{} -m venv {}` failed (on Debian/Ubuntu: apt-get install python3-venv):\n{}",
                    base.to_string_lossy(),
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            python,
        })
    }

    /// The venv's `bin` directory (its console scripts and binaries).
    pub(crate) fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// `pip install <pip_args> -r <requirements>` unless the same requirements text was
    /// installed before (a stamp file records it) and `ready` still holds.
    pub(crate) fn install(
        &self,
        requirements: &str,
        pip_args: &[&str],
        ready: impl Fn(&Self) -> bool,
    ) -> Result<(), Failure> {
        let stamp = self.dir.join("xtask-requirements.txt");
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == requirements) && ready(self) {
            println!("reusing the Python venv {}", self.dir.display());
            return Ok(());
        }
        println!(
            "installing {} into {} (from PyPI; first run only)",
            requirement_names(requirements).join(", "),
            self.dir.display()
        );
        let req = self.dir.join("xtask-requirements.pending.txt");
        std::fs::write(&req, requirements)
            .map_err(|e| Failure::new(format!("cannot write {}: {e}", req.display())))?;
        let mut pip = Command::new(&self.python);
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-input"])
        .args(pip_args)
        .arg("-r")
        .arg(&req);
        let started = Instant::now();
        let out = pip
            .output()
            .map_err(|e| Failure::new(format!("could not run `{}`: {e}", cmd::display(&pip))))?;
        if !out.status.success() {
            return Err(Failure::new(format!(
                "`{}` failed (it needs to reach PyPI):\n{}{}",
                cmd::display(&pip),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        std::fs::rename(&req, &stamp)
            .map_err(|e| Failure::new(format!("cannot write {}: {e}", stamp.display())))?;
        println!(
            "Python packages installed in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The requirement lines of a requirements file, without comments, hashes or continuations.
pub(crate) fn requirement_names(requirements: &str) -> Vec<&str> {
    requirements
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("--"))
        .map(|l| l.trim_end_matches('\\').trim())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_names_skip_comments_and_hashes() {
        let text = "# c\nfoo==1 \\\n    --hash=sha256:ab \\\n    --hash=sha256:cd\nbar[x]==2\n\n";
        assert_eq!(requirement_names(text), ["foo==1", "bar[x]==2"]);
    }
}
