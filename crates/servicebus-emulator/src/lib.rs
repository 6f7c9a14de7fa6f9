//! A local AMQP 1.0 server that behaves like Azure Service Bus queues (with sessions) for
//! the official clients, so providers and bots can be tested with no cloud and no Docker.
//!
//! See `docs/servicebus-emulator.md` in the repository for what is emulated.
//!
//! ```no_run
//! # async fn run() -> Result<(), servicebus_emulator::EmulatorError> {
//! use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};
//! let cfg = EmulatorConfig::new().with_queue("orders", QueueConfig::new().with_requires_session(true));
//! let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap()).await?;
//! let conn = emu.connection_string(false);
//! # let _ = conn; Ok(()) }
//! ```

pub mod broker;
pub mod clock;
pub mod config;
pub mod error;
mod management;
mod sas;
mod server;

pub use config::{EmulatorConfig, QueueConfig};
pub use error::EmulatorError;
pub use server::Emulator;
