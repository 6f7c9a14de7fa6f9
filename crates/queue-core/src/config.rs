//! Provider settings that parse whatever providers this build contains.
//!
//! Every variant is always compiled, so one configuration file parses in every build; the
//! umbrella crate refuses, with a clear error, to construct a provider whose feature is off.
//! Secret fields are [`SecretString`]: they deserialize, but never serialize or print. A secret
//! written as a number or a boolean (`secret_access_key = 12345678901234`) is taken as its
//! string form, and a mistyped secret (a table, a list) is refused without quoting it.

use std::fmt;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, de};

/// Which provider to use and how to reach it.
#[derive(Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ProviderSettings {
    /// The in-memory provider.
    Memory(MemorySettings),
    /// AWS SQS.
    Sqs(SqsSettings),
    /// Azure Service Bus.
    ServiceBus(ServiceBusSettings),
}

impl ProviderSettings {
    /// The provider id these settings are for.
    pub fn provider_name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Sqs(_) => "sqs",
            Self::ServiceBus(_) => "service-bus",
        }
    }
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self::Memory(MemorySettings::default())
    }
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(s) => f.debug_tuple("Memory").field(s).finish(),
            Self::Sqs(s) => f.debug_tuple("Sqs").field(s).finish(),
            Self::ServiceBus(s) => f.debug_tuple("ServiceBus").field(s).finish(),
        }
    }
}

/// Settings of the in-memory provider.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemorySettings {
    /// Which provider's limits to imitate: `"memory"` (default), `"sqs"` or `"service-bus"`.
    pub profile: Option<String>,
}

impl fmt::Debug for MemorySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySettings")
            .field("profile", &self.profile)
            .finish()
    }
}

/// Settings of the SQS provider.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SqsSettings {
    /// AWS region; the default chain decides when unset.
    pub region: Option<String>,
    /// Endpoint override (emulators). Plain `http://` only for loopback hosts.
    pub endpoint: Option<String>,
    /// Named profile for the default credential chain.
    pub profile: Option<String>,
    /// Static access key id (prefer roles); needs `secret_access_key`.
    #[serde(deserialize_with = "secret_field::access_key_id")]
    pub access_key_id: Option<SecretString>,
    /// Static secret access key.
    #[serde(deserialize_with = "secret_field::secret_access_key")]
    pub secret_access_key: Option<SecretString>,
    /// Session token for temporary static credentials.
    #[serde(deserialize_with = "secret_field::session_token")]
    pub session_token: Option<SecretString>,
}

impl fmt::Debug for SqsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsSettings")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("profile", &self.profile)
            .field("access_key_id", &redacted(&self.access_key_id))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .finish_non_exhaustive()
    }
}

/// Settings of the Service Bus provider.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceBusSettings {
    /// A SAS connection string (`Endpoint=...;SharedAccessKeyName=...;SharedAccessKey=...`).
    #[serde(deserialize_with = "secret_field::connection_string")]
    pub connection_string: Option<SecretString>,
    /// Fully qualified namespace, for Microsoft Entra ID credentials
    /// (`<name>.servicebus.windows.net`).
    pub namespace: Option<String>,
    /// `"amqp"` (default: TLS on port 5671) or `"amqp-websockets"` (port 443).
    pub transport: Option<String>,
}

impl fmt::Debug for ServiceBusSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusSettings")
            .field("connection_string", &redacted(&self.connection_string))
            .field("namespace", &self.namespace)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// What `Debug` shows for an optional secret.
pub(crate) fn redacted(secret: &Option<SecretString>) -> &'static str {
    if secret.is_some() {
        "<redacted>"
    } else {
        "<unset>"
    }
}

/// Deserializes an optional secret from a string, an integer, a float or a boolean (taken as
/// its string form; a float as Rust prints it, so write secrets with significant zeros as
/// strings). Any other type is an error that names the type, never the value.
///
/// The error names the field (`secret field `connection_string`: invalid type: map, ...`):
/// internally tagged enums such as [`ProviderSettings`] lose the key otherwise.
fn de_secret<'de, D: Deserializer<'de>>(
    d: D,
    field: &str,
) -> Result<Option<SecretString>, D::Error> {
    Option::<LenientSecret>::deserialize(d)
        .map(|s| s.map(|s| s.0))
        .map_err(|e| de::Error::custom(format_args!("secret field `{field}`: {e}")))
}

/// One `deserialize_with` function per secret field, so errors can name it.
mod secret_field {
    use super::{Deserializer, SecretString, de_secret};

    macro_rules! fields {
        ($($name:ident),*) => {$(
            pub(super) fn $name<'de, D: Deserializer<'de>>(
                d: D,
            ) -> Result<Option<SecretString>, D::Error> {
                de_secret(d, stringify!($name))
            }
        )*};
    }

    fields!(
        access_key_id,
        secret_access_key,
        session_token,
        connection_string
    );
}

/// A secret read from any scalar.
struct LenientSecret(SecretString);

impl<'de> Deserialize<'de> for LenientSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor).map(Self)
    }
}

/// Accepts every scalar as a string; the default methods refuse the rest with
/// `invalid type: map` (or `sequence`, ...), which quotes no value.
struct SecretVisitor;

impl de::Visitor<'_> for SecretVisitor {
    type Value = SecretString;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret (a string, number or boolean)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretString, E> {
        Ok(SecretString::from(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<SecretString, E> {
        Ok(SecretString::from(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "CANARY-5ec4e7-do-not-print";

    fn secret() -> Option<SecretString> {
        Some(SecretString::from(CANARY))
    }

    #[test]
    fn every_settings_type_redacts_its_secrets() {
        let sqs = SqsSettings {
            access_key_id: secret(),
            secret_access_key: secret(),
            session_token: secret(),
            ..Default::default()
        };
        let sb = ServiceBusSettings {
            connection_string: secret(),
            ..Default::default()
        };
        let printed = [
            format!("{sqs:?}"),
            format!("{sqs:#?}"),
            format!("{sb:?}"),
            format!("{:?}", ProviderSettings::Sqs(sqs.clone())),
            format!("{:?}", ProviderSettings::ServiceBus(sb.clone())),
            format!("{:?}", ProviderSettings::Memory(MemorySettings::default())),
        ];
        for text in printed {
            assert!(!text.contains(CANARY), "secret leaked: {text}");
        }
    }

    #[test]
    fn settings_parse_from_json_and_reject_unknown_fields() {
        let s: ProviderSettings = serde_json::from_str(&format!(
            r#"{{"kind":"service-bus","connection_string":"{CANARY}"}}"#
        ))
        .unwrap();
        assert_eq!(s.provider_name(), "service-bus");
        let err = serde_json::from_str::<ProviderSettings>(r#"{"kind":"sqs","regoin":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("regoin"), "{err}");
    }

    #[test]
    fn numeric_and_boolean_secrets_are_taken_as_strings() {
        use secrecy::ExposeSecret;
        let s: ProviderSettings = serde_json::from_str(
            r#"{"kind":"sqs","access_key_id":12345678901234,"secret_access_key":true,"session_token":-7}"#,
        )
        .unwrap();
        let ProviderSettings::Sqs(sqs) = s else {
            panic!("not sqs")
        };
        assert_eq!(sqs.access_key_id.unwrap().expose_secret(), "12345678901234");
        assert_eq!(sqs.secret_access_key.unwrap().expose_secret(), "true");
        assert_eq!(sqs.session_token.unwrap().expose_secret(), "-7");
        let s: ProviderSettings =
            serde_json::from_str(r#"{"kind":"service-bus","connection_string":null}"#).unwrap();
        assert!(matches!(s, ProviderSettings::ServiceBus(sb) if sb.connection_string.is_none()));
    }

    #[test]
    fn a_mistyped_secret_is_refused_without_its_value() {
        let err = serde_json::from_str::<ProviderSettings>(&format!(
            r#"{{"kind":"sqs","secret_access_key":{{"k":"{CANARY}"}}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("secret field `secret_access_key`"), "{err}");
        assert!(err.contains("invalid type: map"), "{err}");
        assert!(!err.contains(CANARY), "{err}");
    }
}
