//! PostgreSQL's state record (see [`crate::state`]): the slot it belongs to, each table's
//! snapshot progress as of which LSN, the partitions of partitioned tables, and the tables'
//! OIDs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sluice_connect::transport::Transport;

use crate::state::read_latest_state;
pub use crate::state::TableState;
use crate::CaptureError;

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
    /// The OID of each captured table, by its configured `schema.table`, in the cluster of
    /// `epoch`: a table renamed at the source is found by it ([`super::names`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub oids: BTreeMap<String, u32>,
}

impl CaptureState {
    /// [`Self::load`], or `None` while the state topic was never created (a first start).
    pub async fn load_if_created(
        transport: &Transport,
        topic: &str,
        source: &str,
    ) -> Result<Option<CaptureState>, CaptureError> {
        let exists = transport
            .control_exists(topic, std::time::Duration::from_secs(30))
            .await
            .map_err(CaptureError::Kafka)?;
        if !exists {
            return Ok(None);
        }
        Self::load(transport, topic, source).await
    }

    /// Reads the latest state of `source` from the state topic, if there is one.
    pub async fn load(
        transport: &Transport,
        topic: &str,
        source: &str,
    ) -> Result<Option<CaptureState>, CaptureError> {
        match read_latest_state(transport, topic, source).await? {
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
