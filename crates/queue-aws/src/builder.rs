//! Building the SQS provider: [`SqsBuilder`] and [`StaticCredentials`].

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use queue_core::{ExposeSecret, QueueError, Result, SecretString};

use crate::provider::SqsProvider;

/// Static AWS credentials, held as secrets.
///
/// Prefer the default credential chain (IAM roles for EC2/ECS/EKS, web identity, SSO
/// profiles): static keys are for tests, emulators and places without roles. `Debug`
/// never prints the values.
#[derive(Clone)]
pub struct StaticCredentials {
    access_key_id: SecretString,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
}

impl StaticCredentials {
    /// An access key id and its secret access key.
    pub fn new(access_key_id: SecretString, secret_access_key: SecretString) -> Self {
        Self {
            access_key_id,
            secret_access_key,
            session_token: None,
        }
    }

    /// Adds the session token of temporary credentials.
    pub fn with_session_token(mut self, token: SecretString) -> Self {
        self.session_token = Some(token);
        self
    }

    pub(crate) fn to_sdk(&self) -> aws_sdk_sqs::config::Credentials {
        aws_sdk_sqs::config::Credentials::new(
            self.access_key_id.expose_secret(),
            self.secret_access_key.expose_secret(),
            self.session_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            None,
            "queue-runtime-static",
        )
    }
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &if self.session_token.is_some() {
                    "<redacted>"
                } else {
                    "<unset>"
                },
            )
            .finish_non_exhaustive()
    }
}

/// Builds an [`SqsProvider`]: `SqsProvider::builder()`, `with_*` setters, then
/// [`build`](SqsBuilder::build) (async: it resolves the default AWS chain). From a
/// configuration file's settings, start with [`SqsBuilder::from_settings`].
///
/// ```no_run
/// use queue_aws::SqsProvider;
/// # async fn demo() -> queue_core::Result<()> {
/// let provider = SqsProvider::builder()
///     .with_region("eu-west-1")
///     .build()
///     .await?;
/// # let _ = provider; Ok(()) }
/// ```
///
/// Unset values come from the default AWS configuration chain (environment, shared
/// profile files, IAM roles for EC2/ECS/EKS, web identity). `Debug` never prints
/// credentials.
#[derive(Clone)]
pub struct SqsBuilder {
    pub(crate) region: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) credentials: Option<StaticCredentials>,
    pub(crate) content_based_deduplication: bool,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) operation_timeout: Duration,
}

impl Default for SqsBuilder {
    fn default() -> Self {
        Self {
            region: None,
            endpoint: None,
            profile: None,
            credentials: None,
            content_based_deduplication: false,
            max_attempts: None,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
        }
    }
}

/// Default deadline of one SQS call, retries included: above the 20 s long-poll maximum.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

impl SqsBuilder {
    /// A builder with nothing set (everything from the default AWS chain); the same as
    /// [`SqsProvider::builder`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the AWS region (`us-east-1`...).
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Overrides the endpoint, e.g. `http://127.0.0.1:5000` for a local emulator.
    /// Plain `http://` is accepted only for loopback hosts; see [`SqsBuilder::build`].
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Uses this named profile of the shared AWS config files.
    pub fn with_profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// Uses static credentials instead of the default chain.
    pub fn with_credentials(mut self, credentials: StaticCredentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// On FIFO queues, lets SQS de-duplicate messages that carry no message id by a hash
    /// of their body (the queue needs `ContentBasedDeduplication`, which
    /// [`create_queue`](queue_core::QueueProvider::create_queue) then sets). Off by
    /// default: a message without an id gets a random one, which is also its
    /// de-duplication id.
    pub fn with_content_based_deduplication(mut self, on: bool) -> Self {
        self.content_based_deduplication = on;
        self
    }

    /// Attempts the SDK makes per call on throttling and 5xx answers (default 1: the SDK
    /// does not retry; the `Retrying` layer of `queue_core::layer` does, the same way on
    /// every provider). Set it only for a provider used without that layer.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Deadline of one SQS call, retries included (default 60 s; must exceed 20 s so
    /// long polls fit).
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The region, if set.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The endpoint override, if set.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Checks the settings and connects the provider (resolving the default chain).
    ///
    /// Fails with [`QueueError::Config`] naming the field when the endpoint is not
    /// `https://` (or plain `http://` to `localhost`, `127.0.0.0/8` or `[::1]`), when the
    /// region is malformed, or when no region can be found.
    pub async fn build(self) -> Result<SqsProvider> {
        SqsProvider::connect(self).await
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(region) = &self.region {
            validate_region(region)?;
        }
        if let Some(endpoint) = &self.endpoint {
            validate_endpoint("sqs.endpoint", endpoint)?;
        }
        if self.operation_timeout <= Duration::from_secs(20) {
            return Err(QueueError::config(
                "sqs.operation_timeout",
                "must be longer than 20 s, the longest SQS long poll",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for SqsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsBuilder")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("profile", &self.profile)
            .field("credentials", &self.credentials)
            .field(
                "content_based_deduplication",
                &self.content_based_deduplication,
            )
            .field("max_attempts", &self.max_attempts)
            .field("operation_timeout", &self.operation_timeout)
            .finish_non_exhaustive()
    }
}

fn validate_region(region: &str) -> Result<()> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(QueueError::config(
            "sqs.region",
            "must be an AWS region name such as `us-east-1` (lowercase letters, digits, `-`)",
        ))
    }
}

/// Checks an endpoint URL: `https://` anywhere, plain `http://` only to loopback hosts.
///
/// `field` names the setting in the error. The URL itself is never echoed (it could
/// carry user information).
pub(crate) fn validate_endpoint(field: &str, url: &str) -> Result<()> {
    let (plain, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "https://") {
        (false, rest)
    } else if let Some(rest) = strip_prefix_ignore_case(url, "http://") {
        (true, rest)
    } else {
        return Err(QueueError::config(
            field,
            "must start with `https://` (or `http://` for a loopback emulator)",
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(QueueError::config(
            field,
            "must not contain user information (`user:password@`); use credentials instead",
        ));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| QueueError::config(field, "has no valid host[:port]"))?;
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(QueueError::config(field, "has an invalid port"));
    }
    if plain && !is_loopback_host(host) {
        return Err(QueueError::config(
            field,
            "plain `http://` is only allowed for loopback hosts (localhost, 127.0.0.0/8, [::1]); use `https://`",
        ));
    }
    Ok(())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits `host[:port]` or `[v6][:port]`; `None` when the host is empty or malformed.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        host.parse::<Ipv6Addr>().ok()?;
        return Some((host, port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if host.is_empty() || host.contains(':') {
        return None;
    }
    Some((host, port))
}

fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return v4.is_loopback();
    }
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return v6.is_loopback();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "CANARY-aws-9d31c0-do-not-print";

    #[test]
    fn debug_redacts_credentials() {
        let creds = StaticCredentials::new(CANARY.into(), CANARY.into())
            .with_session_token(SecretString::from(CANARY));
        let config = SqsBuilder::new()
            .with_region("us-east-1")
            .with_credentials(creds.clone());
        for text in [
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{creds:?}"),
        ] {
            assert!(!text.contains(CANARY), "secret leaked: {text}");
            assert!(text.contains("redacted"), "{text}");
        }
        assert!(format!("{config:?}").contains("us-east-1"));
    }

    #[test]
    fn endpoint_rules() {
        let ok = [
            "https://sqs.us-east-1.amazonaws.com",
            "https://vpce-1.sqs.eu-west-1.vpce.amazonaws.com/",
            "HTTPS://example.com:8443/path",
            "http://127.0.0.1:4566",
            "http://127.9.8.7",
            "http://localhost:9324/",
            "http://LOCALHOST",
            "http://[::1]:5000",
        ];
        for url in ok {
            validate_endpoint("sqs.endpoint", url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        let bad = [
            "http://10.0.0.5:4566",
            "http://sqs.example.com",
            "http://192.168.1.2",
            "http://[::2]:5000",
            "http://localhost.evil.com",
            "ftp://localhost",
            "localhost:4566",
            "https://user:CANARY@example.com",
            "https://",
            "http://127.0.0.1:notaport",
        ];
        for url in bad {
            let err = validate_endpoint("sqs.endpoint", url).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("sqs.endpoint"), "{url}: {text}");
            assert!(!text.contains("CANARY"), "{text}");
            assert!(matches!(err, QueueError::Config { .. }));
        }
    }

    #[test]
    fn region_rules() {
        assert!(validate_region("us-east-1").is_ok());
        for bad in ["", "US-EAST-1", "us east", "us-east-1.evil.com", "-x"] {
            let err = validate_region(bad).unwrap_err().to_string();
            assert!(err.contains("sqs.region"), "{err}");
        }
    }

    #[test]
    fn short_operation_timeout_is_rejected() {
        let err = SqsBuilder::new()
            .with_operation_timeout(Duration::from_secs(5))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("sqs.operation_timeout"), "{err}");
    }
}
