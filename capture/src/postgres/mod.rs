//! PostgreSQL capture through logical replication with `pgoutput`.

pub mod decoder;
pub mod replication;
pub mod slot;
pub mod source;
pub mod types;

pub use source::{PostgresCapture, PostgresSourceConfig};
