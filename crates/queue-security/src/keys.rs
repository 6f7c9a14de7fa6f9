//! Signing keys: [`KeyId`], [`KeyRing`] with rotation, loading from configuration.
//!
//! Key material lives in [`SecretSlice`] (zeroed on drop, `Debug` prints `[REDACTED]`).
//! Its HMAC key schedule is derived once, when the key is inserted, and kept beside it
//! until the key is retired or the ring dropped (`ring` does not zero it; see
//! `docs/security.md`, "What is zeroed").

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use arrayvec::ArrayString;
use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use zeroize::Zeroizing;

use crate::error::{SecurityError, sanitize_label};

/// Shortest accepted key, in bytes (the HMAC-SHA256 output size).
pub const MIN_KEY_LEN: usize = 32;
/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 64;
/// Environment variable read by [`KeyRing::from_default_env`].
pub const DEFAULT_KEYS_ENV: &str = "QUEUE_SIGNING_KEYS";

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The id of a signing key: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
///
/// Ids are not secret: they travel in every signature so the receiver can pick the key.
///
/// Kept inline (at most 64 bytes): cloning one, as every signature and verification does
/// for its result, copies bytes instead of counting a shared reference atomically.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(ArrayString<MAX_KEY_ID_LEN>);

/// Lets the key ring look an id up by the text of an envelope, without building a `KeyId`
/// (ordering, equality and hashing are those of the text).
impl std::borrow::Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl KeyId {
    /// Validates `id`.
    pub fn new(id: impl AsRef<str>) -> Result<Self, SecurityError> {
        let id = id.as_ref();
        if id.is_empty() || id.len() > MAX_KEY_ID_LEN {
            return Err(SecurityError::KeyConfig {
                reason: format!("key id must be 1 to {MAX_KEY_ID_LEN} characters"),
            });
        }
        if !id.bytes().all(is_key_id_byte) {
            return Err(SecurityError::KeyConfig {
                reason: format!(
                    "key id `{}` may only contain ASCII letters, digits, `-`, `_` and `.`",
                    sanitize_label(id)
                ),
            });
        }
        ArrayString::from(id)
            .map(Self)
            .map_err(|_| SecurityError::KeyConfig {
                reason: format!("key id must be 1 to {MAX_KEY_ID_LEN} characters"),
            })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

pub(crate) fn is_key_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({:?})", self.0.as_str())
    }
}

#[derive(Default)]
struct Inner {
    keys: BTreeMap<KeyId, SecretSlice<u8>>,
    /// The HMAC key schedule of each key (its padded inner and outer hash states),
    /// computed once at insert so signing and verifying do not redo it per message.
    /// `ring` does not zero it on drop; it goes with the key on retire.
    macs: BTreeMap<KeyId, ring::hmac::Key>,
    active: Option<KeyId>,
    /// The active key's schedule (a copy of its entry in `macs`), so signing needs no
    /// look-up.
    active_mac: Option<ring::hmac::Key>,
    retired: BTreeSet<KeyId>,
}

/// Signing keys by id: one active key signs, every present key verifies.
///
/// A `KeyRing` is a cheap handle: clones share the same keys, so a sender and a
/// [`crate::SignatureGate`] built from clones see rotations at once.
///
/// Rotation: [`insert`](Self::insert) the new key on every receiver first, then
/// [`set_active`](Self::set_active) it on the senders, and [`retire`](Self::retire) the old
/// one once no message signed with it can still be in a queue. A retired id is rejected
/// exactly like an unknown one ([`SecurityError::UnknownKey`]) and cannot be inserted again.
///
/// ```
/// use queue_security::KeyRing;
/// use secrecy::SecretString;
///
/// let spec = SecretString::from("*k2:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=,k1:ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=");
/// let ring = KeyRing::from_spec(&spec)?;
/// assert_eq!(ring.active_key_id().unwrap().as_str(), "k2");
/// ring.retire("k1")?;
/// assert!(!format!("{ring:?}").contains("MDEy"));
/// # Ok::<(), queue_security::SecurityError>(())
/// ```
#[derive(Clone, Default)]
pub struct KeyRing {
    inner: Arc<RwLock<Inner>>,
}

impl KeyRing {
    /// An empty key ring.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a key (not active). Fails if the id exists or was retired, or the key is
    /// shorter than [`MIN_KEY_LEN`] or longer than [`MAX_KEY_LEN`] bytes.
    pub fn insert(&self, id: &str, material: SecretSlice<u8>) -> Result<(), SecurityError> {
        let id = KeyId::new(id)?;
        let len = material.expose_secret().len();
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&len) {
            return Err(SecurityError::KeyConfig {
                reason: format!(
                    "key `{id}` is {len} bytes long; keys must be {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes"
                ),
            });
        }
        let mut inner = self.write();
        if inner.retired.contains(&id) {
            return Err(SecurityError::KeyConfig {
                reason: format!("key `{id}` was retired and cannot be added again"),
            });
        }
        if inner.keys.contains_key(&id) {
            return Err(SecurityError::KeyConfig {
                reason: format!("key `{id}` is already in the key ring"),
            });
        }
        inner
            .macs
            .insert(id.clone(), hmac_key(material.expose_secret()));
        inner.keys.insert(id, material);
        Ok(())
    }

    /// Adds a key given as standard base64 (padding optional).
    pub fn insert_base64(&self, id: &str, encoded: &SecretString) -> Result<(), SecurityError> {
        let material =
            decode_key(encoded.expose_secret()).map_err(|reason| SecurityError::KeyConfig {
                reason: format!("key `{}`: {reason}", sanitize_label(id)),
            })?;
        self.insert(id, material)
    }

    /// Makes `id` the key used for signing.
    pub fn set_active(&self, id: &str) -> Result<(), SecurityError> {
        let id = KeyId::new(id)?;
        let mut inner = self.write();
        if !inner.keys.contains_key(&id) {
            return Err(SecurityError::UnknownKey {
                key_id: id.to_string(),
            });
        }
        inner.active_mac = inner.macs.get(&id).cloned();
        inner.active = Some(id);
        Ok(())
    }

    /// Removes a key for good: its material is zeroed and messages signed with it are
    /// rejected as [`SecurityError::UnknownKey`]. Retiring the active key leaves the ring
    /// without an active key until [`set_active`](Self::set_active) is called.
    pub fn retire(&self, id: &str) -> Result<(), SecurityError> {
        let id = KeyId::new(id)?;
        let mut inner = self.write();
        inner.macs.remove(&id);
        if inner.keys.remove(&id).is_none() {
            return Err(SecurityError::UnknownKey {
                key_id: id.to_string(),
            });
        }
        if inner.active.as_ref() == Some(&id) {
            inner.active = None;
            inner.active_mac = None;
        }
        inner.retired.insert(id);
        Ok(())
    }

    /// The id of the signing key, if one is active.
    pub fn active_key_id(&self) -> Option<KeyId> {
        self.read().active.clone()
    }

    /// Ids of all keys that verify (active or not), sorted.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.read().keys.keys().cloned().collect()
    }

    /// Whether `id` was retired.
    pub fn is_retired(&self, id: &str) -> bool {
        KeyId::new(id).is_ok_and(|id| self.read().retired.contains(&id))
    }

    /// Runs `f` with the active key's id and HMAC key.
    pub(crate) fn with_active<T>(
        &self,
        f: impl FnOnce(&KeyId, &ring::hmac::Key) -> T,
    ) -> Result<T, SecurityError> {
        let inner = self.read();
        match (&inner.active, &inner.active_mac) {
            (Some(id), Some(key)) => Ok(f(id, key)),
            _ => Err(SecurityError::NoActiveKey),
        }
    }

    /// Runs `f` with the stored id and HMAC key named `id` (a copy of the stored
    /// id, no allocation), or fails with [`SecurityError::UnknownKey`].
    pub(crate) fn with_key_named<T>(
        &self,
        id: &str,
        f: impl FnOnce(&KeyId, &ring::hmac::Key) -> T,
    ) -> Result<T, SecurityError> {
        let inner = self.read();
        let (stored, key) =
            inner
                .macs
                .get_key_value(id)
                .ok_or_else(|| SecurityError::UnknownKey {
                    key_id: id.to_owned(),
                })?;
        Ok(f(stored, key))
    }

    /// Parses a key specification (the format of [`DEFAULT_KEYS_ENV`]).
    ///
    /// Format: entries separated by `,`, each `<key-id>:<base64 key>`, surrounding
    /// whitespace ignored. The entry whose id is prefixed with `*` is the active one; with a
    /// single entry the `*` is optional. Example: `*2026-11:<base64>,2026-10:<base64>`.
    pub fn from_spec(spec: &SecretString) -> Result<Self, SecurityError> {
        let ring = Self::new();
        let mut active = None;
        let mut count = 0usize;
        for (index, entry) in spec.expose_secret().split(',').enumerate() {
            let entry = entry.trim();
            let n = index + 1;
            if entry.is_empty() {
                return Err(SecurityError::KeyConfig {
                    reason: format!("entry {n} is empty"),
                });
            }
            let Some((id, material)) = entry.split_once(':') else {
                return Err(SecurityError::KeyConfig {
                    reason: format!("entry {n} is not `<key-id>:<base64 key>`"),
                });
            };
            let (id, is_active) = match id.trim().strip_prefix('*') {
                Some(rest) => (rest, true),
                None => (id.trim(), false),
            };
            let material =
                decode_key(material.trim()).map_err(|reason| SecurityError::KeyConfig {
                    reason: format!("entry {n}: {reason}"),
                })?;
            ring.insert(id, material)?;
            if is_active {
                if active.is_some() {
                    return Err(SecurityError::KeyConfig {
                        reason: "more than one entry is marked active with `*`".into(),
                    });
                }
                active = Some(id.to_owned());
            }
            count += 1;
        }
        let active = match active {
            Some(a) => a,
            None if count == 1 => ring.key_ids()[0].to_string(),
            None => {
                return Err(SecurityError::KeyConfig {
                    reason: "several keys given but none marked active with `*`".into(),
                });
            }
        };
        ring.set_active(&active)?;
        Ok(ring)
    }

    /// Reads the key specification from environment variable `var` (see
    /// [`from_spec`](Self::from_spec)).
    pub fn from_env(var: &str) -> Result<Self, SecurityError> {
        let value = std::env::var(var).map_err(|e| SecurityError::KeyConfig {
            reason: match e {
                std::env::VarError::NotPresent => format!("environment variable {var} is not set"),
                std::env::VarError::NotUnicode(_) => {
                    format!("environment variable {var} is not valid UTF-8")
                }
            },
        })?;
        Self::from_spec(&SecretString::from(value))
    }

    /// [`from_env`](Self::from_env) with [`DEFAULT_KEYS_ENV`] (`QUEUE_SIGNING_KEYS`).
    pub fn from_default_env() -> Result<Self, SecurityError> {
        Self::from_env(DEFAULT_KEYS_ENV)
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.read();
        f.debug_struct("KeyRing")
            .field("key_ids", &inner.keys.keys().collect::<Vec<_>>())
            .field("active", &inner.active)
            .field("retired", &inner.retired)
            .finish_non_exhaustive()
    }
}

fn decode_key(encoded: &str) -> Result<SecretSlice<u8>, &'static str> {
    let decoded = Zeroizing::new(
        BASE64
            .decode(encoded.as_bytes())
            .map_err(|_| "key material is not valid base64")?,
    );
    Ok(SecretSlice::from(decoded.to_vec()))
}

pub(crate) fn hmac_key(material: &[u8]) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, material)
}

/// Encodes key material the way [`KeyRing::from_spec`] reads it (standard base64).
///
/// Useful to write a freshly generated key into a secret store.
pub fn encode_key(material: &[u8]) -> SecretString {
    SecretString::from(BASE64.encode(material))
}

/// Generates a random 32-byte key with the operating system's RNG.
pub fn generate_key() -> Result<SecretSlice<u8>, SecurityError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = Zeroizing::new(vec![0u8; MIN_KEY_LEN]);
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SecurityError::KeyConfig {
            reason: "the system random number generator failed".into(),
        })?;
    Ok(SecretSlice::from(bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY_B64: &str = "Q0FOQVJZLWtleS1tYXRlcmlhbC0wMTIzNDU2Nzg5YWJjZGVm"; // CANARY-key-material-0123456789abcdef

    #[test]
    fn spec_parses_active_and_others() {
        let spec = SecretString::from(format!(" k1:{CANARY_B64} , *k2:{CANARY_B64}"));
        let ring = KeyRing::from_spec(&spec).unwrap();
        assert_eq!(ring.active_key_id().unwrap().as_str(), "k2");
        assert_eq!(ring.key_ids().len(), 2);
        let single = KeyRing::from_spec(&SecretString::from(format!("only:{CANARY_B64}"))).unwrap();
        assert_eq!(single.active_key_id().unwrap().as_str(), "only");
    }

    #[test]
    fn spec_errors_are_typed_and_never_show_material() {
        let cases = [
            format!("k1:{CANARY_B64},k2:{CANARY_B64}"),
            format!("*k1:{CANARY_B64},*k2:{CANARY_B64}"),
            format!("k1:{CANARY_B64},"),
            format!("k1{CANARY_B64}"),
            format!("k1:{CANARY_B64}!!"),
            format!("bad id:{CANARY_B64}"),
            "short:c2hvcnQ=".to_owned(),
            format!("k1:{CANARY_B64},k1:{CANARY_B64}"),
        ];
        for spec in cases {
            let err = KeyRing::from_spec(&SecretString::from(spec.clone())).unwrap_err();
            assert!(
                matches!(err, SecurityError::KeyConfig { .. }),
                "{spec}: {err}"
            );
            let text = format!("{err} {err:?}");
            assert!(!text.contains(CANARY_B64), "{text}");
            assert!(!text.contains("CANARY"), "{text}");
        }
    }

    #[test]
    fn rotation_retires_for_good() {
        let ring = KeyRing::new();
        ring.insert("a", generate_key().unwrap()).unwrap();
        ring.insert("b", generate_key().unwrap()).unwrap();
        assert!(ring.with_active(|_, _| ()).is_err());
        ring.set_active("a").unwrap();
        ring.set_active("b").unwrap();
        ring.retire("a").unwrap();
        assert!(ring.is_retired("a"));
        assert!(matches!(
            ring.with_key_named("a", |_, _| ()),
            Err(SecurityError::UnknownKey { .. })
        ));
        assert!(ring.insert("a", generate_key().unwrap()).is_err());
        ring.retire("b").unwrap();
        assert!(matches!(
            ring.with_active(|_, _| ()),
            Err(SecurityError::NoActiveKey)
        ));
        assert!(ring.set_active("zzz").is_err());
    }

    #[test]
    fn debug_shows_ids_only() {
        let ring =
            KeyRing::from_spec(&SecretString::from(format!("*canary-id:{CANARY_B64}"))).unwrap();
        let text = format!("{ring:?}");
        assert!(text.contains("canary-id"));
        assert!(
            !text.contains(CANARY_B64) && !text.contains("CANARY-key"),
            "{text}"
        );
    }

    #[test]
    fn encode_key_round_trips() {
        let key = generate_key().unwrap();
        let encoded = encode_key(key.expose_secret());
        let ring = KeyRing::new();
        ring.insert_base64("x", &encoded).unwrap();
        assert_eq!(ring.key_ids()[0].as_str(), "x");
    }

    #[test]
    fn hmac_sha256_known_answers_rfc4231() {
        // RFC 4231, test cases 1, 2, 6 and 7 (6 and 7 use a key longer than the block).
        let cases: [(Vec<u8>, &[u8], &str); 4] = [
            (
                vec![0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, want) in cases {
            let key = hmac_key(&key);
            assert_eq!(hex::encode(ring::hmac::sign(&key, data).as_ref()), want);
            let tag = hex::decode(want).unwrap();
            ring::hmac::verify(&key, data, &tag).unwrap();
            let mut bad = tag.clone();
            bad[0] ^= 1;
            assert!(ring::hmac::verify(&key, data, &bad).is_err());
        }
    }

    #[test]
    fn from_env_reports_missing_variable() {
        let err = KeyRing::from_env("QUEUE_SECURITY_TEST_SURELY_UNSET_VAR").unwrap_err();
        assert!(
            err.to_string()
                .contains("QUEUE_SECURITY_TEST_SURELY_UNSET_VAR")
        );
    }
}
