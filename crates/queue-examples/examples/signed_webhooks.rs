//! Verified GitHub webhooks, signed on the queue, checked again before the handler.
//!
//! The receiving edge verifies `X-Hub-Signature-256` and turns each delivery into a message
//! (session = repository + pull request, message id = `X-GitHub-Delivery`), then sends it
//! through [`Signing`] onto a session queue with duplicate detection. A [`Processor`] with a
//! [`SignatureGate`] consumes it: a redelivered webhook is dropped by the broker, a forged
//! one never reaches the queue, and a message slipped onto the queue without a signature is
//! dead-lettered with reason `Unsigned`.
//!
//! ```text
//! cargo run -p queue-examples --features security --example signed_webhooks
//! ```
//!
//! Secrets come from `GITHUB_WEBHOOK_SECRET` and `QUEUE_SIGNING_KEYS` (see
//! `docs/security.md`); without them the example makes up demo values. It never prints them.
#![allow(clippy::print_stdout)]

use std::{sync::Arc, time::Duration};

use queue_runtime::{
    CancellationToken, Message, Outcome, Processor, ProcessorSettings, QueueName, QueueProvider,
    QueueSpec, ReceiveOptions, SharedQueueProvider, handler_fn,
    memory::InMemoryProvider,
    security::{
        DEFAULT_KEYS_ENV, KeyRing, MessageSigner, SignatureGate, Signing, WebhookHeaders,
        WebhookVerifier, generate_key,
    },
};
use secrecy::SecretString;

/// What GitHub would send: headers with the body's HMAC under the webhook secret.
fn github_delivery(secret: &str, event: &str, id: &str, body: &str) -> WebhookHeaders {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body.as_bytes()))
    );
    WebhookHeaders::from_pairs([
        ("X-Hub-Signature-256", signature.as_str()),
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", id),
    ])
    .expect("well-formed headers")
}

fn pull_request(action: &str, number: u32) -> String {
    format!(
        r#"{{"action":"{action}","pull_request":{{"number":{number}}},"repository":{{"full_name":"octo/repo"}}}}"#
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The one way to install a subscriber: SDK targets that log credentials stay capped and
    // every line is redacted (docs/security.md, "Logs").
    let _ = queue_runtime::telemetry::init_logging(queue_runtime::telemetry::LevelFilter::INFO);
    let secret =
        std::env::var("GITHUB_WEBHOOK_SECRET").unwrap_or_else(|_| "demo-webhook-secret".to_owned());
    let ring = if std::env::var_os(DEFAULT_KEYS_ENV).is_some() {
        KeyRing::from_default_env()?
    } else {
        let ring = KeyRing::new();
        ring.insert("demo", generate_key()?)?;
        ring.set_active("demo")?;
        ring
    };

    let memory = InMemoryProvider::new();
    let queue = QueueName::new("github-events")?;
    let spec = QueueSpec::default()
        .with_sessions(true)
        .with_duplicate_detection(Duration::from_secs(600));
    memory.create_queue(&queue, &spec).await?;
    let producer = Signing::new(memory.clone(), MessageSigner::new(ring.clone()));

    // The webhook endpoint.
    let verifier = WebhookVerifier::new(SecretString::from(secret.clone()));
    let deliveries = [
        ("d-1", pull_request("opened", 1)),
        ("d-2", pull_request("opened", 2)),
        ("d-3", pull_request("synchronize", 1)),
        ("d-3", pull_request("synchronize", 1)), // GitHub redelivers d-3
        ("d-4", pull_request("closed", 1)),
        ("d-5", pull_request("closed", 2)),
    ];
    for (id, body) in &deliveries {
        let headers = github_delivery(&secret, "pull_request", id, body);
        let message = verifier.message_from_delivery(&headers, body.clone())?;
        producer.send(&queue, message).await?;
    }
    let forged = github_delivery(
        "guessed-secret",
        "pull_request",
        "d-9",
        &pull_request("closed", 1),
    );
    match verifier.message_from_delivery(&forged, pull_request("closed", 1)) {
        Ok(_) => return Err("a forged webhook was accepted".into()),
        Err(err) => println!("webhook d-9 refused at the edge: {err}"),
    }
    // Something with queue access but no key writes directly.
    let intruder = Message::new(pull_request("closed", 2))
        .with_session_id(queue_runtime::SessionId::new("octo/repo#2")?);
    memory.send(&queue, intruder).await?;

    let provider: SharedQueueProvider = Arc::new(memory.clone());
    let shutdown = CancellationToken::new();
    let processor = Processor::new(
        provider,
        queue.clone(),
        handler_fn(|msg, ctx| async move {
            let action = msg.message.attributes.get("github-action").cloned();
            println!(
                "{} {}: {}",
                ctx.session_id().map_or("-", |s| s.as_str()),
                ctx.message_id(),
                action.as_deref().unwrap_or("?")
            );
            Ok(Outcome::Complete)
        }),
    )
    .with_gate(Arc::new(SignatureGate::new(ring)))
    .with_settings(
        ProcessorSettings::default()
            .with_receive_wait(Duration::from_millis(200))
            .with_session_idle_timeout(Duration::from_millis(200)),
    );
    let run = tokio::spawn(processor.run(shutdown.clone()));
    while memory.message_count(&queue)? > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    let report = run.await??;
    println!(
        "completed {}, rejected {}, dead-lettered {}",
        report.completed, report.rejected, report.dead_lettered
    );
    for dead in memory
        .receive_dead_letters(&queue, ReceiveOptions::new(10, Duration::ZERO))
        .await?
    {
        let reason = dead.dead_letter.map(|d| d.reason).unwrap_or_default();
        println!("dead letter {}: {reason}", dead.message_id);
    }
    if report.completed != 5 || report.rejected != 1 {
        return Err("unexpected result".into());
    }
    Ok(())
}
