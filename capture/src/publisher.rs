//! The Kafka side of capture: topics, schemas, events, and acknowledgement tracking.
//!
//! Every produced event and every checkpoint goes through one bounded FIFO to the ack task,
//! which awaits deliveries in order. When it reaches a checkpoint, every event before it is
//! acknowledged by Kafka, so the checkpoint's source position may be confirmed to the source.
//! The bound is the backpressure: when Kafka is slow, `publish` waits and capture stops
//! reading the replication stream.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sluice_schemas::avro::EnvelopeDecoder;
use sluice_schemas::compat::SchemaPolicy;
use sluice_schemas::event::POSITION_HEADER;
use sluice_schemas::liveness::Liveness;
use sluice_schemas::registry::{confluent_header, Registry, RegistryError};
use sluice_schemas::transport::{read_to_end, TopicSchemas};
use sluice_schemas::{ChangeEvent, EnvelopeCodec, Op, SchemaFingerprint, TableSchema};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::metrics as m;
use crate::CaptureError;

/// How events are published.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// Topic names are `<topic_prefix>.<schema>.<table>`.
    pub topic_prefix: String,
    /// Compacted topic that carries every schema, keyed by fingerprint.
    pub schema_topic: String,
    /// Compacted topic that carries capture state (snapshot progress), keyed by source.
    pub state_topic: String,
    /// Partitions of topics Sluice creates.
    pub partitions: i32,
    /// Replication factor of topics Sluice creates.
    pub replication_factor: i32,
    /// Follow each delete with a tombstone so compacted topics forget the key.
    pub tombstones: bool,
    /// Events awaiting acknowledgement before capture waits.
    pub max_in_flight: usize,
    /// Source name, for metric labels.
    pub source: String,
    /// On shutdown, how long to wait for Kafka to acknowledge what was published before
    /// confirming the checkpoint anyway (what is unacknowledged is re-sent after a restart).
    pub drain_timeout: std::time::Duration,
    /// Reported to `/readyz`: connected once the broker answers; pending while events await
    /// acknowledgement.
    pub liveness: Arc<Liveness>,
    /// The compatibility each new version of a table's schema must keep with earlier ones.
    pub policy: SchemaPolicy,
    /// Where schemas are registered: a Confluent Schema Registry (Confluent framing), or
    /// without one the schema topic (single-object framing).
    pub registry: Option<Arc<Registry>>,
}

enum Pending {
    Delivery(DeliveryFuture),
    Checkpoint(u64),
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// What publishing a table version needs, worked out once: its topic exists, its schemas are
/// registered, and its metric handles are made.
struct TableOut {
    topic: String,
    /// The framing of keys and values: single-object (fingerprint) or Confluent (schema id).
    key_header: Vec<u8>,
    value_header: Vec<u8>,
    /// By [`Op`] in the order c, u, d, r, t.
    events: [metrics::Counter; 5],
    bytes: metrics::Counter,
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Create => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Read => 3,
        Op::Truncate => 4,
    }
}

/// Publishes events and checkpoints; see the module docs.
pub struct Publisher {
    producer: FutureProducer,
    /// For reading the schema topic.
    client_config: ClientConfig,
    admin: AdminClient<DefaultClientContext>,
    settings: PublisherSettings,
    known_topics: HashSet<String>,
    published_schemas: HashSet<SchemaFingerprint>,
    /// By value-schema fingerprint.
    tables: HashMap<SchemaFingerprint, TableOut>,
    pending: mpsc::Sender<Pending>,
    last_checkpoint: u64,
    /// The versions of each value subject (`<topic>-value`), oldest first, as the schema
    /// transport holds them; loaded when a subject is first needed.
    subjects: HashMap<String, Vec<Arc<TableSchema>>>,
    /// Schema-topic mode: what the topic held when capture started.
    topic_schemas: Option<TopicSchemas>,
}

/// Follows acknowledgements: `acked` is the highest checkpoint whose events Kafka acknowledged.
pub struct AckHandle {
    pub acked: watch::Receiver<u64>,
    pub task: JoinHandle<Result<(), CaptureError>>,
}

impl Publisher {
    /// Creates the producer (idempotent, acks=all) and the ack task; `start` is the position
    /// already confirmed.
    pub fn new(
        client_config: &ClientConfig,
        settings: PublisherSettings,
        start: u64,
    ) -> Result<(Publisher, AckHandle), CaptureError> {
        let mut config = client_config.clone();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5");
        for (key, value) in [("linger.ms", "5"), ("message.timeout.ms", "300000")] {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        let producer: FutureProducer = config
            .create()
            .map_err(|e| CaptureError::Kafka(e.to_string()))?;
        let admin: AdminClient<DefaultClientContext> = client_config
            .create()
            .map_err(|e| CaptureError::Kafka(e.to_string()))?;
        let (tx, rx) = mpsc::channel(settings.max_in_flight.max(1));
        let (acked_tx, acked_rx) = watch::channel(start);
        let task = tokio::spawn(ack_loop(
            rx,
            acked_tx,
            settings.source.clone(),
            settings.liveness.clone(),
        ));
        Ok((
            Publisher {
                producer,
                client_config: client_config.clone(),
                admin,
                settings,
                known_topics: HashSet::new(),
                published_schemas: HashSet::new(),
                tables: HashMap::new(),
                pending: tx,
                last_checkpoint: start,
                subjects: HashMap::new(),
                topic_schemas: None,
            },
            AckHandle {
                acked: acked_rx,
                task,
            },
        ))
    }

    /// The last checkpoint handed to the ack task.
    pub fn last_checkpoint(&self) -> u64 {
        self.last_checkpoint
    }

    /// Creates the schema and state topics (compacted) if missing.
    pub async fn prepare(&mut self) -> Result<(), CaptureError> {
        let topic = self.settings.schema_topic.clone();
        self.ensure_topic(&topic, 1, true).await?;
        let topic = self.settings.state_topic.clone();
        self.ensure_topic(&topic, 1, true).await?;
        // Every engine connects to its source before it prepares the publisher.
        self.settings.liveness.set_connected("source", true);
        self.settings.liveness.set_connected("broker", true);
        Ok(())
    }

    /// Waits until every event published so far is acknowledged by Kafka.
    pub async fn barrier(&mut self) -> Result<(), CaptureError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending
            .send(Pending::Barrier(tx))
            .await
            .map_err(|_| CaptureError::Kafka("the acknowledgement task stopped".into()))?;
        rx.await
            .map_err(|_| CaptureError::Kafka("the acknowledgement task stopped".into()))
    }

    /// Writes this source's state record and waits for Kafka to acknowledge it.
    pub async fn write_state(&mut self, json: &str) -> Result<(), CaptureError> {
        let record = FutureRecord::to(&self.settings.state_topic)
            .key(&self.settings.source)
            .payload(json);
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .map(|_| ())
            .map_err(|(e, _)| CaptureError::Kafka(format!("write capture state: {e}")))
    }

    async fn ensure_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        compact: bool,
    ) -> Result<(), CaptureError> {
        if self.known_topics.contains(topic) {
            return Ok(());
        }
        let mut new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(self.settings.replication_factor),
        );
        if compact {
            new = new.set("cleanup.policy", "compact");
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| CaptureError::Kafka(format!("create topic {topic}: {e}")))?;
        for r in results {
            match r {
                Ok(_) => info!(topic, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => debug!(topic, "topic exists"),
                Err((name, code)) => {
                    return Err(CaptureError::Kafka(format!("create topic {name}: {code}")))
                }
            }
        }
        self.known_topics.insert(topic.to_string());
        Ok(())
    }

    /// Publishes a schema to the schema topic unless already done, and waits for Kafka to
    /// acknowledge it: a consumer that sees an event can always find its schema.
    async fn ensure_schema(
        &mut self,
        fingerprint: SchemaFingerprint,
        json: &str,
    ) -> Result<(), CaptureError> {
        if self.published_schemas.contains(&fingerprint) {
            return Ok(());
        }
        let key = fingerprint.to_hex();
        let record = FutureRecord::to(&self.settings.schema_topic)
            .key(&key)
            .payload(json);
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .map_err(|(e, _)| CaptureError::Kafka(format!("publish schema {key}: {e}")))?;
        metrics::counter!(m::SCHEMAS_PUBLISHED_TOTAL, "source" => self.settings.source.clone())
            .increment(1);
        info!(fingerprint = %key, "published schema");
        self.published_schemas.insert(fingerprint);
        Ok(())
    }

    /// Creates the topic and registers the schemas of a table version seen for the first time,
    /// after checking the new version against the policy.
    async fn prepare_table(&mut self, codec: &EnvelopeCodec) -> Result<(), CaptureError> {
        if self.tables.contains_key(&codec.value_fingerprint) {
            return Ok(());
        }
        let topic = codec.table.id.topic(&self.settings.topic_prefix);
        self.ensure_topic(&topic, self.settings.partitions, false)
            .await?;
        let (key_header, value_header) = match self.settings.registry.clone() {
            Some(registry) => self.register_in_registry(&registry, &topic, codec).await?,
            None => self.register_in_topic(&topic, codec).await?,
        };
        let (source, table) = (self.settings.source.clone(), codec.table.id.to_string());
        let events = [Op::Create, Op::Update, Op::Delete, Op::Read, Op::Truncate].map(|op| {
            metrics::counter!(m::EVENTS_TOTAL, "source" => source.clone(), "table" => table.clone(), "op" => op.code())
        });
        let bytes = metrics::counter!(m::BYTES_TOTAL, "source" => source, "table" => table);
        self.tables.insert(
            codec.value_fingerprint,
            TableOut {
                topic,
                key_header,
                value_header,
                events,
                bytes,
            },
        );
        Ok(())
    }

    /// Checks a table version that is new to its subject against the policy; the error says
    /// what changed, which policy it breaks, and what the operator can do.
    fn check_compatibility(&self, subject: &str, table: &TableSchema) -> Result<(), CaptureError> {
        let history: Vec<&TableSchema> = self
            .subjects
            .get(subject)
            .map(|v| v.iter().map(|t| t.as_ref()).collect())
            .unwrap_or_default();
        let policy = self.settings.policy.for_table(&table.id);
        policy.check(&history, table).map_err(|incompatible| {
            metrics::counter!(m::SCHEMA_INCOMPATIBLE_TOTAL, "source" => self.settings.source.clone(), "table" => table.id.to_string())
                .increment(1);
            CaptureError::Definite(format!(
                "{incompatible}. Capture stopped before publishing the change, so nothing after it \
                 is lost. If every consumer of {subject} can cope, accept it by weakening the \
                 policy for this table (schemas.compatibility_overrides.\"{}\" = \"none\") and \
                 restart; otherwise revert the change at the source",
                table.id
            ))
        })
    }

    /// Schema-topic mode: publishes the schemas (by fingerprint) and appends the version to
    /// the subject's record, after the compatibility check.
    async fn register_in_topic(
        &mut self,
        topic: &str,
        codec: &EnvelopeCodec,
    ) -> Result<(Vec<u8>, Vec<u8>), CaptureError> {
        let subject = format!("{topic}-value");
        if self.topic_schemas.is_none() {
            self.topic_schemas = Some(self.load_schema_topic().await?);
        }
        let stored = self.topic_schemas.as_ref().expect("loaded above");
        let versions = stored.subjects.get(&subject).cloned().unwrap_or_default();
        if !self.subjects.contains_key(&subject) {
            let history = stored
                .versions(&subject)
                .into_iter()
                .map(|json| EnvelopeDecoder::from_schema_json(json).map(|d| d.table))
                .collect::<Result<Vec<_>, _>>()?;
            self.subjects.insert(subject.clone(), history);
        }
        self.ensure_schema(codec.key_fingerprint, &codec.key_schema_json)
            .await?;
        if !versions.contains(&codec.value_fingerprint) {
            self.check_compatibility(&subject, &codec.table)?;
            self.ensure_schema(codec.value_fingerprint, &codec.value_schema_json)
                .await?;
            let stored = self.topic_schemas.as_mut().expect("loaded above");
            let versions = stored.subjects.entry(subject.clone()).or_default();
            versions.push(codec.value_fingerprint);
            let (key, record) = TopicSchemas::subject_record(&subject, versions);
            self.producer
                .send(
                    FutureRecord::to(&self.settings.schema_topic)
                        .key(&key)
                        .payload(&record),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| CaptureError::Kafka(format!("publish {key}: {e}")))?;
            info!(%subject, version = versions.len(), "registered a new schema version");
            self.subjects
                .entry(subject)
                .or_default()
                .push(codec.table.clone());
        } else {
            self.ensure_schema(codec.value_fingerprint, &codec.value_schema_json)
                .await?;
        }
        Ok(codec.single_object_headers())
    }

    /// Reads the schema topic to its end: what is already published, and each subject's
    /// versions.
    async fn load_schema_topic(&mut self) -> Result<TopicSchemas, CaptureError> {
        let (config, topic) = (
            self.client_config.clone(),
            self.settings.schema_topic.clone(),
        );
        let records = tokio::task::spawn_blocking(move || {
            read_to_end(&config, &topic, Duration::from_secs(60))
        })
        .await
        .map_err(|e| CaptureError::Kafka(format!("schema topic reader panicked: {e}")))?
        .map_err(CaptureError::Kafka)?;
        let out = TopicSchemas::from_records(records);
        self.published_schemas.extend(out.schemas.keys().copied());
        debug!(
            schemas = out.schemas.len(),
            subjects = out.subjects.len(),
            "read the schema topic"
        );
        Ok(out)
    }

    /// Registry mode: checks against the subject's versions in the registry, then registers
    /// the key and value schemas (idempotent) and frames with their ids.
    async fn register_in_registry(
        &mut self,
        registry: &Arc<Registry>,
        topic: &str,
        codec: &EnvelopeCodec,
    ) -> Result<(Vec<u8>, Vec<u8>), CaptureError> {
        let subject = format!("{topic}-value");
        if !self.subjects.contains_key(&subject) {
            let transitive = self.settings.policy.for_table(&codec.table.id).transitive();
            let (r, s) = (registry.clone(), subject.clone());
            let schemas = blocking(move || -> Result<Vec<String>, RegistryError> {
                let versions = r.versions(&s)?;
                let wanted: Vec<i64> = if transitive {
                    versions
                } else {
                    versions.last().copied().into_iter().collect()
                };
                wanted
                    .into_iter()
                    .map(|v| r.version(&s, Some(v)).map(|sv| sv.schema))
                    .collect()
            })
            .await?;
            let mut history = Vec::with_capacity(schemas.len());
            for json in schemas {
                history.push(EnvelopeDecoder::from_schema_json(&json)?.table);
            }
            self.subjects.insert(subject.clone(), history);
        }
        let known = self
            .subjects
            .get(&subject)
            .is_some_and(|h| h.iter().any(|t| **t == *codec.table));
        if !known {
            self.check_compatibility(&subject, &codec.table)?;
        }
        let (r, key_subject, key_json, value_subject, value_json) = (
            registry.clone(),
            format!("{topic}-key"),
            codec.key_schema_json.clone(),
            subject.clone(),
            codec.value_schema_json.clone(),
        );
        let (key_id, value_id) = blocking(move || -> Result<(u32, u32), RegistryError> {
            Ok((
                r.register(&key_subject, &key_json)?,
                r.register(&value_subject, &value_json)?,
            ))
        })
        .await
        .map_err(|e| match e {
            RegistryError::Incompatible { .. } => CaptureError::Definite(format!(
                "{e}. Sluice's own policy ({}) allowed the change, but the registry's \
                 compatibility level for the subject does not; align them (PUT /config/<subject>) \
                 or revert the change at the source. Capture stopped before publishing it",
                self.settings.policy.for_table(&codec.table.id)
            )),
            e => e.into(),
        })?;
        if !known {
            info!(%subject, id = value_id, "registered a new schema version");
            self.subjects
                .entry(subject)
                .or_default()
                .push(codec.table.clone());
        }
        metrics::counter!(m::SCHEMAS_PUBLISHED_TOTAL, "source" => self.settings.source.clone())
            .increment(1);
        Ok((
            confluent_header(key_id).to_vec(),
            confluent_header(value_id).to_vec(),
        ))
    }

    /// Publishes one event (and its tombstone, for deletes). Waits while too many are in flight.
    pub async fn publish(
        &mut self,
        codec: &EnvelopeCodec,
        event: &ChangeEvent,
    ) -> Result<(), CaptureError> {
        self.prepare_table(codec).await?;
        let out = &self.tables[&codec.value_fingerprint];
        let key = codec.encode_key(event, &out.key_header)?;
        let value = codec.encode_value(
            event,
            sluice_schemas::event::unix_now_us(),
            &out.value_header,
        )?;
        let position = event.position.to_hex();
        self.send(&out.topic, key.as_deref(), Some(&value), &position)
            .await?;
        if event.op == Op::Delete && self.settings.tombstones {
            self.send(&out.topic, key.as_deref(), None, &position)
                .await?;
        }
        out.events[op_index(event.op)].increment(1);
        out.bytes
            .increment((value.len() + key.as_ref().map_or(0, Vec::len)) as u64);
        Ok(())
    }

    async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        position: &str,
    ) -> Result<(), CaptureError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: POSITION_HEADER,
            value: Some(position),
        });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(CaptureError::Kafka(format!("produce to {topic}: {e}"))),
            }
        };
        self.pending
            .send(Pending::Delivery(delivery))
            .await
            .map_err(|_| CaptureError::Kafka("the acknowledgement task stopped".into()))
    }

    /// Marks `lsn` as confirmable once every event published before it is acknowledged.
    pub async fn checkpoint(&mut self, lsn: u64) -> Result<(), CaptureError> {
        if lsn <= self.last_checkpoint {
            return Ok(());
        }
        self.last_checkpoint = lsn;
        self.pending
            .send(Pending::Checkpoint(lsn))
            .await
            .map_err(|_| CaptureError::Kafka("the acknowledgement task stopped".into()))
    }

    /// Waits until everything published so far is acknowledged (or `timeout` passes).
    pub async fn drain(&self, acked: &mut watch::Receiver<u64>, timeout: Duration) -> bool {
        let target = self.last_checkpoint;
        tokio::time::timeout(timeout, acked.wait_for(|v| *v >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn ack_loop(
    mut rx: mpsc::Receiver<Pending>,
    acked: watch::Sender<u64>,
    source: String,
    liveness: Arc<Liveness>,
) -> Result<(), CaptureError> {
    let inflight = metrics::gauge!(m::INFLIGHT_EVENTS, "source" => source);
    while let Some(p) = rx.recv().await {
        inflight.set(rx.len() as f64);
        liveness.set_pending(true);
        match p {
            Pending::Delivery(f) => match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(CaptureError::Kafka(format!("delivery failed: {e}")))
                }
                Err(_) => return Err(CaptureError::Kafka("delivery was cancelled".into())),
            },
            Pending::Checkpoint(lsn) => {
                acked.send_replace(lsn);
            }
            Pending::Barrier(done) => {
                let _ = done.send(());
            }
        }
        liveness.progressed();
        if rx.is_empty() {
            liveness.set_pending(false);
        }
    }
    Ok(())
}

/// Runs a blocking registry call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(RegistryError::Unavailable {
            url: String::new(),
            detail: format!("the registry call panicked: {e}"),
        })
    })
}
