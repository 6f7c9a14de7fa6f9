//! The in-memory [`SessionReceiver`].

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;
use queue_core::{
    DeadLetterReason, QueueName, Receipt, ReceiveOptions, ReceivedMessage, Result, SessionId,
    SessionReceiver,
};

use crate::{
    provider::Inner,
    state::{PROVIDER, SessionLock, Settle, Token},
};

/// A session locked by one receiver of an [`crate::InMemoryProvider`].
///
/// Dropping it without [`SessionReceiver::close`] keeps the lock until it expires, as a
/// crashed Service Bus client would.
pub(crate) struct MemorySessionReceiver {
    inner: Arc<Inner>,
    queue: QueueName,
    session: SessionId,
    token: u64,
    locked_until: Mutex<SystemTime>,
}

impl fmt::Debug for MemorySessionReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySessionReceiver")
            .field("queue", &self.queue)
            .field("session", &self.session)
            .field("locked_until", &self.locked_until())
            .finish_non_exhaustive()
    }
}

impl MemorySessionReceiver {
    pub(crate) fn new(
        inner: Arc<Inner>,
        queue: QueueName,
        session: SessionId,
        lock: SessionLock,
    ) -> Self {
        let locked_until = Mutex::new(inner.clock.to_system(lock.until));
        Self {
            inner,
            queue,
            session,
            token: lock.token,
            locked_until,
        }
    }

    fn settle(&self, receipt: &Receipt, how: Settle) -> Result<()> {
        let op = how.operation();
        let lost = || queue_core::QueueError::LockLost {
            provider: PROVIDER,
            queue: self.queue.to_string(),
            operation: op,
        };
        if receipt.provider() != PROVIDER
            || receipt.queue() != &self.queue
            || receipt.session() != Some(&self.session)
        {
            return Err(lost());
        }
        let token = Token::parse(receipt.token_bytes()).ok_or_else(lost)?;
        self.inner.with_queue(&self.queue, op, |q, now| {
            let r = q.settle_in_session(&self.session, self.token, token, how, now);
            if r.is_ok() {
                q.signal.wake();
            }
            r
        })?
    }
}

#[async_trait]
impl SessionReceiver for MemorySessionReceiver {
    fn session_id(&self) -> &SessionId {
        &self.session
    }

    fn queue(&self) -> &QueueName {
        &self.queue
    }

    fn locked_until(&self) -> SystemTime {
        *self.locked_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        let max = options.max_messages.clamp(1, self.inner_limits_batch());
        let clock = self.inner.clock;
        let got = self
            .inner
            .wait_for(&self.queue, "receive", options.wait, |q, now| {
                let batch = q.receive_session(&self.session, self.token, max, now, &clock)?;
                Ok((!batch.is_empty()).then_some(batch))
            })
            .await?;
        Ok(got.unwrap_or_default())
    }

    /// Looks once: the in-memory broker knows the session's backlog exactly.
    async fn receive_available(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        self.receive(ReceiveOptions::new(options.max_messages, Duration::ZERO))
            .await
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.settle(receipt, Settle::Complete)
    }

    async fn abandon(&self, receipt: &Receipt) -> Result<()> {
        self.settle(receipt, Settle::Abandon { delay: None })
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.settle(receipt, Settle::DeadLetter(reason))
    }

    async fn renew_session_lock(&self) -> Result<SystemTime> {
        let until = self
            .inner
            .with_queue(&self.queue, "renew_session_lock", |q, now| {
                q.renew_session(&self.session, self.token, now, "renew_session_lock")
            })??;
        let until = self.inner.clock.to_system(until);
        *self.locked_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
        Ok(until)
    }

    async fn get_state(&self) -> Result<Option<Bytes>> {
        self.inner.with_queue(&self.queue, "get_state", |q, now| {
            q.session_state(&self.session, self.token, now)
        })?
    }

    async fn set_state(&self, state: Option<Bytes>) -> Result<()> {
        self.inner.with_queue(&self.queue, "set_state", |q, now| {
            q.set_session_state(&self.session, self.token, state, now)
        })?
    }

    /// Releases the lock if this receiver still holds it. Closing twice, or after the
    /// lock was lost or the queue deleted, is not an error.
    async fn close(&self) -> Result<()> {
        // An unknown queue means there is nothing left to release.
        let _ = self.inner.with_queue(&self.queue, "close", |q, now| {
            q.close_session(&self.session, self.token, now);
            q.signal.wake();
        });
        Ok(())
    }
}

impl MemorySessionReceiver {
    fn inner_limits_batch(&self) -> usize {
        self.inner.max_batch_size()
    }
}
