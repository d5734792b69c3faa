//! The `sluice` binary's library: configuration, telemetry and the commands that wire the
//! crates together. See ARCHITECTURE.md for the flow.

pub mod commands;
pub mod config;
pub mod cron;
pub mod kafka;
pub mod schemes;
pub mod status;
pub mod switch;
pub mod telemetry;
pub mod verify;
