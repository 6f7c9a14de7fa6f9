//! Logs that never carry a secret, whoever writes them.
//!
//! The SDKs under the providers log credentials when their tracing targets are verbose:
//! the AWS SDK logs the access key id at `DEBUG` (endpoint resolution) and the session
//! token and `Authorization` header at `TRACE` (request signing, HTTP headers); AMQP and
//! HTTP stacks log frames and headers at `TRACE`. Two guards keep them out of the output:
//!
//! - [`SecretGuard`] caps every target in [`SDK_TARGET_CAPS`] at a level where it logs no
//!   credentials (`INFO`), whatever level the rest of the subscriber allows. It works as a
//!   global layer (`registry().with(SecretGuard::default())`) and as a per-layer filter
//!   (`fmt::layer().with_filter(SecretGuard::default())`).
//! - [`redacting`] wraps a writer so that every formatted line goes through
//!   [`queue_security::redact_text`] before it is written: connection-string keys, SAS
//!   signatures, tokens and keys that reach a log line anyway are replaced.
//!
//! [`init_logging`](init) installs both with a `fmt` layer on stderr: **this is the way to install a
//! subscriber** in a service built on queue-runtime.
//!
//! ```no_run
//! use queue_runtime::telemetry;
//! use tracing_subscriber::filter::LevelFilter;
//! telemetry::init_logging(LevelFilter::DEBUG).expect("no other subscriber installed");
//! ```
//!
//! Composing your own subscriber instead (here with a per-layer filter):
//!
//! ```
//! use queue_runtime::telemetry::{SecretGuard, redacting};
//! use tracing_subscriber::{Layer, filter::LevelFilter, fmt, prelude::*};
//! let subscriber = tracing_subscriber::registry().with(
//!     fmt::layer()
//!         .with_writer(redacting(std::io::stderr))
//!         .with_filter(SecretGuard::default())
//!         .with_filter(LevelFilter::TRACE),
//! );
//! # drop(subscriber);
//! ```

use std::io;

use tracing::{Level, Metadata, Subscriber, subscriber::Interest};
use tracing_subscriber::{
    filter::LevelFilter,
    fmt::MakeWriter,
    layer::{Context, Filter, Layer},
    prelude::*,
    util::TryInitError,
};

/// Targets (crate names, matched with their sub-modules) that log credentials, frames or
/// headers when verbose, and the most verbose level each may log at.
pub const SDK_TARGET_CAPS: &[(&str, Level)] = &[
    // AWS SDK: access key id at DEBUG, canonical request / session token at TRACE.
    ("aws_config", Level::INFO),
    ("aws_credential_types", Level::INFO),
    ("aws_runtime", Level::INFO),
    ("aws_sdk_sqs", Level::INFO),
    ("aws_sdk_sso", Level::INFO),
    ("aws_sdk_ssooidc", Level::INFO),
    ("aws_sdk_sts", Level::INFO),
    ("aws_sigv4", Level::INFO),
    ("aws_smithy_http", Level::INFO),
    ("aws_smithy_http_client", Level::INFO),
    ("aws_smithy_runtime", Level::INFO),
    ("aws_smithy_runtime_api", Level::INFO),
    ("aws_smithy_types", Level::INFO),
    // HTTP and TLS stacks: headers (Authorization, x-amz-security-token) at TRACE.
    ("h2", Level::INFO),
    ("hyper", Level::INFO),
    ("hyper_util", Level::INFO),
    ("reqwest", Level::INFO),
    ("rustls", Level::INFO),
    ("tokio_rustls", Level::INFO),
    // AMQP (SASL frames, CBS put-token with the SAS token) and WebSockets.
    ("fe2o3_amqp", Level::INFO),
    ("fe2o3_amqp_cbs", Level::INFO),
    ("fe2o3_amqp_types", Level::INFO),
    ("fe2o3_amqp_ws", Level::INFO),
    ("serde_amqp", Level::INFO),
    ("tungstenite", Level::INFO),
    ("tokio_tungstenite", Level::INFO),
    // Azure SDK (Entra ID tokens) and Redis (AUTH).
    ("azure_core", Level::INFO),
    ("azure_identity", Level::INFO),
    ("redis", Level::INFO),
];

/// Caps the targets of [`SDK_TARGET_CAPS`] (or your own list) at their safe level; every
/// other target passes unchanged. Use it as a global layer or as a per-layer filter.
#[derive(Clone, Debug)]
pub struct SecretGuard {
    caps: Vec<(String, Level)>,
}

impl Default for SecretGuard {
    fn default() -> Self {
        Self {
            caps: SDK_TARGET_CAPS
                .iter()
                .map(|(t, l)| ((*t).to_owned(), *l))
                .collect(),
        }
    }
}

impl SecretGuard {
    /// Adds (or tightens) a cap: `target` and its sub-modules log at most at `level`.
    pub fn with_cap(mut self, target: impl Into<String>, level: Level) -> Self {
        self.caps.push((target.into(), level));
        self
    }

    /// Whether an event or span with this metadata may be recorded.
    pub fn allows(&self, metadata: &Metadata<'_>) -> bool {
        let target = metadata.target();
        self.caps
            .iter()
            .filter(|(cap, _)| {
                target
                    .strip_prefix(cap.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .all(|(_, level)| metadata.level() <= level)
    }

    fn interest(&self, metadata: &Metadata<'_>) -> Interest {
        if self.allows(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}

impl<S: Subscriber> Layer<S> for SecretGuard {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.interest(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        self.allows(metadata)
    }
}

impl<S> Filter<S> for SecretGuard {
    fn enabled(&self, metadata: &Metadata<'_>, _ctx: &Context<'_, S>) -> bool {
        self.allows(metadata)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.interest(metadata)
    }
}

/// A [`MakeWriter`] whose writers redact every chunk they are given (one formatted event
/// per write with `tracing_subscriber::fmt`) with [`queue_security::redact_text`].
#[derive(Clone, Debug)]
pub struct Redacting<M>(M);

/// Wraps `make_writer` (for example `std::io::stderr`) in [`Redacting`].
pub fn redacting<M>(make_writer: M) -> Redacting<M> {
    Redacting(make_writer)
}

/// The writer of [`Redacting`].
#[derive(Debug)]
pub struct RedactingWriter<W>(W);

impl<W: io::Write> io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0
            .write_all(queue_security::redact_text(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        RedactingWriter(self.0.make_writer_for(meta))
    }
}

/// Installs the global subscriber: `fmt` on stderr through [`redacting`], [`SecretGuard`]
/// on every event, and `level` as the most verbose level for everything else.
pub fn init(level: LevelFilter) -> Result<(), TryInitError> {
    tracing_subscriber::registry()
        .with(SecretGuard::default())
        .with(level)
        .with(tracing_subscriber::fmt::layer().with_writer(redacting(io::stderr)))
        .try_init()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_match_crates_and_their_modules_only() {
        let guard = SecretGuard::default();
        let cap = |target: &str, level: Level| {
            guard
                .caps
                .iter()
                .filter(|(c, _)| {
                    target
                        .strip_prefix(c.as_str())
                        .is_some_and(|r| r.is_empty() || r.starts_with("::"))
                })
                .all(|(_, l)| level <= *l)
        };
        assert!(!cap(
            "aws_smithy_runtime::client::orchestrator::endpoints",
            Level::DEBUG
        ));
        assert!(!cap("aws_sigv4", Level::TRACE));
        assert!(cap("aws_sigv4", Level::WARN));
        assert!(
            cap("aws_smithy_runtime_apix", Level::TRACE),
            "a different crate"
        );
        assert!(cap("queue_runtime::processor", Level::TRACE));
    }

    #[test]
    fn the_writer_redacts_each_line() {
        let mut out = Vec::new();
        let mut w = RedactingWriter(&mut out);
        io::Write::write_all(&mut w, b"conn SharedAccessKey=CANARYkey;EntityPath=q\n").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("CANARY") && text.contains("EntityPath=q"),
            "{text}"
        );
    }
}
