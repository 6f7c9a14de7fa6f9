//! Provider settings as written in a configuration file: an open table that each provider
//! crate parses into its own typed settings.
//!
//! The core does not know which providers exist. [`ProviderSettings`] holds the provider's
//! `kind` (`"memory"`, `"sqs"`, `"service-bus"`, or any outside provider's id) and the other
//! keys of the `provider` table as written. A provider crate defines its typed settings,
//! implements [`TypedSettings`] for them, and reads them with [`ProviderSettings::parse`],
//! whose errors name the key as the user wrote it (`provider.region`) and never quote a value.
//!
//! ```
//! use queue_core::{ProviderSettings, TypedSettings};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct RabbitSettings {
//!     url: String,
//!     #[serde(default, deserialize_with = "queue_core::config::optional_secret")]
//!     password: Option<queue_core::SecretString>,
//! }
//!
//! impl TypedSettings for RabbitSettings {
//!     const KIND: &'static str = "rabbit";
//! }
//!
//! let settings: ProviderSettings =
//!     serde_json::from_str(r#"{"kind":"rabbit","url":"amqp://localhost","password":1234}"#)?;
//! let rabbit: RabbitSettings = settings.parse()?;
//! assert_eq!(rabbit.url, "amqp://localhost");
//! assert!(rabbit.password.is_some()); // a number, taken as its string form
//!
//! let typo: ProviderSettings = serde_json::from_str(r#"{"kind":"rabbit","ulr":"x"}"#)?;
//! match typo.parse::<RabbitSettings>() {
//!     Err(queue_core::QueueError::Config { field, .. }) => assert_eq!(field, "provider.ulr"),
//!     other => panic!("{:?}", other.err()),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Secret fields of typed settings use [`optional_secret`]: a secret written as a number or a
//! boolean (`secret_access_key = 12345678901234`) is taken as its string form, and a mistyped
//! secret (a table, a list) is refused without quoting it.

use std::fmt;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, de, de::DeserializeOwned};
use serde_json::{Map, Value};

use crate::error::{QueueError, Result};

/// The key of the provider table that names the provider.
pub const KIND_KEY: &str = "kind";
/// The provider used when the settings name none.
pub const DEFAULT_KIND: &str = "memory";
/// The table these settings are read from; errors name keys below it (`provider.region`).
pub const SETTINGS_TABLE: &str = "provider";

/// Which provider to use (its `kind`) and its settings, as written.
///
/// Deserializes from any table: `kind` (default `"memory"`) names the provider, every other
/// key is kept for the provider crate, which reads it with [`ProviderSettings::parse`]. So a
/// configuration parses in every build, whichever providers are compiled in.
///
/// `Debug` shows the kind and the key names, never a value (values may be secrets).
#[derive(Clone, PartialEq)]
pub struct ProviderSettings {
    kind: String,
    values: Map<String, Value>,
}

impl ProviderSettings {
    /// Settings for provider `kind` with no keys set.
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            values: Map::new(),
        }
    }

    /// Sets `key` to `value` (`with_value("region", "eu-west-1")`).
    pub fn with_value(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.values.insert(key.into(), value.into());
        self
    }

    /// The provider these settings are for (`"memory"`, `"sqs"`, `"service-bus"`, ...).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The keys set besides `kind`, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// The value of `key` as written. It may be a secret: never log it.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Parses the settings into the typed settings `T` of one provider.
    ///
    /// Fails with [`QueueError::Config`] when the settings are for another kind (field
    /// `provider.kind`), or when a key is unknown, missing or mistyped: the field is the key
    /// as written (`provider.regoin`), and the reason never quotes a value.
    pub fn parse<T: TypedSettings>(&self) -> Result<T> {
        if self.kind != T::KIND {
            return Err(QueueError::config(
                format!("{SETTINGS_TABLE}.{KIND_KEY}"),
                format!(
                    "the settings are for provider `{}`, not `{}`",
                    self.kind,
                    T::KIND
                ),
            ));
        }
        serde_path_to_error::deserialize(Value::Object(self.values.clone())).map_err(parse_error)
    }
}

impl Default for ProviderSettings {
    /// The in-memory provider with its defaults.
    fn default() -> Self {
        Self::new(DEFAULT_KIND)
    }
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("kind", &self.kind)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<'de> Deserialize<'de> for ProviderSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut values = Map::<String, Value>::deserialize(d)?;
        let kind = match values.remove(KIND_KEY) {
            None => DEFAULT_KIND.to_owned(),
            Some(Value::String(kind)) => kind,
            Some(_) => {
                return Err(de::Error::custom(format_args!(
                    "`{KIND_KEY}` must be a string naming the provider, such as \"sqs\""
                )));
            }
        };
        Ok(Self { kind, values })
    }
}

/// Typed settings of one provider, read from [`ProviderSettings`] by
/// [`ProviderSettings::parse`]. Each provider crate implements it for its own settings type
/// (`queue_aws::SqsSettings`, `queue_azure::ServiceBusSettings`,
/// `queue_memory::MemorySettings`).
pub trait TypedSettings: DeserializeOwned {
    /// The `kind` these settings are for (the provider's [`name`](crate::QueueProvider::name)).
    const KIND: &'static str;
}

/// Maps a deserialization error to [`QueueError::Config`] naming `provider.<key>`.
fn parse_error(err: serde_path_to_error::Error<serde_json::Error>) -> QueueError {
    let path = err.path().to_string();
    let text = err.into_inner().to_string();
    // "missing field `x`" and "unknown field `x`, expected ..." name the key in the message;
    // the path then ends at the table (or already at the key, for unknown fields).
    let named = serde_named_field(&text);
    let mut segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    if let Some(key) = named
        && segments.last() != Some(&key)
    {
        segments.push(key);
    }
    let field = std::iter::once(SETTINGS_TABLE)
        .chain(segments)
        .collect::<Vec<_>>()
        .join(".");
    QueueError::config(field, serde_message_without_value(text))
}

/// The key a serde message names, for `missing field `x`` and `unknown field `x`, expected
/// ...`; `None` for other messages. Shared by the settings parsers of every crate.
pub fn serde_named_field(text: &str) -> Option<&str> {
    ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| text.strip_prefix(p))
        .and_then(|rest| rest.split('`').next())
}

/// A serde message fit for an error: `invalid type: integer `5`, expected ...` quotes the
/// value (it could be a mistyped secret), so only what was expected is kept; other
/// messages are returned as they are.
pub fn serde_message_without_value(text: String) -> String {
    if !(text.starts_with("invalid type") || text.starts_with("invalid value")) {
        return text;
    }
    match text.split_once(", expected ") {
        Some((_, expected)) => format!("invalid type or value, expected {expected}"),
        None => "invalid type or value".to_owned(),
    }
}

/// Deserializes an optional secret from a string, an integer, a float or a boolean (taken as
/// its string form; a float as Rust prints it, so write secrets with significant zeros as
/// strings). Any other type is an error that names the type, never the value.
///
/// Use it as `#[serde(default, deserialize_with = "queue_core::config::optional_secret")]`.
pub fn optional_secret<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<SecretString>, D::Error> {
    Option::<LenientSecret>::deserialize(d).map(|s| s.map(|s| s.0))
}

/// What `Debug` shows for an optional secret: `<redacted>` or `<unset>`.
pub fn redacted(secret: &Option<SecretString>) -> &'static str {
    if secret.is_some() {
        "<redacted>"
    } else {
        "<unset>"
    }
}

/// A secret read from any scalar.
struct LenientSecret(SecretString);

impl<'de> Deserialize<'de> for LenientSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
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

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<SecretString, E> {
        Ok(SecretString::from(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<SecretString, E> {
        Ok(SecretString::from(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> std::result::Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> std::result::Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const CANARY: &str = "CANARY-5ec4e7-do-not-print";

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        retries: Option<u32>,
        #[serde(default, deserialize_with = "optional_secret")]
        key: Option<SecretString>,
        #[serde(default, deserialize_with = "optional_secret")]
        token: Option<SecretString>,
    }

    impl TypedSettings for Demo {
        const KIND: &'static str = "demo";
    }

    fn settings(json: &str) -> ProviderSettings {
        serde_json::from_str(json).unwrap()
    }

    fn field_and_reason(err: QueueError) -> (String, String) {
        match err {
            QueueError::Config { field, reason } => (field, reason),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kind_defaults_to_memory_and_debug_shows_keys_only() {
        let s = settings(&format!(r#"{{"key":"{CANARY}","region":"r"}}"#));
        assert_eq!(s.kind(), "memory");
        assert_eq!(ProviderSettings::default().kind(), "memory");
        let printed = format!("{s:?} {s:#?}");
        assert!(!printed.contains(CANARY), "{printed}");
        assert!(
            printed.contains("key") && printed.contains("region"),
            "{printed}"
        );
        assert_eq!(s.keys().collect::<Vec<_>>(), ["key", "region"]);
        let err = serde_json::from_str::<ProviderSettings>(r#"{"kind":5}"#).unwrap_err();
        assert!(err.to_string().contains("`kind` must be a string"), "{err}");
    }

    #[test]
    fn parse_reads_typed_settings_and_checks_the_kind() {
        let s = settings(r#"{"kind":"demo","region":"eu","retries":3}"#);
        let demo: Demo = s.parse().unwrap();
        assert_eq!(demo.region.as_deref(), Some("eu"));
        assert_eq!(demo.retries, Some(3));
        let built = ProviderSettings::new("demo").with_value("region", "eu");
        assert_eq!(built.parse::<Demo>().unwrap().region.as_deref(), Some("eu"));
        let (field, reason) =
            field_and_reason(settings(r#"{"kind":"sqs"}"#).parse::<Demo>().unwrap_err());
        assert_eq!(field, "provider.kind");
        assert!(reason.contains("`sqs`, not `demo`"), "{reason}");
    }

    #[test]
    fn errors_name_the_key_as_written_without_values() {
        let (field, reason) = field_and_reason(
            settings(r#"{"kind":"demo","regoin":"x"}"#)
                .parse::<Demo>()
                .unwrap_err(),
        );
        assert_eq!(field, "provider.regoin");
        assert!(reason.contains("unknown field `regoin`"), "{reason}");
        let (field, reason) = field_and_reason(
            settings(&format!(
                r#"{{"kind":"demo","region":7,"retries":"{CANARY}"}}"#
            ))
            .parse::<Demo>()
            .unwrap_err(),
        );
        assert!(
            field == "provider.region" || field == "provider.retries",
            "{field}"
        );
        assert!(
            !reason.contains(CANARY) && !reason.contains('7'),
            "{reason}"
        );
    }

    #[test]
    fn numeric_and_boolean_secrets_are_taken_as_strings() {
        let s = settings(r#"{"kind":"demo","key":12345678901234,"token":true}"#);
        let demo: Demo = s.parse().unwrap();
        assert_eq!(demo.key.unwrap().expose_secret(), "12345678901234");
        assert_eq!(demo.token.unwrap().expose_secret(), "true");
        let demo: Demo = settings(r#"{"kind":"demo","key":-7,"token":null}"#)
            .parse()
            .unwrap();
        assert_eq!(demo.key.unwrap().expose_secret(), "-7");
        assert!(demo.token.is_none());
    }

    #[test]
    fn a_mistyped_secret_is_named_but_never_quoted() {
        for value in [
            format!(r#"{{"k":"{CANARY}"}}"#),
            format!(r#"["{CANARY}", 98765]"#),
        ] {
            let s = settings(&format!(r#"{{"kind":"demo","key":{value}}}"#));
            let err = s.parse::<Demo>().unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(
                !shown.contains(CANARY) && !shown.contains("98765"),
                "{shown}"
            );
            let (field, _) = field_and_reason(err);
            assert_eq!(field, "provider.key");
        }
        assert_eq!(
            serde_message_without_value("invalid type: integer `5`, expected a string".into()),
            "invalid type or value, expected a string"
        );
        assert_eq!(redacted(&Some(SecretString::from(CANARY))), "<redacted>");
        assert_eq!(redacted(&None), "<unset>");
    }
}
