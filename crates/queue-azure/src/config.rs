//! Configuration: connection strings, credentials and the [`ServiceBusConfig`] builder.

use std::{fmt, sync::Arc, time::Duration};

use queue_core::{ExposeSecret, QueueError, Result, SecretString, ServiceBusSettings};

use crate::credential::TokenCredential;

/// Default AMQP port over TLS.
const AMQPS_PORT: u16 = 5671;
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

fn cs_err(reason: impl Into<String>) -> QueueError {
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

/// Configuration of a [`ServiceBusProvider`](crate::ServiceBusProvider).
///
/// Build it with [`ServiceBusConfig::builder`] or from a connection string. Its `Debug`
/// output never shows keys or tokens.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServiceBusConfig {
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

impl ServiceBusConfig {
    /// A builder with Service Bus standard-tier defaults.
    pub fn builder() -> ServiceBusConfigBuilder {
        ServiceBusConfigBuilder::default()
    }

    /// The configuration a connection string describes, with default limits.
    pub fn from_connection_string(text: &str) -> Result<Self> {
        Self::builder().with_connection_string(text).build()
    }
}

/// Builds a [`ServiceBusConfig`].
#[derive(Clone, Default)]
pub struct ServiceBusConfigBuilder {
    connection_string: Option<ConnectionString>,
    namespace: Option<String>,
    credential: Option<Credential>,
    sas_token_ttl: Option<Duration>,
    operation_timeout: Option<Duration>,
    max_message_size: Option<usize>,
    max_batch_size: Option<usize>,
    duplicate_detection: bool,
    reconnect_backoff: Option<Duration>,
    max_reconnect_backoff: Option<Duration>,
    receive_link_recycle: Option<u64>,
    transport: Transport,
    test_roots: Vec<Vec<u8>>,
    error: Option<String>,
}

impl fmt::Debug for ServiceBusConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusConfigBuilder")
            .field("connection_string", &self.connection_string)
            .field("namespace", &self.namespace)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl ServiceBusConfigBuilder {
    /// Uses a SAS connection string (parse errors surface from [`Self::build`]).
    pub fn with_connection_string(mut self, text: &str) -> Self {
        match ConnectionString::parse(text) {
            Ok(cs) => self.connection_string = Some(cs),
            Err(e) => self.error = Some(e.to_string()),
        }
        self
    }

    /// Uses a fully qualified namespace (`<name>.servicebus.windows.net`) with a token
    /// credential (Microsoft Entra ID).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Uses this credential (overrides the one of the connection string).
    pub fn with_credential(mut self, credential: Credential) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Uses a Microsoft Entra ID token source.
    pub fn with_token_credential(self, credential: Arc<dyn TokenCredential>) -> Self {
        self.with_credential(Credential::Token(credential))
    }

    /// Lifetime of the SAS tokens generated from a shared key (default 1 hour). Tokens are
    /// put again on `$cbs` when less than a fifth of this remains.
    pub fn with_sas_token_ttl(mut self, ttl: Duration) -> Self {
        self.sas_token_ttl = Some(ttl);
        self
    }

    /// The bound on every public operation (default 60 s, as in the Azure SDKs): a send,
    /// settlement, management call or `check_access` returns within it, with a transient
    /// `Timeout` or `Connection` error if the namespace cannot be reached. Receives and
    /// session accepts return within their own wait plus this.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = Some(timeout);
        self
    }

    /// Largest message, in bytes (default 256 KiB, the standard tier).
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// Most messages per batch (default 100).
    pub fn with_max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = Some(n);
        self
    }

    /// Declares that the queues have duplicate detection on (a per-queue setting on
    /// Service Bus; reported in [`Capabilities`](queue_core::Capabilities)).
    pub fn with_duplicate_detection(mut self, on: bool) -> Self {
        self.duplicate_detection = on;
        self
    }

    /// First delay between reconnect attempts after a connection loss (default 100 ms).
    /// The delay doubles after each failed attempt up to
    /// [`Self::with_max_reconnect_backoff`], and each delay is jittered down by up to a
    /// fifth so that many clients do not reconnect in step.
    pub fn with_reconnect_backoff(mut self, d: Duration) -> Self {
        self.reconnect_backoff = Some(d);
        self
    }

    /// Longest delay between reconnect attempts (default 5 s). Once the namespace is
    /// reachable again, the connection is back within this delay plus one connect.
    pub fn with_max_reconnect_backoff(mut self, d: Duration) -> Self {
        self.max_reconnect_backoff = Some(d);
        self
    }

    /// How frames travel: [`Transport::Amqp`] (default, TLS on port 5671) or
    /// [`Transport::AmqpWebSockets`] (port 443).
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// **For tests only.** Trusts `cert` (a CA certificate, PEM or DER) in addition to the
    /// public web PKI roots, so a test broker with a certificate from a test CA can be
    /// reached over TLS. Host names are still validated. There is deliberately no
    /// configuration-file or connection-string equivalent: production code has no reason
    /// to call this, and a deployment cannot turn it on by accident. An unreadable
    /// certificate fails [`Self::build`].
    pub fn dangerous_add_test_root_certificate(mut self, cert: &[u8]) -> Self {
        self.test_roots.push(cert.to_vec());
        self
    }

    /// Detaches a plain (non-session) receive link and attaches a new one once it has
    /// delivered `n` messages (default 5000, at least 1). `fe2o3-amqp` remembers every
    /// peek-locked delivery of a link until it is settled on that link, and settlement here
    /// goes through `$management`, so only a new link frees that memory. The link is
    /// recycled when none of its messages is still locked and unsettled, or regardless once
    /// it has delivered `2 * n` (detaching does not unlock them; they are settled by lock
    /// token). Session links are never recycled.
    pub fn with_receive_link_recycle(mut self, n: u64) -> Self {
        self.receive_link_recycle = Some(n);
        self
    }

    /// Validates and builds the configuration.
    pub fn build(self) -> Result<ServiceBusConfig> {
        if let Some(e) = self.error {
            return Err(cs_err(e));
        }
        let (endpoint, cs_credential, entity_path) =
            match (&self.connection_string, &self.namespace) {
                (Some(cs), _) => (
                    cs.endpoint()?,
                    Some(cs.credential.clone()),
                    cs.entity_path.clone(),
                ),
                (None, Some(ns)) => {
                    let ns = ns.trim().trim_start_matches("sb://").trim_end_matches('/');
                    if ns.is_empty() {
                        return Err(QueueError::config(
                            "service_bus.namespace",
                            "must not be empty",
                        ));
                    }
                    (
                        Endpoint {
                            host: ns.to_owned(),
                            port: AMQPS_PORT,
                            tls: true,
                            transport: Transport::Amqp,
                        },
                        None,
                        None,
                    )
                }
                (None, None) => {
                    return Err(QueueError::config(
                        "service_bus",
                        "set connection_string, or namespace with a token credential",
                    ));
                }
            };
        let mut endpoint = endpoint;
        if self.transport == Transport::AmqpWebSockets {
            endpoint.transport = Transport::AmqpWebSockets;
            let explicit = self.connection_string.as_ref().and_then(|c| c.port);
            endpoint.port = explicit.unwrap_or(if endpoint.tls { 443 } else { 80 });
        }
        let credential = self.credential.or(cs_credential).ok_or_else(|| {
            QueueError::config(
                "service_bus.namespace",
                "a namespace needs a credential (with_token_credential)",
            )
        })?;
        let sas_token_ttl = self.sas_token_ttl.unwrap_or(Duration::from_secs(3600));
        if sas_token_ttl < Duration::from_secs(2) {
            return Err(QueueError::config(
                "service_bus.sas_token_ttl",
                "must be at least 2 seconds",
            ));
        }
        Ok(ServiceBusConfig {
            endpoint,
            credential,
            entity_path,
            sas_token_ttl,
            operation_timeout: self.operation_timeout.unwrap_or(Duration::from_secs(60)),
            max_message_size: self.max_message_size.unwrap_or(256 * 1024),
            max_batch_size: self.max_batch_size.unwrap_or(100).max(1),
            max_lock_duration: Duration::from_secs(300),
            duplicate_detection: self.duplicate_detection,
            reconnect_backoff: self.reconnect_backoff.unwrap_or(Duration::from_millis(100)),
            max_reconnect_backoff: self.max_reconnect_backoff.unwrap_or(Duration::from_secs(5)),
            receive_link_recycle: self.receive_link_recycle.unwrap_or(5000).max(1),
            tls: crate::transport::tls_config(&self.test_roots)
                .map_err(|e| QueueError::config("service_bus.tls", e))?,
        })
    }
}

impl TryFrom<&ServiceBusSettings> for ServiceBusConfig {
    type Error = QueueError;

    fn try_from(s: &ServiceBusSettings) -> Result<Self> {
        let transport = match s.transport.as_deref().map(str::trim) {
            None | Some("amqp") => Transport::Amqp,
            Some("amqp-websockets") => Transport::AmqpWebSockets,
            Some(_) => {
                return Err(QueueError::config(
                    "service_bus.transport",
                    "expected \"amqp\" or \"amqp-websockets\"",
                ));
            }
        };
        match (&s.connection_string, &s.namespace) {
            (Some(cs), _) => Self::builder()
                .with_connection_string(cs.expose_secret())
                .with_transport(transport)
                .build(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "CANARY-k3y-5b1d";

    #[test]
    fn settings_choose_the_transport() {
        let mut settings = ServiceBusSettings::default();
        settings.connection_string = Some(SecretString::from(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b"
                .to_owned(),
        ));
        let plain = ServiceBusConfig::try_from(&settings).unwrap();
        assert_eq!(
            (plain.endpoint.transport, plain.endpoint.port),
            (Transport::Amqp, 5671)
        );
        settings.transport = Some("amqp-websockets".into());
        let ws = ServiceBusConfig::try_from(&settings).unwrap();
        assert_eq!(
            (ws.endpoint.transport, ws.endpoint.port),
            (Transport::AmqpWebSockets, 443)
        );
        settings.transport = Some("carrier-pigeon".into());
        let e = ServiceBusConfig::try_from(&settings).unwrap_err();
        assert!(e.to_string().contains("transport"), "{e}");
    }

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
        let builder = ServiceBusConfig::builder().with_connection_string(&text);
        let cfg = builder.clone().build().unwrap();
        let sas = Credential::SasToken(SecretString::from(CANARY));
        let settings = ServiceBusSettings::default();
        let _ = settings;
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

    #[test]
    fn from_settings_requires_something_usable() {
        let err = ServiceBusConfig::try_from(&ServiceBusSettings::default()).unwrap_err();
        assert!(matches!(err, QueueError::Config { .. }));
    }
}
