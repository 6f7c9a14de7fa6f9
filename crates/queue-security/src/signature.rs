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

use crate::{
    canonical::{self, Header, Sink, StackBuf},
    envelope::{self, EnvelopeRef},
    error::{SecurityError, sanitize_label},
    keys::{KeyId, KeyRing},
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

impl Envelope {
    /// Parses the text form strictly: one accepted spelling per envelope.
    pub fn parse(text: &str) -> Result<Self, SecurityError> {
        let parsed = EnvelopeRef::parse(text)?;
        Ok(Self {
            version: SignatureVersion::V1,
            key_id: KeyId::new(parsed.key_id).map_err(|_| SecurityError::MalformedSignature {
                reason: "invalid key id",
            })?,
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
    pub fn encode_v1(&self, out: impl FnMut(&[u8])) {
        let mut out = canonical::FnSink(out);
        self.encode_header(&mut out);
        out.put(self.body);
    }

    /// The v1 canonical encoding as one buffer (for tests and other implementations).
    pub fn canonical_v1(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode_v1(|piece| buf.extend_from_slice(piece));
        buf
    }

    /// Everything but the body.
    fn encode_header(&self, out: &mut impl Sink) {
        canonical::encode_head(out, self, self.attributes.len());
        for (name, value) in self.attributes {
            canonical::encode_attribute(out, name, value);
        }
        canonical::encode_body_len(out, self.body.len());
    }

    /// The HMAC of the v1 canonical encoding: the header gathered in a stack buffer, then
    /// the body, in two updates.
    #[cfg(test)]
    fn mac(&self, key: &ring::hmac::Key) -> [u8; 32] {
        let mut header = Header::new();
        self.encode_header(&mut header);
        canonical::mac(key, header.as_slice(), self.body)
    }
}

/// Writes the envelope text of a fresh signature into `text` (the same text as
/// [`Envelope`]'s `Display`).
#[cfg(test)]
fn write_envelope(
    text: &mut String,
    key_id: &KeyId,
    signed_at_ms: u64,
    not_before_ms: Option<u64>,
    covered: &[(&str, &str)],
    mac: &[u8; 32],
) {
    let mut out = StackBuf::<ENVELOPE_BUF>::new();
    envelope::put_envelope_head(&mut out, key_id.as_str(), signed_at_ms, not_before_ms);
    for (i, (name, _)) in covered.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        out.put(name.as_bytes());
    }
    envelope::put_envelope_mac(&mut out, mac);
    text.push_str(std::str::from_utf8(out.as_slice()).unwrap());
}

/// Envelope text kept on the stack while it is written (longer texts move to the heap).
const ENVELOPE_BUF: usize = 256;

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

impl AttributeCoverage {
    fn covers(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.contains(name),
        }
    }
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
    /// the envelope in the [`SIGNATURE_ATTRIBUTE`] attribute. Returns the key id used. On
    /// failure the message is left without a signature, and without the id it did not
    /// have.
    pub fn sign_at(
        &self,
        queue: &QueueName,
        message: &mut Message,
        at: SystemTime,
    ) -> Result<KeyId, SecurityError> {
        let had_id = message.message_id.is_some();
        let signed = self.sign_in_place(queue, message, at);
        if signed.is_err() {
            message.attributes.remove(SIGNATURE_ATTRIBUTE);
            if !had_id {
                message.message_id = None;
            }
        }
        signed
    }

    /// Signs in one walk over the attributes: each is checked against the limits, each
    /// covered one goes into the canonical header (on the stack) and its name into the
    /// envelope text (on the stack too), and the signature's slot, if the message has one,
    /// receives the new text in place.
    fn sign_in_place(
        &self,
        queue: &QueueName,
        message: &mut Message,
        at: SystemTime,
    ) -> Result<KeyId, SecurityError> {
        self.limits
            .check_body_size("message body", message.body.len())?;
        self.check_attribute_count(&message.attributes)?;
        let message_id = message.message_id.get_or_insert_with(MessageId::random);
        let unkeyed = SignedFields {
            key_id: "",
            signed_at_ms: unix_ms(at),
            not_before_ms: message.scheduled_enqueue_time.map(unix_ms),
            queue: queue.as_str(),
            message_id: message_id.as_str(),
            session_id: message.session_id.as_ref().map(|s| s.as_str()),
            correlation_id: message.correlation_id.as_deref(),
            content_type: message.content_type.as_deref(),
            subject: message.subject.as_deref(),
            attributes: &[],
            body: &message.body,
        };
        let attributes = &mut message.attributes;
        let signed = self.keys.with_active(|key_id, key| {
            let fields = SignedFields {
                key_id: key_id.as_str(),
                ..unkeyed
            };
            let mut header = Header::new();
            canonical::encode_head(&mut header, &fields, 0);
            let count_at = header.len() - 4;
            let mut text = StackBuf::<ENVELOPE_BUF>::new();
            envelope::put_envelope_head(
                &mut text,
                fields.key_id,
                fields.signed_at_ms,
                fields.not_before_ms,
            );
            let (count, slot) = self.walk_attributes(attributes, &mut header, &mut text)?;
            header.patch_u32(count_at, count);
            canonical::encode_body_len(&mut header, fields.body.len());
            let mac = canonical::mac(key, header.as_slice(), fields.body);
            envelope::put_envelope_mac(&mut text, &mac);
            // Key id, digits, names and hex digits: ASCII, so this never falls back.
            let text = std::str::from_utf8(text.as_slice()).unwrap_or_default();
            match slot {
                Some(slot) => {
                    slot.clear();
                    slot.push_str(text);
                }
                None => {
                    attributes.insert(SIGNATURE_ATTRIBUTE.to_owned(), text.to_owned());
                }
            }
            Ok(key_id.clone())
        });
        match signed {
            Ok(signed) => signed,
            // Without a signing key, the message's own problems are still named first.
            Err(no_key) => {
                self.limits.check_attributes(&message.attributes)?;
                Err(no_key)
            }
        }
    }

    /// The one walk over the attributes when signing: each is checked against the limits,
    /// each covered one goes into the canonical `header` and its name into the envelope
    /// `text`. Returns how many were covered, and the existing signature's value (the slot
    /// the new envelope is written into), if the message has one.
    fn walk_attributes<'m>(
        &self,
        attributes: &'m mut Attributes,
        header: &mut Header,
        text: &mut StackBuf<ENVELOPE_BUF>,
    ) -> Result<(u32, Option<&'m mut String>), SecurityError> {
        let mut slot = None;
        let mut count = 0u32;
        for (name, value) in attributes.iter_mut() {
            if name == SIGNATURE_ATTRIBUTE {
                slot = Some(value);
                continue;
            }
            self.limits.check_attribute(name, value)?;
            if self.coverage.covers(name) {
                canonical::encode_attribute(header, name, value);
                if count > 0 {
                    text.put(b",");
                }
                text.put(name.as_bytes());
                count += 1;
            }
        }
        Ok((count, slot))
    }

    /// The attribute count limit, with the map searched for a signature only when the
    /// count is right at the limit.
    fn check_attribute_count(&self, attributes: &Attributes) -> Result<(), SecurityError> {
        if attributes.len() <= self.limits.max_attributes {
            return Ok(());
        }
        let has_signature = attributes.contains_key(SIGNATURE_ATTRIBUTE);
        self.limits
            .check_attribute_count(attributes.len() - usize::from(has_signature))
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
    covered: CoveredNames,
    mac: [u8; 32],
}

/// Covered-name lists up to this long are kept inside [`Verified`].
const COVERED_INLINE: usize = 40;

/// The covered names as the envelope lists them, inline when short: a verification then
/// allocates nothing for them.
#[derive(Clone, PartialEq, Eq)]
enum CoveredNames {
    Inline {
        len: u8,
        bytes: [u8; COVERED_INLINE],
    },
    Heap(Box<str>),
}

impl CoveredNames {
    #[inline]
    fn new(names: &str) -> Self {
        match u8::try_from(names.len()) {
            Ok(len) if names.len() <= COVERED_INLINE => {
                let mut bytes = [0; COVERED_INLINE];
                bytes[..names.len()].copy_from_slice(names.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(names.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `str` whole, so always valid.
            Self::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Self::Heap(names) => names,
        }
    }
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Like `Envelope`, the MAC stays out of logs.
        f.debug_struct("Verified")
            .field("key_id", &self.key_id)
            .field("signed_at", &self.signed_at)
            .field("not_before", &self.not_before)
            .field("covered_attributes", &self.covered.as_str())
            .finish_non_exhaustive()
    }
}

impl Verified {
    /// Attributes the signature covers, in ascending order (others, if allowed, are
    /// unauthenticated).
    pub fn covered_attributes(&self) -> impl Iterator<Item = &str> {
        self.covered
            .as_str()
            .split(',')
            .filter(|name| !name.is_empty())
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
        let attributes = &message.attributes;
        self.limits
            .check_body_size("message body", message.body.len())?;
        let envelope = match attributes
            .get(SIGNATURE_ATTRIBUTE)
            .map(|t| EnvelopeRef::parse(t))
        {
            Some(Ok(envelope)) => envelope,
            // Without a usable envelope the attribute limits still come first.
            refused => {
                self.limits.check_attributes(attributes)?;
                return Err(refused.map_or(SecurityError::Unsigned, |r| {
                    r.err().unwrap_or(SecurityError::Unsigned)
                }));
            }
        };
        self.limits.check_attribute_count(attributes.len() - 1)?;
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
            attributes: &[],
            body: &message.body,
        };
        let mut header = Header::new();
        canonical::encode_head(&mut header, &fields, envelope.covered_count);
        self.encode_covered(&envelope, attributes, &mut header)?;
        canonical::encode_body_len(&mut header, fields.body.len());
        let key_id = self.keys.with_key_named(envelope.key_id, |key_id, key| {
            // The header from the stack, then the body as it is; compared in constant time.
            let mac = canonical::mac(key, header.as_slice(), fields.body);
            if canonical::macs_equal(&mac, &envelope.mac) {
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
            covered: CoveredNames::new(envelope.covered),
            mac: envelope.mac,
        })
    }

    /// Checks each application attribute against the limits and writes the covered ones
    /// into `header`, walking the message's attributes (sorted) along the envelope's list
    /// of names (strictly ascending): an attribute is covered when the rest of the list
    /// starts with its name. The first limit violation fails at once; then a covered name
    /// the walk did not reach (missing from the message) is
    /// [`SecurityError::SignatureInvalid`]; then an attribute the envelope does not cover
    /// fails unless allowed.
    fn encode_covered(
        &self,
        envelope: &EnvelopeRef<'_>,
        attributes: &Attributes,
        header: &mut Header,
    ) -> Result<(), SecurityError> {
        let mut rest = envelope.covered.as_bytes();
        let mut uncovered = None;
        for (name, value) in attributes {
            if name == SIGNATURE_ATTRIBUTE {
                continue;
            }
            self.limits.check_attribute(name, value)?;
            let len = name.len();
            let covered = rest.get(..len) == Some(name.as_bytes())
                && rest.get(len).is_none_or(|&b| b == b',');
            if covered {
                canonical::encode_attribute(header, name, value);
                rest = rest.get(len + 1..).unwrap_or_default();
            } else if uncovered.is_none() {
                uncovered = Some(name);
            }
        }
        // A covered name that is not on the message stops the walk along the list there
        // (the attributes after it sort after it too), so the list is not used up.
        if !rest.is_empty() {
            return Err(SecurityError::SignatureInvalid);
        }
        match uncovered {
            Some(name) if !self.allow_uncovered_attributes => {
                Err(SecurityError::UncoveredAttribute {
                    name: sanitize_label(name),
                })
            }
            _ => Ok(()),
        }
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
    fn the_two_part_mac_equals_the_mac_of_the_whole_encoding() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]);
        // Headers below, at and above the stack buffer's size (the value's length moves the
        // header around it), with bodies on and off block boundaries.
        for value_len in [0, 300, 369, 370, 371, 372, 373, 1000] {
            let value = "v".repeat(value_len);
            let attrs = [("event", "push"), ("repo", value.as_str())];
            for body_len in [0, 1, 55, 64, 100, 5000] {
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
                let whole = fields.canonical_v1();
                let header_len = whole.len() - body_len;
                let expected = ring::hmac::sign(&key, &whole);
                assert_eq!(
                    fields.mac(&key).as_slice(),
                    expected.as_ref(),
                    "{header_len} + {body_len}"
                );
            }
        }
    }
}
