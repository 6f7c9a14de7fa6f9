//! Emulator configuration: queues and their properties, from a file or a builder.

use std::{collections::BTreeMap, fmt, path::Path, time::Duration};

use serde::Deserialize;

use crate::error::EmulatorError;

/// Properties of one emulated queue.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct QueueConfig {
    /// How long a peek-lock (and a session lock) lasts, in seconds.
    #[serde(default = "default_lock_secs", rename = "lock_duration_secs")]
    pub lock_duration_secs: u64,
    /// Deliveries after which a message moves to the dead-letter sub-queue.
    #[serde(default = "default_max_delivery")]
    pub max_delivery_count: u32,
    /// Whether every message must carry a session id and receivers must take a session.
    #[serde(default)]
    pub requires_session: bool,
    /// Time to live applied when a message has none (or a longer one), in seconds.
    #[serde(default)]
    pub default_ttl_secs: Option<u64>,
    /// Window in which a repeated message id is dropped, in seconds (absent: no detection).
    #[serde(default)]
    pub duplicate_detection_window_secs: Option<u64>,
    /// Maximum number of messages held (main queue only); sends beyond it are refused.
    #[serde(default)]
    pub max_messages: Option<usize>,
}

fn default_lock_secs() -> u64 {
    60
}
fn default_max_delivery() -> u32 {
    10
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            lock_duration_secs: default_lock_secs(),
            max_delivery_count: default_max_delivery(),
            requires_session: false,
            default_ttl_secs: None,
            duplicate_detection_window_secs: None,
            max_messages: None,
        }
    }
}

impl QueueConfig {
    /// A queue with Service Bus defaults (60 s lock, 10 deliveries, no sessions).
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the lock duration.
    pub fn with_lock_duration(mut self, d: Duration) -> Self {
        self.lock_duration_secs = d.as_secs().max(1);
        self
    }
    /// Sets the maximum delivery count (at least 1).
    pub fn with_max_delivery_count(mut self, n: u32) -> Self {
        self.max_delivery_count = n.max(1);
        self
    }
    /// Makes the queue session-enabled.
    pub fn with_requires_session(mut self, yes: bool) -> Self {
        self.requires_session = yes;
        self
    }
    /// Sets the default time to live.
    pub fn with_default_ttl(mut self, d: Duration) -> Self {
        self.default_ttl_secs = Some(d.as_secs().max(1));
        self
    }
    /// Enables duplicate detection by message id over the given window.
    pub fn with_duplicate_detection(mut self, window: Duration) -> Self {
        self.duplicate_detection_window_secs = Some(window.as_secs().max(1));
        self
    }
    /// Caps the number of messages the queue holds.
    pub fn with_max_messages(mut self, n: usize) -> Self {
        self.max_messages = Some(n);
        self
    }
    pub(crate) fn lock_duration(&self) -> Duration {
        Duration::from_secs(self.lock_duration_secs)
    }
}

/// The whole emulator configuration.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EmulatorConfig {
    /// Queues by name.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueConfig>,
    /// Name of the shared access policy clients use (default `RootManageSharedAccessKey`).
    #[serde(default)]
    pub key_name: Option<String>,
    /// Shared access key. When set, SAS tokens and SASL PLAIN passwords are verified.
    #[serde(default)]
    pub key: Option<String>,
}

impl fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("queues", &self.queues)
            .field("key_name", &self.key_name)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl EmulatorConfig {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds (or replaces) a queue.
    pub fn with_queue(mut self, name: impl Into<String>, cfg: QueueConfig) -> Self {
        self.queues.insert(name.into(), cfg);
        self
    }
    /// Sets the shared access key clients must sign with.
    pub fn with_key(mut self, key_name: impl Into<String>, key: impl Into<String>) -> Self {
        self.key_name = Some(key_name.into());
        self.key = Some(key.into());
        self
    }
    /// Parses TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, EmulatorError> {
        let cfg: Self = toml::from_str(text).map_err(|e| EmulatorError::Config {
            reason: format!("invalid TOML: {}", e.message()),
        })?;
        cfg.validate()
    }
    /// Parses JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, EmulatorError> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| EmulatorError::Config {
            reason: format!("invalid JSON at line {} column {}", e.line(), e.column()),
        })?;
        cfg.validate()
    }
    /// Reads a `.toml` or `.json` file.
    pub fn from_file(path: &Path) -> Result<Self, EmulatorError> {
        let text = std::fs::read_to_string(path).map_err(|e| EmulatorError::Config {
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Self::from_json_str(&text),
            Some("toml") => Self::from_toml_str(&text),
            _ => Err(EmulatorError::Config {
                reason: format!("{}: config file must end in .toml or .json", path.display()),
            }),
        }
    }
    fn validate(self) -> Result<Self, EmulatorError> {
        for (name, q) in &self.queues {
            check_queue(name, q)?;
        }
        Ok(self)
    }
    pub(crate) fn key_name_or_default(&self) -> &str {
        self.key_name
            .as_deref()
            .unwrap_or("RootManageSharedAccessKey")
    }
}

/// Checks a queue name and its settings.
pub(crate) fn check_queue(name: &str, q: &QueueConfig) -> Result<(), EmulatorError> {
    if name.is_empty() || name.contains('/') || name.starts_with('$') {
        return Err(EmulatorError::Config {
            reason: format!("invalid queue name `{name}`"),
        });
    }
    if q.max_delivery_count == 0 || q.lock_duration_secs == 0 {
        return Err(EmulatorError::Config {
            reason: format!(
                "queue `{name}`: max_delivery_count and lock_duration_secs must be positive"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_parse_the_same_queue() {
        let t = EmulatorConfig::from_toml_str(
            "key = \"k\"\n[queues.orders]\nlock_duration_secs = 5\nrequires_session = true\nmax_delivery_count = 3\n",
        )
        .unwrap();
        let j = EmulatorConfig::from_json_str(
            r#"{"key":"k","queues":{"orders":{"lock_duration_secs":5,"requires_session":true,"max_delivery_count":3}}}"#,
        )
        .unwrap();
        assert_eq!(t.queues, j.queues);
        assert_eq!(t.queues["orders"].lock_duration(), Duration::from_secs(5));
        assert!(t.queues["orders"].requires_session);
    }

    #[test]
    fn bad_config_is_a_typed_error() {
        assert!(EmulatorConfig::from_toml_str("[queues.a]\nbogus = 1\n").is_err());
        assert!(EmulatorConfig::from_toml_str("[queues.a]\nmax_delivery_count = 0\n").is_err());
        assert!(EmulatorConfig::from_json_str("{").is_err());
    }

    #[test]
    fn debug_redacts_key() {
        let cfg = EmulatorConfig::new().with_key("policy", "CANARY-SECRET-123");
        assert!(!format!("{cfg:?}").contains("CANARY-SECRET-123"));
    }
}
