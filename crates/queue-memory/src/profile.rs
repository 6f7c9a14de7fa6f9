//! Profiles: which provider's limits and ordering model the in-memory provider imitates.

use std::{fmt, str::FromStr, time::Duration};

use queue_core::QueueError;

/// Which provider's limits and ordering model [`crate::InMemoryProvider`] imitates.
///
/// | profile | max message size | max batch | max lock duration | session ids | max schedule delay |
/// |---|---|---|---|---|---|
/// | `memory` (default) | 256 KiB | 100 | 5 minutes | session locks | none |
/// | `sqs` | 1 MiB | 10 | 12 hours | FIFO message groups | 15 minutes |
/// | `service-bus` | 256 KiB (standard tier) | 100 | 5 minutes | session locks | none |
///
/// Sizes are compared with [`queue_core::Message::encoded_size`].
///
/// With session locks ([`SessionSupport::Locked`](queue_core::SessionSupport::Locked)),
/// messages with a session id are received through
/// [`accept_session`](queue_core::QueueProvider::accept_session), as on Service Bus. The
/// `sqs` profile behaves like an SQS FIFO queue instead
/// ([`SessionSupport::Grouped`](queue_core::SessionSupport::Grouped)): a session id is a
/// `MessageGroupId`, group messages come through the plain receive in send order, a group
/// is blocked while one of its messages is in flight (locked, or abandoned with a delay
/// that has not passed), every receive counts towards the queue's
/// [`max_delivery_count`](queue_core::QueueSpec::max_delivery_count) (`maxReceiveCount`),
/// and messages of a group whose locks expire together come back in group order.
/// `accept_session` is unsupported there, and so is a scheduled enqueue time on a group
/// message (SQS FIFO has no per-message delay).
///
/// `send_batch` also follows the profile. The `memory` and `service-bus` profiles store a
/// batch all or nothing ([`batch_atomic`](queue_core::Capabilities::batch_atomic)). The
/// `sqs` profile answers as `SqsProvider` does: each entry is accepted or refused on its
/// own, the accepted ones are stored in order, and refused entries make a
/// [`QueueError::PartialBatch`]; only a missing queue refuses the whole batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Profile {
    /// The provider's own limits.
    #[default]
    Memory,
    /// AWS SQS limits.
    Sqs,
    /// Azure Service Bus (standard tier) limits.
    ServiceBus,
}

impl Profile {
    /// The configuration string of this profile.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqs => "sqs",
            Self::ServiceBus => "service-bus",
        }
    }

    /// Whether session ids are SQS FIFO message groups (received through the plain
    /// receive) rather than locked sessions.
    pub fn grouped(&self) -> bool {
        matches!(self, Self::Sqs)
    }

    /// The limits of this profile.
    pub fn limits(&self) -> Limits {
        match self {
            Self::Memory | Self::ServiceBus => Limits {
                max_message_size: 256 * 1024,
                max_batch_size: 100,
                max_lock_duration: Duration::from_secs(5 * 60),
                max_attributes: None,
                max_schedule_delay: None,
            },
            Self::Sqs => Limits {
                max_message_size: 1024 * 1024,
                max_batch_size: 10,
                max_lock_duration: Duration::from_secs(12 * 3600),
                max_attributes: Some(9),
                max_schedule_delay: Some(Duration::from_secs(15 * 60)),
            },
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(Self::Memory),
            "sqs" => Ok(Self::Sqs),
            "service-bus" => Ok(Self::ServiceBus),
            other => Err(QueueError::config(
                "memory.profile",
                format!("unknown profile `{other}`; expected `memory`, `sqs` or `service-bus`"),
            )),
        }
    }
}

/// Size, batch, lock and attribute limits enforced by the in-memory provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest accepted message, by [`queue_core::Message::encoded_size`].
    pub max_message_size: usize,
    /// Most messages one receive call returns.
    pub max_batch_size: usize,
    /// Longest lock duration a queue may be created with.
    pub max_lock_duration: Duration,
    /// Most application attributes per message, if bounded (the `sqs` profile: 9, what
    /// the SQS provider carries besides its metadata attribute).
    pub max_attributes: Option<usize>,
    /// Longest delay of a scheduled enqueue time, if bounded (the `sqs` profile: 15
    /// minutes, SQS's `DelaySeconds` maximum). A message scheduled further ahead fails
    /// with [`QueueError::InvalidMessage`].
    pub max_schedule_delay: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_profiles_and_names_the_field_otherwise() {
        for p in [Profile::Memory, Profile::Sqs, Profile::ServiceBus] {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), p);
        }
        let err = "rabbit".parse::<Profile>().unwrap_err();
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "memory.profile"),
            "{err}"
        );
        assert_eq!(Profile::Sqs.limits().max_batch_size, 10);
        assert!(Profile::Sqs.grouped());
        assert!(!Profile::Memory.grouped() && !Profile::ServiceBus.grouped());
    }
}
