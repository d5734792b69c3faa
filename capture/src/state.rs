//! What capture keeps across restarts besides the source's own position (the slot, the
//! binlog checkpoint): each table's snapshot progress. Kept as JSON in the compacted state
//! topic, keyed by source name, and written only after the rows it vouches for are
//! acknowledged. Each engine's record adds its own fields (`postgres::state`,
//! `mysql::position`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_connect::transport::Transport;

use crate::CaptureError;

/// Whether existing rows are captured before streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Read every table once (`op = r`) in a snapshot consistent with where streaming starts
    /// (the slot, the binlog position), then stream.
    /// Tables added to `tables` later are snapshotted when they first appear.
    #[default]
    Initial,
    /// Stream changes only, from where capture first started.
    Never,
}

/// Snapshot progress of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TableState {
    /// Rows may have been published, but not all: re-snapshot, after a truncate.
    Started,
    /// Every row as of `snapshot_lsn` is acknowledged; the stream must skip this table's
    /// transactions that committed before it.
    Done { snapshot_lsn: u64 },
    /// Capture stopped taking this table's changes (it lost its key, a value could not be
    /// encoded, …): once the cause is fixed, capture reads it again, after a truncate.
    Stopped { reason: String },
}

/// The latest state record of `source` in the state topic, if any.
pub async fn read_latest_state(
    transport: &Transport,
    topic: &str,
    source: &str,
) -> Result<Option<Vec<u8>>, CaptureError> {
    let records = transport
        .read_control(topic, Duration::from_secs(60))
        .await
        .map_err(CaptureError::Kafka)?;
    Ok(records
        .into_iter()
        .rev()
        .find(|(k, _)| k == source)
        .and_then(|(_, v)| v))
}
