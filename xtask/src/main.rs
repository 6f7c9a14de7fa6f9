//! `cargo xtask`: the checks of the queue-runtime workspace, in one place.
//!
//! Every command drives an existing tool (`cargo`, `cargo-deny`, `cargo-audit`,
//! `cargo-fuzz`, Python's `venv`/`pip`, `moto_server`) through `std::process::Command`,
//! printing each command line before it runs it. A missing tool is an error with an
//! install hint, never a silent skip; `--install` installs it with `cargo install --locked`.
//! Run `cargo xtask help` for the list of commands.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool reports to the terminal"
)]

mod advisory;
mod azurite;
mod background;
mod cmd;
mod fuzz;
mod redis;
mod servers;
mod tidy;
mod venv;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cmd::{Ctx, Failure};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  lint    cargo fmt --check; cargo clippy -D warnings (default features, each umbrella
          feature of queue-runtime on its own, then --workspace --all-features)
  doc     cargo doc --workspace --all-features --no-deps with RUSTDOCFLAGS=-D warnings
  deny    cargo deny check (advisories, bans, licenses, sources) with deny.toml
  audit   cargo audit with audit.toml
  test    start the test servers (moto_server for SQS; Python + azure-servicebus for the
          Service Bus emulator tests), run cargo test --workspace --all-features, stop them
  fuzz    run every cargo-fuzz target in fuzz/ for a bounded time (needs nightly)
  tidy    the repository hygiene checks (also run as tests by cargo test)
  ci      lint, doc, deny, audit, test, in that order (what .ci/run and CI run)
  help    this text

options:
  --advisory-db <dir>  (deny, audit, ci) use a local copy of the RustSec advisory database
                       instead of fetching it; also env QUEUE_ADVISORY_DB
  --install            (lint, deny, audit, fuzz, ci) install missing cargo tools with
                       cargo install --locked instead of failing with a hint
  --no-servers         (test, ci) run the tests without starting any test server
  --seconds <n>        (fuzz) time budget per target, default 60
  --target <name>      (fuzz) run only this target (repeatable)
  --allow-missing      (fuzz) exit 0, saying so, when fuzz/, nightly or cargo-fuzz is missing
  -- <args>            (test) passed to cargo test

environment:
  CARGO_TARGET_DIR     target directory (the test venv lives in <target-dir>/test-venv)
  QUEUE_PYTHON         Python used to create the test venv (default python3)
  CI                   when set, cargo commands run with --locked
";

/// The parsed command line.
#[derive(Debug, Default)]
struct Args {
    command: String,
    advisory_db: Option<PathBuf>,
    install: bool,
    no_servers: bool,
    allow_missing: bool,
    fuzz_seconds: Option<u64>,
    fuzz_targets: Vec<String>,
    passthrough: Vec<String>,
}

fn parse_args(raw: impl IntoIterator<Item = String>) -> Result<Args, Failure> {
    let mut args = Args::default();
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--" => {
                args.passthrough.extend(it.by_ref());
            }
            "--advisory-db" => {
                let dir = it
                    .next()
                    .ok_or_else(|| Failure::new("--advisory-db needs a directory"))?;
                args.advisory_db = Some(PathBuf::from(dir));
            }
            "--install" => args.install = true,
            "--no-servers" => args.no_servers = true,
            "--allow-missing" => args.allow_missing = true,
            "--seconds" => {
                let n = it
                    .next()
                    .ok_or_else(|| Failure::new("--seconds needs a number"))?;
                let n = n.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Failure::new(format!("--seconds: `{n}` is not a positive number"))
                })?;
                args.fuzz_seconds = Some(n);
            }
            "--target" => {
                let t = it
                    .next()
                    .ok_or_else(|| Failure::new("--target needs a fuzz target name"))?;
                args.fuzz_targets.push(t);
            }
            "-h" | "--help" => args.command = "help".to_owned(),
            flag if flag.starts_with('-') => {
                return Err(Failure::new(format!(
                    "unknown option `{flag}` (see `cargo xtask help`)"
                )));
            }
            command if args.command.is_empty() => args.command = command.to_owned(),
            extra => {
                return Err(Failure::new(format!(
                    "unexpected argument `{extra}` (arguments for cargo test go after `--`)"
                )));
            }
        }
    }
    if args.command.is_empty() {
        args.command = "help".to_owned();
    }
    if args.advisory_db.is_none()
        && let Some(dir) = std::env::var_os("QUEUE_ADVISORY_DB").filter(|d| !d.is_empty())
    {
        args.advisory_db = Some(PathBuf::from(dir));
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    if args.command == "help" {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let ctx = match Ctx::new(args.install) {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&ctx, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask {}: FAILED: {e}", args.command);
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(ctx: &Ctx, args: &Args) -> Result<(), Failure> {
    match args.command.as_str() {
        "lint" => lint(ctx),
        "doc" => doc(ctx),
        "deny" => advisory::deny(ctx, args.advisory_db.as_deref()),
        "audit" => advisory::audit(ctx, args.advisory_db.as_deref()),
        "test" => servers::test(ctx, args.no_servers, &args.passthrough),
        "fuzz" => fuzz::fuzz(
            ctx,
            &fuzz::FuzzArgs {
                seconds: args.fuzz_seconds.unwrap_or(60),
                targets: args.fuzz_targets.clone(),
                allow_missing: args.allow_missing,
            },
        ),
        "tidy" => tidy_cmd(ctx),
        "ci" => ci(ctx, args),
        other => Err(Failure::new(format!(
            "unknown command `{other}` (see `cargo xtask help`)"
        ))),
    }
}

/// The umbrella features linted one at a time, in this order.
const UMBRELLA_FEATURES: [&str; 6] = [
    "memory",
    "aws",
    "azure",
    "security",
    "webhook",
    "claim-check",
];

fn lint(ctx: &Ctx) -> Result<(), Failure> {
    cmd::section("lint: rustfmt");
    ctx.ensure_component("rustfmt", &["fmt", "--version"])?;
    ctx.run(ctx.cargo().args(["fmt", "--all", "--", "--check"]))?;

    cmd::section("lint: clippy, default features");
    ctx.ensure_component("clippy", &["clippy", "--version"])?;
    ctx.run(
        ctx.cargo_locked(&["clippy", "--workspace", "--all-targets"])
            .args(["--", "-D", "warnings"]),
    )?;

    let manifest = ctx.root.join("crates/queue-runtime/Cargo.toml");
    match std::fs::read_to_string(&manifest) {
        Err(_) => println!(
            "lint: skipped the per-feature clippy runs: {} does not exist yet",
            manifest.display()
        ),
        Ok(text) => {
            let defined = tidy::manifest_features(&text);
            for feature in UMBRELLA_FEATURES {
                if !defined.iter().any(|f| f == feature) {
                    println!(
                        "lint: skipped umbrella feature `{feature}`: not defined in crates/queue-runtime/Cargo.toml"
                    );
                    continue;
                }
                cmd::section(&format!(
                    "lint: clippy, queue-runtime with only `{feature}`"
                ));
                ctx.run(
                    ctx.cargo_locked(&[
                        "clippy",
                        "-p",
                        "queue-runtime",
                        "--no-default-features",
                        "--features",
                        feature,
                        "--all-targets",
                    ])
                    .args(["--", "-D", "warnings"]),
                )?;
            }
        }
    }

    cmd::section("lint: clippy, --workspace --all-features");
    ctx.run(
        ctx.cargo_locked(&["clippy", "--workspace", "--all-targets", "--all-features"])
            .args(["--", "-D", "warnings"]),
    )
}

fn doc(ctx: &Ctx) -> Result<(), Failure> {
    cmd::section("doc: rustdoc with warnings as errors");
    let mut flags = std::env::var("RUSTDOCFLAGS").unwrap_or_default();
    if !flags.is_empty() {
        flags.push(' ');
    }
    flags.push_str("-D warnings");
    ctx.run(
        ctx.cargo_locked(&["doc", "--workspace", "--all-features", "--no-deps"])
            .env("RUSTDOCFLAGS", flags),
    )
}

fn tidy_cmd(ctx: &Ctx) -> Result<(), Failure> {
    cmd::section("tidy: repository hygiene");
    let problems = tidy::check_all(&ctx.root, &ctx.cargo_program);
    if problems.is_empty() {
        println!("tidy: all checks passed");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        Err(Failure::new(format!("{} tidy problem(s)", problems.len())))
    }
}

fn ci(ctx: &Ctx, args: &Args) -> Result<(), Failure> {
    type Step<'a> = (&'static str, Box<dyn Fn() -> Result<(), Failure> + 'a>);
    let steps: Vec<Step<'_>> = vec![
        ("lint", Box::new(|| lint(ctx))),
        ("doc", Box::new(|| doc(ctx))),
        (
            "deny",
            Box::new(|| advisory::deny(ctx, args.advisory_db.as_deref())),
        ),
        (
            "audit",
            Box::new(|| advisory::audit(ctx, args.advisory_db.as_deref())),
        ),
        (
            "test",
            Box::new(|| servers::test(ctx, args.no_servers, &args.passthrough)),
        ),
    ];
    let mut done = Vec::new();
    for (name, step) in &steps {
        let started = Instant::now();
        let result = step();
        done.push((*name, started.elapsed(), result.is_ok()));
        if let Err(e) = result {
            print_ci_summary(&done);
            return Err(Failure::with_code(
                format!("step `{name}`: {e}"),
                e.exit_code(),
            ));
        }
    }
    print_ci_summary(&done);
    Ok(())
}

fn print_ci_summary(done: &[(&str, std::time::Duration, bool)]) {
    println!("\nxtask ci summary:");
    for (name, took, ok) in done {
        println!(
            "  {name:<6} {:<6} {:>6.1}s",
            if *ok { "ok" } else { "FAILED" },
            took.as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, Failure> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_options_and_passthrough() {
        let a = parse(&[
            "test",
            "--no-servers",
            "--",
            "-p",
            "queue-core",
            "--",
            "--nocapture",
        ])
        .expect("valid");
        assert_eq!(a.command, "test");
        assert!(a.no_servers);
        assert_eq!(a.passthrough, ["-p", "queue-core", "--", "--nocapture"]);

        let a = parse(&["ci", "--advisory-db", "../db", "--install"]).expect("valid");
        assert_eq!(
            a.advisory_db.as_deref(),
            Some(std::path::Path::new("../db"))
        );
        assert!(a.install);

        let a =
            parse(&["fuzz", "--seconds", "5", "--target", "a", "--target", "b"]).expect("valid");
        assert_eq!(a.fuzz_seconds, Some(5));
        assert_eq!(a.fuzz_targets, ["a", "b"]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&["lint", "--bogus"]).is_err());
        assert!(parse(&["test", "stray"]).is_err());
        assert!(parse(&["deny", "--advisory-db"]).is_err());
        assert!(parse(&["fuzz", "--seconds", "0"]).is_err());
        assert!(parse(&["fuzz", "--seconds", "soon"]).is_err());
        assert_eq!(parse(&[]).expect("empty is help").command, "help");
    }
}
