//! What may be logged, and redaction of secrets inside arbitrary text.
//!
//! The rule for the whole workspace: **identifiers, counts, sizes, names and timings may be
//! logged; bodies, attribute values, keys, tokens, signatures, receipts and connection
//! strings may not.** [`MessageSummary`] is the one way to put a message into a log line,
//! and [`redact_text`] / [`redact_error`] clean text we do not control (SDK error
//! messages, URLs, configuration echoes) before it reaches a log, an error or a metric.
//!
//! ```
//! use queue_security::redact::redact_text;
//! let sdk_error = "connect failed: Endpoint=sb://ns.example/;SharedAccessKeyName=app;SharedAccessKey=c2VjcmV0";
//! let clean = redact_text(sdk_error);
//! assert!(!clean.contains("c2VjcmV0"));
//! assert!(clean.contains("SharedAccessKeyName=app"));
//! ```

use std::{borrow::Cow, fmt};

use queue_core::{Message, ReceivedMessage};

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Keys whose value is a secret in `key=value` / `key: value` text (matched without
/// regard to case, at a word start). Their values end at `;`, a quote, `<`, `>` or a line
/// break (connection-string style: values may contain spaces and `&`).
const CONNECTION_KEYS: &[&str] = &["sharedaccesssignature", "sharedaccesskey", "accountkey"];

/// Keys whose value is a secret; their values also end at whitespace, `&` and `,`.
const SECRET_KEYS: &[&str] = &[
    "aws_secret_access_key",
    "x-amz-security-token",
    "x-amz-signature",
    "aws_session_token",
    "secretaccesskey",
    "refresh_token",
    "client_secret",
    "access_token",
    "sessiontoken",
    "private_key",
    "signature",
    "password",
    "api_key",
    "apikey",
    "passwd",
    "secret",
    "token",
    "pwd",
    "sig",
];

/// GitHub token prefixes (personal, OAuth, app installation, user-to-server, refresh,
/// fine-grained personal).
const GITHUB_PREFIXES: &[&str] = &["github_pat_", "ghp_", "gho_", "ghs_", "ghu_", "ghr_"];

/// Authorization schemes whose credential follows after whitespace.
const AUTH_SCHEMES: &[&str] = &["bearer", "basic"];

fn starts_with_ci(hay: &[u8], needle: &str) -> bool {
    hay.len() >= needle.len() && hay[..needle.len()].eq_ignore_ascii_case(needle.as_bytes())
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_aws_secret_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'/' || b == b'+'
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// Replaces secrets inside `text` with [`REDACTED`]; returns the input unchanged (borrowed)
/// when nothing matched.
///
/// Recognized: values of connection-string keys (`SharedAccessKey=`,
/// `SharedAccessSignature=`, `AccountKey=`) and of secret-looking keys (`sig=`,
/// `password=`, `token=`, `aws_secret_access_key=`, `X-Amz-Signature=`, JSON
/// `"SecretAccessKey": "..."` and similar), `Bearer`/`Basic` credentials, GitHub tokens
/// (`ghp_`, `gho_`, `ghs_`, `ghu_`, `ghr_`, `github_pat_`; the prefix is kept), passwords in
/// URLs (`scheme://user:password@host`), and free-standing 40-character mixed-case
/// base64 words (the shape of AWS secret access keys; lowercase hex such as git SHAs is
/// left alone). Redaction is idempotent.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    // One pass can expose a new match next to a replaced region (a key right after a
    // redacted token); repeat until nothing changes. Every change replaces text that is
    // not the marker by the marker, so this settles quickly; the bound is a safety net.
    let Some(mut current) = redact_pass(text) else {
        return Cow::Borrowed(text);
    };
    for _ in 0..16 {
        match redact_pass(&current) {
            Some(next) => current = next,
            None => break,
        }
    }
    Cow::Owned(current)
}

/// Finds every match at every position, merges overlapping or touching ranges, and
/// replaces each merged range (unless it already is the marker). `None` if unchanged.
fn redact_pass(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for i in 0..bytes.len() {
        let b = bytes[i];
        if !b.is_ascii() {
            continue;
        }
        let prev = if i == 0 { None } else { Some(bytes[i - 1]) };
        if prev.is_none_or(|p| !is_word(p)) && b.is_ascii_alphabetic() {
            ranges.extend(match_key_value(bytes, i));
            ranges.extend(match_auth_scheme(bytes, i));
            ranges.extend(match_github_token(bytes, i));
        }
        if b == b':' && bytes[i..].starts_with(b"://") {
            ranges.extend(match_url_password(bytes, i + 3));
        }
        if is_aws_secret_byte(b) && prev.is_none_or(|p| !is_aws_secret_byte(p)) {
            let run = bytes[i..]
                .iter()
                .take_while(|c| is_aws_secret_byte(**c))
                .count();
            let after = bytes.get(i + run).copied();
            if run == 40
                && after.is_none_or(|a| a != b'=')
                && looks_like_aws_secret(&bytes[i..i + run])
            {
                ranges.push((i, i + run));
            }
        }
    }
    if ranges.is_empty() {
        return None;
    }
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut changed = false;
    for (start, end) in merged {
        if &text[start..end] == REDACTED {
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str(REDACTED);
        copied = end;
        changed = true;
    }
    if !changed {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

fn looks_like_aws_secret(run: &[u8]) -> bool {
    run.iter().any(u8::is_ascii_uppercase)
        && run.iter().any(u8::is_ascii_lowercase)
        && run
            .iter()
            .any(|b| b.is_ascii_digit() || *b == b'/' || *b == b'+')
}

/// `key [quote] [spaces] (=|:) [spaces] [quote] value` at `i`; returns the value range.
fn match_key_value(bytes: &[u8], i: usize) -> Option<(usize, usize)> {
    let rest = &bytes[i..];
    let (key, connection_style) = CONNECTION_KEYS
        .iter()
        .map(|k| (*k, true))
        .chain(SECRET_KEYS.iter().map(|k| (*k, false)))
        .find(|(k, _)| starts_with_ci(rest, k) && rest.get(k.len()).is_none_or(|c| !is_word(*c)))?;
    let mut j = i + key.len();
    if matches!(bytes.get(j), Some(b'"' | b'\'')) {
        j += 1;
    }
    // Parsers trim keys, line breaks included, so a connection key may be followed by
    // any whitespace before its `=`.
    while bytes
        .get(j)
        .is_some_and(|c| *c == b' ' || *c == b'\t' || (connection_style && c.is_ascii_whitespace()))
    {
        j += 1;
    }
    if !matches!(bytes.get(j), Some(b'=' | b':')) {
        return None;
    }
    j += 1;
    // Connection-string values are trimmed by parsers, line breaks included.
    while bytes
        .get(j)
        .is_some_and(|c| *c == b' ' || *c == b'\t' || (connection_style && c.is_ascii_whitespace()))
    {
        j += 1;
    }
    if let Some(&q) = bytes.get(j).filter(|q| matches!(q, b'"' | b'\'')) {
        let start = j + 1;
        let mut k = start;
        while k < bytes.len() && bytes[k] != q && bytes[k] != b'\n' && bytes[k] != b'\r' {
            k += if bytes[k] == b'\\' && k + 1 < bytes.len() {
                2
            } else {
                1
            };
        }
        let end = k.min(bytes.len());
        return (end > start).then_some((start, end));
    }
    let start = j;
    let end = start
        + bytes[start..]
            .iter()
            .take_while(|c| {
                let stop = matches!(c, b';' | b'"' | b'\'' | b'<' | b'>' | b'\n' | b'\r')
                    || (!connection_style && (c.is_ascii_whitespace() || matches!(c, b'&' | b',')));
                !stop
            })
            .count();
    (end > start).then_some((start, end))
}

fn match_auth_scheme(bytes: &[u8], i: usize) -> Option<(usize, usize)> {
    let rest = &bytes[i..];
    let scheme = AUTH_SCHEMES.iter().find(|s| starts_with_ci(rest, s))?;
    let mut j = i + scheme.len();
    let spaces = bytes[j..]
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t'))
        .count();
    if spaces == 0 {
        return None;
    }
    j += spaces;
    let len = bytes[j..].iter().take_while(|c| is_token_byte(**c)).count();
    (len > 0).then_some((j, j + len))
}

fn match_github_token(bytes: &[u8], i: usize) -> Option<(usize, usize)> {
    let rest = &bytes[i..];
    let prefix = GITHUB_PREFIXES
        .iter()
        .find(|p| rest.starts_with(p.as_bytes()))?;
    let start = i + prefix.len();
    let len = bytes[start..].iter().take_while(|c| is_word(**c)).count();
    (len > 0).then_some((start, start + len))
}

/// After `://`: `user:password@` → the password range.
fn match_url_password(bytes: &[u8], start: usize) -> Option<(usize, usize)> {
    let mut colon = None;
    for (k, &c) in bytes.iter().enumerate().skip(start) {
        match c {
            b'@' => {
                let colon = colon?;
                return (k > colon + 1).then_some((colon + 1, k));
            }
            b':' if colon.is_none() => colon = Some(k),
            b'/' | b'?' | b'#' | b';' | b'"' | b'\'' | b'<' | b'>' => return None,
            c if c.is_ascii_whitespace() => return None,
            _ => {}
        }
    }
    None
}

/// Formats an error and its whole `source()` chain as `outer: inner: ...`, then redacts it.
///
/// Use this for errors from SDKs before logging them or wrapping their text in our own
/// errors.
pub fn redact_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    redact_text(&text).into_owned()
}

/// A short, stable, non-reversible fingerprint (16 hex digits of SHA-256) of a value, for
/// correlating log lines or metric labels about something that must not appear itself.
pub fn fingerprint(value: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, value);
    hex::encode(&digest.as_ref()[..8])
}

/// The loggable facts about a message: ids, session, delivery count, sizes, content type
/// and attribute *names*. Never the body or attribute values.
///
/// ```
/// use queue_core::Message;
/// use queue_security::redact::MessageSummary;
/// let msg = Message::new("secret body").with_attribute("token", "secret value");
/// let line = MessageSummary::of_message(&msg).to_string();
/// assert!(line.contains("body_len=11") && line.contains("token"));
/// assert!(!line.contains("secret"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageSummary {
    /// Message id, if set.
    pub message_id: Option<String>,
    /// Session id, if set.
    pub session_id: Option<String>,
    /// Delivery count, for received messages.
    pub delivery_count: Option<u32>,
    /// Body length in bytes.
    pub body_len: usize,
    /// Content type, if set.
    pub content_type: Option<String>,
    /// Attribute names.
    pub attribute_names: Vec<String>,
}

impl MessageSummary {
    /// Summarizes an outgoing message.
    pub fn of_message(message: &Message) -> Self {
        Self {
            message_id: message.message_id.as_ref().map(ToString::to_string),
            session_id: message.session_id.as_ref().map(ToString::to_string),
            delivery_count: None,
            body_len: message.body.len(),
            content_type: message
                .content_type
                .as_deref()
                .map(crate::error::sanitize_label),
            attribute_names: message.attributes.keys().cloned().collect(),
        }
    }

    /// Summarizes a received message.
    pub fn of_received(received: &ReceivedMessage) -> Self {
        let mut s = Self::of_message(&received.message);
        s.message_id = Some(received.message_id.to_string());
        s.delivery_count = Some(received.delivery_count);
        s
    }
}

impl fmt::Display for MessageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message_id={} session_id={}",
            self.message_id.as_deref().unwrap_or("-"),
            self.session_id.as_deref().unwrap_or("-")
        )?;
        if let Some(d) = self.delivery_count {
            write!(f, " delivery_count={d}")?;
        }
        write!(
            f,
            " body_len={} content_type={} attributes=[{}]",
            self.body_len,
            self.content_type.as_deref().unwrap_or("-"),
            self.attribute_names.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_redacted(input: &str, secret: &str) {
        let out = redact_text(input);
        assert!(!out.contains(secret), "{input:?} -> {out:?}");
        assert!(out.contains(REDACTED), "{input:?} -> {out:?}");
        assert_eq!(redact_text(&out), out, "idempotent for {input:?}");
    }

    #[test]
    fn connection_strings() {
        assert_redacted(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4MTIzNDU2Nzg9",
            "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4MTIzNDU2Nzg9",
        );
        let sas = "Endpoint=sb://ns/;SharedAccessSignature=SharedAccessSignature sr=ns&sig=CANARYsig%3D&se=1&skn=k;EntityPath=q";
        let out = redact_text(sas);
        assert!(!out.contains("CANARY"), "{out}");
        assert!(out.contains("EntityPath=q"), "{out}");
        assert!(out.contains("SharedAccessKeyName") || !sas.contains("SharedAccessKeyName"));
        assert_redacted(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=CANARY+key/with==;EndpointSuffix=core.windows.net",
            "CANARY",
        );
        let out = redact_text("SharedAccessKeyName=RootManageSharedAccessKey");
        assert_eq!(out, "SharedAccessKeyName=RootManageSharedAccessKey");
    }

    #[test]
    fn tokens_and_keys_in_free_text() {
        assert_redacted(
            "GET /q?sv=2020&sig=CANARYabc%2B&se=2030 failed",
            "CANARYabc",
        );
        assert_redacted("Authorization: Bearer eyJCANARY.payload.sig", "eyJCANARY");
        assert_redacted("authorization: basic dXNlcjpDQU5BUlk=", "dXNlcjpDQU5BUlk");
        assert_redacted(
            "token ghp_CANARY0123456789abcdefghijklmnopqrst used",
            "CANARY0123",
        );
        assert_redacted("gho_CANARYx", "CANARYx");
        assert_redacted("(ghs_CANARYinstall)", "CANARYinstall");
        assert_redacted("github_pat_11AAAA_CANARYfinegrained", "CANARYfinegrained");
        assert_redacted(
            "aws_secret_access_key = CANARYwJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "CANARY",
        );
        assert_redacted(
            r#"{"AccessKeyId":"AKIAIOSFODNN7EXAMPLE","SecretAccessKey": "CANARYsecret", "SessionToken":"CANARYsession"}"#,
            "CANARY",
        );
        assert_redacted(
            "bare key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY in text",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        assert_redacted("amqps://user:CANARYpw@host:5671/", "CANARYpw");
        assert_redacted("password='CANARY pw with spaces'", "CANARY pw");
        assert_redacted(
            "X-Amz-Signature=CANARYdeadbeef&X-Amz-Date=1",
            "CANARYdeadbeef",
        );
    }

    #[test]
    fn harmless_text_is_left_alone() {
        for text in [
            "",
            "queue `jobs` does not exist on sqs (during send)",
            "commit 3f786850e387550fdab836ed7e6dc881de23001b pushed",
            "message_id=72d3162e-cc78-11e3-81ab-4c9367dc0958 delivery_count=2",
            "signed with key k1",
            "the design uses tokens",
            "https://example.com/path?x=1",
            "ünïcödé ✓ text",
        ] {
            assert!(matches!(redact_text(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn redaction_properties_on_generated_text() {
        // Deterministic generator: secrets planted between random fragments never survive,
        // redaction is idempotent, and text without planted secrets keeps its length class.
        let fragments = [
            "a",
            " ",
            ";",
            "=",
            "&",
            "\"",
            "'",
            ":",
            "/",
            "ü",
            "x9",
            "sig",
            "Bearer",
            "ghp",
            "://",
            "@",
            "\n",
            "SharedAccessKey",
            "token",
            "[REDACTED]",
            "AKIA",
            "=",
        ];
        let secrets = [
            ("SharedAccessKey=", "Q2FuYXJ5S2V5MQ"),
            ("AccountKey=", "Q2FuYXJ5S2V5Mg"),
            ("sig=", "CanarySig3"),
            ("Bearer ", "CanaryBearer4"),
            ("ghp_", "CanaryGithub5"),
            ("password: ", "CanaryPw6"),
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5_000 {
            let mut text = String::new();
            let mut planted = Vec::new();
            for _ in 0..(next() % 12) {
                text.push_str(fragments[(next() % fragments.len() as u64) as usize]);
                if next() % 4 == 0 {
                    let (k, v) = secrets[(next() % secrets.len() as u64) as usize];
                    text.push(' ');
                    text.push_str(k);
                    text.push_str(v);
                    text.push(' ');
                    planted.push(v);
                }
            }
            let out = redact_text(&text);
            for v in planted {
                assert!(!out.contains(v), "{text:?} -> {out:?}");
            }
            assert_eq!(redact_text(&out), out, "not idempotent: {text:?}");
        }
    }

    #[test]
    fn redact_error_walks_the_chain() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("sdk call failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other(
            "auth with SharedAccessKey=CANARYkey rejected",
        ));
        let text = redact_error(&e);
        assert!(
            text.starts_with("sdk call failed: auth with SharedAccessKey=[REDACTED]"),
            "{text}"
        );
        assert!(!text.contains("CANARY"));
    }

    #[test]
    fn summaries_carry_no_values() {
        let msg = Message::new("CANARY body")
            .with_attribute("x", "CANARY value")
            .with_content_type("application/json");
        let s = MessageSummary::of_message(&msg).to_string();
        assert!(!s.contains("CANARY"), "{s}");
        assert!(s.contains("body_len=11"));
        assert_eq!(fingerprint(b"abc").len(), 16);
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
    }
}
