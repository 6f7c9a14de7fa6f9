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

/// Whether a key, scheme or token prefix starts with this byte (either case): most word
/// starts are rejected here without comparing any key.
const STARTS_A_KEY: [bool; 256] = {
    let lists: [&[&str]; 4] = [CONNECTION_KEYS, SECRET_KEYS, GITHUB_PREFIXES, AUTH_SCHEMES];
    let mut table = [false; 256];
    let mut l = 0;
    while l < lists.len() {
        let mut k = 0;
        while k < lists[l].len() {
            let first = lists[l][k].as_bytes()[0];
            table[first.to_ascii_lowercase() as usize] = true;
            table[first.to_ascii_uppercase() as usize] = true;
            k += 1;
        }
        l += 1;
    }
    table
};

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
/// (`ghp_`, `gho_`, `ghs_`, `ghu_`, `ghr_`, `github_pat_`; the prefix is kept), the whole
/// user-info of URLs that carry a password (`scheme://user:password@host` becomes
/// `scheme://[REDACTED]@host`), and free-standing 40-character mixed-case base64 words
/// (the shape of AWS secret access keys; lowercase hex such as git SHAs is left alone).
///
/// One left-to-right pass, linear in the length of `text`: a successful match is skipped
/// as a whole, and a failed look-ahead stops at a delimiter that the next look-ahead of
/// the same kind does not cross. Redaction is idempotent (`redact_text(redact_text(x)) ==
/// redact_text(x)`): a value that already is [`REDACTED`] is kept, the marker's `[` ends a
/// URL user-info, and word boundaries are judged on the output, so a second pass makes
/// exactly the decisions of the first.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    // The byte before `i` as it appears in the output (`]` right after a replacement).
    let mut prev: Option<u8> = None;
    while i < bytes.len() {
        if bytes[i..].starts_with(REDACTED.as_bytes()) {
            i += REDACTED.len();
            prev = Some(b']');
            continue;
        }
        let Some(region) = match_at(bytes, i, prev) else {
            prev = Some(bytes[i]);
            i += 1;
            continue;
        };
        let Region { start, end, .. } = if is_only_markers(&bytes[region.start..region.end]) {
            region
        } else {
            grow(bytes, region)
        };
        if !is_only_markers(&bytes[start..end]) {
            let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
            buf.push_str(&text[copied..start]);
            buf.push_str(REDACTED);
            copied = end;
        }
        i = end;
        prev = Some(b']');
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut buf) => {
            buf.push_str(&text[copied..]);
            Cow::Owned(buf)
        }
    }
}

/// The secret region of the first matcher that fires at `i`, if any. Matchers start and
/// stop only at ASCII bytes, so regions lie on char boundaries.
fn match_at(bytes: &[u8], i: usize, prev: Option<u8>) -> Option<Region> {
    let b = bytes[i];
    if STARTS_A_KEY[usize::from(b)] && prev.is_none_or(|p| !is_word(p)) {
        let found = match_key_value(bytes, i).or_else(|| {
            match_auth_scheme(bytes, i)
                .or_else(|| match_github_token(bytes, i))
                .map(Region::other)
        });
        if found.is_some() {
            return found;
        }
    }
    if b == b':'
        && bytes[i..].starts_with(b"://")
        && let Some(found) = match_url_userinfo(bytes, i + 3)
    {
        return Some(Region::other(found));
    }
    if is_aws_secret_byte(b) && prev.is_none_or(|p| !is_aws_secret_byte(p)) {
        return match_aws_secret(bytes, i).map(Region::other);
    }
    None
}

/// How far back from a region's end a key, scheme or `://` may start and still reach past
/// it (the longest key plus quote, blanks and separator, with room to spare).
const TAIL: usize = 64;

/// Grows `region` while a match that starts in its last [`TAIL`] bytes reaches past its
/// end (`Bearer password: x`: the token `password` is also a key whose value follows), then
/// continues the region's own value to its next end. Every position is tried once.
fn grow(bytes: &[u8], mut region: Region) -> Region {
    let mut tried = region.start;
    loop {
        let from = region.end.saturating_sub(TAIL).max(tried);
        let reach = (from..region.end)
            .filter_map(|j| match_inside(bytes, j))
            .max()
            .filter(|e| *e > region.end);
        tried = region.end;
        let Some(end) = reach else {
            return region;
        };
        region.end = value_end(bytes, end, region.kind);
    }
}

/// The end of a match starting at `j` inside a region (word starts judged on the input).
fn match_inside(bytes: &[u8], j: usize) -> Option<usize> {
    let prev = j.checked_sub(1).map(|p| bytes[p]);
    if STARTS_A_KEY[usize::from(bytes[j])] && prev.is_none_or(|p| !is_word(p)) {
        let found = match_key_value(bytes, j)
            .map(|r| r.end)
            .or_else(|| match_auth_scheme(bytes, j).map(|r| r.1));
        if found.is_some() {
            return found;
        }
    }
    (bytes[j] == b':' && bytes[j..].starts_with(b"://"))
        .then(|| match_url_userinfo(bytes, j + 3).map(|r| r.1))
        .flatten()
}

fn is_only_markers(region: &[u8]) -> bool {
    let marker = REDACTED.as_bytes();
    !region.is_empty()
        && region.len().is_multiple_of(marker.len())
        && region.chunks(marker.len()).all(|c| c == marker)
}

/// A maximal run of exactly 40 base64 bytes that looks like an AWS secret key.
fn match_aws_secret(bytes: &[u8], i: usize) -> Option<(usize, usize)> {
    let run = bytes[i..]
        .iter()
        .take_while(|c| is_aws_secret_byte(**c))
        .count();
    let after = bytes.get(i + run).copied();
    let hit =
        run == 40 && after.is_none_or(|a| a != b'=') && looks_like_aws_secret(&bytes[i..i + run]);
    hit.then_some((i, i + run))
}

fn looks_like_aws_secret(run: &[u8]) -> bool {
    run.iter().any(u8::is_ascii_uppercase)
        && run.iter().any(u8::is_ascii_lowercase)
        && run
            .iter()
            .any(|b| b.is_ascii_digit() || *b == b'/' || *b == b'+')
}

/// How a key's value ends; a region grown past its first end continues to the next
/// such end, so that a second pass reads the whole region as one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueEnd {
    /// Connection-string value: ends at `;`, a quote, `<`, `>` or a line break.
    Connection,
    /// Other key values: also end at whitespace, `&` and `,`.
    Plain,
    /// Quoted value: ends at the closing quote (backslash escapes) or a line break.
    Quoted(u8),
    /// Tokens, user-infos and AWS-shaped words: a second pass never reads through the
    /// marker, so nothing to continue.
    Other,
}

/// A range to replace, and how it ends.
#[derive(Clone, Copy, Debug)]
struct Region {
    start: usize,
    end: usize,
    kind: ValueEnd,
}

impl Region {
    fn other((start, end): (usize, usize)) -> Self {
        Self {
            start,
            end,
            kind: ValueEnd::Other,
        }
    }
}

/// Where a value of `kind` that is still open at `from` ends.
fn value_end(bytes: &[u8], from: usize, kind: ValueEnd) -> usize {
    match kind {
        ValueEnd::Other => from,
        ValueEnd::Quoted(q) => {
            let mut k = from;
            while k < bytes.len() && bytes[k] != q && bytes[k] != b'\n' && bytes[k] != b'\r' {
                k += if bytes[k] == b'\\' { 2 } else { 1 };
            }
            k.min(bytes.len())
        }
        ValueEnd::Connection | ValueEnd::Plain => {
            let plain = kind == ValueEnd::Plain;
            from + bytes[from..]
                .iter()
                .take_while(|c| {
                    let stop = matches!(c, b';' | b'"' | b'\'' | b'<' | b'>' | b'\n' | b'\r')
                        || (plain && (c.is_ascii_whitespace() || matches!(c, b'&' | b',')));
                    !stop
                })
                .count()
        }
    }
}

fn skip_blanks(bytes: &[u8], mut j: usize, connection_style: bool) -> usize {
    // Parsers trim connection-string keys and values, line breaks included.
    while bytes
        .get(j)
        .is_some_and(|c| *c == b' ' || *c == b'\t' || (connection_style && c.is_ascii_whitespace()))
    {
        j += 1;
    }
    j
}

/// The secret key at the start of `rest` (lists are lowercase), and whether it is a
/// connection-string key.
fn find_key(rest: &[u8]) -> Option<(&'static str, bool)> {
    let first = rest.first()?.to_ascii_lowercase();
    for (list, connection_style) in [(CONNECTION_KEYS, true), (SECRET_KEYS, false)] {
        for key in list {
            if key.as_bytes()[0] == first
                && starts_with_ci(rest, key)
                && rest.get(key.len()).is_none_or(|c| !is_word(*c))
            {
                return Some((key, connection_style));
            }
        }
    }
    None
}

/// `key [quote] [spaces] (=|:) [spaces] [quote] value` at `i`; returns the value range.
fn match_key_value(bytes: &[u8], i: usize) -> Option<Region> {
    let (key, connection_style) = find_key(&bytes[i..])?;
    let mut j = i + key.len();
    if matches!(bytes.get(j), Some(b'"' | b'\'')) {
        j += 1;
    }
    j = skip_blanks(bytes, j, connection_style);
    if !matches!(bytes.get(j), Some(b'=' | b':')) {
        return None;
    }
    j = skip_blanks(bytes, j + 1, connection_style);
    let (start, kind) = match bytes.get(j) {
        Some(&q @ (b'"' | b'\'')) => (j + 1, ValueEnd::Quoted(q)),
        _ if connection_style => (j, ValueEnd::Connection),
        _ => (j, ValueEnd::Plain),
    };
    let end = value_end(bytes, start, kind);
    (end > start).then_some(Region { start, end, kind })
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

/// After `://`: `user:password@` → the whole user-info (`user:password`). Stops at what
/// RFC 3986 does not allow in a user-info (`/ ? # [ ] @`, whitespace) and at `; " ' < >`,
/// so the marker's `[` ends the look-ahead: a second pass never finds a user-info that
/// reaches through a replaced region.
fn match_url_userinfo(bytes: &[u8], start: usize) -> Option<(usize, usize)> {
    let mut colon = None;
    for (k, &c) in bytes.iter().enumerate().skip(start) {
        match c {
            b'@' => {
                let colon = colon?;
                return (k > colon + 1).then_some((start, k));
            }
            b':' if colon.is_none() => colon = Some(k),
            b'/' | b'?' | b'#' | b'[' | b']' | b';' | b'"' | b'\'' | b'<' | b'>' => return None,
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
