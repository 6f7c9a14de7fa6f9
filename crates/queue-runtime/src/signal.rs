//! [`shutdown_signal`]: the process's request to stop (SIGTERM, SIGINT / Ctrl-C).
//!
//! A service stops its consumers when the platform asks, so that in-flight messages are
//! finished or handed back instead of waiting out their locks:
//!
//! ```no_run
//! # async fn demo(processor: queue_runtime::Processor) -> queue_runtime::Result<()> {
//! // Cancelled on SIGTERM or Ctrl-C; `run` then drains within `shutdown_timeout`.
//! let report = processor.run(queue_runtime::shutdown_token()).await?;
//! assert!(report.completed <= report.received);
//! # Ok(())
//! # }
//! ```

use tokio_util::sync::CancellationToken;

/// Completes when the process is asked to stop: SIGTERM (what Kubernetes, systemd and
/// `docker stop` send) or SIGINT (Ctrl-C) on Unix, Ctrl-C or Ctrl-Break on Windows.
///
/// Pass it to [`crate::Processor::run`] through a token so that the processor drains and
/// abandons in-flight messages instead of being killed with their locks held:
///
/// ```no_run
/// # async fn demo(processor: queue_runtime::Processor) -> queue_runtime::Result<()> {
/// use queue_runtime::{CancellationToken, shutdown_signal};
///
/// let shutdown = CancellationToken::new();
/// let on_signal = shutdown.clone();
/// tokio::spawn(async move {
///     shutdown_signal().await;
///     on_signal.cancel();
/// });
/// let report = processor.run(shutdown).await?;
/// # Ok(())
/// # }
/// ```
///
/// If a signal handler cannot be installed (no signal support in this environment), the
/// failure is logged once and only the remaining signals are awaited; it never completes
/// spuriously.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutdown signal received");
}

/// A token cancelled by [`shutdown_signal`], from a spawned task (requires a Tokio runtime).
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::error!(signal = name, error = %err, "cannot listen for the signal");
            None
        }
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM");
    let mut int = install(SignalKind::interrupt(), "SIGINT");
    tokio::select! {
        () = recv(term.as_mut()) => {}
        () = recv(int.as_mut()) => {}
    }
}

/// The next delivery of `signal`, or never if it could not be installed.
#[cfg(unix)]
async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    if let Err(err) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %err, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}
