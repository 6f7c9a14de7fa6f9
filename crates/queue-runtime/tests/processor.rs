//! Behaviour of the processor on the memory provider with tokio's paused clock.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::*;
use queue_runtime::{
    CancellationToken, CircuitBreakerSettings, HandlerError, Message, MessageGate, Outcome,
    Processor, ProcessorSettings, QueueError, QueueName, QueueProvider, QueueSpec, ReceiveOptions,
    ReceivedMessage, Rejection, RetrySettings, SessionId, SharedQueueProvider, handler_fn,
    json_handler,
};
use tokio::time::Instant;

fn fast_settings() -> ProcessorSettings {
    ProcessorSettings::default()
        .with_receive_wait(Duration::from_secs(1))
        .with_session_idle_timeout(Duration::from_millis(500))
        .with_lock_renewal_interval(Duration::from_secs(2))
        .with_retry(
            RetrySettings::default()
                .with_max_attempts(3)
                .with_initial_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(2)),
        )
}

async fn dead_letters(provider: &SharedQueueProvider, queue: &QueueName) -> Vec<ReceivedMessage> {
    provider
        .receive_dead_letters(queue, ReceiveOptions::new(100, Duration::from_millis(10)))
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn start_up_fails_fast_when_the_queue_is_missing() {
    let provider: SharedQueueProvider = Arc::new(queue_memory::InMemoryProvider::new());
    let processor = Processor::new(
        provider,
        QueueName::new("missing").unwrap(),
        handler_fn(|_m, _c| async { Ok(Outcome::Complete) }),
    );
    let started = Instant::now();
    let err = processor.run(CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, QueueError::QueueNotFound { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn invalid_settings_are_rejected_before_consuming() {
    let (_, provider, queue) = memory("q", QueueSpec::default()).await;
    let err = Processor::new(
        provider,
        queue,
        handler_fn(|_m, _c| async { Ok(Outcome::Complete) }),
    )
    .with_settings(ProcessorSettings::default().with_max_concurrent_sessions(0))
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    assert!(
        matches!(&err, QueueError::Config { field, .. } if field == "processor.max_concurrent_sessions"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn sessions_roll_over_quickly_and_run_concurrently() {
    let (mem, provider, queue) = memory(
        "prs",
        QueueSpec::default().with_lock_duration(Duration::from_secs(60)),
    )
    .await;
    for pr in 0..20 {
        send_to_session(
            &provider,
            &queue,
            &format!("repo#{pr}"),
            (0..3).map(|n| format!("{pr}:{n}")),
        )
        .await;
    }
    let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (s, r, p) = (seen.clone(), running.clone(), peak.clone());
    let handler = handler_fn(move |msg: ReceivedMessage, ctx| {
        let (s, r, p) = (s.clone(), r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let body = String::from_utf8(msg.body().to_vec()).unwrap();
            let (pr, n) = body.split_once(':').unwrap();
            assert_eq!(ctx.session_id().unwrap().as_str(), format!("repo#{pr}"));
            s.lock()
                .unwrap()
                .entry(pr.to_owned())
                .or_default()
                .push(n.parse().unwrap());
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(Outcome::Complete)
        }
    });
    let started = Instant::now();
    let running = start(
        Processor::new(provider.clone(), queue.clone(), handler)
            .with_settings(fast_settings().with_max_concurrent_sessions(4)),
    );
    assert!(
        wait_until(Duration::from_secs(120), || mem
            .message_count(&queue)
            .unwrap()
            == 0)
        .await
    );
    let took = started.elapsed();
    let report = running.stop().await;
    assert_eq!(report.completed, 60);
    assert_eq!(report.sessions, 20);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        4,
        "sessions must run concurrently up to the limit"
    );
    for (pr, order) in seen.lock().unwrap().iter() {
        assert_eq!(order, &vec![0, 1, 2], "PR {pr} out of order");
    }
    // 20 sessions / 4 workers = 5 rounds of (3 x 100 ms + 500 ms idle): far below a minute
    // per session.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test(start_paused = true)]
async fn session_less_messages_run_in_parallel_up_to_the_limit() {
    let (mem, provider, queue) = memory("plain", QueueSpec::default()).await;
    for i in 0..12 {
        provider
            .send(&queue, Message::new(format!("{i}")))
            .await
            .unwrap();
    }
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let handler = handler_fn(move |_msg, _ctx| {
        let (r, p) = (r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(Outcome::Complete)
        }
    });
    let report = run_until_drained(
        Processor::new(provider, queue.clone(), handler)
            .with_settings(fast_settings().with_max_concurrent_messages(4)),
        &mem,
        &queue,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.completed, 12);
    assert_eq!(peak.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn lock_renewal_keeps_a_slow_handler_message_from_redelivery() {
    let spec = QueueSpec::default().with_lock_duration(Duration::from_secs(5));
    let (mem, provider, queue) = memory("slow", spec).await;
    provider.send(&queue, Message::new("plain")).await.unwrap();
    provider
        .send(
            &queue,
            Message::new("session").with_session_id(SessionId::new("s").unwrap()),
        )
        .await
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let handler = handler_fn(move |_msg, ctx| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            assert_eq!(ctx.delivery_count(), 1, "redelivered while the handler ran");
            // Twelve lock durations.
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(!ctx.is_cancelled());
            Ok(Outcome::Complete)
        }
    });
    let report = run_until_drained(
        Processor::new(provider, queue.clone(), handler).with_settings(fast_settings()),
        &mem,
        &queue,
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(report.completed, 2);
    assert_eq!(report.lock_lost, 0);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "each message handled exactly once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_lock_cancels_the_handler_and_the_message_comes_back() {
    let spec = QueueSpec::default().with_lock_duration(Duration::from_secs(5));
    let (mem, inner, queue) = memory("lost", spec).await;
    let faulty = Faulty::new(inner.clone());
    let faults = faulty.faults.clone();
    faults.lose_locks.store(true, Ordering::SeqCst);
    inner.send(&queue, Message::new("plain")).await.unwrap();
    inner
        .send(
            &queue,
            Message::new("session").with_session_id(SessionId::new("s").unwrap()),
        )
        .await
        .unwrap();
    let cancelled = Arc::new(AtomicU32::new(0));
    let (c, f) = (cancelled.clone(), faults.clone());
    let handler = handler_fn(move |_msg, ctx| {
        let (c, f) = (c.clone(), f.clone());
        async move {
            if ctx.delivery_count() == 1 {
                tokio::select! {
                    _ = ctx.cancellation().cancelled() => { c.fetch_add(1, Ordering::SeqCst); }
                    _ = tokio::time::sleep(Duration::from_secs(120)) => panic!("not cancelled"),
                }
                f.lose_locks.store(false, Ordering::SeqCst);
                return Ok(Outcome::Complete); // too late: must not be settled
            }
            Ok(Outcome::Complete)
        }
    });
    let report = run_until_drained(
        Processor::new(Arc::new(faulty), queue.clone(), handler).with_settings(fast_settings()),
        &mem,
        &queue,
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        2,
        "both handlers saw the cancellation"
    );
    assert_eq!(report.lock_lost, 2);
    assert_eq!(report.completed, 2, "redelivered and completed once each");
}

#[tokio::test(start_paused = true)]
async fn max_lock_renewal_cancels_a_handler_that_runs_too_long() {
    let (mem, provider, queue) = memory(
        "long",
        QueueSpec::default().with_lock_duration(Duration::from_secs(5)),
    )
    .await;
    provider.send(&queue, Message::new("x")).await.unwrap();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let s = saw_cancel.clone();
    let handler = handler_fn(move |_msg, ctx| {
        let s = s.clone();
        async move {
            ctx.cancellation().cancelled().await;
            s.store(true, Ordering::SeqCst);
            Ok(Outcome::Complete)
        }
    });
    let running = start(
        Processor::new(provider, queue.clone(), handler)
            .with_settings(fast_settings().with_max_lock_renewal(Duration::from_secs(20))),
    );
    assert!(
        wait_until(Duration::from_secs(60), || saw_cancel
            .load(Ordering::SeqCst))
        .await
    );
    let report = running
        .stop_when(Duration::from_secs(60), || {
            mem.message_count(&queue).unwrap() == 0
        })
        .await;
    assert_eq!(report.completed, 1, "settled while the lock still held");
}

#[tokio::test(start_paused = true)]
async fn poison_messages_go_to_the_dead_letter_queue_with_reasons() {
    let (mem, provider, queue) = memory("poison", QueueSpec::default()).await;
    let canary = "CANARY-poison-body-5521";
    let send = |body: String, kind: &str| {
        let provider = provider.clone();
        let queue = queue.clone();
        let kind = kind.to_owned();
        async move {
            provider
                .send(&queue, Message::new(body).with_attribute("kind", kind))
                .await
                .unwrap()
        }
    };
    let undecodable = send(format!("{{\"n\":\"{canary}\"}}"), "json").await;
    let always_fails = send("{\"n\":1}".into(), "fail").await;
    let permanent = send("{\"n\":2}".into(), "permanent").await;
    let chosen = send("{\"n\":3}".into(), "dead").await;
    let ok = send("{\"n\":4}".into(), "ok").await;

    #[derive(serde::Deserialize)]
    struct Body {
        n: u32,
    }
    let handler = json_handler(|body: Body, ctx| async move {
        match ctx.attributes().get("kind").map(String::as_str) {
            Some("fail") => Err(HandlerError::transient(format!(
                "downstream 503 for {}",
                body.n
            ))),
            Some("permanent") => Err(HandlerError::permanent("repository was deleted")),
            Some("dead") => Ok(Outcome::dead_letter(
                "UnknownAction",
                "action `foo` is not handled",
            )),
            _ => Ok(Outcome::Complete),
        }
    });
    let report = run_until_drained(
        Processor::new(provider.clone(), queue.clone(), handler).with_settings(fast_settings()),
        &mem,
        &queue,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(report.completed, 1);
    assert_eq!(report.dead_lettered, 4);
    assert_eq!(
        report.retried, 2,
        "the failing message is retried until attempts run out"
    );
    let dlq = dead_letters(&provider, &queue).await;
    let by_id: HashMap<_, _> = dlq
        .iter()
        .map(|m| (m.message_id.clone(), m.dead_letter.clone().unwrap()))
        .collect();
    assert_eq!(by_id.len(), 4);
    assert!(!by_id.contains_key(&ok));
    let r = &by_id[&undecodable];
    assert_eq!(r.reason, "UndecodableBody");
    assert!(!r.description.contains(canary), "{}", r.description);
    let r = &by_id[&always_fails];
    assert_eq!(r.reason, "RetriesExhausted");
    assert!(
        r.description.contains("downstream 503"),
        "{}",
        r.description
    );
    assert_eq!(by_id[&permanent].reason, "PermanentFailure");
    assert_eq!(by_id[&chosen].reason, "UnknownAction");
}

#[derive(Debug)]
struct DenyUnsigned;

#[async_trait::async_trait]
impl MessageGate for DenyUnsigned {
    async fn check(&self, message: &ReceivedMessage) -> Result<(), Rejection> {
        if message.message.attributes.contains_key("signature") {
            Ok(())
        } else {
            Err(Rejection::new("SignatureMissing", "no signature attribute"))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn gate_rejections_are_dead_lettered_and_never_retried() {
    let (mem, provider, queue) = memory("gated", QueueSpec::default()).await;
    provider
        .send(&queue, Message::new("unsigned"))
        .await
        .unwrap();
    provider
        .send(
            &queue,
            Message::new("signed").with_attribute("signature", "sha256=ok"),
        )
        .await
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let handler = handler_fn(move |_m, _c| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok(Outcome::Complete) }
    });
    let report = run_until_drained(
        Processor::new(provider.clone(), queue.clone(), handler)
            .with_settings(fast_settings())
            .with_gate(Arc::new(DenyUnsigned)),
        &mem,
        &queue,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the signed message reaches the handler"
    );
    assert_eq!(
        (report.rejected, report.dead_lettered, report.retried),
        (1, 1, 0)
    );
    let dlq = dead_letters(&provider, &queue).await;
    assert_eq!(
        dlq[0].dead_letter.as_ref().unwrap().reason,
        "SignatureMissing"
    );
    assert_eq!(report.received, 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_contained_and_retried() {
    let (mem, provider, queue) = memory("panics", QueueSpec::default()).await;
    provider
        .send(
            &queue,
            Message::new("a").with_session_id(SessionId::new("s").unwrap()),
        )
        .await
        .unwrap();
    provider.send(&queue, Message::new("b")).await.unwrap();
    let handler = handler_fn(|_m, ctx| async move {
        if ctx.attempt() == 1 {
            panic!("handler bug");
        }
        Ok(Outcome::Complete)
    });
    let report = run_until_drained(
        Processor::new(provider, queue.clone(), handler).with_settings(fast_settings()),
        &mem,
        &queue,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.handler_panics, 2);
    assert_eq!(report.retried, 2);
    assert_eq!(report.completed, 2);
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_opens_during_an_outage_and_recovers() {
    let (mem, inner, queue) = memory("outage", QueueSpec::default()).await;
    let faulty = Faulty::new(inner.clone());
    let faults = faulty.faults.clone();
    faults.outage.store(true, Ordering::SeqCst);
    let settings = fast_settings()
        .with_max_concurrent_sessions(2)
        .with_circuit_breaker(
            CircuitBreakerSettings::default()
                .with_failure_threshold(3)
                .with_open_duration(Duration::from_secs(10)),
        );
    let handler = handler_fn(|_m, _c| async { Ok(Outcome::Complete) });
    let running =
        start(Processor::new(Arc::new(faulty), queue.clone(), handler).with_settings(settings));
    // A 60 s outage: three failures open the circuit; afterwards one trial call per 10 s
    // open period (3 loops: 2 session workers + the receive loop may each probe).
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = faults.calls_during_outage.load(Ordering::SeqCst);
    assert!(during >= 3, "the breaker must see the failures: {during}");
    assert!(
        during <= 3 + 6 * 3 + 3,
        "retry storm: {during} calls in 60 s"
    );
    faults.outage.store(false, Ordering::SeqCst);
    inner
        .send(
            &queue,
            Message::new("after").with_session_id(SessionId::new("s").unwrap()),
        )
        .await
        .unwrap();
    inner.send(&queue, Message::new("plain")).await.unwrap();
    let report = running
        .stop_when(Duration::from_secs(60), || {
            mem.message_count(&queue).unwrap() == 0
        })
        .await;
    assert_eq!(report.completed, 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_in_flight_handlers_and_abandons_the_rest() {
    let (mem, provider, queue) = memory(
        "drain",
        QueueSpec::default().with_lock_duration(Duration::from_secs(30)),
    )
    .await;
    for s in 0..2 {
        send_to_session(
            &provider,
            &queue,
            &format!("s{s}"),
            (0..3).map(|n| format!("{s}:{n}")),
        )
        .await;
    }
    let started = Arc::new(AtomicU32::new(0));
    let finished = Arc::new(AtomicU32::new(0));
    let (st, fi) = (started.clone(), finished.clone());
    let handler = handler_fn(move |_m, _c| {
        let (st, fi) = (st.clone(), fi.clone());
        async move {
            st.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(10)).await;
            fi.fetch_add(1, Ordering::SeqCst);
            Ok(Outcome::Complete)
        }
    });
    let report = run_until(
        Processor::new(provider.clone(), queue.clone(), handler)
            .with_settings(fast_settings().with_shutdown_timeout(Duration::from_secs(30))),
        Duration::from_secs(10),
        || started.load(Ordering::SeqCst) == 2,
    )
    .await;
    assert!(report.drained_in_time);
    assert_eq!(started.load(Ordering::SeqCst), 2);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        2,
        "in-flight handlers finish"
    );
    assert_eq!(report.completed, 2);
    // Nothing lost: the other four are still in the queue, available again at once.
    assert_eq!(mem.message_count(&queue).unwrap(), 4);
    let mut left = Vec::new();
    while let Some(s) = provider
        .accept_session(
            &queue,
            queue_runtime::SessionSelector::Next,
            Duration::from_millis(10),
        )
        .await
        .unwrap()
    {
        for m in s
            .receive(ReceiveOptions::new(10, Duration::from_millis(10)))
            .await
            .unwrap()
        {
            left.push(String::from_utf8(m.body().to_vec()).unwrap());
            s.complete(&m.receipt).await.unwrap();
        }
        s.close().await.unwrap();
    }
    left.sort();
    assert_eq!(left, ["0:1", "0:2", "1:1", "1:2"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_cancels_stuck_handlers_and_abandons_their_messages() {
    let (mem, provider, queue) = memory("stuck", QueueSpec::default()).await;
    provider.send(&queue, Message::new("x")).await.unwrap();
    let cancelled = Arc::new(AtomicBool::new(false));
    let c = cancelled.clone();
    let handler = handler_fn(move |_m, ctx| {
        let c = c.clone();
        async move {
            // Ignores the shutdown until its token fires.
            ctx.cancellation().cancelled().await;
            c.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Outcome::Complete)
        }
    });
    let running = start(
        Processor::new(provider.clone(), queue.clone(), handler)
            .with_settings(fast_settings().with_shutdown_timeout(Duration::from_secs(5))),
    );
    assert!(
        wait_until(Duration::from_secs(10), || mem
            .message_count(&queue)
            .unwrap()
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = Instant::now();
    let report = running.stop().await;
    assert!(
        before.elapsed() <= Duration::from_secs(7),
        "{:?}",
        before.elapsed()
    );
    assert!(!report.drained_in_time);
    assert_eq!(report.abandoned_at_shutdown, 1);
    assert_eq!(report.completed, 0);
    tokio::task::yield_now().await;
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the handler was told to stop"
    );
    // Abandoned, so immediately available again with the next delivery count.
    let again = provider
        .receive(&queue, ReceiveOptions::new(1, Duration::from_millis(10)))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_count, 2);
}

#[tokio::test(start_paused = true)]
async fn grouped_provider_keeps_order_when_a_message_is_retried() {
    let (mem, provider, queue) = sqs_fifo("events.fifo", Duration::from_secs(30), 10).await;
    for g in 0..3 {
        send_to_session(
            &provider,
            &queue,
            &format!("g{g}"),
            (0..5).map(|n| format!("{g}:{n}")),
        )
        .await;
    }
    let calls: Arc<Mutex<Vec<(u32, u32, u32)>>> = Arc::default();
    let c = calls.clone();
    let handler = handler_fn(move |m: ReceivedMessage, ctx| {
        let c = c.clone();
        async move {
            let body = String::from_utf8(m.body().to_vec()).unwrap();
            let (g, n) = body.split_once(':').unwrap();
            let (g, n): (u32, u32) = (g.parse().unwrap(), n.parse().unwrap());
            c.lock().unwrap().push((g, n, ctx.delivery_count()));
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Message 1 of every group fails once.
            if n == 1 && ctx.attempt() == 1 {
                return Ok(Outcome::retry_after(Duration::from_secs(2), "try later"));
            }
            Ok(Outcome::Complete)
        }
    });
    let report = run_until_drained(
        Processor::new(provider, queue.clone(), handler).with_settings(fast_settings()),
        &mem,
        &queue,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.completed, 15);
    assert_eq!(report.retried, 3);
    let calls = calls.lock().unwrap();
    for g in 0..3 {
        let seq: Vec<(u32, u32)> = calls
            .iter()
            .filter(|c| c.0 == g)
            .map(|c| (c.1, c.2))
            .collect();
        let ns: Vec<u32> = seq.iter().map(|s| s.0).collect();
        assert_eq!(ns, vec![0, 1, 1, 2, 3, 4], "group {g}: {seq:?}");
        // The short retry ran in process on the same delivery: no message of the group,
        // the retried one included, spent a receive on it (issue 13 item 1).
        assert!(seq.iter().all(|s| s.1 == 1), "group {g}: {seq:?}");
    }
    assert_eq!(report.abandoned_for_order, 0, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn from_config_builds_the_provider_and_surfaces_typed_errors() {
    let handler = || handler_fn(|_m, _c| async { Ok(Outcome::Complete) });
    let cfg = queue_runtime::QueueRuntimeConfig::from_toml_str(
        "queue = \"from-config\"\n[provider]\nkind = \"memory\"\n[processor]\nmax_concurrent_sessions = 2\n",
    )
    .unwrap();
    let processor = Processor::from_config(&cfg, handler()).await.unwrap();
    assert_eq!(processor.settings().max_concurrent_sessions, 2);
    // A fresh memory provider has no queue: start-up fails fast with the typed error.
    let err = processor.run(CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, QueueError::QueueNotFound { .. }), "{err}");

    let cfg = queue_runtime::QueueRuntimeConfig::from_toml_str(
        "queue = \"q\"\n[provider]\nkind = \"service-bus\"\nnamespace = \"example.servicebus.windows.net\"\n",
    )
    .unwrap();
    let err = Processor::from_config(&cfg, handler()).await.unwrap_err();
    #[cfg(not(feature = "azure"))]
    assert!(
        err.to_string().contains(
            "provider `service-bus` is not enabled in this build (enable feature `azure`)"
        ),
        "{err}"
    );
    // With the provider compiled in, a namespace without a token credential is refused
    // (Entra ID credentials are given in code, not in a file).
    #[cfg(feature = "azure")]
    assert!(
        matches!(&err, QueueError::Config { field, .. } if field == "provider.namespace"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn session_mode_picks_which_messages_are_consumed() {
    use queue_runtime::SessionMode;
    for mode in [SessionMode::Required, SessionMode::None, SessionMode::Auto] {
        let (mem, provider, queue) = memory("mixed", QueueSpec::default()).await;
        provider
            .send(
                &queue,
                Message::new("in-session").with_session_id(SessionId::new("s").unwrap()),
            )
            .await
            .unwrap();
        provider
            .send(&queue, Message::new("session-less"))
            .await
            .unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = seen.clone();
        let handler = handler_fn(move |msg: ReceivedMessage, _ctx| {
            let s = s.clone();
            async move {
                s.lock()
                    .unwrap()
                    .push(String::from_utf8(msg.body().to_vec()).unwrap());
                Ok(Outcome::Complete)
            }
        });
        let running = start(
            Processor::new(provider.clone(), queue.clone(), handler)
                .with_settings(fast_settings().with_session_mode(mode)),
        );
        // Long enough for both kinds to be consumed when they are consumed at all.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let report = running.stop().await;
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        let expected: Vec<&str> = match mode {
            SessionMode::Required => vec!["in-session"],
            SessionMode::None => vec!["session-less"],
            _ => vec!["in-session", "session-less"],
        };
        assert_eq!(seen, expected, "{mode:?}: {report:?}");
        assert_eq!(
            mem.message_count(&queue).unwrap(),
            2 - expected.len(),
            "{mode:?}"
        );
    }
}

/// Panics when called, before any future exists, on its first attempt.
struct PanicsWhenCalled;

impl queue_runtime::Handler for PanicsWhenCalled {
    fn handle<'a, 'b>(
        &'a self,
        _message: ReceivedMessage,
        ctx: queue_runtime::MessageContext,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Outcome, HandlerError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        assert!(ctx.attempt() > 1, "handler bug before its future exists");
        Box::pin(async { Ok(Outcome::Complete) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_panicking_when_called_is_contained_and_retried() {
    let (mem, provider, queue) = memory("panics-early", QueueSpec::default()).await;
    provider.send(&queue, Message::new("a")).await.unwrap();
    let report = run_until_drained(
        Processor::new(provider, queue.clone(), PanicsWhenCalled).with_settings(fast_settings()),
        &mem,
        &queue,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.handler_panics, 1);
    assert_eq!(report.retried, 1);
    assert_eq!(report.completed, 1);
}

/// Session-less handlers run as futures of a few lanes, not as a task each: on a
/// multi-threaded runtime two of them must still run on two threads at once (here each
/// blocks its thread until the other has started, for at most 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_less_handlers_run_in_parallel_on_a_multi_threaded_runtime() {
    let (mem, provider, queue) = memory("parallel", QueueSpec::default()).await;
    for i in 0..2 {
        provider
            .send(&queue, Message::new(format!("{i}")))
            .await
            .unwrap();
    }
    let arrived = Arc::new(AtomicUsize::new(0));
    let met = Arc::new(AtomicUsize::new(0));
    let (a, m) = (arrived.clone(), met.clone());
    let handler = handler_fn(move |_msg, _ctx| {
        a.fetch_add(1, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while a.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1)); // blocks this worker thread
        }
        if a.load(Ordering::SeqCst) >= 2 {
            m.fetch_add(1, Ordering::SeqCst);
        }
        async { Ok(Outcome::Complete) }
    });
    let settings = fast_settings().with_receive_wait(Duration::from_millis(50));
    let report = run_until_drained(
        Processor::new(provider, queue.clone(), handler).with_settings(settings),
        &mem,
        &queue,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(report.completed, 2);
    assert_eq!(
        met.load(Ordering::SeqCst),
        2,
        "both handlers ran at the same time"
    );
}

/// Dropping `run`'s future mid-run leaves its handlers running in their lanes: their locks
/// must keep being renewed (the renewal driver stops only once no task of the processor is
/// left, or when a finished `run` closes it).
#[tokio::test(start_paused = true)]
async fn locks_are_still_renewed_after_the_run_future_is_dropped() {
    let spec = QueueSpec::default().with_lock_duration(Duration::from_secs(5));
    let (mem, provider, queue) = memory("dropped-run", spec).await;
    provider.send(&queue, Message::new("slow")).await.unwrap();
    let (started, completed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (s, c) = (started.clone(), completed.clone());
    let handler = handler_fn(move |_msg, ctx| {
        let (s, c) = (s.clone(), c.clone());
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            // Twelve lock durations.
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(!ctx.is_cancelled(), "the lock was lost");
            c.fetch_add(1, Ordering::SeqCst);
            Ok(Outcome::Complete)
        }
    });
    let processor = Processor::new(provider, queue.clone(), handler).with_settings(fast_settings());
    let run = tokio::spawn(processor.run(CancellationToken::new()));
    assert!(
        wait_until(Duration::from_secs(10), || started.load(Ordering::SeqCst)
            == 1)
        .await
    );
    run.abort(); // drops the `run` future; the lane with the handler goes on
    assert!(
        wait_until(Duration::from_secs(120), || mem
            .message_count(&queue)
            .unwrap()
            == 0)
        .await,
        "the message was completed"
    );
    assert_eq!(completed.load(Ordering::SeqCst), 1);
    assert_eq!(started.load(Ordering::SeqCst), 1, "never redelivered");
}
