//! Shared set-up of the tests against an SQS-compatible server (moto in CI).
//!
//! The server is named by `QUEUE_TEST_SQS_ENDPOINT` (e.g. `http://127.0.0.1:5000`).
//! Credentials and region come from the usual `AWS_*` variables; when those are unset the
//! tests use the emulator defaults (`test`/`test`, `us-east-1`), so a plain
//! `moto_server` is enough.
#![allow(dead_code, unreachable_pub, clippy::print_stderr)]

use queue_aws::{SqsProvider, StaticCredentials};
use queue_core::{MessageId, QueueName};

/// The endpoint variable, shared with `cargo xtask test` and `.ci/run`.
pub const ENDPOINT_VAR: &str = "QUEUE_TEST_SQS_ENDPOINT";

fn in_ci() -> bool {
    queue_core::ci::is_ci()
}

/// The endpoint, or `None` after printing why the test is skipped. Panics in CI.
pub fn endpoint(test: &str) -> Option<String> {
    match std::env::var(ENDPOINT_VAR) {
        Ok(e) if !e.trim().is_empty() => Some(e),
        _ => {
            if in_ci() {
                panic!(
                    "{test}: {ENDPOINT_VAR} is not set but CI is: start `moto_server -H 127.0.0.1 -p <port>` and export {ENDPOINT_VAR}=http://127.0.0.1:<port>"
                );
            }
            eprintln!(
                "{test} skipped: {ENDPOINT_VAR} is not set (start `moto_server -H 127.0.0.1 -p 5000` and export {ENDPOINT_VAR}=http://127.0.0.1:5000)"
            );
            None
        }
    }
}

/// A provider builder pointed at the test server.
pub fn builder(endpoint: &str) -> queue_aws::SqsBuilder {
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "us-east-1".to_owned());
    let mut b = SqsProvider::builder()
        .with_endpoint(endpoint)
        .with_region(region);
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        // Keep the default chain from probing instance metadata on a laptop.
        b = b.with_credentials(StaticCredentials::new("test".into(), "test".into()));
    }
    b
}

/// The provider under test, or `None` (skip) when no server is configured.
pub async fn provider(test: &str) -> Option<SqsProvider> {
    let endpoint = endpoint(test)?;
    Some(builder(&endpoint).build().await.unwrap_or_else(|e| {
        panic!("{ENDPOINT_VAR} is set but the SQS provider failed to build: {e}")
    }))
}

/// A fresh queue name: `sqs-<stem>-<random>[.fifo]`.
pub fn unique(stem: &str, fifo: bool) -> QueueName {
    let random: String = MessageId::random()
        .as_str()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    let suffix = if fifo { ".fifo" } else { "" };
    QueueName::new(format!("sqs-{stem}-{random}{suffix}")).expect("valid test queue name")
}
