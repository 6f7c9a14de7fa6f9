//! Replay protection: remembers which broker message first carried each signed message.
//!
//! Every copy of a signed message carries the same nonce (a digest of its signature).
//! The store maps nonce → broker identity (the broker's message id or sequence number) of
//! the first broker message seen with it. A later delivery of the *same* broker message (a
//! redelivery after a lost lock or a crash) passes; a *different* broker message with the
//! same nonce is a replay, whichever of the two was received first.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use async_trait::async_trait;
use queue_core::BoxError;

/// What the store knew about a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayVerdict {
    /// Not seen within its window: now recorded with this broker identity.
    First,
    /// Seen before with the same broker identity: a redelivery of the same broker message.
    Redelivery,
    /// Seen before with another broker identity: a copy sent again.
    Replay,
}

/// Where nonces are remembered. Use a shared store ([`crate::RedisReplayStore`], with the
/// `redis` feature) when several consumer processes read the same queue; the in-memory
/// store only sees its own process's deliveries.
#[async_trait]
pub trait ReplayStore: fmt::Debug + Send + Sync + 'static {
    /// Records `nonce → identity` until `expires_at` unless `nonce` is already recorded
    /// with an expiry later than `now`, and says which case it was.
    ///
    /// Must be atomic: of concurrent calls with the same nonce and different identities,
    /// at most one gets [`ReplayVerdict::First`] and the others see its identity.
    async fn check_and_record(
        &self,
        nonce: &str,
        identity: &str,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<ReplayVerdict, BoxError>;
}

/// Default capacity of [`InMemoryReplayStore`].
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

#[derive(Default)]
struct State {
    /// nonce -> broker identity
    entries: HashMap<String, String>,
    /// (expiry, insertion sequence) -> nonce, to find the next entry to expire.
    by_expiry: BTreeMap<(SystemTime, u64), String>,
    seq: u64,
}

impl State {
    fn purge_expired(&mut self, now: SystemTime) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let nonce = entry.remove();
            self.entries.remove(&nonce);
        }
    }
}

/// A bounded in-process [`ReplayStore`].
///
/// Holds at most `capacity` nonces. Expired ones are dropped first; when the store is full
/// of live ones, the one closest to expiry is evicted (and counted in
/// [`evicted_live`](Self::evicted_live)), which shortens its replay window: size the
/// capacity above the number of messages a consumer sees within one replay window.
pub struct InMemoryReplayStore {
    state: Mutex<State>,
    capacity: usize,
    evicted_live: AtomicU64,
}

impl InMemoryReplayStore {
    /// A store for up to `capacity` nonces (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            capacity: capacity.max(1),
            evicted_live: AtomicU64::new(0),
        }
    }

    /// Nonces currently remembered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many unexpired nonces were evicted because the store was full.
    pub fn evicted_live(&self) -> u64 {
        self.evicted_live.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The synchronous core of [`ReplayStore::check_and_record`].
    pub fn check_and_record_sync(
        &self,
        nonce: &str,
        identity: &str,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> ReplayVerdict {
        let mut state = self.lock();
        state.purge_expired(now);
        if let Some(seen) = state.entries.get(nonce) {
            return if seen == identity {
                ReplayVerdict::Redelivery
            } else {
                ReplayVerdict::Replay
            };
        }
        if state.entries.len() >= self.capacity
            && let Some((_, evicted)) = state.by_expiry.pop_first()
        {
            state.entries.remove(&evicted);
            self.evicted_live.fetch_add(1, Ordering::Relaxed);
        }
        state.seq += 1;
        let seq = state.seq;
        state.by_expiry.insert((expires_at, seq), nonce.to_owned());
        state.entries.insert(nonce.to_owned(), identity.to_owned());
        ReplayVerdict::First
    }
}

impl Default for InMemoryReplayStore {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_CAPACITY)
    }
}

impl fmt::Debug for InMemoryReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryReplayStore")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("evicted_live", &self.evicted_live())
            .finish()
    }
}

#[async_trait]
impl ReplayStore for InMemoryReplayStore {
    async fn check_and_record(
        &self,
        nonce: &str,
        identity: &str,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<ReplayVerdict, BoxError> {
        Ok(self.check_and_record_sync(nonce, identity, now, expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn capacity_bounds_memory_and_evicts_soonest_expiry() {
        let store = InMemoryReplayStore::new(100);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        for i in 0..1_000u64 {
            let verdict = store.check_and_record_sync(
                &format!("n-{i}"),
                "id:1",
                t0,
                t0 + Duration::from_secs(3_600 + i),
            );
            assert_eq!(verdict, ReplayVerdict::First);
            assert!(store.len() <= 100);
        }
        assert_eq!(store.len(), 100);
        assert_eq!(store.evicted_live(), 900);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            store.check_and_record_sync("n-999", "id:2", t0, later),
            ReplayVerdict::Replay
        );
        assert_eq!(
            store.check_and_record_sync("n-0", "id:2", t0, later),
            ReplayVerdict::First
        );
    }

    #[test]
    fn expired_entries_are_purged_before_evicting_live_ones() {
        let store = InMemoryReplayStore::new(2);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        store.check_and_record_sync("a", "x", t0, t0 + Duration::from_secs(1));
        store.check_and_record_sync("b", "x", t0, t0 + Duration::from_secs(1));
        let later = t0 + Duration::from_secs(5);
        store.check_and_record_sync("c", "x", later, later + Duration::from_secs(60));
        assert_eq!(store.evicted_live(), 0);
        assert_eq!(store.len(), 1);
    }
}
