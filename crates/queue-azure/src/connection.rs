//! The connection's life: opened in the background, watched, and reopened with capped,
//! jittered backoff after a loss.
//!
//! Callers never connect themselves and never wait on a lock held across a connect or a
//! backoff sleep: a caller that finds no usable connection starts the connector task (if
//! it is not running) and waits, at most until its own deadline, for the outcome of the
//! connector's next attempt. So with the namespace down a call fails fast with the real
//! cause, and once the namespace is back the first call succeeds within one backoff step.

use std::{
    sync::{Arc, MutexGuard, Weak, atomic::Ordering},
    time::Duration,
};

use fe2o3_amqp::{Connection, Session, sasl_profile::SaslProfile};
use tokio::time::Instant;

use crate::{
    amqp::{Amqp, Live, RpcLink},
    error::Failure,
    guard::MAX_FRAME_SIZE,
    transport,
};

/// What the connection manager knows; guarded by a mutex that is never held across an
/// `.await`.
#[derive(Default)]
pub(crate) struct ConnState {
    live: Option<Arc<Live>>,
    /// A connector task is running.
    connecting: bool,
    /// Connect attempts finished so far (the value published on `Amqp::attempts`).
    attempts: u64,
    /// Why the last attempt failed, while no connection is up.
    last_error: Option<Failure>,
    /// When the current outage began (a loss, or a first attempt that failed).
    outage: Option<Instant>,
    /// Bumped by `close`: a connector started before it discards what it opens.
    epoch: u64,
}

/// The delay before reconnect attempt `failed + 1`: `first` doubled per failure, capped at
/// `max`, minus up to a fifth (`jitter` in `[0, 1)`) so clients do not retry in step.
pub(crate) fn backoff(first: Duration, max: Duration, failed: u32, jitter: f64) -> Duration {
    queue_core::backoff::Backoff::new(first, max)
        .with_jitter(queue_core::backoff::JitterMode::Down(0.2))
        .delay(failed.max(1), jitter)
}

/// A uniform value in `[0, 1)` (from the random bits of a v4 UUID; no RNG dependency).
fn jitter() -> f64 {
    let bits = (uuid::Uuid::new_v4().as_u128() >> 64) as u64 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

impl Amqp {
    fn lock_state(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live connection. Without one, waits (at most `operation_timeout`) for the next
    /// connect attempt and returns its failure if it fails.
    pub(crate) async fn live(self: &Arc<Self>) -> Result<Arc<Live>, Failure> {
        let timeout = self.cfg.operation_timeout;
        let deadline = Instant::now() + timeout;
        let mut attempts = self.attempts.subscribe();
        let seen = {
            let mut st = self.lock_state();
            if let Some(l) = st.live.as_ref().filter(|l| l.is_usable()) {
                return Ok(l.clone());
            }
            self.start_connector(&mut st);
            st.attempts
        };
        loop {
            let woke = tokio::time::timeout_at(deadline, attempts.changed()).await;
            let st = self.lock_state();
            if let Some(l) = st.live.as_ref().filter(|l| l.is_usable()) {
                return Ok(l.clone());
            }
            if woke.is_err() || st.attempts > seen {
                return Err(st.last_error.clone().unwrap_or(Failure::Timeout(timeout)));
            }
        }
    }

    /// Starts the connector task unless it runs; drops a dead connection first.
    fn start_connector(&self, st: &mut ConnState) {
        if st.connecting {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        st.connecting = true;
        if let Some(old) = st.live.take() {
            rt.spawn(close_live(old, Duration::from_millis(200)));
        }
        if st.outage.is_some() {
            tracing::info!(host = %self.cfg.endpoint.host, "reconnecting to Service Bus");
        }
        rt.spawn(run_connector(self.me.clone(), st.epoch));
    }

    /// Marks `live` dead after a connection-level failure and starts reconnecting in the
    /// background. Logged once per connection, with the cause.
    pub(crate) fn note_failure(&self, live: &Live, f: &Failure) {
        if !crate::amqp::is_connection_loss(f) || !live.mark_dead() {
            return;
        }
        let mut st = self.lock_state();
        let current = st
            .live
            .as_ref()
            .is_some_and(|l| std::ptr::eq(Arc::as_ptr(l), live));
        if !current {
            return;
        }
        tracing::warn!(
            host = %self.cfg.endpoint.host,
            cause = %f.describe(),
            "Service Bus connection lost"
        );
        st.outage.get_or_insert_with(Instant::now);
        self.start_connector(&mut st);
    }

    /// Records the outcome of one connect attempt; returns how long to wait before the
    /// next one, or `None` when the connector is done (connected, or closed meanwhile).
    fn finish_attempt(
        &self,
        epoch: u64,
        res: Result<Live, Failure>,
        failed: &mut u32,
    ) -> Option<Duration> {
        let mut st = self.lock_state();
        if st.epoch != epoch {
            return None; // closed meanwhile; the caller of `close` owns the state now
        }
        st.attempts += 1;
        let next = match res {
            Ok(live) => {
                let live = Arc::new(live);
                if let Some(since) = st.outage.take() {
                    tracing::info!(
                        host = %self.cfg.endpoint.host,
                        attempts = *failed + 1,
                        outage_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "Service Bus connection restored"
                    );
                }
                if let Some(me) = self.me.upgrade() {
                    me.spawn_refresher(Arc::downgrade(&live));
                }
                spawn_watcher(self.me.clone(), Arc::downgrade(&live));
                st.live = Some(live);
                st.last_error = None;
                st.connecting = false;
                None
            }
            Err(f) => {
                if st.outage.is_none() {
                    st.outage = Some(Instant::now());
                    tracing::warn!(
                        host = %self.cfg.endpoint.host,
                        cause = %f.describe(),
                        "cannot connect to Service Bus; retrying in the background"
                    );
                } else {
                    tracing::debug!(cause = %f.describe(), "reconnect attempt failed");
                }
                st.last_error = Some(f);
                *failed += 1;
                let cfg = &self.cfg;
                Some(backoff(
                    cfg.reconnect_backoff,
                    cfg.max_reconnect_backoff,
                    *failed,
                    jitter(),
                ))
            }
        };
        let n = st.attempts;
        drop(st);
        self.attempts.send_replace(n);
        next
    }

    /// Opens a connection and its `$cbs` link, within `operation_timeout` in total.
    pub(crate) async fn connect(&self) -> Result<Live, Failure> {
        let timeout = self.cfg.operation_timeout;
        let deadline = Instant::now() + timeout;
        let stream = transport::connect(&self.cfg, timeout).await?;
        let ep = &self.cfg.endpoint;
        let container = format!("queue-azure-{}", uuid::Uuid::new_v4());
        let open = async {
            let mut connection = Connection::builder()
                .container_id(container)
                .hostname(ep.host.as_str())
                .sasl_profile(SaslProfile::Anonymous)
                .max_frame_size(u32::try_from(MAX_FRAME_SIZE).unwrap_or(u32::MAX))
                .idle_time_out(120_000u32)
                // TLS, when used, is already established underneath (see `transport`).
                .scheme("amqp")
                .open_with_stream(stream)
                .await
                .map_err(|e| Failure::ConnectionLost(format!("open failed: {e}")))?;
            let session = Session::begin(&mut connection)
                .await
                .map_err(|e| Failure::ConnectionLost(format!("begin failed: {e}")))?;
            let cbs = RpcLink::attach(session, "$cbs").await?;
            Ok::<_, Failure>(Live::new(connection, cbs))
        };
        let live = tokio::time::timeout_at(deadline, open)
            .await
            .map_err(|_| Failure::Timeout(timeout))??;
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(live)
    }

    /// Closes the connection (best effort). Later calls open a new one.
    pub(crate) async fn close(&self) {
        let old = {
            let mut st = self.lock_state();
            st.epoch += 1;
            st.connecting = false;
            st.outage = None;
            st.last_error = None;
            st.live.take()
        };
        if let Some(live) = old {
            close_live(live, Duration::from_secs(2)).await;
        }
    }
}

/// Closes a connection, waiting at most `within`.
async fn close_live(live: Arc<Live>, within: Duration) {
    live.mark_dead();
    let mut c = live.connection.lock().await;
    let _ = tokio::time::timeout(within, c.close()).await;
}

/// How often the watcher looks at the connection's event loop.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Watches a connection's event loop; when it stops (the peer closed the connection, the
/// socket failed), the connection is marked lost with the cause fe2o3 reports, in-flight
/// calls on it fail at once, and the reconnect starts without waiting for the next call.
fn spawn_watcher(amqp: Weak<Amqp>, live: Weak<Live>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let Some(l) = live.upgrade() else { return };
            if !l.is_usable() {
                return;
            }
            let stopped = l.connection.try_lock().is_ok_and(|c| c.is_closed());
            if !stopped {
                continue;
            }
            let cause = {
                let mut c = l.connection.lock().await;
                match tokio::time::timeout(Duration::from_secs(1), c.on_close()).await {
                    Ok(Err(e)) => format!("the connection ended: {e}"),
                    _ => "the connection ended".to_owned(),
                }
            };
            if let Some(a) = amqp.upgrade() {
                a.note_failure(&l, &Failure::ConnectionLost(cause));
            }
            return;
        }
    });
}

/// Connects until a connection is up, sleeping the backoff between attempts. Holds only a
/// weak reference while it sleeps, so a dropped provider stops it.
async fn run_connector(amqp: Weak<Amqp>, epoch: u64) {
    let mut failed = 0u32;
    loop {
        let Some(me) = amqp.upgrade() else { return };
        let res = me.connect().await;
        let wait = me.finish_attempt(epoch, res, &mut failed);
        drop(me);
        match wait {
            Some(d) => tokio::time::sleep(d).await,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_down_by_at_most_a_fifth() {
        let first = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        assert_eq!(backoff(first, max, 1, 0.0), first);
        assert_eq!(backoff(first, max, 2, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(first, max, 4, 0.0), Duration::from_millis(800));
        assert_eq!(backoff(first, max, 30, 0.0), max);
        assert_eq!(backoff(first, max, 1, 0.5), Duration::from_millis(90));
        let low = backoff(first, max, 30, 0.999_999);
        assert!(low >= max.mul_f64(0.8) && low < max, "{low:?}");
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
