//! [`InMemoryProvider`], its builder and its [`QueueProvider`] implementation.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    hash::{BuildHasherDefault, Hasher},
    sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use queue_core::{
    BatchEntryError, Capabilities, DeadLetterReason, Message, MessageId, QueueError, QueueName,
    QueueProvider, QueueSpec, Receipt, ReceiveOptions, ReceivedMessage, Result, SessionReceiver,
    SessionSelector, SessionSupport,
};
use tokio::time::Instant;

use crate::{
    clock::{Clock, later},
    profile::{Limits, Profile},
    session::MemorySessionReceiver,
    state::{
        PROVIDER, Queue, SendTime, Settle, Signal, Store, Token, Waiter, check_limits,
        partial_batch,
    },
};

/// The in-memory provider: the reference implementation of the queue-runtime semantics.
///
/// Cheap to clone (clones share the same queues) and safe to use from many tasks at
/// once. See the [crate docs](crate) for the semantics and the clock.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> queue_core::Result<()> {
/// use queue_core::{Message, QueueName, QueueProvider, QueueProviderExt, QueueSpec};
/// use queue_memory::InMemoryProvider;
/// use std::time::Duration;
///
/// let queue = QueueName::new("jobs")?;
/// let provider = InMemoryProvider::builder()
///     .with_queue(queue.clone(), QueueSpec::default())
///     .build()?;
/// provider.send(&queue, Message::new("hello")).await?;
/// let got = provider.receive_one(&queue, Duration::from_secs(1)).await?.expect("a message");
/// assert_eq!(got.body().as_ref(), b"hello");
/// provider.complete(&got.receipt).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct InMemoryProvider {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    profile: Profile,
    limits: Limits,
    pub(crate) clock: Clock,
    /// The queues, each behind its own mutex: operations on different queues do not
    /// contend, and no lock is ever held across an `.await`.
    queues: RwLock<QueueMap>,
}

/// The queue map. Queue names come from the application, not from peers, so a fast
/// non-keyed hash is safe here.
type QueueMap = HashMap<QueueName, Mutex<Queue>, BuildHasherDefault<NameHasher>>;

/// A non-keyed hash that reads a name eight bytes at a time (every operation hashes its
/// queue's name): each word is folded in with a 64 x 64 -> 128-bit multiply, whose two
/// halves XORed together spread every input bit over the whole result (so the bucket
/// bits and the tag bits of the hash map both depend on every byte).
#[derive(Default)]
struct NameHasher(u64);

/// The fractional part of the golden ratio, an odd constant with well-spread bits.
const FOLD: u64 = 0x9e37_79b9_7f4a_7c15;

fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

/// The 1 to 7 bytes of `rest` in one word (two overlapping reads of four bytes, or the
/// first, middle and last of up to three).
fn tail(rest: &[u8]) -> u64 {
    let n = rest.len();
    if n >= 4 {
        let word = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&rest[at..at + 4]);
            u64::from(u32::from_le_bytes(b))
        };
        word(0) | (word(n - 4) << 32)
    } else {
        u64::from(rest[0]) | (u64::from(rest[n / 2]) << 8) | (u64::from(rest[n - 1]) << 16)
    }
}

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            h = fold(h ^ u64::from_le_bytes(b), FOLD);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            // The length goes in too, so "a" and "a\0" differ.
            h = fold(h ^ tail(rest), FOLD ^ rest.len() as u64);
        }
        self.0 = h;
    }

    fn write_u8(&mut self, i: u8) {
        self.0 = fold(self.0 ^ u64::from(i), FOLD);
    }
}

impl fmt::Debug for InMemoryProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Queue contents (bodies) never appear here.
        f.debug_struct("InMemoryProvider")
            .field("profile", &self.inner.profile)
            .field("limits", &self.inner.limits)
            // `try_lock`: Debug must never block or deadlock, even mid-operation.
            .field(
                "queues",
                &self.inner.queues.try_read().map(|q| q.len()).ok(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for InMemoryProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds an [`InMemoryProvider`].
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct InMemoryBuilder {
    profile: Profile,
    max_message_size: Option<usize>,
    max_batch_size: Option<usize>,
    max_lock_duration: Option<Duration>,
    queues: Vec<(QueueName, QueueSpec)>,
}

impl InMemoryBuilder {
    /// Imitates the limits of `profile` (default [`Profile::Memory`]).
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Overrides the profile's largest message size, in bytes.
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// Overrides the profile's largest batch.
    pub fn with_max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = Some(n);
        self
    }

    /// Overrides the profile's longest lock duration.
    pub fn with_max_lock_duration(mut self, d: Duration) -> Self {
        self.max_lock_duration = Some(d);
        self
    }

    /// Creates `queue` with `spec` when the provider is built.
    pub fn with_queue(mut self, queue: QueueName, spec: QueueSpec) -> Self {
        self.queues.push((queue, spec));
        self
    }

    /// Builds the provider. Fails with [`QueueError::Config`] if a limit is zero or a
    /// queue's spec breaks the limits.
    pub fn build(self) -> Result<InMemoryProvider> {
        let base = self.profile.limits();
        let limits = Limits {
            max_message_size: self.max_message_size.unwrap_or(base.max_message_size),
            max_batch_size: self.max_batch_size.unwrap_or(base.max_batch_size),
            max_lock_duration: self.max_lock_duration.unwrap_or(base.max_lock_duration),
            max_attributes: base.max_attributes,
            max_schedule_delay: base.max_schedule_delay,
        };
        if limits.max_message_size == 0 {
            return Err(QueueError::config(
                "memory.max_message_size",
                "must be at least 1",
            ));
        }
        if limits.max_batch_size == 0 {
            return Err(QueueError::config(
                "memory.max_batch_size",
                "must be at least 1",
            ));
        }
        if limits.max_lock_duration.is_zero() {
            return Err(QueueError::config(
                "memory.max_lock_duration",
                "must not be zero",
            ));
        }
        let provider = InMemoryProvider {
            inner: Arc::new(Inner {
                profile: self.profile,
                limits,
                clock: Clock::new(),
                queues: RwLock::new(QueueMap::default()),
            }),
        };
        for (name, spec) in self.queues {
            provider.create_now(&name, &spec)?;
        }
        Ok(provider)
    }
}

impl Inner {
    pub(crate) fn max_batch_size(&self) -> usize {
        self.limits.max_batch_size
    }

    /// The queue map. A panic while holding a lock cannot leave a queue half-updated in
    /// a way later calls could not handle, so a poisoned lock is taken over.
    fn queues(&self) -> RwLockReadGuard<'_, QueueMap> {
        self.queues.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the swept queue `name`, under that queue's mutex only.
    #[inline]
    pub(crate) fn with_queue<T>(
        &self,
        name: &QueueName,
        operation: &'static str,
        f: impl FnOnce(&mut Queue, Instant) -> T,
    ) -> Result<T> {
        // Read before the lock is taken, to keep the critical section short.
        let now = self.clock.now();
        let queues = self.queues();
        let mut queue = Self::lock(&queues, name, operation, now)?;
        Ok(f(&mut queue, now))
    }

    /// The queue `name` of the map `queues` (whose read guard the caller holds), locked
    /// and swept at `now`.
    #[inline]
    fn lock<'a>(
        queues: &'a QueueMap,
        name: &QueueName,
        operation: &'static str,
        now: Instant,
    ) -> Result<MutexGuard<'a, Queue>> {
        let mut queue = queues
            .get(name)
            .ok_or_else(|| not_found(name, operation))?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if queue.sweep(now) {
            queue.signal.wake();
        }
        Ok(queue)
    }

    /// Runs `attempt` until it yields something or `wait` runs out. The first attempt
    /// takes the queue's mutex once; only a receiver that finds nothing registers for a
    /// wake-up and sleeps until the queue changes or its next deadline passes. It never
    /// spins.
    pub(crate) async fn wait_for<T>(
        &self,
        name: &QueueName,
        operation: &'static str,
        wait: Duration,
        mut attempt: impl FnMut(&mut Queue, Instant) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let (signal, deadline) = match self.with_queue(name, operation, |q, now| {
            attempt(q, now).map(|found| found.ok_or_else(|| (q.signal.clone(), later(now, wait))))
        })?? {
            Ok(found) => return Ok(Some(found)),
            Err(miss) => miss,
        };
        loop {
            if self.clock.now() >= deadline {
                return Ok(None);
            }
            let notified = signal.notify.notified();
            tokio::pin!(notified);
            // Register before looking again, so a change between the look and the sleep
            // wakes us; the waiter count tells senders someone sleeps.
            notified.as_mut().enable();
            let (found, wake, _waiter) = self.with_queue(name, operation, |q, now| {
                attempt(q, now).map(|found| {
                    let waiter = found.is_none().then(|| Waiter::new(&signal));
                    (found, q.next_wake(now), waiter)
                })
            })??;
            if found.is_some() {
                return Ok(found);
            }
            let until = wake.map_or(deadline, |w| w.min(deadline));
            sleep_or(notified, until).await;
        }
    }
}

/// Wakes every receiver sleeping on `signal` (the queue is gone).
fn wake_all(signal: &Signal) {
    signal.notify.notify_waiters();
}

async fn sleep_or(notified: impl Future<Output = ()>, until: Instant) {
    tokio::select! {
        () = notified => {}
        () = tokio::time::sleep_until(until) => {}
    }
}

pub(crate) fn not_found(name: &QueueName, operation: &'static str) -> QueueError {
    QueueError::QueueNotFound {
        provider: PROVIDER,
        queue: name.to_string(),
        operation,
    }
}

fn send_time(clock: &Clock, now: Instant) -> SendTime {
    SendTime {
        now,
        system: clock.to_system(now),
    }
}

fn parse_receipt(receipt: &Receipt, operation: &'static str) -> Result<Token> {
    let lost = || QueueError::LockLost {
        provider: PROVIDER,
        queue: receipt.queue().to_string(),
        operation,
    };
    // The same static string, nearly always: compared by address before by text.
    if !std::ptr::eq(receipt.provider(), PROVIDER) && receipt.provider() != PROVIDER {
        return Err(lost());
    }
    Token::parse(receipt.token_bytes()).ok_or_else(lost)
}

impl InMemoryProvider {
    /// A provider with the default [`Profile::Memory`] limits and no queues.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default profile has valid limits")
    }

    /// A builder to pick a profile, override limits and pre-create queues.
    pub fn builder() -> InMemoryBuilder {
        InMemoryBuilder::default()
    }

    /// The profile whose limits this provider imitates.
    pub fn profile(&self) -> Profile {
        self.inner.profile
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The provider's idea of the current wall-clock time: the wall-clock time when it was
    /// built plus the time elapsed since on tokio's clock. With a paused tokio clock, use
    /// this (not [`SystemTime::now`]) to compute scheduled enqueue times.
    pub fn now(&self) -> SystemTime {
        self.inner.clock.to_system(self.inner.clock.now())
    }

    /// Messages in `queue` (available, locked and scheduled), excluding its dead-letter
    /// queue.
    pub fn message_count(&self, queue: &QueueName) -> Result<usize> {
        self.inner
            .with_queue(queue, "message_count", |q, _| q.active_len())
    }

    /// Messages in the dead-letter queue of `queue`.
    pub fn dead_letter_count(&self, queue: &QueueName) -> Result<usize> {
        self.inner
            .with_queue(queue, "dead_letter_count", |q, _| q.dead_len())
    }

    fn create_now(&self, name: &QueueName, spec: &QueueSpec) -> Result<()> {
        if spec.lock_duration.is_zero() {
            return Err(QueueError::config(
                "queue.lock_duration",
                "must not be zero",
            ));
        }
        if spec.lock_duration > self.inner.limits.max_lock_duration {
            return Err(QueueError::config(
                "queue.lock_duration",
                format!(
                    "{:?} exceeds the {:?} maximum of the `{}` profile",
                    spec.lock_duration, self.inner.limits.max_lock_duration, self.inner.profile
                ),
            ));
        }
        if spec.max_delivery_count == 0 {
            return Err(QueueError::config(
                "queue.max_delivery_count",
                "must be at least 1",
            ));
        }
        self.inner
            .queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.clone())
            .or_insert_with(|| {
                Mutex::new(Queue::new(
                    name.clone(),
                    spec.clone(),
                    self.inner.profile.grouped(),
                ))
            });
        Ok(())
    }

    fn settle(&self, receipt: &Receipt, how: Settle) -> Result<()> {
        let op = how.operation();
        let token = parse_receipt(receipt, op)?;
        self.inner.with_queue(receipt.queue(), op, |q, now| {
            let r = q.settle(token, how, now);
            if r.is_ok() {
                q.signal.wake();
            }
            r
        })?
    }

    /// Sends `message` (every operation but a receive is synchronous: the inherent and the
    /// trait's `async` methods both call these, so neither wraps the other's future).
    fn send_now(&self, queue: &QueueName, mut message: Message) -> Result<MessageId> {
        let limits = self.inner.limits;
        let clock = self.inner.clock;
        // Size checks and the id need no queue: done before its lock is taken.
        let id = check_limits(&mut message, &limits, queue)?;
        let now = clock.now();
        let at = send_time(&clock, now);
        // The guards, not a closure: the message moves straight into the queue (a
        // closure would carry a copy of it).
        let queues = self.inner.queues();
        let mut q = Inner::lock(&queues, queue, "send", now)?;
        q.admit(&message, &limits, now, &clock)?;
        q.store(message, &at, &clock);
        q.signal.wake();
        Ok(id)
    }

    /// `send_batch`: all or nothing, except on the `sqs` profile (see
    /// [`send_batch_per_entry`](Self::send_batch_per_entry)).
    fn send_batch_now(&self, queue: &QueueName, messages: Vec<Message>) -> Result<Vec<MessageId>> {
        if self.inner.profile.grouped() {
            return self.send_batch_per_entry(queue, messages);
        }
        let limits = self.inner.limits;
        let clock = self.inner.clock;
        let mut messages = messages;
        // Validate everything first: a batch with one bad entry stores nothing.
        let ids = messages
            .iter_mut()
            .map(|m| check_limits(m, &limits, queue))
            .collect::<Result<Vec<_>>>()?;
        self.inner.with_queue(queue, "send", |q, now| {
            for m in &messages {
                q.admit(m, &limits, now, &clock)?;
            }
            let at = send_time(&clock, now);
            for m in messages {
                q.store(m, &at, &clock);
            }
            q.signal.wake();
            Ok(ids)
        })?
    }

    /// The `sqs` profile's `send_batch`, as `SqsProvider` answers it: each entry is
    /// checked on its own (size, attributes, session, schedule) and the accepted ones are
    /// stored in input order under one lock; refused entries make a
    /// [`QueueError::PartialBatch`] (the lone error for a one-entry batch). Only a
    /// problem of the whole call (a missing queue) refuses everything. Duplicates within
    /// the window count as sent, as on a single send.
    fn send_batch_per_entry(
        &self,
        queue: &QueueName,
        mut messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let limits = self.inner.limits;
        let clock = self.inner.clock;
        let total = messages.len();
        // Checks that need no queue, before its lock is taken.
        let mut ids = Vec::with_capacity(total);
        let mut refused = Vec::new();
        for (index, m) in messages.iter_mut().enumerate() {
            match check_limits(m, &limits, queue) {
                Ok(id) => ids.push(id),
                Err(e) => refused.push(BatchEntryError::new(index, e)),
            }
        }
        let not_admitted = self.inner.with_queue(queue, "send", |q, now| {
            let at = send_time(&clock, now);
            let mut skip = refused.iter().map(|f| f.index).peekable();
            let mut not_admitted = Vec::new();
            for (index, m) in messages.into_iter().enumerate() {
                if skip.next_if_eq(&index).is_some() {
                    continue;
                }
                match q.admit(&m, &limits, now, &clock) {
                    Ok(()) => q.store(m, &at, &clock),
                    Err(e) => not_admitted.push(BatchEntryError::new(index, e)),
                }
            }
            if ids.len() > not_admitted.len() {
                q.signal.wake();
            }
            not_admitted
        })?;
        if refused.is_empty() && not_admitted.is_empty() {
            return Ok(ids);
        }
        Err(partial_batch(queue, total, ids, refused, not_admitted))
    }

    fn renew_now(&self, receipt: &Receipt) -> Result<SystemTime> {
        let token = parse_receipt(receipt, "renew_lock")?;
        let until = self
            .inner
            .with_queue(receipt.queue(), "renew_lock", |q, now| q.renew(token, now))??;
        Ok(self.inner.clock.to_system(until))
    }

    async fn receive_from(
        &self,
        queue: &QueueName,
        store: Store,
        options: ReceiveOptions,
        operation: &'static str,
    ) -> Result<Vec<ReceivedMessage>> {
        let max = options
            .max_messages
            .clamp(1, self.inner.limits.max_batch_size);
        let clock = self.inner.clock;
        let got = self
            .inner
            .wait_for(queue, operation, options.wait, |q, now| {
                let batch = q.receive(store, max, now, &clock);
                Ok((!batch.is_empty()).then_some(batch))
            })
            .await?;
        Ok(got.unwrap_or_default())
    }
}

/// The hot operations as inherent methods. [`QueueProvider`] is used as a trait object
/// (`dyn QueueProvider`), so `async_trait` boxes every future it returns: one allocation
/// per call. Code holding an `InMemoryProvider` itself calls these instead (method calls
/// find them first) and allocates nothing for the call. Both run the same code.
impl InMemoryProvider {
    /// [`QueueProvider::send`], called directly: the same operation without the boxed
    /// future a call through the trait allocates.
    pub async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        self.send_now(queue, message)
    }

    /// [`QueueProvider::send_batch`], called directly (no boxed future).
    pub async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        self.send_batch_now(queue, messages)
    }

    /// [`QueueProvider::receive`], called directly (no boxed future).
    pub async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.receive_from(queue, Store::Active, options, "receive")
            .await
    }

    /// [`QueueProvider::complete`], called directly (no boxed future).
    pub async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.settle(receipt, Settle::Complete)
    }

    /// [`QueueProvider::abandon`], called directly (no boxed future).
    pub async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        self.settle(receipt, Settle::Abandon { delay })
    }

    /// [`QueueProvider::dead_letter`], called directly (no boxed future).
    pub async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.settle(receipt, Settle::DeadLetter(reason))
    }

    /// [`QueueProvider::renew_lock`], called directly (no boxed future).
    pub async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        self.renew_now(receipt)
    }
}

#[async_trait]
impl QueueProvider for InMemoryProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        let grouped = self.inner.profile.grouped();
        let mut c = Capabilities::default();
        // The `sqs` profile answers as `SqsProvider::sqs_capabilities` does: message
        // groups, no session state, no message TTL (it is still honoured here).
        c.sessions = if grouped {
            SessionSupport::Grouped
        } else {
            SessionSupport::Locked
        };
        c.session_state = !grouped;
        c.scheduled_delivery = true;
        c.max_schedule_delay = self.inner.limits.max_schedule_delay;
        c.delayed_abandon = true;
        c.max_batch_size = self.inner.limits.max_batch_size;
        c.max_message_size = self.inner.limits.max_message_size;
        c.max_lock_duration = self.inner.limits.max_lock_duration;
        c.lock_renewal = true;
        c.native_dead_letter = true;
        c.duplicate_detection = true;
        c.queue_management = true;
        c.message_ttl = !grouped;
        c.max_attributes = self.inner.limits.max_attributes;
        // `send_batch` checks every entry before storing any, and stores under one lock;
        // the `sqs` profile sends the accepted entries of a batch, as SQS does.
        c.batch_atomic = !grouped;
        c
    }

    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        self.send_now(queue, message)
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        self.send_batch_now(queue, messages)
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.receive_from(queue, Store::Active, options, "receive")
            .await
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.settle(receipt, Settle::Complete)
    }

    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        self.settle(receipt, Settle::Abandon { delay })
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.settle(receipt, Settle::DeadLetter(reason))
    }

    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        self.renew_now(receipt)
    }

    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        if self.inner.profile.grouped() {
            // SQS FIFO groups have no session lock; their messages come through `receive`.
            return Err(QueueError::unsupported(PROVIDER, "accept_session"));
        }
        let accepted = match selector {
            SessionSelector::Named(id) => {
                let lock = self
                    .inner
                    .with_queue(queue, "accept_session", |q, now| q.accept_named(&id, now))??;
                Some((id, lock))
            }
            SessionSelector::Next => {
                self.inner
                    .wait_for(queue, "accept_session", wait, |q, now| {
                        Ok(q.accept_next(now))
                    })
                    .await?
            }
            // `SessionSelector` is non-exhaustive; a new selector this provider does not
            // know is reported rather than guessed.
            #[allow(unreachable_patterns)]
            _ => return Err(QueueError::unsupported(PROVIDER, "accept_session")),
        };
        Ok(accepted.map(|(id, lock)| {
            Box::new(MemorySessionReceiver::new(
                self.inner.clone(),
                queue.clone(),
                id,
                lock,
            )) as Box<dyn SessionReceiver>
        }))
    }

    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.receive_from(queue, Store::Dead, options, "receive_dead_letters")
            .await
    }

    async fn check_access(&self, queue: &QueueName) -> Result<()> {
        self.inner.with_queue(queue, "check_access", |_, _| ())
    }

    async fn create_queue(&self, queue: &QueueName, spec: &QueueSpec) -> Result<()> {
        self.create_now(queue, spec)
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        let removed = self
            .inner
            .queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
        match removed {
            Some(q) => {
                // Waiting receivers wake up and report the queue as gone.
                wake_all(&q.into_inner().unwrap_or_else(|e| e.into_inner()).signal);
                Ok(())
            }
            None => Err(not_found(queue, "delete_queue")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::*;

    fn hash(name: &str) -> u64 {
        BuildHasherDefault::<NameHasher>::default().hash_one(QueueName::new(name).unwrap())
    }

    #[test]
    fn the_name_hash_depends_on_every_byte_and_the_length() {
        let names: Vec<String> = (1..=40)
            .flat_map(|len| {
                (0..len).map(move |at| {
                    let mut n = vec![b'a'; len];
                    n[at] = b'b';
                    String::from_utf8(n).unwrap()
                })
            })
            .chain((1..=40).map(|len| "a".repeat(len)))
            .collect();
        let hashes: std::collections::HashSet<u64> = names.iter().map(|n| hash(n)).collect();
        assert_eq!(hashes.len(), names.len(), "no two of these names collide");
        // Bucket bits (the low ones) differ too for names that differ in one late byte.
        let low: std::collections::HashSet<u64> = (0..64)
            .map(|i| hash(&format!("queue-{i:02}")) & 0xff)
            .collect();
        assert!(low.len() > 40, "{}", low.len());
        assert_eq!(hash("jobs"), hash("jobs"));
    }
}
