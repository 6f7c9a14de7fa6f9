//! Reading configuration files (TOML, JSON, YAML) and the environment, with errors that name
//! the file, the line and the column, and never quote a value.

use std::{collections::HashMap, path::Path};

use queue_core::{QueueError, Result};
use serde::de::DeserializeOwned;

use super::{ENV_PREFIX, ENV_SEPARATOR};

/// The syntax of a configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigFormat {
    /// TOML (`.toml`).
    Toml,
    /// JSON (`.json`).
    Json,
    /// YAML (`.yaml` or `.yml`).
    Yaml,
}

impl ConfigFormat {
    /// The format a file name's extension stands for; `None` for any other extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Some(Self::Toml),
            "json" => Some(Self::Json),
            "yaml" | "yml" => Some(Self::Yaml),
            _ => None,
        }
    }

    fn file_format(self) -> config::FileFormat {
        match self {
            Self::Toml => config::FileFormat::Toml,
            Self::Json => config::FileFormat::Json,
            Self::Yaml => config::FileFormat::Yaml,
        }
    }
}

/// A configuration file's text, kept to point errors at lines.
pub(super) struct Source {
    /// How the file is named in errors (`path` or `<toml text>`).
    pub(super) name: String,
    pub(super) text: String,
    pub(super) format: ConfigFormat,
}

impl Source {
    /// Reads `path`; a missing or unreadable file, or an unknown extension, is a config
    /// error naming the path.
    pub(super) fn read(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let format = ConfigFormat::from_path(path).ok_or_else(|| {
            QueueError::config(
                "<file>",
                format!(
                    "`{name}`: unknown configuration format; the file name must end in .toml, .json, .yaml or .yml"
                ),
            )
        })?;
        let text = std::fs::read_to_string(path).map_err(|e| {
            let what = match e.kind() {
                std::io::ErrorKind::NotFound => "does not exist".to_owned(),
                std::io::ErrorKind::PermissionDenied => "cannot be read (permission denied)".into(),
                std::io::ErrorKind::InvalidData => "is not UTF-8 text".into(),
                _ => format!("cannot be read ({})", e.kind()),
            };
            QueueError::config("<file>", format!("configuration file `{name}` {what}"))
        })?;
        Ok(Self { name, text, format })
    }

    /// Text given in code, named after its format in errors.
    pub(super) fn text(text: &str, format: ConfigFormat) -> Self {
        let name = format!("<{} text>", format!("{format:?}").to_ascii_lowercase());
        Self {
            name,
            text: text.to_owned(),
            format,
        }
    }
}

/// Builds the layered configuration (file, then `QUEUE_RUNTIME__...` variables from `env`
/// or the process) and deserializes it into `T`.
pub(super) fn load<T: DeserializeOwned>(
    source: Option<&Source>,
    env: Option<Option<HashMap<String, String>>>,
) -> Result<T> {
    let mut builder = config::Config::builder();
    if let Some(src) = source {
        builder = builder.add_source(config::File::from_str(&src.text, src.format.file_format()));
    }
    if let Some(env) = env {
        // Secrets are taken verbatim: parsing would turn `0012` into 12 and `TRUE` into true.
        let (secrets, plain): (HashMap<_, _>, HashMap<_, _>) = env
            .unwrap_or_else(process_env)
            .into_iter()
            .partition(|(name, _)| is_secret_var(name));
        builder = builder
            .add_source(environment(plain).try_parsing(true))
            .add_source(environment(secrets));
    }
    let built = builder.build().map_err(|e| locate(e, source))?;
    built.try_deserialize().map_err(|e| locate(e, source))
}

/// The settings that hold secrets, as dotted keys.
const SECRET_KEYS: [&str; 4] = [
    "provider.access_key_id",
    "provider.secret_access_key",
    "provider.session_token",
    "provider.connection_string",
];

/// Whether `name` (`QUEUE_RUNTIME__PROVIDER__SECRET_ACCESS_KEY`, any case) sets a secret.
fn is_secret_var(name: &str) -> bool {
    let dotted = name
        .get(ENV_PREFIX.len() + ENV_SEPARATOR.len()..)
        .unwrap_or_default()
        .to_ascii_lowercase()
        .replace(ENV_SEPARATOR, ".");
    SECRET_KEYS.contains(&dotted.as_str())
}

/// The process's `QUEUE_RUNTIME__...` variables (others, and non-UTF-8 ones, are left out).
fn process_env() -> HashMap<String, String> {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.to_ascii_uppercase().starts_with(&prefix))
        .collect()
}

/// A `QUEUE_RUNTIME__...` environment source over `vars`.
fn environment(vars: HashMap<String, String>) -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .source(Some(vars))
}

/// Maps a `config` error to a [`QueueError::Config`] that names the key the user wrote and,
/// for file contents, `file:line:column`.
fn locate(err: config::ConfigError, source: Option<&Source>) -> QueueError {
    if let config::ConfigError::FileParse { cause, .. } = &err {
        let name = source.map_or("<file>", |s| s.name.as_str());
        return QueueError::config("<file>", syntax_error(name, &cause.to_string()));
    }
    let from_env = matches!(&err, config::ConfigError::Type { origin: Some(o), .. } if o.contains("environment"));
    match super::config_error(err) {
        QueueError::Config { field, mut reason } => {
            if !field.contains('.') && reason.starts_with("unknown field") {
                reason.push_str("; put the application's own settings in the `app` table");
            }
            let place = source
                .filter(|_| !from_env)
                .and_then(|s| key_position(s, &field).map(|(l, c)| (s, l, c)));
            match place {
                Some((s, line, col)) => {
                    QueueError::config(field, format!("{reason} (at {}:{line}:{col})", s.name))
                }
                None => QueueError::config(field, reason),
            }
        }
        other => other,
    }
}

/// Adds `(at file:line:column)` to an error about a provider key (`provider.region`), which
/// the provider crate finds after loading, when the key is written in the file.
pub(super) fn place_provider_error(err: QueueError, source: Option<&Source>) -> QueueError {
    match err {
        QueueError::Config { field, reason } if field.starts_with("provider.") => {
            match source.and_then(|s| key_position(s, &field).map(|(l, c)| (s, l, c))) {
                Some((s, line, col)) => {
                    QueueError::config(field, format!("{reason} (at {}:{line}:{col})", s.name))
                }
                None => QueueError::config(field, reason),
            }
        }
        other => other,
    }
}

/// "`file`:line:column: message" from a parser's error text, without the parser's quote of
/// the offending line (it could hold a secret).
fn syntax_error(name: &str, text: &str) -> String {
    let line = number_after(text, "line ");
    let col = number_after(text, "column ").or_else(|| number_after(text, "col "));
    // TOML: a header line, a quoted source excerpt (lines with `|`), then the message.
    // JSON and YAML: "message at line L column C".
    let message = if text.contains('\n') {
        text.lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty() && !l.contains('|'))
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        text.split(" at line ")
            .next()
            .unwrap_or(text)
            .split(" at byte ")
            .next()
            .unwrap_or(text)
            .to_owned()
    };
    match (line, col) {
        (Some(l), Some(c)) => format!("syntax error at {name}:{l}:{c}: {message}"),
        (Some(l), None) => format!("syntax error at {name}:{l}: {message}"),
        _ => format!("syntax error in {name}: {message}"),
    }
}

fn number_after(text: &str, marker: &str) -> Option<usize> {
    let start = text.find(marker)? + marker.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Where `dotted` (`processor.retry.max_attempts`) is written in the file, 1-based
/// `(line, column)`: the first line that writes its last segment as a key after a line that
/// names its parent. Best effort: `None` when not found.
pub(super) fn key_position(source: &Source, dotted: &str) -> Option<(usize, usize)> {
    let mut segments: Vec<&str> = dotted.split('.').filter(|s| !s.is_empty()).collect();
    let last = segments.pop()?;
    if last.starts_with('<') {
        return None;
    }
    let parent = segments.last().copied();
    let lines: Vec<&str> = source.text.lines().collect();
    let start = parent
        .and_then(|p| {
            lines
                .iter()
                .position(|l| names_key(l, p, source.format) || names_table(l, p))
        })
        .unwrap_or(0);
    lines
        .iter()
        .enumerate()
        .skip(start)
        .find(|(i, l)| (*i > start || parent.is_none()) && names_key(l, last, source.format))
        .or_else(|| {
            // A parent written as a TOML dotted table (`[processor.retry]`) or inline.
            lines
                .iter()
                .enumerate()
                .find(|(_, l)| names_key(l, last, source.format))
        })
        .map(|(i, l)| (i + 1, l.len() - l.trim_start().len() + 1))
}

fn names_table(line: &str, key: &str) -> bool {
    let t = line.trim();
    t.starts_with('[')
        && t.trim_matches(['[', ']'])
            .split('.')
            .any(|s| s.trim() == key)
}

fn names_key(line: &str, key: &str, format: ConfigFormat) -> bool {
    let t = line.trim_start().trim_start_matches("- ");
    match format {
        ConfigFormat::Toml => t
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('=')),
        ConfigFormat::Yaml => t
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':')),
        ConfigFormat::Json => t
            .strip_prefix('"')
            .and_then(|r| r.strip_prefix(key))
            .and_then(|r| r.strip_prefix('"'))
            .is_some_and(|rest| rest.trim_start().starts_with(':')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every secret key a compiled-in provider declares is taken verbatim from the
    /// environment (the loader keeps its own list so it works for providers not built in).
    #[test]
    fn secret_keys_cover_every_compiled_in_provider() {
        #[allow(unused_mut)] // without aws and azure there is nothing to add
        let mut declared: Vec<&str> = Vec::new();
        #[cfg(feature = "aws")]
        declared.extend(queue_aws::SqsSettings::SECRET_KEYS);
        #[cfg(feature = "azure")]
        declared.extend(queue_azure::ServiceBusSettings::SECRET_KEYS);
        for key in declared {
            let dotted = format!("provider.{key}");
            assert!(SECRET_KEYS.contains(&dotted.as_str()), "{dotted} missing");
            let var = format!("QUEUE_RUNTIME__PROVIDER__{}", key.to_ascii_uppercase());
            assert!(is_secret_var(&var), "{var}");
        }
        assert!(!is_secret_var("QUEUE_RUNTIME__PROVIDER__REGION"));
        assert!(is_secret_var("queue_runtime__provider__connection_string"));
    }
}
