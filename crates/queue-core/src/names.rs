//! Validated identifiers: queue names, session ids and message ids.
//!
//! Each newtype accepts only values that every supported provider accepts, so a value
//! that validates here never fails later because one cloud is stricter than another.

use std::{
    cmp::Ordering,
    fmt,
    hash::{Hash, Hasher},
    str::FromStr,
    sync::Arc,
};

use arrayvec::ArrayString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{NameKind, QueueError};

/// Longest queue name, counting a `.fifo` suffix (the SQS limit, stricter than Service Bus).
pub const MAX_QUEUE_NAME_LEN: usize = 80;
/// Longest session id (SQS `MessageGroupId` and Service Bus `SessionId` both allow 128).
pub const MAX_SESSION_ID_LEN: usize = 128;
/// Longest message id (SQS `MessageDeduplicationId` and Service Bus `MessageId` allow 128).
pub const MAX_MESSAGE_ID_LEN: usize = 128;

const FIFO_SUFFIX: &str = ".fifo";

fn invalid(kind: NameKind, reason: impl Into<String>) -> QueueError {
    QueueError::InvalidName {
        kind,
        reason: reason.into(),
    }
}

/// A queue name valid on every provider.
///
/// Rules (the intersection of SQS and Service Bus): 1 to 80 characters including an
/// optional `.fifo` suffix; otherwise only ASCII letters, digits, `-` and `_`; the name
/// starts and ends (before the suffix) with a letter or digit.
///
/// ```
/// use queue_core::QueueName;
/// let q: QueueName = "pull-requests.fifo".parse()?;
/// assert!(q.is_fifo());
/// assert!("bad name".parse::<QueueName>().is_err());
/// # Ok::<(), queue_core::QueueError>(())
/// ```
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct QueueName(Arc<str>);

impl Hash for QueueName {
    /// The `str`'s hash.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for QueueName {
    /// The `str`'s equality; two clones of one name compare by pointer first, so looking
    /// a queue up by the name it was created with compares no text.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl QueueName {
    /// Validates `name` and wraps it.
    pub fn new(name: impl AsRef<str>) -> Result<Self, QueueError> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(invalid(NameKind::Queue, "must not be empty"));
        }
        if name.len() > MAX_QUEUE_NAME_LEN {
            return Err(invalid(
                NameKind::Queue,
                format!(
                    "is {} characters long, the limit is {MAX_QUEUE_NAME_LEN}",
                    name.len()
                ),
            ));
        }
        let stem = name.strip_suffix(FIFO_SUFFIX).unwrap_or(name);
        if stem.is_empty() {
            return Err(invalid(NameKind::Queue, "needs a name before `.fifo`"));
        }
        if let Some(bad) = stem
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(invalid(
                NameKind::Queue,
                format!(
                    "contains {bad:?}; only ASCII letters, digits, `-`, `_` and a `.fifo` suffix are allowed"
                ),
            ));
        }
        let first = stem.as_bytes()[0];
        let last = stem.as_bytes()[stem.len() - 1];
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return Err(invalid(
                NameKind::Queue,
                "must start and end with a letter or digit",
            ));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name carries the `.fifo` suffix (an SQS FIFO queue).
    pub fn is_fifo(&self) -> bool {
        self.0.ends_with(FIFO_SUFFIX)
    }
}

/// Text kept inline when it fits in `N` bytes, else shared on the heap.
///
/// Ids and receipt tokens are created, cloned and dropped for every message; inline, a
/// UUID or a short token costs no allocation and no atomic reference count. Equality,
/// order and hash are those of the `str` (inline or not), so the representation never
/// shows. The inline variant is an [`ArrayString`], which knows its bytes are UTF-8:
/// [`as_str`](Self::as_str) costs no check (this crate forbids `unsafe`).
#[derive(Clone)]
pub(crate) enum Text<const N: usize> {
    Inline(ArrayString<N>),
    Shared(Arc<str>),
}

impl<const N: usize> Text<N> {
    /// A copy of `s`: inline when it fits.
    pub(crate) fn new(s: &str) -> Self {
        match ArrayString::from(s) {
            Ok(inline) => Self::Inline(inline),
            Err(_) => Self::Shared(Arc::from(s)),
        }
    }

    /// ASCII `text` of a length known to fit, kept inline.
    pub(crate) fn ascii<const M: usize>(text: [u8; M]) -> Self {
        const { assert!(M <= N) };
        let text = std::str::from_utf8(&text).expect("ASCII is UTF-8");
        Self::Inline(ArrayString::from(text).expect("fits: checked at compile time"))
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.as_str().as_bytes()
    }

    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Inline(s) => s.as_str(),
            Self::Shared(s) => s,
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.as_str().len()
    }
}

impl<const N: usize> PartialEq for Text<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl<const N: usize> Eq for Text<N> {}

impl<const N: usize> PartialOrd for Text<N> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for Text<N> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl<const N: usize> Hash for Text<N> {
    /// Exactly the `str`'s hash.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// Longest session id kept inline (32 bytes in all).
const INLINE_SESSION_ID: usize = 24;
/// Longest message id kept inline: a hyphenated UUID (36) fits (48 bytes in all).
const INLINE_MESSAGE_ID: usize = 40;

/// An ordering key: all messages with the same session id are delivered in send order.
///
/// Maps to a Service Bus `SessionId` and an SQS FIFO `MessageGroupId`. 1 to 128
/// characters of printable ASCII other than space (SQS rejects spaces in group ids).
/// Ids up to 24 characters are stored inline (no allocation; a clone copies 32 bytes).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Text<INLINE_SESSION_ID>);

/// A message id, also the de-duplication id (SQS `MessageDeduplicationId`).
///
/// 1 to 128 characters of printable ASCII other than space. A GitHub delivery id
/// (`X-GitHub-Delivery`, a UUID) is a good message id. Ids up to 40 characters (a UUID
/// among them) are stored inline (no allocation; a clone copies 48 bytes).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Text<INLINE_MESSAGE_ID>);

fn validate_token(kind: NameKind, value: &str, max: usize) -> Result<(), QueueError> {
    if value.is_empty() {
        return Err(invalid(kind, "must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(
            kind,
            format!("is {} characters long, the limit is {max}", value.len()),
        ));
    }
    if let Some(pos) = value.bytes().position(|b| !b.is_ascii_graphic()) {
        return Err(invalid(
            kind,
            format!("has a character that is not printable ASCII (or is a space) at byte {pos}"),
        ));
    }
    Ok(())
}

impl SessionId {
    /// Validates `id` and wraps it.
    pub fn new(id: impl AsRef<str>) -> Result<Self, QueueError> {
        let id = id.as_ref();
        validate_token(NameKind::Session, id, MAX_SESSION_ID_LEN)?;
        Ok(Self(Text::new(id)))
    }

    /// The id as a string slice.
    #[inline]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The id's bytes (printable ASCII).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Its length in bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl MessageId {
    /// Validates `id` and wraps it.
    pub fn new(id: impl AsRef<str>) -> Result<Self, QueueError> {
        let id = id.as_ref();
        validate_token(NameKind::Message, id, MAX_MESSAGE_ID_LEN)?;
        Ok(Self(Text::new(id)))
    }

    /// A fresh random id (a UUID v4 in its hyphenated form).
    pub fn random() -> Self {
        Self(Text::ascii(random_uuid()))
    }

    /// The id as a string slice.
    #[inline]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The id's bytes (printable ASCII).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Its length in bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// A random UUID v4 (hyphenated, as ASCII bytes), so `queue-core` needs no RNG
/// dependency. Uniqueness, not secrecy, is the goal here: the standard library's randomly
/// seeded hasher is read once per process, and each id is a bijective mix of a counter
/// with that seed (unique within the process before the six version and variant bits are
/// set, unpredictable across processes). This is on every send path, so it avoids
/// per-call hasher seeding, clock reads and formatting, and each thread takes counter
/// values in blocks (threads sending at once do not contend on one atomic per id).
fn random_uuid() -> [u8; 36] {
    use std::cell::Cell;
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    use std::sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    };
    const BLOCK: u64 = 1 << 12;
    thread_local! {
        /// This thread's counter values: `next..end`.
        static BLOCK_LEFT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    /// The splitmix64 finaliser: a bijection on `u64` that spreads every input bit.
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (s0, s1) = *SEED.get_or_init(|| {
        let state = RandomState::new();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        (state.hash_one((nanos, 1u8)), state.hash_one((nanos, 2u8)))
    });
    let count = BLOCK_LEFT.with(|left| {
        let (mut next, mut end) = left.get();
        if next == end {
            next = COUNTER.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        left.set((next + 1, end));
        next
    });
    let lo = mix(count ^ s1);
    let hi = mix(lo ^ s0);
    // Version 4 in the 13th hex digit, variant 10xx in the 17th.
    let hi = hex16((hi & !0xf000) | 0x4000);
    let lo = hex16((lo & !(0xc << 60)) | (0x8 << 60));
    // The 32 digits between the hyphens of `8-4-4-4-12`.
    let mut text = *b"00000000-0000-0000-0000-000000000000";
    text[..8].copy_from_slice(&hi[..8]);
    text[9..13].copy_from_slice(&hi[8..12]);
    text[14..18].copy_from_slice(&hi[12..]);
    text[19..23].copy_from_slice(&lo[..4]);
    text[24..].copy_from_slice(&lo[4..]);
    text
}

/// `x` as 16 lowercase hexadecimal digits, most significant first, computed eight digits
/// at a time in a `u64` (each nibble spread into its own byte, then shifted into ASCII).
fn hex16(x: u64) -> [u8; 16] {
    fn spread(v: u32) -> u64 {
        let v = u64::from(v);
        let v = (v | (v << 16)) & 0x0000_ffff_0000_ffff;
        let v = (v | (v << 8)) & 0x00ff_00ff_00ff_00ff;
        (v | (v << 4)) & 0x0f0f_0f0f_0f0f_0f0f
    }
    fn ascii(nibbles: u64) -> [u8; 8] {
        // '0' + n, plus 39 more ('a' - '0' - 10) where n >= 10.
        let letters = ((nibbles + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        (nibbles + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
    }
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&ascii(spread((x >> 32) as u32)));
    out[8..].copy_from_slice(&ascii(spread(x as u32)));
    out
}

macro_rules! string_newtype_impls {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.as_str())
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl FromStr for $ty {
            type Err = QueueError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = QueueError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = QueueError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype_impls!(QueueName);
string_newtype_impls!(SessionId);
string_newtype_impls!(MessageId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_intersection_of_both_clouds() {
        for ok in [
            "a",
            "prs",
            "pull-requests",
            "a_b-9",
            "events.fifo",
            &"x".repeat(80),
        ] {
            assert!(QueueName::new(ok).is_ok(), "{ok} should be valid");
        }
        let long_fifo = format!("{}.fifo", "x".repeat(75));
        assert!(QueueName::new(&long_fifo).is_ok());
        assert!(QueueName::new(format!("{}.fifo", "x".repeat(76))).is_err());
        for bad in [
            "",
            ".fifo",
            "-a",
            "a-",
            "_a",
            "a b",
            "a.b",
            "a/b",
            "ü",
            "a.fifo.fifo",
            &"x".repeat(81),
        ] {
            let err = QueueName::new(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    QueueError::InvalidName {
                        kind: NameKind::Queue,
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
        assert!(QueueName::new("q.fifo").unwrap().is_fifo());
        assert!(!QueueName::new("q").unwrap().is_fifo());
    }

    #[test]
    fn session_and_message_ids_are_printable_ascii_up_to_128() {
        assert!(SessionId::new("octo/repo#42").is_ok());
        assert!(SessionId::new("x".repeat(128)).is_ok());
        assert!(SessionId::new("x".repeat(129)).is_err());
        assert!(SessionId::new("has space").is_err());
        assert!(SessionId::new("tab\t").is_err());
        assert!(SessionId::new("é").is_err());
        assert!(SessionId::new("").is_err());
        assert!(MessageId::new("72d3162e-cc78-11e3-81ab-4c9367dc0958").is_ok());
        assert!(MessageId::new("\n").is_err());
    }

    #[test]
    fn hex16_matches_fmt() {
        for x in [
            0u64,
            9,
            10,
            0xabcdef,
            0x0123_4567_89ab_cdef,
            u64::MAX,
            1 << 63,
        ] {
            assert_eq!(hex16(x), format!("{x:016x}").as_bytes(), "{x:x}");
        }
    }

    #[test]
    fn random_message_ids_are_distinct_uuids() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| MessageId::random()).collect();
        assert_eq!(ids.len(), 1000);
        // Across threads too (each takes counter values in blocks), past a block's end.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..5000).map(|_| MessageId::random()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(all.insert(id));
            }
        }
        assert_eq!(all.len(), 20_000);
        let one = MessageId::random();
        assert_eq!(one.as_str().len(), 36);
        assert_eq!(one.as_str().as_bytes()[14], b'4');
        assert!(b"89ab".contains(&one.as_str().as_bytes()[19]), "{one}");
        let hyphens: Vec<_> = one.as_str().match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(hyphens, [8, 13, 18, 23]);
        assert!(
            one.as_str()
                .bytes()
                .all(|c| c == b'-' || c.is_ascii_hexdigit())
        );
    }

    #[test]
    fn inline_and_shared_ids_behave_like_their_str() {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        let texts = [
            "a".to_owned(),
            "octo/repo#42".to_owned(),
            "x".repeat(24),
            "x".repeat(25),
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned(),
            "y".repeat(40),
            "y".repeat(41),
            "z".repeat(128),
        ];
        for a in &texts {
            let (sa, ma) = (SessionId::new(a).unwrap(), MessageId::new(a).unwrap());
            assert_eq!(sa.as_str(), a);
            assert_eq!(ma.as_str(), a);
            assert_eq!(sa.len(), a.len());
            assert_eq!(ma.len(), a.len());
            assert_eq!(ma.as_bytes(), a.as_bytes());
            assert_eq!(sa.as_bytes(), a.as_bytes());
            assert_eq!(state.hash_one(&sa), state.hash_one(a.as_str()), "{a}");
            assert_eq!(state.hash_one(&ma), state.hash_one(a.as_str()), "{a}");
            assert_eq!(format!("{sa}"), *a);
            assert_eq!(format!("{ma:?}"), format!("MessageId({a:?})"));
            assert_eq!(serde_json::to_string(&ma).unwrap(), format!("{a:?}"));
            let back: MessageId = serde_json::from_str(&format!("{a:?}")).unwrap();
            assert_eq!(back, ma);
            for b in &texts {
                let (sb, mb) = (SessionId::new(b).unwrap(), MessageId::new(b).unwrap());
                assert_eq!(sa == sb, a == b);
                assert_eq!(ma == mb, a == b);
                assert_eq!(sa.cmp(&sb), a.as_str().cmp(b.as_str()), "{a} {b}");
                assert_eq!(ma.cmp(&mb), a.as_str().cmp(b.as_str()), "{a} {b}");
            }
        }
        // A random id is inline, and equal to the same text parsed.
        let r = MessageId::random();
        assert!(matches!(r.0, Text::Inline(_)));
        assert_eq!(MessageId::new(r.as_str()).unwrap(), r);
        assert_eq!(state.hash_one(&r), state.hash_one(r.as_str()));
        assert!(matches!(
            MessageId::new("y".repeat(41)).unwrap().0,
            Text::Shared(_)
        ));
        assert!(matches!(
            SessionId::new("x".repeat(24)).unwrap().0,
            Text::Inline(_)
        ));
        assert!(matches!(
            SessionId::new("x".repeat(25)).unwrap().0,
            Text::Shared(_)
        ));
        assert_eq!(std::mem::size_of::<Option<MessageId>>(), 48);
        assert_eq!(std::mem::size_of::<Option<SessionId>>(), 32);
    }

    #[test]
    fn names_round_trip_through_serde_and_reject_invalid_input() {
        let q: QueueName = serde_json::from_str("\"jobs\"").unwrap();
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"jobs\"");
        assert!(serde_json::from_str::<QueueName>("\"no spaces\"").is_err());
    }
}
