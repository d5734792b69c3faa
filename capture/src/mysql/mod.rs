//! MySQL/MariaDB capture: binlog streaming as a replica, consistent snapshot, positions.

mod rows;
pub mod source;
pub mod types;

pub use source::{describe, MysqlCapture, MysqlSourceConfig};
