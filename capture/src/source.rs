//! What differs between the engines, for whoever runs or checks a source without knowing its
//! kind (the CLI's config validation, `run`, `schemes`, `reset`): one trait, implemented by
//! each engine's config type.

use std::future::Future;

use sluice_schemas::{TableId, TableSchema};
use tokio_util::sync::CancellationToken;

use crate::{Capture, CaptureError};

/// A source of changes, by its config (`[sources.<name>]`).
pub trait Source: Clone + Send + Sync + Sized + 'static {
    /// The configured tables, parsed; the error names the bad entry.
    fn table_ids(&self) -> Result<Vec<TableId>, String>;

    /// `sources.<name>.topic_prefix`, when set.
    fn topic_prefix(&self) -> Option<&str>;

    /// What is wrong with the source's settings, each problem naming the field and the fix.
    fn validate(&self, name: &str, problems: &mut Vec<String>);

    /// The state record that makes the next start clear every table at the sink and read it
    /// anew, in the source epoch `epoch`.
    fn reset_state(&self, epoch: serde_json::Value) -> serde_json::Value;

    /// The current schema of each configured table, from the source's catalog.
    fn describe(
        &self,
        name: &str,
        password: Option<&str>,
    ) -> impl Future<Output = Result<Vec<TableSchema>, CaptureError>> + Send;

    /// Runs the capture until `shutdown`, reconnecting with backoff on transient errors;
    /// returns the definite error that stopped it, if any.
    fn run(
        capture: Capture<Self>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), CaptureError>> + Send;
}

/// Each configured table, marked as not yet snapshotted.
pub(crate) fn tables_started(tables: &[String]) -> serde_json::Map<String, serde_json::Value> {
    tables
        .iter()
        .map(|t| (t.clone(), serde_json::json!({ "state": "started" })))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Source;
    use crate::postgres::state::{CaptureState, TableState};
    use crate::postgres::PostgresSourceConfig;

    #[test]
    fn a_postgres_reset_state_record_reads_as_every_table_to_read_anew() {
        let epoch = serde_json::json!({ "started_ms": 42 });
        let pg: PostgresSourceConfig = serde_json::from_value(serde_json::json!({
            "url": "postgresql://u@h/db", "tables": ["public.a", "public.b"],
            "slot": "s", "publication": "p"
        }))
        .unwrap();
        let state: CaptureState = serde_json::from_value(pg.reset_state(epoch.clone())).unwrap();
        assert_eq!(state.slot, "s");
        assert_eq!(state.epoch.map(|e| e.started_ms), Some(42));
        assert!(
            state.tables.len() == 2 && state.tables.values().all(|t| *t == TableState::Started)
        );
    }
}
