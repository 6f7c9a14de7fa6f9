//! Interop with the official Python SDK (`azure-servicebus`) through the emulator, both
//! ways: every property intact, and interleaved sessions delivered in order per session.
//!
//! The interpreter comes from `QUEUE_TEST_PYTHON` (a venv with `azure-servicebus`; `cargo
//! xtask test` sets it). Unset: each test prints a skip note and passes, except when `CI`
//! is set, where it fails.

mod common;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use queue_core::{
    Message, MessageId, QueueName, QueueProvider, ReceiveOptions, SessionId, SessionSelector,
};
use servicebus_emulator::{Emulator, QueueConfig};

fn python() -> Option<String> {
    match std::env::var("QUEUE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            if queue_core::ci::is_ci() {
                panic!(
                    "CI is set but QUEUE_TEST_PYTHON is not: the Python interop tests must run in CI"
                );
            }
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipping Python SDK interop test: QUEUE_TEST_PYTHON is not set");
            }
            None
        }
    }
}

/// Runs `interop.py <cmd> <conn> <args..>` and returns its stdout; fails the test with
/// the script's output if it exits non-zero.
async fn run(py: &str, emu: &Emulator, cmd: &str, args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(py)
            .arg(script)
            .arg(cmd)
            .arg(common::connection_string(emu))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("interop.py {cmd} timed out"))
    .unwrap_or_else(|e| panic!("cannot run {py}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "interop.py {cmd} failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn q(s: &str) -> QueueName {
    QueueName::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sends_rust_receives_every_property() {
    let Some(py) = python() else { return };
    let emu = common::start(vec![("p2r".into(), QueueConfig::new())]).await;
    let p = common::provider(&emu);
    run(&py, &emu, "send", &["p2r"]).await;
    let got = p
        .receive(&q("p2r"), ReceiveOptions::new(1, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.body().as_ref(), b"\x00\x9f\x92\x96 from python");
    assert_eq!(m.message_id.as_str(), "py-1");
    assert_eq!(m.message.correlation_id.as_deref(), Some("corr-py"));
    assert_eq!(m.message.subject.as_deref(), Some("py-subject"));
    assert_eq!(
        m.message.content_type.as_deref(),
        Some("application/x-test")
    );
    assert_eq!(
        m.message.attributes,
        BTreeMap::from([("event".into(), "push".into()), ("n".into(), "7".into())])
    );
    assert_eq!(m.message.time_to_live, Some(Duration::from_secs(600)));
    assert_eq!(m.delivery_count, 1);
    assert!(m.sequence_number.is_some() && m.locked_until.is_some());
    p.complete(&m.receipt).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sends_python_receives_every_property() {
    let Some(py) = python() else { return };
    let emu = common::start(vec![("r2p".into(), QueueConfig::new())]).await;
    let p = common::provider(&emu);
    let msg = Message::new(vec![0u8, 1, 2, 255])
        .with_message_id(MessageId::new("rs-1").unwrap())
        .with_correlation_id("corr-rs")
        .with_content_type("application/x-rust")
        .with_subject("pull_request.opened")
        .with_attribute("event", "pull_request")
        .with_attribute("delivery", "42")
        .with_time_to_live(Duration::from_secs(300));
    p.send(&q("r2p"), msg).await.unwrap();
    let out = run(&py, &emu, "receive", &["r2p", "1"]).await;
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(v["body_hex"], "000102ff");
    assert_eq!(v["message_id"], "rs-1");
    assert_eq!(v["correlation_id"], "corr-rs");
    assert_eq!(v["content_type"], "application/x-rust");
    assert_eq!(v["subject"], "pull_request.opened");
    assert_eq!(v["session_id"], serde_json::Value::Null);
    assert_eq!(
        v["application_properties"],
        serde_json::json!({"event": "pull_request", "delivery": "42"})
    );
    assert_eq!(v["ttl_secs"], 300.0);
    assert_eq!(v["has_enqueued_time"], true);
    assert_eq!(v["has_locked_until"], true);
    assert!(v["sequence_number"].as_i64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_interleaves_sessions_rust_receives_them_in_order() {
    let Some(py) = python() else { return };
    let emu = common::start(vec![(
        "ps".into(),
        QueueConfig::new().with_requires_session(true),
    )])
    .await;
    let p = common::provider(&emu);
    const PER: usize = 20;
    run(
        &py,
        &emu,
        "send_sessions",
        &["ps", "alpha,beta,gamma", "20"],
    )
    .await;
    let mut seen = BTreeMap::new();
    for _ in 0..3 {
        let r = p
            .accept_session(&q("ps"), SessionSelector::Next, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("a session with messages");
        let s = r.session_id().as_str().to_owned();
        let mut bodies = Vec::new();
        while bodies.len() < PER {
            let got = r
                .receive(ReceiveOptions::new(7, Duration::from_secs(5)))
                .await
                .unwrap();
            assert!(!got.is_empty(), "session {s} stalled at {}", bodies.len());
            for m in got {
                assert_eq!(m.session_id().map(SessionId::as_str), Some(s.as_str()));
                bodies.push(String::from_utf8_lossy(m.body()).into_owned());
                r.complete(&m.receipt).await.unwrap();
            }
        }
        r.close().await.unwrap();
        let expected: Vec<String> = (0..PER).map(|i| format!("{s}:{i}")).collect();
        assert_eq!(bodies, expected, "session {s} out of order");
        seen.insert(s, ());
    }
    assert_eq!(seen.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_interleaves_sessions_python_receives_them_in_order() {
    let Some(py) = python() else { return };
    let emu = common::start(vec![(
        "rs".into(),
        QueueConfig::new().with_requires_session(true),
    )])
    .await;
    let p = common::provider(&emu);
    let sessions = ["one", "two", "three"];
    const PER: usize = 15;
    let mut batch = Vec::new();
    for i in 0..PER {
        for s in sessions {
            batch
                .push(Message::new(format!("{s}:{i}")).with_session_id(SessionId::new(s).unwrap()));
        }
    }
    p.send_batch(&q("rs"), batch).await.unwrap();
    let out = run(&py, &emu, "receive_sessions", &["rs", "3", "15"]).await;
    let v: BTreeMap<String, Vec<String>> = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v.len(), 3);
    for s in sessions {
        let expected: Vec<String> = (0..PER).map(|i| format!("{s}:{i}")).collect();
        assert_eq!(v[s], expected, "session {s} out of order");
    }
}
