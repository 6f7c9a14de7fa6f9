//! The synchronous queue state machine behind [`crate::InMemoryProvider`].
//!
//! Everything here runs under the provider's mutex and takes `now` explicitly, so the
//! logic is deterministic. Expired locks, sessions, TTLs and duplicate-detection entries
//! are processed lazily by [`Queue::sweep`], which every operation calls first.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use queue_core::{
    DeadLetterReason, MAX_DELIVERY_COUNT_EXCEEDED, Message, MessageId, QueueError, QueueName,
    QueueSpec, Receipt, ReceivedMessage, Result, SessionId,
};
use tokio::{sync::Notify, time::Instant};

use crate::clock::{Clock, later};

pub(crate) const PROVIDER: &str = "memory";

/// Lock tokens are unique across every provider instance of the process, so a receipt
/// from one provider can never settle a message of another.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn next_token() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// Which store a receipt points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    Active,
    Dead,
}

/// A parsed receipt token: `a.<seq>.<lock>` or `d.<seq>.<lock>`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Token {
    store: Store,
    seq: i64,
    lock: u64,
}

impl Token {
    fn format(self) -> String {
        let s = match self.store {
            Store::Active => 'a',
            Store::Dead => 'd',
        };
        format!("{s}.{}.{}", self.seq, self.lock)
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let store = match parts.next()? {
            "a" => Store::Active,
            "d" => Store::Dead,
            _ => return None,
        };
        let seq = parts.next()?.parse().ok()?;
        let lock = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self { store, seq, lock })
    }
}

#[derive(Clone, Copy, Debug)]
struct MsgLock {
    token: u64,
    until: Instant,
    /// For messages received through a session receiver: the session lock they hang on.
    session_lock: Option<u64>,
}

#[derive(Debug)]
struct Entry {
    message: Message,
    id: MessageId,
    seq: i64,
    enqueued_at: Instant,
    visible_at: Instant,
    expires_at: Option<Instant>,
    delivery_count: u32,
    lock: Option<MsgLock>,
    dead_letter: Option<DeadLetterReason>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionLock {
    pub(crate) token: u64,
    pub(crate) until: Instant,
}

#[derive(Debug, Default)]
struct Session {
    lock: Option<SessionLock>,
    state: Option<Bytes>,
}

/// One queue and its dead-letter queue.
#[derive(Debug)]
pub(crate) struct Queue {
    name: QueueName,
    pub(crate) spec: QueueSpec,
    /// Woken on every change that can make a message or a session available.
    pub(crate) notify: Arc<Notify>,
    next_seq: i64,
    active: BTreeMap<i64, Entry>,
    /// Sequence numbers of `active`, per session id (`None`: session-less), in order.
    by_session: HashMap<Option<SessionId>, BTreeSet<i64>>,
    dead: BTreeMap<i64, Entry>,
    dedup: HashMap<MessageId, Instant>,
    sessions: HashMap<SessionId, Session>,
    /// No lock, TTL, session or dedup deadline falls before this instant.
    next_sweep: Instant,
}

fn lock_lost(queue: &QueueName, operation: &'static str) -> QueueError {
    QueueError::LockLost {
        provider: PROVIDER,
        queue: queue.to_string(),
        operation,
    }
}

pub(crate) fn session_lock_lost(
    queue: &QueueName,
    session: &SessionId,
    operation: &'static str,
) -> QueueError {
    QueueError::SessionLockLost {
        provider: PROVIDER,
        queue: queue.to_string(),
        session: session.clone(),
        operation,
    }
}

/// How a settle call ends a delivery.
#[derive(Debug)]
pub(crate) enum Settle {
    Complete,
    Abandon { delay: Option<std::time::Duration> },
    DeadLetter(DeadLetterReason),
}

impl Settle {
    fn operation(&self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Abandon { .. } => "abandon",
            Self::DeadLetter(_) => "dead_letter",
        }
    }
}

/// A message prepared for storage (validated, id assigned).
pub(crate) struct Prepared {
    message: Message,
    id: MessageId,
}

impl Queue {
    pub(crate) fn new(name: QueueName, spec: QueueSpec, now: Instant) -> Self {
        Self {
            name,
            spec,
            notify: Arc::new(Notify::new()),
            next_seq: 1,
            active: BTreeMap::new(),
            by_session: HashMap::new(),
            dead: BTreeMap::new(),
            dedup: HashMap::new(),
            sessions: HashMap::new(),
            next_sweep: now,
        }
    }

    fn insert_active(&mut self, entry: Entry) {
        self.by_session
            .entry(entry.message.session_id.clone())
            .or_default()
            .insert(entry.seq);
        self.active.insert(entry.seq, entry);
    }

    fn remove_active(&mut self, seq: i64) -> Option<Entry> {
        let entry = self.active.remove(&seq)?;
        let key = &entry.message.session_id;
        if let Some(seqs) = self.by_session.get_mut(key) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.by_session.remove(key);
            }
        }
        Some(entry)
    }

    /// The available messages of one session key, oldest first.
    fn available_in<'a>(
        &'a self,
        key: &Option<SessionId>,
        now: Instant,
    ) -> impl Iterator<Item = i64> + 'a {
        self.by_session
            .get(key)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |seq| Self::available(&self.active[seq], now))
    }

    fn note_deadline(&mut self, at: Instant) {
        if at < self.next_sweep {
            self.next_sweep = at;
        }
    }

    fn session_lock_valid(&self, session: Option<&SessionId>, token: u64, now: Instant) -> bool {
        session
            .and_then(|s| self.sessions.get(s))
            .and_then(|s| s.lock)
            .is_some_and(|l| l.token == token && l.until > now)
    }

    fn msg_lock_valid(&self, entry: &Entry, now: Instant) -> bool {
        match entry.lock {
            None => false,
            Some(MsgLock {
                session_lock: Some(sl),
                ..
            }) => self.session_lock_valid(entry.message.session_id.as_ref(), sl, now),
            Some(lock) => lock.until > now,
        }
    }

    /// Processes every deadline that has passed: expired session locks, expired message
    /// locks (the message becomes available again, or is dead-lettered when it has used
    /// up its deliveries), expired TTLs and expired duplicate-detection entries. Returns
    /// whether anything became available.
    pub(crate) fn sweep(&mut self, now: Instant) -> bool {
        if now < self.next_sweep {
            return false;
        }
        let mut next = Clock::far_future(now);
        let mut released = false;

        self.dedup.retain(|_, until| *until > now);
        for until in self.dedup.values() {
            next = next.min(*until);
        }

        for session in self.sessions.values_mut() {
            match session.lock {
                Some(l) if l.until <= now => {
                    session.lock = None;
                    released = true;
                }
                Some(l) => next = next.min(l.until),
                None => {}
            }
        }
        self.sessions
            .retain(|_, s| s.lock.is_some() || s.state.is_some());

        let mut to_dead = Vec::new();
        let mut to_drop = Vec::new();
        let seqs: Vec<i64> = self.active.keys().copied().collect();
        for seq in seqs {
            let valid = self.msg_lock_valid(&self.active[&seq], now);
            let max = self.spec.max_delivery_count;
            let entry = self.active.get_mut(&seq).expect("key from the same map");
            if entry.lock.is_some() && !valid {
                entry.lock = None;
                released = true;
            }
            if let Some(l) = entry.lock {
                if l.session_lock.is_none() {
                    next = next.min(l.until);
                }
                continue;
            }
            if entry.delivery_count >= max {
                to_dead.push(seq);
            } else if entry.expires_at.is_some_and(|e| e <= now) {
                to_drop.push(seq);
            } else if let Some(e) = entry.expires_at {
                next = next.min(e);
            }
        }
        for seq in to_drop {
            self.remove_active(seq);
        }
        for seq in to_dead {
            self.move_to_dead(
                seq,
                DeadLetterReason::new(
                    MAX_DELIVERY_COUNT_EXCEEDED,
                    format!(
                        "delivered {} times, the queue allows {}",
                        self.active[&seq].delivery_count, self.spec.max_delivery_count
                    ),
                ),
                now,
            );
            released = true;
        }

        for entry in self.dead.values_mut() {
            if let Some(l) = entry.lock {
                if l.until <= now {
                    entry.lock = None;
                    released = true;
                } else {
                    next = next.min(l.until);
                }
            }
        }
        self.next_sweep = next;
        released
    }

    fn move_to_dead(&mut self, seq: i64, reason: DeadLetterReason, now: Instant) {
        if let Some(mut entry) = self.remove_active(seq) {
            entry.lock = None;
            entry.visible_at = now;
            entry.expires_at = None;
            entry.dead_letter = Some(reason);
            self.dead.insert(seq, entry);
        }
    }

    /// Validates `messages` for this queue. Nothing is stored.
    pub(crate) fn prepare(
        &self,
        messages: Vec<Message>,
        max_message_size: usize,
    ) -> Result<Vec<Prepared>> {
        let mut out = Vec::with_capacity(messages.len());
        for mut message in messages {
            let size = message.encoded_size();
            if size > max_message_size {
                return Err(QueueError::MessageTooLarge {
                    provider: PROVIDER,
                    queue: self.name.to_string(),
                    size,
                    max: max_message_size,
                });
            }
            if self.spec.requires_session && message.session_id.is_none() {
                return Err(QueueError::InvalidMessage {
                    provider: PROVIDER,
                    reason: format!(
                        "queue `{}` requires sessions and the message has no session id",
                        self.name
                    ),
                });
            }
            let id = message
                .message_id
                .get_or_insert_with(MessageId::random)
                .clone();
            out.push(Prepared { message, id });
        }
        Ok(out)
    }

    /// Stores prepared messages (dropping duplicates inside the detection window) and
    /// returns their ids in input order.
    pub(crate) fn store(&mut self, prepared: Vec<Prepared>, clock: &Clock) -> Vec<MessageId> {
        let now = clock.now();
        let mut ids = Vec::with_capacity(prepared.len());
        for Prepared { message, id } in prepared {
            ids.push(id.clone());
            if let Some(window) = self.spec.duplicate_detection_window {
                if self.dedup.get(&id).is_some_and(|until| *until > now) {
                    continue;
                }
                let until = later(now, window);
                self.dedup.insert(id.clone(), until);
                self.note_deadline(until);
            }
            let visible_at = message
                .scheduled_enqueue_time
                .map_or(now, |t| clock.to_instant(t).max(now));
            let expires_at = message
                .time_to_live
                .or(self.spec.default_ttl)
                .map(|ttl| later(visible_at, ttl));
            if let Some(e) = expires_at {
                self.note_deadline(e);
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.insert_active(Entry {
                message,
                id,
                seq,
                enqueued_at: now,
                visible_at,
                expires_at,
                delivery_count: 0,
                lock: None,
                dead_letter: None,
            });
        }
        ids
    }

    fn available(entry: &Entry, now: Instant) -> bool {
        entry.lock.is_none() && entry.visible_at <= now && entry.expires_at.is_none_or(|e| e > now)
    }

    fn deliver(
        &mut self,
        store: Store,
        seq: i64,
        until: Instant,
        session_lock: Option<u64>,
        clock: &Clock,
    ) -> ReceivedMessage {
        let token = next_token();
        let name = self.name.clone();
        let map = match store {
            Store::Active => &mut self.active,
            Store::Dead => &mut self.dead,
        };
        let entry = map.get_mut(&seq).expect("caller picked an existing entry");
        entry.delivery_count += 1;
        entry.lock = Some(MsgLock {
            token,
            until,
            session_lock,
        });
        let receipt = Receipt::new(
            PROVIDER,
            name,
            session_lock.and(entry.message.session_id.clone()),
            Token {
                store,
                seq,
                lock: token,
            }
            .format(),
        );
        let mut rm = ReceivedMessage::new(
            entry.message.clone(),
            entry.id.clone(),
            entry.delivery_count,
            clock.to_system(entry.enqueued_at),
            receipt,
        )
        .with_locked_until(clock.to_system(until))
        .with_sequence_number(entry.seq);
        if let Some(reason) = &entry.dead_letter {
            rm = rm.with_dead_letter(reason.clone());
        }
        if session_lock.is_none() {
            self.note_deadline(until);
        }
        rm
    }

    /// Locks and returns up to `max` available messages without a session (or from the
    /// dead-letter store, which ignores sessions).
    pub(crate) fn receive(
        &mut self,
        store: Store,
        max: usize,
        clock: &Clock,
    ) -> Vec<ReceivedMessage> {
        let now = clock.now();
        let picked: Vec<i64> = match store {
            Store::Active => self.available_in(&None, now).take(max).collect(),
            Store::Dead => self
                .dead
                .values()
                .filter(|e| Self::available(e, now))
                .take(max)
                .map(|e| e.seq)
                .collect(),
        };
        let until = now + self.spec.lock_duration;
        picked
            .into_iter()
            .map(|seq| self.deliver(store, seq, until, None, clock))
            .collect()
    }

    /// When something that a waiting receiver could get may next become available: a
    /// scheduled or delayed message becoming visible, or a lock expiring.
    pub(crate) fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if t > now {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for e in self.active.values().chain(self.dead.values()) {
            match e.lock {
                Some(l) if l.session_lock.is_none() => consider(l.until),
                Some(_) => {}
                None => consider(e.visible_at),
            }
        }
        for s in self.sessions.values() {
            if let Some(l) = s.lock {
                consider(l.until);
            }
        }
        next
    }

    fn entry_for(&self, token: Token, now: Instant, operation: &'static str) -> Result<&Entry> {
        let map = match token.store {
            Store::Active => &self.active,
            Store::Dead => &self.dead,
        };
        match map.get(&token.seq) {
            Some(e)
                if e.lock.is_some_and(|l| l.token == token.lock) && self.msg_lock_valid(e, now) =>
            {
                Ok(e)
            }
            _ => Err(lock_lost(&self.name, operation)),
        }
    }

    /// Completes, abandons or dead-letters the delivery behind `token`.
    pub(crate) fn settle(&mut self, token: Token, how: Settle, now: Instant) -> Result<()> {
        let op = how.operation();
        self.entry_for(token, now, op)?;
        match (token.store, how) {
            (Store::Active, Settle::Complete) => {
                self.remove_active(token.seq);
            }
            (Store::Dead, Settle::Complete) => {
                self.dead.remove(&token.seq);
            }
            (store, Settle::Abandon { delay }) => {
                let max = self.spec.max_delivery_count;
                let map = match store {
                    Store::Active => &mut self.active,
                    Store::Dead => &mut self.dead,
                };
                let entry = map.get_mut(&token.seq).expect("checked above");
                entry.lock = None;
                entry.visible_at = later(now, delay.unwrap_or_default());
                if store == Store::Active && entry.delivery_count >= max {
                    let count = entry.delivery_count;
                    self.move_to_dead(
                        token.seq,
                        DeadLetterReason::new(
                            MAX_DELIVERY_COUNT_EXCEEDED,
                            format!("delivered {count} times, the queue allows {max}"),
                        ),
                        now,
                    );
                }
            }
            (Store::Active, Settle::DeadLetter(reason)) => {
                self.move_to_dead(token.seq, reason, now);
            }
            (Store::Dead, Settle::DeadLetter(_)) => {
                return Err(QueueError::InvalidMessage {
                    provider: PROVIDER,
                    reason: format!(
                        "the message is already in the dead-letter queue of `{}`",
                        self.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Extends the lock behind `token` by the queue's lock duration. Returns the new
    /// expiry. A message received through a session renews the session lock instead.
    pub(crate) fn renew(&mut self, token: Token, now: Instant) -> Result<Instant> {
        let entry = self.entry_for(token, now, "renew_lock")?;
        let until = now + self.spec.lock_duration;
        let session = entry.message.session_id.clone();
        let session_lock = entry.lock.and_then(|l| l.session_lock);
        if let (Some(sl), Some(session)) = (session_lock, session) {
            return self.renew_session(&session, sl, now, "renew_lock");
        }
        let map = match token.store {
            Store::Active => &mut self.active,
            Store::Dead => &mut self.dead,
        };
        if let Some(l) = map.get_mut(&token.seq).and_then(|e| e.lock.as_mut()) {
            l.until = until;
        }
        Ok(until)
    }

    // ---- sessions ----

    /// Locks session `id` for a new receiver.
    pub(crate) fn accept_named(&mut self, id: &SessionId, now: Instant) -> Result<SessionLock> {
        let session = self.sessions.entry(id.clone()).or_default();
        if session.lock.is_some_and(|l| l.until > now) {
            return Err(QueueError::SessionLocked {
                provider: PROVIDER,
                queue: self.name.to_string(),
                session: id.clone(),
            });
        }
        let lock = SessionLock {
            token: next_token(),
            until: now + self.spec.lock_duration,
        };
        session.lock = Some(lock);
        self.note_deadline(lock.until);
        Ok(lock)
    }

    /// Locks the unlocked session whose oldest available message is oldest, if any.
    pub(crate) fn accept_next(&mut self, now: Instant) -> Option<(SessionId, SessionLock)> {
        let id = self
            .by_session
            .keys()
            .filter_map(Option::as_ref)
            .filter(|s| {
                self.sessions
                    .get(*s)
                    .and_then(|s| s.lock)
                    .is_none_or(|l| l.until <= now)
            })
            .filter_map(|s| {
                let key = Some(s.clone());
                let first = self.available_in(&key, now).next()?;
                Some((first, s))
            })
            .min()?
            .1
            .clone();
        let lock = self.accept_named(&id, now).ok()?;
        Some((id, lock))
    }

    /// Fails with `SessionLockLost` unless `token` is the session's live lock.
    pub(crate) fn check_session(
        &self,
        id: &SessionId,
        token: u64,
        now: Instant,
        operation: &'static str,
    ) -> Result<SessionLock> {
        match self.sessions.get(id).and_then(|s| s.lock) {
            Some(l) if l.token == token && l.until > now => Ok(l),
            _ => Err(session_lock_lost(&self.name, id, operation)),
        }
    }

    /// Locks and returns the session's next available messages, in order.
    pub(crate) fn receive_session(
        &mut self,
        id: &SessionId,
        token: u64,
        max: usize,
        clock: &Clock,
    ) -> Result<Vec<ReceivedMessage>> {
        let now = clock.now();
        let lock = self.check_session(id, token, now, "receive")?;
        let picked: Vec<i64> = self
            .available_in(&Some(id.clone()), now)
            .take(max)
            .collect();
        Ok(picked
            .into_iter()
            .map(|seq| self.deliver(Store::Active, seq, lock.until, Some(token), clock))
            .collect())
    }

    /// Settles a message through its session receiver.
    pub(crate) fn settle_in_session(
        &mut self,
        id: &SessionId,
        session_token: u64,
        token: Token,
        how: Settle,
        now: Instant,
    ) -> Result<()> {
        let op = how.operation();
        self.check_session(id, session_token, now, op)?;
        let belongs = token.store == Store::Active
            && self.active.get(&token.seq).is_some_and(|e| {
                e.message.session_id.as_ref() == Some(id)
                    && e.lock
                        .is_some_and(|l| l.session_lock == Some(session_token))
            });
        if !belongs {
            return Err(lock_lost(&self.name, op));
        }
        self.settle(token, how, now)
    }

    pub(crate) fn renew_session(
        &mut self,
        id: &SessionId,
        token: u64,
        now: Instant,
        operation: &'static str,
    ) -> Result<Instant> {
        self.check_session(id, token, now, operation)?;
        let until = now + self.spec.lock_duration;
        if let Some(l) = self.sessions.get_mut(id).and_then(|s| s.lock.as_mut()) {
            l.until = until;
        }
        Ok(until)
    }

    /// Releases the session lock; its unsettled messages become available again.
    pub(crate) fn close_session(&mut self, id: &SessionId, token: u64, now: Instant) {
        if self.check_session(id, token, now, "close").is_err() {
            return;
        }
        if let Some(s) = self.sessions.get_mut(id) {
            s.lock = None;
            if s.state.is_none() {
                self.sessions.remove(id);
            }
        }
        // Release the messages that hung on this lock (only this session's).
        let key = Some(id.clone());
        let held: Vec<i64> = self
            .by_session
            .get(&key)
            .into_iter()
            .flatten()
            .copied()
            .filter(|seq| {
                self.active[seq]
                    .lock
                    .is_some_and(|l| l.session_lock == Some(token))
            })
            .collect();
        let max = self.spec.max_delivery_count;
        for seq in held {
            let entry = self.active.get_mut(&seq).expect("indexed entry exists");
            entry.lock = None;
            if entry.delivery_count >= max {
                let count = entry.delivery_count;
                self.move_to_dead(
                    seq,
                    DeadLetterReason::new(
                        MAX_DELIVERY_COUNT_EXCEEDED,
                        format!("delivered {count} times, the queue allows {max}"),
                    ),
                    now,
                );
            } else if let Some(e) = entry.expires_at {
                // A message that outlived its TTL while locked expires on the next sweep.
                self.note_deadline(e);
            }
        }
    }

    pub(crate) fn session_state(
        &self,
        id: &SessionId,
        token: u64,
        now: Instant,
    ) -> Result<Option<Bytes>> {
        self.check_session(id, token, now, "get_state")?;
        Ok(self.sessions.get(id).and_then(|s| s.state.clone()))
    }

    pub(crate) fn set_session_state(
        &mut self,
        id: &SessionId,
        token: u64,
        state: Option<Bytes>,
        now: Instant,
    ) -> Result<()> {
        self.check_session(id, token, now, "set_state")?;
        if let Some(s) = self.sessions.get_mut(id) {
            s.state = state;
        }
        Ok(())
    }

    /// Messages in the queue (locked, scheduled and available), not counting the DLQ.
    pub(crate) fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Messages in the dead-letter queue.
    pub(crate) fn dead_len(&self) -> usize {
        self.dead.len()
    }
}
