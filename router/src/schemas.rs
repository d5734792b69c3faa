//! Finds the writer schema of each message: by fingerprint in the schema topic (single-object
//! framing), or by id in the Schema Registry (Confluent framing).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_connect::registry::{parse_confluent, Registry, RegistryError, CONFLUENT_MAGIC};
use sluice_connect::transport::Transport;
use sluice_schemas::avro::{unframe, EnvelopeDecoder};
use sluice_schemas::SchemaFingerprint;
use tracing::debug;

use crate::metrics as m;
use crate::RouterError;

/// Envelope decoders by value-schema fingerprint, filled from the compacted schema topic, and
/// by schema id, filled from the registry.
pub struct SchemaStore {
    transport: Transport,
    topic: String,
    decoders: HashMap<SchemaFingerprint, Arc<EnvelopeDecoder>>,
    registry: Option<Arc<Registry>>,
    by_id: HashMap<u32, Arc<EnvelopeDecoder>>,
}

/// Why a message has no writer schema; the message goes to the dead-letter topic with it.
#[derive(Debug)]
pub struct Unresolved {
    pub reason: &'static str,
    pub detail: String,
}

impl SchemaStore {
    pub fn new(
        transport: Transport,
        topic: String,
        registry: Option<Arc<Registry>>,
    ) -> SchemaStore {
        SchemaStore {
            transport,
            topic,
            decoders: HashMap::new(),
            registry,
            by_id: HashMap::new(),
        }
    }

    /// The decoder of a message's writer schema and the Avro datum after its framing. `Err`
    /// when finding the schema failed in a way worth retrying (broker or registry down) or
    /// that stops the router (registry refused the credentials); `Ok(Err(_))` when the
    /// message itself cannot be decoded.
    pub async fn resolve<'m>(
        &mut self,
        payload: &'m [u8],
    ) -> Result<Result<(Arc<EnvelopeDecoder>, &'m [u8]), Unresolved>, RouterError> {
        if payload.first() == Some(&CONFLUENT_MAGIC) {
            let Some((id, datum)) = parse_confluent(payload) else {
                return Ok(Err(Unresolved {
                    reason: "undecodable",
                    detail: "a Confluent-framed message shorter than its 5-byte header".into(),
                }));
            };
            return Ok(self.get_by_id(id).await?.map(|d| (d, datum)));
        }
        let (fp, datum) = match unframe(payload) {
            Ok(split) => split,
            Err(e) => {
                return Ok(Err(Unresolved {
                    reason: "undecodable",
                    detail: e.to_string(),
                }))
            }
        };
        Ok(match self.get(fp).await? {
            Some(d) => Ok((d, datum)),
            None => Err(Unresolved {
                reason: "unknown_schema",
                detail: format!("schema {} is not in the schema topic", fp.to_hex()),
            }),
        })
    }

    /// The decoder for a registry schema id, fetched once.
    async fn get_by_id(
        &mut self,
        id: u32,
    ) -> Result<Result<Arc<EnvelopeDecoder>, Unresolved>, RouterError> {
        if let Some(d) = self.by_id.get(&id) {
            return Ok(Ok(d.clone()));
        }
        let Some(registry) = self.registry.clone() else {
            return Ok(Err(Unresolved {
                reason: "unknown_schema",
                detail: format!(
                    "the message is framed for a schema registry (schema id {id}), and no schemas.registry is configured"
                ),
            }));
        };
        let fetched = tokio::task::spawn_blocking(move || registry.schema_by_id(id))
            .await
            .map_err(|e| RouterError::Kafka(format!("registry call panicked: {e}")))?;
        let json = match fetched {
            Ok(json) => json,
            Err(RegistryError::NotFound { what, .. }) => {
                return Ok(Err(Unresolved {
                    reason: "unknown_schema",
                    detail: format!("{what} in the schema registry"),
                }))
            }
            Err(e) if e.is_transient() => return Err(RouterError::Registry(e.to_string())),
            Err(e) => return Err(RouterError::Definite(e.to_string())),
        };
        match EnvelopeDecoder::from_schema_json(&json) {
            Ok(d) => {
                metrics::counter!(m::SCHEMAS_LOADED_TOTAL).increment(1);
                debug!(id, table = %d.table.id, "loaded schema from the registry");
                let d = Arc::new(d);
                self.by_id.insert(id, d.clone());
                Ok(Ok(d))
            }
            Err(e) => Ok(Err(Unresolved {
                reason: "undecodable",
                detail: format!("schema id {id} is not a Sluice envelope: {e}"),
            })),
        }
    }

    /// The decoder for `fp`, reading the schema topic to its end when it is not known yet.
    /// `None` when the topic does not have it.
    async fn get(
        &mut self,
        fp: SchemaFingerprint,
    ) -> Result<Option<Arc<EnvelopeDecoder>>, RouterError> {
        if let Some(d) = self.decoders.get(&fp) {
            return Ok(Some(d.clone()));
        }
        let records = self
            .transport
            .read_control(&self.topic, Duration::from_secs(60))
            .await
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
