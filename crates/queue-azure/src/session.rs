//! Session receivers: a receive link with a `com.microsoft:session-filter`.

use std::{
    fmt,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;
use fe2o3_amqp::types::primitives::{Binary, Value};
use queue_core::{
    DeadLetterReason, QueueError, QueueName, Receipt, ReceiveOptions, ReceivedMessage, Result,
    SessionId, SessionReceiver, SessionSelector,
};
use tokio::time::Instant;

use crate::{
    amqp::{Live, ReceiverLink},
    error::{Ctx, Failure, map_failure},
    provider::{Disposition, Shared, first_time, state_bytes},
};

/// A locked Service Bus session.
///
/// Its link is never recycled (it holds the session lock), so fe2o3-amqp's record of the
/// link's peek-locked deliveries (see `ReceiverLink::delivered`) grows for the receiver's
/// lifetime: a session receiver is meant to be short-lived (the runtime closes it when the
/// session goes idle), and closing or dropping it frees that record.
pub(crate) struct ServiceBusSessionReceiver {
    shared: Arc<Shared>,
    live: Arc<Live>,
    link: Arc<ReceiverLink>,
    queue: QueueName,
    session: SessionId,
    locked_until: Mutex<SystemTime>,
}

impl fmt::Debug for ServiceBusSessionReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusSessionReceiver")
            .field("queue", &self.queue)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl ServiceBusSessionReceiver {
    pub(crate) async fn accept(
        shared: Arc<Shared>,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Self>> {
        let amqp = shared.amqp.clone();
        let named = match &selector {
            SessionSelector::Named(s) => Some(s.clone()),
            _ => None,
        };
        let ctx = Ctx::new("accept_session", queue.as_str()).with_session(named.as_ref());
        let deadline = Instant::now() + wait;
        let mut attempt = 0;
        let (live, link) = loop {
            attempt += 1;
            let live = match amqp.live().await {
                Ok(l) => l,
                Err(f) if attempt == 1 && crate::amqp::is_connection_loss(&f) => continue,
                Err(f) => return Err(map_failure(f, ctx)),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let res = amqp
                .attach_receiver(
                    &live,
                    queue.as_str(),
                    Some(named.as_ref().map(SessionId::as_str)),
                    Some(left.max(Duration::from_millis(100))),
                )
                .await;
            match res {
                Ok(link) => break (live, link),
                // Next-available with none free: the service answers with a timeout.
                Err(Failure::Condition { ref condition, .. })
                    if named.is_none() && condition == "com.microsoft:timeout" =>
                {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    tokio::time::sleep(Duration::from_millis(100).min(left)).await;
                }
                Err(f) if attempt == 1 && crate::amqp::is_connection_loss(&f) => {}
                Err(f) => return Err(map_failure(f, ctx)),
            }
        };
        let session = match (&named, &link.session_id) {
            (Some(s), _) => s.clone(),
            (None, Some(id)) => SessionId::new(id)?,
            (None, None) => {
                return Err(map_failure(
                    Failure::Condition {
                        condition: "amqp:decode-error".into(),
                        description: "the service did not name the accepted session".into(),
                    },
                    ctx,
                ));
            }
        };
        let me = Self {
            shared,
            live,
            link,
            queue: queue.clone(),
            session,
            locked_until: Mutex::new(SystemTime::now()),
        };
        match me.link.locked_until {
            Some(until) => *me.locked_until.lock().unwrap_or_else(|p| p.into_inner()) = until,
            // The attach answer named no `com.microsoft:locked-until-utc`: a renewal reads
            // the expiry.
            None => {
                me.renew().await?;
            }
        }
        Ok(Some(me))
    }

    fn ctx(&self, operation: &'static str) -> Ctx<'_> {
        Ctx::new(operation, self.queue.as_str()).with_session(Some(&self.session))
    }

    fn check_receipt(&self, receipt: &Receipt, operation: &'static str) -> Result<()> {
        if receipt.session() != Some(&self.session) || receipt.queue() != &self.queue {
            return Err(map_failure(Failure::LockGone, self.ctx(operation)));
        }
        Ok(())
    }

    /// Like the official SDKs, a receiver whose session lock ran out fails fast: the
    /// session may already belong to another receiver.
    fn ensure_locked(&self, operation: &'static str) -> Result<()> {
        if SystemTime::now() >= self.locked_until() {
            return Err(QueueError::SessionLockLost {
                provider: crate::error::PROVIDER,
                queue: self.queue.as_str().to_owned(),
                session: self.session.clone(),
                operation,
            });
        }
        Ok(())
    }

    /// Renews the session lock on `$management` and records the new expiry.
    async fn renew(&self) -> Result<SystemTime> {
        let ctx = self.ctx("renew_session_lock");
        let resp = self
            .shared
            .manage_ctx(
                self.queue.as_str(),
                "com.microsoft:renew-session-lock",
                self.session_body(),
                Some(&self.link.name),
                ctx,
            )
            .await
            .map_err(|e| match e {
                QueueError::LockLost { .. } => QueueError::SessionLockLost {
                    provider: crate::error::PROVIDER,
                    queue: self.queue.as_str().to_owned(),
                    session: self.session.clone(),
                    operation: "renew_session_lock",
                },
                e => e,
            })?;
        let until = first_time(resp.get("expiration")).ok_or_else(|| {
            map_failure(
                Failure::Condition {
                    condition: "amqp:decode-error".into(),
                    description: "renew-session-lock answered without an expiration".into(),
                },
                ctx,
            )
        })?;
        *self.locked_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
        Ok(until)
    }

    /// The error a failed session receive reports.
    fn receive_error(&self, f: Failure) -> QueueError {
        self.shared.amqp.note_failure(&self.live, &f);
        let f = match f {
            // The link died with its connection: the receiver is done (the broker releases
            // the session), but no lock ran out, so the error names the real cause rather
            // than a lost lock.
            Failure::ConnectionLost(why) => Failure::ConnectionLost(format!(
                "the connection carrying the session was lost ({why}); accept the session again"
            )),
            f => f,
        };
        map_failure(f, self.ctx("session_receive"))
    }

    /// Runs a receive step within `operation_timeout` plus `wait`, unless the connection
    /// dies first.
    async fn bounded<T>(
        &self,
        wait: Duration,
        step: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T> {
        let limit = self.shared.amqp.cfg.operation_timeout.saturating_add(wait);
        tokio::time::timeout(limit, self.live.unless_lost(step))
            .await
            .unwrap_or(Err(Failure::Timeout(wait)))
            .map_err(|f| self.receive_error(f))
    }

    /// After a drained receive came back empty: a session lock renewal is a round trip on
    /// the same connection behind the drain, so once it is answered a delivery the service
    /// sent before the drain has reached the client; fe2o3 hands it to the link from
    /// another task (each AMQP session has its own), which the straggler turns allow for.
    /// Those are returned (at most `max`).
    async fn collect_after_drain(&self, max: usize) -> Result<Vec<ReceivedMessage>> {
        self.renew().await?;
        let max = max.clamp(1, self.shared.amqp.cfg.max_batch_size);
        let late = self
            .shared
            .stragglers(&self.link, &self.queue, &self.session, max);
        self.bounded(Duration::ZERO, late).await
    }

    fn session_body(&self) -> Vec<(&'static str, Value)> {
        vec![(
            "session-id",
            Value::String(self.session.as_str().to_owned()),
        )]
    }
}

#[async_trait]
impl SessionReceiver for ServiceBusSessionReceiver {
    fn session_id(&self) -> &SessionId {
        &self.session
    }

    fn queue(&self) -> &QueueName {
        &self.queue
    }

    fn locked_until(&self) -> SystemTime {
        *self.locked_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        self.ensure_locked("session_receive")?;
        let pulled = self.shared.pull(
            &self.link,
            self.queue.as_str(),
            &self.queue,
            Some(&self.session),
            options,
        );
        let got = self.bounded(options.wait, pulled).await?;
        if !got.is_empty() {
            return Ok(got);
        }
        // Nothing came in time: the credit was drained, but a delivery the broker sent
        // before it saw the drain may still be on its way. A session lock renewal is a
        // round trip on the same connection (and keeps the lock fresh): once it is
        // answered, such a delivery has arrived, and it is returned rather than left in
        // the link buffer to be released unhandled when the session is closed.
        self.collect_after_drain(options.max_messages).await
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.check_receipt(receipt, "complete")?;
        self.ensure_locked("complete")?;
        self.shared
            .settle(receipt, Disposition::Complete, "complete")
            .await
    }

    async fn abandon(&self, receipt: &Receipt) -> Result<()> {
        self.check_receipt(receipt, "abandon")?;
        self.ensure_locked("abandon")?;
        self.shared
            .settle(receipt, Disposition::Abandon, "abandon")
            .await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.check_receipt(receipt, "dead_letter")?;
        self.ensure_locked("dead_letter")?;
        self.shared
            .settle(receipt, Disposition::DeadLetter(&reason), "dead_letter")
            .await
    }

    async fn renew_session_lock(&self) -> Result<SystemTime> {
        // An expired session lock cannot be renewed: the session may have a new owner.
        self.ensure_locked("renew_session_lock")?;
        self.renew().await
    }

    async fn get_state(&self) -> Result<Option<Bytes>> {
        let resp = self
            .shared
            .manage_ctx(
                self.queue.as_str(),
                "com.microsoft:get-session-state",
                self.session_body(),
                Some(&self.link.name),
                self.ctx("get_state"),
            )
            .await?;
        Ok(state_bytes(resp.get("session-state")))
    }

    async fn set_state(&self, state: Option<Bytes>) -> Result<()> {
        let mut body = self.session_body();
        body.push((
            "session-state",
            state.map_or(Value::Null, |b| Value::Binary(Binary::from(b.to_vec()))),
        ));
        self.shared
            .manage_ctx(
                self.queue.as_str(),
                "com.microsoft:set-session-state",
                body,
                Some(&self.link.name),
                self.ctx("set_state"),
            )
            .await?;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.link.close().await;
        self.shared.forget_link(self.link.id);
        Ok(())
    }
}

impl Drop for ServiceBusSessionReceiver {
    fn drop(&mut self) {
        self.link.closed.store(true, Ordering::Release);
        let link = self.link.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { link.close().await });
        }
    }
}
