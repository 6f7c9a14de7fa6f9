//! The `queue` binary, run as a separate process, against real brokers: SQS (moto, when
//! `cargo xtask test` sets `QUEUE_TEST_SQS_ENDPOINT`) and the Service Bus emulator on its TLS
//! port (started in-process). Both run the same scenario: check, send from a file and from
//! stdin, peek, dead-letter list / show / redrive / purge, stats. Destructive commands refuse
//! without `--yes`, and no output ever holds the secret (a canary in the configuration).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use queue_runtime::{
    DeadLetterReason, QueueName, QueueProvider, QueueRuntimeConfig, QueueSpec, ReceiveOptions,
    SharedQueueProvider,
};
use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};

/// The secret of every configuration below.
const CANARY: &str = "CANARY-cli-e2e-7d4a";

/// One broker under test: how to point the binary at it, and a provider for setting up.
struct Broker {
    name: &'static str,
    queue: QueueName,
    /// Arguments before the command (`--config FILE`, `--test-ca-cert FILE`).
    args: Vec<String>,
    env: Vec<(String, String)>,
    provider: SharedQueueProvider,
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
}

/// What one run of the binary did.
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Broker {
    /// Runs `queue <args>` with `stdin` and checks that nothing printed holds the secret.
    fn run(&self, args: &[&str], stdin: &[u8]) -> Run {
        self.run_with(&self.env, args, stdin)
    }

    /// [`Broker::run`] with other environment variables.
    fn run_with(&self, env: &[(String, String)], args: &[&str], stdin: &[u8]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_queue"));
        cmd.args(&self.args)
            .args(args)
            .env_remove("QUEUE_RUNTIME_CONFIG");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("QUEUE_RUNTIME__")) {
            cmd.env_remove(k);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let output = child.wait_with_output().unwrap();
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&output.stdout).into_owned(),
            err: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert!(
            !run.out.contains(CANARY) && !run.err.contains(CANARY),
            "`queue {args:?}` printed the secret:\n{}{}",
            run.out,
            run.err
        );
        run
    }

    /// Runs a command that must succeed and returns its standard output.
    fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let run = self.run(args, stdin);
        assert_eq!(
            run.code, 0,
            "`queue {args:?}` failed:\n{}{}",
            run.out, run.err
        );
        run.out
    }

    /// Runs a destructive command without `--yes`: exit code 2, nothing done.
    fn refused(&self, args: &[&str]) {
        let run = self.run(args, b"");
        assert_eq!(
            run.code, 2,
            "`queue {args:?}` without --yes:\n{}{}",
            run.out, run.err
        );
        assert!(run.err.contains("--yes"), "{}", run.err);
    }

    /// Receives `n` messages of the queue in-process and dead-letters them with a reason.
    fn dead_letter(&self, n: usize) {
        self.rt.block_on(async {
            let mut done = 0;
            while done < n {
                let options = ReceiveOptions::new(n - done, Duration::from_secs(2));
                let got = self.provider.receive(&self.queue, options).await.unwrap();
                assert!(
                    !got.is_empty(),
                    "{done} of {n} messages came back after peek"
                );
                for m in got {
                    let reason = DeadLetterReason::new("UndecodableBody", "not JSON");
                    self.provider.dead_letter(&m.receipt, reason).await.unwrap();
                    done += 1;
                }
            }
        });
    }

    /// Receives and completes what is in the main queue; returns the message ids.
    fn drain(&self) -> Vec<String> {
        self.rt.block_on(async {
            let options = ReceiveOptions::new(10, Duration::from_secs(2));
            let got = self.provider.receive(&self.queue, options).await.unwrap();
            for m in &got {
                self.provider.complete(&m.receipt).await.unwrap();
            }
            got.iter().map(|m| m.message_id.to_string()).collect()
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("queue-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path_arg(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// The scenario every broker runs.
fn scenario(b: &Broker) {
    let q = b.queue.as_str();
    let out = b.ok(&["check"], b"");
    let reachable = format!("ok: {} queue `{q}` is reachable", b.name);
    assert!(out.contains(&reachable), "{out}");
    assert!(out.contains("dead-letter queue"), "{out}");

    let file = b.dir.join("event.json");
    std::fs::write(&file, br#"{"action":"opened","number":42}"#).unwrap();
    let send = [
        "send",
        "--file",
        file.to_str().unwrap(),
        "--id",
        "evt-1",
        "--attr",
        "github-event=pull_request",
    ];
    assert_eq!(b.ok(&send, b"").trim(), format!("sent evt-1 to `{q}`"));
    let stdin = br#"{"ref":"refs/heads/main"}"#;
    let out = b.ok(
        &["send", "--id", "evt-2", "--attr", "github-event=push"],
        stdin,
    );
    assert_eq!(out.trim(), format!("sent evt-2 to `{q}`"));

    b.refused(&["peek"]);
    let out = b.ok(&["peek", "--yes"], b"");
    assert!(out.contains("evt-1") && out.contains("evt-2"), "{out}");
    assert!(out.contains("2 message(s) shown"), "{out}");

    b.dead_letter(2);
    dead_letter_commands(b);
}

/// list, show, stats, redrive, purge on two dead letters `evt-1` and `evt-2`.
fn dead_letter_commands(b: &Broker) {
    let q = b.queue.as_str();
    let out = b.ok(&["dlq", "list"], b"");
    assert_eq!(out.matches("UndecodableBody").count(), 2, "{out}");
    assert!(out.contains("2 dead letter(s) shown"), "{out}");
    let out = b.ok(&["dlq", "show", "evt-1"], b"");
    for line in [
        "message id:  evt-1",
        "reason:      UndecodableBody",
        "description: not JSON",
        "attribute:   github-event = pull_request",
        r#"{"action":"opened","number":42}"#,
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }
    let missing = b.run(&["dlq", "show", "no-such-id"], b"");
    assert_eq!(missing.code, 2, "{}", missing.err);
    let out = b.ok(&["stats"], b"");
    let depth = out
        .lines()
        .any(|l| l.contains("dead letters") && l.contains(" 2 "));
    assert!(depth, "{out}");

    b.refused(&["dlq", "redrive"]);
    b.refused(&["dlq", "purge"]);
    let out = b.ok(&["dlq", "list"], b"");
    assert!(
        out.contains("2 dead letter(s) shown"),
        "refusals changed nothing: {out}"
    );
    let out = b.ok(&["dlq", "redrive", "--limit", "1", "--yes"], b"");
    assert!(
        out.contains(&format!("moved 1 of 1 dead letter(s) back to `{q}`")),
        "{out}"
    );
    assert_eq!(
        b.drain().len(),
        1,
        "the redriven message is in the queue again"
    );
    let out = b.ok(&["dlq", "purge", "--yes"], b"");
    assert!(
        out.contains(&format!("deleted 1 dead letter(s) of `{q}`")),
        "{out}"
    );
    let out = b.ok(&["dlq", "list"], b"");
    assert!(out.contains("0 dead letter(s) shown"), "{out}");
}

/// SQS through a configuration file holding the canary as the secret key; moto accepts any.
#[test]
fn every_command_works_on_sqs_moto_when_available() {
    let test = "every_command_works_on_sqs_moto_when_available";
    let starts = "cargo xtask test starts moto";
    let Some(endpoint) = queue_runtime::ci::test_server("QUEUE_TEST_SQS_ENDPOINT", test, starts)
    else {
        return; // skipped locally (said on stderr); a failure under CI
    };
    let dir = temp_dir("sqs");
    let queue = QueueName::new(format!("cli-e2e-{}", std::process::id())).unwrap();
    let text = format!(
        "queue = \"{queue}\"\n[provider]\nkind = \"sqs\"\nregion = \"us-east-1\"\n\
         endpoint = \"{endpoint}\"\naccess_key_id = \"test\"\nsecret_access_key = \"{CANARY}\"\n"
    );
    let file = dir.join("bot.toml");
    std::fs::write(&file, &text).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let provider = rt.block_on(async {
        let config = QueueRuntimeConfig::from_toml_str(&text).unwrap();
        let p = queue_runtime::build_provider(&config.provider)
            .await
            .unwrap();
        p.create_queue(&queue, &QueueSpec::default()).await.unwrap();
        p
    });
    let broker = Broker {
        name: "sqs",
        queue: queue.clone(),
        args: vec!["--config".into(), path_arg(&file)],
        env: vec![],
        provider,
        rt,
        dir,
    };
    scenario(&broker);
    broker
        .rt
        .block_on(broker.provider.delete_queue(&queue))
        .unwrap();
}

fn service_bus(dir: PathBuf, emu: &Emulator, rt: tokio::runtime::Runtime) -> Broker {
    let ca = dir.join("emulator-ca.pem");
    std::fs::write(&ca, emu.ca_pem().unwrap()).unwrap();
    let connection = emu.tls_connection_string(true).unwrap();
    let provider = queue_runtime::azure::ServiceBusProvider::builder()
        .with_connection_string(&connection)
        .dangerous_add_test_root_certificate(emu.ca_pem().unwrap().as_bytes())
        .build()
        .unwrap();
    Broker {
        name: "service-bus",
        queue: QueueName::new("ops").unwrap(),
        args: vec!["--test-ca-cert".into(), path_arg(&ca)],
        env: vec![
            ("QUEUE_RUNTIME__PROVIDER__KIND".into(), "service-bus".into()),
            (
                "QUEUE_RUNTIME__PROVIDER__CONNECTION_STRING".into(),
                connection,
            ),
            ("QUEUE_RUNTIME__QUEUE".into(), "ops".into()),
        ],
        provider: std::sync::Arc::new(provider),
        rt,
        dir,
    }
}

/// `send --session` and `peek` on a queue that requires sessions (chosen with `--queue`).
fn sessions(b: &Broker) {
    fn on<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [&["--queue", "ops-sessions"], args].concat()
    }
    for (id, session) in [
        ("pr-1", "octo-org/widgets#42"),
        ("pr-2", "octo-org/widgets#7"),
    ] {
        let args = on(&["send", "--id", id, "--session", session]);
        assert_eq!(
            b.ok(&args, b"{}").trim(),
            format!("sent {id} to `ops-sessions`")
        );
    }
    let out = b.ok(&on(&["peek", "--yes"]), b"");
    assert!(out.contains("2 message(s) shown"), "{out}");
    for text in ["pr-1", "octo-org/widgets#42", "pr-2", "octo-org/widgets#7"] {
        assert!(out.contains(text), "no `{text}` in:\n{out}");
    }
}

/// Service Bus over TLS, with the canary as the namespace key (in the connection string).
#[test]
fn every_command_works_on_the_service_bus_emulator_over_tls() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = EmulatorConfig::new()
        .with_key("RootManageSharedAccessKey", CANARY)
        .with_queue("ops", QueueConfig::new())
        .with_queue(
            "ops-sessions",
            QueueConfig::new().with_requires_session(true),
        );
    let emu = rt.block_on(Emulator::start_tls(config)).unwrap();
    let broker = service_bus(temp_dir("sb"), &emu, rt);
    scenario(&broker);
    sessions(&broker);

    // A wrong key (another canary) is refused, named, and not printed.
    let wrong = emu
        .tls_connection_string(true)
        .unwrap()
        .replace(CANARY, "CANARY-cli-wrong-key");
    let mut env = broker.env.clone();
    env[1].1 = wrong;
    let run = broker.run_with(&env, &["check"], b"");
    assert_eq!(run.code, 1, "{}{}", run.out, run.err);
    assert!(!run.err.contains("CANARY-cli-wrong-key"), "{}", run.err);
    drop(broker);
    drop(emu);
}
