//! PostgreSQL capture through logical replication with `pgoutput`.

pub mod catalog;
pub mod decoder;
pub mod names;
pub mod replication;
pub mod reread;
pub mod slot;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod types;

pub use source::{describe, PostgresCapture, PostgresSourceConfig, SnapshotMode};
