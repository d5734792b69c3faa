//! Loads writer schemas from the schema topic, by fingerprint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sluice_schemas::avro::EnvelopeDecoder;
use sluice_schemas::SchemaFingerprint;
use tracing::{debug, warn};

use crate::metrics as m;
use crate::RouterError;

/// Envelope decoders by value-schema fingerprint, filled from the compacted schema topic.
pub struct SchemaStore {
    client_config: ClientConfig,
    topic: String,
    decoders: HashMap<SchemaFingerprint, Arc<EnvelopeDecoder>>,
}

impl SchemaStore {
    pub fn new(client_config: ClientConfig, topic: String) -> SchemaStore {
        SchemaStore {
            client_config,
            topic,
            decoders: HashMap::new(),
        }
    }

    /// The decoder for `fp`, reading the schema topic to its end when it is not known yet.
    /// `None` when the topic does not have it.
    pub async fn get(
        &mut self,
        fp: SchemaFingerprint,
    ) -> Result<Option<Arc<EnvelopeDecoder>>, RouterError> {
        if let Some(d) = self.decoders.get(&fp) {
            return Ok(Some(d.clone()));
        }
        let config = self.client_config.clone();
        let topic = self.topic.clone();
        let schemas = tokio::task::spawn_blocking(move || read_topic(&config, &topic))
            .await
            .map_err(|e| RouterError::Kafka(format!("schema loader panicked: {e}")))??;
        for (key, json) in schemas {
            let Some(fp) = SchemaFingerprint::from_hex(&key) else {
                continue;
            };
            if self.decoders.contains_key(&fp) {
                continue;
            }
            // Key schemas are in the topic too; only envelopes decode into a table.
            match EnvelopeDecoder::from_schema_json(&json) {
                Ok(d) => {
                    metrics::counter!(m::SCHEMAS_LOADED_TOTAL).increment(1);
                    debug!(fingerprint = %key, table = %d.table.id, "loaded schema");
                    self.decoders.insert(fp, Arc::new(d));
                }
                Err(e) => debug!(fingerprint = %key, error = %e, "not an envelope schema"),
            }
        }
        Ok(self.decoders.get(&fp).cloned())
    }
}

/// Reads every record of the (single-partition) schema topic up to its current end.
fn read_topic(config: &ClientConfig, topic: &str) -> Result<Vec<(String, String)>, RouterError> {
    let mut config = config.clone();
    config
        .set("group.id", "sluice-schema-loader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(30))?;
    let mut out = Vec::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = low;
    while next < high {
        if Instant::now() > deadline {
            warn!(topic, next, high, "schema topic read timed out");
            return Err(RouterError::Kafka(format!(
                "timed out reading schema topic {topic}"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                next = msg.offset() + 1;
                if let (Some(k), Some(v)) = (msg.key(), msg.payload()) {
                    out.push((
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    ));
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(out)
}
