//! Configuration: connection strings, credentials, transports and the validated
//! configuration a [`ServiceBusBuilder`](crate::ServiceBusBuilder) produces.

use std::{fmt, sync::Arc, time::Duration};

use queue_core::{ExposeSecret, QueueError, Result, SecretString};

use crate::credential::TokenCredential;

/// Default AMQP port over TLS.
pub(crate) const AMQPS_PORT: u16 = 5671;
/// Default plain AMQP port of the local development emulator.
const EMULATOR_PORT: u16 = 5672;

/// How the provider proves who it is to the namespace.
#[derive(Clone)]
#[non_exhaustive]
pub enum Credential {
    /// A shared access key: SAS tokens are generated and refreshed from it.
    SharedKey {
        /// Name of the shared access policy.
        key_name: String,
        /// The key (never printed).
        key: SecretString,
    },
    /// A ready-made SAS token (`SharedAccessSignature sr=..`). It cannot be refreshed: once
    /// it expires, calls fail with an authentication error.
    SasToken(SecretString),
    /// A Microsoft Entra ID token source (JWT bearer tokens, refreshed before expiry).
    Token(Arc<dyn TokenCredential>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SharedKey { key_name, .. } => f
                .debug_struct("SharedKey")
                .field("key_name", key_name)
                .field("key", &"<redacted>")
                .finish(),
            Self::SasToken(_) => f.debug_tuple("SasToken").field(&"<redacted>").finish(),
            Self::Token(c) => f.debug_tuple("Token").field(c).finish(),
        }
    }
}

/// Where the namespace is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Host name (`<ns>.servicebus.windows.net`, or a loopback host for the emulator).
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
    /// TLS (always, except for the loopback development emulator).
    pub(crate) tls: bool,
    /// AMQP straight over TCP (port 5671), or over WebSockets.
    pub(crate) transport: Transport,
}

/// How AMQP frames travel to the namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// AMQP over TCP: TLS on port 5671 (plaintext 5672 for the local emulator).
    #[default]
    Amqp,
    /// AMQP over WebSockets (`wss://<host>:443/$servicebus/websocket`), for networks that
    /// only let HTTPS out.
    AmqpWebSockets,
}

/// A parsed Service Bus connection string. Its `Debug` never shows the key or token.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectionString {
    /// Host of the `Endpoint=sb://<host>[:port]/` part.
    pub host: String,
    /// Port given in the endpoint, if any.
    pub port: Option<u16>,
    /// `EntityPath`, if the string is scoped to one queue.
    pub entity_path: Option<String>,
    /// `UseDevelopmentEmulator=true`.
    pub use_development_emulator: bool,
    /// The credential the string carries.
    pub credential: Credential,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("entity_path", &self.entity_path)
            .field("use_development_emulator", &self.use_development_emulator)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

pub(crate) fn cs_err(reason: impl Into<String>) -> QueueError {
    QueueError::config("service_bus.connection_string", reason)
}

impl ConnectionString {
    /// Parses `Endpoint=sb://..;SharedAccessKeyName=..;SharedAccessKey=..` (or
    /// `SharedAccessSignature=..` instead of the key pair), with optional `EntityPath` and
    /// `UseDevelopmentEmulator=true`. Errors never quote the key or the token.
    pub fn parse(text: &str) -> Result<Self> {
        // The one strict parser (also the fuzz target's): a key given twice, an unknown
        // key, an empty host or a malformed port is an error, never silently resolved.
        let parsed =
            queue_security::ServiceBusConnectionString::parse(&SecretString::from(text.to_owned()))
                .map_err(|e| cs_err(e.to_string()))?;
        let (host, port) = (parsed.host, parsed.port);
        let (key_name, key, sas) = (parsed.key_name, parsed.key, parsed.signature);
        let (entity, emulator) = (parsed.entity_path, parsed.use_development_emulator);
        let credential = match (key_name, key, sas) {
            (Some(key_name), Some(key), None) => {
                if key_name.is_empty() || key.expose_secret().is_empty() {
                    return Err(cs_err(
                        "SharedAccessKeyName and SharedAccessKey must not be empty",
                    ));
                }
                Credential::SharedKey { key_name, key }
            }
            (None, None, Some(sas)) => Credential::SasToken(sas),
            (_, _, Some(_)) => {
                return Err(cs_err(
                    "give either SharedAccessSignature or SharedAccessKeyName with SharedAccessKey, not both",
                ));
            }
            _ => {
                return Err(cs_err(
                    "SharedAccessKeyName and SharedAccessKey (or SharedAccessSignature) are required",
                ));
            }
        };
        Ok(Self {
            host,
            port,
            entity_path: entity.filter(|e| !e.is_empty()),
            use_development_emulator: emulator,
            credential,
        })
    }

    /// Where to connect, enforcing TLS except for a loopback development emulator.
    pub(crate) fn endpoint(&self) -> Result<Endpoint> {
        if self.use_development_emulator {
            if !is_loopback(&self.host) {
                return Err(cs_err(
                    "UseDevelopmentEmulator=true is only accepted for loopback hosts (localhost, 127.0.0.1, ::1)",
                ));
            }
            return Ok(Endpoint {
                host: self.host.clone(),
                port: self.port.unwrap_or(EMULATOR_PORT),
                tls: false,
                transport: Transport::Amqp,
            });
        }
        // Namespaces listen on 5671; an explicit port (a TLS-terminating proxy, a test
        // broker) is honoured, but never without TLS.
        Ok(Endpoint {
            host: self.host.clone(),
            port: self.port.unwrap_or(AMQPS_PORT),
            tls: true,
            transport: Transport::Amqp,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The validated configuration of a [`ServiceBusProvider`](crate::ServiceBusProvider),
/// made by [`ServiceBusBuilder`](crate::ServiceBusBuilder). Its `Debug` output never shows
/// keys or tokens.
#[derive(Clone)]
pub(crate) struct ServiceBusConfig {
    pub(crate) endpoint: Endpoint,
    pub(crate) credential: Credential,
    pub(crate) entity_path: Option<String>,
    pub(crate) sas_token_ttl: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) max_message_size: usize,
    pub(crate) max_batch_size: usize,
    pub(crate) max_lock_duration: Duration,
    pub(crate) duplicate_detection: bool,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) max_reconnect_backoff: Duration,
    /// Deliveries after which a plain receive link is detached and attached again.
    pub(crate) receive_link_recycle: u64,
    /// The TLS client configuration (web PKI roots, plus test-only roots if any).
    pub(crate) tls: std::sync::Arc<rustls::ClientConfig>,
}

impl fmt::Debug for ServiceBusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusConfig")
            .field("host", &self.endpoint.host)
            .field("port", &self.endpoint.port)
            .field("tls", &self.endpoint.tls)
            .field("credential", &self.credential)
            .field("entity_path", &self.entity_path)
            .field("sas_token_ttl", &self.sas_token_ttl)
            .field("operation_timeout", &self.operation_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("max_batch_size", &self.max_batch_size)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "CANARY-k3y-5b1d";

    #[test]
    fn duplicate_keys_empty_hosts_and_stray_ports_are_errors() {
        for bad in [
            "Endpoint=sb://a/;Endpoint=sb://b/;SharedAccessKeyName=k;SharedAccessKey=CANARY",
            "Endpoint=sb://a/;SharedAccessKeyName=k;SharedAccessKey=x;SharedAccessKey=CANARY",
            "Endpoint=sb://:5671/;SharedAccessKeyName=k;SharedAccessKey=CANARY",
            "Endpoint=sb://host:5671:1/;SharedAccessKeyName=k;SharedAccessKey=CANARY",
            "Endpoint=sb://host:/;SharedAccessKeyName=k;SharedAccessKey=CANARY",
        ] {
            let err = ConnectionString::parse(bad).expect_err(bad);
            assert!(!err.to_string().contains("CANARY"), "{bad}: {err}");
        }
        let cs = ConnectionString::parse(
            "Endpoint=sb://h:7000/;SharedAccessKeyName=k;SharedAccessKey=v",
        )
        .unwrap();
        assert_eq!(cs.port, Some(7000));
    }

    #[test]
    fn parses_shared_key_strings() {
        let cs = ConnectionString::parse(&format!(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={CANARY};EntityPath=orders"
        ))
        .unwrap();
        assert_eq!(cs.host, "ns.servicebus.windows.net");
        assert_eq!(cs.entity_path.as_deref(), Some("orders"));
        let ep = cs.endpoint().unwrap();
        assert_eq!((ep.port, ep.tls), (5671, true));
        match &cs.credential {
            Credential::SharedKey { key_name, key } => {
                assert_eq!(key_name, "Root");
                assert_eq!(key.expose_secret(), CANARY);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_sas_token_strings() {
        let cs = ConnectionString::parse(&format!(
            "Endpoint=sb://ns.servicebus.windows.net;SharedAccessSignature=SharedAccessSignature sr=x&sig={CANARY}&se=1"
        ))
        .unwrap();
        assert!(matches!(cs.credential, Credential::SasToken(_)));
    }

    #[test]
    fn emulator_only_on_loopback_and_plain_port() {
        let ok = ConnectionString::parse(
            "Endpoint=sb://127.0.0.1:6000;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
        )
        .unwrap();
        assert_eq!(
            ok.endpoint().unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 6000,
                tls: false,
                transport: Transport::Amqp,
            }
        );
        let default_port = ConnectionString::parse(
            "Endpoint=sb://localhost;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
        )
        .unwrap();
        assert_eq!(default_port.endpoint().unwrap().port, 5672);
        let v6 = ConnectionString::parse(
            "Endpoint=sb://[::1]:7000;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
        )
        .unwrap();
        assert_eq!(v6.endpoint().unwrap().port, 7000);
        let remote = ConnectionString::parse(
            "Endpoint=sb://ns.servicebus.windows.net;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
        )
        .unwrap();
        let err = remote.endpoint().unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
        // Without the emulator flag a loopback host still gets TLS, on the port it names.
        let tls = ConnectionString::parse(
            "Endpoint=sb://127.0.0.1:6000;SharedAccessKeyName=a;SharedAccessKey=b",
        )
        .unwrap();
        assert_eq!(tls.endpoint().unwrap().port, 6000);
        assert!(tls.endpoint().unwrap().tls);
        let namespace = ConnectionString::parse(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b",
        )
        .unwrap();
        assert_eq!(namespace.endpoint().unwrap().port, 5671);
        assert!(namespace.endpoint().unwrap().tls);
    }

    #[test]
    fn bad_strings_are_typed_errors_without_secrets() {
        for bad in [
            format!("SharedAccessKeyName=a;SharedAccessKey={CANARY}"),
            format!("Endpoint=https://x;SharedAccessKeyName=a;SharedAccessKey={CANARY}"),
            format!("Endpoint=sb://x;SharedAccessKey={CANARY}"),
            format!("Endpoint=sb://x;Bogus{CANARY}=1;SharedAccessKeyName=a;SharedAccessKey=b"),
            format!("Endpoint=sb://x;{CANARY}"),
            format!(
                "Endpoint=sb://x;SharedAccessKeyName=a;SharedAccessKey={CANARY};SharedAccessSignature={CANARY}"
            ),
            format!("Endpoint=sb://x:notaport;SharedAccessKeyName=a;SharedAccessKey={CANARY}"),
        ] {
            let err = ConnectionString::parse(&bad).unwrap_err();
            assert!(matches!(err, QueueError::Config { .. }), "{err:?}");
            assert!(!err.to_string().contains(CANARY), "{err}");
            assert!(!format!("{err:?}").contains(CANARY), "{err:?}");
        }
    }

    #[test]
    fn debug_of_every_config_type_redacts_canary() {
        let text = format!(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={CANARY}"
        );
        let cs = ConnectionString::parse(&text).unwrap();
        let builder = crate::ServiceBusProvider::builder().with_connection_string(&text);
        let cfg = builder.clone().into_config().unwrap();
        let sas = Credential::SasToken(SecretString::from(CANARY));
        for printed in [
            format!("{cs:?}"),
            format!("{cs:#?}"),
            format!("{builder:?}"),
            format!("{cfg:?}"),
            format!("{cfg:#?}"),
            format!("{sas:?}"),
        ] {
            assert!(!printed.contains(CANARY), "secret leaked: {printed}");
        }
        assert!(format!("{cfg:?}").contains("ns.servicebus.windows.net"));
    }
}
