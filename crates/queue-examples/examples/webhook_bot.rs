//! A GitHub bot end to end: webhook intake (signature check, rotating secrets, one session
//! per pull request, duplicate detection) -> queue -> `Processor`, with `/healthz`,
//! `/readyz` fed by the processor, `/metrics` and graceful shutdown on Ctrl-C or SIGTERM.
//!
//! ```text
//! QUEUE_RUNTIME__QUEUE=github-events QUEUE_RUNTIME__APP__WEBHOOK_SECRET=change-me \
//!   cargo run -p queue-examples --features webhook --example webhook_bot [-- bot.toml]
//! ```
//! Settings: `docs/configuration.md` (provider, queue, processor) plus the `[app]` table below.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use queue_runtime::webhook::{SecretString, WebhookIntake, WebhookVerifier, axum};
use queue_runtime::{Outcome, Processor, QueueRuntimeConfig, build_provider, json_handler};

/// The bot's own settings: the `[app]` table of the same file (or `QUEUE_RUNTIME__APP__*`).
#[derive(serde::Deserialize)]
struct Bot {
    listen: Option<String>,
    webhook_secret: SecretString,
    /// The secret being rotated out, accepted until removed.
    previous_webhook_secret: Option<SecretString>,
}

/// The part of any event payload this bot reads.
#[derive(serde::Deserialize)]
struct Event {
    action: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The one way to install a subscriber: SDK targets that log credentials stay capped and
    // every line is redacted (docs/security.md, "Logs").
    let _ = queue_runtime::telemetry::init_logging(queue_runtime::telemetry::LevelFilter::INFO);
    let file = std::env::args().nth(1).map(PathBuf::from);
    let config = QueueRuntimeConfig::load(file.as_deref())?;
    let bot: Bot = config.app()?;
    let provider = build_provider(&config.provider).await?;
    let queue = config.queue_name()?;

    let mut verifier = WebhookVerifier::new(bot.webhook_secret);
    if let Some(old) = bot.previous_webhook_secret {
        verifier = verifier.with_secret(old);
    }
    let intake = WebhookIntake::new(provider.clone(), queue.clone(), verifier);
    intake.create_queue().await?;

    let handler = json_handler(|event: Event, ctx| async move {
        let session = ctx.session_id().map_or("-", |s| s.as_str());
        let action = event.action.as_deref().unwrap_or("-");
        println!("{session}: {action} (delivery {})", ctx.message_id());
        Ok(Outcome::Complete)
    });
    let shutdown = queue_runtime::shutdown_token(); // cancelled on Ctrl-C or SIGTERM
    let processor =
        Processor::new(provider, queue, handler).with_settings(config.processor.clone());
    let running = tokio::spawn(processor.run(shutdown.clone()));
    let alive = running.abort_handle();

    let app = intake
        .with_readiness(move || match alive.is_finished() {
            false => Ok(()),
            true => Err("the processor has stopped".into()),
        })
        .with_metrics(queue_runtime::webhook::install_prometheus()?)
        .router();
    let listen = bot.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}/webhook", listener.local_addr()?);
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    println!("{:?}", running.await??);
    Ok(())
}
