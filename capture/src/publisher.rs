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
use sluice_schemas::event::POSITION_HEADER;
use sluice_schemas::liveness::Liveness;
use sluice_schemas::{ChangeEvent, EnvelopeCodec, Op, SchemaFingerprint};
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
}

enum Pending {
    Delivery(DeliveryFuture),
    Checkpoint(u64),
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// What publishing a table version needs, worked out once: its topic exists, its schemas are in
/// the schema topic, and its metric handles are registered.
struct TableOut {
    topic: String,
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
    admin: AdminClient<DefaultClientContext>,
    settings: PublisherSettings,
    known_topics: HashSet<String>,
    published_schemas: HashSet<SchemaFingerprint>,
    /// By value-schema fingerprint.
    tables: HashMap<SchemaFingerprint, TableOut>,
    pending: mpsc::Sender<Pending>,
    last_checkpoint: u64,
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
                admin,
                settings,
                known_topics: HashSet::new(),
                published_schemas: HashSet::new(),
                tables: HashMap::new(),
                pending: tx,
                last_checkpoint: start,
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

    /// Creates the topic and publishes the schemas of a table version seen for the first time.
    async fn prepare_table(&mut self, codec: &EnvelopeCodec) -> Result<(), CaptureError> {
        if self.tables.contains_key(&codec.value_fingerprint) {
            return Ok(());
        }
        let topic = codec.table.id.topic(&self.settings.topic_prefix);
        self.ensure_topic(&topic, self.settings.partitions, false)
            .await?;
        self.ensure_schema(codec.key_fingerprint, &codec.key_schema_json)
            .await?;
        self.ensure_schema(codec.value_fingerprint, &codec.value_schema_json)
            .await?;
        let (source, table) = (self.settings.source.clone(), codec.table.id.to_string());
        let events = [Op::Create, Op::Update, Op::Delete, Op::Read, Op::Truncate].map(|op| {
            metrics::counter!(m::EVENTS_TOTAL, "source" => source.clone(), "table" => table.clone(), "op" => op.code())
        });
        let bytes = metrics::counter!(m::BYTES_TOTAL, "source" => source, "table" => table);
        self.tables.insert(
            codec.value_fingerprint,
            TableOut {
                topic,
                events,
                bytes,
            },
        );
        Ok(())
    }

    /// Publishes one event (and its tombstone, for deletes). Waits while too many are in flight.
    pub async fn publish(
        &mut self,
        codec: &EnvelopeCodec,
        event: &ChangeEvent,
    ) -> Result<(), CaptureError> {
        self.prepare_table(codec).await?;
        let key = codec.encode_key(event)?;
        let value = codec.encode_value(event, sluice_schemas::event::unix_now_us())?;
        let position = event.position.to_hex();
        let out = &self.tables[&codec.value_fingerprint];
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
