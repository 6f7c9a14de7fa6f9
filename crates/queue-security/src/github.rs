//! GitHub webhooks: signature verification and conversion of a delivery into a
//! [`Message`].
//!
//! ```
//! use queue_security::github::WebhookVerifier;
//! use secrecy::SecretString;
//!
//! let verifier = WebhookVerifier::new(SecretString::from("It's a Secret to Everybody"));
//! verifier.verify_signature(
//!     Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"),
//!     b"Hello, World!",
//! )?;
//! # Ok::<(), queue_security::SecurityError>(())
//! ```

use std::fmt;

use bytes::Bytes;
use queue_core::{Message, MessageId, SessionId};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::{error::SecurityError, limits::validate_attribute_value};

/// Header carrying `sha256=<hex HMAC-SHA256 of the raw body>`.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// Header naming the event type (`pull_request`, `push`...).
pub const EVENT_HEADER: &str = "X-GitHub-Event";
/// Header with the unique delivery id (a UUID); becomes the message id.
pub const DELIVERY_HEADER: &str = "X-GitHub-Delivery";
/// Attribute set to the event type.
pub const EVENT_ATTRIBUTE: &str = "github-event";
/// Attribute set to the payload's `action`, when it has one.
pub const ACTION_ATTRIBUTE: &str = "github-action";
/// Default largest webhook body accepted (the default queue message limit).
pub const DEFAULT_MAX_WEBHOOK_BODY: usize = 256 * 1024;

const MAX_HEADER_VALUE: usize = 256;

/// The headers of one delivery that the conversion needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebhookHeaders {
    /// `X-Hub-Signature-256`.
    pub signature: Option<String>,
    /// `X-GitHub-Event`.
    pub event: Option<String>,
    /// `X-GitHub-Delivery`.
    pub delivery: Option<String>,
}

impl WebhookHeaders {
    /// Picks the three headers out of `(name, value)` pairs, names matched without regard
    /// to case. Other headers are ignored; a repeated one of the three is an error.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, SecurityError> {
        let mut out = Self::default();
        for (name, value) in pairs {
            let (slot, header) = if name.eq_ignore_ascii_case(SIGNATURE_HEADER) {
                (&mut out.signature, SIGNATURE_HEADER)
            } else if name.eq_ignore_ascii_case(EVENT_HEADER) {
                (&mut out.event, EVENT_HEADER)
            } else if name.eq_ignore_ascii_case(DELIVERY_HEADER) {
                (&mut out.delivery, DELIVERY_HEADER)
            } else {
                continue;
            };
            if slot.is_some() {
                return Err(SecurityError::InvalidWebhook {
                    reason: format!("the `{header}` header appears more than once"),
                });
            }
            if value.len() > MAX_HEADER_VALUE {
                return Err(SecurityError::InvalidWebhook {
                    reason: format!(
                        "the `{header}` header is longer than {MAX_HEADER_VALUE} bytes"
                    ),
                });
            }
            *slot = Some(value.trim().to_owned());
        }
        Ok(out)
    }
}

/// Verifies GitHub webhook deliveries with the webhook secret and turns them into queue
/// messages.
///
/// During a secret rotation it accepts any of several secrets
/// ([`WebhookVerifier::with_secret`]): add the new one, change it in GitHub, drop the old.
#[derive(Clone)]
pub struct WebhookVerifier {
    secrets: Vec<SecretString>,
    max_body_size: usize,
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("secrets", &self.secrets.len())
            .field("max_body_size", &self.max_body_size)
            .finish_non_exhaustive()
    }
}

impl WebhookVerifier {
    /// A verifier for webhooks configured with `secret`.
    pub fn new(secret: SecretString) -> Self {
        Self {
            secrets: vec![secret],
            max_body_size: DEFAULT_MAX_WEBHOOK_BODY,
        }
    }

    /// Also accepts signatures made with `secret` (for rotation: old and new at once).
    pub fn with_secret(mut self, secret: SecretString) -> Self {
        self.secrets.push(secret);
        self
    }

    /// Sets the largest body accepted (checked before anything else).
    pub fn with_max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Checks `X-Hub-Signature-256` against the raw body in constant time.
    ///
    /// The body size is checked first. A missing header is
    /// [`SecurityError::MissingHeader`], a header that is not `sha256=` and 64 hex digits
    /// is [`SecurityError::MalformedSignature`], a mismatch is
    /// [`SecurityError::SignatureInvalid`].
    pub fn verify_signature(
        &self,
        signature_header: Option<&str>,
        body: &[u8],
    ) -> Result<(), SecurityError> {
        if body.len() > self.max_body_size {
            return Err(SecurityError::TooLarge {
                what: "webhook body",
                size: body.len(),
                max: self.max_body_size,
            });
        }
        let header = signature_header.ok_or(SecurityError::MissingHeader {
            header: SIGNATURE_HEADER,
        })?;
        let hex_sig =
            header
                .trim()
                .strip_prefix("sha256=")
                .ok_or(SecurityError::MalformedSignature {
                    reason: "webhook signature must start with `sha256=`",
                })?;
        let mut tag = [0u8; 32];
        if hex_sig.len() != 64 || hex::decode_to_slice(hex_sig, &mut tag).is_err() {
            return Err(SecurityError::MalformedSignature {
                reason: "webhook signature must be 64 hex digits",
            });
        }
        // Every secret is tried, so the time taken does not tell which one matched.
        let matched = self.secrets.iter().fold(false, |found, secret| {
            let key =
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose_secret().as_bytes());
            ring::hmac::verify(&key, body, &tag).is_ok() | found
        });
        if matched {
            Ok(())
        } else {
            Err(SecurityError::SignatureInvalid)
        }
    }

    /// Verifies a delivery and converts it into a message, in one call.
    ///
    /// Order: body size, signature (before the body is parsed), event and delivery
    /// headers, JSON payload. The message gets the raw body, content type
    /// `application/json`, message id = `X-GitHub-Delivery`, session id from
    /// [`session_key`], and attributes [`EVENT_ATTRIBUTE`] and (if the payload has one)
    /// [`ACTION_ATTRIBUTE`].
    pub fn message_from_delivery(
        &self,
        headers: &WebhookHeaders,
        body: impl Into<Bytes>,
    ) -> Result<Message, SecurityError> {
        let body: Bytes = body.into();
        self.verify_signature(headers.signature.as_deref(), &body)?;
        let event = headers
            .event
            .as_deref()
            .ok_or(SecurityError::MissingHeader {
                header: EVENT_HEADER,
            })?;
        if event.is_empty() || !event.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(SecurityError::InvalidWebhook {
                reason: "the event header is not a lowercase event name".into(),
            });
        }
        let delivery = headers
            .delivery
            .as_deref()
            .ok_or(SecurityError::MissingHeader {
                header: DELIVERY_HEADER,
            })?;
        let message_id = MessageId::new(delivery)?;
        let payload: Value =
            serde_json::from_slice(&body).map_err(|_| SecurityError::InvalidWebhook {
                reason: "the payload is not JSON (configure the webhook with content type application/json)"
                    .into(),
            })?;
        if !payload.is_object() {
            return Err(SecurityError::InvalidWebhook {
                reason: "the payload is not a JSON object".into(),
            });
        }
        let session = session_key(event, &payload);
        let mut message = Message::new(body)
            .with_content_type("application/json")
            .with_message_id(message_id)
            .with_session_id(session)
            .with_attribute(EVENT_ATTRIBUTE, event);
        if let Some(action) = payload.get("action").and_then(Value::as_str) {
            validate_attribute_value(ACTION_ATTRIBUTE, action, 128)?;
            message = message.with_attribute(ACTION_ATTRIBUTE, action);
        }
        Ok(message)
    }
}

/// Derives the ordering key of a delivery. See `docs/security.md` for the table:
///
/// 1. with a repository `R` (`repository.full_name`):
///    `R#N` for a pull request or issue number `N` (`pull_request.number`, else
///    `issue.number`: issues and pull requests share numbers, so comments on a pull request
///    land in its session); else `R@<full ref>` when the payload has a `ref` (pushes;
///    `create`/`delete` short refs become `refs/heads/..` or `refs/tags/..` by
///    `ref_type`); else `R`;
/// 2. without one: `org:<login>`, else `installation:<id>`, else `github:<event>`.
///
/// The result always is a valid [`SessionId`] (see [`session_id_from_key`]).
pub fn session_key(event: &str, payload: &Value) -> SessionId {
    session_id_from_key(&raw_session_key(event, payload))
}

fn raw_session_key(event: &str, payload: &Value) -> String {
    let str_at = |path: &[&str]| -> Option<&str> {
        let mut v = payload;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str()
    };
    let u64_at = |path: &[&str]| -> Option<u64> {
        let mut v = payload;
        for p in path {
            v = v.get(p)?;
        }
        v.as_u64()
    };
    if let Some(repo) = str_at(&["repository", "full_name"]) {
        if let Some(n) =
            u64_at(&["pull_request", "number"]).or_else(|| u64_at(&["issue", "number"]))
        {
            return format!("{repo}#{n}");
        }
        if let Some(r) = str_at(&["ref"]) {
            let full = if r.starts_with("refs/") {
                r.to_owned()
            } else {
                match str_at(&["ref_type"]) {
                    Some("tag") => format!("refs/tags/{r}"),
                    Some("branch") => format!("refs/heads/{r}"),
                    _ => r.to_owned(),
                }
            };
            return format!("{repo}@{full}");
        }
        return repo.to_owned();
    }
    if let Some(login) = str_at(&["organization", "login"]) {
        return format!("org:{login}");
    }
    if let Some(id) = u64_at(&["installation", "id"]) {
        return format!("installation:{id}");
    }
    format!("github:{event}")
}

/// Turns any text into a valid [`SessionId`], deterministically.
///
/// A key that already is valid (1 to 128 printable ASCII characters, no space) is used
/// as is. Otherwise every character that is not printable ASCII (including space) becomes
/// `_`, the result is cut to 111 characters, and `~` plus the first 16 hex digits of the
/// SHA-256 of the original key are appended, so distinct keys stay distinct.
pub fn session_id_from_key(raw: &str) -> SessionId {
    if let Ok(id) = SessionId::new(raw) {
        return id;
    }
    let mapped: String = raw
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(111)
        .collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, raw.as_bytes());
    let suffix = hex::encode(&digest.as_ref()[..8]);
    let candidate = format!("{mapped}~{suffix}");
    // At most 111 + 1 + 16 = 128 printable ASCII characters without spaces: always valid
    // (the `names` fuzz target checks this invariant).
    SessionId::new(candidate).expect("sanitized session key is a valid SessionId")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "It's a Secret to Everybody";
    const EXAMPLE_SIG: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn sign(secret: &str, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        format!(
            "sha256={}",
            hex::encode(ring::hmac::sign(&key, body).as_ref())
        )
    }

    #[test]
    fn rotation_accepts_every_configured_secret_and_nothing_else() {
        let v = WebhookVerifier::new(SecretString::from("old-secret"))
            .with_secret(SecretString::from(SECRET));
        v.verify_signature(Some(EXAMPLE_SIG), b"Hello, World!")
            .unwrap();
        v.verify_signature(Some(&sign("old-secret", b"x")), b"x")
            .unwrap();
        assert!(matches!(
            v.verify_signature(Some(&sign("third", b"x")), b"x"),
            Err(SecurityError::SignatureInvalid)
        ));
        assert!(format!("{v:?}").contains("secrets: 2"));
        assert!(!format!("{v:?}").contains("old-secret"));
    }

    #[test]
    fn github_published_example() {
        assert_eq!(sign(SECRET, b"Hello, World!"), EXAMPLE_SIG);
        let v = WebhookVerifier::new(SecretString::from(SECRET));
        v.verify_signature(Some(EXAMPLE_SIG), b"Hello, World!")
            .unwrap();
        let upper = format!("sha256={}", EXAMPLE_SIG[7..].to_ascii_uppercase());
        v.verify_signature(Some(&upper), b"Hello, World!").unwrap();
        assert!(matches!(
            v.verify_signature(Some(EXAMPLE_SIG), b"Hello, World?"),
            Err(SecurityError::SignatureInvalid)
        ));
        assert!(matches!(
            WebhookVerifier::new(SecretString::from("other"))
                .verify_signature(Some(EXAMPLE_SIG), b"Hello, World!"),
            Err(SecurityError::SignatureInvalid)
        ));
        for bad in [
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107",
            "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            assert!(matches!(
                v.verify_signature(Some(bad), b"Hello, World!"),
                Err(SecurityError::MalformedSignature { .. })
            ));
        }
        assert!(matches!(
            v.verify_signature(None, b"x"),
            Err(SecurityError::MissingHeader { .. })
        ));
    }

    #[test]
    fn size_is_checked_before_the_signature() {
        let v = WebhookVerifier::new(SecretString::from(SECRET)).with_max_body_size(4);
        assert!(matches!(
            v.verify_signature(None, b"12345"),
            Err(SecurityError::TooLarge {
                size: 5,
                max: 4,
                ..
            })
        ));
    }

    fn deliver(event: &str, body: &str) -> Result<Message, SecurityError> {
        let v = WebhookVerifier::new(SecretString::from(SECRET));
        let sig = sign(SECRET, body.as_bytes());
        let headers = WebhookHeaders::from_pairs([
            ("x-hub-signature-256", sig.as_str()),
            ("X-GitHub-Event", event),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("content-type", "application/json"),
        ])?;
        v.message_from_delivery(&headers, body.as_bytes().to_vec())
    }

    #[test]
    fn pull_request_delivery_becomes_a_message() {
        let body = r#"{"action":"opened","number":42,"pull_request":{"number":42},"repository":{"full_name":"octo/repo"}}"#;
        let m = deliver("pull_request", body).unwrap();
        assert_eq!(m.session_id.unwrap().as_str(), "octo/repo#42");
        assert_eq!(
            m.message_id.unwrap().as_str(),
            "72d3162e-cc78-11e3-81ab-4c9367dc0958"
        );
        assert_eq!(m.attributes[EVENT_ATTRIBUTE], "pull_request");
        assert_eq!(m.attributes[ACTION_ATTRIBUTE], "opened");
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(&m.body[..], body.as_bytes());
    }

    #[test]
    fn session_keys_for_each_kind_of_event() {
        let cases = [
            (
                "issue_comment",
                r#"{"action":"created","issue":{"number":7,"pull_request":{}},"repository":{"full_name":"o/r"}}"#,
                "o/r#7",
            ),
            (
                "push",
                r#"{"ref":"refs/heads/main","repository":{"full_name":"o/r"}}"#,
                "o/r@refs/heads/main",
            ),
            (
                "create",
                r#"{"ref":"v1.0","ref_type":"tag","repository":{"full_name":"o/r"}}"#,
                "o/r@refs/tags/v1.0",
            ),
            (
                "delete",
                r#"{"ref":"feature","ref_type":"branch","repository":{"full_name":"o/r"}}"#,
                "o/r@refs/heads/feature",
            ),
            (
                "star",
                r#"{"action":"created","repository":{"full_name":"o/r"}}"#,
                "o/r",
            ),
            (
                "organization",
                r#"{"organization":{"login":"acme"}}"#,
                "org:acme",
            ),
            (
                "installation",
                r#"{"installation":{"id":99}}"#,
                "installation:99",
            ),
            ("ping", r#"{"zen":"hi"}"#, "github:ping"),
        ];
        for (event, body, want) in cases {
            let m = deliver(event, body).unwrap();
            assert_eq!(m.session_id.unwrap().as_str(), want, "{event}");
        }
    }

    #[test]
    fn long_and_odd_keys_are_hashed_deterministically() {
        let long_ref = format!(
            r#"{{"ref":"refs/heads/{}","repository":{{"full_name":"o/r"}}}}"#,
            "x".repeat(200)
        );
        let a = deliver("push", &long_ref).unwrap().session_id.unwrap();
        let b = deliver("push", &long_ref).unwrap().session_id.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str().len(), 128);
        assert!(a.as_str().starts_with("o/r@refs/heads/xxx"));
        let spaced = session_id_from_key("o/r@refs/heads/with space é");
        assert!(spaced.as_str().starts_with("o/r@refs/heads/with_space__~"));
        assert_ne!(
            session_id_from_key("a b"),
            session_id_from_key("a\tb"),
            "distinct keys stay distinct"
        );
        assert!(session_id_from_key("").as_str().starts_with('~'));
    }

    #[test]
    fn bad_deliveries_are_typed_errors() {
        let ok = r#"{"repository":{"full_name":"o/r"}}"#;
        assert!(matches!(
            deliver("pull_request", "not json"),
            Err(SecurityError::InvalidWebhook { .. })
        ));
        assert!(matches!(
            deliver("pull_request", "[1]"),
            Err(SecurityError::InvalidWebhook { .. })
        ));
        assert!(matches!(
            deliver("Bad Event", ok),
            Err(SecurityError::InvalidWebhook { .. })
        ));
        let v = WebhookVerifier::new(SecretString::from(SECRET));
        let sig = sign(SECRET, ok.as_bytes());
        let no_delivery = WebhookHeaders::from_pairs([
            ("X-Hub-Signature-256", sig.as_str()),
            ("X-GitHub-Event", "push"),
        ])
        .unwrap();
        assert!(matches!(
            v.message_from_delivery(&no_delivery, ok),
            Err(SecurityError::MissingHeader {
                header: DELIVERY_HEADER
            })
        ));
        let tampered = WebhookHeaders::from_pairs([
            ("X-Hub-Signature-256", sig.as_str()),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d1"),
        ])
        .unwrap();
        assert!(matches!(
            v.message_from_delivery(&tampered, r#"{"repository":{"full_name":"o/evil"}}"#),
            Err(SecurityError::SignatureInvalid)
        ));
        assert!(
            WebhookHeaders::from_pairs([("x-github-event", "a"), ("X-GitHub-Event", "b")]).is_err()
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let v = WebhookVerifier::new(SecretString::from("CANARY-webhook-secret"));
        assert!(!format!("{v:?}").contains("CANARY"));
    }
}
