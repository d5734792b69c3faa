//! Capture state that must survive restarts besides the slot itself: which tables have been
//! snapshotted, and as of which LSN. Kept as JSON in a compacted Kafka topic, keyed by source
//! name, and written only after the rows it vouches for are acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::CaptureError;

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

/// The state record of one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureState {
    /// The slot this state belongs to; state of another slot is ignored.
    pub slot: String,
    /// By `schema.table`.
    pub tables: BTreeMap<String, TableState>,
    /// The partitions (pg_class OIDs, every level) of each captured partitioned table, by
    /// `schema.table`, as capture last saw them: a partition attached since held rows the
    /// stream never carried, so the table is read again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions: BTreeMap<String, BTreeSet<u32>>,
    /// The source epoch capture publishes in (absent in records written before epochs were
    /// kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<crate::epoch::Epoch>,
}

/// The latest state record of `source` in the state topic, if any.
pub async fn read_latest_state(
    config: &ClientConfig,
    topic: &str,
    source: &str,
) -> Result<Option<Vec<u8>>, CaptureError> {
    let (config, topic_owned) = (config.clone(), topic.to_string());
    let records = tokio::task::spawn_blocking(move || {
        sluice_schemas::transport::read_to_end(&config, &topic_owned, Duration::from_secs(60))
    })
    .await
    .map_err(|e| CaptureError::Kafka(format!("state reader panicked: {e}")))?
    .map_err(CaptureError::Kafka)?;
    Ok(records
        .into_iter()
        .rev()
        .find(|(k, _)| k == source)
        .and_then(|(_, v)| v))
}

impl CaptureState {
    /// Reads the latest state of `source` from the state topic, if there is one.
    pub async fn load(
        config: &ClientConfig,
        topic: &str,
        source: &str,
    ) -> Result<Option<CaptureState>, CaptureError> {
        match read_latest_state(config, topic, source).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                CaptureError::Definite(format!(
                    "the capture state of source {source} in topic {topic} is unreadable ({e}); \
                     delete that record to re-snapshot"
                ))
            }),
        }
    }
}
