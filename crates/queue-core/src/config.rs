//! Provider settings that parse whatever providers this build contains.
//!
//! Every variant is always compiled, so one configuration file parses in every build; the
//! umbrella crate refuses, with a clear error, to construct a provider whose feature is off.
//! Secret fields are [`SecretString`]: they deserialize, but never serialize or print.

use std::fmt;

use secrecy::SecretString;
use serde::Deserialize;

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
    pub access_key_id: Option<SecretString>,
    /// Static secret access key.
    pub secret_access_key: Option<SecretString>,
    /// Session token for temporary static credentials.
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
}
