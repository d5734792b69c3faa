//! Loads writer schemas from the schema topic, by fingerprint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use sluice_schemas::avro::EnvelopeDecoder;
use sluice_schemas::transport::read_to_end;
use sluice_schemas::SchemaFingerprint;
use tracing::debug;

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
        let records = tokio::task::spawn_blocking(move || {
            read_to_end(&config, &topic, Duration::from_secs(60))
        })
        .await
        .map_err(|e| RouterError::Kafka(format!("schema loader panicked: {e}")))?
        .map_err(RouterError::Kafka)?;
        for (key, value) in records {
            let Some(json) = value.map(|v| String::from_utf8_lossy(&v).into_owned()) else {
                continue;
            };
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
