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

/// The Service Bus pricing tier whose limits the emulator applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Tier {
    /// 256 KiB per message and per batch.
    #[default]
    Standard,
    /// 1 MiB per message by default, configurable up to 100 MiB.
    Premium,
}

/// Standard tier: 256 KiB per message and per batch.
pub const STANDARD_MAX_MESSAGE_KIB: u64 = 256;
/// Premium tier default: 1 MiB per message.
pub const PREMIUM_DEFAULT_MAX_MESSAGE_KIB: u64 = 1024;
/// Premium tier ceiling: 100 MiB per message.
pub const PREMIUM_MAX_MESSAGE_KIB: u64 = 100 * 1024;

/// Service Bus' lock duration range.
const LOCK_RANGE_SECS: std::ops::RangeInclusive<u64> = 5..=300;
/// Service Bus' duplicate-detection window range.
const DEDUP_RANGE_SECS: std::ops::RangeInclusive<u64> = 20..=7 * 24 * 3600;

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
    /// The tier whose size limits apply (default Standard).
    #[serde(default)]
    pub tier: Tier,
    /// Premium only: the largest message in KiB (1024..=102400; default 1024).
    #[serde(default)]
    pub max_message_size_kib: Option<u64>,
}

impl fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("queues", &self.queues)
            .field("key_name", &self.key_name)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("tier", &self.tier)
            .field("max_message_size_kib", &self.max_message_size_kib)
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
    /// Applies the Standard tier's limits (the default).
    pub fn standard(mut self) -> Self {
        self.tier = Tier::Standard;
        self.max_message_size_kib = None;
        self
    }
    /// Applies the Premium tier's limits with the given largest message size in KiB
    /// (1024..=102400, checked when the emulator starts).
    pub fn premium(mut self, max_message_size_kib: u64) -> Self {
        self.tier = Tier::Premium;
        self.max_message_size_kib = Some(max_message_size_kib);
        self
    }
    /// The largest message (and batch) the tier accepts, in bytes.
    pub fn max_message_size(&self) -> usize {
        let kib = match self.tier {
            Tier::Standard => STANDARD_MAX_MESSAGE_KIB,
            Tier::Premium => self
                .max_message_size_kib
                .unwrap_or(PREMIUM_DEFAULT_MAX_MESSAGE_KIB),
        };
        (kib * 1024) as usize
    }
    /// Parses TOML text and checks it against Service Bus' limits.
    pub fn from_toml_str(text: &str) -> Result<Self, EmulatorError> {
        let cfg: Self = toml::from_str(text).map_err(|e| EmulatorError::Config {
            reason: format!("invalid TOML: {}", e.message()),
        })?;
        cfg.validate(true)
    }
    /// Parses JSON text and checks it against Service Bus' limits.
    pub fn from_json_str(text: &str) -> Result<Self, EmulatorError> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| EmulatorError::Config {
            reason: format!("invalid JSON at line {} column {}", e.line(), e.column()),
        })?;
        cfg.validate(true)
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
    /// The checks `Emulator::start` applies to a configuration built in code: Service Bus'
    /// upper limits and the tier, but lock durations and duplicate-detection windows below
    /// Service Bus' minimum (5 s, 20 s) are allowed so tests of expiry run fast.
    pub(crate) fn validated(self) -> Result<Self, EmulatorError> {
        self.validate(false)
    }
    fn validate(self, strict: bool) -> Result<Self, EmulatorError> {
        check_tier(self.tier, self.max_message_size_kib)?;
        for (name, q) in &self.queues {
            check_queue_limits(name, q, strict)?;
        }
        Ok(self)
    }
    pub(crate) fn key_name_or_default(&self) -> &str {
        self.key_name
            .as_deref()
            .unwrap_or("RootManageSharedAccessKey")
    }
}

fn config_error(reason: String) -> EmulatorError {
    EmulatorError::Config { reason }
}

fn check_tier(tier: Tier, kib: Option<u64>) -> Result<(), EmulatorError> {
    match (tier, kib) {
        (Tier::Standard, Some(_)) => Err(config_error(format!(
            "max_message_size_kib: the Standard tier's limit is fixed at {STANDARD_MAX_MESSAGE_KIB} KiB; set tier = \"premium\" to change it"
        ))),
        (Tier::Premium, Some(k))
            if !(PREMIUM_DEFAULT_MAX_MESSAGE_KIB..=PREMIUM_MAX_MESSAGE_KIB).contains(&k) =>
        {
            Err(config_error(format!(
                "max_message_size_kib: {k} is outside the Premium range {PREMIUM_DEFAULT_MAX_MESSAGE_KIB}..={PREMIUM_MAX_MESSAGE_KIB}"
            )))
        }
        _ => Ok(()),
    }
}

/// Checks a queue name and its settings (`strict`: Service Bus' lower bounds too).
pub(crate) fn check_queue_limits(
    name: &str,
    q: &QueueConfig,
    strict: bool,
) -> Result<(), EmulatorError> {
    if name.is_empty() || name.contains('/') || name.starts_with('$') {
        return Err(config_error(format!("invalid queue name `{name}`")));
    }
    let field = |f: &str, why: String| config_error(format!("queue `{name}`: {f}: {why}"));
    if q.max_delivery_count == 0 {
        return Err(field("max_delivery_count", "must be at least 1".into()));
    }
    let lock = q.lock_duration_secs;
    let lock_ok = if strict {
        LOCK_RANGE_SECS.contains(&lock)
    } else {
        (1..=*LOCK_RANGE_SECS.end()).contains(&lock)
    };
    if !lock_ok {
        return Err(field(
            "lock_duration_secs",
            format!("{lock} is outside Service Bus' range 5..=300 seconds"),
        ));
    }
    if let Some(w) = q.duplicate_detection_window_secs {
        let ok = if strict {
            DEDUP_RANGE_SECS.contains(&w)
        } else {
            (1..=*DEDUP_RANGE_SECS.end()).contains(&w)
        };
        if !ok {
            return Err(field(
                "duplicate_detection_window_secs",
                format!("{w} is outside Service Bus' range 20..=604800 seconds (20 s to 7 days)"),
            ));
        }
    }
    Ok(())
}

/// Checks a queue created while the emulator serves (the lenient rules of code-built configs).
pub(crate) fn check_queue(name: &str, q: &QueueConfig) -> Result<(), EmulatorError> {
    check_queue_limits(name, q, false)
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

    fn reason(text: &str) -> String {
        EmulatorConfig::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn limits_follow_service_bus_and_errors_name_the_field() {
        let r = reason("[queues.a]\nlock_duration_secs = 4\n");
        assert!(r.contains("queue `a`: lock_duration_secs: 4"), "{r}");
        let r = reason("[queues.a]\nlock_duration_secs = 301\n");
        assert!(r.contains("lock_duration_secs: 301"), "{r}");
        let r = reason("[queues.a]\nduplicate_detection_window_secs = 19\n");
        assert!(r.contains("duplicate_detection_window_secs: 19"), "{r}");
        let r = reason("[queues.a]\nduplicate_detection_window_secs = 604801\n");
        assert!(r.contains("duplicate_detection_window_secs"), "{r}");
        let r = reason("[queues.a]\nmax_delivery_count = 0\n");
        assert!(r.contains("max_delivery_count: must be at least 1"), "{r}");
        let ok = "[queues.a]\nlock_duration_secs = 5\nduplicate_detection_window_secs = 20\n";
        assert!(EmulatorConfig::from_toml_str(ok).is_ok());
        let ok = "[queues.a]\nlock_duration_secs = 300\nduplicate_detection_window_secs = 604800\n";
        assert!(EmulatorConfig::from_toml_str(ok).is_ok());
        // Code-built configs may go below the minimums (fast expiry tests), never above.
        let fast = EmulatorConfig::new().with_queue(
            "a",
            QueueConfig::new().with_lock_duration(Duration::from_secs(2)),
        );
        assert!(fast.validated().is_ok());
        let slow = EmulatorConfig::new().with_queue(
            "a",
            QueueConfig::new().with_lock_duration(Duration::from_secs(301)),
        );
        assert!(slow.validated().is_err());
    }

    #[test]
    fn tiers_set_the_message_size() {
        assert_eq!(EmulatorConfig::new().max_message_size(), 256 * 1024);
        let p = EmulatorConfig::from_toml_str("tier = \"premium\"\n").unwrap();
        assert_eq!(p.max_message_size(), 1024 * 1024);
        let p =
            EmulatorConfig::from_toml_str("tier = \"premium\"\nmax_message_size_kib = 102400\n")
                .unwrap();
        assert_eq!(p.max_message_size(), 100 * 1024 * 1024);
        let r = reason("tier = \"premium\"\nmax_message_size_kib = 102401\n");
        assert!(r.contains("max_message_size_kib: 102401"), "{r}");
        let r = reason("max_message_size_kib = 1024\n");
        assert!(r.contains("max_message_size_kib"), "{r}");
    }

    #[test]
    fn debug_redacts_key() {
        let cfg = EmulatorConfig::new().with_key("policy", "CANARY-SECRET-123");
        assert!(!format!("{cfg:?}").contains("CANARY-SECRET-123"));
    }
}
