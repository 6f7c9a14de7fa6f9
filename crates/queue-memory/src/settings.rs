//! [`MemorySettings`]: the in-memory provider's settings as written in a configuration file.

use std::fmt;

use queue_core::{ProviderSettings, Result, TypedSettings};
use serde::Deserialize;

use crate::{InMemoryBuilder, InMemoryProvider, Profile, state::PROVIDER};

/// Settings of the in-memory provider (`kind = "memory"` in the `provider` table, the
/// default), read from [`ProviderSettings`] with [`MemorySettings::from_provider_settings`].
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemorySettings {
    /// Which provider's limits to imitate: `"memory"` (default), `"sqs"` or `"service-bus"`.
    pub profile: Option<String>,
}

impl TypedSettings for MemorySettings {
    const KIND: &'static str = PROVIDER;
}

impl MemorySettings {
    /// Reads the settings of a `kind = "memory"` provider table. Errors name the key as
    /// written (`provider.profil`) and never quote a value.
    pub fn from_provider_settings(settings: &ProviderSettings) -> Result<Self> {
        settings.parse()
    }
}

impl fmt::Debug for MemorySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySettings")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl InMemoryBuilder {
    /// A builder set from configuration-file settings; further `with_*` calls may adjust it.
    ///
    /// The profile (`memory`, `sqs` or `service-bus`) picks the limits; another value fails
    /// with [`QueueError::Config`](queue_core::QueueError::Config) naming `memory.profile`.
    pub fn from_settings(settings: &MemorySettings) -> Result<Self> {
        let profile = match settings.profile.as_deref() {
            None => Profile::default(),
            Some(p) => p.parse()?,
        };
        Ok(InMemoryProvider::builder().with_profile(profile))
    }
}

impl InMemoryProvider {
    /// A provider configured from settings (see [`InMemoryBuilder::from_settings`]).
    pub fn from_settings(settings: &MemorySettings) -> Result<Self> {
        InMemoryBuilder::from_settings(settings)?.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue_core::{QueueError, QueueProvider};

    #[test]
    fn settings_parse_from_the_provider_table() {
        let table = ProviderSettings::new("memory").with_value("profile", "sqs");
        let settings = MemorySettings::from_provider_settings(&table).unwrap();
        assert_eq!(settings.profile.as_deref(), Some("sqs"));
        let provider = InMemoryProvider::from_settings(&settings).unwrap();
        assert_eq!(provider.profile(), Profile::Sqs);
        assert_eq!(provider.name(), "memory");
        let defaults = MemorySettings::from_provider_settings(&ProviderSettings::default());
        assert!(defaults.unwrap().profile.is_none());

        let typo = ProviderSettings::new("memory").with_value("profil", "sqs");
        let err = MemorySettings::from_provider_settings(&typo).unwrap_err();
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "provider.profil"),
            "{err}"
        );
        let unknown = MemorySettings {
            profile: Some("kafka".into()),
        };
        let err = InMemoryProvider::from_settings(&unknown).unwrap_err();
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "memory.profile"),
            "{err}"
        );
    }
}
