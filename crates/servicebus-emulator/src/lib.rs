#![doc = include_str!("../README.md")]

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
