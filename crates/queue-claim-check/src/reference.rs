//! The reference a claim-checked message carries instead of its body.

use std::fmt;

use crate::error::ClaimCheckError;

/// The attribute that carries a [`BlobReference`] on a claim-checked message.
///
/// Attributes starting with `qr-` are reserved for the library: the layer refuses to send a
/// message that already carries this one, and removes it before a handler sees the message.
pub const REFERENCE_ATTRIBUTE: &str = "qr-claim-check";

/// Longest reference text the parser looks at, in bytes.
pub const MAX_REFERENCE_LEN: usize = 1024;

/// Where a body was put and what it must hash to.
///
/// Text form (v1): `v=1;k=<object key>;n=<size>;d=<sha256 hex>`, fields in exactly this
/// order, one accepted spelling per reference. The key is a path of `/`-separated
/// segments of ASCII letters, digits, `-`, `_` and `.`; the size is a canonical decimal;
/// the digest is 64 lowercase hex digits.
///
/// ```
/// use queue_claim_check::BlobReference;
/// let text = format!("v=1;k=claims/m-1/{};n=5;d={}", "ab".repeat(32), "ab".repeat(32));
/// let reference = BlobReference::parse(&text)?;
/// assert_eq!(reference.size, 5);
/// assert_eq!(reference.to_string(), text);
/// # Ok::<(), queue_claim_check::ClaimCheckError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BlobReference {
    /// The object's key in the store.
    pub key: String,
    /// The body's length in bytes.
    pub size: u64,
    /// SHA-256 of the body.
    pub sha256: [u8; 32],
}

impl BlobReference {
    /// A reference to `key` holding `size` bytes that hash to `sha256`.
    pub fn new(key: impl Into<String>, size: u64, sha256: [u8; 32]) -> Self {
        Self {
            key: key.into(),
            size,
            sha256,
        }
    }

    /// Parses the text form strictly.
    pub fn parse(text: &str) -> Result<Self, ClaimCheckError> {
        if text.len() > MAX_REFERENCE_LEN {
            return Err(malformed("reference too long"));
        }
        let mut parts = text.split(';');
        if parts.next() != Some("v=1") {
            return Err(malformed("reference must start with `v=1`"));
        }
        let key = field(parts.next(), "k=")?;
        if !is_valid_key(key) {
            return Err(malformed("invalid object key"));
        }
        let size = field(parts.next(), "n=")?;
        let canonical = !size.is_empty()
            && size.len() <= 19
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        if !canonical {
            return Err(malformed("size is not a canonical decimal"));
        }
        let size = size.parse().map_err(|_| malformed("size out of range"))?;
        let digest = field(parts.next(), "d=")?;
        if parts.next().is_some() {
            return Err(malformed("unexpected field after `d=`"));
        }
        if digest.len() != 64
            || !digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(malformed("digest must be 64 lowercase hex digits"));
        }
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(digest, &mut sha256).map_err(|_| malformed("digest is not hex"))?;
        Ok(Self {
            key: key.to_owned(),
            size,
            sha256,
        })
    }

    /// The digest as 64 lowercase hex digits.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

impl fmt::Display for BlobReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v=1;k={};n={};d={}",
            self.key,
            self.size,
            self.digest_hex()
        )
    }
}

impl fmt::Debug for BlobReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobReference")
            .field("key", &self.key)
            .field("size", &self.size)
            .field("sha256", &self.digest_hex())
            .finish()
    }
}

fn malformed(reason: &'static str) -> ClaimCheckError {
    ClaimCheckError::MalformedReference { reason }
}

fn field<'a>(part: Option<&'a str>, name: &'static str) -> Result<&'a str, ClaimCheckError> {
    part.and_then(|p| p.strip_prefix(name))
        .ok_or_else(|| malformed("missing or misplaced field"))
}

/// A path segment the layer writes: ASCII letters, digits, `-`, `_`, `.`, not `.` or `..`.
pub(crate) fn is_valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.split('/').all(is_valid_segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BlobReference {
        BlobReference::new("a/b-1/c.d", 25 * 1024 * 1024, [0xab; 32])
    }

    #[test]
    fn text_round_trips() {
        let r = sample();
        assert_eq!(BlobReference::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn parser_is_strict() {
        let d = "ab".repeat(32);
        let bad = [
            String::new(),
            format!("v=2;k=a;n=1;d={d}"),
            format!("v=1;k=;n=1;d={d}"),
            format!("v=1;k=a/../b;n=1;d={d}"),
            format!("v=1;k=/a;n=1;d={d}"),
            format!("v=1;k=a b;n=1;d={d}"),
            format!("v=1;k=a;n=01;d={d}"),
            format!("v=1;k=a;n=-1;d={d}"),
            format!("v=1;k=a;n=99999999999999999999;d={d}"),
            format!("v=1;k=a;n=1;d={}", "AB".repeat(32)),
            format!("v=1;k=a;n=1;d={}", "ab".repeat(31)),
            format!("v=1;k=a;n=1;d={d};x=1"),
            format!("v=1;n=1;k=a;d={d}"),
            format!("v=1;k={};n=1;d={d}", "a".repeat(MAX_REFERENCE_LEN)),
        ];
        for text in bad {
            let err = BlobReference::parse(&text).expect_err(&text);
            assert!(
                matches!(err, ClaimCheckError::MalformedReference { .. }),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn debug_shows_the_reference_fields() {
        let text = format!("{:?}", sample());
        assert!(
            text.contains("a/b-1/c.d") && text.contains("26214400"),
            "{text}"
        );
    }
}
