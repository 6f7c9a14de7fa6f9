//! The semantic core: queues, dead-letter sub-queues, peek-locks, sessions and expiry.
//!
//! It knows nothing about sockets or frames. Every operation reads the time from
//! [`Clock`], so unit tests drive it with tokio's paused clock.

mod store;

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use fe2o3_amqp_types::{
    messaging::{Body, Message},
    primitives::SimpleValue,
};
use serde_amqp::Value;
use tokio::{sync::watch, time::Instant};
use uuid::Uuid;

use self::store::{
    Entry, Lock, LockRef, QueueState, SessionInfo, State, dead_letter_entry, dead_letter_exhausted,
    merge_props, note_due, release_session, sweep,
};
use crate::{clock::Clock, config::QueueConfig, error::EmulatorError};

/// A decoded AMQP message as the emulator stores it.
pub type AmqpMessage = Message<Body<Value>>;

/// Identifies a receiver link (the owner of locks).
pub type OwnerId = u64;

/// Main queue or its dead-letter sub-queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubQueue {
    /// The queue itself.
    Main,
    /// `<queue>/$deadletterqueue`.
    DeadLetter,
}

/// A queue or sub-queue address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntityRef {
    /// Queue name.
    pub queue: String,
    /// Which sub-queue.
    pub sub: SubQueue,
}

/// A message handed to [`Broker::send`]. Its `Debug` leaves the message out: bodies and
/// properties may hold secrets.
#[derive(Clone)]
pub struct IncomingMessage {
    /// The AMQP message as the client sent it.
    pub message: AmqpMessage,
    /// When it becomes visible (scheduled messages).
    pub scheduled_at: Option<SystemTime>,
}

impl std::fmt::Debug for IncomingMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingMessage")
            .field("scheduled_at", &self.scheduled_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivered")
            .field("sequence_number", &self.sequence_number)
            .field("delivery_count", &self.delivery_count)
            .field("session_id", &self.session_id)
            .field("locked_until", &self.locked_until)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock_state();
        let mut d = f.debug_struct("Broker");
        for (name, q) in &st.queues {
            d.field(name, &(q.main.len(), q.dlq.len()));
        }
        d.finish_non_exhaustive()
    }
}

impl IncomingMessage {
    /// Wraps a message; scheduling is read from `x-opt-scheduled-enqueue-time` by the glue.
    pub fn new(message: AmqpMessage) -> Self {
        Self {
            message,
            scheduled_at: None,
        }
    }
    fn message_id(&self) -> Option<String> {
        self.message
            .properties
            .as_ref()
            .and_then(|p| p.message_id.as_ref())
            .map(|id| format!("{id:?}"))
    }
    fn session_id(&self) -> Option<String> {
        self.message
            .properties
            .as_ref()
            .and_then(|p| p.group_id.clone())
    }
    fn ttl(&self) -> Option<Duration> {
        self.message
            .header
            .as_ref()
            .and_then(|h| h.ttl)
            .map(|ms| Duration::from_millis(ms as u64))
    }
}

/// How a lock is released.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Settlement {
    /// Delete the message.
    Complete,
    /// Return it to the queue (delivery count + 1), optionally merging properties.
    Abandon {
        /// Application properties to merge into the message.
        properties: Vec<(String, SimpleValue)>,
    },
    /// Return it to the queue without counting a delivery (the AMQP `released` outcome:
    /// the receiver never handed the message to the application).
    Release,
    /// Move it to the dead-letter sub-queue.
    DeadLetter {
        /// `DeadLetterReason`.
        reason: Option<String>,
        /// `DeadLetterErrorDescription`.
        description: Option<String>,
        /// Further application properties to merge.
        properties: Vec<(String, SimpleValue)>,
    },
}

/// One message as a receiver gets it. Its `Debug` leaves the message out.
#[derive(Clone)]
pub struct Delivered {
    /// Lock token (nil for receive-and-delete and peeks).
    pub lock_token: Uuid,
    /// Sequence number.
    pub sequence_number: i64,
    /// Prior delivery attempts (the AMQP header's delivery-count).
    pub delivery_count: u32,
    /// Wall-clock enqueue time.
    pub enqueued_time: SystemTime,
    /// Wall-clock lock expiry (absent when not locked).
    pub locked_until: Option<SystemTime>,
    /// The stored message (with dead-letter properties merged where relevant).
    pub message: Arc<AmqpMessage>,
    /// The message's session id.
    pub session_id: Option<String>,
    /// Whether the message is scheduled and not yet visible (only peeks see those).
    pub scheduled: bool,
}

/// The emulated namespace. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Broker {
    state: Arc<Mutex<State>>,
    clock: Clock,
    changed: Arc<watch::Sender<u64>>,
}

/// Session lock handed to a session receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLock {
    /// The session id.
    pub session_id: String,
    /// Wall-clock lock expiry.
    pub locked_until: SystemTime,
}

impl Broker {
    /// Creates a namespace with the given queues.
    pub fn new(queues: impl IntoIterator<Item = (String, QueueConfig)>, clock: Clock) -> Self {
        let mut state = State::default();
        for (name, cfg) in queues {
            state.queues.insert(name, QueueState::new(cfg));
        }
        let (tx, _) = watch::channel(0);
        Self {
            state: Arc::new(Mutex::new(state)),
            clock,
            changed: Arc::new(tx),
        }
    }

    /// The clock the broker reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A receiver that changes whenever messages may have become available.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave half-applied state that matters to
        // an emulator; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration of a queue.
    pub fn queue_config(&self, queue: &str) -> Option<QueueConfig> {
        self.lock_state().queues.get(queue).map(|q| q.cfg.clone())
    }

    /// Creates a queue while the namespace serves. Creating a queue that already exists
    /// succeeds and leaves it (its settings and messages) unchanged.
    pub fn create_queue(&self, name: &str, cfg: QueueConfig) -> Result<(), EmulatorError> {
        crate::config::check_queue(name, &cfg)?;
        self.lock_state()
            .queues
            .entry(name.to_owned())
            .or_insert_with(|| QueueState::new(cfg));
        Ok(())
    }

    /// Deletes a queue with its dead-letter queue, messages, sessions and locks. Links to
    /// it are detached with `amqp:not-found` (receivers waiting on it are woken for that).
    pub fn delete_queue(&self, name: &str) -> Result<(), EmulatorError> {
        let mut st = self.lock_state();
        if st.queues.remove(name).is_none() {
            return Err(EmulatorError::EntityNotFound {
                entity: name.to_owned(),
            });
        }
        st.locks.retain(|_, r| r.entity.queue != name);
        drop(st);
        self.notify();
        Ok(())
    }

    /// Whether a queue exists.
    pub fn has_queue(&self, queue: &str) -> bool {
        self.lock_state().queues.contains_key(queue)
    }

    /// Enqueues messages; returns their sequence numbers (0 for dropped duplicates).
    pub fn send(
        &self,
        queue: &str,
        messages: Vec<IncomingMessage>,
    ) -> Result<Vec<i64>, EmulatorError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        sweep(&mut st, now);
        let q = queue_mut(&mut st, queue)?;
        check_send(q, queue, &messages)?;
        let mut due = None;
        let seqs = messages
            .into_iter()
            .map(|m| self.enqueue(q, m, now, &mut due))
            .collect();
        if let Some(t) = due {
            st.note_due(t);
        }
        drop(st);
        self.notify();
        Ok(seqs)
    }

    /// Stores one message; returns its sequence number (0: a duplicate, dropped).
    fn enqueue(
        &self,
        q: &mut QueueState,
        m: IncomingMessage,
        now: Instant,
        due: &mut Option<Instant>,
    ) -> i64 {
        if is_duplicate(q, &m, now) {
            return 0;
        }
        let ttl = match (m.ttl(), q.cfg.default_ttl_secs.map(Duration::from_secs)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let visible_at = m
            .scheduled_at
            .map(|t| self.clock.instant_of(t).max(now))
            .unwrap_or(now);
        let seq = q.next_seq;
        q.next_seq += 1;
        // A plain queue keeps a message's session id as a property only, as Service
        // Bus does: the message is not session-bound there.
        let session_id = m.session_id().filter(|_| q.cfg.requires_session);
        if let Some(s) = &session_id {
            q.sessions.entry(s.clone()).or_default();
        }
        let mut message = m.message;
        // Service Bus gives every message an id; the JavaScript SDK relies on it.
        let props = message.properties.get_or_insert_with(Default::default);
        if props.message_id.is_none() {
            let id = Uuid::new_v4().simple().to_string();
            props.message_id = Some(fe2o3_amqp_types::messaging::MessageId::String(id));
        }
        let expires_at = ttl.map(|t| visible_at + t);
        if visible_at > now {
            note_due(due, visible_at);
        }
        expires_at.into_iter().for_each(|x| note_due(due, x));
        q.main.insert(Entry {
            message: Arc::new(message),
            seq,
            enqueued_at: now,
            visible_at,
            expires_at,
            delivery_count: 0,
            lock: None,
            session_id,
        });
        seq
    }

    /// Removes scheduled messages that are not yet visible.
    pub fn cancel_scheduled(&self, queue: &str, seqs: &[i64]) -> Result<(), EmulatorError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        let q = queue_mut(&mut st, queue)?;
        for s in seqs {
            if q.main.get(*s).is_some_and(|e| e.visible_at > now) {
                q.main.remove(*s);
            }
        }
        Ok(())
    }

    /// Takes the next available message. `session` restricts to one session (which the
    /// owner must hold locked); `peek_lock == false` deletes it (receive-and-delete).
    pub fn receive(
        &self,
        entity: &EntityRef,
        session: Option<&str>,
        owner: OwnerId,
        peek_lock: bool,
    ) -> Result<Option<Delivered>, EmulatorError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        sweep(&mut st, now);
        let State { queues, locks, due } = &mut *st;
        let q = queues
            .get_mut(&entity.queue)
            .ok_or_else(|| not_found(entity))?;
        let lock_for = q.cfg.lock_duration();
        if let Some(s) = session {
            match q.sessions.get(s).and_then(|i| i.lock) {
                Some((o, until)) if o == owner && until > now => {}
                _ => return Err(EmulatorError::SessionLockLost),
            }
        } else if q.cfg.requires_session && entity.sub == SubQueue::Main {
            return Err(EmulatorError::BadRequest {
                reason: "a session-enabled queue needs a session receiver".into(),
            });
        }
        let store = q.store(entity.sub);
        let Some(seq) = store.first_available(session, now) else {
            return Ok(None);
        };
        if !peek_lock {
            let e = store.remove(seq).expect("entry just found");
            return Ok(Some(delivered(&self.clock, &e, Uuid::nil(), None)));
        }
        let token = Uuid::new_v4();
        // A session message is locked for as long as its session is.
        let until = match session.and_then(|s| q.sessions.get(s)).and_then(|i| i.lock) {
            Some((_, session_until)) => session_until,
            None => now + lock_for,
        };
        let store = q.store(entity.sub);
        let e = store.get_mut(seq).expect("entry just found");
        e.lock = Some(Lock { token, until });
        note_due(due, until);
        let d = delivered(&self.clock, e, token, Some(until));
        locks.insert(
            token,
            LockRef {
                entity: entity.clone(),
                seq,
            },
        );
        Ok(Some(d))
    }

    /// Settles a locked message.
    pub fn settle(&self, token: Uuid, how: Settlement) -> Result<(), EmulatorError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        sweep(&mut st, now);
        let State { queues, locks, due } = &mut *st;
        let r = locks.get(&token).cloned().ok_or(EmulatorError::LockLost)?;
        let q = queues
            .get_mut(&r.entity.queue)
            .ok_or(EmulatorError::LockLost)?;
        if matches!(how, Settlement::DeadLetter { .. }) && r.entity.sub == SubQueue::DeadLetter {
            // Refused before anything changes: the message keeps its lock, as on Service Bus.
            return Err(EmulatorError::BadRequest {
                reason: "cannot dead-letter a message from the dead-letter queue".into(),
            });
        }
        let checked = check_lock(q, &r, token, now);
        locks.remove(&token);
        checked?;
        let mut e = q.store(r.entity.sub).remove(r.seq).expect("checked above");
        e.lock = None;
        apply_settlement(q, r.entity.sub, e, how, due);
        drop(st);
        self.notify();
        Ok(())
    }

    /// Extends a message lock by the queue's lock duration; returns the new expiry.
    pub fn renew_lock(&self, token: Uuid) -> Result<SystemTime, EmulatorError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        sweep(&mut st, now);
        let State { queues, locks, .. } = &mut *st;
        let r = locks.get(&token).cloned().ok_or(EmulatorError::LockLost)?;
        let q = queues
            .get_mut(&r.entity.queue)
            .ok_or(EmulatorError::LockLost)?;
        let d = q.cfg.lock_duration();
        let lock = q
            .store(r.entity.sub)
            .get_mut(r.seq)
            .and_then(|e| e.lock.as_mut())
            .filter(|l| l.token == token && l.until > now)
            .ok_or(EmulatorError::LockLost)?;
        lock.until = now + d;
        Ok(self.clock.wall(lock.until))
    }

    /// Reads messages without locking them, from `from_seq` on.
    pub fn peek(
        &self,
        entity: &EntityRef,
        from_seq: i64,
        count: usize,
        session: Option<&str>,
    ) -> Result<Vec<Delivered>, EmulatorError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        sweep(&mut st, now);
        let q = st
            .queues
            .get_mut(&entity.queue)
            .ok_or_else(|| not_found(entity))?;
        Ok(q.store(entity.sub)
            .range_from(from_seq)
            .filter(|e| session.is_none() || e.session_id.as_deref() == session)
            .take(count)
            .map(|e| delivered(&self.clock, e, Uuid::nil(), None))
            .collect())
    }

    /// Locks a session for `owner`: the named one, or the next unlocked session with
    /// visible messages when `session` is `None`.
    pub fn accept_session(
        &self,
        queue: &str,
        session: Option<&str>,
        owner: OwnerId,
    ) -> Result<SessionLock, EmulatorError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        sweep(&mut st, now);
        let q = queue_mut(&mut st, queue)?;
        if !q.cfg.requires_session {
            return Err(EmulatorError::BadRequest {
                reason: format!("queue `{queue}` is not session-enabled"),
            });
        }
        let until = now + q.cfg.lock_duration();
        let id = match session {
            Some(s) => {
                let info = q.sessions.entry(s.to_owned()).or_default();
                if info.lock.is_some_and(|(o, u)| o != owner && u > now) {
                    return Err(EmulatorError::SessionCannotBeLocked {
                        session: s.to_owned(),
                    });
                }
                s.to_owned()
            }
            None => {
                // Sessions in the order of their oldest visible message (FIFO across sessions).
                let mut chosen = None;
                for e in q.main.values() {
                    let Some(s) = &e.session_id else { continue };
                    if e.visible_at > now || e.lock.is_some() {
                        continue;
                    }
                    let free = q
                        .sessions
                        .get(s)
                        .is_none_or(|i| i.lock.is_none_or(|(_, u)| u <= now));
                    if free {
                        chosen = Some(s.clone());
                        break;
                    }
                }
                chosen.ok_or(EmulatorError::NoSessionAvailable)?
            }
        };
        q.sessions.entry(id.clone()).or_default().lock = Some((owner, until));
        st.note_due(until);
        Ok(SessionLock {
            session_id: id,
            locked_until: self.clock.wall(until),
        })
    }

    /// Renews a session lock held by `owner` (any owner when `owner` is `None`).
    pub fn renew_session(
        &self,
        queue: &str,
        session: &str,
        owner: Option<OwnerId>,
    ) -> Result<SystemTime, EmulatorError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        sweep(&mut st, now);
        let q = st
            .queues
            .get_mut(queue)
            .ok_or(EmulatorError::SessionLockLost)?;
        let d = q.cfg.lock_duration();
        let info = q
            .sessions
            .get_mut(session)
            .ok_or(EmulatorError::SessionLockLost)?;
        match &mut info.lock {
            Some((o, until)) if *until > now && owner.is_none_or(|x| x == *o) => {
                *until = now + d;
                Ok(self.clock.wall(*until))
            }
            _ => Err(EmulatorError::SessionLockLost),
        }
    }

    /// Whether `owner` still holds the lock of `session` (it may have expired).
    pub fn holds_session(&self, queue: &str, session: &str, owner: OwnerId) -> bool {
        let now = self.clock.now();
        let mut st = self.lock_state();
        sweep(&mut st, now);
        st.queues
            .get(queue)
            .and_then(|q| q.sessions.get(session))
            .and_then(|i| i.lock)
            .is_some_and(|(o, u)| o == owner && u > now)
    }

    /// Releases every session lock held by `owner` (its link closed).
    pub fn release_owner(&self, owner: OwnerId) {
        let mut st = self.lock_state();
        let State { queues, locks, due } = &mut *st;
        for q in queues.values_mut() {
            let held: Vec<String> = q
                .sessions
                .iter()
                .filter(|(_, i)| i.lock.is_some_and(|(o, _)| o == owner))
                .map(|(k, _)| k.clone())
                .collect();
            for sid in held {
                release_session(q, locks, due, &sid);
            }
        }
        drop(st);
        self.notify();
    }

    /// Reads a session's state. The session must be locked, by `owner` when given.
    pub fn session_state(
        &self,
        queue: &str,
        session: &str,
        owner: Option<OwnerId>,
    ) -> Result<Option<Vec<u8>>, EmulatorError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        Ok(held_session(&mut st, queue, session, owner, now)?
            .state
            .clone())
    }

    /// Writes a session's state. The session must be locked, by `owner` when given.
    pub fn set_session_state(
        &self,
        queue: &str,
        session: &str,
        owner: Option<OwnerId>,
        state: Option<Vec<u8>>,
    ) -> Result<(), EmulatorError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        held_session(&mut st, queue, session, owner, now)?.state = state;
        Ok(())
    }

    /// Counts messages in a sub-queue (visible or not, locked or not).
    pub fn count(&self, entity: &EntityRef) -> usize {
        let now = self.clock.now();
        let mut st = self.lock_state();
        sweep(&mut st, now);
        st.queues
            .get_mut(&entity.queue)
            .map(|q| q.store(entity.sub).len())
            .unwrap_or(0)
    }

    /// Applies expirations due by now; wakes receivers when anything changed.
    pub fn tick(&self) {
        let now = self.clock.now();
        let changed = sweep(&mut self.lock_state(), now);
        if changed {
            self.notify();
        }
    }

    /// The earliest future instant at which a lock, schedule or TTL expiry may fall due
    /// (applying whatever is due by now first).
    pub fn next_deadline(&self) -> Option<Instant> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        let changed = sweep(&mut st, now);
        let due = st.due.filter(|d| *d > now);
        drop(st);
        if changed {
            self.notify();
        }
        due
    }
}

/// Refuses a send the queue cannot take: over its quota, or a session queue given a
/// message without a session id.
fn check_send(
    q: &QueueState,
    queue: &str,
    messages: &[IncomingMessage],
) -> Result<(), EmulatorError> {
    if q.cfg
        .max_messages
        .is_some_and(|max| q.main.len() + messages.len() > max)
    {
        return Err(EmulatorError::QuotaExceeded {
            entity: queue.to_owned(),
        });
    }
    if q.cfg.requires_session && messages.iter().any(|m| m.session_id().is_none()) {
        return Err(EmulatorError::NotAllowed {
            reason: format!("queue `{queue}` requires sessions; the message has no session id"),
        });
    }
    Ok(())
}

/// Duplicate detection: whether the message's id was seen inside the window (and
/// otherwise remembers it).
fn is_duplicate(q: &mut QueueState, m: &IncomingMessage, now: Instant) -> bool {
    let (Some(window), Some(id)) = (q.cfg.duplicate_detection_window_secs, m.message_id()) else {
        return false;
    };
    let window = Duration::from_secs(window);
    q.dedup.retain(|_, at| now.duration_since(*at) < window);
    if q.dedup.contains_key(&id) {
        return true;
    }
    q.dedup.insert(id, now);
    false
}

/// Whether `token` still locks the message `r` points to: a session message while its
/// session is locked, any other while its own lock lasts.
fn check_lock(q: &QueueState, r: &LockRef, token: Uuid, now: Instant) -> Result<(), EmulatorError> {
    // Dead-letter queues are not session-bound, even for messages with a session id.
    let session_bound = r.entity.sub == SubQueue::Main;
    let entry = q.store_ref(r.entity.sub).get(r.seq);
    if let Some(sid) = entry
        .and_then(|e| e.session_id.as_ref())
        .filter(|_| session_bound)
    {
        // A session message may only be settled while its session is still locked.
        if q.sessions
            .get(sid)
            .and_then(|i| i.lock)
            .is_none_or(|(_, until)| until <= now)
        {
            return Err(EmulatorError::SessionLockLost);
        }
    }
    let valid = entry
        .filter(|e| e.lock.as_ref().is_some_and(|l| l.token == token))
        .is_some_and(|e| {
            (session_bound && e.session_id.is_some())
                || e.lock.as_ref().is_some_and(|l| l.until > now)
        });
    if valid {
        Ok(())
    } else {
        Err(EmulatorError::LockLost)
    }
}

/// Applies a settlement to the message `e`, just taken out of `sub` (dead-lettering only
/// from the main queue).
fn apply_settlement(
    q: &mut QueueState,
    sub: SubQueue,
    mut e: Entry,
    how: Settlement,
    due: &mut Option<Instant>,
) {
    let max = q.cfg.max_delivery_count;
    match how {
        Settlement::Complete => {}
        Settlement::Abandon { properties } => {
            merge_props(&mut e, properties);
            e.delivery_count += 1;
            if e.delivery_count >= max && sub == SubQueue::Main {
                dead_letter_exhausted(q, e, max);
            } else {
                e.expires_at.into_iter().for_each(|x| note_due(due, x));
                q.store(sub).insert(e);
            }
        }
        Settlement::Release => {
            e.expires_at.into_iter().for_each(|x| note_due(due, x));
            q.store(sub).insert(e);
        }
        Settlement::DeadLetter {
            reason,
            description,
            properties,
        } => {
            merge_props(&mut e, properties);
            dead_letter_entry(q, e, reason, description);
        }
    }
}

/// Whether the session's lock is live and held by `owner` (anyone when `None`).
/// After a sweep, the session `session` of `queue` if its lock is held (by `owner` when
/// given), else `SessionLockLost`.
fn held_session<'a>(
    st: &'a mut State,
    queue: &str,
    session: &str,
    owner: Option<OwnerId>,
    now: Instant,
) -> Result<&'a mut SessionInfo, EmulatorError> {
    sweep(st, now);
    st.queues
        .get_mut(queue)
        .and_then(|q| q.sessions.get_mut(session))
        .filter(|i| held_by(i, owner, now))
        .ok_or(EmulatorError::SessionLockLost)
}

fn held_by(i: &SessionInfo, owner: Option<OwnerId>, now: Instant) -> bool {
    i.lock
        .is_some_and(|(o, u)| u > now && owner.is_none_or(|x| x == o))
}

/// The queue named `queue`, or `EntityNotFound` naming it.
fn queue_mut<'s>(st: &'s mut State, queue: &str) -> Result<&'s mut QueueState, EmulatorError> {
    st.queues
        .get_mut(queue)
        .ok_or_else(|| EmulatorError::EntityNotFound {
            entity: queue.to_owned(),
        })
}

fn not_found(e: &EntityRef) -> EmulatorError {
    EmulatorError::EntityNotFound {
        entity: match e.sub {
            SubQueue::Main => e.queue.clone(),
            SubQueue::DeadLetter => format!("{}/$deadletterqueue", e.queue),
        },
    }
}

fn delivered(clock: &Clock, e: &Entry, token: Uuid, until: Option<Instant>) -> Delivered {
    Delivered {
        lock_token: token,
        sequence_number: e.seq,
        delivery_count: e.delivery_count,
        enqueued_time: clock.wall(e.enqueued_at.max(e.visible_at)),
        locked_until: until.map(|u| clock.wall(u)),
        message: e.message.clone(),
        session_id: e.session_id.clone(),
        scheduled: e.visible_at > clock.now(),
    }
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp_types::messaging::{AmqpValue, Header, Properties};

    use super::*;

    fn msg(body: &str, id: Option<&str>, session: Option<&str>) -> IncomingMessage {
        let m = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                message_id: id.map(|s| s.to_owned().into()),
                group_id: session.map(str::to_owned),
                ..Default::default()
            }),
            application_properties: None,
            body: Body::Value(AmqpValue(Value::String(body.to_owned()))),
            footer: None,
        };
        IncomingMessage::new(m)
    }

    fn body(d: &Delivered) -> String {
        match &d.message.body {
            Body::Value(AmqpValue(Value::String(s))) => s.clone(),
            other => panic!("unexpected body {other:?}"),
        }
    }

    fn main(q: &str) -> EntityRef {
        EntityRef {
            queue: q.into(),
            sub: SubQueue::Main,
        }
    }
    fn dlq(q: &str) -> EntityRef {
        EntityRef {
            queue: q.into(),
            sub: SubQueue::DeadLetter,
        }
    }

    fn broker(cfg: QueueConfig) -> Broker {
        Broker::new([("q".to_owned(), cfg)], Clock::new())
    }

    #[tokio::test(start_paused = true)]
    async fn debug_output_leaves_message_contents_out() {
        let b = broker(QueueConfig::new());
        let m = msg("CANARY-BODY-31337", Some("CANARY-ID"), None);
        assert!(!format!("{m:?}").contains("CANARY"));
        b.send("q", vec![m]).unwrap();
        assert!(!format!("{b:?}").contains("CANARY"));
        let d = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        assert!(!format!("{d:?}").contains("CANARY"));
        assert_eq!(body(&d), "CANARY-BODY-31337");
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letter_queue_of_a_session_queue_is_not_session_bound() {
        let b = broker(QueueConfig::new().with_requires_session(true));
        b.send("q", vec![msg("s-a", None, Some("s"))]).unwrap();
        b.accept_session("q", Some("s"), 1).unwrap();
        let d = b.receive(&main("q"), Some("s"), 1, true).unwrap().unwrap();
        b.settle(
            d.lock_token,
            Settlement::DeadLetter {
                reason: Some("r".into()),
                description: None,
                properties: vec![],
            },
        )
        .unwrap();
        b.release_owner(1);
        let dead = b.receive(&dlq("q"), None, 2, true).unwrap().unwrap();
        assert_eq!(dead.session_id.as_deref(), Some("s"));
        b.settle(dead.lock_token, Settlement::Complete).unwrap();
        assert_eq!(b.count(&dlq("q")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queues_are_created_and_deleted_at_run_time() {
        let b = Broker::new(Vec::new(), Clock::new());
        assert!(b.send("late", vec![msg("x", None, None)]).is_err());
        b.create_queue("late", QueueConfig::new()).unwrap();
        b.send("late", vec![msg("x", None, None)]).unwrap();
        let d = b.receive(&main("late"), None, 1, true).unwrap().unwrap();
        assert!(matches!(
            b.create_queue("$bad", QueueConfig::new()),
            Err(EmulatorError::Config { .. })
        ));
        b.delete_queue("late").unwrap();
        assert!(!b.has_queue("late"));
        assert_eq!(
            b.settle(d.lock_token, Settlement::Complete),
            Err(EmulatorError::LockLost),
            "a lock outlived its queue"
        );
        // A queue created again under the same name starts empty.
        b.create_queue("late", QueueConfig::new()).unwrap();
        assert_eq!(b.count(&main("late")), 0);
        assert!(matches!(
            b.delete_queue("missing"),
            Err(EmulatorError::EntityNotFound { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn release_keeps_the_count_abandon_raises_it_and_ids_are_assigned() {
        let b = broker(QueueConfig::new());
        b.send("q", vec![msg("a", None, None)]).unwrap();
        let d = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        let id = d
            .message
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        assert!(id.is_some(), "the broker assigns a message id");
        b.settle(d.lock_token, Settlement::Release).unwrap();
        let d = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        assert_eq!(d.delivery_count, 0, "released is not a delivery");
        b.settle(d.lock_token, Settlement::Abandon { properties: vec![] })
            .unwrap();
        let d = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        assert_eq!(d.delivery_count, 1, "abandon is");
        let again = d
            .message
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        assert_eq!(again, id, "the id is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn lock_expiry_returns_the_message_with_a_higher_count() {
        let b = broker(QueueConfig::new().with_lock_duration(Duration::from_secs(10)));
        b.send("q", vec![msg("a", None, None)]).unwrap();
        let d = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        assert_eq!(d.delivery_count, 0);
        assert!(
            b.receive(&main("q"), None, 1, true).unwrap().is_none(),
            "locked message handed out twice"
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(b.receive(&main("q"), None, 1, true).unwrap().is_none());
        let until = b.renew_lock(d.lock_token).unwrap();
        assert!(until > d.locked_until.unwrap());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(
            b.receive(&main("q"), None, 1, true).unwrap().is_none(),
            "renewal did not extend"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let again = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        assert_eq!(again.delivery_count, 1);
        assert_ne!(again.lock_token, d.lock_token);
        assert_eq!(
            b.settle(d.lock_token, Settlement::Complete),
            Err(EmulatorError::LockLost)
        );
        assert_eq!(b.renew_lock(d.lock_token), Err(EmulatorError::LockLost));
        b.settle(again.lock_token, Settlement::Complete).unwrap();
        assert_eq!(b.count(&main("q")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn max_delivery_count_moves_to_dead_letter() {
        let b = broker(QueueConfig::new().with_max_delivery_count(2));
        b.send("q", vec![msg("a", None, None)]).unwrap();
        let d = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        b.settle(d.lock_token, Settlement::Abandon { properties: vec![] })
            .unwrap();
        let d = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        assert_eq!(d.delivery_count, 1);
        // The second failure (here by lock expiry) exhausts the count.
        tokio::time::advance(Duration::from_secs(61)).await;
        b.tick();
        assert_eq!(b.count(&main("q")), 0);
        let dead = b.receive(&dlq("q"), None, 1, true).unwrap().unwrap();
        assert_eq!(body(&dead), "a");
        let ap = dead.message.application_properties.as_ref().unwrap();
        assert_eq!(
            ap.0.get("DeadLetterReason"),
            Some(&SimpleValue::String("MaxDeliveryCountExceeded".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expiry_drops_messages_and_default_ttl_caps_it() {
        let b = broker(QueueConfig::new().with_default_ttl(Duration::from_secs(30)));
        let mut long = msg("long", None, None);
        long.message.header = Some(Header {
            ttl: Some(3_600_000),
            ..Default::default()
        });
        let mut short = msg("short", None, None);
        short.message.header = Some(Header {
            ttl: Some(5_000),
            ..Default::default()
        });
        b.send("q", vec![long, short]).unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.count(&main("q")), 1, "5 s message outlived its TTL");
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(
            b.count(&main("q")),
            0,
            "default TTL did not cap the 1 h TTL"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_detection_drops_repeats_inside_the_window() {
        let b = broker(QueueConfig::new().with_duplicate_detection(Duration::from_secs(60)));
        let seqs = b
            .send(
                "q",
                vec![msg("a", Some("id-1"), None), msg("b", Some("id-1"), None)],
            )
            .unwrap();
        assert_eq!(seqs[1], 0);
        assert_eq!(b.count(&main("q")), 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        b.send("q", vec![msg("c", Some("id-1"), None)]).unwrap();
        assert_eq!(b.count(&main("q")), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_messages_stay_hidden_until_due() {
        let b = broker(QueueConfig::new());
        let mut m = msg("later", None, None);
        m.scheduled_at = Some(b.clock().wall(b.clock().now()) + Duration::from_secs(30));
        let seq = b.send("q", vec![m]).unwrap()[0];
        assert!(b.receive(&main("q"), None, 1, true).unwrap().is_none());
        assert_eq!(
            b.peek(&main("q"), 0, 10, None).unwrap().len(),
            1,
            "peek sees scheduled"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        let d = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        assert_eq!(d.sequence_number, seq);
    }

    #[tokio::test(start_paused = true)]
    async fn next_deadline_names_the_earliest_pending_expiry() {
        let b = broker(QueueConfig::new().with_lock_duration(Duration::from_secs(10)));
        let start = b.clock().now();
        assert_eq!(b.next_deadline(), None, "nothing pending");
        let mut later = msg("later", None, None);
        later.scheduled_at = Some(b.clock().wall(start) + Duration::from_secs(30));
        b.send("q", vec![later, msg("now", None, None)]).unwrap();
        assert_eq!(b.next_deadline(), Some(start + Duration::from_secs(30)));
        let d = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        assert_eq!(b.next_deadline(), Some(start + Duration::from_secs(10)));
        // A renewal moves the lock past the bound: the deadline may come early (a sweep
        // that finds nothing due), never late.
        tokio::time::advance(Duration::from_secs(5)).await;
        b.renew_lock(d.lock_token).unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.next_deadline(), Some(start + Duration::from_secs(15)));
        b.settle(d.lock_token, Settlement::Complete).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.next_deadline(), Some(start + Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(b.next_deadline(), None);
        assert!(b.receive(&main("q"), None, 1, true).unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn dead_lettering_from_the_dead_letter_queue_is_refused_and_keeps_the_lock() {
        let b = broker(QueueConfig::new());
        b.send("q", vec![msg("a", None, None)]).unwrap();
        let d = b.receive(&main("q"), None, 1, true).unwrap().unwrap();
        let dead_letter = || Settlement::DeadLetter {
            reason: Some("r".into()),
            description: None,
            properties: vec![],
        };
        b.settle(d.lock_token, dead_letter()).unwrap();
        let dead = b.receive(&dlq("q"), None, 1, true).unwrap().unwrap();
        assert!(matches!(
            b.settle(dead.lock_token, dead_letter()),
            Err(EmulatorError::BadRequest { .. })
        ));
        assert_eq!(b.count(&dlq("q")), 1, "the refused message stays");
        b.settle(dead.lock_token, Settlement::Complete).unwrap();
        assert_eq!(b.count(&dlq("q")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn session_receives_see_only_their_session_among_many() {
        let b = broker(QueueConfig::new().with_requires_session(true));
        let batch = (0..300)
            .map(|n| {
                msg(
                    &format!("{}:{n}", n % 3),
                    None,
                    Some(&format!("s{}", n % 3)),
                )
            })
            .collect();
        b.send("q", batch).unwrap();
        b.accept_session("q", Some("s1"), 7).unwrap();
        for n in (1..300).step_by(3) {
            let d = b.receive(&main("q"), Some("s1"), 7, true).unwrap().unwrap();
            assert_eq!(body(&d), format!("1:{n}"));
            b.settle(d.lock_token, Settlement::Complete).unwrap();
        }
        assert!(
            b.receive(&main("q"), Some("s1"), 7, true)
                .unwrap()
                .is_none()
        );
        // Held but unsettled messages come back when the session is released.
        b.accept_session("q", Some("s2"), 8).unwrap();
        let held = b.receive(&main("q"), Some("s2"), 8, true).unwrap().unwrap();
        b.release_owner(8);
        b.accept_session("q", Some("s2"), 9).unwrap();
        let again = b.receive(&main("q"), Some("s2"), 9, true).unwrap().unwrap();
        assert_eq!(again.sequence_number, held.sequence_number);
        assert_eq!(again.delivery_count, 1);
        assert_eq!(b.count(&main("q")), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn quota_and_session_rules_are_typed_errors() {
        let b = broker(QueueConfig::new().with_max_messages(1));
        b.send("q", vec![msg("a", None, None)]).unwrap();
        assert!(matches!(
            b.send("q", vec![msg("b", None, None)]),
            Err(EmulatorError::QuotaExceeded { .. })
        ));
        assert!(matches!(
            b.send("nope", vec![msg("b", None, None)]),
            Err(EmulatorError::EntityNotFound { .. })
        ));
        let s = broker(QueueConfig::new().with_requires_session(true));
        assert!(matches!(
            s.send("q", vec![msg("a", None, None)]),
            Err(EmulatorError::NotAllowed { .. })
        ));
        // A plain queue takes a message with a session id, which stays a property only.
        let p = broker(QueueConfig::new());
        p.send("q", vec![msg("a", None, Some("s"))]).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_are_exclusive_fifo_and_expire() {
        let b = broker(
            QueueConfig::new()
                .with_requires_session(true)
                .with_lock_duration(Duration::from_secs(10)),
        );
        b.send(
            "q",
            vec![
                msg("s1-a", None, Some("s1")),
                msg("s2-a", None, Some("s2")),
                msg("s1-b", None, Some("s1")),
            ],
        )
        .unwrap();
        // Next available: the session with the oldest message.
        let l1 = b.accept_session("q", None, 1).unwrap();
        assert_eq!(l1.session_id, "s1");
        assert!(matches!(
            b.accept_session("q", Some("s1"), 2),
            Err(EmulatorError::SessionCannotBeLocked { .. })
        ));
        assert_eq!(b.accept_session("q", None, 2).unwrap().session_id, "s2");
        assert_eq!(
            b.accept_session("q", None, 3),
            Err(EmulatorError::NoSessionAvailable)
        );
        // FIFO inside the session; a second receive waits for the first to settle? No:
        // Service Bus hands out the next message while the first is locked.
        let a = b.receive(&main("q"), Some("s1"), 1, true).unwrap().unwrap();
        let bb = b.receive(&main("q"), Some("s1"), 1, true).unwrap().unwrap();
        assert_eq!((body(&a), body(&bb)), ("s1-a".into(), "s1-b".into()));
        assert_eq!(
            b.receive(&main("q"), Some("s1"), 2, true).unwrap_err(),
            EmulatorError::SessionLockLost,
            "another owner read a locked session"
        );
        // State survives, renewal extends, expiry frees the session for others.
        b.set_session_state("q", "s1", Some(1), Some(b"step-2".to_vec()))
            .unwrap();
        // Only the holder may use the session's state and renew its lock.
        assert_eq!(
            b.session_state("q", "s1", Some(2)),
            Err(EmulatorError::SessionLockLost)
        );
        assert_eq!(
            b.set_session_state("q", "s1", Some(2), None),
            Err(EmulatorError::SessionLockLost)
        );
        assert_eq!(
            b.renew_session("q", "s1", Some(2)),
            Err(EmulatorError::SessionLockLost)
        );
        tokio::time::advance(Duration::from_secs(8)).await;
        b.renew_session("q", "s1", Some(1)).unwrap();
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(
            b.session_state("q", "s1", None).unwrap(),
            Some(b"step-2".to_vec())
        );
        b.settle(a.lock_token, Settlement::Complete).unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        // The session lock ran out: its unsettled message was released with it.
        assert_eq!(
            b.settle(bb.lock_token, Settlement::Complete),
            Err(EmulatorError::LockLost)
        );
        let again = b.accept_session("q", Some("s1"), 4).unwrap();
        assert_eq!(again.session_id, "s1");
        let m = b.receive(&main("q"), Some("s1"), 4, true).unwrap().unwrap();
        assert_eq!(body(&m), "s1-b");
        assert_eq!(m.delivery_count, 1);
        assert_eq!(
            b.session_state("q", "s1", None).unwrap(),
            Some(b"step-2".to_vec())
        );
        b.release_owner(4);
        assert_eq!(
            b.accept_session("q", Some("s1"), 5).unwrap().session_id,
            "s1"
        );
    }
}
