//! The Kafka side of capture: topics, schemas, events, and acknowledgement tracking.
//!
//! Events are counted per *epoch*, the events published between two checkpoints. The
//! producer's delivery callback counts each acknowledgement off its epoch; once an epoch and
//! every epoch before it are complete, the checkpoint that closed it is confirmed (`acked`),
//! so its source position may be confirmed to the source. Deliveries of different partitions
//! may come back in any order; checkpoints are still confirmed in order. The number of events
//! awaiting acknowledgement is bounded (`max_in_flight`): when Kafka is slow, `publish` waits
//! and capture stops reading the replication stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use sluice_connect::local::Local;
use sluice_connect::registry::{confluent_header, Registry, RegistryError};
use sluice_connect::transport::{TopicSchemas, Transport};
use sluice_schemas::avro::EnvelopeDecoder;
use sluice_schemas::compat::SchemaPolicy;
use sluice_schemas::event::{BARRIER_HEADER, POSITION_HEADER};
use sluice_schemas::liveness::Liveness;
use sluice_schemas::{
    ChangeEvent, EnvelopeCodec, LegacyTopic, Op, SchemaFingerprint, TableId, TableSchema,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::metrics as m;
use crate::CaptureError;

/// Where and under which key and position an event's records go.
#[derive(Clone, Copy)]
struct Record<'a> {
    topic: &'a str,
    key: Option<&'a [u8]>,
    /// The position header's value: the event's position in hex.
    position: &'a [u8],
    timestamp_ms: i64,
    /// A barrier's copy: the partition it goes to, and the barrier header's value (the
    /// number of partitions).
    partition: Option<(i32, &'a [u8])>,
}

/// How events are published.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// Topic names are `<topic_prefix>.<schema>.<table>`; the prefix is the source's own.
    pub topic_prefix: String,
    /// `kafka.topic_prefix` when the source sets no `topic_prefix` of its own: the prefix its
    /// topics had before topic names carried the source (see [`Publisher::refuse_legacy_topics`]).
    pub legacy_topic_prefix: Option<String>,
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
    pub drain_timeout: Duration,
    /// Reported to `/readyz`: connected once the broker answers; pending while events await
    /// acknowledgement.
    pub liveness: Arc<Liveness>,
    /// The compatibility each new version of a table's schema must keep with earlier ones.
    pub policy: SchemaPolicy,
    /// Where schemas are registered: a Confluent Schema Registry (Confluent framing), or
    /// without one the schema topic (single-object framing).
    pub registry: Option<Arc<Registry>>,
    /// Local mode: hand the changes of a transaction the source streams while in progress to
    /// the routers as they come, for their sinks to apply into a transaction held open until
    /// it commits (`[local] apply_in_progress`).
    pub apply_in_progress: bool,
}

/// A delivery opaque with this bit set is a control record (state, schema) whose sender waits
/// for its own acknowledgement; otherwise it is an event's epoch.
const CONTROL: usize = 1 << (usize::BITS - 1);

/// The delivery opaque of a change of a transaction still in progress (local mode): it
/// belongs to no epoch, and its permit comes back once a router took it.
const IN_PROGRESS: usize = 1 << (usize::BITS - 2);

/// What closes an epoch.
enum Close {
    /// Confirm this position once the epoch's events are acknowledged.
    Checkpoint(u64),
    /// Tell the waiter.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The events published since one checkpoint.
struct Epoch {
    outstanding: usize,
    /// `None` while it is the open (last) epoch.
    close: Option<Close>,
}

/// Acknowledgement state, shared by the publisher and the producer's delivery callback.
struct Track {
    /// The number of `epochs[0]`.
    first: u64,
    /// Oldest first; the last is open.
    epochs: VecDeque<Epoch>,
    in_flight: usize,
    controls: HashMap<usize, tokio::sync::oneshot::Sender<Result<(), String>>>,
    next_control: usize,
    /// The first delivery that failed: nothing after it is confirmed.
    failed: Option<String>,
}

/// Counts deliveries (see the module docs).
struct Tracker {
    track: Mutex<Track>,
    /// One permit per event that may be in flight.
    permits: tokio::sync::Semaphore,
    failure: tokio::sync::Notify,
    acked: watch::Sender<u64>,
    liveness: Arc<Liveness>,
    inflight_gauge: metrics::Gauge,
    acknowledged: metrics::Counter,
}

impl Tracker {
    /// `source` labels its metrics.
    fn new(
        max_in_flight: usize,
        acked: watch::Sender<u64>,
        liveness: Arc<Liveness>,
        source: &str,
    ) -> Tracker {
        Tracker {
            track: Mutex::new(Track {
                first: 0,
                epochs: VecDeque::from([Epoch {
                    outstanding: 0,
                    close: None,
                }]),
                in_flight: 0,
                controls: HashMap::new(),
                next_control: 0,
                failed: None,
            }),
            permits: tokio::sync::Semaphore::new(max_in_flight.max(1)),
            failure: tokio::sync::Notify::new(),
            acked,
            liveness,
            inflight_gauge: metrics::gauge!(m::INFLIGHT_EVENTS, "source" => source.to_string()),
            acknowledged: metrics::counter!(m::RECORDS_ACKNOWLEDGED_TOTAL, "source" => source.to_string()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Track> {
        // A panic while holding it cannot leave the counts half-updated in a way that matters
        // more than stopping would: keep going with what is there.
        self.track
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for room (one permit per event in flight: the bound that makes capture wait for
    /// Kafka), then counts a new event into the open epoch; its delivery opaque. The permit
    /// comes back with its delivery.
    async fn open_event(&self) -> Result<usize, CaptureError> {
        self.permits
            .acquire()
            .await
            .map_err(|_| CaptureError::Kafka("the producer stopped".into()))?
            .forget();
        let mut t = self.lock();
        let number = t.first + t.epochs.len() as u64 - 1;
        if let Some(open) = t.epochs.back_mut() {
            open.outstanding += 1;
        }
        t.in_flight += 1;
        if t.in_flight == 1 {
            self.liveness.set_pending(true);
        }
        // Epoch numbers stay far below the control bit.
        Ok(number as usize)
    }

    /// Closes the open epoch with `close` and opens the next.
    fn close(&self, close: Close) {
        let mut t = self.lock();
        if let Some(open) = t.epochs.back_mut() {
            open.close = Some(close);
        }
        t.epochs.push_back(Epoch {
            outstanding: 0,
            close: None,
        });
        self.complete(&mut t);
    }

    /// Registers a control record's waiter; its delivery opaque.
    fn open_control(&self, done: tokio::sync::oneshot::Sender<Result<(), String>>) -> usize {
        let mut t = self.lock();
        let id = CONTROL | t.next_control;
        t.next_control = (t.next_control + 1) & !CONTROL;
        t.controls.insert(id, done);
        id
    }

    /// From the producer's delivery callback (librdkafka's thread).
    fn delivered(&self, opaque: usize, error: Option<String>) {
        if opaque == IN_PROGRESS {
            self.permits.add_permits(1);
            return;
        }
        let mut t = self.lock();
        if opaque & CONTROL != 0 {
            if let Some(done) = t.controls.remove(&opaque) {
                let _ = done.send(error.map_or(Ok(()), Err));
            }
            return;
        }
        let index = (opaque as u64).wrapping_sub(t.first) as usize;
        if let Some(epoch) = t.epochs.get_mut(index) {
            epoch.outstanding = epoch.outstanding.saturating_sub(1);
        }
        t.in_flight = t.in_flight.saturating_sub(1);
        match error {
            Some(e) if t.failed.is_none() => {
                t.failed = Some(e);
                self.failure.notify_one();
            }
            Some(_) => {}
            None => self.acknowledged.increment(1),
        }
        self.complete(&mut t);
        self.inflight_gauge.set(t.in_flight as f64);
        if t.in_flight == 0 {
            self.liveness.set_pending(false);
        }
        drop(t);
        self.permits.add_permits(1);
        self.liveness.progressed();
    }

    /// Confirms every closed epoch at the front whose events are all acknowledged.
    fn complete(&self, t: &mut Track) {
        if t.failed.is_some() {
            // Nothing is confirmed after a failed delivery; a barrier's waiter is told so by
            // its sender going.
            for epoch in &mut t.epochs {
                if matches!(epoch.close, Some(Close::Barrier(_))) {
                    epoch.close = None;
                }
            }
            return;
        }
        while t
            .epochs
            .front()
            .is_some_and(|e| e.outstanding == 0 && e.close.is_some())
        {
            let Some(epoch) = t.epochs.pop_front() else {
                break;
            };
            t.first += 1;
            match epoch.close {
                Some(Close::Checkpoint(position)) => {
                    self.acked.send_if_modified(|acked| {
                        let newer = position > *acked;
                        if newer {
                            *acked = position;
                        }
                        newer
                    });
                }
                Some(Close::Barrier(done)) => {
                    let _ = done.send(());
                }
                None => {}
            }
        }
    }
}

/// The producer's context: deliveries go to the [`Tracker`].
struct AckContext(Arc<Tracker>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let error = result.as_ref().err().map(|(e, _)| e.to_string());
        self.0.delivered(opaque, error);
    }
}

/// What publishing a table version needs, worked out once: its topic exists, its schemas are
/// registered, and its metric handles are made.
struct TableOut {
    topic: String,
    /// The topic's partitions: a truncate goes to each (see [`BARRIER_HEADER`]).
    partitions: i32,
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

/// Where records go.
enum Wire {
    Kafka {
        producer: ThreadedProducer<AckContext>,
        admin: AdminClient<DefaultClientContext>,
    },
    /// Local mode: to the routers of this process; delivered once their sinks committed,
    /// which `report` tells the tracker.
    Local {
        local: Arc<Local>,
        report: sluice_connect::local::Report,
    },
}

/// Publishes events and checkpoints; see the module docs.
pub struct Publisher {
    wire: Wire,
    tracker: Arc<Tracker>,
    /// For reading the control topics.
    transport: Transport,
    settings: PublisherSettings,
    known_topics: HashSet<String>,
    published_schemas: HashSet<SchemaFingerprint>,
    /// By value-schema fingerprint.
    tables: HashMap<SchemaFingerprint, TableOut>,
    last_checkpoint: u64,
    /// The versions of each value subject (`<topic>-value`), oldest first, as the schema
    /// transport holds them; loaded when a subject is first needed.
    subjects: HashMap<String, Vec<Arc<TableSchema>>>,
    /// Schema-topic mode: what the topic held when capture started.
    topic_schemas: Option<TopicSchemas>,
    /// The source epoch's position prefix (see [`crate::epoch`]) in hex; none in epoch 0.
    epoch_prefix: Option<[u8; 18]>,
    /// The hex prefixes of positions below a promotion's switch point (see
    /// [`crate::epoch::Inherited`]).
    inherited_prefixes: Vec<(u64, Option<[u8; 18]>)>,
}

/// Follows acknowledgements: `acked` is the highest checkpoint whose events Kafka acknowledged.
pub struct AckHandle {
    pub acked: watch::Receiver<u64>,
    pub task: JoinHandle<Result<(), CaptureError>>,
}

impl Publisher {
    /// Creates the producer (idempotent, acks=all; in local mode, the hand-over to this
    /// process's routers) and the ack task; `start` is the position already confirmed.
    pub fn new(
        transport: &Transport,
        settings: PublisherSettings,
        start: u64,
    ) -> Result<(Publisher, AckHandle), CaptureError> {
        let (acked_tx, acked_rx) = watch::channel(start);
        let tracker = Arc::new(Tracker::new(
            settings.max_in_flight,
            acked_tx,
            settings.liveness.clone(),
            &settings.source,
        ));
        let wire = match transport {
            Transport::Kafka(client_config) => Publisher::kafka(client_config, &tracker)?,
            Transport::Local(local) => {
                let tracker = tracker.clone();
                Wire::Local {
                    local: local.clone(),
                    report: Arc::new(move |opaque, error| tracker.delivered(opaque, error)),
                }
            }
        };
        let watching = tracker.clone();
        let task = tokio::spawn(async move {
            watching.failure.notified().await;
            let failed = watching.lock().failed.clone().unwrap_or_default();
            Err(CaptureError::Kafka(format!("delivery failed: {failed}")))
        });
        Ok((
            Publisher {
                wire,
                tracker,
                transport: transport.clone(),
                settings,
                known_topics: HashSet::new(),
                published_schemas: HashSet::new(),
                tables: HashMap::new(),
                last_checkpoint: start,
                subjects: HashMap::new(),
                topic_schemas: None,
                epoch_prefix: None,
                inherited_prefixes: Vec::new(),
            },
            AckHandle {
                acked: acked_rx,
                task,
            },
        ))
    }

    fn kafka(client_config: &ClientConfig, tracker: &Arc<Tracker>) -> Result<Wire, CaptureError> {
        let mut config = client_config.clone();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5");
        for (key, value) in [
            ("linger.ms", "5"),
            ("message.timeout.ms", "300000"),
            // Bytes, not events, were most of what publishing cost: the copies into the
            // socket, librdkafka's buffers, and the broker's. LZ4 record batches took MariaDB
            // capture from ~260k to ~470k events/s on the bench (BENCHMARKS.md); every Kafka
            // client reads them.
            ("compression.codec", "lz4"),
        ] {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        let producer: ThreadedProducer<AckContext> = config
            .create_with_context(AckContext(tracker.clone()))
            .map_err(|e| CaptureError::Kafka(e.to_string()))?;
        let admin: AdminClient<DefaultClientContext> = client_config
            .create()
            .map_err(|e| CaptureError::Kafka(e.to_string()))?;
        Ok(Wire::Kafka { producer, admin })
    }

    /// Publishes every event from here on in `epoch`: its positions carry the epoch's
    /// prefix. Set before anything of the epoch is published.
    pub fn set_epoch(&mut self, epoch: &crate::epoch::Epoch) {
        let hex = |prefix: Option<[u8; 9]>| {
            prefix.map(|p| {
                let mut hex = [0; 18];
                sluice_schemas::Position(p.to_vec()).write_hex(&mut hex);
                hex
            })
        };
        self.epoch_prefix = hex(epoch.prefix());
        self.inherited_prefixes = epoch
            .inherited
            .iter()
            .map(|i| (i.until_lsn, hex(i.prefix())))
            .collect();
    }

    /// The hex prefix of `position` in the epoch ([`crate::epoch::Epoch::prefix_for`]).
    fn prefix_hex(&self, position: &sluice_schemas::Position) -> Option<[u8; 18]> {
        if !self.inherited_prefixes.is_empty() {
            let lsn = position
                .0
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            if let Some((_, hex)) = self
                .inherited_prefixes
                .iter()
                .find(|(until, _)| lsn.is_some_and(|lsn| lsn < *until))
            {
                return *hex;
            }
        }
        self.epoch_prefix
    }

    /// The last checkpoint handed to the ack task.
    pub fn last_checkpoint(&self) -> u64 {
        self.last_checkpoint
    }

    /// Creates the schema and state topics (compacted) if missing.
    pub async fn prepare(&mut self) -> Result<(), CaptureError> {
        // Every engine connects to its source before it prepares the publisher.
        self.settings.liveness.set_connected("source", true);
        if matches!(self.wire, Wire::Local { .. }) {
            return Ok(());
        }
        let topic = self.settings.schema_topic.clone();
        self.ensure_topic(&topic, 1, true).await?;
        let topic = self.settings.state_topic.clone();
        self.ensure_topic(&topic, 1, true).await?;
        self.settings.liveness.set_connected("broker", true);
        Ok(())
    }

    /// Waits until every event published so far is acknowledged by Kafka.
    pub async fn barrier(&mut self) -> Result<(), CaptureError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tracker.close(Close::Barrier(tx));
        rx.await.map_err(|_| {
            CaptureError::Kafka(
                "a delivery failed before every event was acknowledged; capture resumes from its last checkpoint".into(),
            )
        })
    }

    /// Writes this source's state record and waits for Kafka to acknowledge it.
    pub async fn write_state(&mut self, json: &str) -> Result<(), CaptureError> {
        let (topic, key) = (
            self.settings.state_topic.clone(),
            self.settings.source.clone(),
        );
        self.send_and_wait(&topic, &key, json.as_bytes(), "write capture state")
            .await
    }

    /// Produces a control record (state, schema) and waits for Kafka to acknowledge it.
    async fn send_and_wait(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        what: &str,
    ) -> Result<(), CaptureError> {
        let producer = match &self.wire {
            Wire::Kafka { producer, .. } => producer,
            Wire::Local { local, .. } => {
                let (local, topic, key, payload) = (
                    local.clone(),
                    topic.to_string(),
                    key.to_string(),
                    payload.to_vec(),
                );
                // A file written and synced: off the async threads.
                return tokio::task::spawn_blocking(move || {
                    local.write_control(&topic, &key, Some(&payload))
                })
                .await
                .map_err(|e| CaptureError::Kafka(format!("{what}: {e}")))?
                .map_err(|e| CaptureError::Kafka(format!("{what}: {e}")));
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = self.tracker.open_control(tx);
        let record = BaseRecord::with_opaque_to(topic, id)
            .key(key)
            .payload(payload);
        if let Err(e) = produce(producer, record).await {
            self.tracker.lock().controls.remove(&id);
            return Err(CaptureError::Kafka(format!("{what}: {e}")));
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CaptureError::Kafka(format!("{what}: {e}"))),
            Err(_) => Err(CaptureError::Kafka(format!("{what}: the producer stopped"))),
        }
    }

    /// How many partitions `topic` has (it exists: [`Publisher::ensure_topic`] ran).
    fn partition_count(&self, topic: &str) -> Result<i32, CaptureError> {
        let producer = match &self.wire {
            Wire::Kafka { producer, .. } => producer,
            Wire::Local { .. } => return Ok(1),
        };
        // Once per table version: librdkafka's metadata call blocks, so the worker is handed
        // over. A topic just created may list no partitions for a moment.
        tokio::task::block_in_place(|| {
            let mut last = String::new();
            for _ in 0..50 {
                match producer
                    .client()
                    .fetch_metadata(Some(topic), Duration::from_secs(30))
                {
                    Ok(m) => match m.topics().first().map(|t| t.partitions().len()) {
                        Some(n) if n > 0 => return Ok(n as i32),
                        _ => last = "no partitions listed yet".into(),
                    },
                    Err(e) => last = e.to_string(),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(CaptureError::Kafka(format!("metadata of {topic}: {last}")))
        })
    }

    /// Refuses to start while a table's topic from before topic names carried the source
    /// exists and its new topic does not: capture would publish to a new topic while the
    /// router's committed progress and the sink's positions point at the old one (and
    /// another source may own the old one). The fix is explicit: keep the old names, or
    /// confirm the new ones.
    pub async fn refuse_legacy_topics(&self, tables: &[TableId]) -> Result<(), CaptureError> {
        let Some(legacy) = self.settings.legacy_topic_prefix.clone() else {
            return Ok(());
        };
        let Wire::Kafka { producer, .. } = &self.wire else {
            return Ok(()); // no topics in local mode
        };
        // Once per start: librdkafka's metadata call blocks, so the worker is handed over.
        let topics: HashSet<String> = tokio::task::block_in_place(|| {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(30))
                .map(|m| m.topics().iter().map(|t| t.name().to_string()).collect())
        })
        .map_err(|e| CaptureError::Kafka(format!("list topics: {e}")))?;
        for table in tables {
            let legacy = LegacyTopic {
                source: self.settings.source.clone(),
                table: table.clone(),
                legacy_prefix: legacy.clone(),
                prefix: self.settings.topic_prefix.clone(),
            };
            if let Some(refusal) = legacy.refusal(|t| topics.contains(t)) {
                return Err(CaptureError::Definite(refusal));
            }
        }
        Ok(())
    }

    async fn ensure_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        compact: bool,
    ) -> Result<(), CaptureError> {
        let Wire::Kafka { admin, .. } = &self.wire else {
            return Ok(()); // local mode: a topic is only a name
        };
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
        let results = admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| CaptureError::Kafka(format!("create topic {topic}: {e}")))?;
        let mut created = false;
        for r in results {
            match r {
                Ok(_) => {
                    info!(topic, partitions, "created topic");
                    created = true;
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => debug!(topic, "topic exists"),
                Err((name, code)) => {
                    return Err(CaptureError::Kafka(format!("create topic {name}: {code}")))
                }
            }
        }
        if created {
            self.await_leaders(topic).await?;
        }
        self.known_topics.insert(topic.to_string());
        Ok(())
    }

    /// Waits until the broker's metadata gives every partition of a topic just created a
    /// leader: Kafka answers CreateTopics once the controller has the topic, before every
    /// broker serves it, and a record sent meanwhile fails with an unknown partition.
    async fn await_leaders(&self, topic: &str) -> Result<(), CaptureError> {
        let Wire::Kafka { producer, .. } = &self.wire else {
            return Ok(());
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let client = producer.client();
            let ready = match client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                Ok(md) => md.topics().iter().any(|t| {
                    t.name() == topic
                        && t.error().is_none()
                        && !t.partitions().is_empty()
                        && t.partitions()
                            .iter()
                            .all(|p| p.leader() >= 0 && p.error().is_none())
                }),
                Err(_) => false,
            };
            if ready {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(CaptureError::Kafka(format!(
                    "topic {topic} was created but has no leader after 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        self.send_and_wait(
            &self.settings.schema_topic,
            &key,
            json.as_bytes(),
            &format!("publish schema {key}"),
        )
        .await?;
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
        let partitions = self.partition_count(&topic)?;
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
                partitions,
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
            .map(|v| v.iter().map(AsRef::as_ref).collect())
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
            let version = versions.len();
            self.send_and_wait(
                &self.settings.schema_topic,
                &key,
                record.as_bytes(),
                &format!("publish {key}"),
            )
            .await?;
            info!(%subject, version, "registered a new schema version");
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
        let records = self
            .transport
            .read_control(&self.settings.schema_topic, Duration::from_secs(60))
            .await
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
        // One clock reading for the envelope and the record's timestamp (librdkafka would
        // read the clock again for a record without one).
        let now_us = sluice_schemas::event::unix_now_us();
        let value = codec.encode_value(event, now_us, &out.value_header)?;
        let mut hex = [0; 80];
        let owned;
        let position = match self.prefix_hex(&event.position) {
            None => match event.position.write_hex(&mut hex) {
                Some(p) => p,
                None => {
                    owned = event.position.to_hex();
                    owned.as_bytes()
                }
            },
            Some(prefix) => {
                // The epoch's prefix, then the position, in one hex string.
                let (head, tail) = hex.split_at_mut(prefix.len());
                head.copy_from_slice(&prefix);
                match event.position.write_hex(tail) {
                    Some(p) => {
                        let n = prefix.len() + p.len();
                        &hex[..n]
                    }
                    None => {
                        owned = format!(
                            "{}{}",
                            std::str::from_utf8(&prefix).expect("hex digits are ASCII"),
                            event.position.to_hex()
                        );
                        owned.as_bytes()
                    }
                }
            }
        };
        let at = Record {
            topic: &out.topic,
            key: key.as_deref(),
            position,
            timestamp_ms: now_us.div_euclid(1000),
            partition: None,
        };
        if event.op == Op::Truncate && out.partitions > 1 {
            // A table-wide change has no key: it goes to every partition, so it is ordered
            // with each partition's keyed changes, and the sink applies it once all have
            // reached it (a barrier).
            let width = out.partitions.to_string();
            for partition in 0..out.partitions {
                let copy = Record {
                    partition: Some((partition, width.as_bytes())),
                    ..at
                };
                self.send(&copy, Some(&value)).await?;
            }
        } else {
            self.send(&at, Some(&value)).await?;
        }
        if event.op == Op::Delete && self.settings.tombstones {
            self.send(&at, None).await?;
        }
        out.events[op_index(event.op)].increment(1);
        out.bytes
            .increment((value.len() + key.as_ref().map_or(0, Vec::len)) as u64);
        Ok(())
    }

    async fn send(&self, at: &Record<'_>, value: Option<&[u8]>) -> Result<(), CaptureError> {
        let mut headers = OwnedHeaders::new_with_capacity(2).insert(Header {
            key: POSITION_HEADER,
            value: Some(at.position),
        });
        if let Some((_, width)) = at.partition {
            headers = headers.insert(Header {
                key: BARRIER_HEADER,
                value: Some(width),
            });
        }
        let epoch = self.tracker.open_event().await?;
        let producer = match &self.wire {
            Wire::Kafka { producer, .. } => producer,
            Wire::Local { local, report } => {
                let mut headers = vec![(POSITION_HEADER, at.position.to_vec())];
                if let Some((_, width)) = at.partition {
                    headers.push((BARRIER_HEADER, width.to_vec()));
                }
                if let Err(e) = local.publish(
                    at.topic,
                    at.key,
                    value,
                    headers,
                    at.timestamp_ms,
                    epoch,
                    report.clone(),
                ) {
                    self.tracker.delivered(epoch, Some(e.clone()));
                    return Err(CaptureError::Definite(e));
                }
                return Ok(());
            }
        };
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(at.topic, epoch)
                .headers(headers)
                .timestamp(at.timestamp_ms);
        if let Some(k) = at.key {
            record = record.key(k);
        }
        if let Some((partition, _)) = at.partition {
            record = record.partition(partition);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Err(e) = produce(producer, record).await {
            let message = format!("produce to {}: {e}", at.topic);
            // Counted off as failed, so nothing after it is confirmed.
            self.tracker.delivered(epoch, Some(message.clone()));
            return Err(CaptureError::Kafka(message));
        }
        Ok(())
    }

    /// The position header's value: the epoch's prefix, then the position, in hex.
    fn position_hex(&self, position: &sluice_schemas::Position) -> Vec<u8> {
        let mut out = self
            .prefix_hex(position)
            .map(|p| p.to_vec())
            .unwrap_or_default();
        out.extend_from_slice(position.to_hex().as_bytes());
        out
    }

    /// Whether changes of transactions in progress go to the routers as they come (local
    /// mode, `[local] apply_in_progress`).
    pub fn applies_in_progress(&self) -> bool {
        self.settings.apply_in_progress && matches!(self.wire, Wire::Local { .. })
    }

    fn local(&self) -> Result<(&Arc<Local>, &sluice_connect::local::Report), CaptureError> {
        match &self.wire {
            Wire::Local { local, report } => Ok((local, report)),
            Wire::Kafka { .. } => Err(CaptureError::Definite(
                "a transaction in progress is handed over only in local mode".into(),
            )),
        }
    }

    /// Publishes a change of a transaction still in progress (local mode), with its
    /// [`sluice_connect::headers::PROVISIONAL_HEADER`] `note`: it takes an in-flight permit
    /// until a router takes it, and belongs to no epoch (the transaction's commit marker is
    /// what capture waits for). Returns its topic.
    pub async fn publish_in_progress(
        &mut self,
        codec: &EnvelopeCodec,
        event: &ChangeEvent,
        note: &[u8],
    ) -> Result<&str, CaptureError> {
        self.prepare_table(codec).await?;
        let out = &self.tables[&codec.value_fingerprint];
        let key = codec.encode_key(event, &out.key_header)?;
        let now_us = sluice_schemas::event::unix_now_us();
        let value = codec.encode_value(event, now_us, &out.value_header)?;
        let headers = vec![
            (POSITION_HEADER, self.position_hex(&event.position)),
            (sluice_connect::headers::PROVISIONAL_HEADER, note.to_vec()),
        ];
        self.hand_in_progress(&out.topic, key.as_deref(), Some(&value), headers)
            .await?;
        Ok(&out.topic)
    }

    /// Hands one message of a transaction in progress to the routers, once a permit is free;
    /// the permit comes back when a router takes it.
    async fn hand_in_progress(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Vec<(&'static str, Vec<u8>)>,
    ) -> Result<(), CaptureError> {
        let (local, report) = self.local()?;
        self.tracker
            .permits
            .acquire()
            .await
            .map_err(|_| CaptureError::Kafka("the publisher stopped".into()))?
            .forget();
        let now_ms = sluice_schemas::event::unix_now_us().div_euclid(1000);
        if let Err(e) = local.publish(
            topic,
            key,
            value,
            headers,
            now_ms,
            IN_PROGRESS,
            report.clone(),
        ) {
            self.tracker.permits.add_permits(1);
            return Err(CaptureError::Definite(e));
        }
        Ok(())
    }

    /// Publishes a rollback `note` of a transaction in progress (or of a subtransaction of
    /// it) on each of `topics`, in order with its changes.
    pub async fn publish_in_progress_note(
        &self,
        topics: &std::collections::BTreeSet<String>,
        note: &[u8],
    ) -> Result<(), CaptureError> {
        for topic in topics {
            let headers = vec![(sluice_connect::headers::PROVISIONAL_HEADER, note.to_vec())];
            self.hand_in_progress(topic, None, None, headers).await?;
        }
        Ok(())
    }

    /// Publishes a committed transaction's commit marker on each of `topics` (local mode),
    /// together — nothing comes between them in any router's feed — each taking an offset,
    /// with the commit's `position`. Each receiver hears whether every router of its topic
    /// committed the transaction at its sink.
    pub fn publish_commit_markers(
        &self,
        topics: &std::collections::BTreeSet<String>,
        position: &sluice_schemas::Position,
        marker: &[u8],
    ) -> Result<Vec<tokio::sync::oneshot::Receiver<Result<(), String>>>, CaptureError> {
        let (local, report) = self.local()?;
        let position = self.position_hex(position);
        let now_ms = sluice_schemas::event::unix_now_us().div_euclid(1000);
        let mut waits = Vec::with_capacity(topics.len());
        let mut outgoing = Vec::with_capacity(topics.len());
        for topic in topics {
            let (done, wait) = tokio::sync::oneshot::channel();
            waits.push(wait);
            outgoing.push(sluice_connect::local::Outgoing {
                topic,
                key: None,
                payload: None,
                headers: vec![
                    (POSITION_HEADER, position.clone()),
                    (
                        sluice_connect::headers::PROVISIONAL_COMMIT_HEADER,
                        marker.to_vec(),
                    ),
                ],
                timestamp_ms: now_ms,
                opaque: self.tracker.open_control(done),
                report: report.clone(),
            });
        }
        local
            .publish_together(outgoing)
            .map_err(CaptureError::Definite)?;
        Ok(waits)
    }

    /// Marks `lsn` as confirmable once every event published before it is acknowledged.
    pub async fn checkpoint(&mut self, lsn: u64) -> Result<(), CaptureError> {
        if lsn <= self.last_checkpoint {
            return Ok(());
        }
        self.last_checkpoint = lsn;
        self.tracker.close(Close::Checkpoint(lsn));
        Ok(())
    }

    /// Waits until everything published so far is acknowledged (or `timeout` passes).
    pub async fn drain(&self, acked: &mut watch::Receiver<u64>, timeout: Duration) -> bool {
        let target = self.last_checkpoint;
        tokio::time::timeout(timeout, acked.wait_for(|v| *v >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Hands a record to the producer, waiting while its queue is full.
async fn produce<K, P>(
    producer: &ThreadedProducer<AckContext>,
    mut record: BaseRecord<'_, K, P, usize>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> (Tracker, watch::Receiver<u64>) {
        let (tx, rx) = watch::channel(0);
        let liveness = Arc::new(Liveness::new("test", &[]));
        (Tracker::new(4, tx, liveness, "test"), rx)
    }

    #[tokio::test]
    async fn a_checkpoint_is_confirmed_only_once_every_event_before_it_is_acknowledged() {
        let (t, acked) = tracker();
        let first = t.open_event().await.unwrap();
        t.close(Close::Checkpoint(10));
        let second = t.open_event().await.unwrap();
        let third = t.open_event().await.unwrap();
        assert_eq!(t.permits.available_permits(), 1);
        t.close(Close::Checkpoint(20));
        // Another partition's events come back first.
        t.delivered(second, None);
        t.delivered(third, None);
        assert_eq!(*acked.borrow(), 0, "the first event is still in flight");
        t.delivered(first, None);
        assert_eq!(*acked.borrow(), 20);
        // A checkpoint with nothing before it in flight is confirmed at once.
        t.close(Close::Checkpoint(30));
        assert_eq!(*acked.borrow(), 30);
        assert_eq!(t.permits.available_permits(), 4, "every permit given back");
    }

    #[tokio::test]
    async fn after_a_failed_delivery_nothing_more_is_confirmed_and_a_barrier_is_told() {
        let (t, acked) = tracker();
        let lost = t.open_event().await.unwrap();
        t.close(Close::Checkpoint(10));
        let later = t.open_event().await.unwrap();
        let (done, waiting) = tokio::sync::oneshot::channel();
        t.close(Close::Barrier(done));
        t.delivered(later, None);
        t.delivered(lost, Some("Message timed out".into()));
        assert_eq!(*acked.borrow(), 0);
        assert!(t.lock().failed.is_some());
        assert!(
            waiting.await.is_err(),
            "the barrier's waiter hears that it will not be reached"
        );
        t.close(Close::Checkpoint(20));
        assert_eq!(*acked.borrow(), 0);
    }

    #[tokio::test]
    async fn a_control_record_hears_its_own_delivery() {
        let (t, acked) = tracker();
        let event = t.open_event().await.unwrap();
        let (done, heard) = tokio::sync::oneshot::channel();
        let control = t.open_control(done);
        assert_ne!(control & CONTROL, 0);
        t.delivered(control, Some("broker down".into()));
        assert_eq!(heard.await.unwrap(), Err("broker down".to_string()));
        // A failed control record is its sender's error, not the event stream's.
        assert!(t.lock().failed.is_none());
        t.close(Close::Checkpoint(5));
        t.delivered(event, None);
        assert_eq!(*acked.borrow(), 5);
    }
}
