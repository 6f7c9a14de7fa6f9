//! [`ServiceBusSettings`]: the Service Bus provider's settings as written in a
//! configuration file.

use std::fmt;

use queue_core::{
    ExposeSecret, ProviderSettings, QueueError, Result, SecretString, TypedSettings,
    config::{optional_secret, redacted},
};
use serde::Deserialize;

use crate::{ServiceBusBuilder, ServiceBusProvider, Transport, error::PROVIDER};

/// Settings of the Service Bus provider (`kind = "service-bus"` in the `provider` table),
/// read from [`ProviderSettings`] with [`ServiceBusSettings::from_provider_settings`].
///
/// A configuration file can only carry a connection string; a namespace with a Microsoft
/// Entra ID credential is built in code ([`ServiceBusBuilder::with_namespace`] and
/// [`ServiceBusBuilder::with_token_credential`]).
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceBusSettings {
    /// A SAS connection string (`Endpoint=...;SharedAccessKeyName=...;SharedAccessKey=...`).
    #[serde(deserialize_with = "optional_secret")]
    pub connection_string: Option<SecretString>,
    /// Fully qualified namespace, for Microsoft Entra ID credentials
    /// (`<name>.servicebus.windows.net`).
    pub namespace: Option<String>,
    /// `"amqp"` (default: TLS on port 5671) or `"amqp-websockets"` (port 443).
    pub transport: Option<String>,
}

impl TypedSettings for ServiceBusSettings {
    const KIND: &'static str = PROVIDER;
}

impl ServiceBusSettings {
    /// The keys that hold secrets (taken verbatim from environment variables).
    pub const SECRET_KEYS: [&'static str; 1] = ["connection_string"];

    /// Reads the settings of a `kind = "service-bus"` provider table. Errors name the key as
    /// written (`provider.conection_string`) and never quote a value.
    pub fn from_provider_settings(settings: &ProviderSettings) -> Result<Self> {
        settings.parse()
    }
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

impl ServiceBusBuilder {
    /// A builder set from configuration-file settings; further `with_*` calls may adjust it.
    ///
    /// Needs `connection_string`: a `namespace` alone needs a token credential, which only
    /// code can give ([`ServiceBusBuilder::with_token_credential`]).
    pub fn from_settings(settings: &ServiceBusSettings) -> Result<Self> {
        let transport = match settings.transport.as_deref().map(str::trim) {
            None | Some("amqp") => Transport::Amqp,
            Some("amqp-websockets") => Transport::AmqpWebSockets,
            Some(_) => {
                return Err(QueueError::config(
                    "service_bus.transport",
                    "expected \"amqp\" or \"amqp-websockets\"",
                ));
            }
        };
        match (&settings.connection_string, &settings.namespace) {
            (Some(cs), _) => Ok(Self::default()
                .with_connection_string(cs.expose_secret())
                .with_transport(transport)),
            (None, Some(_)) => Err(QueueError::config(
                "service_bus.namespace",
                "a namespace alone needs a token credential: build the provider with \
                 ServiceBusProvider::builder().with_namespace(..).with_token_credential(..)",
            )),
            (None, None) => Err(QueueError::config(
                "service_bus.connection_string",
                "missing (set connection_string)",
            )),
        }
    }
}

impl ServiceBusProvider {
    /// A provider from configuration-file settings (see [`ServiceBusBuilder::from_settings`]).
    /// No connection is made until the first call.
    pub fn from_settings(settings: &ServiceBusSettings) -> Result<Self> {
        ServiceBusBuilder::from_settings(settings)?.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "CANARY-sb-settings-9e07";

    fn config(settings: &ServiceBusSettings) -> Result<crate::config::ServiceBusConfig> {
        ServiceBusBuilder::from_settings(settings)?.into_config()
    }

    #[test]
    fn settings_choose_the_transport() {
        let mut settings = ServiceBusSettings {
            connection_string: Some(SecretString::from(
                "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b"
                    .to_owned(),
            )),
            ..ServiceBusSettings::default()
        };
        let plain = config(&settings).unwrap();
        assert_eq!(
            (plain.endpoint.transport, plain.endpoint.port),
            (Transport::Amqp, 5671)
        );
        settings.transport = Some("amqp-websockets".into());
        let ws = config(&settings).unwrap();
        assert_eq!(
            (ws.endpoint.transport, ws.endpoint.port),
            (Transport::AmqpWebSockets, 443)
        );
        settings.transport = Some("carrier-pigeon".into());
        let e = config(&settings).unwrap_err();
        assert!(e.to_string().contains("transport"), "{e}");
    }

    #[test]
    fn from_settings_requires_something_usable() {
        let err = ServiceBusProvider::from_settings(&ServiceBusSettings::default()).unwrap_err();
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "service_bus.connection_string"),
            "{err}"
        );
        let settings = ServiceBusSettings {
            namespace: Some("ns.servicebus.windows.net".into()),
            ..ServiceBusSettings::default()
        };
        let err = ServiceBusProvider::from_settings(&settings).unwrap_err();
        assert!(err.to_string().contains("token credential"), "{err}");
    }

    #[test]
    fn settings_parse_from_the_provider_table_and_redact_secrets() {
        let table: ProviderSettings = serde_json::from_str(&format!(
            r#"{{"kind":"service-bus","connection_string":"{CANARY}","transport":"amqp"}}"#
        ))
        .unwrap();
        let s = ServiceBusSettings::from_provider_settings(&table).unwrap();
        assert_eq!(
            s.connection_string.as_ref().unwrap().expose_secret(),
            CANARY
        );
        for text in [format!("{s:?}"), format!("{s:#?}"), format!("{table:?}")] {
            assert!(!text.contains(CANARY), "secret leaked: {text}");
        }
        let table: ProviderSettings =
            serde_json::from_str(r#"{"kind":"service-bus","connection_string":42}"#).unwrap();
        let s = ServiceBusSettings::from_provider_settings(&table).unwrap();
        assert_eq!(s.connection_string.unwrap().expose_secret(), "42");
        let table: ProviderSettings = serde_json::from_str(&format!(
            r#"{{"kind":"service-bus","connection_string":["{CANARY}"]}}"#
        ))
        .unwrap();
        let err = ServiceBusSettings::from_provider_settings(&table).unwrap_err();
        assert!(!format!("{err} {err:?}").contains(CANARY), "{err}");
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "provider.connection_string"),
            "{err}"
        );
    }
}
