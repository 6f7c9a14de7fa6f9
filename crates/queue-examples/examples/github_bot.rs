//! A GitHub bot in miniature: a burst of webhook events for several pull requests is
//! enqueued with one session per pull request, then consumed by a [`Processor`] that works
//! on different pull requests concurrently and on each one strictly in order.
//!
//! One event fails once (a flaky downstream API) and is retried; one payload is malformed
//! and goes to the dead-letter queue. The run ends with a per-pull-request summary.
//!
//! ```text
//! cargo run -p queue-examples --example github_bot
//! ```
//!
//! By default it runs on the in-memory provider. To point it elsewhere, pass a configuration
//! file (see `docs/queue-runtime.example.toml`) as the first argument, or set
//! `QUEUE_RUNTIME__...` environment variables (for example `QUEUE_RUNTIME__QUEUE=bot-events`).
#![allow(clippy::print_stdout)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use queue_runtime::{
    CancellationToken, HandlerError, Message, Outcome, Processor, ProcessorSettings, QueueError,
    QueueProvider, QueueRuntimeConfig, QueueSpec, ReceiveOptions, RetrySettings, SessionId,
    build_provider, decode_json, handler::reasons, handler_fn,
};
use serde::{Deserialize, Serialize};

/// The part of a `pull_request` webhook payload the bot looks at.
#[derive(Debug, Serialize, Deserialize)]
struct PullRequestEvent {
    action: String,
    number: u32,
    repository: String,
    /// Position of the event in the pull request's history (for the summary).
    seq: u32,
}

/// One handled delivery, for the summary.
#[derive(Debug, Clone)]
struct Handled {
    seq: u32,
    action: String,
    attempt: u32,
    ok: bool,
    started: Duration,
    finished: Duration,
}

const REPO: &str = "octo-org/widgets";

fn scenario() -> Vec<(u32, Vec<&'static str>)> {
    vec![
        (
            101,
            vec![
                "opened",
                "synchronize",
                "review_requested",
                "synchronize",
                "closed",
            ],
        ),
        (
            102,
            vec!["opened", "labeled", "synchronize", "ready_for_review"],
        ),
        (103, vec!["opened", "synchronize", "synchronize", "closed"]),
        (
            104,
            vec!["opened", "edited", "labeled", "synchronize", "closed"],
        ),
        (105, vec!["opened", "review_requested", "closed"]),
    ]
}

fn load_config() -> Result<QueueRuntimeConfig, QueueError> {
    let file = std::env::args().nth(1).map(std::path::PathBuf::from);
    let env_set = std::env::vars().any(|(k, _)| k.starts_with("QUEUE_RUNTIME__"));
    if file.is_some() || env_set {
        QueueRuntimeConfig::load(file.as_deref())
    } else {
        let settings = ProcessorSettings::default()
            .with_max_concurrent_sessions(4)
            .with_receive_wait(Duration::from_millis(100))
            .with_session_idle_timeout(Duration::from_millis(100))
            .with_shutdown_timeout(Duration::from_secs(5))
            .with_retry(
                RetrySettings::default()
                    .with_max_attempts(4)
                    .with_initial_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(2)),
            );
        Ok(QueueRuntimeConfig::new("github-events").with_processor(settings))
    }
}

#[tokio::main]
async fn main() -> Result<(), QueueError> {
    // The one way to install a subscriber: SDK targets that log credentials stay capped and
    // every line is redacted (docs/security.md, "Logs"). Feature `telemetry`, which `aws` and
    // `azure` turn on; the in-memory run prints its own report below.
    #[cfg(feature = "telemetry")]
    let _ = queue_runtime::telemetry::init_logging(queue_runtime::telemetry::LevelFilter::INFO);
    let config = load_config()?;
    let provider = build_provider(&config.provider).await?;
    let queue = config.queue_name()?;
    match provider
        .create_queue(&queue, &QueueSpec::default().with_sessions(true))
        .await
    {
        Ok(()) | Err(QueueError::Unsupported { .. }) => {}
        Err(e) => return Err(e),
    }
    println!(
        "github_bot: provider `{}`, queue `{}`",
        provider.name(),
        queue
    );

    // 1. A burst of webhook deliveries, interleaved across pull requests as GitHub sends them.
    let scenario = scenario();
    let mut burst = Vec::new();
    let longest = scenario.iter().map(|(_, e)| e.len()).max().unwrap_or(0);
    for i in 0..longest {
        for (pr, events) in &scenario {
            if let Some(action) = events.get(i) {
                burst.push((*pr, i as u32, *action));
            }
        }
    }
    let mut expected = 0usize;
    for (pr, seq, action) in &burst {
        let session = SessionId::new(format!("{REPO}#{pr}"))?;
        let body = serde_json::to_vec(&PullRequestEvent {
            action: (*action).to_owned(),
            number: *pr,
            repository: REPO.to_owned(),
            seq: *seq,
        })
        .map_err(|e| QueueError::InvalidMessage {
            provider: "demo",
            reason: e.to_string(),
        })?;
        let msg = Message::new(body)
            .with_content_type("application/json")
            .with_attribute("x-github-event", "pull_request")
            .with_session_id(session);
        provider.send(&queue, msg).await?;
        expected += 1;
    }
    // A truncated payload for PR 103: poison, it must end up in the dead-letter queue.
    provider
        .send(
            &queue,
            Message::new(r#"{"action":"synchronize","number":103,"repos"#)
                .with_attribute("x-github-event", "pull_request")
                .with_session_id(SessionId::new(format!("{REPO}#103"))?),
        )
        .await?;
    expected += 1;
    println!(
        "enqueued {expected} events for {} pull requests (one session each)\n",
        scenario.len()
    );

    // 2. The bot: one handler, ordered per pull request by the processor.
    let t0 = Instant::now();
    let handled: Arc<Mutex<BTreeMap<u32, Vec<Handled>>>> = Arc::default();
    let settled = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let handler = {
        let (handled, settled, running, peak) = (
            handled.clone(),
            settled.clone(),
            running.clone(),
            peak.clone(),
        );
        handler_fn(move |msg, ctx| {
            let (handled, settled, running, peak) = (
                handled.clone(),
                settled.clone(),
                running.clone(),
                peak.clone(),
            );
            async move {
                let event: PullRequestEvent = match decode_json(msg.body()) {
                    Ok(event) => event,
                    Err(description) => {
                        // Poison: no retry can fix a malformed payload.
                        settled.fetch_add(1, Ordering::SeqCst);
                        return Ok(Outcome::dead_letter(reasons::UNDECODABLE_BODY, description));
                    }
                };
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let started = t0.elapsed();
                // Pretend to call the GitHub API: 20-50 ms.
                tokio::time::sleep(Duration::from_millis(20 + u64::from(event.seq * 7 % 31))).await;
                // The checks API is flaky once for PR 102's synchronize.
                let fail =
                    event.number == 102 && event.action == "synchronize" && ctx.attempt() == 1;
                running.fetch_sub(1, Ordering::SeqCst);
                handled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(event.number)
                    .or_default()
                    .push(Handled {
                        seq: event.seq,
                        action: event.action.clone(),
                        attempt: ctx.attempt(),
                        ok: !fail,
                        started,
                        finished: t0.elapsed(),
                    });
                if fail {
                    return Err(HandlerError::transient("checks API answered 502"));
                }
                settled.fetch_add(1, Ordering::SeqCst);
                Ok(Outcome::Complete)
            }
        })
    };
    let processor = Processor::new(provider.clone(), queue.clone(), handler)
        .with_settings(config.processor.clone());
    let run = tokio::spawn(processor.run(shutdown.clone()));

    // 3. Stop once every event is settled (completed, or dead-lettered as poison), or on
    //    SIGTERM / Ctrl-C: the processor then drains and abandons what it holds, so the next
    //    consumer does not wait for lock expiry.
    let deadline = Instant::now() + Duration::from_secs(30);
    let signal = queue_runtime::shutdown_signal();
    tokio::pin!(signal);
    loop {
        if settled.load(Ordering::SeqCst) >= expected || Instant::now() > deadline {
            break;
        }
        tokio::select! {
            () = &mut signal => {
                println!("shutdown signal: draining");
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    shutdown.cancel();
    let report = run
        .await
        .map_err(|e| QueueError::config("demo", e.to_string()))??;

    // 4. Summary.
    let handled = handled.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (pr, events) in handled.iter() {
        let first = events.first().map(|h| h.started).unwrap_or_default();
        let last = events.last().map(|h| h.finished).unwrap_or_default();
        let in_order = events.windows(2).all(|w| w[0].seq <= w[1].seq);
        println!(
            "PR {REPO}#{pr}: {} deliveries in {:?} ({})",
            events.len(),
            last.saturating_sub(first),
            if in_order { "in order" } else { "OUT OF ORDER" }
        );
        for h in events {
            println!(
                "  {:>2}. {:<17} attempt {}  {:>5} ms .. {:>5} ms  {}",
                h.seq + 1,
                h.action,
                h.attempt,
                h.started.as_millis(),
                h.finished.as_millis(),
                if h.ok { "ok" } else { "failed -> retried" }
            );
        }
    }
    let dlq = provider
        .receive_dead_letters(&queue, ReceiveOptions::new(10, Duration::from_millis(10)))
        .await?;
    println!("\ndead-letter queue: {} message(s)", dlq.len());
    for m in &dlq {
        if let Some(reason) = &m.dead_letter {
            println!(
                "  session {}: {} ({})",
                m.session_id().map(|s| s.as_str()).unwrap_or("-"),
                reason.reason,
                reason.description
            );
        }
        provider.complete(&m.receipt).await?;
    }
    println!(
        "\nprocessor: received {}, completed {}, retried {}, dead-lettered {}, sessions {}, \
         at most {} pull requests in flight at once, {:?} in total",
        report.received,
        report.completed,
        report.retried,
        report.dead_lettered,
        report.sessions,
        peak.load(Ordering::SeqCst),
        report.elapsed
    );
    Ok(())
}
