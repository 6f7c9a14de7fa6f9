//! Run-time configuration: which provider, which queue, how to process.
//!
//! [`QueueRuntimeConfig`] is read with the `config` crate from an optional file (TOML, YAML
//! or JSON by extension) overlaid by environment variables `QUEUE_RUNTIME__<SECTION>__<KEY>`
//! (double underscores separate levels, e.g. `QUEUE_RUNTIME__PROCESSOR__MAX_CONCURRENT_SESSIONS=4`
//! or `QUEUE_RUNTIME__PROVIDER__KIND=sqs`). Every value is checked by
//! [`QueueRuntimeConfig::validate`], whose errors name the field. Durations are written as
//! `"250ms"`, `"5s"`, `"2m"`, `"1h"` or a number of seconds.
//!
//! Errors name the key as written and, for files, `path:line:column`; the application's own
//! settings live in the `app` table of the same file:
//!
//! ```
//! use queue_runtime::{ConfigFormat, QueueError, QueueRuntimeConfig};
//!
//! let yaml = "queue: pull-requests\nprocessor:\n  max_concurrent_sessions: 4\napp:\n  greeting: hi\n";
//! let cfg = QueueRuntimeConfig::from_str_as(yaml, ConfigFormat::Yaml)?;
//! assert_eq!(cfg.processor.max_concurrent_sessions, 4);
//!
//! #[derive(serde::Deserialize)]
//! struct Bot { greeting: String }
//! assert_eq!(cfg.app::<Bot>()?.greeting, "hi");
//!
//! let typo = QueueRuntimeConfig::from_toml_str("queue = \"q\"\n[processor]\nmax_sesions = 4\n");
//! match typo {
//!     Err(QueueError::Config { field, reason }) => {
//!         assert_eq!(field, "processor.max_sesions");
//!         assert!(reason.ends_with("(at <toml text>:3:1)"));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), QueueError>(())
//! ```

use std::{collections::HashMap, fmt, path::Path, time::Duration};

use queue_core::{
    ProviderSettings, QueueError, QueueName, Result, SharedQueueProvider,
    config::{serde_message_without_value, serde_named_field},
};
use serde::{Deserialize, Deserializer, de::DeserializeOwned};

mod load;
pub use load::ConfigFormat;

/// The prefix of environment variables read by [`QueueRuntimeConfig::load`].
pub const ENV_PREFIX: &str = "QUEUE_RUNTIME";
/// The separator between levels in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Everything a consumer needs: the provider, the queue and the processor settings.
///
/// ```
/// use queue_runtime::QueueRuntimeConfig;
///
/// let cfg = QueueRuntimeConfig::from_toml_str(r#"
///     queue = "pull-requests"
///     [provider]
///     kind = "memory"
///     [processor]
///     max_concurrent_sessions = 4
///     session_idle_timeout = "500ms"
/// "#)?;
/// assert_eq!(cfg.queue, "pull-requests");
/// assert_eq!(cfg.processor.max_concurrent_sessions, 4);
/// # Ok::<(), queue_runtime::QueueError>(())
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct QueueRuntimeConfig {
    /// The provider and how to reach it (`kind = "memory" | "sqs" | "service-bus"` and that
    /// provider's keys), parsed by the provider crate when the provider is built.
    #[serde(default)]
    pub provider: ProviderSettings,
    /// The queue to consume.
    pub queue: String,
    /// How to process it.
    #[serde(default)]
    pub processor: ProcessorSettings,
    /// The application's own settings (the `app` table), read with
    /// [`QueueRuntimeConfig::app`]; queue-runtime does not look inside.
    #[serde(default)]
    app: Option<serde_json::Value>,
}

impl QueueRuntimeConfig {
    /// A configuration for `queue` on the default (memory) provider with default settings.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            provider: ProviderSettings::default(),
            queue: queue.into(),
            processor: ProcessorSettings::default(),
            app: None,
        }
    }

    /// Sets the provider settings.
    pub fn with_provider(mut self, provider: ProviderSettings) -> Self {
        self.provider = provider;
        self
    }

    /// Sets the processor settings.
    pub fn with_processor(mut self, processor: ProcessorSettings) -> Self {
        self.processor = processor;
        self
    }

    /// Loads from `file` (if given; it must exist) overlaid by the process environment
    /// (`QUEUE_RUNTIME__...`), then validates.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::load_from(file, None)
    }

    /// Like [`QueueRuntimeConfig::load`], but reads environment variables from `env`
    /// instead of the process environment (for tests and embedding).
    ///
    /// The file's format follows its extension: `.toml`, `.json`, `.yaml` or `.yml`. Errors
    /// name the file, and the line and column where the file is at fault.
    pub fn load_from(file: Option<&Path>, env: Option<HashMap<String, String>>) -> Result<Self> {
        let source = file.map(load::Source::read).transpose()?;
        let cfg: Self = load::load(source.as_ref(), Some(env))?;
        cfg.validate()
            .map_err(|e| load::place_provider_error(e, source.as_ref()))?;
        Ok(cfg)
    }

    /// Parses TOML text (no environment overlay), then validates.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::from_str_as(text, ConfigFormat::Toml)
    }

    /// Parses text in `format` (no environment overlay), then validates.
    pub fn from_str_as(text: &str, format: ConfigFormat) -> Result<Self> {
        let source = load::Source::text(text, format);
        let cfg: Self = load::load(Some(&source), None)?;
        cfg.validate()
            .map_err(|e| load::place_provider_error(e, Some(&source)))?;
        Ok(cfg)
    }

    /// The application's settings from the `app` table of the same file (and
    /// `QUEUE_RUNTIME__APP__...` variables), deserialized into `T`. Without an `app` table,
    /// `T` is deserialized from an empty table (so `#[serde(default)]` types work).
    ///
    /// ```
    /// use queue_runtime::QueueRuntimeConfig;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Bot { greeting: String }
    ///
    /// let cfg = QueueRuntimeConfig::from_toml_str(
    ///     "queue = \"events\"\n[app]\ngreeting = \"hello\"\n",
    /// )?;
    /// assert_eq!(cfg.app::<Bot>()?.greeting, "hello");
    /// # Ok::<(), queue_runtime::QueueError>(())
    /// ```
    pub fn app<T: DeserializeOwned>(&self) -> Result<T> {
        let value = self
            .app
            .clone()
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        serde_json::from_value(value).map_err(|e| {
            // serde_json's data errors quote no values for missing/unknown fields; type
            // errors can, so only the kind of error is kept.
            let text = e.to_string();
            let field = ["missing field `", "unknown field `"]
                .iter()
                .find_map(|p| text.strip_prefix(p))
                .and_then(|rest| rest.split('`').next())
                .map_or_else(|| "app".to_owned(), |f| format!("app.{f}"));
            let reason = if text.starts_with("invalid type") || text.starts_with("invalid value") {
                "invalid type or value".to_owned()
            } else {
                text
            };
            QueueError::config(field, reason)
        })
    }

    /// Checks every value; the error names the first bad field (`processor.retry.max_attempts`,
    /// `provider.region`). See [`check_provider_settings`] for what is checked of the provider.
    pub fn validate(&self) -> Result<()> {
        QueueName::new(&self.queue).map_err(|e| QueueError::config("queue", e.to_string()))?;
        check_provider_settings(&self.provider)?;
        self.processor.validate()
    }

    /// The validated queue name.
    pub fn queue_name(&self) -> Result<QueueName> {
        QueueName::new(&self.queue).map_err(|e| QueueError::config("queue", e.to_string()))
    }
}

impl fmt::Debug for QueueRuntimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // ProviderSettings' own Debug redacts its secrets.
        f.debug_struct("QueueRuntimeConfig")
            .field("provider", &self.provider)
            .field("queue", &self.queue)
            .field("processor", &self.processor)
            .field("app", &self.app.as_ref().map(|_| "<application settings>"))
            .finish()
    }
}

/// Turns a `config` crate error into a [`QueueError::Config`] naming the key where it can.
///
/// The `config` crate's messages name keys and origins (file paths, `environment`) and the
/// expected type, not values, except for invalid-type errors which quote the offending value.
/// Those are rewritten so a mistyped secret never reaches an error message.
fn config_error(err: config::ConfigError) -> QueueError {
    match err {
        config::ConfigError::Type {
            key,
            expected,
            origin,
            ..
        } => QueueError::config(
            key.clone().unwrap_or_else(|| "<root>".into()),
            format!(
                "invalid type, expected {expected}{}",
                origin.map(|o| format!(" (in {o})")).unwrap_or_default()
            ),
        ),
        config::ConfigError::NotFound(key) => QueueError::config(key, "missing value"),
        config::ConfigError::At { key, error, .. } => match (key, config_error(*error)) {
            (Some(key), QueueError::Config { field, reason }) => {
                let field = if field == "<root>" {
                    key
                } else {
                    format!("{key}.{field}")
                };
                QueueError::config(field, reason)
            }
            (_, other) => other,
        },
        config::ConfigError::Message(text) => {
            // serde messages: "missing field `queue`", "unknown field `regoin`, expected ...".
            let field = serde_named_field(&text).unwrap_or("<root>").to_owned();
            QueueError::config(field, serde_message_without_value(text))
        }
        config::ConfigError::FileParse { uri, .. } => QueueError::config(
            "<file>",
            format!(
                "cannot parse configuration file{}",
                uri.map(|u| format!(" `{u}`")).unwrap_or_default()
            ),
        ),
        config::ConfigError::Foreign(_) => {
            QueueError::config("<file>", "cannot read configuration file")
        }
        other => QueueError::config("<root>", other.to_string()),
    }
}

/// Settings of the processor.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProcessorSettings {
    /// Sessions (ordering keys) processed at once; within one, one message at a time.
    pub max_concurrent_sessions: usize,
    /// Messages without a session processed at once.
    pub max_concurrent_messages: usize,
    /// Most messages held locally (received, not yet settled) by the receive loop of
    /// grouped (SQS FIFO) and session-less consumption. Each is lock-renewed while held.
    pub max_buffered_messages: usize,
    /// Longest wait of one receive or accept-session call.
    #[serde(deserialize_with = "de_duration")]
    pub receive_wait: Duration,
    /// How long the first receive of an accepted session waits for its first message. After
    /// that a session is released as soon as it is drained (see `session_drain_wait`).
    #[serde(deserialize_with = "de_duration")]
    pub session_idle_timeout: Duration,
    /// How long a session receive may take to find out whether the session holds more
    /// messages: at least one broker round trip, since a receive that gives up while a
    /// delivery is on its way hands that delivery back unhandled. No session receive waits
    /// less. Providers that know their sessions' backlog (memory) answer at once.
    #[serde(deserialize_with = "de_duration")]
    pub session_drain_wait: Duration,
    /// Upper bound of the interval between lock renewals (renewal happens at half the
    /// remaining lock or this, whichever is sooner). Must be below the queue's lock duration.
    #[serde(deserialize_with = "de_duration")]
    pub lock_renewal_interval: Duration,
    /// Longest total time a message's lock is renewed; the handler is then cancelled.
    #[serde(deserialize_with = "de_duration")]
    pub max_lock_renewal: Duration,
    /// How long in-flight handlers may run on after shutdown is requested.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// Redelivery policy.
    pub retry: RetrySettings,
    /// Circuit breaker around provider calls.
    pub circuit_breaker: CircuitBreakerSettings,
    /// Whether the queue holds session messages, session-less ones, or (`auto`) either.
    pub session_mode: SessionMode,
}

/// Which kinds of messages a processor consumes on a provider with session locks
/// ([`queue_core::SessionSupport::Locked`]). Other providers ignore it.
///
/// In configuration: `session_mode = "auto" | "required" | "none"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionMode {
    /// Session workers and a session-less receive loop side by side, for queues that hold
    /// both (the memory provider). The session-less loop stops by itself when the provider
    /// says the queue only has sessions; on Azure Service Bus, where a queue is either
    /// session-enabled or not, prefer `required` or `none`.
    #[default]
    Auto,
    /// Session-enabled queue: only session workers (Service Bus `requiresSession` queues).
    Required,
    /// Queue without sessions: only the session-less receive loop.
    None,
}

impl SessionMode {
    /// The values accepted in configuration.
    pub const VALUES: [&'static str; 3] = ["auto", "required", "none"];
}

impl std::str::FromStr for SessionMode {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "required" => Ok(Self::Required),
            "none" => Ok(Self::None),
            _ => Err(format!(
                "unknown session mode, expected one of `{}`",
                Self::VALUES.join("`, `")
            )),
        }
    }
}

// By hand, through a string: the `config` crate's enum support reports an unknown variant
// without the valid ones.
impl<'de> Deserialize<'de> for SessionMode {
    fn deserialize<D: Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(de)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            max_concurrent_sessions: 8,
            max_concurrent_messages: 8,
            max_buffered_messages: 32,
            receive_wait: Duration::from_secs(5),
            session_idle_timeout: Duration::from_secs(1),
            session_drain_wait: Duration::from_millis(20),
            lock_renewal_interval: Duration::from_secs(10),
            max_lock_renewal: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(30),
            retry: RetrySettings::default(),
            circuit_breaker: CircuitBreakerSettings::default(),
            session_mode: SessionMode::Auto,
        }
    }
}

macro_rules! setters {
    ($ty:ty { $($(#[$doc:meta])* $name:ident : $field:ident : $t:ty),* $(,)? }) => {
        impl $ty {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: $t) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters!(ProcessorSettings {
    /// Sets `max_concurrent_sessions`.
    with_max_concurrent_sessions: max_concurrent_sessions: usize,
    /// Sets `max_concurrent_messages`.
    with_max_concurrent_messages: max_concurrent_messages: usize,
    /// Sets `max_buffered_messages`.
    with_max_buffered_messages: max_buffered_messages: usize,
    /// Sets `receive_wait`.
    with_receive_wait: receive_wait: Duration,
    /// Sets `session_idle_timeout`.
    with_session_idle_timeout: session_idle_timeout: Duration,
    /// Sets `session_drain_wait`.
    with_session_drain_wait: session_drain_wait: Duration,
    /// Sets `lock_renewal_interval`.
    with_lock_renewal_interval: lock_renewal_interval: Duration,
    /// Sets `max_lock_renewal`.
    with_max_lock_renewal: max_lock_renewal: Duration,
    /// Sets `shutdown_timeout`.
    with_shutdown_timeout: shutdown_timeout: Duration,
    /// Sets the retry policy.
    with_retry: retry: RetrySettings,
    /// Sets the circuit breaker settings.
    with_circuit_breaker: circuit_breaker: CircuitBreakerSettings,
    /// Sets `session_mode`.
    with_session_mode: session_mode: SessionMode,
});

impl ProcessorSettings {
    /// Checks every value; the error names the field (`processor.<name>`).
    pub fn validate(&self) -> Result<()> {
        fn positive(field: &str, ok: bool, reason: &str) -> Result<()> {
            if ok {
                Ok(())
            } else {
                Err(QueueError::config(format!("processor.{field}"), reason))
            }
        }
        positive(
            "max_concurrent_sessions",
            self.max_concurrent_sessions >= 1,
            "must be at least 1",
        )?;
        positive(
            "max_concurrent_messages",
            self.max_concurrent_messages >= 1,
            "must be at least 1",
        )?;
        positive(
            "max_buffered_messages",
            self.max_buffered_messages >= 1,
            "must be at least 1",
        )?;
        positive(
            "receive_wait",
            !self.receive_wait.is_zero(),
            "must be greater than zero",
        )?;
        positive(
            "session_idle_timeout",
            !self.session_idle_timeout.is_zero(),
            "must be greater than zero",
        )?;
        positive(
            "session_drain_wait",
            !self.session_drain_wait.is_zero(),
            "must be greater than zero",
        )?;
        positive(
            "lock_renewal_interval",
            self.lock_renewal_interval >= Duration::from_millis(10),
            "must be at least 10ms",
        )?;
        positive(
            "max_lock_renewal",
            self.max_lock_renewal >= self.lock_renewal_interval,
            "must be at least `lock_renewal_interval`",
        )?;
        self.retry.validate()?;
        self.circuit_breaker.validate()
    }
}

impl fmt::Debug for ProcessorSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessorSettings")
            .field("max_concurrent_sessions", &self.max_concurrent_sessions)
            .field("max_concurrent_messages", &self.max_concurrent_messages)
            .field("max_buffered_messages", &self.max_buffered_messages)
            .field("receive_wait", &self.receive_wait)
            .field("session_idle_timeout", &self.session_idle_timeout)
            .field("session_drain_wait", &self.session_drain_wait)
            .field("lock_renewal_interval", &self.lock_renewal_interval)
            .field("max_lock_renewal", &self.max_lock_renewal)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("retry", &self.retry)
            .field("circuit_breaker", &self.circuit_breaker)
            .field("session_mode", &self.session_mode)
            .finish()
    }
}

/// Redelivery policy for failed messages (see [`crate::RetryPolicy`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetrySettings {
    /// Deliveries before a failing message is dead-lettered (1 = never retried).
    pub max_attempts: u32,
    /// Delay after the first failure.
    #[serde(deserialize_with = "de_duration")]
    pub initial_delay: Duration,
    /// Largest delay.
    #[serde(deserialize_with = "de_duration")]
    pub max_delay: Duration,
    /// Growth factor per attempt (at least 1).
    pub multiplier: f64,
    /// Spread of each delay as a fraction in `[0, 1]` (0.2 = ±20%).
    pub jitter: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

setters!(RetrySettings {
    /// Sets `max_attempts`.
    with_max_attempts: max_attempts: u32,
    /// Sets `initial_delay`.
    with_initial_delay: initial_delay: Duration,
    /// Sets `max_delay`.
    with_max_delay: max_delay: Duration,
    /// Sets `multiplier`.
    with_multiplier: multiplier: f64,
    /// Sets `jitter`.
    with_jitter: jitter: f64,
});

impl RetrySettings {
    /// Checks every value; the error names the field (`processor.retry.<name>`).
    pub fn validate(&self) -> Result<()> {
        let field = |name: &str| format!("processor.retry.{name}");
        if self.max_attempts == 0 {
            return Err(QueueError::config(
                field("max_attempts"),
                "must be at least 1",
            ));
        }
        if self.initial_delay > self.max_delay {
            return Err(QueueError::config(
                field("initial_delay"),
                "must not exceed `max_delay`",
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(QueueError::config(
                field("multiplier"),
                "must be a number of at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(QueueError::config(
                field("jitter"),
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}

/// Thresholds of the circuit breaker (see [`crate::CircuitBreaker`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreakerSettings {
    /// Consecutive outage-like failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before a trial.
    #[serde(deserialize_with = "de_duration")]
    pub open_duration: Duration,
    /// Successful trial calls needed to close it again.
    pub half_open_successes: u32,
}

impl Default for CircuitBreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_duration: Duration::from_secs(10),
            half_open_successes: 1,
        }
    }
}

setters!(CircuitBreakerSettings {
    /// Sets `failure_threshold`.
    with_failure_threshold: failure_threshold: u32,
    /// Sets `open_duration`.
    with_open_duration: open_duration: Duration,
    /// Sets `half_open_successes`.
    with_half_open_successes: half_open_successes: u32,
});

impl CircuitBreakerSettings {
    /// Checks every value; the error names the field (`processor.circuit_breaker.<name>`).
    pub fn validate(&self) -> Result<()> {
        let field = |name: &str| format!("processor.circuit_breaker.{name}");
        if self.failure_threshold == 0 {
            return Err(QueueError::config(
                field("failure_threshold"),
                "must be at least 1",
            ));
        }
        if self.half_open_successes == 0 {
            return Err(QueueError::config(
                field("half_open_successes"),
                "must be at least 1",
            ));
        }
        if self.open_duration.is_zero() {
            return Err(QueueError::config(
                field("open_duration"),
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"1.5s"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as \"500ms\", \"5s\" or \"2m\""))?;
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| e.to_string())
}

fn de_duration<'de, D: Deserializer<'de>>(de: D) -> std::result::Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Float(f64),
        Text(String),
    }
    match Raw::deserialize(de)? {
        Raw::Int(secs) => Ok(Duration::from_secs(secs)),
        Raw::Float(secs) => Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom),
        Raw::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
    }
}

/// The providers this workspace has, by `kind`, with the feature that compiles each in.
pub const PROVIDER_KINDS: [(&str, &str); 3] = [
    ("memory", "memory"),
    ("sqs", "aws"),
    ("service-bus", "azure"),
];

/// Checks the provider table: the `kind` must be one of [`PROVIDER_KINDS`], and the keys of
/// a provider compiled into this build must parse into its typed settings (errors name
/// `provider.<key>`). A provider whose feature is off is not checked here; building it
/// fails with the feature to enable.
pub fn check_provider_settings(settings: &ProviderSettings) -> Result<()> {
    let kind = settings.kind();
    if !PROVIDER_KINDS.iter().any(|(k, _)| *k == kind) {
        let known: Vec<&str> = PROVIDER_KINDS.iter().map(|(k, _)| *k).collect();
        return Err(QueueError::config(
            "provider.kind",
            format!(
                "unknown provider `{kind}`, expected one of `{}`",
                known.join("`, `")
            ),
        ));
    }
    match kind {
        #[cfg(feature = "memory")]
        "memory" => queue_memory::MemorySettings::from_provider_settings(settings).map(drop),
        #[cfg(feature = "aws")]
        "sqs" => queue_aws::SqsSettings::from_provider_settings(settings).map(drop),
        #[cfg(feature = "azure")]
        "service-bus" => {
            queue_azure::ServiceBusSettings::from_provider_settings(settings).map(drop)
        }
        _ => Ok(()),
    }
}

/// Builds the provider named by `settings`, wrapped in the default layer stack
/// ([`queue_core::layer::default_stack`]: `Instrumented`, then `Retrying` with the default
/// [`RetryConfig`](queue_core::layer::RetryConfig)), so every call gets the same bounded
/// retries, spans and metrics on every provider. See `docs/architecture.md`.
///
/// Every provider kind parses in every build; one whose feature is not compiled in yields
/// [`QueueError::Config`] naming the feature to enable.
pub async fn build_provider(settings: &ProviderSettings) -> Result<SharedQueueProvider> {
    let bare = build_bare_provider(settings).await?;
    let retry = queue_core::layer::RetryConfig::default();
    Ok(queue_core::layer::default_stack(bare, retry))
}

/// Builds the provider named by `settings` without any layer, to compose your own stack
/// (`queue_core::layer`). Errors as [`build_provider`].
pub async fn build_bare_provider(settings: &ProviderSettings) -> Result<SharedQueueProvider> {
    check_provider_settings(settings)?;
    build(settings).await.map_err(provider_field)
}

/// Names a provider's settings error by the key users write (`provider.connection_string`),
/// not the provider crate's own prefix (`service_bus.connection_string`).
fn provider_field(err: QueueError) -> QueueError {
    match err {
        QueueError::Config { field, reason } => {
            let field = ["memory.", "sqs.", "aws.", "service_bus.", "azure."]
                .iter()
                .find_map(|p| field.strip_prefix(p))
                .map_or_else(|| field.clone(), |rest| format!("provider.{rest}"));
            QueueError::config(field, reason)
        }
        other => other,
    }
}

async fn build(settings: &ProviderSettings) -> Result<SharedQueueProvider> {
    match settings.kind() {
        #[cfg(feature = "memory")]
        "memory" => {
            let typed = queue_memory::MemorySettings::from_provider_settings(settings)?;
            Ok(std::sync::Arc::new(
                queue_memory::InMemoryProvider::from_settings(&typed)?,
            ))
        }
        #[cfg(feature = "aws")]
        "sqs" => {
            let typed = queue_aws::SqsSettings::from_provider_settings(settings)?;
            Ok(std::sync::Arc::new(
                queue_aws::SqsProvider::from_settings(&typed).await?,
            ))
        }
        #[cfg(feature = "azure")]
        "service-bus" => {
            let typed = queue_azure::ServiceBusSettings::from_provider_settings(settings)?;
            Ok(std::sync::Arc::new(
                queue_azure::ServiceBusProvider::from_settings(&typed)?,
            ))
        }
        other => Err(not_enabled(other)),
    }
}

fn not_enabled(kind: &str) -> QueueError {
    let feature = PROVIDER_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("full", |(_, feature)| feature);
    QueueError::config(
        "provider.kind",
        format!("provider `{kind}` is not enabled in this build (enable feature `{feature}`)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "CANARY-cfg-4b1d-secret";

    #[test]
    fn durations_parse_in_all_forms() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(ProcessorSettings, &str)> = vec![
            (
                ProcessorSettings::default().with_max_concurrent_sessions(0),
                "processor.max_concurrent_sessions",
            ),
            (
                ProcessorSettings::default().with_receive_wait(Duration::ZERO),
                "processor.receive_wait",
            ),
            (
                ProcessorSettings::default()
                    .with_retry(RetrySettings::default().with_max_attempts(0)),
                "processor.retry.max_attempts",
            ),
            (
                ProcessorSettings::default().with_retry(RetrySettings::default().with_jitter(1.5)),
                "processor.retry.jitter",
            ),
            (
                ProcessorSettings::default().with_retry(
                    RetrySettings::default()
                        .with_initial_delay(Duration::from_secs(10))
                        .with_max_delay(Duration::from_secs(1)),
                ),
                "processor.retry.initial_delay",
            ),
            (
                ProcessorSettings::default().with_circuit_breaker(
                    CircuitBreakerSettings::default().with_failure_threshold(0),
                ),
                "processor.circuit_breaker.failure_threshold",
            ),
        ];
        for (settings, field) in cases {
            match settings.validate() {
                Err(QueueError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected a config error on {field}, got {other:?}"),
            }
        }
        assert!(ProcessorSettings::default().validate().is_ok());
        let err = QueueRuntimeConfig::new("bad name!").validate().unwrap_err();
        assert!(
            matches!(err, QueueError::Config { ref field, .. } if field == "queue"),
            "{err}"
        );
    }

    #[test]
    fn debug_redacts_provider_secrets() {
        let cfg = QueueRuntimeConfig::from_toml_str(&format!(
            r#"
            queue = "q"
            [provider]
            kind = "sqs"
            access_key_id = "{CANARY}"
            secret_access_key = "{CANARY}"
            session_token = "{CANARY}"
            "#
        ))
        .unwrap();
        for text in [format!("{cfg:?}"), format!("{cfg:#?}")] {
            assert!(!text.contains(CANARY), "secret leaked: {text}");
            assert!(text.contains("sqs"), "{text}");
        }
        let cfg = QueueRuntimeConfig::from_toml_str(&format!(
            "queue = \"q\"\n[provider]\nkind = \"service-bus\"\nconnection_string = \"{CANARY}\"\n"
        ))
        .unwrap();
        assert!(!format!("{cfg:?}").contains(CANARY));
    }

    #[test]
    fn session_mode_parses_from_files_and_rejects_unknown_modes() {
        for (text, mode) in [
            ("auto", SessionMode::Auto),
            ("required", SessionMode::Required),
            ("none", SessionMode::None),
        ] {
            let cfg = QueueRuntimeConfig::from_toml_str(&format!(
                "queue = \"q\"\n[processor]\nsession_mode = \"{text}\"\n"
            ))
            .unwrap();
            assert_eq!(cfg.processor.session_mode, mode);
        }
        assert_eq!(ProcessorSettings::default().session_mode, SessionMode::Auto);
        let err = QueueRuntimeConfig::from_toml_str(
            "queue = \"q\"\n[processor]\nsession_mode = \"sometimes\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("session_mode"), "{err}");
    }

    #[test]
    fn unknown_and_mistyped_fields_are_named_without_values() {
        let err =
            QueueRuntimeConfig::from_toml_str("queue = \"q\"\n[processor]\nmax_sesions = 3\n")
                .unwrap_err();
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "processor.max_sesions"),
            "{err}"
        );
        let err = QueueRuntimeConfig::from_toml_str(&format!(
            "queue = \"q\"\n[processor]\nmax_concurrent_sessions = \"{CANARY}\"\n"
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains(CANARY), "value leaked: {text}");
        assert!(text.contains("max_concurrent_sessions"), "{text}");
        let err = QueueRuntimeConfig::from_toml_str("[processor]\nmax_concurrent_sessions = 3\n")
            .unwrap_err();
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "queue"),
            "{err}"
        );
    }

    /// The secrets of SQS-like settings, read the way the provider crates read them, so the
    /// loader's part (files, verbatim environment variables) is checked in every build.
    #[derive(Default, serde::Deserialize)]
    #[serde(default)]
    struct SqsSecrets {
        #[serde(deserialize_with = "queue_core::config::optional_secret")]
        access_key_id: Option<queue_core::SecretString>,
        #[serde(deserialize_with = "queue_core::config::optional_secret")]
        secret_access_key: Option<queue_core::SecretString>,
        #[serde(deserialize_with = "queue_core::config::optional_secret")]
        session_token: Option<queue_core::SecretString>,
    }

    impl queue_core::TypedSettings for SqsSecrets {
        const KIND: &'static str = "sqs";
    }

    /// The connection string of Service-Bus-like settings (see [`SqsSecrets`]).
    #[derive(Default, serde::Deserialize)]
    #[serde(default)]
    struct SbSecrets {
        #[serde(deserialize_with = "queue_core::config::optional_secret")]
        connection_string: Option<queue_core::SecretString>,
    }

    impl queue_core::TypedSettings for SbSecrets {
        const KIND: &'static str = "service-bus";
    }

    /// The SQS secrets of `cfg`, exposed for comparison.
    fn sqs_secrets(cfg: &QueueRuntimeConfig) -> [String; 3] {
        use queue_core::ExposeSecret;
        let sqs: SqsSecrets = cfg.provider.parse().unwrap();
        [
            &sqs.access_key_id,
            &sqs.secret_access_key,
            &sqs.session_token,
        ]
        .map(|s| {
            s.as_ref()
                .map_or_else(String::new, |s| s.expose_secret().to_owned())
        })
    }

    #[test]
    fn numeric_and_boolean_secrets_load_from_every_format_and_the_environment() {
        let toml = "queue = \"q\"\n[provider]\nkind = \"sqs\"\naccess_key_id = 12345678901234\nsecret_access_key = true\nsession_token = 2.5\n";
        let cfg = QueueRuntimeConfig::from_toml_str(toml).unwrap();
        assert_eq!(sqs_secrets(&cfg), ["12345678901234", "true", "2.5"]);
        let yaml = "queue: q\nprovider:\n  kind: sqs\n  access_key_id: 12345678901234\n  secret_access_key: true\n";
        let cfg = QueueRuntimeConfig::from_str_as(yaml, ConfigFormat::Yaml).unwrap();
        assert_eq!(sqs_secrets(&cfg), ["12345678901234", "true", ""]);
        let json = r#"{"queue":"q","provider":{"kind":"sqs","access_key_id":12345678901234,"secret_access_key":false}}"#;
        let cfg = QueueRuntimeConfig::from_str_as(json, ConfigFormat::Json).unwrap();
        assert_eq!(sqs_secrets(&cfg), ["12345678901234", "false", ""]);

        // From the environment, taken verbatim (no number or boolean parsing).
        let env: HashMap<String, String> = [
            ("QUEUE_RUNTIME__QUEUE", "q"),
            ("QUEUE_RUNTIME__PROVIDER__KIND", "sqs"),
            ("QUEUE_RUNTIME__PROVIDER__ACCESS_KEY_ID", "0012345678901234"),
            ("QUEUE_RUNTIME__PROVIDER__SECRET_ACCESS_KEY", "TRUE"),
            ("QUEUE_RUNTIME__PROVIDER__SESSION_TOKEN", "1e5"),
            ("QUEUE_RUNTIME__PROCESSOR__MAX_CONCURRENT_SESSIONS", "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let cfg = QueueRuntimeConfig::load_from(None, Some(env)).unwrap();
        assert_eq!(sqs_secrets(&cfg), ["0012345678901234", "TRUE", "1e5"]);
        assert_eq!(cfg.processor.max_concurrent_sessions, 3);
        let env: HashMap<String, String> = [
            ("QUEUE_RUNTIME__QUEUE", "q"),
            ("QUEUE_RUNTIME__PROVIDER__KIND", "service-bus"),
            ("QUEUE_RUNTIME__PROVIDER__CONNECTION_STRING", "42"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let cfg = QueueRuntimeConfig::load_from(None, Some(env)).unwrap();
        let sb: SbSecrets = cfg.provider.parse().unwrap();
        use queue_core::ExposeSecret;
        assert_eq!(sb.connection_string.as_ref().unwrap().expose_secret(), "42");
    }

    #[test]
    fn a_mistyped_secret_is_named_but_never_quoted() {
        const NUM: &str = "987654321987";
        let cases = [
            (
                format!(
                    "queue = \"q\"\n[provider]\nkind = \"sqs\"\nsecret_access_key = {{ k = \"{CANARY}\", n = {NUM} }}\n"
                ),
                ConfigFormat::Toml,
            ),
            (
                format!(
                    "queue = \"q\"\n[provider]\nkind = \"sqs\"\nsecret_access_key = [\"{CANARY}\", {NUM}]\n"
                ),
                ConfigFormat::Toml,
            ),
            (
                format!(
                    "queue: q\nprovider:\n  kind: service-bus\n  connection_string:\n    - {CANARY}\n"
                ),
                ConfigFormat::Yaml,
            ),
        ];
        for (text, format) in cases {
            // Refused at load when the provider is compiled in; otherwise when it is parsed.
            let err = match QueueRuntimeConfig::from_str_as(&text, format) {
                Err(err) => err,
                Ok(cfg) if cfg.provider.kind() == "sqs" => {
                    cfg.provider.parse::<SqsSecrets>().err().unwrap()
                }
                Ok(cfg) => cfg.provider.parse::<SbSecrets>().err().unwrap(),
            };
            let shown = format!("{err} {err:?}");
            assert!(
                !shown.contains(CANARY) && !shown.contains(NUM),
                "leaked: {shown}"
            );
            let QueueError::Config { field, .. } = &err else {
                panic!("{err:?}")
            };
            assert!(
                field == "provider.secret_access_key" || field == "provider.connection_string",
                "key not named: {shown}"
            );
        }
        // serde's own invalid-type messages quote values; the loader keeps only the expectation.
        assert_eq!(
            serde_message_without_value(format!(
                "invalid type: integer `{NUM}`, expected a string"
            )),
            "invalid type or value, expected a string"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("qr-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("runtime.toml");
        std::fs::write(
            &path,
            "queue = \"from-file\"\n[processor]\nmax_concurrent_sessions = 2\nsession_idle_timeout = \"750ms\"\n[processor.retry]\nmax_attempts = 3\n",
        )
        .unwrap();
        let env: HashMap<String, String> = [
            ("QUEUE_RUNTIME__QUEUE", "from-env"),
            ("QUEUE_RUNTIME__PROCESSOR__MAX_CONCURRENT_SESSIONS", "6"),
            ("QUEUE_RUNTIME__PROCESSOR__RETRY__INITIAL_DELAY", "250ms"),
            ("OTHER_APP__QUEUE", "ignored"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let cfg = QueueRuntimeConfig::load_from(Some(&path), Some(env)).unwrap();
        assert_eq!(cfg.queue, "from-env");
        assert_eq!(cfg.processor.max_concurrent_sessions, 6);
        assert_eq!(
            cfg.processor.session_idle_timeout,
            Duration::from_millis(750)
        );
        assert_eq!(cfg.processor.retry.max_attempts, 3);
        assert_eq!(
            cfg.processor.retry.initial_delay,
            Duration::from_millis(250)
        );
        assert_eq!(cfg.provider.kind(), "memory");

        let bad: HashMap<String, String> = [(
            "QUEUE_RUNTIME__PROCESSOR__MAX_CONCURRENT_MESSAGES".to_owned(),
            "0".to_owned(),
        )]
        .into_iter()
        .collect();
        let err = QueueRuntimeConfig::load_from(Some(&path), Some(bad)).unwrap_err();
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "processor.max_concurrent_messages"),
            "{err}"
        );
        let missing = dir.join("missing.toml");
        assert!(matches!(
            QueueRuntimeConfig::load_from(Some(&missing), Some(HashMap::new())),
            Err(QueueError::Config { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_documented_example_file_loads_and_states_the_real_defaults() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/queue-runtime.example.toml");
        let cfg = QueueRuntimeConfig::load_from(Some(&path), Some(HashMap::new())).unwrap();
        assert_eq!(cfg.queue, "github-events");
        assert_eq!(cfg.provider.kind(), "memory");
        assert_eq!(
            format!("{:?}", cfg.processor),
            format!("{:?}", ProcessorSettings::default()),
            "docs/queue-runtime.example.toml must list the defaults"
        );
    }

    #[cfg(feature = "aws")]
    #[tokio::test]
    async fn sqs_is_built_when_the_aws_feature_is_on() {
        let settings: ProviderSettings = serde_json::from_str(
            r#"{"kind":"sqs","region":"us-east-1","endpoint":"http://127.0.0.1:9","access_key_id":"AKIDEXAMPLE","secret_access_key":"example"}"#,
        )
        .unwrap();
        let provider = build_provider(&settings).await.unwrap();
        assert_eq!(provider.name(), "sqs");
        assert_eq!(
            provider.capabilities().sessions,
            queue_core::SessionSupport::Grouped
        );
    }

    #[cfg(feature = "azure")]
    #[tokio::test]
    async fn service_bus_is_built_when_the_azure_feature_is_on() {
        let settings: ProviderSettings = serde_json::from_str(&format!(
            r#"{{"kind":"service-bus","connection_string":"Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=k;SharedAccessKey={CANARY};UseDevelopmentEmulator=true"}}"#
        ))
        .unwrap();
        // No connection is made until the first call.
        let provider = build_provider(&settings).await.unwrap();
        assert_eq!(provider.name(), "service-bus");
        assert_eq!(
            provider.capabilities().sessions,
            queue_core::SessionSupport::Locked
        );
        assert!(!format!("{provider:?}").contains(CANARY));

        // Settings the provider rejects keep their typed error and field.
        let settings: ProviderSettings = serde_json::from_str(r#"{"kind":"service-bus"}"#).unwrap();
        let err = build_provider(&settings).await.unwrap_err();
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "provider.connection_string"),
            "{err}"
        );
        // The emulator switch is refused for a non-loopback host.
        let settings: ProviderSettings = serde_json::from_str(&format!(
            r#"{{"kind":"service-bus","connection_string":"Endpoint=sb://ns.servicebus.windows.net;SharedAccessKeyName=k;SharedAccessKey={CANARY};UseDevelopmentEmulator=true"}}"#
        ))
        .unwrap();
        let err = build_provider(&settings).await.unwrap_err();
        assert!(matches!(err, QueueError::Config { .. }), "{err}");
        assert!(!err.to_string().contains(CANARY), "{err}");
    }

    #[tokio::test]
    async fn provider_not_compiled_in_is_a_config_error() {
        #[cfg(not(feature = "azure"))]
        {
            let settings: ProviderSettings =
                serde_json::from_str(r#"{"kind":"service-bus"}"#).unwrap();
            let err = build_provider(&settings).await.unwrap_err();
            let text = err.to_string();
            assert!(matches!(&err, QueueError::Config { field, .. } if field == "provider.kind"));
            assert!(
                text.contains(
                    "provider `service-bus` is not enabled in this build (enable feature `azure`)"
                ),
                "{text}"
            );
        }
        #[cfg(not(feature = "aws"))]
        {
            let settings: ProviderSettings = serde_json::from_str(r#"{"kind":"sqs"}"#).unwrap();
            let text = build_provider(&settings).await.unwrap_err().to_string();
            assert!(
                text.contains("provider `sqs` is not enabled in this build (enable feature `aws`)"),
                "{text}"
            );
        }
        #[cfg(not(feature = "memory"))]
        {
            let text = build_provider(&ProviderSettings::default())
                .await
                .unwrap_err()
                .to_string();
            assert!(text.contains("enable feature `memory`"), "{text}");
        }
    }
}
