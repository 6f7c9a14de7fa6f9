#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod amqp;
mod builder;
mod config;
mod connection;
mod convert;
mod credential;
mod error;
mod guard;
mod provider;
mod session;
mod settings;
mod settle;
mod transport;
mod wire;
mod ws;

pub use builder::ServiceBusBuilder;
pub use config::{ConnectionString, Credential, Transport};
#[cfg(feature = "entra")]
pub use credential::AzureCoreCredential;
pub use credential::{AccessToken, SERVICE_BUS_SCOPE, TokenCredential};
pub use provider::ServiceBusProvider;
pub use settings::ServiceBusSettings;
