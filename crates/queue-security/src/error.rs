//! [`SecurityError`]: every way a security check can fail, with a stable reason label.

use std::time::Duration;

use queue_core::{BoxError, QueueError};

/// Stable, bounded reason labels: dead-letter reasons and metric label values.
///
/// The consumer runtime dead-letters a message rejected by [`crate::SignatureGate`] with one
/// of these as the reason; keep dashboards keyed on them.
pub mod reason {
    /// The signature did not match: the message was altered or signed with another key.
    pub const SIGNATURE_INVALID: &str = "SignatureInvalid";
    /// The signature attribute could not be parsed.
    pub const SIGNATURE_MALFORMED: &str = "SignatureMalformed";
    /// The signature uses a format version this build does not know.
    pub const UNSUPPORTED_VERSION: &str = "UnsupportedVersion";
    /// The signing key id is not in the key ring (never known, or retired).
    pub const UNKNOWN_KEY: &str = "UnknownKey";
    /// The signing time is too far from the time the broker accepted the message.
    pub const MESSAGE_STALE: &str = "MessageStale";
    /// A second broker message carrying a signed message already seen (a copy sent again).
    pub const REPLAYED: &str = "Replayed";
    /// Delivered before the scheduled time the sender signed (an early copy).
    pub const NOT_YET_DUE: &str = "NotYetDue";
    /// The message carries no signature and the policy rejects unsigned messages.
    pub const UNSIGNED: &str = "Unsigned";
    /// The body exceeds the configured maximum.
    pub const TOO_LARGE: &str = "TooLarge";
    /// Attribute names, values or count outside the limits.
    pub const INVALID_ATTRIBUTES: &str = "InvalidAttributes";
    /// The replay store failed and the policy rejects messages it cannot check.
    pub const REPLAY_CHECK_FAILED: &str = "ReplayCheckFailed";
    /// Any other security failure (configuration, webhook input).
    pub const SECURITY_ERROR: &str = "SecurityError";

    /// Every reason a [`crate::SignatureGate`] can reject with.
    pub const GATE_REASONS: &[&str] = &[
        SIGNATURE_INVALID,
        SIGNATURE_MALFORMED,
        UNSUPPORTED_VERSION,
        UNKNOWN_KEY,
        MESSAGE_STALE,
        REPLAYED,
        NOT_YET_DUE,
        UNSIGNED,
        TOO_LARGE,
        INVALID_ATTRIBUTES,
        REPLAY_CHECK_FAILED,
    ];
}

/// A security check failed.
///
/// Messages never contain key material, signatures, tokens or message bodies. Values that
/// come from the network (key ids, versions) are shown only after [`sanitize_label`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// Input larger than allowed; rejected before any other work.
    #[error("{what} of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// What was measured (`"message body"`, `"webhook body"`...).
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// An attribute name or value is not acceptable.
    #[error("invalid attribute: {reason}")]
    InvalidAttribute {
        /// What is wrong (names the attribute, never shows its value).
        reason: String,
    },

    /// More attributes than allowed.
    #[error("{count} attributes exceed the limit of {max}")]
    TooManyAttributes {
        /// Attributes present.
        count: usize,
        /// The limit.
        max: usize,
    },

    /// The application attributes and the signature together need more message attributes
    /// than the provider carries (SQS: 9 besides its metadata attribute, so at most 8
    /// application attributes on a signed message). Refused before anything is sent.
    #[error(
        "{attributes} application attributes plus the signature need {} attribute slots; the {provider} provider carries {max} per message (at most {} application attributes on a signed message)",
        .attributes + 1,
        .max.saturating_sub(1)
    )]
    TooManyAttributeSlots {
        /// Application attributes on the message (the signature not counted).
        attributes: usize,
        /// The provider ([`queue_core::QueueProvider::name`]).
        provider: &'static str,
        /// Attributes the provider carries per message
        /// ([`queue_core::Capabilities::max_attributes`]).
        max: usize,
    },

    /// The message carries no signature.
    #[error("message is not signed")]
    Unsigned,

    /// The signature attribute does not parse.
    #[error("malformed signature envelope: {reason}")]
    MalformedSignature {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The signature format version is not supported.
    #[error("unsupported signature version `{version}`")]
    UnsupportedVersion {
        /// The version found (sanitized).
        version: String,
    },

    /// The key id is not in the key ring, or was retired.
    #[error("unknown or retired signing key `{key_id}`")]
    UnknownKey {
        /// The key id found (sanitized).
        key_id: String,
    },

    /// The MAC did not verify.
    #[error("signature does not match the message")]
    SignatureInvalid,

    /// The message carries an attribute the signature does not cover, and the verifier
    /// does not allow that. Counted as [`reason::SIGNATURE_INVALID`].
    #[error("attribute `{name}` is not covered by the signature")]
    UncoveredAttribute {
        /// The attribute name (sanitized).
        name: String,
    },

    /// The signing time is outside the allowed skew of the broker's accept time.
    #[error(
        "message signed {direction} the broker accepted it by {offset:?}, more than the allowed skew of {max_skew:?}"
    )]
    Stale {
        /// `"before"` or `"after"`.
        direction: &'static str,
        /// Distance between the signing time and the accept window.
        offset: Duration,
        /// The allowed skew.
        max_skew: Duration,
    },

    /// Another broker message already carried this signed message within the replay window.
    #[error("message `{message_id}` was already received (replay)")]
    Replayed {
        /// The replayed message id.
        message_id: String,
    },

    /// The message was signed for scheduled delivery and arrived before that time (beyond
    /// the allowed skew).
    #[error("message delivered {early_by:?} before its signed scheduled time")]
    NotYetDue {
        /// How early, beyond the skew.
        early_by: Duration,
    },

    /// A duration given to a security component is outside its allowed range.
    #[error("{what} of {value:?} is outside the allowed range (at most {max:?})")]
    InvalidWindow {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: Duration,
        /// The largest allowed value.
        max: Duration,
    },

    /// The replay store failed.
    #[error("replay store failed")]
    ReplayStore {
        /// The store's error.
        #[source]
        source: BoxError,
    },

    /// The key ring has no active key to sign with.
    #[error("no active signing key in the key ring")]
    NoActiveKey,

    /// Key configuration is invalid (format, id, length). Never shows key material.
    #[error("invalid signing key configuration: {reason}")]
    KeyConfig {
        /// What is wrong.
        reason: String,
    },

    /// A required header is missing from a webhook delivery.
    #[error("webhook delivery lacks the `{header}` header")]
    MissingHeader {
        /// The header name.
        header: &'static str,
    },

    /// A webhook payload or header could not be used.
    #[error("invalid webhook delivery: {reason}")]
    InvalidWebhook {
        /// What is wrong (never payload text).
        reason: String,
    },

    /// A connection string does not parse.
    #[error("invalid connection string: {reason}")]
    InvalidConnectionString {
        /// What is wrong (never a value).
        reason: String,
    },

    /// An identifier failed queue-core validation.
    #[error(transparent)]
    Name(#[from] QueueError),
}

impl SecurityError {
    /// The stable reason label (see [`reason`]), used as dead-letter reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => reason::TOO_LARGE,
            Self::InvalidAttribute { .. }
            | Self::TooManyAttributes { .. }
            | Self::TooManyAttributeSlots { .. } => reason::INVALID_ATTRIBUTES,
            Self::Unsigned => reason::UNSIGNED,
            Self::MalformedSignature { .. } => reason::SIGNATURE_MALFORMED,
            Self::UnsupportedVersion { .. } => reason::UNSUPPORTED_VERSION,
            Self::UnknownKey { .. } => reason::UNKNOWN_KEY,
            Self::SignatureInvalid | Self::UncoveredAttribute { .. } => reason::SIGNATURE_INVALID,
            Self::Stale { .. } => reason::MESSAGE_STALE,
            Self::Replayed { .. } => reason::REPLAYED,
            Self::NotYetDue { .. } => reason::NOT_YET_DUE,
            Self::ReplayStore { .. } => reason::REPLAY_CHECK_FAILED,
            Self::NoActiveKey
            | Self::KeyConfig { .. }
            | Self::MissingHeader { .. }
            | Self::InvalidWebhook { .. }
            | Self::InvalidConnectionString { .. }
            | Self::InvalidWindow { .. }
            | Self::Name(_) => reason::SECURITY_ERROR,
        }
    }
}

/// Provider label used when a [`SecurityError`] becomes a [`QueueError`].
pub const PROVIDER_LABEL: &str = "security";

impl From<SecurityError> for QueueError {
    fn from(err: SecurityError) -> Self {
        match err {
            SecurityError::Name(inner) => inner,
            SecurityError::NoActiveKey | SecurityError::KeyConfig { .. } => {
                QueueError::config("security.keys", err.to_string())
            }
            SecurityError::InvalidWindow { .. } => QueueError::config("security", err.to_string()),
            SecurityError::InvalidConnectionString { .. } => {
                QueueError::config("connection_string", err.to_string())
            }
            other => QueueError::InvalidMessage {
                provider: PROVIDER_LABEL,
                reason: other.to_string(),
            },
        }
    }
}

/// Makes an untrusted short value safe to show: printable ASCII only (others become `?`),
/// at most 64 characters (longer values end in `...`).
pub fn sanitize_label(value: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = value
        .chars()
        .take(MAX)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if value.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue_core::RetryClass;

    #[test]
    fn reasons_are_distinct_and_stable() {
        let mut seen = std::collections::HashSet::new();
        for r in reason::GATE_REASONS {
            assert!(seen.insert(*r), "duplicate {r}");
        }
        assert_eq!(SecurityError::SignatureInvalid.reason(), "SignatureInvalid");
        assert_eq!(
            SecurityError::UnknownKey { key_id: "k".into() }.reason(),
            "UnknownKey"
        );
        assert_eq!(
            SecurityError::Replayed {
                message_id: "m".into()
            }
            .reason(),
            "Replayed"
        );
        assert_eq!(
            SecurityError::Stale {
                direction: "before",
                offset: Duration::from_secs(1),
                max_skew: Duration::from_secs(1)
            }
            .reason(),
            "MessageStale"
        );
    }

    #[test]
    fn converts_to_permanent_queue_errors() {
        let q: QueueError = SecurityError::SignatureInvalid.into();
        assert_eq!(q.retry_class(), RetryClass::Permanent);
        assert_eq!(q.kind_label(), "invalid_message");
        let q: QueueError = SecurityError::NoActiveKey.into();
        assert_eq!(q.kind_label(), "config");
        let name_err = queue_core::SessionId::new("").unwrap_err();
        let q: QueueError = SecurityError::from(name_err).into();
        assert_eq!(q.kind_label(), "invalid_name");
    }

    #[test]
    fn sanitize_label_bounds_untrusted_text() {
        assert_eq!(sanitize_label("k1"), "k1");
        assert_eq!(sanitize_label("a b\n\u{e9}"), "a?b??");
        let long = "x".repeat(100);
        let s = sanitize_label(&long);
        assert_eq!(s.len(), 67);
        assert!(s.ends_with("..."));
    }
}
