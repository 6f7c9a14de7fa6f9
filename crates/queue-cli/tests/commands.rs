//! Every `queue` command, in-process on the in-memory provider (one provider shared by the
//! commands, as a broker would be), plus the binary itself on a configuration file. The
//! binary against SQS and Service Bus is in `end_to_end.rs`.

use std::{process::Command as Process, sync::Arc, time::Duration};

use clap::Parser;
use queue_cli::{Cli, CliError};
use queue_runtime::{
    DeadLetterReason, Message, QueueName, QueueProvider, QueueSpec, ReceiveOptions,
    SharedQueueProvider, memory::InMemoryProvider,
};

const CANARY: &str = "CANARY-cli-91c2";

async fn queue_cmd(
    provider: &SharedQueueProvider,
    args: &[&str],
    stdin: &[u8],
) -> Result<String, CliError> {
    let cli = Cli::try_parse_from(std::iter::once("queue").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    let body = stdin.to_vec();
    queue_cli::run(
        &cli.command,
        provider.as_ref(),
        &queue(),
        move || Ok(body),
        &mut out,
    )
    .await?;
    Ok(String::from_utf8(out).unwrap())
}

fn queue() -> QueueName {
    QueueName::new("ops").unwrap()
}

async fn provider() -> SharedQueueProvider {
    let p: SharedQueueProvider = Arc::new(InMemoryProvider::new());
    p.create_queue(&queue(), &QueueSpec::default())
        .await
        .unwrap();
    p
}

/// Sends `n` messages and dead-letters each with a reason.
async fn dead_letters(p: &SharedQueueProvider, n: usize) {
    for i in 0..n {
        p.send(
            &queue(),
            Message::new(format!("{{\"n\":{i}}}")).with_attribute("github-event", "push"),
        )
        .await
        .unwrap();
        let got = p
            .receive(&queue(), ReceiveOptions::new(1, Duration::from_secs(1)))
            .await
            .unwrap();
        p.dead_letter(
            &got[0].receipt,
            DeadLetterReason::new("UndecodableBody", "not JSON"),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn check_and_stats_report_access_capabilities_and_depth() {
    let p = provider().await;
    let out = queue_cmd(&p, &["check"], b"").await.unwrap();
    assert!(out.contains("ok: memory queue `ops` is reachable"), "{out}");
    assert!(out.contains("duplicate detection"), "{out}");
    dead_letters(&p, 2).await;
    let out = queue_cmd(&p, &["stats"], b"").await.unwrap();
    assert!(
        out.lines()
            .any(|l| l.contains("dead letters") && l.contains(" 2 ")),
        "{out}"
    );
    // Stats released what it looked at: the dead letters are still there.
    let out = queue_cmd(&p, &["dlq", "list"], b"").await.unwrap();
    assert!(out.contains("2 dead letter(s) shown"), "{out}");

    let missing = QueueName::new("nope").unwrap();
    let cli = Cli::try_parse_from(["queue", "check"]).unwrap();
    let err = queue_cli::run(
        &cli.command,
        p.as_ref(),
        &missing,
        || Ok(vec![]),
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CliError::Queue(_)), "{err}");
}

#[tokio::test]
async fn send_from_stdin_or_a_file_and_peek_it_back() {
    let p = provider().await;
    let out = queue_cmd(
        &p,
        &[
            "send",
            "--id",
            "evt-1",
            "--attr",
            "github-event=push",
            "--attr",
            "k=v",
        ],
        b"{\"a\":1}",
    )
    .await
    .unwrap();
    assert_eq!(out.trim(), "sent evt-1 to `ops`");
    let file = std::env::temp_dir().join(format!("queue-cli-{}.json", std::process::id()));
    std::fs::write(&file, b"{\"b\":2}").unwrap();
    queue_cmd(
        &p,
        &[
            "send",
            "--file",
            file.to_str().unwrap(),
            "--session",
            "octo/repo#7",
        ],
        b"",
    )
    .await
    .unwrap();
    std::fs::remove_file(&file).ok();
    assert!(matches!(
        queue_cmd(&p, &["send", "--session", "has space"], b"x").await,
        Err(CliError::Queue(_))
    ));

    // Peek changes delivery counts, so it asks first.
    assert!(matches!(
        queue_cmd(&p, &["peek"], b"").await,
        Err(CliError::NeedsYes { .. })
    ));
    let out = queue_cmd(&p, &["peek", "--yes"], b"").await.unwrap();
    assert!(out.contains("evt-1"), "{out}");
    assert!(
        out.contains("octo/repo#7"),
        "the session message is shown too: {out}"
    );
    assert!(out.contains("2 message(s) shown"), "{out}");
    // Peeked messages are still there to be processed.
    let got = p
        .receive(
            &queue(),
            ReceiveOptions::new(10, Duration::from_millis(100)),
        )
        .await
        .unwrap();
    assert_eq!(got[0].message_id.as_str(), "evt-1");
    assert_eq!(
        got[0].message.attributes.get("k").map(String::as_str),
        Some("v")
    );
}

#[tokio::test]
async fn dead_letters_are_listed_shown_redriven_and_purged() {
    let p = provider().await;
    dead_letters(&p, 5).await;
    let out = queue_cmd(&p, &["dlq", "list"], b"").await.unwrap();
    assert_eq!(out.matches("UndecodableBody").count(), 5, "{out}");

    let id = p
        .receive_dead_letters(&queue(), ReceiveOptions::new(1, Duration::from_secs(1)))
        .await
        .unwrap();
    let first = id[0].message_id.to_string();
    p.abandon(&id[0].receipt, None).await.unwrap();
    let out = queue_cmd(&p, &["dlq", "show", &first], b"").await.unwrap();
    assert!(out.contains(&format!("message id:  {first}")), "{out}");
    assert!(out.contains("description: not JSON"), "{out}");
    assert!(out.contains("attribute:   github-event = push"), "{out}");
    assert!(out.contains("{\"n\":"), "{out}");
    assert!(matches!(
        queue_cmd(&p, &["dlq", "show", "no-such-id"], b"").await,
        Err(CliError::Usage(_))
    ));

    assert!(matches!(
        queue_cmd(&p, &["dlq", "redrive"], b"").await,
        Err(CliError::NeedsYes { .. })
    ));
    let out = queue_cmd(&p, &["dlq", "redrive", "--limit", "2", "--yes"], b"")
        .await
        .unwrap();
    assert!(out.contains("moved 2 of 2"), "{out}");
    let back = p
        .receive(
            &queue(),
            ReceiveOptions::new(10, Duration::from_millis(200)),
        )
        .await
        .unwrap();
    assert_eq!(back.len(), 2, "redriven messages are in the queue again");

    assert!(matches!(
        queue_cmd(&p, &["dlq", "purge"], b"").await,
        Err(CliError::NeedsYes { .. })
    ));
    let out = queue_cmd(&p, &["dlq", "list"], b"").await.unwrap();
    assert!(
        out.contains("3 dead letter(s) shown"),
        "purge without --yes deleted nothing: {out}"
    );
    let out = queue_cmd(&p, &["dlq", "purge", "--yes"], b"")
        .await
        .unwrap();
    assert!(out.contains("deleted 3 dead letter(s)"), "{out}");
    let out = queue_cmd(&p, &["dlq", "list"], b"").await.unwrap();
    assert!(out.contains("0 dead letter(s) shown"), "{out}");
}

fn binary(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Process::new(env!("CARGO_BIN_EXE_queue"));
    cmd.args(args).env_remove("QUEUE_RUNTIME_CONFIG");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("QUEUE_RUNTIME__")) {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_binary_reads_the_runtimes_config_file_and_never_prints_secrets() {
    let dir = std::env::temp_dir().join(format!("queue-cli-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let memory = dir.join("memory.yaml");
    std::fs::write(&memory, "queue: ops\nprovider:\n  kind: memory\n").unwrap();
    // A memory broker lives in one process: the CLI's own is empty, and `check` says so.
    let (code, out, err) = binary(&["--config", memory.to_str().unwrap(), "check"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("queue `ops` does not exist on memory"),
        "{err}"
    );

    let (code, _, err) = binary(&["--config", memory.to_str().unwrap(), "dlq", "purge"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--yes"), "{err}");

    // A Service Bus connection string with a canary key, pointing nowhere: the failure is
    // reported without the secret.
    let bus = dir.join("bus.toml");
    std::fs::write(
        &bus,
        "queue = \"ops\"\n[provider]\nkind = \"service-bus\"\n",
    )
    .unwrap();
    let conn = format!(
        "Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=k;SharedAccessKey={CANARY};UseDevelopmentEmulator=true"
    );
    let (code, out, err) = binary(
        &["--config", bus.to_str().unwrap(), "check"],
        &[("QUEUE_RUNTIME__PROVIDER__CONNECTION_STRING", &conn)],
    );
    assert_ne!(code, 0);
    assert!(
        !out.contains(CANARY) && !err.contains(CANARY),
        "secret printed: {out}{err}"
    );

    let (code, _, err) = binary(
        &[
            "--config",
            dir.join("missing.toml").to_str().unwrap(),
            "check",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("missing.toml") && err.contains("does not exist"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
