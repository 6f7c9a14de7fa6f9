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

/// Adapts an `azure_core` `TokenCredential` (any `azure_identity` credential: managed
/// identity, workload identity, Azure CLI, ...) to this crate's [`TokenCredential`].
///
/// ```ignore
/// let credential = azure_identity::ManagedIdentityCredential::new(None)?;
/// let provider = ServiceBusProvider::builder()
///     .with_namespace("<ns>.servicebus.windows.net".to_owned())
///     .with_token_credential(Arc::new(AzureCoreCredential::new(credential)))
///     .build()?;
/// ```
#[cfg(feature = "entra")]
#[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
#[derive(Clone, Debug)]
pub struct AzureCoreCredential(std::sync::Arc<dyn azure_core::credentials::TokenCredential>);

#[cfg(feature = "entra")]
impl AzureCoreCredential {
    /// Wraps an `azure_core` credential.
    pub fn new(credential: std::sync::Arc<dyn azure_core::credentials::TokenCredential>) -> Self {
        Self(credential)
    }
}

#[cfg(feature = "entra")]
#[async_trait]
impl TokenCredential for AzureCoreCredential {
    async fn get_token(&self, scopes: &[&str]) -> Result<AccessToken> {
        // The azure_core error may quote HTTP responses; it stays out of ours.
        let t = self
            .0
            .get_token(scopes, None)
            .await
            .map_err(|_| queue_core::QueueError::Auth {
                provider: crate::error::PROVIDER,
                operation: "get_token",
                kind: queue_core::AuthFailure::Authentication,
                detail: "the Microsoft Entra ID credential returned no token".to_owned(),
            })?;
        let secs = u64::try_from(t.expires_on.unix_timestamp()).unwrap_or(0);
        Ok(AccessToken::new(
            SecretString::from(t.token.secret().to_owned()),
            UNIX_EPOCH + Duration::from_secs(secs),
        ))
    }
}

#[cfg(all(test, feature = "entra"))]
mod entra_tests {
    use super::*;

    #[derive(Debug)]
    struct Fake(bool);

    #[async_trait]
    impl azure_core::credentials::TokenCredential for Fake {
        async fn get_token(
            &self,
            scopes: &[&str],
            _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            assert_eq!(scopes, [SERVICE_BUS_SCOPE]);
            if self.0 {
                return Err(azure_core::Error::new(
                    azure_core::error::ErrorKind::Credential,
                    "CANARY-inner-error",
                ));
            }
            Ok(azure_core::credentials::AccessToken::new(
                azure_core::credentials::Secret::new("CANARY-jwt"),
                azure_core::time::OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap(),
            ))
        }
    }

    #[tokio::test]
    async fn adapts_tokens_and_hides_errors() {
        let ok = AzureCoreCredential::new(std::sync::Arc::new(Fake(false)));
        let t = ok.get_token(&[SERVICE_BUS_SCOPE]).await.unwrap();
        assert_eq!(t.token.expose_secret(), "CANARY-jwt");
        assert_eq!(
            t.expires_on,
            UNIX_EPOCH + Duration::from_secs(2_000_000_000)
        );
        assert!(!format!("{t:?}").contains("CANARY"));
        let bad = AzureCoreCredential::new(std::sync::Arc::new(Fake(true)));
        let e = bad.get_token(&[SERVICE_BUS_SCOPE]).await.unwrap_err();
        assert!(matches!(e, queue_core::QueueError::Auth { .. }));
        assert!(!format!("{e} {e:?}").contains("CANARY"));
    }
}
