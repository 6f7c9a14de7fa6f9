//! The synchronous queue state machine behind [`crate::InMemoryProvider`].
//!
//! Everything here runs under the queue's own mutex and takes `now` explicitly, so the
//! logic is deterministic. Every operation first calls [`Queue::sweep`], which processes
//! the deadlines that have passed (lock and session-lock expiries, scheduled messages
//! becoming visible, TTL expiries, duplicate-detection entries) in deadline order.
//!
//! # Indexes and costs
//! With `n` messages in the queue, `s` sessions, `l` live locks and `k` messages held by
//! one session lock, each message is in exactly one of: a *ready* set (available now;
//! one per session, one for session-less messages, one for the dead-letter queue), the
//! *visible* timer set (scheduled or delayed), the *lock* timer set (locked by a plain
//! receive) or its session's *held* set (locked by a session receiver). Unlocked sessions
//! with an available message are indexed by their oldest available sequence number. So:
//! send is O(log n); a receive of `m` messages is O(m log n); settling and renewing are
//! O(log n + log l); accepting the next session is O(log s); closing a session or losing
//! its lock is O(k log n); a sweep with nothing due is O(1) per timer set, and each due
//! deadline costs O(log n) once. Nothing scans the queue.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use queue_core::{
    DeadLetterReason, MAX_DELIVERY_COUNT_EXCEEDED, Message, MessageId, QueueError, QueueName,
    QueueSpec, Receipt, ReceivedMessage, Result, SessionId,
};
use tokio::{sync::Notify, time::Instant};

use crate::{
    clock::{Clock, later},
    ids::{parse_hex, write_hex},
    profile::Limits,
    slab::{Key, Sequenced, Slab},
};

pub(crate) const PROVIDER: &str = "memory";

/// Lock tokens are unique across every provider instance of the process, so a receipt
/// from one provider can never settle a message of another. Queues take them from here
/// in blocks, so concurrent queues do not contend on one counter per delivery.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
const TOKEN_BLOCK: u64 = 1024;

/// A queue's current block of lock tokens.
#[derive(Debug, Default)]
struct Tokens {
    next: u64,
    end: u64,
}

impl Tokens {
    fn take(&mut self) -> u64 {
        if self.next == self.end {
            self.next = NEXT_TOKEN.fetch_add(TOKEN_BLOCK, Ordering::Relaxed);
            self.end = self.next + TOKEN_BLOCK;
        }
        self.next += 1;
        self.next - 1
    }
}

/// Which store a receipt points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Store {
    Active,
    Dead,
}

/// A parsed receipt token: `a.<seq>.<slot>.<lock>` or `d.<seq>.<slot>.<lock>`, in
/// fixed-width lowercase hexadecimal.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Token {
    store: Store,
    seq: Key,
    lock: u64,
}

impl Token {
    /// Length of the text form: `s.` + 16 + `.` + 8 + `.` + 16 hexadecimal digits.
    const LEN: usize = 44;

    /// The token's text, built without going through `fmt` (one allocation: the `Arc`).
    fn text(self) -> Arc<str> {
        let mut buf = [b'.'; Self::LEN];
        buf[0] = match self.store {
            Store::Active => b'a',
            Store::Dead => b'd',
        };
        write_hex(&mut buf[2..18], self.seq.seq.unsigned_abs());
        write_hex(&mut buf[19..27], u64::from(self.seq.slot));
        write_hex(&mut buf[28..44], self.lock);
        Arc::from(std::str::from_utf8(&buf).expect("a token is ASCII"))
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() != Self::LEN || b[1] != b'.' || b[18] != b'.' || b[27] != b'.' {
            return None;
        }
        let store = match b[0] {
            b'a' => Store::Active,
            b'd' => Store::Dead,
            _ => return None,
        };
        let seq = i64::try_from(parse_hex(&b[2..18])?).ok()?;
        let slot = u32::try_from(parse_hex(&b[19..27])?).ok()?;
        let lock = parse_hex(&b[28..44])?;
        Some(Self {
            store,
            seq: Key { seq, slot },
            lock,
        })
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
    /// The sequence number (unique in the queue, increasing in send order).
    seq: i64,
    /// The message as sent; its `message_id` is always set.
    message: Message,
    enqueued_at: Instant,
    visible_at: Instant,
    expires_at: Option<Instant>,
    delivery_count: u32,
    lock: Option<MsgLock>,
    /// Boxed: rare, and it would make every entry bigger.
    dead_letter: Option<Box<DeadLetterReason>>,
}

impl Sequenced for Entry {
    fn seq(&self) -> i64 {
        self.seq
    }
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
    /// Available messages of this session, in order.
    ready: BTreeSet<Key>,
    /// Messages locked by the current session lock.
    held: BTreeSet<Key>,
    /// Messages of this session in the active store.
    messages: usize,
    /// This session's key in [`Queue::next_sessions`], if it is there.
    indexed: Option<Key>,
}

type Sessions = HashMap<SessionId, Session>;

/// The session entry of `id`, created if needed.
fn session_mut<'a>(sessions: &'a mut Sessions, id: &SessionId) -> &'a mut Session {
    if !sessions.contains_key(id) {
        sessions.insert(id.clone(), Session::default());
    }
    sessions.get_mut(id).expect("inserted above")
}

/// Puts session `id` under its right key in `index`: its oldest available message when
/// it is unlocked and has one, else nowhere.
fn reindex(sessions: &mut Sessions, index: &mut BTreeSet<(Key, SessionId)>, id: &SessionId) {
    let Some(s) = sessions.get_mut(id) else {
        return;
    };
    let want = if s.lock.is_none() {
        s.ready.first().copied()
    } else {
        None
    };
    if want == s.indexed {
        return;
    }
    if let Some(old) = s.indexed {
        index.remove(&(old, id.clone()));
    }
    if let Some(new) = want {
        index.insert((new, id.clone()));
    }
    s.indexed = want;
}

/// Forgets session `id` once nothing refers to it any more.
fn tidy(sessions: &mut Sessions, id: &SessionId) {
    if sessions
        .get(id)
        .is_some_and(|s| s.lock.is_none() && s.state.is_none() && s.messages == 0)
    {
        sessions.remove(id);
    }
}

/// Available session-less messages. Messages that were never delivered wait in send
/// order in a deque (O(1) at both ends); messages available again (after an abandon, a
/// lock expiry or a delay) wait in an ordered set. The next message is the smaller head.
#[derive(Debug, Default)]
struct Ready {
    fresh: VecDeque<Key>,
    again: BTreeSet<Key>,
    /// Entries of `fresh` whose message is gone (expired); skipped when reached.
    stale: usize,
}

impl Ready {
    fn len(&self) -> usize {
        self.fresh.len() - self.stale + self.again.len()
    }

    /// Adds a message stored just now (its sequence number is the highest so far).
    fn push_fresh(&mut self, seq: Key) {
        debug_assert!(self.fresh.back().is_none_or(|b| *b < seq));
        self.fresh.push_back(seq);
    }

    fn insert(&mut self, seq: Key) {
        self.again.insert(seq);
    }

    /// Removes `seq`; returns whether it was there. A message in the middle of `fresh` is
    /// only counted as stale: its entry is about to be removed, and `pop` skips it.
    fn remove(&mut self, seq: Key) -> bool {
        if self.again.remove(&seq) {
            return true;
        }
        if self.fresh.front() == Some(&seq) {
            self.fresh.pop_front();
            return true;
        }
        let found = self.fresh.binary_search(&seq).is_ok();
        if found {
            self.stale += 1;
        }
        found
    }

    /// The oldest available message; `exists` tells a live `fresh` entry from a stale one.
    fn pop(&mut self, exists: impl Fn(Key) -> bool) -> Option<Key> {
        loop {
            match (self.fresh.front().copied(), self.again.first().copied()) {
                (Some(f), Some(a)) if a < f => return self.again.pop_first(),
                (Some(f), _) => {
                    self.fresh.pop_front();
                    if exists(f) {
                        return Some(f);
                    }
                    self.stale -= 1;
                }
                (None, _) => return self.again.pop_first(),
            }
        }
    }
}

/// The deadline of a lock taken by a plain receive.
#[derive(Clone, Copy, Debug)]
struct LockTimer {
    until: Instant,
    store: Store,
    seq: Key,
    token: u64,
}

/// Deadlines, each in a set ordered by time so the next one is found without a scan and
/// a settled message's deadline is removed in O(log n).
#[derive(Debug, Default)]
struct Timers {
    /// Scheduled or delayed messages becoming visible.
    visible: BTreeSet<(Instant, Store, Key)>,
    /// Locks of messages received without a session, in deadline order: every lock lasts
    /// the queue's lock duration from when it was taken or renewed, so deadlines come in
    /// order and a deque suffices. A settled or renewed lock leaves its item behind (stale,
    /// skipped when reached); stale items are dropped in bulk once they outnumber the
    /// live locks, so each lock costs O(1) amortised.
    locks: VecDeque<LockTimer>,
    /// Live locks in `locks`.
    live_locks: usize,
    /// Message time-to-live expiries.
    ttl: BTreeSet<(Instant, Key)>,
    /// Session lock expiries.
    sessions: BTreeSet<(Instant, SessionId)>,
}

/// Wakes receivers waiting on a queue, and only when one waits.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    pub(crate) notify: Notify,
    /// Receivers that found nothing and sleep (counted under the queue's mutex).
    waiters: AtomicUsize,
}

impl Signal {
    /// Wakes the sleeping receivers, if there are any. Called under the queue's mutex.
    pub(crate) fn wake(&self) {
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// A receiver counted as sleeping on a [`Signal`] until dropped.
pub(crate) struct Waiter(Arc<Signal>);

impl Waiter {
    /// Counts a sleeping receiver. Call under the queue's mutex, after the receiver's
    /// `Notified` is enabled and before the mutex is released.
    pub(crate) fn new(signal: &Arc<Signal>) -> Self {
        signal.waiters.fetch_add(1, Ordering::Relaxed);
        Self(signal.clone())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One queue and its dead-letter queue.
#[derive(Debug)]
pub(crate) struct Queue {
    name: QueueName,
    pub(crate) spec: QueueSpec,
    pub(crate) signal: Arc<Signal>,
    next_seq: i64,
    active: Slab<Entry>,
    dead: Slab<Entry>,
    /// Available session-less messages, in order.
    ready: Ready,
    /// Available dead-lettered messages, in order.
    dead_ready: BTreeSet<Key>,
    sessions: Sessions,
    /// Unlocked sessions with an available message, by their oldest available message.
    next_sessions: BTreeSet<(Key, SessionId)>,
    timers: Timers,
    dedup: HashMap<MessageId, Instant>,
    /// `dedup`'s entries in expiry order (the window is fixed, so send order).
    dedup_order: VecDeque<(Instant, MessageId)>,
    /// No deadline falls before this (`None`: no deadline at all).
    next_sweep: Option<Instant>,
    tokens: Tokens,
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

fn max_deliveries(count: u32, max: u32) -> DeadLetterReason {
    DeadLetterReason::new(
        MAX_DELIVERY_COUNT_EXCEEDED,
        format!("delivered {count} times, the queue allows {max}"),
    )
}

/// How a settle call ends a delivery.
#[derive(Debug)]
pub(crate) enum Settle {
    Complete,
    Abandon { delay: Option<std::time::Duration> },
    DeadLetter(DeadLetterReason),
}

impl Settle {
    pub(crate) fn operation(&self) -> &'static str {
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
    pub(crate) fn new(name: QueueName, spec: QueueSpec) -> Self {
        Self {
            name,
            spec,
            signal: Arc::default(),
            next_seq: 1,
            active: Slab::default(),
            dead: Slab::default(),
            ready: Ready::default(),
            dead_ready: BTreeSet::new(),
            sessions: HashMap::new(),
            next_sessions: BTreeSet::new(),
            timers: Timers::default(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            next_sweep: None,
            tokens: Tokens::default(),
        }
    }

    fn map(&self, store: Store) -> &Slab<Entry> {
        match store {
            Store::Active => &self.active,
            Store::Dead => &self.dead,
        }
    }

    fn map_mut(&mut self, store: Store) -> &mut Slab<Entry> {
        match store {
            Store::Active => &mut self.active,
            Store::Dead => &mut self.dead,
        }
    }

    /// Notes a new deadline, so the next sweep comes no later than it.
    fn note(&mut self, at: Instant) {
        if self.next_sweep.is_none_or(|t| at < t) {
            self.next_sweep = Some(at);
        }
    }

    /// Adds the unlocked, visible entry `seq` to its ready set.
    fn make_ready(&mut self, store: Store, seq: Key) {
        if store == Store::Dead {
            self.dead_ready.insert(seq);
            return;
        }
        match &self.active[seq].message.session_id {
            None => {
                self.ready.insert(seq);
            }
            Some(id) => {
                session_mut(&mut self.sessions, id).ready.insert(seq);
                reindex(&mut self.sessions, &mut self.next_sessions, id);
            }
        }
    }

    /// Files the unlocked entry `seq` (in no index yet): dropped when its time to live
    /// has passed, ready when visible, else under its visibility deadline.
    fn place(&mut self, store: Store, seq: Key, now: Instant) {
        let entry = &self.map(store)[seq];
        let visible_at = entry.visible_at;
        if entry.expires_at.is_some_and(|e| e <= now) {
            self.delete_entry(store, seq);
        } else if visible_at > now {
            self.timers.visible.insert((visible_at, store, seq));
            self.note(visible_at);
        } else {
            self.make_ready(store, seq);
        }
    }

    /// Takes the entry `seq` out of whichever ready set, timer set or held set has it
    /// (the TTL set excepted).
    fn detach(&mut self, store: Store, seq: Key) {
        let map = match store {
            Store::Active => &self.active,
            Store::Dead => &self.dead,
        };
        let Some(entry) = map.get(seq) else {
            return;
        };
        let session = entry.message.session_id.as_ref();
        match entry.lock {
            Some(MsgLock {
                session_lock: None, ..
            }) => {
                // Its item in `timers.locks` goes stale.
                self.timers.live_locks -= 1;
            }
            Some(_) => {
                if let Some(s) = session.and_then(|id| self.sessions.get_mut(id)) {
                    s.held.remove(&seq);
                }
            }
            None => {
                let was_ready = match (store, session) {
                    (Store::Dead, _) => self.dead_ready.remove(&seq),
                    (Store::Active, None) => self.ready.remove(seq),
                    (Store::Active, Some(id)) => {
                        let removed = self
                            .sessions
                            .get_mut(id)
                            .is_some_and(|s| s.ready.remove(&seq));
                        reindex(&mut self.sessions, &mut self.next_sessions, id);
                        removed
                    }
                };
                if !was_ready {
                    self.timers.visible.remove(&(entry.visible_at, store, seq));
                }
            }
        }
    }

    /// Removes the entry `seq` and every index entry that points at it; returns it.
    fn remove_entry(&mut self, store: Store, seq: Key) -> Option<Entry> {
        self.unlink(store, seq)?;
        self.map_mut(store).remove(seq)
    }

    /// Like [`remove_entry`](Self::remove_entry), dropping the entry where it lies.
    fn delete_entry(&mut self, store: Store, seq: Key) {
        if self.unlink(store, seq).is_some() {
            self.map_mut(store).delete(seq);
        }
    }

    /// Takes every index entry that points at `seq` away (the entry itself stays).
    fn unlink(&mut self, store: Store, seq: Key) -> Option<()> {
        self.detach(store, seq);
        if store == Store::Dead {
            return self.dead.contains_key(seq).then_some(());
        }
        let entry = self.active.get(seq)?;
        if let Some(e) = entry.expires_at {
            self.timers.ttl.remove(&(e, seq));
        }
        if let Some(id) = &entry.message.session_id {
            if let Some(s) = self.sessions.get_mut(id) {
                s.messages = s.messages.saturating_sub(1);
            }
            tidy(&mut self.sessions, id);
        }
        Some(())
    }

    /// Ends the lock on `seq` without settling it (abandon, lock expiry, session closed):
    /// the message is dead-lettered when it has used up its deliveries, else filed again,
    /// visible from `visible_at` when given.
    fn release(&mut self, store: Store, seq: Key, now: Instant, visible_at: Option<Instant>) {
        self.detach(store, seq);
        let max = self.spec.max_delivery_count;
        let Some(entry) = self.map_mut(store).get_mut(seq) else {
            return;
        };
        entry.lock = None;
        if let Some(at) = visible_at {
            entry.visible_at = at;
        }
        if store == Store::Active && entry.delivery_count >= max {
            let reason = max_deliveries(entry.delivery_count, max);
            self.move_to_dead(seq, reason, now);
        } else {
            self.place(store, seq, now);
        }
    }

    fn move_to_dead(&mut self, seq: Key, reason: DeadLetterReason, now: Instant) {
        if let Some(mut entry) = self.remove_entry(Store::Active, seq) {
            entry.lock = None;
            entry.visible_at = now;
            entry.expires_at = None;
            entry.dead_letter = Some(Box::new(reason));
            let dead = self.dead.insert(entry);
            self.dead_ready.insert(dead);
        }
    }

    /// The earliest deadline of any kind, if there is one.
    fn next_deadline(&self) -> Option<Instant> {
        [
            self.timers.visible.first().map(|t| t.0),
            self.timers.locks.front().map(|t| t.until),
            self.timers.ttl.first().map(|t| t.0),
            self.timers.sessions.first().map(|t| t.0),
            self.dedup_order.front().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Processes every deadline that has passed: expired session locks and message locks
    /// (the message becomes available again, or is dead-lettered when it has used up its
    /// deliveries), scheduled messages becoming visible, expired TTLs and expired
    /// duplicate-detection entries. Returns whether anything became available.
    pub(crate) fn sweep(&mut self, now: Instant) -> bool {
        if self.next_sweep.is_none_or(|t| t > now) {
            return false;
        }
        let mut released = false;
        while let Some((until, id)) = pop_due(&mut self.timers.sessions, now, |t| t.0) {
            let expired = self.sessions.get(&id).and_then(|s| s.lock);
            if expired.is_some_and(|l| l.until == until) {
                self.release_session(&id, now);
                released = true;
            }
        }
        while let Some(t) = self.timers.locks.front().copied() {
            if t.until > now {
                break;
            }
            self.timers.locks.pop_front();
            if self.lock_timer_live(t) {
                self.release(t.store, t.seq, now, None);
                released = true;
            }
        }
        while let Some((_, store, seq)) = pop_due(&mut self.timers.visible, now, |t| t.0) {
            if self.map(store).contains_key(seq) {
                self.place(store, seq, now);
            }
            released = true;
        }
        while let Some((_, seq)) = pop_due(&mut self.timers.ttl, now, |t| t.0) {
            // A locked message does not expire until its lock ends (`place` checks then).
            if self.active.get(seq).is_some_and(|e| e.lock.is_none()) {
                self.delete_entry(Store::Active, seq);
            }
        }
        while let Some((until, id)) = self.dedup_order.front().cloned() {
            if until > now {
                break;
            }
            self.dedup_order.pop_front();
            if self.dedup.get(&id) == Some(&until) {
                self.dedup.remove(&id);
            }
        }
        self.next_sweep = self.next_deadline();
        released
    }

    /// Whether `t` is the deadline of a lock that is still held.
    fn lock_timer_live(&self, t: LockTimer) -> bool {
        self.map(t.store).get(t.seq).is_some_and(|e| {
            e.lock.is_some_and(|l| {
                l.token == t.token && l.until == t.until && l.session_lock.is_none()
            })
        })
    }

    /// Starts the deadline of a plain receive's lock.
    fn add_lock_timer(&mut self, t: LockTimer) {
        let locks = &mut self.timers.locks;
        if locks.back().is_none_or(|b| b.until <= t.until) {
            locks.push_back(t);
        } else {
            // Only if the clock went backwards; keep the deque ordered regardless.
            let at = locks.partition_point(|x| x.until <= t.until);
            locks.insert(at, t);
        }
        self.note(t.until);
        if self.timers.locks.len() > 2 * self.timers.live_locks + 64 {
            let mut locks = std::mem::take(&mut self.timers.locks);
            locks.retain(|t| self.lock_timer_live(*t));
            self.timers.locks = locks;
        }
    }

    /// Validates `message` for this queue and gives it an id. Nothing is stored.
    pub(crate) fn prepare(&self, mut message: Message, limits: &Limits) -> Result<Prepared> {
        let max_message_size = limits.max_message_size;
        let size = message.encoded_size();
        if size > max_message_size {
            return Err(QueueError::MessageTooLarge {
                provider: PROVIDER,
                queue: self.name.to_string(),
                size,
                max: max_message_size,
            });
        }
        if let Some(max) = limits
            .max_attributes
            .filter(|&m| message.attributes.len() > m)
        {
            return Err(QueueError::InvalidMessage {
                provider: PROVIDER,
                reason: format!(
                    "{} attributes exceed the {max} a message carries here",
                    message.attributes.len()
                ),
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
        Ok(Prepared { message, id })
    }

    /// Stores a prepared message (unless it is a duplicate inside the detection window)
    /// and returns its id.
    pub(crate) fn store(&mut self, prepared: Prepared, now: Instant, clock: &Clock) -> MessageId {
        let Prepared { message, id } = prepared;
        if let Some(window) = self.spec.duplicate_detection_window {
            if self.dedup.get(&id).is_some_and(|until| *until > now) {
                return id;
            }
            let until = later(now, window);
            self.dedup.insert(id.clone(), until);
            self.dedup_order.push_back((until, id.clone()));
            self.note(until);
        }
        let visible_at = message
            .scheduled_enqueue_time
            .map_or(now, |t| clock.to_instant(t).max(now));
        let expires_at = message
            .time_to_live
            .or(self.spec.default_ttl)
            .map(|ttl| later(visible_at, ttl));
        if let Some(session) = &message.session_id {
            session_mut(&mut self.sessions, session).messages += 1;
        }
        let seq = self.active.insert(Entry {
            seq: self.next_seq,
            message,
            enqueued_at: now,
            visible_at,
            expires_at,
            delivery_count: 0,
            lock: None,
            dead_letter: None,
        });
        self.next_seq += 1;
        if let Some(e) = expires_at {
            self.timers.ttl.insert((e, seq));
            self.note(e);
        }
        if message_is_plain_and_visible(&self.active[seq], now) {
            self.ready.push_fresh(seq);
        } else {
            self.place(Store::Active, seq, now);
        }
        id
    }

    /// Locks the available entry `seq` (already out of its ready set) and returns it.
    fn deliver(
        &mut self,
        store: Store,
        seq: Key,
        until: Instant,
        session_lock: Option<u64>,
        clock: &Clock,
    ) -> ReceivedMessage {
        let token = self.tokens.take();
        let name = self.name.clone();
        let entry = match store {
            Store::Active => self.active.get_mut(seq),
            Store::Dead => self.dead.get_mut(seq),
        }
        .expect("a ready sequence number names an entry");
        entry.delivery_count += 1;
        entry.lock = Some(MsgLock {
            token,
            until,
            session_lock,
        });
        let session = match session_lock {
            None => {
                self.timers.live_locks += 1;
                None
            }
            Some(_) => {
                let id = entry.message.session_id.clone();
                if let Some(s) = id.as_ref().and_then(|id| self.sessions.get_mut(id)) {
                    s.held.insert(seq);
                }
                id
            }
        };
        let text = Token {
            store,
            seq,
            lock: token,
        }
        .text();
        let receipt = Receipt::new(PROVIDER, name, session, text);
        let mut rm = ReceivedMessage::new(
            entry.message.clone(),
            entry
                .message
                .message_id
                .clone()
                .expect("stored messages have an id"),
            entry.delivery_count,
            clock.to_system(entry.enqueued_at),
            receipt,
        )
        .with_locked_until(clock.to_system(until))
        .with_sequence_number(seq.seq);
        if let Some(reason) = &entry.dead_letter {
            rm = rm.with_dead_letter(DeadLetterReason::clone(reason));
        }
        if session_lock.is_none() {
            self.add_lock_timer(LockTimer {
                until,
                store,
                seq,
                token,
            });
        }
        rm
    }

    /// Locks and returns up to `max` available messages without a session (or from the
    /// dead-letter store, which ignores sessions), oldest first.
    pub(crate) fn receive(
        &mut self,
        store: Store,
        max: usize,
        now: Instant,
        clock: &Clock,
    ) -> Vec<ReceivedMessage> {
        let until = now + self.spec.lock_duration;
        let available = match store {
            Store::Active => self.ready.len(),
            Store::Dead => self.dead_ready.len(),
        };
        let mut out = Vec::with_capacity(max.min(available));
        while out.len() < max {
            let next = match store {
                Store::Active => {
                    let active = &self.active;
                    self.ready.pop(|seq| active.contains_key(seq))
                }
                Store::Dead => self.dead_ready.pop_first(),
            };
            let Some(seq) = next else { break };
            out.push(self.deliver(store, seq, until, None, clock));
        }
        out
    }

    /// When something that a waiting receiver could get may next become available: a
    /// scheduled or delayed message becoming visible, or a lock expiring.
    pub(crate) fn next_wake(&self, now: Instant) -> Option<Instant> {
        [
            self.timers.visible.first().map(|t| t.0),
            self.timers.locks.front().map(|t| t.until),
            self.timers.sessions.first().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
    }

    fn entry_for(&self, token: Token, now: Instant, operation: &'static str) -> Result<&Entry> {
        // After the sweep every remaining lock is live: expired message locks were
        // released, and so were the messages of expired or closed session locks.
        match self.map(token.store).get(token.seq) {
            Some(e)
                if e.lock.is_some_and(|l| {
                    l.token == token.lock && (l.session_lock.is_some() || l.until > now)
                }) =>
            {
                Ok(e)
            }
            _ => Err(lock_lost(&self.name, operation)),
        }
    }

    /// Completes, abandons or dead-letters the delivery behind `token`.
    pub(crate) fn settle(&mut self, token: Token, how: Settle, now: Instant) -> Result<()> {
        self.entry_for(token, now, how.operation())?;
        match (token.store, how) {
            (store, Settle::Complete) => {
                self.delete_entry(store, token.seq);
            }
            (store, Settle::Abandon { delay }) => {
                let visible_at = later(now, delay.unwrap_or_default());
                self.release(store, token.seq, now, Some(visible_at));
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
        let lock = entry.lock.expect("entry_for checked the lock");
        if let (Some(sl), Some(session)) = (lock.session_lock, entry.message.session_id.clone()) {
            return self.renew_session(&session, sl, now, "renew_lock");
        }
        let until = now + self.spec.lock_duration;
        if let Some(l) = self
            .map_mut(token.store)
            .get_mut(token.seq)
            .and_then(|e| e.lock.as_mut())
        {
            l.until = until;
        }
        // The old deadline's item goes stale; the lock stays one live lock.
        self.add_lock_timer(LockTimer {
            until,
            store: token.store,
            seq: token.seq,
            token: lock.token,
        });
        Ok(until)
    }

    // ---- sessions ----

    /// Locks session `id` for a new receiver.
    pub(crate) fn accept_named(&mut self, id: &SessionId, now: Instant) -> Result<SessionLock> {
        let session = session_mut(&mut self.sessions, id);
        if session.lock.is_some() {
            return Err(QueueError::SessionLocked {
                provider: PROVIDER,
                queue: self.name.to_string(),
                session: id.clone(),
            });
        }
        let lock = SessionLock {
            token: self.tokens.take(),
            until: now + self.spec.lock_duration,
        };
        session.lock = Some(lock);
        self.timers.sessions.insert((lock.until, id.clone()));
        self.note(lock.until);
        reindex(&mut self.sessions, &mut self.next_sessions, id);
        Ok(lock)
    }

    /// Locks the unlocked session whose oldest available message is oldest, if any.
    pub(crate) fn accept_next(&mut self, now: Instant) -> Option<(SessionId, SessionLock)> {
        let (_, id) = self.next_sessions.first()?.clone();
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
        now: Instant,
        clock: &Clock,
    ) -> Result<Vec<ReceivedMessage>> {
        let lock = self.check_session(id, token, now, "receive")?;
        let mut out = Vec::new();
        while out.len() < max {
            let next = self.sessions.get_mut(id).and_then(|s| s.ready.pop_first());
            let Some(seq) = next else { break };
            out.push(self.deliver(Store::Active, seq, lock.until, Some(token), clock));
        }
        Ok(out)
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
            && self.active.get(token.seq).is_some_and(|e| {
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
        let old = self.check_session(id, token, now, operation)?;
        let until = now + self.spec.lock_duration;
        self.timers.sessions.remove(&(old.until, id.clone()));
        self.timers.sessions.insert((until, id.clone()));
        self.note(until);
        if let Some(l) = self.sessions.get_mut(id).and_then(|s| s.lock.as_mut()) {
            l.until = until;
        }
        Ok(until)
    }

    /// Ends the session lock of `id`; the messages it held become available again (or
    /// are dead-lettered when they have used up their deliveries).
    fn release_session(&mut self, id: &SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        if let Some(l) = s.lock.take() {
            self.timers.sessions.remove(&(l.until, id.clone()));
        }
        let held = std::mem::take(&mut s.held);
        reindex(&mut self.sessions, &mut self.next_sessions, id);
        for seq in held {
            self.release(Store::Active, seq, now, None);
        }
        tidy(&mut self.sessions, id);
    }

    /// Releases the session lock; its unsettled messages become available again.
    pub(crate) fn close_session(&mut self, id: &SessionId, token: u64, now: Instant) {
        if self.check_session(id, token, now, "close").is_ok() {
            self.release_session(id, now);
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

/// Whether a just-stored entry goes straight to the session-less ready deque.
fn message_is_plain_and_visible(entry: &Entry, now: Instant) -> bool {
    entry.message.session_id.is_none()
        && entry.visible_at <= now
        && entry.expires_at.is_none_or(|e| e > now)
}

/// Pops the first element of `set` if its deadline (`at`) has passed.
fn pop_due<T: Ord + Clone>(
    set: &mut BTreeSet<T>,
    now: Instant,
    at: impl Fn(&T) -> Instant,
) -> Option<T> {
    if set.first().is_some_and(|t| at(t) <= now) {
        set.pop_first()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn queue(spec: QueueSpec) -> (Queue, Clock) {
        (Queue::new(QueueName::new("q").unwrap(), spec), Clock::new())
    }

    fn send(q: &mut Queue, clock: &Clock, message: Message) {
        let now = clock.now();
        q.sweep(now);
        let limits = crate::Profile::Memory.limits();
        let prepared = q.prepare(message, &limits).unwrap();
        q.store(prepared, now, clock);
    }

    fn settle(q: &mut Queue, clock: &Clock, rm: &ReceivedMessage, how: Settle) {
        let token = Token::parse(rm.receipt.token()).unwrap();
        q.settle(token, how, clock.now()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn settled_locks_do_not_pile_up_in_the_deadline_deque() {
        let (mut q, clock) = queue(QueueSpec::default());
        for i in 0..10_000 {
            send(&mut q, &clock, Message::new(format!("{i}")));
            let got = q.receive(Store::Active, 1, clock.now(), &clock);
            settle(&mut q, &clock, &got[0], Settle::Complete);
        }
        assert_eq!(q.timers.live_locks, 0);
        assert!(q.timers.locks.len() <= 64, "{}", q.timers.locks.len());
        assert_eq!(q.active_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_message_in_the_middle_of_the_fresh_deque_is_skipped() {
        let (mut q, clock) = queue(QueueSpec::default());
        send(&mut q, &clock, Message::new("a"));
        send(
            &mut q,
            &clock,
            Message::new("b").with_time_to_live(Duration::from_secs(1)),
        );
        send(&mut q, &clock, Message::new("c"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!q.sweep(clock.now()), "an expiry makes nothing available");
        assert_eq!(q.active_len(), 2);
        assert_eq!(q.ready.len(), 2);
        let got = q.receive(Store::Active, 10, clock.now(), &clock);
        let bodies: Vec<_> = got.iter().map(|m| m.body().clone()).collect();
        assert_eq!(bodies, ["a", "c"]);
        // An abandoned message comes back before later ones.
        send(&mut q, &clock, Message::new("d"));
        settle(&mut q, &clock, &got[1], Settle::Abandon { delay: None });
        let again = q.receive(Store::Active, 10, clock.now(), &clock);
        let bodies: Vec<_> = again.iter().map(|m| m.body().clone()).collect();
        assert_eq!(bodies, ["c", "d"]);
        assert_eq!(q.ready.len(), 0);
    }

    #[test]
    fn tokens_round_trip_and_reject_other_spellings() {
        let t = Token {
            store: Store::Dead,
            seq: Key { seq: 42, slot: 7 },
            lock: u64::MAX,
        };
        let text = t.text();
        let back = Token::parse(&text).unwrap();
        assert_eq!((back.store, back.seq, back.lock), (t.store, t.seq, t.lock));
        for bad in [
            "",
            "a",
            "x.0000000000000001.00000000.0000000000000001",
            &text[1..],
        ] {
            assert!(Token::parse(bad).is_none(), "{bad}");
        }
        let upper = text.to_uppercase();
        assert!(Token::parse(&upper).is_none());
    }
}
