//! MySQL/MariaDB capture: binlog streaming as a replica, consistent snapshot, positions.

pub mod source;
pub mod types;

pub use source::{describe, MysqlCapture, MysqlSourceConfig};
