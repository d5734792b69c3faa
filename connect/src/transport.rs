//! Sluice's compacted control topics (schemas, capture state): reading them to their end, and
//! the schema topic's layout.
//!
//! The schema topic holds every schema keyed by its fingerprint (hex), and per subject
//! (`<topic>-value`) a record keyed `subject:<subject>` listing its versions' fingerprints,
//! oldest first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_schemas::SchemaFingerprint;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// What carries changes and control records from capture to routers.
#[derive(Clone)]
pub enum Transport {
    /// A Kafka-protocol cluster, reached with this client config.
    Kafka(ClientConfig),
    /// No broker: capture and routers in one process (`sluice run` without `[kafka]`).
    Local(Arc<crate::local::Local>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Kafka(_) => f.write_str("Kafka"),
            Transport::Local(l) => write!(f, "Local({})", l.dir().display()),
        }
    }
}

impl Transport {
    /// Every record of a control topic up to its end ([`read_to_end`] on Kafka; the topic's
    /// file in local mode).
    pub async fn read_control(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Vec<Record>, String> {
        match self {
            Transport::Kafka(config) => {
                let (config, topic) = (config.clone(), topic.to_string());
                tokio::task::spawn_blocking(move || read_to_end(&config, &topic, timeout))
                    .await
                    .map_err(|e| format!("the control-topic reader panicked: {e}"))?
            }
            Transport::Local(local) => local.read_control(topic),
        }
    }

    /// Whether a control topic exists yet (on Kafka, one that was never created holds no
    /// records, and reading it fails). Always `true` in local mode, where a missing topic
    /// reads as empty.
    pub async fn control_exists(&self, topic: &str, timeout: Duration) -> Result<bool, String> {
        match self {
            Transport::Kafka(config) => {
                let (config, topic) = (config.clone(), topic.to_string());
                tokio::task::spawn_blocking(move || {
                    let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
                    let metadata = consumer
                        .fetch_metadata(Some(&topic), timeout)
                        .map_err(|e| format!("metadata of {topic}: {e}"))?;
                    Ok(metadata.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    }))
                })
                .await
                .map_err(|e| format!("the metadata reader panicked: {e}"))?
            }
            Transport::Local(_) => Ok(true),
        }
    }

    /// The local transport, when this is local mode.
    pub fn local(&self) -> Option<&Arc<crate::local::Local>> {
        match self {
            Transport::Local(l) => Some(l),
            Transport::Kafka(_) => None,
        }
    }
}

/// A record of a control topic: its key and its value (`None` for a tombstone).
pub type Record = (String, Option<Vec<u8>>);

/// Every `(key, value)` record of partition 0 of `topic` up to its current end, oldest first.
/// Records without a key are skipped; a tombstone has `None` as value. Blocking: call from
/// `spawn_blocking`.
pub fn read_to_end(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, String> {
    let mut config = config.clone();
    config
        .set("group.id", "sluice-control-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, timeout)
        .map_err(|e| format!("watermarks of {topic}: {e}"))?;
    let mut out = Vec::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let mut next = low;
    while next < high {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out reading {topic} (at offset {next} of {high})"
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                next = msg.offset() + 1;
                if let Some(k) = msg.key() {
                    out.push((
                        String::from_utf8_lossy(k).into_owned(),
                        msg.payload().map(<[u8]>::to_vec),
                    ));
                }
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None => {}
        }
    }
    Ok(out)
}

/// Schema-topic records keyed with this prefix list a subject's versions.
pub const SUBJECT_KEY_PREFIX: &str = "subject:";

/// The schema topic's contents: schemas by fingerprint, and each subject's versions.
#[derive(Debug, Default)]
pub struct TopicSchemas {
    pub schemas: HashMap<SchemaFingerprint, String>,
    pub subjects: HashMap<String, Vec<SchemaFingerprint>>,
}

impl TopicSchemas {
    /// Sorts a topic's records (as [`read_to_end`] returns them) into schemas and subjects;
    /// later records win, as compaction keeps them.
    pub fn from_records(records: Vec<Record>) -> TopicSchemas {
        let mut out = TopicSchemas::default();
        for (key, value) in records {
            let Some(value) = value else { continue };
            if let Some(subject) = key.strip_prefix(SUBJECT_KEY_PREFIX) {
                let versions = serde_json::from_slice::<serde_json::Value>(&value)
                    .ok()
                    .and_then(|v| {
                        v["versions"].as_array().map(|a| {
                            a.iter()
                                .filter_map(|fp| fp.as_str().and_then(SchemaFingerprint::from_hex))
                                .collect::<Vec<_>>()
                        })
                    })
                    .unwrap_or_default();
                out.subjects.insert(subject.to_string(), versions);
            } else if let Some(fp) = SchemaFingerprint::from_hex(&key) {
                out.schemas
                    .insert(fp, String::from_utf8_lossy(&value).into_owned());
            }
        }
        out
    }

    /// The record that lists a subject's versions: its key and value.
    pub fn subject_record(subject: &str, versions: &[SchemaFingerprint]) -> (String, String) {
        (
            format!("{SUBJECT_KEY_PREFIX}{subject}"),
            serde_json::json!({
                "subject": subject,
                "versions": versions.iter().map(SchemaFingerprint::to_hex).collect::<Vec<_>>(),
            })
            .to_string(),
        )
    }

    /// The schemas of a subject's versions, oldest first (versions whose schema is missing
    /// are skipped).
    pub fn versions(&self, subject: &str) -> Vec<&str> {
        self.subjects
            .get(subject)
            .map(|fps| {
                fps.iter()
                    .filter_map(|fp| self.schemas.get(fp).map(String::as_str))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_records_round_trip_and_later_records_win() {
        let (a, b) = (SchemaFingerprint([1; 8]), SchemaFingerprint([2; 8]));
        let (key, v1) = TopicSchemas::subject_record("t-value", &[a]);
        let (_, v2) = TopicSchemas::subject_record("t-value", &[a, b]);
        let topic = TopicSchemas::from_records(vec![
            (a.to_hex(), Some(b"A".to_vec())),
            (key.clone(), Some(v1.into_bytes())),
            (b.to_hex(), Some(b"B".to_vec())),
            (key, Some(v2.into_bytes())),
            ("other".into(), Some(b"ignored".to_vec())),
        ]);
        assert_eq!(topic.versions("t-value"), ["A", "B"]);
        assert!(topic.versions("u-value").is_empty());
    }
}
