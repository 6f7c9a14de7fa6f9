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

/// A Service Bus connection string, parsed strictly: the one parser behind
/// `queue_azure::ConnectionString::parse` and the `connection_string` fuzz target.
///
/// On top of [`ConnectionString::parse`] (pairs, key syntax, a key given twice is an
/// error): only the Service Bus keys are accepted (an unknown key is an error that does not
/// echo it), and `Endpoint` must be `sb://<host>[:<port>][/]` with a non-empty host (a DNS
/// name, an IPv4 address or a bracketed IPv6 address) and, if a `:` follows the host, a
/// port of 1 to 65535. Anything else in the endpoint is an error, never silently dropped.
#[derive(Debug)]
#[non_exhaustive]
pub struct ServiceBusConnectionString {
    /// Host of the endpoint (without brackets for IPv6).
    pub host: String,
    /// Port of the endpoint, if given.
    pub port: Option<u16>,
    /// `SharedAccessKeyName`, if given.
    pub key_name: Option<String>,
    /// `SharedAccessKey`, if given.
    pub key: Option<SecretString>,
    /// `SharedAccessSignature`, if given.
    pub signature: Option<SecretString>,
    /// `EntityPath`, if given and not empty.
    pub entity_path: Option<String>,
    /// `UseDevelopmentEmulator` (`true` or `false`, default `false`).
    pub use_development_emulator: bool,
}

const SERVICE_BUS_KEYS: &[&str] = &[
    "Endpoint",
    "SharedAccessKeyName",
    "SharedAccessKey",
    "SharedAccessSignature",
    "EntityPath",
    "UseDevelopmentEmulator",
];

impl ServiceBusConnectionString {
    /// Parses and validates; errors name the problem, never a value.
    pub fn parse(raw: &SecretString) -> Result<Self, SecurityError> {
        let cs = ConnectionString::parse(raw)?;
        if let Some(n) = cs
            .keys()
            .position(|k| !SERVICE_BUS_KEYS.iter().any(|s| s.eq_ignore_ascii_case(k)))
        {
            return Err(invalid(format!(
                "segment {} has an unknown key (expected {})",
                n + 1,
                SERVICE_BUS_KEYS.join(", ")
            )));
        }
        let endpoint = cs
            .public("Endpoint")
            .ok_or_else(|| invalid("Endpoint is missing"))?;
        let (host, port) = parse_sb_endpoint(endpoint)?;
        let use_development_emulator = match cs.public("UseDevelopmentEmulator") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err(invalid("UseDevelopmentEmulator must be true or false")),
        };
        Ok(Self {
            host,
            port,
            key_name: cs.public("SharedAccessKeyName").map(str::to_owned),
            key: cs.secret("SharedAccessKey").cloned(),
            signature: cs.secret("SharedAccessSignature").cloned(),
            entity_path: cs
                .public("EntityPath")
                .filter(|e| !e.is_empty())
                .map(str::to_owned),
            use_development_emulator,
        })
    }
}

/// `sb://<host>[:<port>][/]` → host and port; see [`ServiceBusConnectionString`].
pub fn parse_sb_endpoint(endpoint: &str) -> Result<(String, Option<u16>), SecurityError> {
    let rest = endpoint
        .strip_prefix("sb://")
        .ok_or_else(|| invalid("Endpoint must start with sb://"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(invalid(
            "Endpoint must be sb://<host>[:<port>]/ with nothing after the host and port",
        ));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (h, tail) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("Endpoint host has an unclosed `[`"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid("Endpoint host in brackets is not an IPv6 address"));
        }
        (h, port_after(tail)?)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, port_after(&format!(":{p}"))?),
            None => (authority, None),
        }
    };
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-']);
    if !valid_name {
        return Err(invalid("Endpoint has an empty or invalid host"));
    }
    Ok((host.to_owned(), port))
}

/// `""` → no port; `":<1..=65535>"` → the port; anything else is an error.
fn port_after(tail: &str) -> Result<Option<u16>, SecurityError> {
    if tail.is_empty() {
        return Ok(None);
    }
    let digits = tail
        .strip_prefix(':')
        .ok_or_else(|| invalid("Endpoint has text after the host"))?;
    let valid =
        !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit());
    match digits.parse::<u16>() {
        Ok(port) if valid && port > 0 => Ok(Some(port)),
        _ => Err(invalid("Endpoint port must be a number from 1 to 65535")),
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

    #[test]
    fn service_bus_strings_are_parsed_strictly() {
        let ok = |raw: &str| ServiceBusConnectionString::parse(&SecretString::from(raw));
        let cs = ok("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=CANARY=;EntityPath=q").unwrap();
        assert_eq!(
            (cs.host.as_str(), cs.port),
            ("ns.servicebus.windows.net", None)
        );
        assert_eq!(cs.key.unwrap().expose_secret(), "CANARY=");
        let cs = ok("Endpoint=sb://127.0.0.1:6000;SharedAccessSignature=SharedAccessSignature sr=a&sig=CANARY;UseDevelopmentEmulator=true").unwrap();
        assert_eq!((cs.host.as_str(), cs.port), ("127.0.0.1", Some(6000)));
        assert!(cs.use_development_emulator);
        let cs = ok("Endpoint=sb://[::1]:5672/;SharedAccessKeyName=a;SharedAccessKey=b").unwrap();
        assert_eq!((cs.host.as_str(), cs.port), ("::1", Some(5672)));
        for bad in [
            "Endpoint=sb://a/;Endpoint=sb://b/;SharedAccessKeyName=a;SharedAccessKey=CANARY",
            "Endpoint=sb://a/;SharedAccessKey=CANARY;sharedaccesskey=CANARY2",
            "Endpoint=sb:///;SharedAccessKeyName=a;SharedAccessKey=CANARY",
            "Endpoint=sb://:5671/;SharedAccessKeyName=a;SharedAccessKey=CANARY",
            "Endpoint=sb://host:;SharedAccessKeyName=a;SharedAccessKey=CANARY",
            "Endpoint=sb://host:0;SharedAccessKeyName=a;SharedAccessKey=CANARY",
            "Endpoint=sb://host:70000;SharedAccessKeyName=a;SharedAccessKey=CANARY",
            "Endpoint=sb://host:5671:99;SharedAccessKeyName=a;SharedAccessKey=CANARY",
            "Endpoint=sb://host:+99;SharedAccessKeyName=a;SharedAccessKey=CANARY",
            "Endpoint=sb://host/path;SharedAccessKeyName=a;SharedAccessKey=CANARY",
            "Endpoint=sb://u:CANARY@host/;SharedAccessKeyName=a",
            "Endpoint=sb://[nothost]:1/;SharedAccessKeyName=a",
            "Endpoint=https://host/;SharedAccessKeyName=a;SharedAccessKey=CANARY",
            "Endpoint=sb://host/;CANARYKey=x",
            "Endpoint=sb://host/;UseDevelopmentEmulator=CANARY",
        ] {
            let err = ok(bad).expect_err(bad);
            assert!(!err.to_string().contains("CANARY"), "{bad}: {err}");
        }
    }
}
