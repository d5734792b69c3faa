//! The routing loop: consume, decode, batch, apply, record.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_connect::transport::Transport;
use sluice_schemas::event::POSITION_HEADER;
use sluice_schemas::liveness::Liveness;
use sluice_schemas::TableId;
use sluice_sinks::{Batch, Origin, Sink, SinkChange, SinkError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::applier::{Applier, Attempt};
use crate::dead_letter::DeadLetters;
use crate::feed::{Feed, LocalFeed};
use crate::gaps::StallSteps;
use crate::holds::{Holds, Part};
use crate::lag::LagContext;
use crate::mapper::Mapper;
use crate::metrics as m;
use crate::outage::Outage;
use crate::pending::{consumed_list, move_partitions, owned, Pending, Raw};
use crate::provisional::{InProgress, Open, TxKey};
use crate::reading::{Admit, Reading};
use crate::schemas::SchemaStore;
use crate::topics;
use crate::RouterError;

/// How long a partition waiting at a barrier waits before its held changes are tried again
/// (the reload tick is the granularity).
const BARRIER_RETRY: Duration = Duration::from_millis(500);

/// Messages the routing loop takes before it yields to the runtime.
const YIELD_EVERY: u32 = 64;

/// When a batch is flushed: whichever limit is reached first.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_delay: Duration,
}

/// How the router consumes.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub group_id: String,
    /// Static membership (`group.instance.id`), so a restarted router resumes at once.
    pub instance_id: Option<String>,
    /// librdkafka's `partition.assignment.strategy` (`cooperative-sticky`, `range`, …).
    pub assignment_strategy: String,
    pub topics: Vec<String>,
    /// The topics' names from before they carried the source: the router refuses to start
    /// (and so to create a new topic) while an old one exists without its new one.
    pub legacy_topics: Vec<sluice_schemas::LegacyTopic>,
    pub schema_topic: String,
    /// Resolves Confluent-framed messages (schema ids); single-object framed ones are found in
    /// `schema_topic` either way.
    pub registry: Option<Arc<sluice_connect::registry::Registry>>,
    pub dead_letter_topic: String,
    /// Used when the router has to create a topic that does not exist yet.
    pub partitions: i32,
    pub replication_factor: i32,
    pub batch: BatchSettings,
    /// How often the changes held for a table the sink could not take are tried again.
    pub blocked_retry: Duration,
    /// How long a change refused for a row it refers to (a foreign key at the sink: a child
    /// before its parent, a parent deleted before its children) waits, its partition held and
    /// tried again every second, before it is dead-lettered. Zero dead-letters it at once.
    pub foreign_key_wait: Duration,
    /// Read a partition again from a little earlier when its fetches keep coming back empty
    /// with messages after its position — Tansu 0.6 answers a fetch that starts inside a
    /// record batch with nothing. Off for Apache Kafka (and brokers like it), where an empty
    /// answer with messages after it is legitimate (a transaction still open).
    pub fetch_stall_recovery: bool,
    /// Sink name, for logs and metric labels.
    pub sink_name: String,
    /// How long the stopped router waits for its consumer to leave the group
    /// (`shutdown.drain_timeout_ms`).
    pub leave_timeout: Duration,
    /// Reported to `/readyz`: connected while the broker and sink answer; pending while a
    /// batch waits to be committed.
    pub liveness: Arc<Liveness>,
}

/// A router feeding one sink.
pub struct Router<S: Sink> {
    transport: Transport,
    settings: RouterSettings,
    /// The sink and the batch being applied while the next is collected.
    applier: Applier<S>,
    mapper: Mapper,
    /// Partitions held back on purpose: blocked tables', held for a scheme, at a barrier.
    holds: Holds,
    /// Where the router is in each partition it owns.
    reading: Reading,
    /// Partitions held for a row a change refers to (a foreign key): the change's offset, and
    /// since when it waits.
    waiting_rows: HashMap<Part, (i64, std::time::Instant)>,
    /// Local mode: the subscription made before captures started (else made at the start).
    subscription: Option<sluice_connect::local::Subscription>,
    /// Local mode with a sink that can hold them: the source transactions applied while in
    /// progress (see `provisional.rs`).
    in_progress: Option<InProgress>,
}

/// What became of one consumed message.
enum Handled {
    /// In the batch, dead-lettered, or nothing to apply: its offset counts as consumed.
    Taken,
    /// A mapping scheme does not fit the version of the table it was written with.
    Mismatch { table: TableId, detail: String },
}

/// What applying a batch came to.
enum Applied {
    Done(sluice_sinks::ApplyOutcome),
    /// One table's own problem: nothing was applied. `only`: just this partition of it waits
    /// (a change waiting for a row it refers to), not all of the table's.
    Blocked {
        table: TableId,
        reason: String,
        only: Option<Part>,
    },
}

impl<S: Sink + 'static> Router<S> {
    /// A router reading from `transport` (a Kafka consumer group, or in local mode this
    /// process's captures) and writing every table as it is; see [`Router::with_schemes`].
    pub fn new(transport: Transport, settings: RouterSettings, sink: S) -> Router<S> {
        let mapper = Mapper::identity(&settings.sink_name);
        Router {
            transport,
            settings,
            applier: Applier::new(sink),
            mapper,
            holds: Holds::default(),
            reading: Reading::default(),
            waiting_rows: HashMap::new(),
            subscription: None,
            in_progress: None,
        }
    }

    /// Local mode: reads this subscription (made before the captures started, so nothing
    /// they publish passes the router by).
    pub fn with_subscription(
        mut self,
        subscription: Option<sluice_connect::local::Subscription>,
    ) -> Router<S> {
        self.subscription = subscription;
        self
    }

    /// Applies these mapping schemes (reloading them as their files change).
    pub fn with_schemes(mut self, mapper: Mapper) -> Router<S> {
        self.mapper = mapper;
        self
    }

    /// Runs until `shutdown`; the batch in progress is applied before returning.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RouterError> {
        let span =
            info_span!("router", sink = %self.settings.sink_name, group = %self.settings.group_id);
        async move {
            let result = match self.run_inner(&shutdown).await {
                // A shutdown, not a failure: nothing unapplied was recorded.
                Err(RouterError::Interrupted(waiting_for)) => {
                    info!(waiting_for, "router stopped while waiting; what it had not applied is read again after a restart");
                    Ok(())
                }
                other => other,
            };
            if let Err(e) = &result {
                metrics::counter!(m::ERRORS_TOTAL, "sink" => self.settings.sink_name.clone(), "kind" => "definite").increment(1);
                error!(error = %e, "router stopped");
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn run_inner(&mut self, shutdown: &CancellationToken) -> Result<(), RouterError> {
        let client_config = match &self.transport {
            Transport::Kafka(config) => config.clone(),
            Transport::Local(local) => {
                let local = local.clone();
                return self.run_local(&local, shutdown).await;
            }
        };
        if !topics::ensure_with_retry(&client_config, &self.settings, shutdown).await? {
            return Ok(());
        }
        if shutdown.is_cancelled() {
            // Stopped while the topics were made: joining the group now would only start a
            // rebalance to be left at once.
            return Ok(());
        }
        let mut config = client_config.clone();
        config
            .set("group.id", &self.settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "partition.assignment.strategy",
                &self.settings.assignment_strategy,
            );
        if let Some(id) = &self.settings.instance_id {
            config.set("group.instance.id", id);
        }
        for (key, value) in [
            ("topic.metadata.refresh.interval.ms", "5000"),
            // The consumer-lag gauge is read from librdkafka's statistics.
            ("statistics.interval.ms", "5000"),
            // What librdkafka prefetches per partition and in all: bounds the router's memory
            // (the default 64 MiB queue is most of it) while keeping the sink fed. With the
            // short backoff below, 8 MiB keeps the router fed as well as 16 did; through one
            // 5M-row transaction the router peaked at 115 MiB with it and 142 MiB with 16.
            ("max.partition.fetch.bytes", "4194304"),
            ("queued.max.messages.kbytes", "8192"),
            // How long librdkafka postpones a partition's next fetch once that queue is full
            // (default 1 s): the router drains a full queue in well under a second and would
            // then wait, idle, for the postponed fetch.
            ("fetch.queue.backoff.ms", "10"),
            // A router killed -9 holds its partitions until its session times out (librdkafka's
            // default is 45 s): 10 s hands them over sooner, with heartbeats every 3 s. A
            // router's poll loop never blocks for long, so it does not miss them.
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "3000"),
        ] {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        let consumer: StreamConsumer<LagContext> =
            config.create_with_context(LagContext::new(self.settings.liveness.clone()))?;
        let result = self.subscribed(&consumer, shutdown).await;
        leave_group(
            consumer,
            self.settings.leave_timeout,
            &self.settings.sink_name,
        )
        .await;
        result
    }

    /// Kafka mode, from the subscription on (the consumer leaves its group after this).
    async fn subscribed(
        &mut self,
        consumer: &StreamConsumer<LagContext>,
        shutdown: &CancellationToken,
    ) -> Result<(), RouterError> {
        let topics: Vec<&str> = self.settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        info!(topics = ?self.settings.topics, "subscribed");
        // The sink connected before the router started, and the broker answered topic creation;
        // from here on librdkafka's statistics say whether a broker is up.
        self.settings.liveness.set_connected("sink", true);
        self.settings.liveness.set_connected("broker", true);
        let dlq = DeadLetters::new(&self.transport, &self.settings.dead_letter_topic)?;
        let schemas = SchemaStore::new(
            self.transport.clone(),
            self.settings.schema_topic.clone(),
            self.settings.registry.clone(),
        );
        self.route(consumer, &dlq, schemas, shutdown).await
    }

    /// Local mode: reads this process's captures (see [`LocalFeed`]), each topic's offsets
    /// going on from what the sink stored.
    async fn run_local(
        &mut self,
        local: &Arc<sluice_connect::local::Local>,
        shutdown: &CancellationToken,
    ) -> Result<(), RouterError> {
        let rx = match self.subscription.take() {
            Some(rx) => rx,
            None => local.subscribe(&self.settings.topics),
        };
        let mut stored = Vec::new();
        for topic in self.settings.topics.clone() {
            let last = self
                .applier
                .sink()
                .progress(&topic, sluice_connect::local::PARTITION)
                .await?
                .map_or(-1, |p| p.offset);
            stored.push((topic, last));
        }
        let feed = LocalFeed::new(rx, stored);
        self.in_progress = self.applier.sink().opener().map(InProgress::new);
        info!(topics = ?self.settings.topics, state = %local.dir().display(), "local mode: reading this process's captures");
        self.settings.liveness.set_connected("sink", true);
        let dlq = DeadLetters::new(&self.transport, &self.settings.dead_letter_topic)?;
        let schemas = SchemaStore::new(
            self.transport.clone(),
            self.settings.schema_topic.clone(),
            None,
        );
        self.route(&feed, &dlq, schemas, shutdown).await
    }

    /// The routing loop, whichever transport `consumer` reads.
    async fn route(
        &mut self,
        consumer: &impl Feed,
        dlq: &DeadLetters,
        mut schemas: SchemaStore,
        shutdown: &CancellationToken,
    ) -> Result<(), RouterError> {
        // Per topic, looked up once: the shared name and the consumed counter.
        let mut topics: HashMap<String, (Arc<str>, metrics::Counter)> = HashMap::new();

        // Scheme files are rescanned on this tick (the mapper applies its own interval).
        let mut reload = tokio::time::interval(Duration::from_secs(1));
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Per partition, how far back the last stall recovery read (it grows while stalls
        // recur).
        let mut stall_steps = StallSteps::default();
        let mut retry_blocked = tokio::time::interval(self.settings.blocked_retry);
        retry_blocked.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The batch being applied while the next is collected (`self.applier`) is settled
        // before the next batch is sent, and before anything else needs the sink, so batches
        // commit in order and a failed one still takes the retry, dead-letter or blocked-table
        // path.
        let sink_wait =
            metrics::histogram!(m::SINK_WAIT_SECONDS, "sink" => self.settings.sink_name.clone());
        let mut stopping = false;
        let mut since_yield: u32 = 0;
        while !stopping {
            let mut pending = Pending::new();
            // The batch's time limit, made once per batch: a new timer per message would
            // register with the timer wheel (and wake its driver) for every message.
            let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
            loop {
                let full = pending.batch.changes.len() >= self.settings.batch.max_rows
                    || pending.bytes >= self.settings.batch.max_bytes;
                if full {
                    break;
                }
                let timer = async {
                    match deadline.as_mut() {
                        Some(d) => d.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => { stopping = true; break; }
                    done = self.applier.finished() => {
                        self.settle(done?, consumer, dlq, &mut pending, shutdown).await?;
                        if !pending.is_empty() && consumer.is_idle() {
                            break;
                        }
                    }
                    _ = timer => break,
                    _ = reload.tick() => {
                        self.mapper.maybe_reload();
                        self.unstall(consumer, &mut stall_steps)?;
                        if self.holds.barrier_due(std::time::Instant::now()) {
                            self.settle_inflight(consumer, dlq, &mut pending, shutdown).await?;
                            self.retry_barrier_held(consumer, dlq, shutdown).await?;
                        }
                        // Messages skipped because the sink has them: their offsets are committed
                        // to Kafka, so the group's (which the consumer lag is measured from)
                        // does not stay behind them.
                        let skipped = self.reading.take_skipped();
                        if !skipped.is_empty() {
                            commit_hint(consumer, &consumed_list(&skipped));
                        }
                        if !self.waiting_rows.is_empty() {
                            // A row a held change refers to may have come meanwhile.
                            for (t, p) in consumer.take_revoked() {
                                self.forget_partition(&t, p);
                            }
                            let tables = self.waiting_tables();
                            self.settle_inflight(consumer, dlq, &mut pending, shutdown).await?;
                            self.retry_blocked(consumer, dlq, shutdown, tables).await?;
                        }
                        if self.holds.has_scheme_held() {
                            self.retry_scheme_held(consumer, &mut pending, &mut schemas, dlq, shutdown).await?;
                            if !pending.is_empty() && deadline.is_none() {
                                deadline = Some(Box::pin(tokio::time::sleep(self.settings.batch.max_delay)));
                                self.settings.liveness.set_pending(true);
                            }
                        }
                    }
                    _ = retry_blocked.tick(), if self.holds.has_blocked() => {
                        for (t, p) in consumer.take_revoked() {
                            self.forget_partition(&t, p);
                        }
                        self.settle_inflight(consumer, dlq, &mut pending, shutdown).await?;
                        let tables = self.holds.blocked_tables();
                        self.retry_blocked(consumer, dlq, shutdown, tables).await?;
                    }
                    msg = consumer.recv() => {
                        let msg = match msg {
                            Ok(msg) => msg,
                            Err(e) => {
                                if let Some(fix) = e.rdkafka_error_code().and_then(fatal_consumer_error) {
                                    return Err(RouterError::Definite(format!("the consumer cannot go on: {e}; {fix}")));
                                }
                                metrics::counter!(m::ERRORS_TOTAL, "sink" => self.settings.sink_name.clone(), "kind" => "transient").increment(1);
                                warn!(error = %e, "consumer error; librdkafka retries it");
                                continue;
                            }
                        };
                        if !topics.contains_key(msg.topic()) {
                            let counter = metrics::counter!(m::MESSAGES_CONSUMED_TOTAL, "topic" => msg.topic().to_string());
                            topics.insert(msg.topic().to_string(), (Arc::from(msg.topic()), counter));
                        }
                        let (topic, consumed) = &topics[msg.topic()];
                        let topic = topic.clone();
                        if let Some(note) = sluice_connect::headers::in_progress(&msg) {
                            // A change of a transaction still in progress at the source (local
                            // mode): no offset; into that transaction's own at the sink.
                            self.in_progress_message(consumer, dlq, &mut pending, &mut schemas, shutdown, &msg, topic, note).await?;
                            continue;
                        }
                        for (t, p) in consumer.take_revoked() {
                            self.forget_partition(&t, p);
                        }
                        let key = (topic.clone(), msg.partition());
                        if !self.reading.knows(&key) {
                            // First message of a newly assigned partition: what the sink has
                            // already recorded is skipped as it arrives. (Seeking forward
                            // instead could land inside a record batch, where Tansu 0.6
                            // answers fetches with nothing.)
                            self.settle_inflight(consumer, dlq, &mut pending, shutdown).await?;
                            let stored = self
                                .stored_progress(consumer, &topic, msg.partition(), shutdown)
                                .await?
                                .map(|p| p.offset);
                            self.reading.assigned(key.clone(), stored);
                            if let Some(stored) = stored {
                                info!(topic = %topic, partition = msg.partition(), stored, first = msg.offset(), "resuming after the offset stored in the sink");
                                if msg.offset() > stored + 1 {
                                    // Kafka's committed offset is ahead of the sink (the sink
                                    // was restored from a backup): what it lacks is read
                                    // again (the gap check below seeks back).
                                    warn!(topic = %topic, partition = msg.partition(), from = stored + 1, "the sink is behind the group's committed offset; reading again from the sink's");
                                }
                            }
                        }
                        match self.reading.admit(&key, msg.offset()) {
                            Admit::Skip => {
                                metrics::counter!(m::MESSAGES_SKIPPED_TOTAL, "topic" => topic.to_string()).increment(1);
                                // Reading through what the sink has is progress too.
                                self.settings.liveness.progressed();
                                continue;
                            }
                            Admit::ReadAgainFrom(from) => {
                                consumer.seek(&topic, msg.partition(), Offset::Offset(from), Duration::from_secs(10))?;
                                continue;
                            }
                            Admit::Take => {}
                        }
                        let marker = sluice_connect::headers::commit_marker(&msg);
                        self.markers_interrupted(consumer, marker.as_ref(), &mut pending);
                        if let Some(marker) = marker {
                            if self.in_progress_commit(consumer, dlq, &mut pending, shutdown, &msg, &topic, marker).await? {
                                if !pending.is_empty() && deadline.is_none() {
                                    deadline = Some(Box::pin(tokio::time::sleep(self.settings.batch.max_delay)));
                                    self.settings.liveness.set_pending(true);
                                }
                                continue;
                            }
                            // Not held here: consumed in order like any message without a
                            // payload.
                        }
                        consumed.increment(1);
                        since_yield += 1;
                        if since_yield == YIELD_EVERY {
                            since_yield = 0;
                            // Every consume and decode is ready at once while messages are
                            // queued: let the other tasks of this worker run now and then.
                            tokio::task::yield_now().await;
                        }
                        if let Some(queue) = self.holds.scheme_queue(&key) {
                            // Fetched before the pause, behind a message its scheme does not
                            // fit: it waits behind that one, in order.
                            queue.push_back(owned(&msg));
                            continue;
                        }
                        if self.holds.barrier_wait(&key).is_some() {
                            // Fetched before the pause, behind changes waiting at a barrier:
                            // it waits behind them, in order.
                            let mut held = Pending::new();
                            self.handle_in_order(consumer, &msg, key.clone(), &mut held, &mut schemas, dlq, shutdown).await?;
                            if let Some(wait) = self.holds.barrier_wait(&key) {
                                move_partitions(&mut held, &mut wait.pending, &HashSet::from([key]));
                            }
                            continue;
                        }
                        if self.handle_in_order(consumer, &msg, key, &mut pending, &mut schemas, dlq, shutdown).await? {
                            continue;
                        }
                        if deadline.is_none() {
                            deadline = Some(Box::pin(tokio::time::sleep(self.settings.batch.max_delay)));
                            self.settings.liveness.set_pending(true);
                        }
                        // Nothing more waiting and the sink free: apply what there is now
                        // rather than at the batch's time limit (local mode knows; Kafka
                        // never says).
                        if !self.applier.is_busy() && consumer.is_idle() {
                            break;
                        }
                    }
                }
            }
            // The next batch is ready: the one before it must be settled first.
            if self.applier.is_busy() {
                let waiting = Instant::now();
                self.settle_inflight(consumer, dlq, &mut pending, shutdown)
                    .await?;
                sink_wait.record(waiting.elapsed().as_secs_f64());
            }
            if !pending.is_empty() {
                if stopping {
                    self.flush(consumer, dlq, pending, None, shutdown).await?;
                } else {
                    self.applier.start(pending);
                }
            }
            if !self.applier.is_busy() {
                self.settings.liveness.set_pending(false);
            }
        }
        info!("router stopped cleanly");
        Ok(())
    }

    /// The offset and position the sink stored for a partition, retrying while the sink is
    /// unreachable (consumption paused meanwhile, as in [`Router::flush`]).
    async fn stored_progress(
        &mut self,
        consumer: &impl Feed,
        topic: &str,
        partition: i32,
        shutdown: &CancellationToken,
    ) -> Result<Option<sluice_sinks::StoredProgress>, RouterError> {
        let mut outage = Outage::of("sink");
        loop {
            match self.applier.sink().progress(topic, partition).await {
                Ok(p) => {
                    outage.over(&self.settings, consumer, &self.paused_on_purpose())?;
                    return Ok(p);
                }
                Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                    outage
                        .wait(
                            &self.settings,
                            consumer,
                            &e,
                            "reading the offsets stored in the sink",
                            shutdown,
                        )
                        .await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Handles a message of a partition nothing is held for: into the batch (or, for a
    /// blocked table's partition, into what that table holds), or, when its scheme does not
    /// fit it, held with its partition paused. Returns whether the batch was left untouched.
    #[allow(clippy::too_many_arguments)]
    async fn handle_in_order(
        &mut self,
        consumer: &impl Feed,
        msg: &impl Message,
        key: (Arc<str>, i32),
        pending: &mut Pending,
        schemas: &mut SchemaStore,
        dlq: &DeadLetters,
        shutdown: &CancellationToken,
    ) -> Result<bool, RouterError> {
        let topic = key.0.clone();
        let (handled, untouched) = match self.holds.blocked_table_of(&key) {
            // A message of a blocked table's partition fetched before the pause: it joins
            // what is held, in order.
            Some(table) => match self.holds.take_blocked(&table) {
                Some(mut held) => {
                    let result = self
                        .handle(
                            consumer,
                            msg,
                            topic,
                            &mut held.pending,
                            schemas,
                            dlq,
                            shutdown,
                        )
                        .await;
                    self.holds.put_blocked(table, held);
                    (result?, true)
                }
                None => (Handled::Taken, true),
            },
            None => (
                self.handle(consumer, msg, topic, pending, schemas, dlq, shutdown)
                    .await?,
                false,
            ),
        };
        if let Handled::Mismatch { table, detail } = handled {
            self.hold_for_scheme(consumer, key, table, detail, owned(msg))?;
            return Ok(true);
        }
        Ok(untouched)
    }

    /// Pauses a partition whose message a mapping scheme does not fit, and holds the message.
    fn hold_for_scheme(
        &mut self,
        consumer: &impl Feed,
        key: (Arc<str>, i32),
        table: TableId,
        detail: String,
        msg: OwnedMessage,
    ) -> Result<(), RouterError> {
        error!(%table, topic = %key.0, partition = key.1, offset = msg.offset(), detail = %detail, "a mapping scheme does not fit this change of its table; the partition waits until the scheme is fixed, the other tables go on");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&key.0, key.1);
        consumer.pause(&tpl)?;
        self.holds.hold_for_scheme(key, table, detail, msg);
        Ok(())
    }

    /// After a scheme reload: maps the held messages of each partition again, in order; a
    /// partition whose messages all fit now is resumed.
    async fn retry_scheme_held(
        &mut self,
        consumer: &impl Feed,
        pending: &mut Pending,
        schemas: &mut SchemaStore,
        dlq: &DeadLetters,
        shutdown: &CancellationToken,
    ) -> Result<(), RouterError> {
        for key in self.holds.scheme_held_partitions() {
            let Some(mut held) = self.holds.take_scheme_held(&key) else {
                continue;
            };
            while let Some(msg) = held.messages.pop_front() {
                let handled = match self.holds.blocked_table_of(&key) {
                    Some(table) => match self.holds.take_blocked(&table) {
                        Some(mut blocked) => {
                            let result = self
                                .handle(
                                    consumer,
                                    &msg,
                                    key.0.clone(),
                                    &mut blocked.pending,
                                    schemas,
                                    dlq,
                                    shutdown,
                                )
                                .await;
                            self.holds.put_blocked(table, blocked);
                            result?
                        }
                        None => Handled::Taken,
                    },
                    None => {
                        self.handle(
                            consumer,
                            &msg,
                            key.0.clone(),
                            pending,
                            schemas,
                            dlq,
                            shutdown,
                        )
                        .await?
                    }
                };
                if let Handled::Mismatch { detail, .. } = handled {
                    held.detail = detail;
                    held.messages.push_front(msg);
                    break;
                }
            }
            if !held.messages.is_empty() {
                self.holds.put_scheme_held(key, held);
                continue;
            }
            info!(table = %held.table, topic = %key.0, partition = key.1, waited = ?held.since.elapsed(), "the mapping scheme fits again; the held changes are applied and the partition resumed");
            if self.holds.release_scheme(&key, &held.table) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&key.0, key.1);
                consumer.resume(&tpl)?;
            }
        }
        Ok(())
    }

    /// Partitions paused on purpose (a blocked table's, or held for a scheme), which an end
    /// of a sink outage must not resume.
    fn paused_on_purpose(&self) -> HashSet<(Arc<str>, i32)> {
        self.holds.paused_on_purpose()
    }

    /// Decodes one message into the batch, or dead-letters it; a message whose scheme does
    /// not fit is left out of the batch (its offset not consumed) and reported.
    #[allow(clippy::too_many_arguments)]
    async fn handle(
        &mut self,
        consumer: &impl Feed,
        msg: &impl Message,
        topic: Arc<str>,
        pending: &mut Pending,
        schemas: &mut SchemaStore,
        dlq: &DeadLetters,
        shutdown: &CancellationToken,
    ) -> Result<Handled, RouterError> {
        let partition = msg.partition();
        let offset = msg.offset();
        let consume = |pending: &mut Pending| {
            let entry = pending
                .consumed
                .entry((topic.clone(), partition))
                .or_insert(offset);
            *entry = (*entry).max(offset);
        };
        let Some(payload) = msg.payload() else {
            consume(pending);
            return Ok(Handled::Taken); // tombstone: nothing to apply
        };
        let position = sluice_connect::headers::position(msg);
        // A truncate published to every partition of its topic: how many (see the sink).
        let barrier = sluice_connect::headers::barrier_width(msg);
        // Failing to reach the schema topic or the registry is transient: wait and retry,
        // holding the message (and so the partition), consumption paused and the consumer
        // polled meanwhile (so the group keeps the router). Only a schema the transport does
        // not have makes the message undecodable.
        let mut outage = Outage::of("registry");
        let found = loop {
            match schemas.resolve(payload).await {
                Ok(found) => {
                    // (Only after an outage: the set of partitions paused on purpose is
                    // not worth building for every message.)
                    if outage.paused {
                        outage.over(&self.settings, consumer, &self.paused_on_purpose())?;
                    }
                    break found;
                }
                Err(e) if e.is_transient() => {
                    outage
                        .wait(
                            &self.settings,
                            consumer,
                            &e,
                            "reading a writer schema",
                            shutdown,
                        )
                        .await?;
                }
                Err(e) => return Err(e),
            }
        };
        let decoded = async {
            let position = position.ok_or_else(|| {
                (
                    "no_position",
                    format!("missing or invalid {POSITION_HEADER} header"),
                )
            })?;
            let (decoder, datum) = found.map_err(|u| (u.reason, u.detail))?;
            let event = decoder
                .decode(datum)
                .map_err(|e| ("undecodable", e.to_string()))?;
            Ok::<_, (&str, String)>((decoder.table.clone(), event, position))
        }
        .await;
        match decoded {
            Ok((table, event, position)) => {
                let source_ts_ms = event.source_ts_ms;
                let (routed, rejected) = match self.mapper.map(&table, event) {
                    Ok(mapped) => mapped,
                    Err(mismatch) => {
                        return Ok(Handled::Mismatch {
                            table: table.id.clone(),
                            detail: mismatch.detail,
                        })
                    }
                };
                consume(pending);
                pending.bytes += payload.len();
                pending.last_source_ts_ms = pending.last_source_ts_ms.max(source_ts_ms);
                if !routed.is_empty() {
                    pending.raw.insert(
                        (topic.clone(), partition, offset),
                        Raw::of(msg, topic.clone()),
                    );
                }
                for row in routed {
                    // Only a table-wide change is a barrier.
                    let barrier = barrier.filter(|_| row.op == sluice_schemas::Op::Truncate);
                    pending.batch.changes.push(SinkChange {
                        row,
                        position: position.clone(),
                        origin: Origin {
                            topic: topic.clone(),
                            partition,
                            offset,
                        },
                        barrier,
                    });
                }
                if let Some(r) = rejected {
                    dlq.send(&Raw::of(msg, topic), r.reason, &r.detail).await?;
                }
                Ok(Handled::Taken)
            }
            Err((reason, detail)) => {
                consume(pending);
                dlq.send(&Raw::of(msg, topic), reason, &detail).await?;
                Ok(Handled::Taken)
            }
        }
    }

    /// Everything consumed so far is in the sink (the apply in flight settled, the batch
    /// collected applied), so a transaction in progress may write after it.
    async fn flush_all(
        &mut self,
        consumer: &impl Feed,
        dlq: &DeadLetters,
        pending: &mut Pending,
        shutdown: &CancellationToken,
    ) -> Result<(), RouterError> {
        self.settle_inflight(consumer, dlq, pending, shutdown)
            .await?;
        if !pending.is_empty() {
            let batch = std::mem::replace(pending, Pending::new());
            self.flush(consumer, dlq, batch, None, shutdown).await?;
        }
        Ok(())
    }

    /// A message of a transaction still in progress at the source: a change, written into
    /// the sink transaction held open for it (opened at its first), or the rollback of it or
    /// of a subtransaction. A sink that cannot hold one ignores them: the transaction's
    /// commit marker is then refused and capture publishes it after its commit.
    #[allow(clippy::too_many_arguments)]
    async fn in_progress_message(
        &mut self,
        consumer: &impl Feed,
        dlq: &DeadLetters,
        pending: &mut Pending,
        schemas: &mut SchemaStore,
        shutdown: &CancellationToken,
        msg: &impl Message,
        topic: Arc<str>,
        note: sluice_connect::headers::InProgress,
    ) -> Result<(), RouterError> {
        let sink = self.settings.sink_name.clone();
        let Some(state) = self.in_progress.as_mut() else {
            return Ok(());
        };
        let stale = state.session(&note.source, note.session);
        if stale > 0 {
            info!(source = %note.source, transactions = stale, "capture restarted: the transactions it had in progress are rolled back here and read again");
        }
        let key: TxKey = (note.source.clone(), note.xid);
        if note.abort {
            if note.subxid == note.xid {
                if state.open.remove(&key).is_some() {
                    metrics::counter!(m::PROVISIONAL_TRANSACTIONS_TOTAL, "sink" => sink, "outcome" => "aborted").increment(1);
                }
                return Ok(());
            }
            let rolls_back = state.open.get_mut(&key).is_some_and(|open| {
                open.failed.is_none()
                    && open.aborted.insert(note.subxid)
                    && open.savepoints.contains(&note.subxid)
            });
            if rolls_back {
                // What was collected goes in first: the rollback takes it too when it is the
                // subtransaction's (or one inside it).
                self.send_in_progress(consumer, dlq, pending, shutdown, &key)
                    .await?;
                self.step(
                    &key,
                    sluice_sinks::provisional::Step::RollBackTo(note.subxid),
                )
                .await;
            }
            return Ok(());
        }
        if !state.open.contains_key(&key) {
            let opened = state
                .opener
                .open()
                .await
                .map_err(|e| format!("cannot open a transaction at the sink for it: {e}"));
            debug!(source = %note.source, xid = note.xid, "a transaction in progress at the source is applied as it comes");
            state.open.insert(key.clone(), Open::new(note.xid, opened));
        }
        if self.holds.holds_back(&(topic.clone(), msg.partition())) {
            self.give_up(&key, format!("its table's topic {topic} is held"));
            return Ok(());
        }
        if self.open(&key).is_none_or(|o| o.failure().is_some()) {
            return Ok(());
        }
        let Some(payload) = msg.payload() else {
            return Ok(());
        };
        let position = sluice_connect::headers::position(msg);
        let mapped = match (schemas.resolve(payload).await, position) {
            (Ok(Ok((decoder, datum))), Some(position)) => match decoder.decode(datum) {
                Ok(event) => {
                    let table = decoder.table.clone();
                    if self.mapper.reads_commit_time(&table.id) {
                        Err(format!("a mapping scheme of {} reads source.ts_ms, which is known only at the commit", table.id))
                    } else {
                        match self.mapper.map(&table, event) {
                            Ok((rows, None)) => Ok((rows, position)),
                            Ok((_, Some(r))) => {
                                Err(format!("a scheme refused a change: {}", r.detail))
                            }
                            Err(m) => Err(format!("a scheme does not fit: {}", m.detail)),
                        }
                    }
                }
                Err(e) => Err(format!("undecodable: {e}")),
            },
            (Ok(Err(u)), _) => Err(format!("undecodable: {}", u.detail)),
            (Err(e), _) => Err(format!("its writer schema could not be read: {e}")),
            (_, None) => Err("a change without a position".to_string()),
        };
        let (rows, position) = match mapped {
            Ok(m) => m,
            Err(why) => {
                // Its change after the commit takes the usual path (dead letter and all).
                self.give_up(&key, why);
                return Ok(());
            }
        };
        let subxid = note.subxid;
        let cut = self
            .open(&key)
            .is_some_and(|o| o.pending_subxid != subxid && !o.pending.is_empty());
        if cut {
            self.send_in_progress(consumer, dlq, pending, shutdown, &key)
                .await?;
        }
        let needs_savepoint = self.open(&key).is_some_and(|o| {
            o.failed.is_none()
                && o.pending_subxid != subxid
                && subxid != note.xid
                && o.savepoints.insert(subxid)
        });
        if needs_savepoint {
            self.step(&key, sluice_sinks::provisional::Step::Savepoint(subxid))
                .await;
        }
        let max_rows = self.settings.batch.max_rows;
        let full = {
            let Some(open) = self.open(&key).filter(|o| o.failed.is_none()) else {
                return Ok(());
            };
            open.pending_subxid = subxid;
            open.topics.insert(topic.clone());
            let offset = open.next_offset;
            open.next_offset += 1;
            for row in rows {
                open.pending.push(SinkChange {
                    row,
                    position: position.clone(),
                    origin: Origin {
                        topic: topic.clone(),
                        partition: msg.partition(),
                        offset,
                    },
                    barrier: None,
                });
            }
            open.pending.len() >= max_rows
        };
        if full {
            self.send_in_progress(consumer, dlq, pending, shutdown, &key)
                .await?;
        }
        Ok(())
    }

    fn open(&mut self, key: &TxKey) -> Option<&mut Open> {
        self.in_progress.as_mut()?.open.get_mut(key)
    }

    fn give_up(&mut self, key: &TxKey, why: String) {
        if let Some(open) = self.open(key) {
            if open.failed.is_none() {
                info!(source = %key.0, xid = key.1, reason = %why, "a transaction in progress is no longer applied as it comes; it is applied after its commit");
            }
            open.fail(why);
        }
    }

    /// Hands an open transaction's worker a step; a worker that stopped gives it up.
    async fn step(&mut self, key: &TxKey, step: sluice_sinks::provisional::Step) {
        let Some(open) = self.open(key) else { return };
        let sent = match &open.handle {
            Some(h) => h.send(step).await,
            None => return,
        };
        if !sent {
            let why = open
                .failure()
                .unwrap_or_else(|| "its sink transaction ended".to_string());
            open.fail(why);
        }
    }

    /// Sends what was collected for an open transaction to its worker, once everything
    /// consumed before it is in the sink: a change of a transaction committed earlier at the
    /// source comes before it in the stream, and must be applied first (the row locks of the
    /// open transaction would otherwise put it after).
    async fn send_in_progress(
        &mut self,
        consumer: &impl Feed,
        dlq: &DeadLetters,
        pending: &mut Pending,
        shutdown: &CancellationToken,
        key: &TxKey,
    ) -> Result<(), RouterError> {
        let Some(open) = self.open(key) else {
            return Ok(());
        };
        if open.failure().is_some() || open.pending.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut open.pending);
        self.flush_all(consumer, dlq, pending, shutdown).await?;
        // Applying them may have blocked a table of it: its held changes would then come
        // after.
        let held = self.holds.paused_on_purpose();
        let Some(open) = self.open(key) else {
            return Ok(());
        };
        if let Some(t) = open
            .topics
            .iter()
            .find(|t| held.contains(&((*t).clone(), sluice_connect::local::PARTITION)))
        {
            let why = format!("its table's topic {t} is held");
            self.give_up(key, why);
            return Ok(());
        }
        self.step(key, sluice_sinks::provisional::Step::Apply(changes))
            .await;
        Ok(())
    }

    /// Transactions whose commit markers were coming in when another message came between
    /// them (a marker's topic was paused): given up, their markers refused and consumed.
    fn markers_interrupted(
        &mut self,
        consumer: &impl Feed,
        current: Option<&sluice_connect::headers::CommitMarker>,
        pending: &mut Pending,
    ) {
        let Some(state) = self.in_progress.as_mut() else {
            return;
        };
        let current = current.map(|m| (m.source.clone(), m.xid));
        let broken: Vec<TxKey> = state
            .open
            .iter()
            .filter(|(k, o)| !o.markers.is_empty() && Some(*k) != current.as_ref())
            .map(|(k, _)| k.clone())
            .collect();
        for key in broken {
            if let Some(open) = state.open.remove(&key) {
                Self::abandon_markers(
                    &self.settings.sink_name,
                    consumer,
                    &open.markers,
                    "its commit markers were interrupted",
                    pending,
                );
            }
        }
    }

    /// Tells capture the transaction's markers are not held here (it publishes the
    /// transaction after its commit), and consumes them in order.
    fn abandon_markers(
        sink: &str,
        consumer: &impl Feed,
        markers: &[Origin],
        why: &str,
        pending: &mut Pending,
    ) {
        for m in markers {
            consumer.refuse(&m.topic, m.offset, why);
            let entry = pending
                .consumed
                .entry((m.topic.clone(), m.partition))
                .or_insert(m.offset);
            *entry = (*entry).max(m.offset);
        }
        metrics::counter!(m::PROVISIONAL_TRANSACTIONS_TOTAL, "sink" => sink.to_string(), "outcome" => "abandoned").increment(1);
    }

    /// A transaction's commit marker (local mode): once this router has all of them (one per
    /// topic of the transaction it reads), and everything before them is in the sink, the
    /// open transaction commits with their offsets and the commit's position, and the markers
    /// are delivered — which tells capture the sink has the transaction. Returns `false` when
    /// the transaction is not held here: the marker is then refused (capture publishes the
    /// transaction after it) and consumed like any message.
    #[allow(clippy::too_many_arguments)]
    async fn in_progress_commit(
        &mut self,
        consumer: &impl Feed,
        dlq: &DeadLetters,
        pending: &mut Pending,
        shutdown: &CancellationToken,
        msg: &impl Message,
        topic: &Arc<str>,
        marker: sluice_connect::headers::CommitMarker,
    ) -> Result<bool, RouterError> {
        let key: TxKey = (marker.source.clone(), marker.xid);
        let here = Origin {
            topic: topic.clone(),
            partition: msg.partition(),
            offset: msg.offset(),
        };
        let sink = self.settings.sink_name.clone();
        let current = self
            .in_progress
            .as_ref()
            .and_then(|s| s.sessions.get(&marker.source))
            .is_some_and(|s| *s == marker.session);
        let failure = match self.open(&key) {
            None => Some("the sink holds no transaction in progress for it".to_string()),
            Some(_) if !current => {
                Some("it was streamed by an earlier capture session".to_string())
            }
            Some(open) => open.failure(),
        };
        if let Some(why) = failure {
            let mut markers = self
                .in_progress
                .as_mut()
                .and_then(|s| s.open.remove(&key))
                .map(|o| o.markers)
                .unwrap_or_default();
            markers.push(here);
            Self::abandon_markers(&sink, consumer, &markers, &why, pending);
            return Ok(true);
        }
        if self.open(&key).is_some_and(|o| o.markers.is_empty()) {
            // The first: everything before it goes into the sink first.
            self.flush_all(consumer, dlq, pending, shutdown).await?;
            let held = self.holds.paused_on_purpose();
            let blocked = marker.topics.iter().find(|t| {
                self.settings.topics.contains(t)
                    && held.contains(&(Arc::from(t.as_str()), msg.partition()))
            });
            if let Some(t) = blocked {
                let why = format!("its table's topic {t} is held");
                self.give_up(&key, why);
                return Box::pin(
                    self.in_progress_commit(consumer, dlq, pending, shutdown, msg, topic, marker),
                )
                .await;
            }
            self.send_in_progress(consumer, dlq, pending, shutdown, &key)
                .await?;
        }
        let expected = marker
            .topics
            .iter()
            .filter(|t| self.settings.topics.contains(t))
            .count();
        let Some(open) = self.open(&key) else {
            return Ok(true);
        };
        open.markers.push(here);
        if open.markers.len() < expected {
            return Ok(true);
        }
        let Some(position) = sluice_connect::headers::position(msg) else {
            self.give_up(&key, "a commit marker without a position".into());
            return Box::pin(
                self.in_progress_commit(consumer, dlq, pending, shutdown, msg, topic, marker),
            )
            .await;
        };
        let (reply_tx, reply) = tokio::sync::oneshot::channel();
        let ends = open.markers.clone();
        self.step(
            &key,
            sluice_sinks::provisional::Step::Commit {
                ends,
                position,
                reply: reply_tx,
            },
        )
        .await;
        let ended = reply
            .await
            .unwrap_or_else(|_| Err("its sink transaction ended".to_string()));
        let Some(open) = self.in_progress.as_mut().and_then(|s| s.open.remove(&key)) else {
            return Ok(true);
        };
        match ended {
            Ok(sluice_sinks::provisional::Ended::Committed { rows }) => {
                let mut tpl = TopicPartitionList::new();
                for m in &open.markers {
                    tpl.add_partition_offset(&m.topic, m.partition, Offset::Offset(m.offset + 1))?;
                }
                consumer.commit(&tpl)?;
                self.settings.liveness.progressed();
                metrics::counter!(m::PROVISIONAL_TRANSACTIONS_TOTAL, "sink" => sink, "outcome" => "committed").increment(1);
                info!(source = %key.0, xid = key.1, rows, held_for = ?open.since.elapsed(), "a transaction applied while in progress committed at the sink with its source commit");
            }
            Ok(sluice_sinks::provisional::Ended::Replay) => {
                // The sink has it: its markers are consumed, and delivered with that.
                for m in &open.markers {
                    let entry = pending
                        .consumed
                        .entry((m.topic.clone(), m.partition))
                        .or_insert(m.offset);
                    *entry = (*entry).max(m.offset);
                }
                metrics::counter!(m::PROVISIONAL_TRANSACTIONS_TOTAL, "sink" => sink, "outcome" => "replayed").increment(1);
            }
            Err(why) => {
                info!(source = %key.0, xid = key.1, reason = %why, "a transaction applied while in progress could not commit; it is applied after its commit");
                Self::abandon_markers(&sink, consumer, &open.markers, &why, pending);
            }
        }
        Ok(true)
    }

    /// Waits for the apply in flight, if any, and settles it.
    async fn settle_inflight(
        &mut self,
        consumer: &impl Feed,
        dlq: &DeadLetters,
        next: &mut Pending,
        shutdown: &CancellationToken,
    ) -> Result<(), RouterError> {
        if self.applier.is_busy() {
            let done = self.applier.finished().await?;
            self.settle(done, consumer, dlq, next, shutdown).await?;
        }
        Ok(())
    }

    /// Takes the outcome of a finished apply: on success the offsets are committed to Kafka;
    /// a failure goes down the same paths as a batch applied in place (retried through an
    /// outage, a refused change dead-lettered, a table blocked). The changes of a table
    /// blocked now that `next` already collected join what that table holds, after the
    /// batch's own, so they stay in order.
    async fn settle(
        &mut self,
        (pending, result): (Pending, Result<sluice_sinks::ApplyOutcome, SinkError>),
        consumer: &impl Feed,
        dlq: &DeadLetters,
        next: &mut Pending,
        shutdown: &CancellationToken,
    ) -> Result<(), RouterError> {
        self.flush(consumer, dlq, pending, Some(result), shutdown)
            .await?;
        self.holds.divert_blocked(next);
        // What the next batch collected of a partition now waiting at a barrier joins its
        // wait, behind what it holds.
        self.holds.divert_to_barriers(next);
        if next.is_empty() {
            // Nothing else in flight or collected: an idle router is never stalled.
            self.settings.liveness.set_pending(false);
        }
        Ok(())
    }

    /// Partitions the sink held at a barrier: their changes from the first one it did not
    /// record are taken out of `applied` (the batch just committed) into the partition's
    /// wait, ahead of any it holds already, and the partition is paused. Nothing is sought:
    /// what was fetched is kept in order, and resuming goes on after it.
    fn hold_at_barriers(
        &mut self,
        consumer: &impl Feed,
        applied: &mut Pending,
        held: &[Origin],
    ) -> Result<(), RouterError> {
        for c in held {
            let key = (c.topic.clone(), c.partition);
            let mut older = Pending::new();
            let (kept, moved): (Vec<SinkChange>, Vec<SinkChange>) =
                std::mem::take(&mut applied.batch.changes)
                    .into_iter()
                    .partition(|ch| {
                        !(ch.origin.partition == c.partition
                            && *ch.origin.topic == *c.topic
                            && ch.origin.offset >= c.offset)
                    });
            applied.batch.changes = kept;
            older.batch.changes = moved;
            if let Some(offset) = applied.consumed.get(&key).copied() {
                if offset >= c.offset {
                    older.consumed.insert(key.clone(), offset);
                }
            }
            let raws: Vec<_> = applied
                .raw
                .keys()
                .filter(|(t, p, o)| *p == c.partition && **t == *c.topic && *o >= c.offset)
                .cloned()
                .collect();
            for k in raws {
                if let Some(r) = applied.raw.remove(&k) {
                    older.raw.insert(k, r);
                }
            }
            let retry_at = std::time::Instant::now() + BARRIER_RETRY;
            // Held again on a retry, its changes stay first.
            if self.holds.hold_at_barrier(key, older, retry_at) {
                info!(topic = %c.topic, partition = c.partition, from = c.offset, "waiting at a truncate until every partition of the topic reaches it");
                metrics::counter!(m::BARRIER_WAITS_TOTAL, "topic" => c.topic.to_string())
                    .increment(1);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&c.topic, c.partition);
                consumer.pause(&tpl)?;
            }
        }
        Ok(())
    }

    /// Tries the held changes of each partition whose wait at a barrier is due; one the sink
    /// no longer holds is resumed.
    async fn retry_barrier_held(
        &mut self,
        consumer: &impl Feed,
        dlq: &DeadLetters,
        shutdown: &CancellationToken,
    ) -> Result<(), RouterError> {
        for key in self.holds.barrier_due_partitions(std::time::Instant::now()) {
            // The wait stays (empty) while its changes are tried: held again, they go back in.
            let Some(pending) = self
                .holds
                .barrier_wait(&key)
                .map(|w| std::mem::replace(&mut w.pending, Pending::new()))
            else {
                continue;
            };
            self.flush(consumer, dlq, pending, None, shutdown).await?;
            if let Some(may_resume) = self.holds.release_barrier_if_empty(&key) {
                if may_resume {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&key.0, key.1);
                    consumer.resume(&tpl)?;
                }
                info!(topic = %key.0, partition = key.1, "the truncate is applied; the partition goes on");
            }
        }
        Ok(())
    }

    /// Applies a batch, holding back the changes of a table the sink cannot take now, then
    /// commits the offsets to Kafka as a resume hint. `first` is the outcome of an apply of
    /// this batch that already ran (pipelined), taken instead of applying it again.
    async fn flush(
        &mut self,
        consumer: &impl Feed,
        dlq: &DeadLetters,
        mut pending: Pending,
        mut first: Option<Result<sluice_sinks::ApplyOutcome, SinkError>>,
        shutdown: &CancellationToken,
    ) -> Result<(), RouterError> {
        pending.batch.consumed = consumed_list(&pending.consumed);
        loop {
            let applied = self
                .apply_batch(
                    consumer,
                    dlq,
                    &mut pending.batch,
                    &pending.raw,
                    first.take(),
                    shutdown,
                )
                .await?;
            match applied {
                Applied::Done(outcome) => {
                    self.settings.liveness.progressed();
                    metrics::counter!(m::BATCHES_TOTAL, "sink" => self.settings.sink_name.clone())
                        .increment(1);
                    if pending.last_source_ts_ms > 0 {
                        metrics::gauge!(m::LAST_SOURCE_TS_SECONDS, "sink" => self.settings.sink_name.clone())
                            .set(pending.last_source_ts_ms as f64 / 1000.0);
                    }
                    tracing::debug!(
                        applied = outcome.applied,
                        skipped = outcome.skipped,
                        "batch committed"
                    );
                    self.hold_at_barriers(consumer, &mut pending, &outcome.held)?;
                    break;
                }
                Applied::Blocked {
                    table,
                    reason,
                    only,
                } => {
                    self.block(consumer, &mut pending, table, reason, only)?;
                    if pending.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
        commit_hint(consumer, &pending.batch.consumed);
        Ok(())
    }

    /// Applies `batch`: transient sink errors are retried with backoff (consumption paused
    /// meanwhile); a change whose data the sink refuses is dead-lettered and the rest applied;
    /// a problem of one table is returned, with nothing applied.
    async fn apply_batch(
        &mut self,
        consumer: &impl Feed,
        dlq: &DeadLetters,
        batch: &mut Batch,
        raw: &HashMap<(Arc<str>, i32, i64), Raw>,
        mut first: Option<Result<sluice_sinks::ApplyOutcome, SinkError>>,
        shutdown: &CancellationToken,
    ) -> Result<Applied, RouterError> {
        let mut outage = Outage::of("sink");
        loop {
            let error = match self.applier.attempt(batch, first.take()).await {
                Attempt::Done(outcome) => {
                    outage.over(&self.settings, consumer, &self.paused_on_purpose())?;
                    return Ok(Applied::Done(outcome));
                }
                Attempt::Blocked { table, reason } => {
                    outage.over(&self.settings, consumer, &self.paused_on_purpose())?;
                    return Ok(Applied::Blocked {
                        table,
                        reason,
                        only: None,
                    });
                }
                // A change refused for a row it refers to: that row may still come with
                // another table's changes, so its partition waits (for a while) instead.
                Attempt::Rejected {
                    index,
                    reason,
                    missing_row: true,
                } if self.waits_for_row(&batch.changes[index]) => {
                    outage.over(&self.settings, consumer, &self.paused_on_purpose())?;
                    let change = &batch.changes[index];
                    let origin = &change.origin;
                    metrics::counter!(m::MISSING_ROW_WAITS_TOTAL, "table" => change.table.id.to_string())
                        .increment(1);
                    return Ok(Applied::Blocked {
                        table: change.table.id.clone(),
                        reason: format!(
                            "{} refused the {} of a row of {} (offset {} of {}/{}) for a row it \
                             refers to: {reason}; its partition waits for the changes of the \
                             other tables (router.foreign_key_wait_ms)",
                            self.settings.sink_name,
                            op_name(change.op),
                            change.table.id,
                            origin.offset,
                            origin.topic,
                            origin.partition
                        ),
                        only: Some((origin.topic.clone(), origin.partition)),
                    });
                }
                // A change whose data the sink refuses is poison: dead-letter its message
                // (acknowledged before the rest commits, so it is never lost), and apply the
                // others.
                Attempt::Rejected {
                    index,
                    reason,
                    missing_row,
                } => {
                    let change = batch.changes.remove(index);
                    let origin = &change.origin;
                    let waited = if missing_row {
                        self.waiting_rows
                            .remove(&(origin.topic.clone(), origin.partition))
                            .map(|(_, since)| since.elapsed())
                            .unwrap_or_default()
                    } else {
                        Duration::ZERO
                    };
                    if let Some(raw) =
                        raw.get(&(origin.topic.clone(), origin.partition, origin.offset))
                    {
                        let mut detail = format!(
                            "{} refused the {} of a row of {}: {reason}",
                            self.settings.sink_name,
                            op_name(change.op),
                            change.table.id
                        );
                        if missing_row {
                            detail.push_str(&format!(
                                " (the row it refers to did not come within {waited:.1?}, \
                                 router.foreign_key_wait_ms)"
                            ));
                        }
                        dlq.send(raw, "rejected_by_sink", &detail).await?;
                    }
                    continue;
                }
                Attempt::Failed(error) => error,
            };
            if error.is_transient() && !shutdown.is_cancelled() {
                outage
                    .wait(
                        &self.settings,
                        consumer,
                        &error,
                        "writing the batch",
                        shutdown,
                    )
                    .await?;
                continue;
            }
            return Err(error.into());
        }
    }

    /// Whether `change`, refused for a row it refers to, may wait for it: not past
    /// `foreign_key_wait` since it was first refused. Notes when it was.
    fn waits_for_row(&mut self, change: &SinkChange) -> bool {
        let part = (change.origin.topic.clone(), change.origin.partition);
        let now = std::time::Instant::now();
        let since = match self.waiting_rows.get(&part) {
            Some((offset, since)) if *offset == change.origin.offset => *since,
            _ => {
                self.waiting_rows.insert(part, (change.origin.offset, now));
                now
            }
        };
        now.duration_since(since) < self.settings.foreign_key_wait
    }

    /// The blocked tables whose partitions wait for a row a change refers to.
    fn waiting_tables(&self) -> Vec<TableId> {
        let tables: HashSet<TableId> = self
            .waiting_rows
            .keys()
            .filter_map(|part| self.holds.blocked_table_of(part))
            .collect();
        tables.into_iter().collect()
    }

    /// Holds back the changes of `table`'s partitions (every change of those partitions, so
    /// offsets stay in order) and pauses them; the rest of `pending` goes on.
    fn block(
        &mut self,
        consumer: &impl Feed,
        pending: &mut Pending,
        table: TableId,
        reason: String,
        only: Option<Part>,
    ) -> Result<(), RouterError> {
        let partitions: HashSet<(Arc<str>, i32)> = pending
            .batch
            .changes
            .iter()
            .filter(|c| c.table.id == table)
            .map(|c| (c.origin.topic.clone(), c.origin.partition))
            .filter(|p| only.as_ref().is_none_or(|only| only == p))
            .collect();
        if partitions.is_empty() {
            // Nothing in the batch is that table's: the problem cannot be set aside.
            return Err(RouterError::Definite(reason));
        }
        if only.is_some() {
            // Routine while tables bound by a foreign key arrive apart (a snapshot).
            warn!(%table, reason = %reason, "a change waits for a row it refers to; its partition waits and the rest goes on");
        } else {
            error!(%table, reason = %reason, "the sink cannot take this table now; its changes wait and the other tables go on");
        }
        self.holds.block(&table, reason, &partitions, pending);
        pending.batch.consumed = consumed_list(&pending.consumed);
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &partitions {
            tpl.add_partition(topic, *partition);
        }
        consumer.pause(&tpl)?;
        Ok(())
    }

    /// With `fetch_stall_recovery`, reads again from a little before each partition whose
    /// fetching stalled inside a record batch (see `LagContext::take_stalled`): what was read
    /// already is skipped as it comes. The step grows eightfold while stalls recur (see [`StallSteps`]), until it
    /// reaches the batch's start.
    fn unstall(&mut self, consumer: &impl Feed, steps: &mut StallSteps) -> Result<(), RouterError> {
        let stalled = consumer.take_stalled();
        if !self.settings.fetch_stall_recovery {
            return Ok(());
        }
        for (topic, partition, position, low) in stalled {
            let key = (Arc::from(topic.as_str()), partition);
            if self.holds.is_paused_on_purpose(&key) {
                continue; // paused on purpose
            }
            let step = steps.next((topic.clone(), partition), std::time::Instant::now());
            let from = (position - step).max(low.max(0));
            if from >= position {
                continue;
            }
            warn!(%topic, partition, position, from, "fetching stopped with messages after it (a fetch inside a record batch that the broker answers with nothing, as Tansu 0.6 does); reading again from earlier");
            metrics::counter!(m::FETCH_STALLS_TOTAL, "topic" => topic.clone()).increment(1);
            consumer.seek(
                &topic,
                partition,
                Offset::Offset(from),
                Duration::from_secs(10),
            )?;
        }
        Ok(())
    }

    /// A partition this router no longer owns: what it knew of it goes (its next owner reads
    /// the offset the sink stored), and changes held for it are dropped — the sink never
    /// recorded them, so they are read again by whoever owns the partition.
    fn forget_partition(&mut self, topic: &str, partition: i32) {
        let key: (Arc<str>, i32) = (Arc::from(topic), partition);
        self.reading.forget(&key);
        self.waiting_rows.remove(&key);
        if let Some(table) = self.holds.forget(&key) {
            info!(%table, "the partitions of a blocked table were revoked; its next owner takes it over");
        }
    }

    /// Tries the held changes of each blocked table again; a table the sink takes now is
    /// unblocked and its partitions resumed.
    async fn retry_blocked(
        &mut self,
        consumer: &impl Feed,
        dlq: &DeadLetters,
        shutdown: &CancellationToken,
        tables: Vec<TableId>,
    ) -> Result<(), RouterError> {
        for table in tables {
            let Some(mut held) = self.holds.take_blocked(&table) else {
                continue;
            };
            held.pending.batch.consumed = consumed_list(&held.pending.consumed);
            match self
                .apply_batch(
                    consumer,
                    dlq,
                    &mut held.pending.batch,
                    &held.pending.raw,
                    None,
                    shutdown,
                )
                .await?
            {
                Applied::Done(_) => {
                    let mut tpl = TopicPartitionList::new();
                    for (topic, partition) in self.holds.unblock(&table) {
                        self.waiting_rows.remove(&(topic.clone(), partition));
                        tpl.add_partition(&topic, partition);
                    }
                    consumer.resume(&tpl)?;
                    commit_hint(consumer, &held.pending.batch.consumed);
                    info!(%table, waited = ?held.since.elapsed(), "the sink takes the table again; its held changes are applied and its partitions resumed");
                }
                Applied::Blocked { reason, .. } => {
                    tracing::debug!(%table, %reason, "still blocked");
                    held.reason = reason;
                    self.holds.put_blocked(table, held);
                }
            }
        }
        Ok(())
    }
}

/// Commits consumed offsets, after the sink committed them: on Kafka only a hint (the sink
/// holds the authoritative ones); in local mode what acknowledges the messages to capture.
fn commit_hint(consumer: &impl Feed, consumed: &[Origin]) {
    let mut tpl = TopicPartitionList::new();
    for c in consumed {
        if tpl
            .add_partition_offset(&c.topic, c.partition, Offset::Offset(c.offset + 1))
            .is_err()
        {
            return;
        }
    }
    if let Err(e) = consumer.commit(&tpl) {
        warn!(error = %e, "could not commit offsets to Kafka");
    }
}

/// What to do about a consumer error no retry fixes; `None` for one librdkafka recovers from
/// by itself (a broker down, a rebalance, a timeout: counted and logged, the loop goes on).
/// An unknown topic is not fatal: a broker's metadata can lag a topic just created; if it
/// lasts, the partition's lag and `/readyz` show it.
fn fatal_consumer_error(code: RDKafkaErrorCode) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    Some(match code {
        C::FencedInstanceId => {
            "another router joined the group with the same router.instance_id; give each router \
             its own (the pod name), or leave it unset"
        }
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed => {
            "grant the router's Kafka user READ on the table topics and on router.group_id, and \
             DESCRIBE on the cluster"
        }
        C::SaslAuthenticationFailed | C::Authentication => {
            "check the Kafka credentials in [kafka.properties] (sasl.username, and the password)"
        }
        C::InvalidGroupId | C::InconsistentGroupProtocol => {
            "the group's members disagree on router.assignment_strategy, or router.group_id is \
             invalid; use one strategy for every router of a group"
        }
        _ => return None,
    })
}

fn op_name(op: sluice_schemas::Op) -> &'static str {
    match op {
        sluice_schemas::Op::Create | sluice_schemas::Op::Read => "insert",
        sluice_schemas::Op::Update => "update",
        sluice_schemas::Op::Delete => "delete",
        sluice_schemas::Op::Truncate => "truncate",
    }
}

/// Drops the consumer, which leaves its group: librdkafka's close polls until the group is
/// left, and it has been seen to wait past any drain timeout (a rebalance answered in the
/// middle of the close). It runs on a thread of its own, so that neither this runtime's worker
/// nor the process's exit waits on it for longer than `timeout`; past that the router goes on
/// stopping, and the group hands the partitions over once the member's session ends
/// (`session.timeout.ms`). Nothing is lost either way: the sink holds the offsets.
async fn leave_group(consumer: StreamConsumer<LagContext>, timeout: Duration, sink: &str) {
    let (left, closed) = tokio::sync::oneshot::channel();
    let started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("router-leave-group".into())
        .spawn(move || {
            drop(consumer);
            let _ = left.send(());
        });
    if let Err(e) = spawned {
        // (The closure, and the consumer in it, were dropped by the failed spawn: the group
        // was left here, on this task, unbounded.)
        warn!(error = %e, "no thread for leaving the group: it was left on the router's task");
        return;
    }
    match tokio::time::timeout(timeout, closed).await {
        Ok(_) => debug!(took = ?started.elapsed(), "left the consumer group"),
        Err(_) => {
            metrics::counter!(m::ERRORS_TOTAL, "sink" => sink.to_string(), "kind" => "leave_group")
                .increment(1);
            warn!(
                ?timeout,
                "the consumer did not leave its group in time (shutdown.drain_timeout_ms); \
                 stopping without waiting: its partitions go to the group's other routers once \
                 its session ends (session.timeout.ms), and the sink holds the offsets"
            );
        }
    }
}
