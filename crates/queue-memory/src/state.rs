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
    time::SystemTime,
};

use bytes::Bytes;
use queue_core::{
    BatchEntryError, DeadLetterReason, MAX_DELIVERY_COUNT_EXCEEDED, Message, MessageId, QueueError,
    QueueName, QueueSpec, Receipt, ReceivedMessage, Result, SessionId,
};
use tokio::{sync::Notify, time::Instant};

use crate::{
    clock::{Clock, later},
    ids,
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

/// A parsed receipt token: the store and slot of the entry and the lock token of the
/// delivery (unique in the process, so a reused slot never matches an old receipt). The
/// store is the slot's top bit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Token {
    store: Store,
    slot: u32,
    lock: u64,
}

const DEAD_BIT: u32 = 1 << 31;

impl Token {
    /// The token's text: 16 ASCII characters, built without `fmt` or an allocation (a
    /// receipt keeps a token this short inline).
    fn text(self) -> [u8; ids::TOKEN_LEN] {
        let slot = match self.store {
            Store::Active => self.slot,
            Store::Dead => self.slot | DEAD_BIT,
        };
        ids::encode(slot, self.lock)
    }

    /// Reads a token's bytes ([`Receipt::token_bytes`]: no UTF-8 check, the decoder
    /// accepts nothing but its 64 characters).
    pub(crate) fn parse(text: &[u8]) -> Option<Self> {
        let (slot, lock) = ids::decode(text)?;
        let store = if slot & DEAD_BIT == 0 {
            Store::Active
        } else {
            Store::Dead
        };
        Some(Self {
            store,
            slot: slot & !DEAD_BIT,
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
    /// When the message was sent, on the wall clock (computed once per send call).
    enqueued_at: SystemTime,
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

/// A session (Service Bus) or message group (SQS FIFO, on a grouped queue).
#[derive(Debug, Default)]
struct Session {
    lock: Option<SessionLock>,
    state: Option<Bytes>,
    /// Available messages of this session, in order.
    ready: BTreeSet<Key>,
    /// Messages in flight: locked by the current session lock, or (grouped queues) by
    /// plain receives.
    held: BTreeSet<Key>,
    /// Grouped queues: messages abandoned with a delay that has not passed yet (still in
    /// flight on SQS, so they block the group too).
    delayed: usize,
    /// Messages of this session in the active store.
    messages: usize,
    /// This session's key in [`Queue::next_sessions`], if it is there.
    indexed: Option<Key>,
}

impl Session {
    /// Whether no receiver may take this session's messages now: it is locked, or
    /// (grouped) one of its messages is in flight. Without a session lock `held` is only
    /// non-empty on grouped queues.
    fn blocked(&self) -> bool {
        self.lock.is_some() || !self.held.is_empty() || self.delayed > 0
    }
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
/// it is not blocked and has one, else nowhere.
fn reindex(sessions: &mut Sessions, index: &mut BTreeSet<(Key, SessionId)>, id: &SessionId) {
    let Some(s) = sessions.get_mut(id) else {
        return;
    };
    let want = if s.blocked() {
        None
    } else {
        s.ready.first().copied()
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

/// Adds `seq` to (`held`) or removes it from the in-flight messages of session `id`, and
/// reindexes the session.
fn hold(
    sessions: &mut Sessions,
    index: &mut BTreeSet<(Key, SessionId)>,
    id: &SessionId,
    seq: Key,
    held: bool,
) {
    if let Some(s) = sessions.get_mut(id) {
        if held {
            s.held.insert(seq);
        } else {
            s.held.remove(&seq);
        }
    }
    reindex(sessions, index, id);
}

/// Counts a message of group `id` entering (`true`) or leaving the visibility timers,
/// which blocks the group while it waits there, and reindexes the group.
fn delay(
    sessions: &mut Sessions,
    index: &mut BTreeSet<(Key, SessionId)>,
    id: &SessionId,
    entering: bool,
) {
    if let Some(s) = sessions.get_mut(id) {
        s.delayed = if entering {
            s.delayed + 1
        } else {
            s.delayed.saturating_sub(1)
        };
    }
    reindex(sessions, index, id);
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

    /// The oldest available message, left in place; `exists` tells a live `fresh` entry
    /// from a stale one (stale ones in front are dropped).
    fn peek(&mut self, exists: impl Fn(Key) -> bool) -> Option<Key> {
        while let Some(f) = self.fresh.front().copied() {
            if exists(f) {
                break;
            }
            self.fresh.pop_front();
            self.stale -= 1;
        }
        match (self.fresh.front(), self.again.first()) {
            (Some(f), Some(a)) => Some(*f.min(a)),
            (f, a) => f.or(a).copied(),
        }
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
    /// SQS FIFO semantics: session ids are message groups, received through the plain
    /// receive (see [`crate::Profile`]).
    grouped: bool,
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

/// The time of a send call, read once for all its messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendTime {
    pub(crate) now: Instant,
    /// `now` on the wall clock (each message's `enqueued_at`).
    pub(crate) system: SystemTime,
}

/// The lock one receive call grants to each message it delivers.
#[derive(Clone, Copy, Debug)]
struct Lease {
    until: Instant,
    /// `until` on the wall clock, converted once per call.
    until_system: SystemTime,
    /// The session lock the messages hang on (session receivers), else `None`: each
    /// message has its own lock deadline.
    session_lock: Option<u64>,
}

impl Lease {
    fn plain(now: Instant, duration: std::time::Duration, clock: &Clock) -> Self {
        let until = now + duration;
        Self {
            until,
            until_system: clock.to_system(until),
            session_lock: None,
        }
    }
}

impl Queue {
    pub(crate) fn new(name: QueueName, spec: QueueSpec, grouped: bool) -> Self {
        Self {
            name,
            spec,
            grouped,
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
            self.delay_group(store, seq, true);
        } else {
            self.make_ready(store, seq);
        }
    }

    /// Grouped queues: counts the group message `seq` entering (`true`) or leaving the
    /// visibility timers.
    fn delay_group(&mut self, store: Store, seq: Key, entering: bool) {
        if !self.grouped || store == Store::Dead {
            return;
        }
        if let Some(id) = self
            .active
            .get(seq)
            .and_then(|e| e.message.session_id.as_ref())
        {
            delay(&mut self.sessions, &mut self.next_sessions, id, entering);
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
        // Dead-lettered messages ignore sessions.
        let session = entry
            .message
            .session_id
            .as_ref()
            .filter(|_| store == Store::Active);
        if let Some(lock) = entry.lock {
            if lock.session_lock.is_none() {
                // Its item in `timers.locks` goes stale.
                self.timers.live_locks -= 1;
            }
            if let Some(id) = session {
                hold(&mut self.sessions, &mut self.next_sessions, id, seq, false);
            }
            return;
        }
        let was_ready = match session {
            None if store == Store::Dead => self.dead_ready.remove(&seq),
            None => self.ready.remove(seq),
            Some(id) => {
                let removed = self
                    .sessions
                    .get_mut(id)
                    .is_some_and(|s| s.ready.remove(&seq));
                reindex(&mut self.sessions, &mut self.next_sessions, id);
                removed
            }
        };
        let was_delayed = !was_ready && self.timers.visible.remove(&(entry.visible_at, store, seq));
        if let Some(id) = session.filter(|_| was_delayed && self.grouped) {
            delay(&mut self.sessions, &mut self.next_sessions, id, false);
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
    /// duplicate-detection entries. Returns whether anything became available. With no
    /// deadline passed (nearly every call) this is one comparison, inlined.
    #[inline]
    pub(crate) fn sweep(&mut self, now: Instant) -> bool {
        if self.next_sweep.is_none_or(|t| t > now) {
            return false;
        }
        self.sweep_due(now)
    }

    fn sweep_due(&mut self, now: Instant) -> bool {
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
                self.delay_group(store, seq, false);
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

    /// Checks `message` against this queue's rules (session ids, schedule). Nothing is
    /// stored.
    pub(crate) fn admit(
        &self,
        message: &Message,
        limits: &Limits,
        now: Instant,
        clock: &Clock,
    ) -> Result<()> {
        if self.spec.requires_session && message.session_id.is_none() {
            return Err(QueueError::InvalidMessage {
                provider: PROVIDER,
                reason: format!(
                    "queue `{}` requires sessions and the message has no session id",
                    self.name
                ),
            });
        }
        match message.scheduled_enqueue_time {
            Some(at) => self.check_schedule(message, clock.to_instant(at), now, limits),
            None => Ok(()),
        }
    }

    /// The rules of the profile for a scheduled enqueue time `at`: none on a message of
    /// a group (SQS FIFO has no per-message delay), and no further ahead than the
    /// profile's longest delay.
    fn check_schedule(
        &self,
        message: &Message,
        at: Instant,
        now: Instant,
        limits: &Limits,
    ) -> Result<()> {
        if at <= now {
            return Ok(());
        }
        if self.grouped && message.session_id.is_some() {
            return Err(QueueError::unsupported(
                PROVIDER,
                "scheduled delivery of a message-group message (SQS FIFO has no per-message delay)",
            ));
        }
        match limits.max_schedule_delay {
            Some(max) if at - now > max => Err(QueueError::InvalidMessage {
                provider: PROVIDER,
                reason: format!(
                    "scheduled {:?} ahead; messages are delayed by at most {max:?} here",
                    at - now
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Stores a checked message (unless it is a duplicate inside the detection window).
    /// `at` is the time of the send call.
    #[inline]
    pub(crate) fn store(&mut self, message: Message, at: &SendTime, clock: &Clock) {
        let now = at.now;
        if let Some(window) = self.spec.duplicate_detection_window {
            let id = message
                .message_id
                .as_ref()
                .expect("checked messages have an id");
            if self.dedup.get(id).is_some_and(|until| *until > now) {
                return;
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
            enqueued_at: at.system,
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
    }

    /// Locks the available entry `seq` (already out of its ready set) under `lease` and
    /// adds it to `out`.
    #[inline]
    fn deliver(&mut self, store: Store, seq: Key, lease: &Lease, out: &mut Vec<ReceivedMessage>) {
        let token = self.tokens.take();
        let entry = match store {
            Store::Active => self.active.get_mut(seq),
            Store::Dead => self.dead.get_mut(seq),
        }
        .expect("a ready sequence number names an entry");
        entry.delivery_count += 1;
        entry.lock = Some(MsgLock {
            token,
            until: lease.until,
            session_lock: lease.session_lock,
        });
        // Dead-lettered messages ignore sessions. A session message is delivered through
        // its session receiver, or (grouped) through the plain receive, which blocks its
        // group.
        let session = entry
            .message
            .session_id
            .clone()
            .filter(|_| store == Store::Active);
        let text = Token {
            store,
            slot: seq.slot,
            lock: token,
        }
        .text();
        let message_id = entry.message.message_id.clone();
        let text = std::str::from_utf8(&text).expect("a token is ASCII");
        let receipt = Receipt::new(PROVIDER, self.name.clone(), session, text);
        // Pushed, then completed in place: a received message is ~500 bytes, and this
        // saves moving it from here to the caller and on into the vector.
        out.push(ReceivedMessage::new(
            entry.message.clone(),
            message_id.expect("stored messages have an id"),
            entry.delivery_count,
            entry.enqueued_at,
            receipt,
        ));
        let rm = out.last_mut().expect("pushed just now");
        rm.locked_until = Some(lease.until_system);
        rm.sequence_number = Some(seq.seq);
        if let Some(reason) = &entry.dead_letter {
            rm.dead_letter = Some(DeadLetterReason::clone(reason));
        }
        if let Some(id) = rm.receipt.session() {
            hold(&mut self.sessions, &mut self.next_sessions, id, seq, true);
        }
        if lease.session_lock.is_none() {
            self.timers.live_locks += 1;
            self.add_lock_timer(LockTimer {
                until: lease.until,
                store,
                seq,
                token,
            });
        }
    }

    /// Locks and returns up to `max` available messages without a session (or from the
    /// dead-letter store, which ignores sessions), oldest first. On a grouped queue the
    /// messages of unblocked groups come too.
    pub(crate) fn receive(
        &mut self,
        store: Store,
        max: usize,
        now: Instant,
        clock: &Clock,
    ) -> Vec<ReceivedMessage> {
        let lease = Lease::plain(now, self.spec.lock_duration, clock);
        if self.grouped && store == Store::Active {
            return self.receive_grouped(max, &lease);
        }
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
            self.deliver(store, seq, &lease, &mut out);
        }
        out
    }

    /// The plain receive of a grouped queue (SQS FIFO): the oldest available message
    /// first, whether session-less or the head of an unblocked group; a group's messages
    /// come together, as many as fit, and the group is then blocked until none of them is
    /// in flight any more.
    fn receive_grouped(&mut self, max: usize, lease: &Lease) -> Vec<ReceivedMessage> {
        let mut out = Vec::with_capacity(max.min(self.ready.len() + self.next_sessions.len()));
        while out.len() < max {
            let active = &self.active;
            let plain = self.ready.peek(|seq| active.contains_key(seq));
            let group = self.next_sessions.first();
            let id = match (plain, group) {
                (Some(p), Some((g, _))) if p < *g => None,
                (_, Some((_, id))) => Some(id.clone()),
                (Some(_), None) => None,
                (None, None) => break,
            };
            let Some(id) = id else {
                let seq = self.ready.pop(|seq| active.contains_key(seq));
                let seq = seq.expect("peeked above");
                self.deliver(Store::Active, seq, lease, &mut out);
                continue;
            };
            while out.len() < max {
                let next = self.sessions.get_mut(&id).and_then(|s| s.ready.pop_first());
                let Some(seq) = next else { break };
                self.deliver(Store::Active, seq, lease, &mut out);
            }
            // The group is blocked now; what is left of it waits for the next receive.
            reindex(&mut self.sessions, &mut self.next_sessions, &id);
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

    /// The key and entry of the live delivery behind `token`.
    fn entry_for(
        &self,
        token: Token,
        now: Instant,
        operation: &'static str,
    ) -> Result<(Key, &Entry)> {
        // After the sweep every remaining lock is live: expired message locks were
        // released, and so were the messages of expired or closed session locks. Lock
        // tokens are unique in the process, so a reused slot never matches.
        match self.map(token.store).at(token.slot) {
            Some(e)
                if e.lock.is_some_and(|l| {
                    l.token == token.lock && (l.session_lock.is_some() || l.until > now)
                }) =>
            {
                let key = Key {
                    seq: e.seq,
                    slot: token.slot,
                };
                Ok((key, e))
            }
            _ => Err(lock_lost(&self.name, operation)),
        }
    }

    /// Completes, abandons or dead-letters the delivery behind `token`.
    pub(crate) fn settle(&mut self, token: Token, how: Settle, now: Instant) -> Result<()> {
        let (seq, _) = self.entry_for(token, now, how.operation())?;
        match (token.store, how) {
            (store, Settle::Complete) => {
                self.delete_entry(store, seq);
            }
            (store, Settle::Abandon { delay }) => {
                let visible_at = later(now, delay.unwrap_or_default());
                self.release(store, seq, now, Some(visible_at));
            }
            (Store::Active, Settle::DeadLetter(reason)) => {
                self.move_to_dead(seq, reason, now);
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
        let (seq, entry) = self.entry_for(token, now, "renew_lock")?;
        let lock = entry.lock.expect("entry_for checked the lock");
        if let (Some(sl), Some(session)) = (lock.session_lock, entry.message.session_id.clone()) {
            return self.renew_session(&session, sl, now, "renew_lock");
        }
        let until = now + self.spec.lock_duration;
        if let Some(l) = self
            .map_mut(token.store)
            .get_mut(seq)
            .and_then(|e| e.lock.as_mut())
        {
            l.until = until;
        }
        // The old deadline's item goes stale; the lock stays one live lock.
        self.add_lock_timer(LockTimer {
            until,
            store: token.store,
            seq,
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
        let lease = Lease {
            until: lock.until,
            until_system: clock.to_system(lock.until),
            session_lock: Some(token),
        };
        let mut out = Vec::new();
        while out.len() < max {
            let next = self.sessions.get_mut(id).and_then(|s| s.ready.pop_first());
            let Some(seq) = next else { break };
            self.deliver(Store::Active, seq, &lease, &mut out);
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
            && self.active.at(token.slot).is_some_and(|e| {
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

/// Checks `message` against the profile's size and attribute limits and gives it an id
/// (the queue is not needed, so this runs before its lock is taken). Returns the id.
pub(crate) fn check_limits(
    message: &mut Message,
    limits: &Limits,
    queue: &QueueName,
) -> Result<MessageId> {
    let size = message.encoded_size();
    if size > limits.max_message_size {
        return Err(QueueError::MessageTooLarge {
            provider: PROVIDER,
            queue: queue.to_string(),
            size,
            max: limits.max_message_size,
        });
    }
    let attributes = message.attributes.len();
    if let Some(max) = limits.max_attributes.filter(|&m| attributes > m) {
        return Err(QueueError::InvalidMessage {
            provider: PROVIDER,
            reason: format!("{attributes} attributes exceed the {max} a message carries here"),
        });
    }
    Ok(message
        .message_id
        .get_or_insert_with(MessageId::random)
        .clone())
}

/// The answer to a batch of `total` entries of which `refused` (before the queue was
/// locked) and `not_admitted` (by the queue) failed, both in index order; `ids` are the
/// ids of the entries that passed the first checks, in index order. A one-entry batch
/// fails with its entry's own error, as `SqsProvider` answers.
pub(crate) fn partial_batch(
    queue: &QueueName,
    total: usize,
    ids: Vec<MessageId>,
    refused: Vec<BatchEntryError>,
    not_admitted: Vec<BatchEntryError>,
) -> QueueError {
    let mut succeeded = Vec::with_capacity(ids.len().saturating_sub(not_admitted.len()));
    let mut ids = ids.into_iter();
    let mut early = refused.iter().map(|f| f.index).peekable();
    let mut late = not_admitted.iter().map(|f| f.index).peekable();
    for index in 0..total {
        if early.next_if_eq(&index).is_some() {
            continue;
        }
        let Some(id) = ids.next() else { break };
        if late.next_if_eq(&index).is_none() {
            succeeded.push((index, id));
        }
    }
    let mut failed = merge_by_index(refused, not_admitted);
    if total == 1
        && let Some(only) = failed.pop()
    {
        return only.error;
    }
    QueueError::PartialBatch {
        provider: PROVIDER,
        queue: queue.to_string(),
        operation: "send_batch",
        total,
        succeeded,
        failed,
    }
}

/// Merges two lists of entry errors, each in index order, into one in index order.
fn merge_by_index(a: Vec<BatchEntryError>, b: Vec<BatchEntryError>) -> Vec<BatchEntryError> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut b = b.into_iter().peekable();
    for x in a {
        while let Some(y) = b.next_if(|y| y.index < x.index) {
            out.push(y);
        }
        out.push(x);
    }
    out.extend(b);
    out
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
        (
            Queue::new(QueueName::new("q").unwrap(), spec, false),
            Clock::new(),
        )
    }

    fn send(q: &mut Queue, clock: &Clock, mut message: Message) {
        let now = clock.now();
        q.sweep(now);
        let limits = crate::Profile::Memory.limits();
        check_limits(&mut message, &limits, &q.name).unwrap();
        q.admit(&message, &limits, now, clock).unwrap();
        let at = SendTime {
            now,
            system: clock.to_system(now),
        };
        q.store(message, &at, clock);
    }

    fn settle(q: &mut Queue, clock: &Clock, rm: &ReceivedMessage, how: Settle) {
        let token = Token::parse(rm.receipt.token_bytes()).unwrap();
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
    fn tokens_round_trip_with_their_store_and_reject_other_spellings() {
        for store in [Store::Active, Store::Dead] {
            let t = Token {
                store,
                slot: 7,
                lock: u64::MAX,
            };
            let text = t.text();
            assert_eq!(text.len(), 16);
            let back = Token::parse(&text).unwrap();
            assert_eq!(
                (back.store, back.slot, back.lock),
                (t.store, t.slot, t.lock)
            );
        }
        for bad in ["", "a", "a.0000000000000001.00000000.0000000000000001"] {
            assert!(Token::parse(bad.as_bytes()).is_none(), "{bad}");
        }
    }
}
