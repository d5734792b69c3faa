//! MySQL/MariaDB capture: binlog streaming as a replica, consistent snapshot, positions.

mod binlog;
mod catalog;
mod config;
mod follow;
mod position;
mod preflight;
pub mod reread;
mod rows;
mod snapshot;
pub mod source;
pub mod types;

pub use catalog::{describe, read_rows, read_rows_by_key};
pub use config::MysqlSourceConfig;
pub use follow::{binlog_now, changes_between, confirmed, BinlogPosition};
pub use source::MysqlCapture;

use sluice_schemas::TableId;
use tracing::error;

use crate::metrics as m;
use crate::CaptureError;

fn mysql_error(e: mysql_async::Error) -> CaptureError {
    CaptureError::Mysql(e)
}

fn value_error(source: &str, table: &TableId, column: &str, error: &str) {
    metrics::counter!(m::ERRORS_TOTAL, "source" => source.to_string(), "kind" => "value")
        .increment(1);
    error!(%table, column, error, "value could not be converted; sent as NULL");
}
