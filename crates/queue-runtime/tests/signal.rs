//! `shutdown_signal` completes on SIGTERM and on SIGINT (Unix), and a processor given its
//! token drains and returns.
#![cfg(unix)]

mod common;

use std::time::Duration;

use queue_runtime::{Outcome, Processor, QueueSpec, handler_fn, shutdown_signal, shutdown_token};

fn raise(signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_complete_shutdown_signal() {
    for signal in ["-TERM", "-INT"] {
        let waiting = tokio::spawn(shutdown_signal());
        // Let the task install its handlers before the signal is sent.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "{signal}: completed before any signal"
        );
        raise(signal);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap_or_else(|_| panic!("{signal}: shutdown_signal did not complete"))
            .unwrap();
    }
    // A processor stopped by the signal's token returns its report.
    let (_mem, provider, queue) = common::memory("signal", QueueSpec::default()).await;
    let token = shutdown_token();
    let processor = Processor::new(
        provider,
        queue,
        handler_fn(|_m, _c| async { Ok(Outcome::Complete) }),
    );
    let run = tokio::spawn(processor.run(token));
    tokio::time::sleep(Duration::from_millis(200)).await;
    raise("-TERM");
    let report = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run returns after SIGTERM")
        .unwrap()
        .unwrap();
    assert!(report.drained_in_time);
}
