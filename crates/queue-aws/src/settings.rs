//! [`SqsSettings`]: the SQS provider's settings as written in a configuration file.

use std::fmt;

use queue_core::{
    ProviderSettings, QueueError, Result, SecretString, TypedSettings,
    config::{optional_secret, redacted},
};
use serde::Deserialize;

use crate::{PROVIDER, SqsBuilder, SqsProvider, StaticCredentials};

/// Settings of the SQS provider (`kind = "sqs"` in the `provider` table), read from
/// [`ProviderSettings`] with [`SqsSettings::from_provider_settings`].
///
/// ```
/// use queue_aws::SqsSettings;
/// use queue_core::ProviderSettings;
///
/// let settings: ProviderSettings =
///     serde_json::from_str(r#"{"kind":"sqs","region":"eu-west-1"}"#).unwrap();
/// let sqs = SqsSettings::from_provider_settings(&settings)?;
/// assert_eq!(sqs.region.as_deref(), Some("eu-west-1"));
/// # Ok::<(), queue_core::QueueError>(())
/// ```
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SqsSettings {
    /// AWS region; the default chain decides when unset.
    pub region: Option<String>,
    /// Endpoint override (emulators). Plain `http://` only for loopback hosts.
    pub endpoint: Option<String>,
    /// Named profile for the default credential chain.
    pub profile: Option<String>,
    /// Static access key id (prefer roles); needs `secret_access_key`.
    #[serde(deserialize_with = "optional_secret")]
    pub access_key_id: Option<SecretString>,
    /// Static secret access key.
    #[serde(deserialize_with = "optional_secret")]
    pub secret_access_key: Option<SecretString>,
    /// Session token for temporary static credentials.
    #[serde(deserialize_with = "optional_secret")]
    pub session_token: Option<SecretString>,
}

impl TypedSettings for SqsSettings {
    const KIND: &'static str = PROVIDER;
}

impl SqsSettings {
    /// The keys that hold secrets (taken verbatim from environment variables).
    pub const SECRET_KEYS: [&'static str; 3] =
        ["access_key_id", "secret_access_key", "session_token"];

    /// Reads the settings of a `kind = "sqs"` provider table. Errors name the key as written
    /// (`provider.regoin`) and never quote a value.
    pub fn from_provider_settings(settings: &ProviderSettings) -> Result<Self> {
        settings.parse()
    }
}

impl fmt::Debug for SqsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsSettings")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("profile", &self.profile)
            .field("access_key_id", &redacted(&self.access_key_id))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .finish_non_exhaustive()
    }
}

impl SqsBuilder {
    /// A builder set from configuration-file settings; further `with_*` calls may adjust it.
    ///
    /// Static credentials need both `access_key_id` and `secret_access_key`; one without
    /// the other is a [`QueueError::Config`] naming the missing field.
    pub fn from_settings(settings: &SqsSettings) -> Result<Self> {
        let mut builder = Self::new();
        builder.region = settings.region.clone();
        builder.endpoint = settings.endpoint.clone();
        builder.profile = settings.profile.clone();
        builder.credentials = credentials(settings)?;
        Ok(builder)
    }
}

impl SqsProvider {
    /// Builds a provider from configuration-file settings (see [`SqsBuilder::from_settings`]).
    pub async fn from_settings(settings: &SqsSettings) -> Result<Self> {
        SqsBuilder::from_settings(settings)?.build().await
    }
}

/// Static credentials from the settings, if any; a half-given pair is an error.
fn credentials(settings: &SqsSettings) -> Result<Option<StaticCredentials>> {
    let token = &settings.session_token;
    match (&settings.access_key_id, &settings.secret_access_key) {
        (Some(id), Some(secret)) => {
            let creds = StaticCredentials::new(id.clone(), secret.clone());
            Ok(Some(match token {
                Some(token) => creds.with_session_token(token.clone()),
                None => creds,
            }))
        }
        (Some(_), None) => Err(QueueError::config(
            "sqs.secret_access_key",
            "is required when `sqs.access_key_id` is set",
        )),
        (None, Some(_)) => Err(QueueError::config(
            "sqs.access_key_id",
            "is required when `sqs.secret_access_key` is set",
        )),
        (None, None) if token.is_some() => Err(QueueError::config(
            "sqs.session_token",
            "needs `sqs.access_key_id` and `sqs.secret_access_key`",
        )),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue_core::ExposeSecret;

    const CANARY: &str = "CANARY-aws-settings-41c2";

    fn parse(json: &str) -> Result<SqsSettings> {
        SqsSettings::from_provider_settings(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn settings_need_both_keys() {
        let mut s = SqsSettings {
            access_key_id: Some(CANARY.into()),
            ..SqsSettings::default()
        };
        let err = SqsBuilder::from_settings(&s).unwrap_err().to_string();
        assert!(err.contains("sqs.secret_access_key"), "{err}");
        assert!(!err.contains(CANARY));
        s.secret_access_key = Some(CANARY.into());
        s.region = Some("eu-west-1".into());
        s.endpoint = Some("http://127.0.0.1:1".into());
        let builder = SqsBuilder::from_settings(&s).unwrap();
        assert!(builder.credentials.is_some());
        assert_eq!(builder.region(), Some("eu-west-1"));
        assert_eq!(builder.endpoint(), Some("http://127.0.0.1:1"));
        assert!(builder.validate().is_ok());
        s.access_key_id = None;
        s.secret_access_key = None;
        s.session_token = Some(CANARY.into());
        let err = SqsBuilder::from_settings(&s).unwrap_err().to_string();
        assert!(err.contains("sqs.session_token"), "{err}");
    }

    #[test]
    fn settings_parse_from_the_provider_table_and_redact_secrets() {
        let s = parse(&format!(
            r#"{{"kind":"sqs","region":"us-east-1","access_key_id":12345678901234,"secret_access_key":"{CANARY}","session_token":true}}"#
        ))
        .unwrap();
        assert_eq!(s.region.as_deref(), Some("us-east-1"));
        assert_eq!(
            s.access_key_id.as_ref().unwrap().expose_secret(),
            "12345678901234"
        );
        assert_eq!(s.session_token.as_ref().unwrap().expose_secret(), "true");
        for text in [format!("{s:?}"), format!("{s:#?}")] {
            assert!(!text.contains(CANARY), "secret leaked: {text}");
        }
        let err = parse(r#"{"kind":"sqs","regoin":"x"}"#).unwrap_err();
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "provider.regoin"),
            "{err}"
        );
        let err = parse(&format!(
            r#"{{"kind":"sqs","secret_access_key":{{"k":"{CANARY}"}}}}"#
        ))
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains(CANARY), "{err}");
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "provider.secret_access_key"),
            "{err}"
        );
        let err = parse(r#"{"kind":"service-bus"}"#).unwrap_err();
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "provider.kind"),
            "{err}"
        );
    }
}
