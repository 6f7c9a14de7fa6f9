//! [`ServiceBusBuilder`]: the one way to build a [`ServiceBusProvider`].

use std::{fmt, sync::Arc, time::Duration};

use queue_core::{QueueError, Result};

use crate::{
    ServiceBusProvider,
    config::{
        AMQPS_PORT, ConnectionString, Credential, Endpoint, ServiceBusConfig, Transport, cs_err,
    },
    credential::TokenCredential,
};

/// Builds a [`ServiceBusProvider`]: `ServiceBusProvider::builder()`, `with_*` setters, then
/// [`build`](ServiceBusBuilder::build). Building validates everything and makes no
/// connection (the first call connects), so `build` is not async. From a configuration
/// file's settings, start with [`ServiceBusBuilder::from_settings`]. `Debug` never shows
/// keys or tokens.
///
/// ```
/// use queue_azure::ServiceBusProvider;
///
/// let provider = ServiceBusProvider::builder()
///     .with_connection_string(
///         "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey=k",
///     )
///     .with_operation_timeout(std::time::Duration::from_secs(30))
///     .build()?;
/// # let _ = provider;
/// # Ok::<(), queue_core::QueueError>(())
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct ServiceBusBuilder {
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

impl fmt::Debug for ServiceBusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusBuilder")
            .field("connection_string", &self.connection_string)
            .field("namespace", &self.namespace)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl ServiceBusBuilder {
    /// Uses a SAS connection string (parse errors surface from [`Self::build`], never quoting the key).
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

    /// Validates the settings and builds the provider. No connection is made until the
    /// first call.
    ///
    /// Fails with [`QueueError::Config`] naming the field (`service_bus.connection_string`,
    /// `service_bus.namespace`, ...) when the connection string does not parse, when neither
    /// a connection string nor a namespace with a credential is set, or when a value is out
    /// of range. Errors never quote keys or tokens.
    pub fn build(self) -> Result<ServiceBusProvider> {
        Ok(ServiceBusProvider::new(self.into_config()?))
    }

    /// The validated configuration.
    pub(crate) fn into_config(self) -> Result<ServiceBusConfig> {
        if let Some(e) = &self.error {
            return Err(cs_err(e.clone()));
        }
        let (endpoint, credential, entity_path) = self.endpoint_and_credential()?;
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

    /// Where to connect, with which credential, and the connection string's entity path.
    fn endpoint_and_credential(&self) -> Result<(Endpoint, Credential, Option<String>)> {
        let (mut endpoint, cs_credential, entity_path) =
            match (&self.connection_string, &self.namespace) {
                (Some(cs), _) => (
                    cs.endpoint()?,
                    Some(cs.credential.clone()),
                    cs.entity_path.clone(),
                ),
                (None, Some(ns)) => (namespace_endpoint(ns)?, None, None),
                (None, None) => {
                    return Err(QueueError::config(
                        "service_bus",
                        "set connection_string, or namespace with a token credential",
                    ));
                }
            };
        if self.transport == Transport::AmqpWebSockets {
            endpoint.transport = Transport::AmqpWebSockets;
            let explicit = self.connection_string.as_ref().and_then(|c| c.port);
            endpoint.port = explicit.unwrap_or(if endpoint.tls { 443 } else { 80 });
        }
        let credential = self.credential.clone().or(cs_credential).ok_or_else(|| {
            QueueError::config(
                "service_bus.namespace",
                "a namespace needs a credential (with_token_credential)",
            )
        })?;
        Ok((endpoint, credential, entity_path))
    }
}

/// The TLS endpoint of a fully qualified namespace (`sb://` and a trailing `/` allowed).
fn namespace_endpoint(namespace: &str) -> Result<Endpoint> {
    let ns = namespace
        .trim()
        .trim_start_matches("sb://")
        .trim_end_matches('/');
    if ns.is_empty() {
        return Err(QueueError::config(
            "service_bus.namespace",
            "must not be empty",
        ));
    }
    Ok(Endpoint {
        host: ns.to_owned(),
        port: AMQPS_PORT,
        tls: true,
        transport: Transport::Amqp,
    })
}
