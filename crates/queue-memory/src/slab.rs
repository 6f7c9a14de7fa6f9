//! Message storage by slot: O(1) insert, lookup and removal without hashing, and no
//! rehashing of the whole store as a deep queue turns over.

use std::ops::Index;

/// Names a stored entry: its sequence number (the order of the queue) and its slot.
///
/// Keys order by sequence number. A slot is reused after its entry is removed; the
/// sequence number, unique per queue, tells the new entry from the old one, so a stale
/// key (an old receipt, a stale deadline) finds nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub(crate) seq: i64,
    pub(crate) slot: u32,
}

/// Something stored in a [`Slab`], which knows its own sequence number.
pub(crate) trait Sequenced {
    fn seq(&self) -> i64;
}

/// Slots per slab: receipt tokens keep the top bit of the slot for the store.
const MAX_SLOTS: u32 = 1 << 31;

/// Entries in a vector of slots with a free list.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Sequenced> Slab<T> {
    /// Stores `value` in a free slot; returns its key.
    #[inline]
    pub(crate) fn insert(&mut self, value: T) -> Key {
        let seq = value.seq();
        self.len += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                u32::try_from(self.slots.len() - 1)
                    .ok()
                    .filter(|slot| *slot < MAX_SLOTS)
                    .expect("fewer than 2^31 stored messages")
            }
        };
        Key { seq, slot }
    }

    pub(crate) fn get(&self, key: Key) -> Option<&T> {
        self.slots
            .get(key.slot as usize)?
            .as_ref()
            .filter(|v| v.seq() == key.seq)
    }

    /// Whatever is stored in `slot` (callers check it is what they look for).
    pub(crate) fn at(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        self.slots
            .get_mut(key.slot as usize)?
            .as_mut()
            .filter(|v| v.seq() == key.seq)
    }

    pub(crate) fn contains_key(&self, key: Key) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn remove(&mut self, key: Key) -> Option<T> {
        let slot = self.slots.get_mut(key.slot as usize)?;
        if slot.as_ref().is_none_or(|v| v.seq() != key.seq) {
            return None;
        }
        let value = slot.take();
        self.freed(key.slot);
        value
    }

    /// Drops the entry of `key` where it lies; returns whether there was one.
    pub(crate) fn delete(&mut self, key: Key) -> bool {
        let Some(slot) = self.slots.get_mut(key.slot as usize) else {
            return false;
        };
        if slot.as_ref().is_none_or(|v| v.seq() != key.seq) {
            return false;
        }
        *slot = None;
        self.freed(key.slot);
        true
    }

    fn freed(&mut self, slot: u32) {
        self.len -= 1;
        if self.len == 0 {
            // Start over: keeps the free list from outgrowing a drained queue's peak.
            self.slots.clear();
            self.free.clear();
        } else {
            self.free.push(slot);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl<T: Sequenced> Index<Key> for Slab<T> {
    type Output = T;

    fn index(&self, key: Key) -> &T {
        self.get(key).expect("a live key names an entry")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Sequenced for (i64, &'static str) {
        fn seq(&self) -> i64 {
            self.0
        }
    }

    #[test]
    fn reused_slots_do_not_answer_stale_keys() {
        let mut slab = Slab::default();
        let a = slab.insert((1, "a"));
        let b = slab.insert((2, "b"));
        assert_eq!(slab.remove(a), Some((1, "a")));
        assert_eq!(slab.remove(a), None);
        let c = slab.insert((3, "c"));
        assert_eq!(c.slot, a.slot, "the free slot is reused");
        assert!(slab.get(a).is_none(), "the old key names nothing");
        assert_eq!(slab[c], (3, "c"));
        assert_eq!(slab.len(), 2);
        assert!(slab.delete(b));
        assert!(!slab.delete(b));
        slab.remove(c);
        assert_eq!(slab.len(), 0);
        assert!(slab.get(c).is_none());
    }
}
