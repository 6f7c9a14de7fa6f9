#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod canonical;
pub mod connstr;
mod envelope;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub mod github;
pub mod keys;
pub mod limits;
pub mod redact;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis_store;
pub mod replay;
pub mod signature;
pub mod signing;

pub use connstr::{ConnectionString, ServiceBusConnectionString};
pub use error::{SecurityError, reason};
pub use gate::{
    DEFAULT_REPLAY_WINDOW, GateOutcome, ReplayStoreFailure, SignatureGate, UnsignedPolicy,
};
pub use github::{WebhookHeaders, WebhookVerifier};
pub use keys::{DEFAULT_KEYS_ENV, KeyId, KeyRing, encode_key, generate_key};
pub use limits::Limits;
pub use redact::{MessageSummary, redact_error, redact_text};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_store::RedisReplayStore;
pub use replay::{DEFAULT_REPLAY_CAPACITY, InMemoryReplayStore, ReplayStore, ReplayVerdict};
pub use signature::{
    AttributeCoverage, DEFAULT_MAX_SKEW, Envelope, MAX_WINDOW, MessageSigner, SIGNATURE_ATTRIBUTE,
    SignatureVerifier, SignatureVersion, SignedFields, Verified,
};
pub use signing::Signing;
