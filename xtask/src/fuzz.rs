//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/fuzz_targets/` for a bounded time.
//!
//! cargo-fuzz needs a nightly toolchain (sanitizer flags). When `fuzz/`, nightly or
//! cargo-fuzz is missing this fails and says why; `--allow-missing` turns exactly those
//! three cases into a loud "NOT RUN" with exit code 0 (for machines with only stable Rust).
//! A crash, or any other failure, always fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::cmd::{self, CARGO_FUZZ, Ctx, Failure};

#[derive(Debug)]
pub(crate) struct FuzzArgs {
    pub(crate) seconds: u64,
    pub(crate) targets: Vec<String>,
    pub(crate) allow_missing: bool,
}

pub(crate) fn fuzz(ctx: &Ctx, args: &FuzzArgs) -> Result<(), Failure> {
    cmd::section("fuzz: cargo-fuzz targets, bounded time");
    let missing = |why: String| -> Result<(), Failure> {
        if args.allow_missing {
            println!("fuzz: NOT RUN: {why} (--allow-missing given, so this is not an error)");
            Ok(())
        } else {
            Err(Failure::new(format!(
                "{why} (pass --allow-missing to accept not fuzzing)"
            )))
        }
    };

    let fuzz_dir = ctx.root.join("fuzz");
    let targets = match select_targets(&fuzz_dir, &args.targets)? {
        Some(targets) => targets,
        None => {
            return missing(format!(
                "no fuzz targets in {}/fuzz_targets/",
                fuzz_dir.display()
            ));
        }
    };
    let Some(nightly) = nightly_version() else {
        return missing(
            "cargo-fuzz needs a nightly toolchain and `rustup run nightly rustc` does not work \
             (install it with `rustup toolchain install nightly`)"
                .to_owned(),
        );
    };
    println!("using {nightly}");
    if let Err(e) = ctx.ensure_tool(CARGO_FUZZ) {
        return missing(e.to_string());
    }

    let target_dir = ctx.target_dir()?.join("fuzz");
    let logs = ctx.target_dir()?.join("xtask");
    std::fs::create_dir_all(&logs)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", logs.display())))?;
    let mut results = Vec::new();
    for target in &targets {
        let log = logs.join(format!("fuzz-{target}.log"));
        let outcome = run_target(ctx, &fuzz_dir, &target_dir, target, args.seconds, &log);
        results.push((target.clone(), outcome));
    }
    summarize(&results, args.seconds, &nightly)
}

/// The targets to run: the ones asked for (each must exist), else every target found.
/// `None` when `fuzz/fuzz_targets/` holds none.
fn select_targets(fuzz_dir: &Path, wanted: &[String]) -> Result<Option<Vec<String>>, Failure> {
    let available = fuzz_targets(fuzz_dir);
    if available.is_empty() {
        return Ok(None);
    }
    if let Some(unknown) = wanted.iter().find(|w| !available.contains(w)) {
        return Err(Failure::new(format!(
            "no fuzz target `{unknown}`; available: {}",
            available.join(", ")
        )));
    }
    Ok(Some(if wanted.is_empty() {
        available
    } else {
        wanted.to_vec()
    }))
}

/// The nightly toolchain's `rustc --version`, if `rustup run nightly` works.
fn nightly_version() -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Prints one line per target and fails if any target failed.
fn summarize(
    results: &[(String, Result<TargetRun, Failure>)],
    seconds: u64,
    nightly: &str,
) -> Result<(), Failure> {
    println!("\nfuzz summary ({seconds}s budget per target, {nightly}):");
    let mut failed = 0;
    for (target, outcome) in results {
        match outcome {
            Ok(r) => println!(
                "  {target:<24} ok  fuzzed {}s, {} executions ({:.0}s wall incl. build)  {}",
                r.fuzz_seconds.as_deref().unwrap_or("?"),
                r.executions.as_deref().unwrap_or("?"),
                r.seconds,
                r.log.display()
            ),
            Err(e) => {
                failed += 1;
                println!("  {target:<24} FAILED  {e}");
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "{failed} of {} fuzz target(s) failed",
            results.len()
        )))
    }
}

#[derive(Debug)]
struct TargetRun {
    /// Wall time of the whole `cargo fuzz run`, including the build.
    seconds: f64,
    /// libFuzzer's own count of seconds spent fuzzing.
    fuzz_seconds: Option<String>,
    executions: Option<String>,
    log: PathBuf,
}

fn run_target(
    ctx: &Ctx,
    fuzz_dir: &Path,
    target_dir: &Path,
    target: &str,
    seconds: u64,
    log: &Path,
) -> Result<TargetRun, Failure> {
    let file = std::fs::File::create(log)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", log.display())))?;
    let file_err = file
        .try_clone()
        .map_err(|e| Failure::new(format!("cannot reopen {}: {e}", log.display())))?;
    let mut command = Command::new("rustup");
    command
        .current_dir(&ctx.root)
        .args([
            "run",
            "nightly",
            "cargo",
            "fuzz",
            "run",
            target,
            "--fuzz-dir",
        ])
        .arg(fuzz_dir)
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .stdout(file)
        .stderr(file_err);
    println!("$ {}  > {}", cmd::display(&command), log.display());
    let started = Instant::now();
    let status = command
        .status()
        .map_err(|e| Failure::new(format!("could not run rustup: {e}")))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!("--- last lines of {}:\n{}", log.display(), tail.join("\n"));
        return Err(Failure::new(format!(
            "exited with {status} after {seconds:.0}s (crash inputs go to fuzz/artifacts/{target}/; log {})",
            log.display()
        )));
    }
    Ok(TargetRun {
        seconds,
        fuzz_seconds: fuzzing_seconds(&text),
        executions: final_stat(&text, "stat::number_of_executed_units:"),
        log: log.to_path_buf(),
    })
}

/// The `S` of libFuzzer's closing line `Done N runs in S second(s)`.
fn fuzzing_seconds(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix("Done ")?;
        let (_, secs) = rest.split_once(" runs in ")?;
        secs.split_whitespace().next().map(str::to_owned)
    })
}

/// The names of `fuzz/fuzz_targets/*.rs`, sorted.
fn fuzz_targets(fuzz_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(fuzz_dir.join("fuzz_targets"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    out.sort();
    out
}

/// The value after `key` on libFuzzer's final statistics lines.
fn final_stat(log: &str, key: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "#1024 pulse cov: 10\nDone 52345 runs in 11 second(s)\nstat::number_of_executed_units: 52345\nstat::peak_rss_mb: 41\n";
        assert_eq!(
            final_stat(log, "stat::number_of_executed_units:").as_deref(),
            Some("52345")
        );
        assert_eq!(
            final_stat("nothing", "stat::number_of_executed_units:"),
            None
        );
    }

    #[test]
    fn lists_targets_from_the_fuzz_targets_directory() {
        let dir = std::env::temp_dir().join(format!("xtask-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("fuzz_targets")).expect("mkdir");
        for f in ["b_names.rs", "a_envelope.rs", "notes.txt"] {
            std::fs::write(dir.join("fuzz_targets").join(f), "").expect("write");
        }
        assert_eq!(fuzz_targets(&dir), ["a_envelope", "b_names"]);
        assert!(fuzz_targets(&dir.join("absent")).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
