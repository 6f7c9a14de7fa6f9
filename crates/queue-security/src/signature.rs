//! The v1 message signature: envelope, canonical encoding, signer and verifier.
//!
//! The exact format is specified in `docs/security.md`; this module is its reference
//! implementation.

use std::{
    collections::BTreeSet,
    fmt,
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use queue_core::{Attributes, Message, MessageId, QueueName, ReceivedMessage};
use subtle::ConstantTimeEq as _;

use crate::{
    error::{SecurityError, sanitize_label},
    keys::{KeyId, KeyRing, MAX_KEY_ID_LEN, is_key_id_byte},
    limits::Limits,
};

/// The attribute that carries the signature envelope.
pub const SIGNATURE_ATTRIBUTE: &str = "qr-sig";
/// Attribute names starting with this are reserved for the library.
pub const RESERVED_PREFIX: &str = "qr-sig";
/// Domain-separation tag that starts the v1 canonical encoding.
pub const V1_DOMAIN: &[u8] = b"queue-runtime/signature/v1";
/// Longest envelope accepted by the parser, in bytes.
pub const MAX_ENVELOPE_LEN: usize = 4096;
/// Most attributes one signature can cover.
pub const MAX_COVERED_ATTRIBUTES: usize = 64;
/// Longest covered attribute name accepted by the parser.
pub const MAX_COVERED_NAME_LEN: usize = 128;
/// Default allowed distance between signing time and broker accept time.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// The largest skew, and the largest replay window, a gate accepts (30 days). Longer
/// values are refused at construction instead of overflowing time arithmetic later.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Checks that `value` is at most [`MAX_WINDOW`].
pub(crate) fn check_window(what: &'static str, value: Duration) -> Result<Duration, SecurityError> {
    if value > MAX_WINDOW {
        return Err(SecurityError::InvalidWindow {
            what,
            value,
            max: MAX_WINDOW,
        });
    }
    Ok(value)
}

/// Signature format versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureVersion {
    /// HMAC-SHA256 over the v1 canonical encoding.
    V1,
}

/// A parsed signature envelope (the value of the [`SIGNATURE_ATTRIBUTE`] attribute).
///
/// Text form (v1): `v=1;k=<key-id>;t=<unix-ms>[;n=<unix-ms>];a=<name,name,...>;s=<hex>`,
/// fields in exactly this order; `n` (not before) is present only for scheduled messages;
/// `a` lists the covered attribute names, strictly ascending; `s` is the 64-character
/// lowercase hex HMAC-SHA256.
///
/// ```
/// use queue_security::Envelope;
/// let text = format!("v=1;k=k1;t=1700000000000;a=event,repo;s={}", "ab".repeat(32));
/// let env: Envelope = text.parse()?;
/// assert_eq!(env.key_id.as_str(), "k1");
/// assert_eq!(env.to_string(), text);
/// # Ok::<(), queue_security::SecurityError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// Format version.
    pub version: SignatureVersion,
    /// Key that made the signature.
    pub key_id: KeyId,
    /// Signing time, milliseconds since the Unix epoch.
    pub signed_at_ms: u64,
    /// Scheduled delivery time, milliseconds since the Unix epoch, if any.
    pub not_before_ms: Option<u64>,
    /// Covered attribute names, strictly ascending.
    pub covered: Vec<String>,
    /// The MAC.
    pub mac: [u8; 32],
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The MAC is not secret, but there is no reason to put it in logs either.
        f.debug_struct("Envelope")
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .field("signed_at_ms", &self.signed_at_ms)
            .field("not_before_ms", &self.not_before_ms)
            .field("covered", &self.covered)
            .finish_non_exhaustive()
    }
}

fn malformed(reason: &'static str) -> SecurityError {
    SecurityError::MalformedSignature { reason }
}

fn parse_ms(value: &str) -> Result<u64, SecurityError> {
    let ok = !value.is_empty()
        && value.len() <= 15
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    if !ok {
        return Err(malformed(
            "timestamp is not a canonical decimal of at most 15 digits",
        ));
    }
    value
        .parse()
        .map_err(|_| malformed("timestamp out of range"))
}

/// Decodes exactly 64 lowercase hex digits (the only spelling the envelope accepts) in
/// one pass.
fn decode_mac(text: &str) -> Option<[u8; 32]> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut mac = [0u8; 32];
    for (byte, pair) in mac.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(mac)
}

fn field<'a>(
    part: Option<&'a str>,
    name: &'static str,
    missing: &'static str,
) -> Result<&'a str, SecurityError> {
    part.and_then(|p| p.strip_prefix(name))
        .ok_or_else(|| malformed(missing))
}

/// An envelope parsed in place: every field borrows the text (verification allocates
/// nothing for it).
struct EnvelopeRef<'a> {
    key_id: &'a str,
    signed_at_ms: u64,
    not_before_ms: Option<u64>,
    /// The covered names as written: comma-separated, validated, strictly ascending.
    covered: &'a str,
    covered_count: usize,
    mac: [u8; 32],
}

impl<'a> EnvelopeRef<'a> {
    fn parse(text: &'a str) -> Result<Self, SecurityError> {
        if text.len() > MAX_ENVELOPE_LEN {
            return Err(malformed("envelope too long"));
        }
        let mut parts = text.split(';');
        check_version(field(parts.next(), "v=", "envelope must start with `v=`")?)?;
        let key_id = field(parts.next(), "k=", "missing `k=` after the version")?;
        if key_id.is_empty() || key_id.len() > MAX_KEY_ID_LEN || !key_id.bytes().all(is_key_id_byte)
        {
            return Err(malformed("invalid key id"));
        }
        let signed_at_ms = parse_ms(field(parts.next(), "t=", "missing `t=` after the key id")?)?;
        let mut next = parts.next();
        let not_before_ms = match next.and_then(|p| p.strip_prefix("n=")) {
            Some(n) => {
                next = parts.next();
                Some(parse_ms(n)?)
            }
            None => None,
        };
        let covered = field(next, "a=", "missing `a=` after the timestamp")?;
        let covered_count = check_covered(covered)?;
        let sig = field(parts.next(), "s=", "missing `s=` after the attribute list")?;
        if parts.next().is_some() {
            return Err(malformed("unexpected field after `s=`"));
        }
        let mac = decode_mac(sig)
            .ok_or_else(|| malformed("signature must be 64 lowercase hex digits"))?;
        Ok(Self {
            key_id,
            signed_at_ms,
            not_before_ms,
            covered,
            covered_count,
            mac,
        })
    }

    /// The covered attribute names, in order.
    fn names(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.covered.split(',').filter(|name| !name.is_empty())
    }
}

fn check_version(version: &str) -> Result<(), SecurityError> {
    if version == "1" {
        return Ok(());
    }
    // Echo only what looks like a version number; the rest is untrusted text.
    let shown =
        if !version.is_empty() && version.len() <= 4 && version.bytes().all(|b| b.is_ascii_digit())
        {
            version.to_owned()
        } else {
            "?".to_owned()
        };
    Err(SecurityError::UnsupportedVersion { version: shown })
}

/// Checks the covered-name list (`a=`): valid names, strictly ascending, at most
/// [`MAX_COVERED_ATTRIBUTES`]. Returns how many.
fn check_covered(list: &str) -> Result<usize, SecurityError> {
    if list.is_empty() {
        return Ok(0);
    }
    let mut previous: Option<&str> = None;
    let mut count = 0;
    for name in list.split(',') {
        let valid = !name.is_empty()
            && name.len() <= MAX_COVERED_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !valid {
            return Err(malformed("invalid covered attribute name"));
        }
        if previous.is_some_and(|prev| prev >= name) {
            return Err(malformed(
                "covered attribute names are not strictly ascending",
            ));
        }
        if count == MAX_COVERED_ATTRIBUTES {
            return Err(malformed("too many covered attributes"));
        }
        previous = Some(name);
        count += 1;
    }
    Ok(count)
}

impl Envelope {
    /// Parses the text form strictly: one accepted spelling per envelope.
    pub fn parse(text: &str) -> Result<Self, SecurityError> {
        let parsed = EnvelopeRef::parse(text)?;
        Ok(Self {
            version: SignatureVersion::V1,
            key_id: KeyId::new(parsed.key_id).map_err(|_| malformed("invalid key id"))?,
            signed_at_ms: parsed.signed_at_ms,
            not_before_ms: parsed.not_before_ms,
            covered: parsed.names().map(str::to_owned).collect(),
            mac: parsed.mac,
        })
    }
}

impl FromStr for Envelope {
    type Err = SecurityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v=1;k={};t={}", self.key_id, self.signed_at_ms)?;
        if let Some(n) = self.not_before_ms {
            write!(f, ";n={n}")?;
        }
        write!(
            f,
            ";a={};s={}",
            self.covered.join(","),
            hex::encode(self.mac)
        )
    }
}

/// Everything the v1 signature covers, in the order of the canonical encoding.
#[derive(Clone, Copy)]
pub struct SignedFields<'a> {
    /// Key id.
    pub key_id: &'a str,
    /// Signing time, ms since the epoch.
    pub signed_at_ms: u64,
    /// Scheduled delivery time, ms since the epoch.
    pub not_before_ms: Option<u64>,
    /// Destination queue.
    pub queue: &'a str,
    /// Message id.
    pub message_id: &'a str,
    /// Session id.
    pub session_id: Option<&'a str>,
    /// Correlation id.
    pub correlation_id: Option<&'a str>,
    /// Content type.
    pub content_type: Option<&'a str>,
    /// Subject (often the event type, so it can redirect work).
    pub subject: Option<&'a str>,
    /// Covered attributes as (name, value), sorted by name.
    pub attributes: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

impl fmt::Debug for SignedFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedFields")
            .field("key_id", &self.key_id)
            .field("message_id", &self.message_id)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl SignedFields<'_> {
    /// Feeds the v1 canonical encoding to `out`, piece by piece.
    ///
    /// `bytes(x)` is a 4-byte big-endian length then `x`; `opt(x)` is `0x00` when absent,
    /// else `0x01` then `bytes(x)`; integers are 8-byte big-endian. The body's length is 8
    /// bytes. See `docs/security.md`.
    pub fn encode_v1(&self, mut out: impl FnMut(&[u8])) {
        fn bytes(out: &mut impl FnMut(&[u8]), value: &[u8]) {
            // Inputs are bounded far below 4 GiB by the parser and the limits.
            let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
            out(&len.to_be_bytes());
            out(value);
        }
        fn opt(out: &mut impl FnMut(&[u8]), value: Option<&[u8]>) {
            match value {
                None => out(&[0]),
                Some(v) => {
                    out(&[1]);
                    bytes(out, v);
                }
            }
        }
        bytes(&mut out, V1_DOMAIN);
        bytes(&mut out, self.key_id.as_bytes());
        out(&self.signed_at_ms.to_be_bytes());
        match self.not_before_ms {
            None => out(&[0]),
            Some(n) => {
                out(&[1]);
                out(&n.to_be_bytes());
            }
        }
        bytes(&mut out, self.queue.as_bytes());
        bytes(&mut out, self.message_id.as_bytes());
        opt(&mut out, self.session_id.map(str::as_bytes));
        opt(&mut out, self.correlation_id.map(str::as_bytes));
        opt(&mut out, self.content_type.map(str::as_bytes));
        opt(&mut out, self.subject.map(str::as_bytes));
        let count = u32::try_from(self.attributes.len()).unwrap_or(u32::MAX);
        out(&count.to_be_bytes());
        for (name, value) in self.attributes {
            bytes(&mut out, name.as_bytes());
            bytes(&mut out, value.as_bytes());
        }
        out(&(self.body.len() as u64).to_be_bytes());
        out(self.body);
    }

    /// The v1 canonical encoding as one buffer (for tests and other implementations).
    pub fn canonical_v1(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode_v1(|piece| buf.extend_from_slice(piece));
        buf
    }

    /// The HMAC of the v1 canonical encoding, computed as it is encoded: no buffer
    /// holds the encoding, and the small header pieces reach the HMAC through a stack
    /// buffer in one or two updates.
    fn mac(&self, key: &ring::hmac::Key) -> ring::hmac::Tag {
        let mut feed = Feed {
            ctx: ring::hmac::Context::with_key(key),
            buf: [0; FEED_BUF],
            len: 0,
        };
        self.encode_v1(|piece| feed.push(piece));
        feed.flush();
        feed.ctx.sign()
    }
}

const FEED_BUF: usize = 256;

/// Gathers small pieces of the canonical encoding before they reach the HMAC.
struct Feed {
    ctx: ring::hmac::Context,
    buf: [u8; FEED_BUF],
    len: usize,
}

impl Feed {
    fn push(&mut self, piece: &[u8]) {
        if self.len + piece.len() > FEED_BUF {
            self.flush();
        }
        if piece.len() >= FEED_BUF {
            self.ctx.update(piece);
        } else {
            self.buf[self.len..self.len + piece.len()].copy_from_slice(piece);
            self.len += piece.len();
        }
    }

    fn flush(&mut self) {
        self.ctx.update(&self.buf[..self.len]);
        self.len = 0;
    }
}

/// Writes the envelope text of a fresh signature into `text` (the same text as
/// [`Envelope`]'s `Display`, without building an `Envelope` first).
fn write_envelope(
    text: &mut String,
    key_id: &KeyId,
    signed_at_ms: u64,
    not_before_ms: Option<u64>,
    covered: &[(&str, &str)],
    mac: &[u8; 32],
) {
    let names: usize = covered.iter().map(|(k, _)| k.len() + 1).sum();
    text.reserve(40 + key_id.as_str().len() + 2 * 20 + names + 64);
    text.push_str("v=1;k=");
    text.push_str(key_id.as_str());
    text.push_str(";t=");
    push_decimal(text, signed_at_ms);
    if let Some(n) = not_before_ms {
        text.push_str(";n=");
        push_decimal(text, n);
    }
    text.push_str(";a=");
    for (i, (name, _)) in covered.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(name);
    }
    text.push_str(";s=");
    let mut hex = [0u8; 64];
    hex::encode_to_slice(mac, &mut hex).expect("64 digits for 32 bytes");
    text.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
}

/// Appends `value` in decimal without going through `fmt`.
fn push_decimal(text: &mut String, mut value: u64) {
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
    text.push_str(std::str::from_utf8(&digits[start..]).expect("decimal digits are ASCII"));
}

/// The replay nonce of a MAC: 32 hex digits of SHA-256 over it (one allocation, the
/// `String` itself).
fn replay_nonce(mac: &[u8; 32]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, mac);
    let mut hex = [0u8; 32];
    hex::encode_to_slice(&digest.as_ref()[..16], &mut hex).expect("32 digits for 16 bytes");
    std::str::from_utf8(&hex)
        .expect("hex digits are ASCII")
        .to_owned()
}

/// Milliseconds since the Unix epoch (0 for earlier times).
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Which attributes a signature covers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AttributeCoverage {
    /// Every application attribute (the default).
    #[default]
    All,
    /// Only these names (those present on the message are covered).
    Only(BTreeSet<String>),
}

/// Signs outgoing messages with the key ring's active key.
///
/// ```
/// use queue_core::{Message, QueueName};
/// use queue_security::{KeyRing, MessageSigner, generate_key};
///
/// let ring = KeyRing::new();
/// ring.insert("k1", generate_key()?)?;
/// ring.set_active("k1")?;
/// let signer = MessageSigner::new(ring);
/// let mut msg = Message::new("{}").with_attribute("event", "push");
/// signer.sign(&QueueName::new("events")?, &mut msg)?;
/// assert!(msg.message_id.is_some());
/// assert!(msg.attributes["qr-sig"].starts_with("v=1;k=k1;"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct MessageSigner {
    keys: KeyRing,
    coverage: AttributeCoverage,
    limits: Limits,
    clock: Arc<dyn Fn() -> SystemTime + Send + Sync>,
}

impl fmt::Debug for MessageSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSigner")
            .field("keys", &self.keys)
            .field("coverage", &self.coverage)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl MessageSigner {
    /// A signer covering all attributes, with default [`Limits`].
    pub fn new(keys: KeyRing) -> Self {
        Self {
            keys,
            coverage: AttributeCoverage::All,
            limits: Limits::default(),
            clock: Arc::new(SystemTime::now),
        }
    }

    /// Replaces the clock that stamps the signing time (tests with virtual time).
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Chooses the covered attributes.
    pub fn with_coverage(mut self, coverage: AttributeCoverage) -> Self {
        self.coverage = coverage;
        self
    }

    /// Sets the limits checked before signing.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The key ring.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Signs `message` for `queue` at the clock's current time. See
    /// [`sign_at`](Self::sign_at).
    pub fn sign(&self, queue: &QueueName, message: &mut Message) -> Result<KeyId, SecurityError> {
        self.sign_at(queue, message, (self.clock)())
    }

    /// Signs `message` for `queue` as of `at`: checks the limits, assigns a random message
    /// id if none is set (the id is covered), replaces any previous signature, and stores
    /// the envelope in the [`SIGNATURE_ATTRIBUTE`] attribute. Returns the key id used.
    pub fn sign_at(
        &self,
        queue: &QueueName,
        message: &mut Message,
        at: SystemTime,
    ) -> Result<KeyId, SecurityError> {
        // A re-signed message gives back its old entry, whose key and buffer are reused.
        let previous = message.attributes.remove_entry(SIGNATURE_ATTRIBUTE);
        self.limits.check_message(message)?;
        let message_id = message
            .message_id
            .get_or_insert_with(MessageId::random)
            .clone();
        let covered: Vec<(&str, &str)> = message
            .attributes
            .iter()
            .filter(|(name, _)| match &self.coverage {
                AttributeCoverage::All => true,
                AttributeCoverage::Only(set) => set.contains(name.as_str()),
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let signed_at_ms = unix_ms(at);
        let not_before_ms = message.scheduled_enqueue_time.map(unix_ms);
        let (key_id, mac) = self.keys.with_active(|key_id, key| {
            let fields = SignedFields {
                key_id: key_id.as_str(),
                signed_at_ms,
                not_before_ms,
                queue: queue.as_str(),
                message_id: message_id.as_str(),
                session_id: message.session_id.as_ref().map(|s| s.as_str()),
                correlation_id: message.correlation_id.as_deref(),
                content_type: message.content_type.as_deref(),
                subject: message.subject.as_deref(),
                attributes: &covered,
                body: &message.body,
            };
            let tag = fields.mac(key);
            let mut mac = [0u8; 32];
            mac.copy_from_slice(tag.as_ref());
            (key_id.clone(), mac)
        })?;
        let (name, mut text) =
            previous.unwrap_or_else(|| (SIGNATURE_ATTRIBUTE.to_owned(), String::new()));
        text.clear();
        write_envelope(
            &mut text,
            &key_id,
            signed_at_ms,
            not_before_ms,
            &covered,
            &mac,
        );
        message.attributes.insert(name, text);
        Ok(key_id)
    }
}

/// What a successful verification established.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// Key that signed the message.
    pub key_id: KeyId,
    /// When the sender signed it.
    pub signed_at: SystemTime,
    /// Scheduled delivery time, if the sender set one.
    pub not_before: Option<SystemTime>,
    /// The covered attribute names as the envelope lists them (comma-separated).
    covered: String,
    mac: [u8; 32],
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Like `Envelope`, the MAC stays out of logs.
        f.debug_struct("Verified")
            .field("key_id", &self.key_id)
            .field("signed_at", &self.signed_at)
            .field("not_before", &self.not_before)
            .field("covered_attributes", &self.covered)
            .finish_non_exhaustive()
    }
}

impl Verified {
    /// Attributes the signature covers, in ascending order (others, if allowed, are
    /// unauthenticated).
    pub fn covered_attributes(&self) -> impl Iterator<Item = &str> {
        self.covered.split(',').filter(|name| !name.is_empty())
    }

    /// The replay nonce: 32 hex digits of SHA-256 over the MAC. Every copy of a signed
    /// message carries the same one; it reveals nothing about the MAC or the key.
    ///
    /// Computed on call (one SHA-256 block), so a verification that does not check
    /// replays does not pay for it.
    pub fn nonce(&self) -> String {
        replay_nonce(&self.mac)
    }
}

/// Checks signatures and freshness of received messages (without replay protection; see
/// [`crate::SignatureGate`] for the full check).
#[derive(Clone, Debug)]
pub struct SignatureVerifier {
    keys: KeyRing,
    max_skew: Duration,
    limits: Limits,
    allow_uncovered_attributes: bool,
}

impl SignatureVerifier {
    /// A verifier with [`DEFAULT_MAX_SKEW`], default [`Limits`], rejecting attributes the
    /// signature does not cover.
    pub fn new(keys: KeyRing) -> Self {
        Self {
            keys,
            max_skew: DEFAULT_MAX_SKEW,
            limits: Limits::default(),
            allow_uncovered_attributes: false,
        }
    }

    /// Sets the allowed distance between signing time and broker accept time; more than
    /// [`MAX_WINDOW`] is an error.
    pub fn with_max_skew(mut self, skew: Duration) -> Result<Self, SecurityError> {
        self.max_skew = check_window("max skew", skew)?;
        Ok(self)
    }

    /// Sets the limits checked before verification.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Accepts messages carrying attributes the signature does not cover (they stay
    /// unauthenticated; see [`Verified::covered_attributes`]).
    pub fn with_allow_uncovered_attributes(mut self, allow: bool) -> Self {
        self.allow_uncovered_attributes = allow;
        self
    }

    /// The allowed skew.
    pub fn max_skew(&self) -> Duration {
        self.max_skew
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Verifies a received message: size limit first, then attribute limits, envelope,
    /// key, MAC (constant time) and freshness against [`ReceivedMessage::enqueued_at`].
    ///
    /// The queue covered is the receipt's queue and the message id is
    /// [`ReceivedMessage::message_id`].
    pub fn verify(&self, received: &ReceivedMessage) -> Result<Verified, SecurityError> {
        let message = &received.message;
        self.limits.check_message(message)?;
        let text = message
            .attributes
            .get(SIGNATURE_ATTRIBUTE)
            .ok_or(SecurityError::Unsigned)?;
        let envelope = EnvelopeRef::parse(text)?;
        let covered = self.covered_values(&envelope, &message.attributes)?;
        let fields = SignedFields {
            key_id: envelope.key_id,
            signed_at_ms: envelope.signed_at_ms,
            not_before_ms: envelope.not_before_ms,
            queue: received.receipt.queue().as_str(),
            message_id: received.message_id.as_str(),
            session_id: message.session_id.as_ref().map(|s| s.as_str()),
            correlation_id: message.correlation_id.as_deref(),
            content_type: message.content_type.as_deref(),
            subject: message.subject.as_deref(),
            attributes: &covered,
            body: &message.body,
        };
        let key_id = self.keys.with_key_named(envelope.key_id, |key_id, key| {
            // Recompute the tag over the encoding as it is produced (no copy of the body),
            // then compare in constant time.
            let tag = fields.mac(key);
            if bool::from(tag.as_ref().ct_eq(&envelope.mac[..])) {
                Ok(key_id.clone())
            } else {
                Err(SecurityError::SignatureInvalid)
            }
        })??;
        self.check_freshness(
            envelope.signed_at_ms,
            envelope.not_before_ms,
            received.enqueued_at,
        )?;
        Ok(Verified {
            key_id,
            signed_at: from_unix_ms(envelope.signed_at_ms),
            not_before: envelope.not_before_ms.map(from_unix_ms),
            covered: envelope.covered.to_owned(),
            mac: envelope.mac,
        })
    }

    /// The (name, value) pairs the envelope covers, in order; fails if one is missing,
    /// or if the message carries an attribute it does not cover (unless allowed).
    fn covered_values<'m>(
        &self,
        envelope: &EnvelopeRef<'m>,
        attributes: &'m Attributes,
    ) -> Result<Vec<(&'m str, &'m str)>, SecurityError> {
        let mut covered = Vec::with_capacity(envelope.covered_count);
        for name in envelope.names() {
            let value = attributes
                .get(name)
                .ok_or(SecurityError::SignatureInvalid)?;
            covered.push((name, value.as_str()));
        }
        // Covered names are distinct and all present, so any attribute beyond them (and
        // the signature itself) is uncovered; the search for its name runs only then.
        let uncovered = attributes.len() - 1 > covered.len();
        if uncovered && !self.allow_uncovered_attributes {
            let extra = attributes
                .keys()
                .find(|k| {
                    k.as_str() != SIGNATURE_ATTRIBUTE && !envelope.names().any(|n| n == k.as_str())
                })
                .map_or_else(String::new, |k| sanitize_label(k));
            return Err(SecurityError::UncoveredAttribute { name: extra });
        }
        Ok(covered)
    }

    fn check_freshness(
        &self,
        signed_at_ms: u64,
        not_before_ms: Option<u64>,
        enqueued_at: SystemTime,
    ) -> Result<(), SecurityError> {
        let skew_ms = u64::try_from(self.max_skew.as_millis()).unwrap_or(u64::MAX);
        let enqueued = unix_ms(enqueued_at);
        let start = signed_at_ms.saturating_sub(skew_ms);
        let latest = signed_at_ms.max(not_before_ms.unwrap_or(0));
        let end = latest.saturating_add(skew_ms);
        if enqueued < start {
            return Err(SecurityError::Stale {
                direction: "after",
                offset: Duration::from_millis(signed_at_ms - enqueued),
                max_skew: self.max_skew,
            });
        }
        if enqueued > end {
            return Err(SecurityError::Stale {
                direction: "before",
                offset: Duration::from_millis(enqueued - latest),
                max_skew: self.max_skew,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_text_matches_the_envelope_display() {
        let key_id = KeyId::new("k1").unwrap();
        let mac = [0xa5; 32];
        for (signed_at, not_before, covered) in [
            (1_700_000_000_000, None, vec![]),
            (0, Some(1_700_000_000_500), vec![("event", "push")]),
            (9, Some(0), vec![("a", "1"), ("b.c", "2"), ("z_z", "3")]),
            (999_999_999_999_999, None, vec![("a", "1")]),
        ] {
            let envelope = Envelope {
                version: SignatureVersion::V1,
                key_id: key_id.clone(),
                signed_at_ms: signed_at,
                not_before_ms: not_before,
                covered: covered.iter().map(|(k, _)| (*k).to_owned()).collect(),
                mac,
            };
            // A reused buffer with old text in it must not leak into the new envelope.
            let mut text = String::from("stale");
            text.clear();
            write_envelope(&mut text, &key_id, signed_at, not_before, &covered, &mac);
            assert_eq!(text, envelope.to_string());
            assert_eq!(Envelope::parse(&text).unwrap(), envelope);
        }
    }

    #[test]
    fn the_streamed_mac_equals_the_mac_of_the_whole_encoding() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]);
        let attrs = [("event", "push"), ("repo", "octo/x")];
        // Bodies around the feed buffer's size, to cross its flush paths.
        for body_len in [0, 1, 100, FEED_BUF - 1, FEED_BUF, FEED_BUF + 1, 5000] {
            let body = vec![b'x'; body_len];
            let fields = SignedFields {
                key_id: "k1",
                signed_at_ms: 1,
                not_before_ms: Some(2),
                queue: "q",
                message_id: "m",
                session_id: Some("s"),
                correlation_id: None,
                content_type: Some("application/json"),
                subject: Some("push"),
                attributes: &attrs,
                body: &body,
            };
            let whole = ring::hmac::sign(&key, &fields.canonical_v1());
            assert_eq!(fields.mac(&key).as_ref(), whole.as_ref(), "{body_len}");
        }
    }
}
