//! Binlog positions (file and offset packed into one ordered number) and the state record that
//! survives restarts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::epoch::Epoch;
use crate::state::TableState;
use crate::CaptureError;

/// A binlog position as one totally ordered number: file sequence in the top 24 bits, offset
/// in the lower 40 (binlog files stay far below 1 TiB). It is what the publisher's checkpoints
/// carry.
pub(super) fn pack(file_seq: u32, pos: u64) -> u64 {
    (u64::from(file_seq) << 40) | (pos & ((1 << 40) - 1))
}

pub(super) fn unpack(packed: u64) -> (u32, u64) {
    ((packed >> 40) as u32, packed & ((1 << 40) - 1))
}

/// `binlog.000042` → (`binlog`, 42).
pub(super) fn split_file(name: &str) -> Option<(&str, u32)> {
    let (base, seq) = name.rsplit_once('.')?;
    Some((base, seq.parse().ok()?))
}

pub(super) fn file_name(base: &str, seq: u32) -> String {
    format!("{base}.{seq:06}")
}

/// What survives restarts, in the compacted state topic keyed by source name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MysqlState {
    /// Binlog file base name (`binlog` of `binlog.000042`).
    pub(super) file_base: String,
    /// Where streaming resumes: a transaction boundary, packed (see [`pack`]).
    pub(super) position: Option<u64>,
    /// The GTID of the last transaction before `position`, for operators.
    pub(super) gtid: Option<String>,
    /// Snapshot progress by `database.table`; `snapshot_lsn` is the packed snapshot position.
    pub(super) tables: BTreeMap<String, TableState>,
    /// The `kafka.topic_prefix` of the capture that wrote the record (absent in records
    /// written before it was kept). State is keyed by source name alone, so two deployments
    /// sharing a Kafka cluster and a source name would otherwise take each other's position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) topic_prefix: Option<String>,
    /// The source epoch capture publishes in (absent in records written before epochs were
    /// kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) epoch: Option<Epoch>,
}

impl MysqlState {
    /// Refuses a state record another deployment wrote, then claims the record as this one's.
    pub(super) fn claim(
        &mut self,
        source: &str,
        state_topic: &str,
        prefix: &str,
    ) -> Result<(), CaptureError> {
        if let Some(theirs) = self.topic_prefix.as_deref().filter(|p| *p != prefix) {
            return Err(CaptureError::Definite(format!(
                "the state record of source {source} in {state_topic} belongs to a capture that \
                 publishes to topic prefix `{theirs}`, and this one publishes to `{prefix}`: two \
                 deployments share the source name on one Kafka cluster and would take each \
                 other's binlog position. Give this source a name of its own \
                 ([sources.<name>]) or a state topic of its own (kafka.state_topic); if this is \
                 the same deployment after an upgrade that put the source name in topic names, \
                 set sources.{source}.topic_prefix = \"{theirs}\"; if the prefix was changed on \
                 purpose, delete that record to start again"
            )));
        }
        self.topic_prefix = Some(prefix.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_record_of_another_deployment_is_refused_and_an_old_one_claimed() {
        let old: MysqlState =
            serde_json::from_str(r#"{"file_base":"binlog","position":5,"gtid":null,"tables":{}}"#)
                .unwrap();
        let mut claimed = old.clone();
        claimed.claim("maria", "sluice.state", "shop").unwrap();
        assert_eq!(claimed.topic_prefix.as_deref(), Some("shop"));
        assert!(serde_json::to_string(&claimed)
            .unwrap()
            .contains(r#""topic_prefix":"shop""#));
        claimed.claim("maria", "sluice.state", "shop").unwrap();
        let err = claimed
            .claim("maria", "sluice.state", "other")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("topic prefix `shop`")
                && err.contains("`other`")
                && err.contains("kafka.state_topic"),
            "{err}"
        );
    }

    #[test]
    fn packed_positions_keep_binlog_order() {
        assert!(pack(1, 999_999) < pack(2, 4));
        assert_eq!(unpack(pack(42, 123_456_789)), (42, 123_456_789));
        assert_eq!(split_file("mysql-bin.000042"), Some(("mysql-bin", 42)));
        assert_eq!(file_name("mysql-bin", 42), "mysql-bin.000042");
    }

    #[test]
    fn a_reset_state_record_reads_as_every_table_to_read_anew_from_no_position() {
        use crate::source::Source;
        let my: super::super::config::MysqlSourceConfig =
            serde_json::from_value(serde_json::json!({
                "url": "mysql://u@h", "tables": ["shop.a"], "server_id": 7
            }))
            .unwrap();
        let state: MysqlState =
            serde_json::from_value(my.reset_state(serde_json::json!({ "started_ms": 42 })))
                .unwrap();
        assert_eq!(state.position, None);
        assert_eq!(state.tables.get("shop.a"), Some(&TableState::Started));
        assert_eq!(state.epoch.map(|e| e.started_ms), Some(42));
    }
}
