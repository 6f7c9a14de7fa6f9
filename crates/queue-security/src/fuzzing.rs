//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the stable
//! corpus test in this crate. Each function panics when an invariant breaks.
//!
//! Not part of the stable API.

use queue_core::{MessageId, QueueName, SessionId};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    connstr::ConnectionString,
    envelope::EnvelopeRef,
    github::session_id_from_key,
    limits::validate_attribute_name,
    redact::{REDACTED, redact_text},
    signature::Envelope,
};

/// Signature envelope parsing: never panics; the single-pass parser accepts exactly what
/// the step-by-step parser accepts, with the same values; whatever parses re-encodes to
/// the same text (one spelling per envelope) and parses back to the same value.
pub fn envelope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(
        EnvelopeRef::parse_fast(text),
        EnvelopeRef::parse_checked(text).ok(),
        "the two envelope parsers disagree"
    );
    if let Ok(env) = Envelope::parse(text) {
        let encoded = env.to_string();
        assert_eq!(encoded, text, "accepted a non-canonical envelope");
        let again = Envelope::parse(&encoded).expect("re-encoded envelope parses");
        assert!(again == env, "round trip changed the envelope");
    }
}

fn is_base64ish(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

const CONNECTION_KEYS: &[&str] = &["SharedAccessKey", "SharedAccessSignature", "AccountKey"];

/// Connection string parsing and redaction: never panics; secrets never show in `Debug`;
/// secrets under connection-string keys never survive [`redact_text`] of the raw string.
pub fn connection_string(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let redacted = redact_text(&text);
    assert_eq!(redact_text(&redacted), redacted, "redaction not idempotent");
    service_bus_connection_string(&text);
    let Ok(cs) = ConnectionString::parse(&SecretString::from(text.as_ref())) else {
        return;
    };
    let debug = format!("{cs:?}");
    let public_text: Vec<String> = cs
        .keys()
        .flat_map(|k| [k.to_owned(), cs.public(k).unwrap_or_default().to_owned()])
        .collect();
    for key in cs.keys() {
        let Some(secret) = cs.secret(key) else {
            continue;
        };
        let v = secret.expose_secret();
        if v.len() < 8 || !is_base64ish(v) || REDACTED.contains(v) {
            continue;
        }
        if !public_text.iter().any(|p| p.contains(v)) {
            assert!(!debug.contains(v), "secret of `{key}` in Debug: {debug}");
        }
        let is_connection_key = CONNECTION_KEYS.iter().any(|c| c.eq_ignore_ascii_case(key));
        if is_connection_key && text.matches(v).count() == 1 {
            assert!(
                !redacted.contains(v),
                "secret of `{key}` survived redaction: {redacted}"
            );
        }
    }
}

/// The strict Service Bus parser (the one `queue-azure` uses): never panics; whatever it
/// accepts has a non-empty host, a port in 1..=65535 if any, and no key given twice.
fn service_bus_connection_string(text: &str) {
    let Ok(sb) = crate::connstr::ServiceBusConnectionString::parse(&SecretString::from(text))
    else {
        return;
    };
    assert!(!sb.host.is_empty(), "empty host accepted");
    assert!(sb.port != Some(0), "port 0 accepted");
    let mut keys: Vec<String> = text
        .split(';')
        .filter_map(|seg| seg.split_once('='))
        .map(|(k, _)| k.trim().to_ascii_lowercase())
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "a key given twice was accepted: {text:?}");
}

/// Redaction of arbitrary text: never panics, idempotent, and a planted secret never
/// survives whatever surrounds it.
pub fn redaction(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let out = redact_text(&text);
    assert_eq!(redact_text(&out), out, "redaction not idempotent");
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid -= 1;
    }
    let (a, b) = text.split_at(mid);
    const PLANTED: &[(&str, &str)] = &[
        ("SharedAccessKey=", "QzFuzzCanary1"),
        ("AccountKey=", "QzFuzzCanary2"),
        ("sig=", "QzFuzzCanary3"),
        ("Authorization: Bearer ", "QzFuzzCanary4"),
        ("ghs_", "QzFuzzCanary5"),
    ];
    let pick = data.first().copied().unwrap_or(0) as usize % PLANTED.len();
    let (k, v) = PLANTED[pick];
    let planted = format!("{a};{k}{v};{b}");
    let out = redact_text(&planted);
    if !text.contains(v) {
        assert!(!out.contains(v), "planted secret survived: {out}");
    }
}

/// Name validation: never panics; what validates satisfies the documented rules, and the
/// GitHub session-key sanitizer always yields a valid, deterministic id.
pub fn names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let s = text.as_ref();
    let token_rule = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    assert_eq!(
        SessionId::new(s).is_ok(),
        token_rule,
        "SessionId rule for {s:?}"
    );
    assert_eq!(
        MessageId::new(s).is_ok(),
        token_rule,
        "MessageId rule for {s:?}"
    );
    if let Ok(q) = QueueName::new(s) {
        assert!(q.as_str().len() <= 80 && q.as_str().is_ascii());
        assert!(!q.as_str().contains(' '));
    }
    if validate_attribute_name(s, 128).is_ok() {
        assert!(s.len() <= 128 && s.as_bytes()[0].is_ascii_alphabetic());
    }
    let a = session_id_from_key(s);
    let b = session_id_from_key(s);
    assert_eq!(a, b, "session key not deterministic");
    assert!(SessionId::new(a.as_str()).is_ok());
    if token_rule {
        assert_eq!(a.as_str(), s, "valid keys are kept as is");
    }
}

/// Seed inputs for each target (also written to `fuzz/corpus/<target>/`).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let list: &[&str] = match target {
        "envelope" => &[
            "v=1;k=k1;t=1700000000000;a=;s=0000000000000000000000000000000000000000000000000000000000000000",
            "v=1;k=2026-11;t=1700000000000;n=1700000060000;a=event,repo;s=abababababababababababababababababababababababababababababababab",
            "v=2;k=k1",
            "v=1;k=k1;t=01;a=;s=00",
        ],
        "connection_string" => &[
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==",
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=QUJDREVGR0hJSktMTU5PUA==;EndpointSuffix=core.windows.net",
            "Endpoint=sb://localhost;SharedAccessSignature=SharedAccessSignature sr=x&sig=YWJjZGVmZ2hpams%3D&se=1&skn=k;UseDevelopmentEmulator=true",
        ],
        "redaction" => &[
            "Authorization: Bearer abc.def.ghi",
            "https://user:pw@host/?sig=abc&se=1",
            "token ghp_abcdefABCDEF0123456789 and aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "{\"SecretAccessKey\": \"x\", \"password\": 'y z'}",
        ],
        "names" => &[
            "pull-requests.fifo",
            "octo/repo#42",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "has space",
            "github-event",
        ],
        _ => &[],
    };
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// Runs `target` over its seeds and `iterations` mutations of them (byte flips, inserts,
/// deletions, splices) from a fixed-seed generator: a stable-toolchain stand-in for
/// libFuzzer that keeps the targets exercised on every `cargo test`.
pub fn run_generated(name: &str, target: fn(&[u8]), iterations: usize, seed: u64) {
    let seeds = seeds(name);
    assert!(!seeds.is_empty(), "no seeds for {name}");
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet: &[u8] =
        b"=;:,&@/\"' \n\tv1ksnatREDACTEDghp_sig0123456789abcdefABCDEF\xc3\xa9\xff";
    for s in &seeds {
        target(s);
    }
    for _ in 0..iterations {
        let mut input = seeds[(next() % seeds.len() as u64) as usize].clone();
        for _ in 0..=(next() % 4) {
            let len = input.len();
            match next() % 5 {
                0 if len > 0 => {
                    let at = (next() % len as u64) as usize;
                    input[at] = alphabet[(next() % alphabet.len() as u64) as usize];
                }
                1 => {
                    let at = (next() % (len as u64 + 1)) as usize;
                    input.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]);
                }
                2 if len > 0 => {
                    let at = (next() % len as u64) as usize;
                    let n = ((next() % 8) as usize).min(len - at);
                    input.drain(at..at + n);
                }
                3 => {
                    let other = &seeds[(next() % seeds.len() as u64) as usize];
                    let from = (next() % (other.len() as u64 + 1)) as usize;
                    let at = (next() % (len as u64 + 1)) as usize;
                    let piece = other[from..].to_vec();
                    input.splice(at..at, piece);
                }
                _ => {
                    let b = (next() & 0xff) as u8;
                    input.push(b);
                }
            }
        }
        target(&input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_target_over_generated_corpus() {
        run_generated("envelope", envelope, 20_000, 1);
    }

    #[test]
    fn connection_string_target_over_generated_corpus() {
        run_generated("connection_string", connection_string, 20_000, 2);
    }

    #[test]
    fn redaction_target_over_generated_corpus() {
        run_generated("redaction", redaction, 20_000, 3);
    }

    #[test]
    fn names_target_over_generated_corpus() {
        run_generated("names", names, 20_000, 4);
    }
}
