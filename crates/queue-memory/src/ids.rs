//! Cheap identifiers: message ids for messages sent without one, and receipt tokens.
//!
//! `MessageId::random` builds each id from two freshly seeded hashers and the wall clock,
//! which showed up as a tenth of a send→receive→complete round trip. Here the per-process
//! randomness is drawn once; each id is a bijective mix of a counter with it, so ids are
//! unique within the process (a bijection of the counter, before the six UUID version and
//! variant bits are set) and unpredictable across processes. As with
//! `MessageId::random`, the goal is uniqueness, not secrecy.

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use queue_core::MessageId;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The splitmix64 finaliser: a bijection on `u64` that spreads every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn seed() -> (u64, u64) {
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    *SEED.get_or_init(|| {
        let state = RandomState::new();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        (state.hash_one((nanos, 1u8)), state.hash_one((nanos, 2u8)))
    })
}

/// A fresh message id: a UUID v4 in its hyphenated form, unique within the process.
pub(crate) fn fresh_message_id() -> MessageId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (s0, s1) = seed();
    let lo = mix(COUNTER.fetch_add(1, Ordering::Relaxed) ^ s1);
    let hi = mix(lo ^ s0);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(b >> 4)];
        text[at + 1] = HEX[usize::from(b & 0x0f)];
        at += 2;
    }
    let text = std::str::from_utf8(&text).expect("hex digits and hyphens are ASCII");
    MessageId::new(text).expect("a hyphenated UUID is a valid message id")
}

/// Writes `value` in decimal at the start of `out`; returns the number of bytes written.
/// `out` must have room for 20 digits.
pub(crate) fn write_decimal(out: &mut [u8], mut value: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    let len = digits.len() - start;
    out[..len].copy_from_slice(&digits[start..]);
    len
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn fresh_ids_are_distinct_version_4_uuids() {
        let ids: HashSet<_> = (0..10_000).map(|_| fresh_message_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            let s = id.as_str().as_bytes();
            assert_eq!(s.len(), 36);
            assert_eq!((s[8], s[13], s[18], s[23]), (b'-', b'-', b'-', b'-'));
            assert_eq!(s[14], b'4', "{id:?}");
            assert!(matches!(s[19], b'8' | b'9' | b'a' | b'b'), "{id:?}");
        }
    }

    #[test]
    fn writes_decimals_like_display() {
        let mut buf = [0u8; 20];
        for v in [0, 7, 10, 99, 12_345, u64::MAX] {
            let n = write_decimal(&mut buf, v);
            assert_eq!(&buf[..n], v.to_string().as_bytes());
        }
    }
}
