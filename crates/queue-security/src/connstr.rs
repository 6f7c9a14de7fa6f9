//! Parsing of `Key=Value;Key=Value` connection strings (Service Bus, Azure Storage) that
//! keeps every value except a short list of known-public keys secret.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::error::SecurityError;

/// Longest connection string accepted.
pub const MAX_CONNECTION_STRING_LEN: usize = 4096;

/// Keys whose values are not secret and may be shown (compared without regard to case).
pub const PUBLIC_KEYS: &[&str] = &[
    "Endpoint",
    "EntityPath",
    "SharedAccessKeyName",
    "AccountName",
    "DefaultEndpointsProtocol",
    "EndpointSuffix",
    "UseDevelopmentEmulator",
    "TransportType",
];

enum Value {
    Public(String),
    Secret(SecretString),
}

/// A parsed connection string. Values of keys outside [`PUBLIC_KEYS`] are held as
/// secrets: `Debug` shows them as `[REDACTED]` and reading one takes
/// [`secret`](Self::secret) plus `expose_secret()`.
///
/// ```
/// use queue_security::ConnectionString;
/// use secrecy::{ExposeSecret, SecretString};
/// let raw = SecretString::from("Endpoint=sb://ns.example/;SharedAccessKeyName=app;SharedAccessKey=c2VjcmV0PQ==");
/// let cs = ConnectionString::parse(&raw)?;
/// assert_eq!(cs.public("endpoint"), Some("sb://ns.example/"));
/// assert_eq!(cs.secret("SharedAccessKey").unwrap().expose_secret(), "c2VjcmV0PQ==");
/// assert!(!format!("{cs:?}").contains("c2Vj"));
/// # Ok::<(), queue_security::SecurityError>(())
/// ```
pub struct ConnectionString {
    entries: Vec<(String, Value)>,
}

fn trim_ascii(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace())
}

fn invalid(reason: impl Into<String>) -> SecurityError {
    SecurityError::InvalidConnectionString {
        reason: reason.into(),
    }
}

impl ConnectionString {
    /// Parses `Key=Value` pairs separated by `;`. ASCII whitespace around keys and values
    /// is trimmed, empty segments are skipped, a value may contain `=`. Keys are 1 to 64
    /// ASCII letters, digits, `_`, `-` or spaces and appear once (without regard to case).
    /// Errors name the segment number, never a value.
    pub fn parse(raw: &SecretString) -> Result<Self, SecurityError> {
        let raw = raw.expose_secret();
        if raw.len() > MAX_CONNECTION_STRING_LEN {
            return Err(invalid(format!(
                "longer than {MAX_CONNECTION_STRING_LEN} bytes"
            )));
        }
        let mut entries: Vec<(String, Value)> = Vec::new();
        for (index, segment) in raw.split(';').enumerate() {
            let n = index + 1;
            if trim_ascii(segment).is_empty() {
                continue;
            }
            let (key, value) = segment
                .split_once('=')
                .ok_or_else(|| invalid(format!("segment {n} is not `Key=Value`")))?;
            let key = trim_ascii(key);
            let valid_key = !key.is_empty()
                && key.len() <= 64
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b' '));
            if !valid_key {
                return Err(invalid(format!("segment {n} has an invalid key")));
            }
            if entries.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) {
                return Err(invalid(format!("key `{key}` appears more than once")));
            }
            let value = trim_ascii(value);
            let value = if PUBLIC_KEYS.iter().any(|p| p.eq_ignore_ascii_case(key)) {
                Value::Public(value.to_owned())
            } else {
                Value::Secret(SecretString::from(value))
            };
            entries.push((key.to_owned(), value));
        }
        if entries.is_empty() {
            return Err(invalid("no `Key=Value` pairs"));
        }
        Ok(Self { entries })
    }

    fn find(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// The value of a public key (see [`PUBLIC_KEYS`]).
    pub fn public(&self, key: &str) -> Option<&str> {
        match self.find(key)? {
            Value::Public(v) => Some(v),
            Value::Secret(_) => None,
        }
    }

    /// The value of any other key, as a secret.
    pub fn secret(&self, key: &str) -> Option<&SecretString> {
        match self.find(key)? {
            Value::Secret(v) => Some(v),
            Value::Public(_) => None,
        }
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.entries {
            match v {
                Value::Public(p) => map.entry(k, p),
                Value::Secret(_) => map.entry(k, &crate::redact::REDACTED),
            };
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_bus_and_storage_strings() {
        let cs = ConnectionString::parse(&SecretString::from(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=CANARY+k/y=;EntityPath=q;",
        ))
        .unwrap();
        assert_eq!(cs.public("EntityPath"), Some("q"));
        assert_eq!(cs.public("SharedAccessKey"), None);
        assert_eq!(
            cs.secret("sharedaccesskey").unwrap().expose_secret(),
            "CANARY+k/y="
        );
        assert_eq!(cs.keys().count(), 4);
        let dbg = format!("{cs:?}");
        assert!(!dbg.contains("CANARY") && dbg.contains("Root"), "{dbg}");
    }

    #[test]
    fn errors_never_show_values() {
        for raw in [
            "",
            ";;",
            "Endpoint=a;CANARYnoequals",
            "=CANARY",
            "Bad!Key=CANARY",
            "A=CANARY;a=CANARY",
        ] {
            let err = ConnectionString::parse(&SecretString::from(raw)).unwrap_err();
            assert!(!err.to_string().contains("CANARY"), "{raw}: {err}");
        }
        let long = "A=".to_owned() + &"x".repeat(5000);
        assert!(ConnectionString::parse(&SecretString::from(long)).is_err());
    }
}
