//! Replay protection: remembers message ids seen on first delivery.

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

/// Where seen message ids are remembered. Implement it over a shared store (Redis, a
/// database table) when several consumer processes read the same queue; the in-memory
/// store only sees its own process's deliveries.
#[async_trait]
pub trait ReplayStore: fmt::Debug + Send + Sync + 'static {
    /// Records `key` until `expires_at` and returns `true` if it was not already recorded
    /// with an expiry later than `now` (a first sighting), `false` for a replay.
    ///
    /// Must be atomic: of two concurrent calls with the same key, at most one returns `true`.
    async fn check_and_record(
        &self,
        key: &str,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<bool, BoxError>;
}

/// Default capacity of [`InMemoryReplayStore`].
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

#[derive(Default)]
struct State {
    /// key -> (expiry, insertion sequence)
    entries: HashMap<String, (SystemTime, u64)>,
    /// (expiry, sequence) -> key, to find the next entry to expire.
    by_expiry: BTreeMap<(SystemTime, u64), String>,
    seq: u64,
}

/// A bounded in-process [`ReplayStore`].
///
/// Holds at most `capacity` ids. Expired ids are dropped first; when the store is full of
/// live ids, the one closest to expiry is evicted (and counted in
/// [`evicted_live`](Self::evicted_live)), which shortens its replay window: size the
/// capacity above the number of messages a consumer sees within one replay window.
pub struct InMemoryReplayStore {
    state: Mutex<State>,
    capacity: usize,
    evicted_live: AtomicU64,
}

impl InMemoryReplayStore {
    /// A store for up to `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            capacity: capacity.max(1),
            evicted_live: AtomicU64::new(0),
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many unexpired ids were evicted because the store was full.
    pub fn evicted_live(&self) -> u64 {
        self.evicted_live.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The synchronous core of [`ReplayStore::check_and_record`].
    pub fn check_and_record_sync(
        &self,
        key: &str,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> bool {
        let mut state = self.lock();
        // Drop everything expired.
        while let Some(entry) = state.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let k = entry.remove();
            state.entries.remove(&k);
        }
        if state.entries.contains_key(key) {
            return false;
        }
        if state.entries.len() >= self.capacity
            && let Some((_, k)) = state.by_expiry.pop_first()
        {
            state.entries.remove(&k);
            self.evicted_live.fetch_add(1, Ordering::Relaxed);
        }
        state.seq += 1;
        let seq = state.seq;
        state.entries.insert(key.to_owned(), (expires_at, seq));
        state.by_expiry.insert((expires_at, seq), key.to_owned());
        true
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
        key: &str,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<bool, BoxError> {
        Ok(self.check_and_record_sync(key, now, expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_sighting_then_replay_then_expiry() {
        let store = InMemoryReplayStore::new(10);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let exp = t0 + Duration::from_secs(60);
        assert!(store.check_and_record_sync("a", t0, exp));
        assert!(!store.check_and_record_sync("a", t0 + Duration::from_secs(59), exp));
        // After expiry the id is forgotten.
        assert!(store.check_and_record_sync(
            "a",
            t0 + Duration::from_secs(61),
            exp + Duration::from_secs(61)
        ));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn capacity_bounds_memory_and_evicts_soonest_expiry() {
        let store = InMemoryReplayStore::new(100);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        for i in 0..1_000u64 {
            assert!(store.check_and_record_sync(
                &format!("id-{i}"),
                t0,
                t0 + Duration::from_secs(3_600 + i)
            ));
            assert!(store.len() <= 100);
        }
        assert_eq!(store.len(), 100);
        assert_eq!(store.evicted_live(), 900);
        // The most recent ids are still remembered, the oldest were evicted.
        assert!(!store.check_and_record_sync("id-999", t0, t0 + Duration::from_secs(1)));
        assert!(store.check_and_record_sync("id-0", t0, t0 + Duration::from_secs(10_000)));
    }

    #[test]
    fn expired_entries_are_purged_before_evicting_live_ones() {
        let store = InMemoryReplayStore::new(2);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        store.check_and_record_sync("a", t0, t0 + Duration::from_secs(1));
        store.check_and_record_sync("b", t0, t0 + Duration::from_secs(1));
        let later = t0 + Duration::from_secs(5);
        store.check_and_record_sync("c", later, later + Duration::from_secs(60));
        assert_eq!(store.evicted_live(), 0);
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn concurrent_first_sightings_only_one_wins() {
        let store = std::sync::Arc::new(InMemoryReplayStore::new(1_000));
        let now = SystemTime::now();
        let mut handles = Vec::new();
        for _ in 0..16 {
            let s = store.clone();
            handles.push(std::thread::spawn(move || {
                s.check_and_record_sync("same", now, now + Duration::from_secs(60))
            }));
        }
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(wins, 1);
        assert!(!store.check_and_record("same", now, now).await.unwrap());
    }
}
