//! Size and shape limits on messages, checked before any expensive work.

use queue_core::{Attributes, Capabilities, Message};

use crate::{
    error::SecurityError,
    signature::{RESERVED_PREFIX, SIGNATURE_ATTRIBUTE},
};

/// Limits applied to messages before signing and before verification.
///
/// The defaults are provider-neutral: a 256 KiB body (the SQS and Service Bus standard-tier
/// ceiling) and at most 9 application attributes. A provider may carry fewer on a signed
/// message (SQS: 8, since its metadata and the signature take 2 of SQS's 10 message
/// attributes): [`Limits::fitted_to`] lowers the limit to the provider's
/// [`Capabilities::max_attributes`], and [`crate::Signing`] checks it on every send.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest body in bytes.
    pub max_body_size: usize,
    /// Most application attributes (the signature attribute is not counted).
    pub max_attributes: usize,
    /// Longest attribute name in bytes.
    pub max_attribute_name_len: usize,
    /// Longest attribute value in bytes.
    pub max_attribute_value_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_size: 256 * 1024,
            max_attributes: 9,
            max_attribute_name_len: 128,
            max_attribute_value_len: 1024,
        }
    }
}

impl Limits {
    /// Sets the largest body.
    pub fn with_max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Sets the most application attributes.
    pub fn with_max_attributes(mut self, count: usize) -> Self {
        self.max_attributes = count;
        self
    }

    /// Sets the longest attribute name.
    pub fn with_max_attribute_name_len(mut self, bytes: usize) -> Self {
        self.max_attribute_name_len = bytes;
        self
    }

    /// Sets the longest attribute value.
    pub fn with_max_attribute_value_len(mut self, bytes: usize) -> Self {
        self.max_attribute_value_len = bytes;
        self
    }

    /// These limits, with the attribute limit lowered so that the application attributes
    /// plus the signature fit the provider's [`Capabilities::max_attributes`] (if bounded).
    ///
    /// ```
    /// use queue_core::Capabilities;
    /// use queue_security::Limits;
    ///
    /// let mut sqs = Capabilities::default();
    /// sqs.max_attributes = Some(9); // what the SQS provider reports
    /// assert_eq!(Limits::default().fitted_to(&sqs).max_attributes, 8);
    /// assert_eq!(Limits::default().fitted_to(&Capabilities::default()).max_attributes, 9);
    /// ```
    pub fn fitted_to(mut self, capabilities: &Capabilities) -> Self {
        if let Some(max) = capabilities.max_attributes {
            self.max_attributes = self.max_attributes.min(max.saturating_sub(1));
        }
        self
    }

    /// Fails with [`SecurityError::TooManyAttributeSlots`] if the application attributes
    /// (any previous signature not counted) plus one signature exceed `max_attributes`, the
    /// attributes `provider` carries per message (`None`: unbounded).
    pub fn check_attribute_slots(
        attributes: &Attributes,
        provider: &'static str,
        max_attributes: Option<usize>,
    ) -> Result<(), SecurityError> {
        let Some(max) = max_attributes else {
            return Ok(());
        };
        let count = application_attribute_count(attributes);
        if count + 1 > max {
            return Err(SecurityError::TooManyAttributeSlots {
                attributes: count,
                provider,
                max,
            });
        }
        Ok(())
    }

    /// Fails with [`SecurityError::TooLarge`] if `size` exceeds the body limit.
    pub fn check_body_size(&self, what: &'static str, size: usize) -> Result<(), SecurityError> {
        if size > self.max_body_size {
            return Err(SecurityError::TooLarge {
                what,
                size,
                max: self.max_body_size,
            });
        }
        Ok(())
    }

    /// Checks the application attributes: count, names and values. The signature attribute
    /// ([`SIGNATURE_ATTRIBUTE`]) is skipped; other names starting with [`RESERVED_PREFIX`]
    /// are rejected.
    pub fn check_attributes(&self, attributes: &Attributes) -> Result<(), SecurityError> {
        self.check_attribute_count(application_attribute_count(attributes))?;
        for (name, value) in attributes {
            if name != SIGNATURE_ATTRIBUTE {
                self.check_attribute(name, value)?;
            }
        }
        Ok(())
    }

    /// Fails with [`SecurityError::TooManyAttributes`] if `count` application attributes
    /// are more than allowed.
    pub(crate) fn check_attribute_count(&self, count: usize) -> Result<(), SecurityError> {
        if count > self.max_attributes {
            return Err(SecurityError::TooManyAttributes {
                count,
                max: self.max_attributes,
            });
        }
        Ok(())
    }

    /// Checks one application attribute: reserved prefix, name, value. Names of plain
    /// ASCII and values of printable ASCII (nearly all) are decided by one table-driven
    /// pass each; anything else takes the detailed checks, which also word the error.
    pub(crate) fn check_attribute(&self, name: &str, value: &str) -> Result<(), SecurityError> {
        if is_plain_name(name, self.max_attribute_name_len)
            && !name.starts_with(RESERVED_PREFIX)
            && value.len() <= self.max_attribute_value_len
            && value
                .bytes()
                .fold(true, |ok, b| ok & PLAIN_VALUE_BYTE[usize::from(b)])
        {
            return Ok(());
        }
        self.check_attribute_in_detail(name, value)
    }

    #[cold]
    fn check_attribute_in_detail(&self, name: &str, value: &str) -> Result<(), SecurityError> {
        if name.starts_with(RESERVED_PREFIX) {
            return Err(SecurityError::InvalidAttribute {
                reason: format!(
                    "name `{}` uses the reserved prefix `{RESERVED_PREFIX}`",
                    crate::error::sanitize_label(name)
                ),
            });
        }
        validate_attribute_name(name, self.max_attribute_name_len)?;
        validate_attribute_value(name, value, self.max_attribute_value_len)
    }

    /// Body size first, then attributes.
    pub fn check_message(&self, message: &Message) -> Result<(), SecurityError> {
        self.check_body_size("message body", message.body.len())?;
        self.check_attributes(&message.attributes)
    }
}

/// Application attributes: all but the signature.
fn application_attribute_count(attributes: &Attributes) -> usize {
    attributes.len() - usize::from(attributes.contains_key(SIGNATURE_ATTRIBUTE))
}

/// The bytes of attribute names, key ids and covered names: ASCII letters, digits, `-`,
/// `_` and `.`.
pub(crate) static NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
        b += 1;
    }
    table
};

/// Value bytes that need no further check: printable ASCII, tab, line feed, carriage
/// return.
static PLAIN_VALUE_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = (c >= 0x20 && c < 0x7f) || c == b'\t' || c == b'\n' || c == b'\r';
        b += 1;
    }
    table
};

/// Name bytes as bits: 1 for every byte [`NAME_BYTE`] allows, plus 2 for `.`.
static NAME_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        if NAME_BYTE[b] {
            table[b] = if b == b'.' as usize { 3 } else { 1 };
        }
        b += 1;
    }
    table
};

/// The rule of [`validate_attribute_name`] as a yes/no answer: one table look-up per
/// byte and no branch per byte (a `..` shows as two neighbours with the dot bit).
fn is_plain_name(name: &str, max_len: usize) -> bool {
    let bytes = name.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    if bytes.len() > max_len || !first.is_ascii_alphabetic() {
        return false;
    }
    let (mut all, mut pairs, mut previous) = (1u8, 0u8, 0u8);
    for &b in bytes {
        let class = NAME_CLASS[usize::from(b)];
        all &= class;
        pairs |= previous & class;
        previous = class;
    }
    let reserved = |prefix: &[u8]| {
        bytes
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    all == 1
        && pairs & 2 == 0
        && !(matches!(first, b'a' | b'A') && (reserved(b"aws.") || reserved(b"amazon.")))
}

/// Validates an attribute name: 1 to `max_len` bytes of ASCII letters, digits, `-`, `_`
/// and `.`, starting with a letter, without `..`, and not starting with `AWS.` or
/// `Amazon.` (any case), which SQS reserves.
pub fn validate_attribute_name(name: &str, max_len: usize) -> Result<(), SecurityError> {
    // The label is built only for an error: this runs for every attribute of every
    // signed or verified message.
    let bad = |why: &str| SecurityError::InvalidAttribute {
        reason: format!("name `{}` {why}", crate::error::sanitize_label(name)),
    };
    if name.is_empty() {
        return Err(SecurityError::InvalidAttribute {
            reason: "empty attribute name".into(),
        });
    }
    if name.len() > max_len {
        return Err(bad(&format!("is longer than {max_len} bytes")));
    }
    if !name.as_bytes()[0].is_ascii_alphabetic() {
        return Err(bad("must start with an ASCII letter"));
    }
    // One pass over the bytes for both the character set and `..`.
    let mut previous = 0u8;
    for b in name.bytes() {
        if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
            return Err(bad(
                "may only contain ASCII letters, digits, `-`, `_` and `.`",
            ));
        }
        if b == b'.' && previous == b'.' {
            return Err(bad("must not contain `..`"));
        }
        previous = b;
    }
    let has_prefix = |prefix: &str| {
        name.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    if has_prefix("aws.") || has_prefix("amazon.") {
        return Err(bad("uses a prefix reserved by SQS"));
    }
    Ok(())
}

/// Validates an attribute value: at most `max_len` bytes, no control characters other
/// than tab, line feed and carriage return, and no non-characters U+FFFE/U+FFFF (which SQS
/// refuses). The value itself never appears in the error.
pub fn validate_attribute_value(
    name: &str,
    value: &str,
    max_len: usize,
) -> Result<(), SecurityError> {
    let shown = || crate::error::sanitize_label(name);
    if value.len() > max_len {
        return Err(SecurityError::InvalidAttribute {
            reason: format!(
                "value of `{}` is {} bytes, more than {max_len}",
                shown(),
                value.len()
            ),
        });
    }
    // Most values are ASCII: a byte scan decides them without decoding characters.
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r'))
    {
        return Ok(());
    }
    if let Some(pos) = value.chars().position(|c| {
        (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}'
    }) {
        return Err(SecurityError::InvalidAttribute {
            reason: format!(
                "value of `{}` has a forbidden character at position {pos}",
                shown()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "event", "github-event", "x.y_z-1", &"a".repeat(128)] {
            validate_attribute_name(ok, 128).unwrap();
        }
        for bad in [
            "",
            "1a",
            "-a",
            "a b",
            "a..b",
            "AWS.x",
            "amazon.y",
            "ü",
            "a=b",
            &"a".repeat(129),
        ] {
            let err = validate_attribute_name(bad, 128).unwrap_err();
            assert_eq!(err.reason(), "InvalidAttributes", "{bad}");
        }
    }

    #[test]
    fn the_one_pass_name_check_agrees_with_the_detailed_one() {
        // Every name of up to 4 characters over an alphabet with each kind of byte the
        // rules look at, plus the reserved prefixes.
        let alphabet = [
            "a", "A", "w", "s", "m", "z", "n", "o", "1", "-", "_", ".", " ", "ü",
        ];
        let mut names = vec![String::new()];
        let mut level = vec![String::new()];
        for _ in 0..4 {
            level = level
                .iter()
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            names.extend(level.iter().cloned());
        }
        for prefix in ["aws.", "AwS.", "amazon.", "AMAZON.", "awsx", "amazonx"] {
            names.push(format!("{prefix}x"));
        }
        for name in &names {
            for max in [3, 128] {
                assert_eq!(
                    is_plain_name(name, max),
                    validate_attribute_name(name, max).is_ok(),
                    "{name:?} {max}"
                );
            }
        }
    }

    #[test]
    fn the_one_pass_attribute_check_agrees_with_the_detailed_one() {
        let limits = Limits::default().with_max_attribute_value_len(4);
        let values = [
            "", "abcd", "abcde", "a\tb", "\u{7f}", "\u{0}", "ü", "\u{FFFF}", "~ ",
        ];
        for name in ["event", "qr-sig-x", "1a"] {
            for value in values {
                assert_eq!(
                    limits.check_attribute(name, value).is_ok(),
                    limits.check_attribute_in_detail(name, value).is_ok(),
                    "{name} {value:?}"
                );
            }
        }
    }

    #[test]
    fn values_never_shown() {
        let err = validate_attribute_value("n", "CANARY\u{0}", 100).unwrap_err();
        assert!(!err.to_string().contains("CANARY"));
        let err = validate_attribute_value("n", &"CANARY".repeat(100), 100).unwrap_err();
        assert!(!err.to_string().contains("CANARY"));
        validate_attribute_value("n", "tab\tnl\ncr\r ü", 100).unwrap();
        assert!(validate_attribute_value("n", "\u{FFFF}", 100).is_err());
    }

    #[test]
    fn message_limits() {
        let limits = Limits::default()
            .with_max_body_size(4)
            .with_max_attributes(1);
        limits.check_message(&Message::new("abcd")).unwrap();
        let err = limits.check_message(&Message::new("abcde")).unwrap_err();
        assert!(matches!(
            err,
            SecurityError::TooLarge {
                size: 5,
                max: 4,
                ..
            }
        ));
        let m = Message::new("a")
            .with_attribute("a", "1")
            .with_attribute("qr-sig", "ignored");
        limits.check_message(&m).unwrap();
        let m = m.with_attribute("b", "2");
        assert!(matches!(
            limits.check_message(&m),
            Err(SecurityError::TooManyAttributes { count: 2, max: 1 })
        ));
        let reserved = Message::new("a").with_attribute("qr-sig-x", "1");
        assert!(limits.check_message(&reserved).is_err());
    }
}
