//! `ProcessorHandle` (issue 13 item 4): state through a processor's life, degraded with the
//! last error during a broker outage and back, the error stream, and live counters.

mod common;

use std::{sync::Arc, time::Duration};

use queue_runtime::{
    CancellationToken, CircuitBreakerSettings, HandlerError, Message, Outcome, Processor,
    ProcessorSettings, ProcessorState, QueueSpec, SharedQueueProvider, handler_fn,
};

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_reports_state_errors_and_counters_on_memory() {
    let (_mem, inner, queue) = common::memory("handle", QueueSpec::default()).await;
    let faulty = common::Faulty::new(inner);
    let faults = faulty.faults.clone();
    let provider: SharedQueueProvider = Arc::new(faulty);
    let processor = Processor::new(
        provider.clone(),
        queue.clone(),
        handler_fn(|msg, _ctx| async move {
            if msg.body().as_ref() == b"bad" {
                return Err(HandlerError::permanent("bad input"));
            }
            Ok(Outcome::Complete)
        }),
    )
    // The receive and session-accept loops both fail during the outage and both feed the
    // circuit breaker; on a loaded machine the outage can outlast the default threshold,
    // and the default 10 s open circuit would then outlast `eventually`. This test is about
    // the state the handle reports, so the circuit reopens for trials quickly.
    .with_settings(
        ProcessorSettings::default()
            .with_receive_wait(Duration::from_millis(50))
            .with_circuit_breaker(
                CircuitBreakerSettings::default().with_open_duration(Duration::from_millis(200)),
            ),
    );
    let handle = processor.handle();
    let mut errors = handle.errors();
    assert_eq!(handle.state(), ProcessorState::Starting);
    assert!(!handle.is_ready());

    let shutdown = CancellationToken::new();
    let run = tokio::spawn(processor.run(shutdown.clone()));
    eventually("running", || handle.is_ready()).await;

    // Counters move while it runs; a handler failure reaches the error stream.
    provider.send(&queue, Message::new("good")).await.unwrap();
    provider.send(&queue, Message::new("bad")).await.unwrap();
    eventually("both settled", || {
        let c = handle.counters();
        c.completed == 1 && c.dead_lettered == 1
    })
    .await;
    let err = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(err.operation, "handler");
    assert!(err.message.contains("bad input"), "{err}");

    // A broker outage makes it degraded, with the failure; recovery makes it running.
    faults
        .outage
        .store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("degraded", || {
        matches!(handle.state(), ProcessorState::Degraded { last_error } if last_error.operation == "receive")
    })
    .await;
    assert!(!handle.is_ready());
    faults
        .outage
        .store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("running again", || handle.is_ready()).await;

    shutdown.cancel();
    let report = run.await.unwrap().unwrap();
    assert_eq!(handle.state(), ProcessorState::Stopped);
    assert_eq!(handle.counters().completed, report.completed);
}

/// A processor that stops on its own error publishes it and ends `Stopped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_is_published() {
    let (_mem, provider, _queue) = common::memory("exists", QueueSpec::default()).await;
    let missing = queue_runtime::QueueName::new("missing").unwrap();
    let processor = Processor::new(
        provider,
        missing,
        handler_fn(|_m, _c| async { Ok(Outcome::Complete) }),
    );
    let handle = processor.handle();
    let mut errors = handle.errors();
    assert!(processor.run(CancellationToken::new()).await.is_err());
    assert_eq!(handle.state(), ProcessorState::Stopped);
    let err = errors.try_recv().unwrap();
    assert_eq!(err.operation, "run");
}
