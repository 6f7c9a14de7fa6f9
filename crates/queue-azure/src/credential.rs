//! Tokens for the `$cbs` node: SAS tokens signed with a shared key, and the
//! [`TokenCredential`] trait for Microsoft Entra ID.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use queue_core::{ExposeSecret, Result, SecretString};

/// The OAuth scope of Service Bus for Microsoft Entra ID tokens.
pub const SERVICE_BUS_SCOPE: &str = "https://servicebus.azure.net/.default";

/// An access token and its expiry.
#[derive(Clone)]
#[non_exhaustive]
pub struct AccessToken {
    /// The bearer token (never printed).
    pub token: SecretString,
    /// When it stops being valid.
    pub expires_on: SystemTime,
}

impl AccessToken {
    /// A token valid until `expires_on`.
    pub fn new(token: SecretString, expires_on: SystemTime) -> Self {
        Self { token, expires_on }
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// A source of Microsoft Entra ID bearer tokens, shaped like `azure_core`'s
/// `TokenCredential`: adapt any `azure_identity` credential (managed identity, workload
/// identity, developer credentials) by forwarding `get_token`.
///
/// The provider asks for [`SERVICE_BUS_SCOPE`] and puts the token on `$cbs` as a `jwt`,
/// asking again before it expires.
#[async_trait]
pub trait TokenCredential: fmt::Debug + Send + Sync {
    /// A token for `scopes`. Errors must not contain secrets.
    async fn get_token(&self, scopes: &[&str]) -> Result<AccessToken>;
}

/// Characters left alone by the SAS encoding (like .NET's `WebUtility.UrlEncode` and
/// Python's `quote_plus` for what appears in tokens).
const SAS_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Builds `SharedAccessSignature sr=<enc uri>&sig=<enc base64>&se=<expiry>&skn=<name>`.
///
/// The signature is HMAC-SHA256 over `<enc uri>\n<expiry>` keyed with the key's UTF-8
/// bytes, as Service Bus expects.
pub(crate) fn sas_token(
    resource: &str,
    key_name: &str,
    key: &SecretString,
    expiry: u64,
) -> SecretString {
    let sr = utf8_percent_encode(resource, SAS_ENCODE).to_string();
    let signed = format!("{sr}\n{expiry}");
    let hkey = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose_secret().as_bytes());
    let tag = ring::hmac::sign(&hkey, signed.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    let sig = utf8_percent_encode(&sig, SAS_ENCODE);
    let skn = utf8_percent_encode(key_name, SAS_ENCODE);
    SecretString::from(format!(
        "SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={skn}"
    ))
}

/// The `se` expiry of a ready-made SAS token, if it has a readable one.
pub(crate) fn sas_expiry(token: &SecretString) -> Option<SystemTime> {
    let rest = token
        .expose_secret()
        .strip_prefix("SharedAccessSignature ")?;
    let se = rest
        .split('&')
        .find_map(|p| p.strip_prefix("se="))?
        .parse::<u64>()
        .ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(se))
}

/// Unix seconds of `t` (0 before the epoch).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_token_has_the_service_bus_shape_and_signature() {
        let key = SecretString::from("CANARY-sas-key");
        let t = sas_token(
            "sb://ns.servicebus.windows.net/orders",
            "Root Key",
            &key,
            1_700_000_000,
        );
        let t = t.expose_secret();
        assert!(t.starts_with(
            "SharedAccessSignature sr=sb%3A%2F%2Fns.servicebus.windows.net%2Forders&sig="
        ));
        assert!(t.ends_with("&se=1700000000&skn=Root%20Key"), "{t}");
        assert!(!t.contains("CANARY"));
        // Verify the signature independently.
        let sig_enc = t.split("&sig=").nth(1).unwrap().split('&').next().unwrap();
        let sig = percent_encoding::percent_decode_str(sig_enc)
            .decode_utf8()
            .unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sig.as_bytes())
            .unwrap();
        let hkey = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"CANARY-sas-key");
        ring::hmac::verify(
            &hkey,
            b"sb%3A%2F%2Fns.servicebus.windows.net%2Forders\n1700000000",
            &raw,
        )
        .expect("signature verifies");
    }

    #[test]
    fn expiry_of_given_tokens() {
        let t = SecretString::from("SharedAccessSignature sr=a&sig=b&se=42&skn=c");
        assert_eq!(sas_expiry(&t), Some(UNIX_EPOCH + Duration::from_secs(42)));
        assert_eq!(sas_expiry(&SecretString::from("junk")), None);
    }

    #[test]
    fn access_token_debug_is_redacted() {
        let t = AccessToken::new(SecretString::from("CANARY-jwt"), UNIX_EPOCH);
        assert!(!format!("{t:?}").contains("CANARY"));
    }
}
