//! `cargo xtask deny` and `cargo xtask audit`, online or with a local advisory database.
//!
//! Offline (`--advisory-db <dir>` or `QUEUE_ADVISORY_DB`):
//! - cargo-audit reads a plain directory: `cargo audit --db <dir> --no-fetch`.
//! - cargo-deny only reads databases it cloned itself into `<db-path>/<name>-<hash of url>`,
//!   and it wants a git repository. So a plain directory is first copied to
//!   `<target-dir>/advisory-db-git/<name>` and committed there once (reused while the source is
//!   unchanged); cargo-deny then gets a derived copy of `deny.toml` whose `[advisories]` names
//!   that repository as a `file://` URL with a `db-path` under the target directory, so
//!   `cargo deny check` clones or fetches the database from local disk, never the network.
//!   See docs/adr/0002-offline-advisory-database.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use crate::cmd::{self, CARGO_AUDIT, CARGO_DENY, Ctx, Failure};

/// `cargo deny check` over the whole workspace with `deny.toml`.
pub(crate) fn deny(ctx: &Ctx, advisory_db: Option<&Path>) -> Result<(), Failure> {
    cmd::section("deny: cargo-deny (advisories, bans, licenses, sources)");
    ctx.ensure_tool(CARGO_DENY)?;
    let config = ctx.root.join("deny.toml");
    let Some(db) = advisory_db else {
        return ctx.run(&mut deny_cmd(ctx, &config, &["check"]));
    };
    let db = LocalDb::open(db)?;
    let target = ctx.target_dir()?;
    let repo = db.git_repository(&target)?;
    let derived = target.join("xtask").join("deny-offline.toml");
    let text = std::fs::read_to_string(&config)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", config.display())))?;
    let offline = offline_deny_config(
        &text,
        &repo,
        &target.join("advisory-db-git").join("cargo-deny"),
    )?;
    write_file(&derived, &offline)?;
    println!(
        "deny: using the advisory database at {} through {}",
        repo.display(),
        derived.display()
    );
    // cargo-deny clones (first run) or fetches (later runs) the database from the file://
    // repository: local disk only. (`--offline` would also stop it from downloading crates,
    // which `cargo metadata` needs on a fresh machine; crates come from crates.io as usual.)
    ctx.run(&mut deny_cmd(ctx, &derived, &["check"]))
}

/// `cargo deny [--locked] --config <config> <args>`.
fn deny_cmd(ctx: &Ctx, config: &Path, args: &[&str]) -> Command {
    let mut cmd = ctx.cargo();
    cmd.arg("deny");
    if ctx.locked {
        cmd.arg("--locked");
    }
    cmd.arg("--config").arg(config).args(args);
    cmd
}

/// `cargo audit` over `Cargo.lock` with `audit.toml`.
///
/// cargo-audit only reads its configuration from `./.cargo/audit.toml` (or the cargo home),
/// so the root `audit.toml` is copied to `<target-dir>/xtask/audit/.cargo/audit.toml` and
/// cargo-audit runs from there with `--file <root>/Cargo.lock`.
pub(crate) fn audit(ctx: &Ctx, advisory_db: Option<&Path>) -> Result<(), Failure> {
    cmd::section("audit: cargo-audit");
    ctx.ensure_tool(CARGO_AUDIT)?;
    let target = ctx.target_dir()?;
    let workdir = target.join("xtask").join("audit");
    let config = ctx.root.join("audit.toml");
    let text = std::fs::read_to_string(&config)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", config.display())))?;
    write_file(&workdir.join(".cargo").join("audit.toml"), &text)?;
    let mut cmd = ctx.cargo();
    cmd.current_dir(&workdir)
        .args(["audit", "--file"])
        .arg(ctx.root.join("Cargo.lock"));
    if let Some(db) = advisory_db {
        let db = LocalDb::open(db)?;
        cmd.arg("--db").arg(&db.dir).arg("--no-fetch");
    }
    println!(
        "audit: configuration {} (copied to {})",
        config.display(),
        workdir.display()
    );
    ctx.run(&mut cmd)
}

/// A local copy of the RustSec advisory database.
#[derive(Debug)]
struct LocalDb {
    dir: PathBuf,
}

impl LocalDb {
    fn open(dir: &Path) -> Result<Self, Failure> {
        let dir = std::path::absolute(dir)
            .and_then(|d| d.canonicalize())
            .map_err(|e| Failure::new(format!("advisory database `{}`: {e}", dir.display())))?;
        if !dir.join("crates").is_dir() {
            return Err(Failure::new(format!(
                "`{}` does not look like the RustSec advisory database (no crates/ directory)",
                dir.display()
            )));
        }
        let snapshot = std::fs::read_to_string(dir.join("SNAPSHOT")).unwrap_or_default();
        let snapshot = snapshot.trim();
        let age = first_iso_date(snapshot).and_then(days_since);
        match age {
            Some(days) => println!(
                "advisory database: {}: {snapshot} ({days} days old)",
                dir.display()
            ),
            None if !snapshot.is_empty() => {
                println!("advisory database: {}: {snapshot}", dir.display())
            }
            None => println!(
                "advisory database: {} (no SNAPSHOT file, age unknown)",
                dir.display()
            ),
        }
        if let Some(days) = age.filter(|d| *d > 90) {
            println!(
                "warning: this advisory database snapshot is {days} days old; advisories published since then are not checked"
            );
        }
        Ok(Self { dir })
    }

    /// A git repository with this database's content: the directory itself when it is
    /// one, otherwise a committed copy under `<target>/advisory-db-git/`.
    fn git_repository(&self, target: &Path) -> Result<PathBuf, Failure> {
        if self.dir.join(".git").exists() {
            return Ok(self.dir.clone());
        }
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "advisory-db".to_owned());
        let dest = target.join("advisory-db-git").join(&name);
        let stamp_path = dest.join(".git").join("xtask-source");
        let fingerprint = fingerprint(&self.dir)?;
        if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == fingerprint) {
            println!(
                "advisory database: reusing the git copy at {}",
                dest.display()
            );
            return Ok(dest);
        }
        println!(
            "advisory database: making a git copy of {} at {}",
            self.dir.display(),
            dest.display()
        );
        if dest.exists() {
            std::fs::remove_dir_all(&dest)
                .map_err(|e| Failure::new(format!("cannot remove {}: {e}", dest.display())))?;
        }
        copy_tree(&self.dir, &dest)?;
        let git = |args: &[&str]| -> Result<(), Failure> {
            let mut cmd = Command::new("git");
            cmd.arg("-C")
                .arg(&dest)
                .args(["-c", "user.name=xtask", "-c", "user.email=xtask@localhost"])
                .args([
                    "-c",
                    "commit.gpgsign=false",
                    "-c",
                    "core.hooksPath=/dev/null",
                ])
                .args(args)
                .env_remove("GIT_DIR")
                .env_remove("GIT_WORK_TREE")
                .env_remove("GIT_INDEX_FILE");
            let out = cmd
                .output()
                .map_err(|e| Failure::new(format!("could not run git (is it installed?): {e}")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(Failure::new(format!(
                    "`{}` failed: {}",
                    cmd::display(&cmd),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        };
        git(&["init", "--quiet"])?;
        // cargo-deny clones the `main` branch.
        git(&["checkout", "--quiet", "-b", "main"])?;
        git(&["add", "--all"])?;
        git(&[
            "commit",
            "--quiet",
            "-m",
            &format!("local snapshot of {}", self.dir.display()),
        ])?;
        write_file(&stamp_path, &fingerprint)?;
        Ok(dest)
    }
}

/// Whole days from `date` to today (UTC).
fn days_since(date: (i64, u32, u32)) -> Option<i64> {
    let today = crate::tidy::today()?;
    Some(crate::tidy::days_from_civil(today) - crate::tidy::days_from_civil(date))
}

/// The first `YYYY-MM-DD` in `s`.
pub(crate) fn first_iso_date(s: &str) -> Option<(i64, u32, u32)> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(9)).find_map(|i| crate::tidy::parse_date(s.get(i..i + 10)?))
}

/// Identifies the content of a directory tree: path, file count, total size, newest mtime.
fn fingerprint(dir: &Path) -> Result<String, Failure> {
    let (mut files, mut bytes, mut newest) = (0u64, 0u64, 0u128);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in read_dir(&d)? {
            let meta = entry
                .metadata()
                .map_err(|e| Failure::new(format!("{}: {e}", entry.path().display())))?;
            if meta.is_dir() {
                if entry.file_name() != ".git" {
                    stack.push(entry.path());
                }
            } else {
                files += 1;
                bytes += meta.len();
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                newest = newest.max(mtime);
            }
        }
    }
    Ok(format!(
        "source={}\nfiles={files}\nbytes={bytes}\nnewest_mtime_ns={newest}\n",
        dir.display()
    ))
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, Failure> {
    std::fs::read_dir(dir)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", dir.display())))
}

/// Copies regular files and directories (not `.git`), making the copies writable.
fn copy_tree(from: &Path, to: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(to)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", to.display())))?;
    for entry in read_dir(from)? {
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(|e| Failure::new(format!("{}: {e}", src.display())))?;
        if kind.is_dir() {
            if entry.file_name() != ".git" {
                copy_tree(&src, &dst)?;
            }
        } else if kind.is_file() {
            let bytes = std::fs::read(&src)
                .map_err(|e| Failure::new(format!("cannot read {}: {e}", src.display())))?;
            std::fs::write(&dst, bytes)
                .map_err(|e| Failure::new(format!("cannot write {}: {e}", dst.display())))?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<(), Failure> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::write(path, text)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))
}

/// `deny.toml` with `db-path` and `db-urls` set right after the `[advisories]` header.
pub(crate) fn offline_deny_config(
    text: &str,
    repo: &Path,
    db_path: &Path,
) -> Result<String, Failure> {
    if crate::tidy::toml_sets_key(text, "advisories", "db-path")
        || crate::tidy::toml_sets_key(text, "advisories", "db-urls")
    {
        return Err(Failure::new(
            "deny.toml sets db-path or db-urls itself; remove them (xtask sets them for --advisory-db)",
        ));
    }
    // cargo-deny insists on a URL with a domain name, and the URL standard drops `localhost`
    // from file URLs; git ignores the host of a file:// URL, so a reserved, never-resolvable
    // name (RFC 2606 `.invalid`) keeps both content.
    let url = format!("file://local.invalid{}", repo.display());
    let inserted = format!(
        "# set by cargo xtask for --advisory-db\ndb-path = {}\ndb-urls = [{}]\n",
        toml_string(&db_path.display().to_string()),
        toml_string(&url)
    );
    let mut out = String::with_capacity(text.len() + inserted.len());
    let mut done = false;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if !done && line.trim() == "[advisories]" {
            out.push_str(&inserted);
            done = true;
        }
    }
    if !done {
        out.push_str("\n[advisories]\n");
        out.push_str(&inserted);
    }
    Ok(out)
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_config_sets_db_right_after_the_advisories_header() {
        let text = "[graph]\nall-features = true\n\n[advisories]\nyanked = \"deny\"\n\n[bans]\n";
        let out =
            offline_deny_config(text, Path::new("/t/db \"x\""), Path::new("/t/dbs")).expect("ok");
        assert!(out.contains(
            "[advisories]\n# set by cargo xtask for --advisory-db\ndb-path = \"/t/dbs\"\ndb-urls = [\"file://local.invalid/t/db \\\"x\\\"\"]\nyanked = \"deny\"\n"
        ), "{out}");
        assert!(out.starts_with("[graph]\nall-features = true\n"));
    }

    #[test]
    fn offline_config_refuses_a_deny_toml_that_sets_the_db_itself() {
        let text = "[advisories]\ndb-path = \"~/.cargo/advisory-dbs\"\n";
        assert!(offline_deny_config(text, Path::new("/a"), Path::new("/b")).is_err());
    }

    #[test]
    fn finds_the_snapshot_date() {
        assert_eq!(
            first_iso_date("snapshot of rustsec/advisory-db at bf5c0d2 2026-08-21T08:28:40+02:00"),
            Some((2026, 8, 21))
        );
        assert_eq!(first_iso_date("no date here"), None);
    }

    #[test]
    fn a_plain_directory_becomes_a_reusable_git_repository() {
        let base = std::env::temp_dir().join(format!("xtask-advisory-{}", std::process::id()));
        let src = base.join("advisory-db");
        write_file(&src.join("crates/foo/RUSTSEC-2000-0001.md"), "x").expect("write");
        let target = base.join("target");
        let db = LocalDb::open(&src).expect("looks like a db");
        let repo = db.git_repository(&target).expect("git copy");
        assert!(repo.join(".git").is_dir());
        assert!(repo.join("crates/foo/RUSTSEC-2000-0001.md").is_file());
        let head = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["rev-parse", "--abbrev-ref", "HEAD"])
            .output()
            .expect("git runs");
        assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), "main");
        // Unchanged source: reused (a marker file inside survives).
        write_file(&repo.join(".git/marker"), "kept").expect("write");
        db.git_repository(&target).expect("reuse");
        assert!(repo.join(".git/marker").exists());
        // Changed source: rebuilt.
        write_file(&src.join("crates/foo/RUSTSEC-2000-0002.md"), "yy").expect("write");
        db.git_repository(&target).expect("rebuild");
        assert!(!repo.join(".git/marker").exists());
        assert!(repo.join("crates/foo/RUSTSEC-2000-0002.md").is_file());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_directory_without_crates_is_refused() {
        assert!(LocalDb::open(Path::new(env!("CARGO_MANIFEST_DIR"))).is_err());
    }
}
