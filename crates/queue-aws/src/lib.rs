#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod codec;
mod config;
mod error;
mod provider;

pub use codec::{MAX_APP_ATTRIBUTES, META_ATTRIBUTE};
pub use config::{DEFAULT_OPERATION_TIMEOUT, SqsConfig, StaticCredentials};
pub use provider::{MAX_BATCH, MAX_VISIBILITY, MAX_WAIT, SqsProvider, dlq_name};

/// The provider id used in errors, receipts and metrics.
pub const PROVIDER: &str = "sqs";
