#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod codec;
mod error;
mod provider;
mod settings;

pub use builder::{DEFAULT_OPERATION_TIMEOUT, SqsBuilder, StaticCredentials};
pub use codec::{MAX_APP_ATTRIBUTES, META_ATTRIBUTE};
pub use provider::{MAX_BATCH, MAX_VISIBILITY, MAX_WAIT, SqsProvider, dlq_name};
pub use settings::SqsSettings;

/// The provider id used in errors, receipts and metrics.
pub const PROVIDER: &str = "sqs";
