//! [`ServiceBusProvider`]: the [`QueueProvider`] over AMQP.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, Weak, atomic::Ordering},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;
use fe2o3_amqp::types::{
    messaging::Body,
    primitives::{Array, Binary, Value},
};
use queue_core::{
    Capabilities, DeadLetterReason, Message, MessageId, QueueError, QueueName, QueueProvider,
    Receipt, ReceiveOptions, ReceivedMessage, Result, SessionId, SessionReceiver, SessionSelector,
    SessionSupport,
};
use tokio::time::Instant;

use crate::{
    amqp::{Amqp, ReceiverLink, Response, is_connection_loss, recv_failure},
    builder::ServiceBusBuilder,
    config::ServiceBusConfig,
    convert::{self, encoded_len, from_amqp, lock_token, system_time, to_amqp},
    error::{Ctx, Failure, PROVIDER, map_failure},
    session::ServiceBusSessionReceiver,
    settle::{Coalescer, Group},
};

/// After the first message of a receive arrives, how long to wait for more.
const GATHER: Duration = Duration::from_millis(20);
/// Scheduler turns spent collecting deliveries that arrived after a drain.
const STRAGGLER_TURNS: usize = 4;
/// How many times a send is tried when it fails with a transient error.
const SEND_ATTEMPTS: u32 = 3;
/// First pause before a send is retried; it doubles up to [`SEND_RETRY_MAX`].
const SEND_RETRY_FIRST: Duration = Duration::from_millis(50);
const SEND_RETRY_MAX: Duration = Duration::from_secs(1);

/// Polls `fut` once, without waiting: its output if it is ready now, `None` if not (the
/// future is then dropped). Unlike a zero-duration timeout, which waits for the timer
/// wheel's next tick (about 1 ms), this never sleeps.
pub(crate) async fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// What the provider remembers about one locked delivery.
pub(crate) struct LockEntry {
    link: Weak<ReceiverLink>,
    /// The entity the message was received from (`q` or `q/$deadletterqueue`).
    entity: String,
    locked_until: Option<SystemTime>,
    session: Option<String>,
}

pub(crate) struct Shared {
    pub(crate) amqp: Arc<Amqp>,
    settler: Arc<Coalescer>,
    locks: Mutex<HashMap<uuid::Uuid, LockEntry>>,
}

/// The Azure Service Bus provider. Cheap to clone; clones share one AMQP connection.
///
/// ```no_run
/// # async fn run() -> queue_core::Result<()> {
/// use queue_azure::ServiceBusProvider;
/// use queue_core::{Message, QueueName, QueueProvider};
///
/// let provider = ServiceBusProvider::builder()
///     .with_connection_string(&std::env::var("SERVICEBUS_CONNECTION_STRING").unwrap_or_default())
///     .build()?;
/// let queue = QueueName::new("orders")?;
/// provider.check_access(&queue).await?;
/// provider.send(&queue, Message::new("hello")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServiceBusProvider {
    shared: Arc<Shared>,
}

impl fmt::Debug for ServiceBusProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusProvider")
            .field("config", &self.shared.amqp.cfg)
            .finish_non_exhaustive()
    }
}

pub(crate) fn uuid_value(u: uuid::Uuid) -> Value {
    Value::Uuid(fe2o3_amqp::types::primitives::Uuid::from(*u.as_bytes()))
}

fn dlq(queue: &str) -> String {
    format!("{queue}/$deadletterqueue")
}

impl ServiceBusProvider {
    /// Starts building a provider; finish with [`ServiceBusBuilder::build`]. From a
    /// configuration file, use [`ServiceBusProvider::from_settings`].
    pub fn builder() -> ServiceBusBuilder {
        ServiceBusBuilder::default()
    }

    /// A provider for `config`. No connection is made until the first call.
    pub(crate) fn new(config: ServiceBusConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                amqp: Amqp::new(config),
                settler: Arc::default(),
                locks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How many tokens were put on `$cbs` so far (first authorizations and refreshes).
    pub fn token_puts(&self) -> u64 {
        self.shared.amqp.token_puts()
    }

    /// How many connections were opened so far (1 plus reconnects).
    pub fn connections_opened(&self) -> u64 {
        self.shared.amqp.connects()
    }

    /// Diagnostics: how many plain (non-session) receive links were attached so far, on
    /// all queues and dead-letter queues together. Grows by one each time a link is
    /// recycled (see [`ServiceBusBuilder::with_receive_link_recycle`]) and after
    /// reconnects.
    pub fn receive_link_generations(&self) -> u64 {
        self.shared.amqp.receive_attaches()
    }

    /// Closes the connection. Later calls open a new one.
    pub async fn close(&self) {
        self.shared.amqp.close().await;
    }

    /// Schedules messages through `$management` `schedule-message` and returns their
    /// sequence numbers, for [`Self::cancel_scheduled`]. Each message needs its
    /// `scheduled_enqueue_time`.
    pub async fn schedule(&self, queue: &QueueName, messages: Vec<Message>) -> Result<Vec<i64>> {
        let ctx = Ctx::new("schedule", queue.as_str());
        let mut items = Vec::new();
        for m in &messages {
            if m.scheduled_enqueue_time.is_none() {
                return Err(QueueError::InvalidMessage {
                    provider: PROVIDER,
                    reason: "a scheduled message needs scheduled_enqueue_time".into(),
                });
            }
            let id = m.message_id.clone().unwrap_or_else(MessageId::random);
            let out = to_amqp(m, &id);
            self.check_size(queue, &out, None)?;
            let mut entry = fe2o3_amqp::types::primitives::OrderedMap::new();
            entry.insert(
                Value::String("message-id".into()),
                Value::String(id.as_str().to_owned()),
            );
            if let Some(s) = &m.session_id {
                entry.insert(
                    Value::String("session-id".into()),
                    Value::String(s.as_str().to_owned()),
                );
            }
            entry.insert(
                Value::String("message".into()),
                Value::Binary(Binary::from(convert::encode(&out))),
            );
            items.push(Value::Map(entry));
        }
        let resp = self
            .shared
            .manage_ctx(
                queue.as_str(),
                "com.microsoft:schedule-message",
                vec![("messages", Value::List(items))],
                None,
                ctx,
            )
            .await?;
        Ok(long_list(resp.get("sequence-numbers")))
    }

    /// Cancels scheduled messages by sequence number.
    pub async fn cancel_scheduled(
        &self,
        queue: &QueueName,
        sequence_numbers: &[i64],
    ) -> Result<()> {
        let ctx = Ctx::new("cancel_scheduled", queue.as_str());
        let seqs: Vec<Value> = sequence_numbers.iter().map(|n| Value::Long(*n)).collect();
        self.shared
            .manage_ctx(
                queue.as_str(),
                "com.microsoft:cancel-scheduled-message",
                vec![("sequence-numbers", Value::Array(Array::from(seqs)))],
                None,
                ctx,
            )
            .await?;
        Ok(())
    }

    fn check_size(
        &self,
        queue: &QueueName,
        out: &convert::Outgoing,
        link_max: Option<u64>,
    ) -> Result<()> {
        let mut max = self.shared.amqp.cfg.max_message_size;
        if let Some(l) = link_max.filter(|l| *l > 0) {
            max = max.min(usize::try_from(l).unwrap_or(usize::MAX));
        }
        let size = encoded_len(out);
        if size > max {
            return Err(map_failure(
                Failure::TooLarge { size, max },
                Ctx::new("send", queue.as_str()),
            ));
        }
        Ok(())
    }

    /// Sends `msgs` (one message, or one batch delivery), retrying transient failures with
    /// the same message ids (so duplicate detection drops a copy that did arrive): at most
    /// [`SEND_ATTEMPTS`] attempts, all before `deadline`; then the last failure is returned.
    /// A dropped connection is ridden over (the retry waits for the background reconnect);
    /// a namespace that stays unreachable fails the send within a few backoff steps.
    async fn send_retrying(
        &self,
        queue: &QueueName,
        msgs: &[convert::Outgoing],
        deadline: Instant,
    ) -> Result<()> {
        let op = if msgs.len() == 1 {
            "send"
        } else {
            "send_batch"
        };
        let mut delay = SEND_RETRY_FIRST;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = self.send_attempt(queue, op, msgs, deadline);
            let res = tokio::time::timeout_at(deadline, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(QueueError::Timeout {
                        provider: PROVIDER,
                        operation: op,
                        after: self.shared.amqp.cfg.operation_timeout,
                    })
                });
            match res {
                Err(e)
                    if e.is_transient()
                        && attempts < SEND_ATTEMPTS
                        && Instant::now() + delay < deadline =>
                {
                    tracing::debug!(operation = op, error = %e, "send failed; retrying with the same message id");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(SEND_RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    async fn send_attempt(
        &self,
        queue: &QueueName,
        op: &'static str,
        msgs: &[convert::Outgoing],
        deadline: Instant,
    ) -> Result<()> {
        let ctx = Ctx::new(op, queue.as_str());
        let amqp = &self.shared.amqp;
        let (live, link) = amqp
            .sender(queue.as_str())
            .await
            .map_err(|f| map_failure(f, ctx))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let res = match msgs {
            [one] => {
                self.check_size(queue, one, link.max_message_size)?;
                live.unless_lost(link.send(one.clone(), left)).await
            }
            many => live.unless_lost(link.send_batch(many, left)).await,
        };
        if let Err(f) = res {
            amqp.note_failure(&live, &f);
            amqp.drop_sender(&live, queue.as_str());
            return Err(map_failure(f, ctx));
        }
        Ok(())
    }

    async fn send_chunk(
        &self,
        queue: &QueueName,
        chunk: &[(usize, MessageId, convert::Outgoing)],
        deadline: Instant,
    ) -> Result<()> {
        let msgs: Vec<convert::Outgoing> = chunk.iter().map(|(_, _, m)| m.clone()).collect();
        self.send_retrying(queue, &msgs, deadline).await
    }

    /// Receives from `entity` with the shared receiver, reconnecting once after a
    /// connection loss.
    async fn receive_entity(
        &self,
        queue: &QueueName,
        entity: String,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let ctx = Ctx::new("receive", queue.as_str());
        let amqp = &self.shared.amqp;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (live, link) = match amqp.receiver(&entity).await {
                Ok(x) => x,
                Err(f) if attempt == 1 && is_connection_loss(&f) => continue,
                Err(f) => return Err(map_failure(f, ctx)),
            };
            if self.shared.recycle_due(&link) {
                // Frees fe2o3-amqp's record of the link's deliveries (see `ReceiverLink`).
                amqp.retire_receiver(&live, &entity, &link);
                attempt -= 1;
                continue;
            }
            let pulled = self.shared.pull(&link, &entity, queue, None, options);
            match live.unless_lost(pulled).await {
                Ok(v) => return Ok(v),
                Err(f) => {
                    amqp.note_failure(&live, &f);
                    amqp.drop_receiver(&live, &entity, link.id);
                    if attempt == 1 && is_connection_loss(&f) {
                        continue;
                    }
                    return Err(map_failure(f, ctx));
                }
            }
        }
    }
}

fn long_list(v: Option<&Value>) -> Vec<i64> {
    let items: Vec<Value> = match v {
        Some(Value::Array(a)) => a.0.clone(),
        Some(Value::List(l)) => l.clone(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|v| match v {
            Value::Long(n) => Some(n),
            Value::Int(n) => Some(i64::from(n)),
            _ => None,
        })
        .collect()
}

fn time_list(v: Option<&Value>) -> Vec<SystemTime> {
    let items: Vec<Value> = match v {
        Some(Value::Array(a)) => a.0.clone(),
        Some(Value::List(l)) => l.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    };
    items
        .iter()
        .filter_map(|v| match v {
            Value::Timestamp(t) => Some(system_time(t)),
            _ => None,
        })
        .collect()
}

/// How settlement is requested on `$management` `update-disposition`.
#[derive(Clone, Copy)]
pub(crate) enum Disposition<'a> {
    Complete,
    Abandon,
    DeadLetter(&'a DeadLetterReason),
}

impl Shared {
    /// Pulls up to `options.max_messages` deliveries from `link`.
    pub(crate) async fn pull(
        &self,
        link: &Arc<ReceiverLink>,
        entity: &str,
        queue: &QueueName,
        session: Option<&SessionId>,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>, Failure> {
        let max = options.max_messages.clamp(1, self.amqp.cfg.max_batch_size);
        let mut guard = link.receiver.lock().await;
        let Some(r) = guard.as_mut() else {
            return Err(Failure::Condition {
                condition: "com.microsoft:session-lock-lost".into(),
                description: "the receiver is closed".into(),
            });
        };
        let deadline = Instant::now() + options.wait;
        let mut got = Vec::new();
        // Deliveries that arrived after an earlier call returned come first.
        while got.len() < max {
            match poll_once(r.recv::<Body<Value>>()).await {
                None => break,
                Some(Ok(d)) => self.admit(link, entity, queue, session, d, &mut got),
                Some(Err(e)) => return Err(recv_failure(&e)),
            }
        }
        if got.len() < max {
            let want = u32::try_from(max - got.len()).unwrap_or(u32::MAX);
            r.set_credit(want)
                .await
                .map_err(|e| Failure::ConnectionLost(format!("flow failed: {e}")))?;
            while got.len() < max {
                let until = if got.is_empty() {
                    deadline
                } else {
                    deadline.min(Instant::now() + GATHER)
                };
                match tokio::time::timeout_at(until, r.recv::<Body<Value>>()).await {
                    Err(_) => break,
                    Ok(Ok(d)) => self.admit(link, entity, queue, session, d, &mut got),
                    Ok(Err(e)) if got.is_empty() => return Err(recv_failure(&e)),
                    Ok(Err(_)) => break,
                }
            }
            if got.len() < max {
                // Take back unused credit so no message sits locked in our buffer.
                let _ = r.drain().await;
            }
        }
        Ok(got)
    }

    /// Deliveries that reached `link` after a receive gave up and drained its credit:
    /// called once a round trip on the same connection has completed after the drain, so
    /// whatever the broker sent before answering is in (or about to reach) the link buffer.
    /// The few scheduler turns let fe2o3's session task hand those over.
    pub(crate) async fn stragglers(
        &self,
        link: &Arc<ReceiverLink>,
        queue: &QueueName,
        session: &SessionId,
        max: usize,
    ) -> Result<Vec<ReceivedMessage>, Failure> {
        let mut guard = link.receiver.lock().await;
        let Some(r) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        let mut got = Vec::new();
        for _ in 0..STRAGGLER_TURNS {
            while got.len() < max {
                match poll_once(r.recv::<Body<Value>>()).await {
                    None => break,
                    Some(Ok(d)) => {
                        self.admit(link, queue.as_str(), queue, Some(session), d, &mut got)
                    }
                    Some(Err(e)) => return Err(recv_failure(&e)),
                }
            }
            tokio::task::yield_now().await;
        }
        Ok(got)
    }

    fn admit(
        &self,
        link: &Arc<ReceiverLink>,
        entity: &str,
        queue: &QueueName,
        session: Option<&SessionId>,
        d: fe2o3_amqp::link::delivery::Delivery<Body<Value>>,
        got: &mut Vec<ReceivedMessage>,
    ) {
        link.delivered.fetch_add(1, Ordering::Relaxed);
        let m = d.message();
        let Some(token) = lock_token(d.delivery_tag().as_ref(), m) else {
            tracing::warn!(entity, "delivery without a lock token ignored");
            return;
        };
        let decoded = from_amqp(m);
        if decoded
            .locked_until
            .is_some_and(|until| until <= SystemTime::now())
        {
            // Its lock ran out while it sat in the buffer; the broker delivers it again.
            return;
        }
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).insert(
            token,
            LockEntry {
                link: Arc::downgrade(link),
                entity: entity.to_owned(),
                locked_until: decoded.locked_until,
                session: session.map(|s| s.as_str().to_owned()),
            },
        );
        got.push(decoded.into_received(queue, session.cloned(), token.to_string()));
    }

    /// Settles the delivery behind `receipt`, within `operation_timeout`.
    pub(crate) async fn settle(
        &self,
        receipt: &Receipt,
        how: Disposition<'_>,
        operation: &'static str,
    ) -> Result<()> {
        let settled = self.settle_unbounded(receipt, how, operation);
        self.bounded(operation, Duration::ZERO, settled).await
    }

    async fn settle_unbounded(
        &self,
        receipt: &Receipt,
        how: Disposition<'_>,
        operation: &'static str,
    ) -> Result<()> {
        let queue = receipt.queue().as_str();
        let ctx = Ctx::new(operation, queue).with_session(receipt.session());
        if receipt.provider() != PROVIDER {
            return Err(map_failure(Failure::LockGone, ctx));
        }
        let Ok(token) = receipt.token().parse::<uuid::Uuid>() else {
            return Err(map_failure(Failure::LockGone, ctx));
        };
        let entry = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
        let associated = entry
            .as_ref()
            .and_then(|e| e.link.upgrade())
            .filter(|l| !l.closed.load(Ordering::Acquire))
            .map(|l| l.name.clone());
        let (entity, session) = match &entry {
            Some(e) => {
                // A session message is locked by its session lock (checked by the session
                // receiver, renewed with it); others by their own lock.
                if e.session.is_none() && e.locked_until.is_some_and(|u| u <= SystemTime::now()) {
                    return Err(map_failure(Failure::LockGone, ctx));
                }
                (e.entity.clone(), e.session.clone())
            }
            None => (
                queue.to_owned(),
                receipt.session().map(|s| s.as_str().to_owned()),
            ),
        };
        // Every settlement, completion included, goes over `$management`
        // `update-disposition`, so `Ok` is the broker's verdict. A disposition on the receive
        // link would be faster, but fe2o3-amqp 0.18 returns as soon as the frame is queued
        // and offers no way to await the broker's settling reply: a completion lost with the
        // connection would still be reported done. Completions and abandons are coalesced
        // (see `settle`); dead-letterings carry their own reason and go alone.
        let status = match how {
            Disposition::Complete => "completed",
            Disposition::Abandon => "abandoned",
            Disposition::DeadLetter(r) => {
                return self
                    .dead_letter_now(&entity, token, r, session, associated)
                    .await
                    .map_err(|f| map_failure(f, ctx));
            }
        };
        let group = Group {
            entity,
            status,
            session,
            associated_link: associated,
        };
        self.settler
            .settle(&self.amqp, group, token)
            .await
            .map_err(|f| map_failure(f, ctx))
    }

    async fn dead_letter_now(
        &self,
        entity: &str,
        token: uuid::Uuid,
        reason: &DeadLetterReason,
        session: Option<String>,
        associated: Option<String>,
    ) -> Result<(), Failure> {
        let mut body = vec![
            ("disposition-status", Value::String("suspended".into())),
            (
                "lock-tokens",
                Value::Array(Array::from(vec![uuid_value(token)])),
            ),
            ("deadletter-reason", Value::String(reason.reason.clone())),
            (
                "deadletter-description",
                Value::String(reason.description.clone()),
            ),
        ];
        if let Some(s) = session {
            body.push(("session-id", Value::String(s)));
        }
        self.amqp
            .manage(
                entity,
                "com.microsoft:update-disposition",
                body,
                associated.as_deref(),
            )
            .await
            .map(|_| ())
    }

    pub(crate) async fn manage_ctx(
        &self,
        entity: &str,
        op: &str,
        body: Vec<(&str, Value)>,
        associated_link: Option<&str>,
        ctx: Ctx<'_>,
    ) -> Result<Response> {
        let call = async {
            self.amqp
                .manage(entity, op, body, associated_link)
                .await
                .map_err(|f| map_failure(f, ctx))
        };
        self.bounded(ctx.operation, Duration::ZERO, call).await
    }

    /// Runs `fut` within `operation_timeout` plus `extra` (a receive's own wait), or fails
    /// with a transient `Timeout`: no public operation outlives its bound.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        extra: Duration,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.amqp.cfg.operation_timeout.saturating_add(extra);
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or(Err(QueueError::Timeout {
                provider: PROVIDER,
                operation,
                after: limit,
            }))
    }

    /// Whether the shared receive `link` should be detached and attached again: it has
    /// delivered the configured number of messages and none of them is still locked and
    /// unsettled, or it has delivered twice that number.
    fn recycle_due(&self, link: &Arc<ReceiverLink>) -> bool {
        let n = self.amqp.cfg.receive_link_recycle;
        let delivered = link.delivered.load(Ordering::Relaxed);
        if delivered < n {
            return false;
        }
        if delivered >= n.saturating_mul(2) {
            return true;
        }
        let now = SystemTime::now();
        !self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|e| {
                std::ptr::eq(e.link.as_ptr(), Arc::as_ptr(link))
                    && e.locked_until.is_none_or(|u| u > now)
            })
    }

    /// Forgets the locks of a closed session link.
    pub(crate) fn forget_link(&self, link_id: u64) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| e.link.upgrade().is_some_and(|l| l.id != link_id));
    }
}

#[async_trait]
impl QueueProvider for ServiceBusProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        let cfg = &self.shared.amqp.cfg;
        let mut c = Capabilities::default();
        c.sessions = SessionSupport::Locked;
        c.session_state = true;
        c.scheduled_delivery = true;
        c.max_schedule_delay = None;
        c.delayed_abandon = false;
        c.max_batch_size = cfg.max_batch_size;
        c.max_message_size = cfg.max_message_size;
        c.max_lock_duration = cfg.max_lock_duration;
        c.lock_renewal = true;
        c.native_dead_letter = true;
        c.duplicate_detection = cfg.duplicate_detection;
        c.queue_management = false;
        c.message_ttl = true;
        // Every entry is checked before anything is sent, and a batch that fits one call
        // travels as one batch delivery, which the broker accepts or refuses whole.
        c.batch_atomic = true;
        c
    }

    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        let id = message.message_id.clone().unwrap_or_else(MessageId::random);
        let out = to_amqp(&message, &id);
        self.check_size(queue, &out, None)?;
        let deadline = Instant::now() + self.shared.amqp.cfg.operation_timeout;
        self.send_retrying(queue, std::slice::from_ref(&out), deadline)
            .await?;
        Ok(id)
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        // Validate everything first: an oversize entry fails the batch with nothing sent.
        let mut prepared = Vec::with_capacity(messages.len());
        for m in &messages {
            let id = m.message_id.clone().unwrap_or_else(MessageId::random);
            let out = to_amqp(m, &id);
            self.check_size(queue, &out, None)?;
            prepared.push((id, out));
        }
        // Pack consecutive messages into batch deliveries under the size and count limits.
        let cfg = &self.shared.amqp.cfg;
        // The whole batch, every chunk and retry included, is bounded by one timeout.
        let deadline = Instant::now() + cfg.operation_timeout;
        let total = prepared.len();
        let mut chunks: Vec<Vec<(usize, MessageId, convert::Outgoing)>> = Vec::new();
        let mut size = 0;
        for (i, (id, out)) in prepared.into_iter().enumerate() {
            // Each data section adds a few bytes of framing around the encoded message.
            let len = encoded_len(&out) + 16;
            let fits = chunks.last().is_some_and(|c| {
                c.len() < cfg.max_batch_size && size + len <= cfg.max_message_size
            });
            if !fits {
                chunks.push(Vec::new());
                size = 64;
            }
            size += len;
            chunks.last_mut().expect("pushed").push((i, id, out));
        }
        let mut sent: Vec<(usize, MessageId)> = Vec::with_capacity(total);
        let mut chunks = chunks.into_iter();
        while let Some(chunk) = chunks.next() {
            let res = self.send_chunk(queue, &chunk, deadline).await;
            match res {
                Ok(()) => sent.extend(chunk.into_iter().map(|(i, id, _)| (i, id))),
                Err(e) if sent.is_empty() && chunks.len() == 0 => return Err(e),
                Err(e) => {
                    let mut failed = Vec::new();
                    let mut first = Some(e);
                    for (i, _, _) in chunk.into_iter().chain(chunks.flatten()) {
                        let err = first.take().unwrap_or_else(|| QueueError::Provider {
                            provider: PROVIDER,
                            operation: "send_batch",
                            class: queue_core::RetryClass::Transient,
                            source: "not sent: an earlier part of the batch failed".into(),
                        });
                        failed.push(queue_core::BatchEntryError::new(i, err));
                    }
                    return Err(QueueError::PartialBatch {
                        provider: PROVIDER,
                        queue: queue.as_str().to_owned(),
                        operation: "send_batch",
                        total,
                        succeeded: sent,
                        failed,
                    });
                }
            }
        }
        Ok(sent.into_iter().map(|(_, id)| id).collect())
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let received = self.receive_entity(queue, queue.as_str().to_owned(), options);
        self.shared.bounded("receive", options.wait, received).await
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.shared
            .settle(receipt, Disposition::Complete, "complete")
            .await
    }

    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        if delay.is_some() {
            return Err(QueueError::unsupported(PROVIDER, "abandon with delay"));
        }
        self.shared
            .settle(receipt, Disposition::Abandon, "abandon")
            .await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.shared
            .settle(receipt, Disposition::DeadLetter(&reason), "dead_letter")
            .await
    }

    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        let queue = receipt.queue().as_str();
        let ctx = Ctx::new("renew_lock", queue).with_session(receipt.session());
        let Ok(token) = receipt.token().parse::<uuid::Uuid>() else {
            return Err(map_failure(Failure::LockGone, ctx));
        };
        let (entity, associated) = self
            .shared
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token)
            .map_or_else(
                || (queue.to_owned(), None),
                |e| (e.entity.clone(), e.link.upgrade().map(|l| l.name.clone())),
            );
        let resp = self
            .shared
            .manage_ctx(
                &entity,
                "com.microsoft:renew-lock",
                vec![(
                    "lock-tokens",
                    Value::Array(Array::from(vec![uuid_value(token)])),
                )],
                associated.as_deref(),
                ctx,
            )
            .await?;
        let until = time_list(resp.get("expirations"))
            .into_iter()
            .next()
            .ok_or_else(|| {
                map_failure(
                    Failure::Condition {
                        condition: "amqp:decode-error".into(),
                        description: "renew-lock answered without an expiration".into(),
                    },
                    ctx,
                )
            })?;
        if let Some(e) = self
            .shared
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&token)
        {
            e.locked_until = Some(until);
        }
        Ok(until)
    }

    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        let accepted =
            ServiceBusSessionReceiver::accept(self.shared.clone(), queue, selector, wait);
        self.shared
            .bounded("accept_session", wait, accepted)
            .await
            .map(|r| r.map(|r| Box::new(r) as Box<dyn SessionReceiver>))
    }

    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let received = self.receive_entity(queue, dlq(queue.as_str()), options);
        self.shared.bounded("receive", options.wait, received).await
    }

    async fn check_access(&self, queue: &QueueName) -> Result<()> {
        let ctx = Ctx::new("check_access", queue.as_str());
        // Authorizes on $cbs, attaches $management (fails for a missing queue) and peeks.
        self.shared
            .manage_ctx(
                queue.as_str(),
                "com.microsoft:peek-message",
                vec![
                    ("from-sequence-number", Value::Long(0)),
                    ("message-count", Value::Int(1)),
                ],
                None,
                ctx,
            )
            .await?;
        Ok(())
    }
}

/// Session state as bytes, from a `get-session-state` answer.
pub(crate) fn state_bytes(v: Option<&Value>) -> Option<Bytes> {
    match v? {
        Value::Binary(b) => Some(Bytes::from(b.to_vec())),
        Value::String(s) => Some(Bytes::from(s.clone().into_bytes())),
        _ => None,
    }
}

pub(crate) fn first_time(v: Option<&Value>) -> Option<SystemTime> {
    time_list(v).into_iter().next()
}
