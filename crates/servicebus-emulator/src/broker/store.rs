//! The broker's state: messages per sub-queue with a per-session index, locks, sessions,
//! and the expiry sweep.
//!
//! Every broker operation first applies what fell due (lock expiry, TTL, session lock
//! expiry). Scanning every message for that on every operation made each call cost O(n) in
//! the backlog, so [`State::due`] keeps a lower bound of the earliest instant anything can
//! fall due: the sweep walks the messages only once that instant has passed, and then
//! computes the bound afresh. Every change that sets a new deadline lowers the bound
//! ([`State::note_due`]); renewals only push deadlines later, which a lower bound allows.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use tokio::time::Instant;
use uuid::Uuid;

use super::{AmqpMessage, EntityRef, OwnerId, SubQueue};
use crate::config::QueueConfig;

/// Where a lock points to.
#[derive(Clone, Debug)]
pub(super) struct LockRef {
    pub(super) entity: EntityRef,
    pub(super) seq: i64,
}

#[derive(Clone, Debug)]
pub(super) struct Lock {
    pub(super) token: Uuid,
    pub(super) until: Instant,
}

#[derive(Clone)]
pub(super) struct Entry {
    pub(super) message: Arc<AmqpMessage>,
    pub(super) seq: i64,
    pub(super) enqueued_at: Instant,
    pub(super) visible_at: Instant,
    pub(super) expires_at: Option<Instant>,
    pub(super) delivery_count: u32,
    pub(super) lock: Option<Lock>,
    pub(super) session_id: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct SessionInfo {
    pub(super) state: Option<Vec<u8>>,
    pub(super) lock: Option<(OwnerId, Instant)>,
}

/// The messages of one sub-queue, in sequence order, with the sequence numbers of each
/// session's messages (so a session receive or release touches only its own messages).
#[derive(Default)]
pub(super) struct Store {
    entries: BTreeMap<i64, Entry>,
    by_session: HashMap<String, BTreeSet<i64>>,
}

impl Store {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn get(&self, seq: i64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    pub(super) fn get_mut(&mut self, seq: i64) -> Option<&mut Entry> {
        self.entries.get_mut(&seq)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.entries.values_mut()
    }

    /// Entries from `from` on, in sequence order.
    pub(super) fn range_from(&self, from: i64) -> impl Iterator<Item = &Entry> {
        self.entries.range(from..).map(|(_, e)| e)
    }

    /// The sequence numbers of `session`'s messages, in order.
    pub(super) fn session_seqs(&self, session: &str) -> Vec<i64> {
        self.by_session
            .get(session)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The first visible, unlocked entry (of `session` when given).
    pub(super) fn first_available(&self, session: Option<&str>, now: Instant) -> Option<i64> {
        let free = |e: &&Entry| e.visible_at <= now && e.lock.is_none();
        match session {
            Some(s) => self
                .by_session
                .get(s)?
                .iter()
                .filter_map(|seq| self.entries.get(seq))
                .find(free)
                .map(|e| e.seq),
            None => self.entries.values().find(free).map(|e| e.seq),
        }
    }

    pub(super) fn insert(&mut self, e: Entry) {
        if let Some(s) = &e.session_id {
            self.by_session.entry(s.clone()).or_default().insert(e.seq);
        }
        self.entries.insert(e.seq, e);
    }

    pub(super) fn remove(&mut self, seq: i64) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        if let Some(s) = &e.session_id
            && let Some(set) = self.by_session.get_mut(s)
        {
            set.remove(&seq);
            if set.is_empty() {
                self.by_session.remove(s);
            }
        }
        Some(e)
    }

    /// Removes the entries `drop` picks; returns whether any was removed.
    fn remove_where(&mut self, drop: impl Fn(&Entry) -> bool) -> bool {
        let gone: Vec<i64> = self
            .entries
            .values()
            .filter(|e| drop(e))
            .map(|e| e.seq)
            .collect();
        for seq in &gone {
            self.remove(*seq);
        }
        !gone.is_empty()
    }
}

pub(super) struct QueueState {
    pub(super) cfg: QueueConfig,
    pub(super) next_seq: i64,
    pub(super) main: Store,
    pub(super) dlq: Store,
    pub(super) dedup: HashMap<String, Instant>,
    pub(super) sessions: BTreeMap<String, SessionInfo>,
}

impl QueueState {
    pub(super) fn new(cfg: QueueConfig) -> Self {
        Self {
            cfg,
            next_seq: 1,
            main: Store::default(),
            dlq: Store::default(),
            dedup: HashMap::new(),
            sessions: BTreeMap::new(),
        }
    }

    pub(super) fn store_ref(&self, sub: SubQueue) -> &Store {
        match sub {
            SubQueue::Main => &self.main,
            SubQueue::DeadLetter => &self.dlq,
        }
    }

    pub(super) fn store(&mut self, sub: SubQueue) -> &mut Store {
        match sub {
            SubQueue::Main => &mut self.main,
            SubQueue::DeadLetter => &mut self.dlq,
        }
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) queues: BTreeMap<String, QueueState>,
    pub(super) locks: HashMap<Uuid, LockRef>,
    /// No lock, TTL, schedule or session lock falls due before this instant (`None`:
    /// nothing is pending). A lower bound: see the module docs.
    pub(super) due: Option<Instant>,
}

impl State {
    /// Records that something falls due at `at`.
    pub(super) fn note_due(&mut self, at: Instant) {
        note_due(&mut self.due, at);
    }
}

/// Lowers the bound `due` to `at`.
pub(super) fn note_due(due: &mut Option<Instant>, at: Instant) {
    *due = Some(due.map_or(at, |d| d.min(at)));
}

/// Whether the sweep manages this entry's message lock: a session message on the main
/// queue is locked for as long as its session is, so its own lock never expires alone.
fn lock_expires_alone(e: &Entry, sub: SubQueue) -> bool {
    e.session_id.is_none() || sub == SubQueue::DeadLetter
}

/// Applies lock expiry, max-delivery dead-lettering and TTL expiry, when anything may have
/// fallen due. Returns whether anything changed.
pub(super) fn sweep(st: &mut State, now: Instant) -> bool {
    let mut changed = false;
    // A session released by the first pass can leave unlocked messages whose TTL already
    // ran out; the second pass drops them.
    for _ in 0..2 {
        if st.due.is_none_or(|d| d > now) {
            break;
        }
        changed |= sweep_all(st, now);
        st.due = earliest_due(st, now);
    }
    changed
}

fn sweep_all(st: &mut State, now: Instant) -> bool {
    let mut changed = false;
    let State { queues, locks, due } = st;
    for q in queues.values_mut() {
        let max = q.cfg.max_delivery_count;
        // Expired message locks: the message comes back with delivery count + 1.
        let mut to_dlq = Vec::new();
        for sub in [SubQueue::Main, SubQueue::DeadLetter] {
            for e in q.store(sub).values_mut() {
                if !lock_expires_alone(e, sub) {
                    continue;
                }
                if let Some(l) = e.lock.as_ref().filter(|l| l.until <= now) {
                    locks.remove(&l.token);
                    e.lock = None;
                    e.delivery_count += 1;
                    changed = true;
                    if sub == SubQueue::Main && e.delivery_count >= max {
                        to_dlq.push(e.seq);
                    }
                }
            }
        }
        dead_letter_all_exhausted(q, to_dlq, max);
        // TTL: unlocked expired messages are dropped.
        changed |= q
            .main
            .remove_where(|e| e.lock.is_none() && e.expires_at.is_some_and(|x| x <= now));
        // Session locks that ran out release the session and its locked messages.
        let expired: Vec<String> = q
            .sessions
            .iter()
            .filter(|(_, i)| i.lock.is_some_and(|(_, u)| u <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for sid in expired {
            release_session(q, locks, due, &sid);
            changed = true;
        }
    }
    changed
}

/// The earliest instant at which anything can fall due, after a sweep at `now`.
fn earliest_due(st: &State, now: Instant) -> Option<Instant> {
    let mut due = None;
    for q in st.queues.values() {
        for (sub, store) in [(SubQueue::Main, &q.main), (SubQueue::DeadLetter, &q.dlq)] {
            for e in store.values() {
                if let Some(l) = e.lock.as_ref().filter(|_| lock_expires_alone(e, sub)) {
                    note_due(&mut due, l.until);
                }
                // An unlocked message past its TTL is due at once (the next pass drops
                // it); a locked one only counts once its lock is gone.
                if let Some(x) = e.expires_at.filter(|x| e.lock.is_none() || *x > now) {
                    note_due(&mut due, x);
                }
                if e.visible_at > now {
                    note_due(&mut due, e.visible_at);
                }
            }
        }
        for i in q.sessions.values() {
            if let Some((_, u)) = i.lock {
                note_due(&mut due, u);
            }
        }
    }
    due
}

pub(super) fn merge_props(
    e: &mut Entry,
    props: Vec<(String, fe2o3_amqp_types::primitives::SimpleValue)>,
) {
    if props.is_empty() {
        return;
    }
    let m = Arc::make_mut(&mut e.message);
    let ap = m
        .application_properties
        .get_or_insert_with(Default::default);
    for (k, v) in props {
        ap.0.insert(k, v);
    }
}

pub(super) fn dead_letter_entry(
    q: &mut QueueState,
    mut e: Entry,
    reason: Option<String>,
    description: Option<String>,
) {
    use fe2o3_amqp_types::primitives::SimpleValue;
    let mut props = Vec::new();
    if let Some(r) = reason {
        props.push(("DeadLetterReason".to_owned(), SimpleValue::String(r)));
    }
    if let Some(d) = description {
        props.push((
            "DeadLetterErrorDescription".to_owned(),
            SimpleValue::String(d),
        ));
    }
    merge_props(&mut e, props);
    e.lock = None;
    // Messages in the dead-letter queue do not expire.
    e.expires_at = None;
    q.dlq.insert(e);
}

/// Dead-letters a message whose deliveries reached the queue's max delivery count, with
/// the reason Service Bus uses.
pub(super) fn dead_letter_exhausted(q: &mut QueueState, e: Entry, max: u32) {
    dead_letter_entry(
        q,
        e,
        Some("MaxDeliveryCountExceeded".into()),
        Some(format!(
            "Message could not be consumed after {max} delivery attempts."
        )),
    );
}

/// [`dead_letter_exhausted`] for each of `seqs` still in the main queue.
fn dead_letter_all_exhausted(q: &mut QueueState, seqs: Vec<i64>, max: u32) {
    for seq in seqs {
        if let Some(e) = q.main.remove(seq) {
            dead_letter_exhausted(q, e, max);
        }
    }
}

/// Drops a session's lock and the locks of its unsettled messages, which come back with
/// their delivery count raised (and go to the dead-letter queue when it is exhausted).
pub(super) fn release_session(
    q: &mut QueueState,
    locks: &mut HashMap<Uuid, LockRef>,
    due: &mut Option<Instant>,
    sid: &str,
) {
    if let Some(info) = q.sessions.get_mut(sid) {
        info.lock = None;
    }
    let max = q.cfg.max_delivery_count;
    let mut to_dlq = Vec::new();
    for seq in q.main.session_seqs(sid) {
        let Some(e) = q.main.get_mut(seq) else {
            continue;
        };
        if let Some(l) = e.lock.take() {
            locks.remove(&l.token);
            e.delivery_count += 1;
            if e.delivery_count >= max {
                to_dlq.push(e.seq);
            } else if let Some(x) = e.expires_at {
                note_due(due, x);
            }
        }
    }
    dead_letter_all_exhausted(q, to_dlq, max);
}
