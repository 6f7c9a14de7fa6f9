#![doc = include_str!("../README.md")]

pub mod broker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod error;
mod listen;
mod management;
mod sas;
mod server;
mod tls;

pub use config::{EmulatorConfig, QueueConfig, Tier};
pub use error::EmulatorError;
pub use listen::{Emulator, Listeners, Transport, WEBSOCKET_PATH, WEBSOCKET_PROTOCOL};
pub use tls::TlsIdentity;
