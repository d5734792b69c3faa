//! The PostgreSQL capture loop: relation cache, change events, checkpoints and status updates.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sluice_schemas::avro::Connector;
use sluice_schemas::{
    pgtext, ChangeEvent, Datum, EnvelopeCodec, Op, Position, SourceInfo, TableId, TableSchema,
    TxInfo,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::catalog::{self, Catalog};
use super::decoder::{self, PgOutput, TupleValue};
pub use super::names::Renames;
use super::names::{self, Names};
use super::replication::{
    format_lsn, pg_time_to_unix_us, quote_ident, ConnectParams, ReplicationConnection,
    ReplicationMessage,
};
use super::reread::{self, Rereads, Signal, Watermark, Window};
use super::slot::{self, ExportedSnapshot};
use super::snapshot::{self, SnapshotJob, SnapshotMessage};
use super::state::{CaptureState, TableState};
use crate::epoch::Epoch;
use crate::metrics as m;
use crate::publisher::{AckHandle, Publisher};
use crate::spill::{Budget, Held, RawMessage, SpillConfig};
pub use crate::state::SnapshotMode;
use crate::tls::{PgConnector, TlsConfig};
use crate::CaptureError;

const DEFAULT_STATUS_INTERVAL_MS: u64 = 1_000;
const DEFAULT_SNAPSHOT_PARALLELISM: usize = 2;
const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 10_000;
/// How often the captured tables (their names and partitions) are compared with the catalog.
const CATALOG_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Prefix of the logical messages capture writes as heartbeats.
pub const HEARTBEAT_PREFIX: &str = "sluice.heartbeat";

fn default_status_interval_ms() -> u64 {
    DEFAULT_STATUS_INTERVAL_MS
}

fn default_heartbeat_interval_ms() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_MS
}

fn default_snapshot_parallelism() -> usize {
    DEFAULT_SNAPSHOT_PARALLELISM
}

/// A PostgreSQL source (`[sources.<name>]` with `kind = "postgres"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// Connection string (`postgresql://user:password@host:port/db` or `host=… user=…`). The
    /// user needs the REPLICATION attribute. The password may instead come from the
    /// environment variable `SLUICE_SOURCES_<NAME>_PASSWORD`.
    pub url: String,
    /// Tables to capture, as `schema.table`.
    pub tables: Vec<String>,
    /// Prefix of this source's table topics (Debezium's `topic.prefix`): topics are
    /// `<topic_prefix>.<schema>.<table>` (MySQL: `<topic_prefix>.<database>.<table>`).
    /// Default: `<kafka.topic_prefix>.<source name>`, so two sources never share a topic.
    /// Set it to `kafka.topic_prefix`'s value to keep publishing to the topics of a
    /// deployment made before topic names carried the source (capture refuses to start
    /// without it while such topics exist).
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Replication slot name; created when missing. One capture process per slot.
    pub slot: String,
    /// Publication name; created (or extended with missing tables) at start.
    pub publication: String,
    /// How often to send a standby status update to the server, in milliseconds.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// How often to write a heartbeat (`pg_logical_emit_message`) into the source database, in
    /// milliseconds, so the slot advances even when the captured tables are idle while other
    /// databases on the server write WAL. 0 disables heartbeats.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// `initial` (default) or `never`.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Tables read at the same time during a snapshot (one connection each).
    #[serde(default = "default_snapshot_parallelism")]
    pub snapshot_parallelism: usize,
    /// TLS to the source, for every connection capture makes (`mode`, `ca_file`,
    /// `cert_file`, `key_file`); off by default.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `any` (default): capture every change. `none`: leave out the changes another
    /// replicator applied with a replication origin (pgoutput's `origin` option, PostgreSQL
    /// 16+), so that two databases replicating into each other do not send a change back.
    #[serde(default)]
    pub origin: OriginFilter,
    /// Create the slot with `failover` (PostgreSQL 17+; refused before): a standby with
    /// `sync_replication_slots = on` keeps a copy of it in step, so capture resumes on the
    /// standby once it is promoted. A slot that exists without it is altered to have it.
    #[serde(default)]
    pub failover_slot: bool,
    /// Ask the server to stream a large transaction while it is still in progress (pgoutput
    /// protocol 2, once it passes the server's `logical_decoding_work_mem`) instead of spilling
    /// it to the server's disk and sending it after its commit. Capture holds the streamed
    /// changes ([`Self::spill`]) and publishes them only when the transaction commits, in
    /// commit order; an aborted transaction or subtransaction is dropped. Default `true`.
    #[serde(default = "default_true")]
    pub streaming: bool,
    /// Where the changes of streamed transactions wait for their commit: memory up to
    /// `memory_mb` (32) for all of them together, then a file in `dir`.
    #[serde(default)]
    pub spill: SpillConfig,
    /// What capture does when a captured table is renamed at the source: `follow` (default)
    /// keeps capturing it as the configured table (same topic, schemes and sink table; found
    /// by its OID, across restarts too), `stop` stops the table with the fix.
    #[serde(default)]
    pub renames: Renames,
}

fn default_true() -> bool {
    true
}

/// Which changes capture asks for by their replication origin (`sources.<name>.origin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginFilter {
    #[default]
    Any,
    None,
}

impl OriginFilter {
    fn option(self) -> &'static str {
        match self {
            OriginFilter::Any => "any",
            OriginFilter::None => "none",
        }
    }
}

impl PostgresSourceConfig {
    /// The configured tables, parsed; the error names the bad entry.
    pub fn table_ids(&self) -> Result<Vec<TableId>, String> {
        self.tables
            .iter()
            .map(|t| {
                TableId::parse(t).ok_or_else(|| format!("`{t}` is not of the form schema.table"))
            })
            .collect()
    }
}

struct Relation {
    /// What the Relation message said (namespace, name, replica identity, columns): a
    /// transaction in progress that says the same of it may be handed over with its codec.
    declared: (String, String, u8, Vec<decoder::RelationColumn>),
    /// `None` for a table capture does not take (not configured, or stopped).
    codec: Option<Arc<EnvelopeCodec>>,
    /// The table, when it is configured but stopped: its changes are counted as not captured.
    stopped: Option<TableId>,
}

/// The configured tables capture does not take (refused at preflight or stopped while
/// streaming), and why; the one owner of `sluice_capture_table_stopped`.
pub(crate) struct StoppedTables {
    source: String,
    tables: std::collections::BTreeMap<TableId, String>,
    /// Counts stops: a transaction handed over while in progress is vouched for only when no
    /// table stopped meanwhile.
    generation: u64,
}

impl StoppedTables {
    /// Every configured table starts as captured (its gauge at 0).
    pub(crate) fn new(source: &str, configured: &[TableId]) -> StoppedTables {
        for table in configured {
            metrics::gauge!(m::TABLE_STOPPED, "source" => source.to_string(), "table" => table.to_string())
                .set(0.0);
        }
        StoppedTables {
            source: source.to_string(),
            tables: Default::default(),
            generation: 0,
        }
    }

    /// Marks `table` stopped: logged as an error, counted, and its gauge set to 1.
    pub(crate) fn stop(&mut self, table: &TableId, reason: &str) {
        error!(%table, reason, "table stopped: its changes are not captured until the cause is fixed and capture restarts (the table is then read again); the source's other tables go on");
        metrics::counter!(m::ERRORS_TOTAL, "source" => self.source.clone(), "kind" => "table")
            .increment(1);
        metrics::gauge!(m::TABLE_STOPPED, "source" => self.source.clone(), "table" => table.to_string())
            .set(1.0);
        self.tables.insert(table.clone(), reason.to_string());
        self.generation += 1;
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn contains(&self, table: &TableId) -> bool {
        // Checked for every event of a message that stopped its table: no lookup while none is.
        !self.tables.is_empty() && self.tables.contains_key(table)
    }

    /// The stopped tables and why.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&TableId, &String)> {
        self.tables.iter()
    }

    /// Counts a change of a stopped table that capture did not publish.
    pub(crate) fn skipped(&self, table: &TableId) {
        metrics::counter!(m::STOPPED_TABLE_CHANGES_TOTAL, "source" => self.source.clone(), "table" => table.to_string())
            .increment(1);
    }
}

struct Tx {
    xid: u32,
    /// `xid:commit_lsn`, the envelope's transaction id, formatted once per transaction.
    id: Arc<str>,
    commit_lsn: u64,
    commit_time_us: i64,
    index: u64,
    per_table: HashMap<u32, i64>,
    /// The replication origin its changes came from, when another replicator applied them.
    origin: Option<Arc<str>>,
    /// Seen visible to the catalog queries (see [`catalog::wait_visible`]).
    visible: bool,
}

/// Local mode: a streamed transaction whose changes go to the routers as they come (see
/// `sluice_sinks::provisional`), besides being held for its commit in case a sink cannot
/// take it that way.
struct InProgressTx {
    /// Why it will be published after its commit instead, once that is certain.
    failed: Option<String>,
    /// The topics its changes went to, and their tables.
    topics: std::collections::BTreeSet<String>,
    tables: HashSet<TableId>,
    /// Its changes' numbering (their positions until the commit's is known).
    seq: u64,
    stopped_generation: u64,
    /// The header of its changes of one subtransaction, made once per run of them.
    note: (u32, Vec<u8>),
}

/// A transaction the server streams while it is in progress.
struct Streamed {
    held: Held<RawMessage>,
    /// Subtransactions rolled back: their held messages are skipped at the commit.
    aborted: HashSet<u32>,
}

/// One row change a message makes: its table's codec and relation, op, before and after.
type RowChangeOf = (
    Arc<EnvelopeCodec>,
    u32,
    Op,
    Option<Vec<Datum>>,
    Option<Vec<Datum>>,
);

/// How long capture waits at a commit for the sinks to commit a transaction applied while in
/// progress before publishing it as usual.
const IN_PROGRESS_COMMIT_WAIT: Duration = Duration::from_secs(30);

/// A running capture of one source of this kind.
pub type PostgresCapture = crate::Capture<PostgresSourceConfig>;

impl PostgresCapture {
    /// Runs until `shutdown`, reconnecting with backoff on transient errors. Returns the
    /// definite error that stopped it, if any.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CaptureError> {
        let span = info_span!("capture", source = %self.name);
        crate::retry::with_backoff(&self.name, &self.settings.liveness, &shutdown, || {
            self.run_once(&shutdown)
        })
        .instrument(span)
        .await
    }

    fn connect_params(&self) -> Result<(PgConnector, ConnectParams), CaptureError> {
        connect_params(&self.name, &self.config, self.password.as_deref())
    }

    /// Snapshots the tables that need it; returns the state to stream with, or `None` when
    /// shut down meanwhile. A fresh slot's exported snapshot is used when there is one (the
    /// replication connection that created it must stay idle until this returns); otherwise
    /// unfinished tables are read in the snapshot of a temporary slot, and the stream skips
    /// their changes committed before it.
    #[allow(clippy::too_many_arguments)]
    async fn snapshot_if_needed(
        &self,
        pg: &PgConnector,
        params: &ConnectParams,
        tables: &[TableId],
        stopped: &StoppedTables,
        (loaded, names, oids): (
            Option<CaptureState>,
            &Names,
            &std::collections::BTreeMap<String, u32>,
        ),
        resnapshot: &[TableId],
        partitions: &HashMap<TableId, HashMap<u32, bool>>,
        created: Option<ExportedSnapshot>,
        (identity, history): (&str, &[(u32, u64)]),
        publisher: &mut Publisher,
        shutdown: &CancellationToken,
    ) -> Result<Option<CaptureState>, CaptureError> {
        if self.config.snapshot == SnapshotMode::Never {
            return Ok(Some(CaptureState::default()));
        }
        let existed = loaded.as_ref().is_some_and(|s| s.slot == self.config.slot);
        let mut state = loaded.filter(|_| existed).unwrap_or_else(|| CaptureState {
            slot: self.config.slot.clone(),
            ..CaptureState::default()
        });
        // The source epoch, decided and recorded before anything is published in it.
        let stored = state.epoch.as_ref().and_then(|e| e.identity.as_deref());
        let continues = promotion_point(stored, identity, history);
        let (epoch, changed) = Epoch::decide(
            &self.name,
            state.epoch.as_ref(),
            existed,
            identity,
            continues,
        );
        publisher.set_epoch(&epoch);
        state.epoch = Some(epoch);
        // The tables' OIDs, recorded before anything is read: a rename from here on, even
        // while capture is down mid-snapshot, is followed by them.
        let changed = changed || state.oids != *oids;
        state.oids.clone_from(oids);
        if changed {
            publisher.write_state(&state_json(&state)?).await?;
        }
        // A table refused now misses changes from here on: once it is fixed, it is read again.
        let mut changed = false;
        for (table, reason) in stopped.iter() {
            let key = table.to_string();
            if state.tables.contains_key(&key)
                && !matches!(state.tables.get(&key), Some(TableState::Stopped { .. }))
            {
                state.tables.insert(
                    key,
                    TableState::Stopped {
                        reason: reason.clone(),
                    },
                );
                changed = true;
            }
        }
        if changed {
            publisher.write_state(&state_json(&state)?).await?;
        }
        let fresh_slot = created.is_some();
        let needs_snapshot = |t: &TableId| {
            fresh_slot
                || resnapshot.contains(t)
                || !matches!(
                    state.tables.get(&t.to_string()),
                    Some(TableState::Done { .. })
                )
        };
        // The partitions each partitioned table's snapshot will hold (or, for one not read
        // now and never recorded, has now).
        let mut recorded = false;
        for (table, parts) in partitions {
            let key = table.to_string();
            if needs_snapshot(table) || !state.partitions.contains_key(&key) {
                state
                    .partitions
                    .insert(key, parts.keys().copied().collect());
                recorded = true;
            }
        }
        if recorded {
            publisher.write_state(&state_json(&state)?).await?;
        }
        let jobs: Vec<SnapshotJob> = tables
            .iter()
            .filter_map(|t| {
                let known = state.tables.get(&t.to_string());
                let needed = needs_snapshot(t);
                // Rows from an earlier (interrupted, or pre-slot-loss) snapshot may be stale.
                needed.then(|| SnapshotJob {
                    table: t.clone(),
                    source_name: names.now(t).clone(),
                    truncate_first: known.is_some(),
                    publication: self.config.publication.clone(),
                })
            })
            .collect();
        if jobs.is_empty() {
            return Ok(Some(state));
        }
        // Keep the temporary slot's connection open until the snapshot is read.
        let mut temporary = None;
        let exported = match created {
            Some(e) => e,
            None => {
                let mut conn = ReplicationConnection::connect(params).await?;
                let name = format!("{}_snap_{}", self.config.slot, std::process::id());
                let e = slot::create_slot_with_snapshot(&mut conn, &name, true, false).await?;
                temporary = Some(conn);
                e
            }
        };
        info!(
            tables = jobs.len(),
            snapshot_lsn = %format_lsn(exported.consistent_lsn),
            "starting snapshot"
        );
        let done = self
            .run_snapshot(pg, params, &exported, jobs, &mut state, publisher, shutdown)
            .await;
        if let Some(conn) = temporary {
            conn.close().await;
        }
        Ok(done?.then_some(state))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_snapshot(
        &self,
        pg: &PgConnector,
        params: &ConnectParams,
        exported: &ExportedSnapshot,
        jobs: Vec<SnapshotJob>,
        state: &mut CaptureState,
        publisher: &mut Publisher,
        shutdown: &CancellationToken,
    ) -> Result<bool, CaptureError> {
        let remaining =
            metrics::gauge!(m::SNAPSHOT_TABLES_REMAINING, "source" => self.name.clone());
        remaining.set(jobs.len() as f64);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<SnapshotMessage>(1024);
        let source = SourceInfo {
            name: Arc::from(self.name.as_str()),
            db: Arc::from(params.dbname.as_str()),
            ts_us: sluice_schemas::event::unix_now_us(),
            snapshot: true,
            tx_id: None,
            lsn: Some(exported.consistent_lsn as i64),
            sequence: None,
            binlog: None,
        };
        let mut queue = jobs.into_iter();
        let mut readers = tokio::task::JoinSet::new();
        let spawn_next = |readers: &mut tokio::task::JoinSet<()>,
                          queue: &mut std::vec::IntoIter<SnapshotJob>| {
            if let Some(job) = queue.next() {
                readers.spawn(snapshot::read_table(
                    pg.clone(),
                    exported.name.clone(),
                    exported.consistent_lsn,
                    source.clone(),
                    job,
                    tx.clone(),
                ));
                true
            } else {
                false
            }
        };
        let mut active = 0usize;
        for _ in 0..self.config.snapshot_parallelism.max(1) {
            if spawn_next(&mut readers, &mut queue) {
                active += 1;
            }
        }
        let mut codecs: HashMap<TableId, Arc<EnvelopeCodec>> = HashMap::new();
        while active > 0 {
            let msg = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    readers.abort_all();
                    info!("shut down during the snapshot; finished tables are kept, the rest resume on restart");
                    return Ok(false);
                }
                msg = rx.recv() => msg,
            };
            let Some(msg) = msg else { break };
            match msg {
                SnapshotMessage::Started(table) => {
                    state.tables.insert(table.to_string(), TableState::Started);
                    publisher.write_state(&state_json(state)?).await?;
                }
                SnapshotMessage::Event(event) => {
                    let codec = match codecs.get(&event.table.id) {
                        Some(c) if *c.table == *event.table => c.clone(),
                        _ => {
                            let c = Arc::new(EnvelopeCodec::new(
                                &self.settings.topic_prefix,
                                &self.name,
                                Connector::Postgres,
                                event.table.clone(),
                            )?);
                            codecs.insert(event.table.id.clone(), c.clone());
                            c
                        }
                    };
                    publisher.publish(&codec, &event).await?;
                }
                SnapshotMessage::Finished { table, rows } => {
                    // The table is done only once Kafka holds every one of its rows.
                    publisher.barrier().await?;
                    state.tables.insert(
                        table.to_string(),
                        TableState::Done {
                            snapshot_lsn: exported.consistent_lsn,
                        },
                    );
                    publisher.write_state(&state_json(state)?).await?;
                    remaining.decrement(1.0);
                    m::snapshot_finished(&self.name, &table.to_string(), rows);
                    info!(%table, rows, "table snapshot finished");
                    active -= 1;
                    if spawn_next(&mut readers, &mut queue) {
                        active += 1;
                    }
                }
                SnapshotMessage::Failed(e) => {
                    readers.abort_all();
                    return Err(e);
                }
            }
        }
        info!("snapshot finished");
        Ok(true)
    }

    async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), CaptureError> {
        let tables = self
            .config
            .table_ids()
            .map_err(|e| CaptureError::Definite(format!("sources.{}.tables: {e}", self.name)))?;
        let (pg, params) = self.connect_params()?;
        let (client, conn_task) = pg.connect().await?;
        let result = async {
            let mut stopped = StoppedTables::new(&self.name, &tables);
            let loaded = match self.config.snapshot {
                SnapshotMode::Initial => {
                    CaptureState::load_if_created(
                        &self.transport,
                        &self.settings.state_topic,
                        &self.name,
                    )
                    .await?
                }
                SnapshotMode::Never => None,
            };
            // Where each configured table is at the source now (renamed tables followed), and
            // which were dropped and created again while capture was down.
            let recorded = loaded.as_ref().filter(|s| s.slot == self.config.slot);
            let resolved = names::resolve(&client, recorded, &tables).await?;
            let (names, mut reread) = match self.config.renames {
                Renames::Follow => {
                    for table in &resolved.taken_over {
                        warn!(%table, "a table named as the configured one exists too; it is another table (not the one captured) and is not captured");
                    }
                    (resolved.names, resolved.recreated)
                }
                Renames::Stop => {
                    let mut reread = resolved.recreated;
                    reread.extend(resolved.taken_over);
                    (Names::default(), reread)
                }
            };
            for refused in slot::preflight(
                &client,
                &names.all_now(&tables),
                slot::Needs {
                    origin_filter: self.config.origin == OriginFilter::None,
                    failover_slot: self.config.failover_slot,
                },
            )
            .await?
            {
                stopped.stop(&names.configured(&refused.table), &refused.reason);
            }
            let tables: Vec<TableId> = tables
                .into_iter()
                .filter(|t| !stopped.contains(t))
                .collect();
            if tables.is_empty() {
                return Err(CaptureError::Definite(format!(
                    "no table of source {} can be captured: {}",
                    self.name,
                    stopped
                        .iter()
                        .map(|(_, r)| r.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
            let standby: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await?
                .get(0);
            if standby {
                // (A slot made on a standby waits for the primary to log what is running.)
                info!("the source is a standby: capture decodes there (no heartbeats: it is read-only; a new slot waits for the primary's next running-transactions record)");
            }
            let mut resnapshot: Vec<TableId> = slot::ensure_publication(
                &client,
                &self.config.publication,
                &names.all_now(&tables),
                standby,
            )
            .await?
            .iter()
            .map(|t| names.configured(t))
            .collect();
            resnapshot.append(&mut reread);
            // Read before the slot and any snapshot: a partition attached after this is new
            // to the stream's check, and at worst read twice, never missed.
            let partitions =
                partitions_of(&client, &names, &tables, &HashMap::new(), false).await?;
            let mut repl = ReplicationConnection::connect(&params).await?;
            let identity = identify(&mut repl).await?;
            let history = timeline_history(&mut repl, &identity).await?;
            let slot_state = slot::ensure_slot(
                &client,
                &mut repl,
                &self.config.slot,
                self.config.failover_slot,
            )
            .await?;
            let start = slot_state.confirmed_flush_lsn.unwrap_or(0);
            let (mut publisher, acks) = Publisher::new(&self.transport, self.settings.clone(), start)?;
            publisher.prepare().await?;
            publisher.refuse_legacy_topics(&tables).await?;
            let recorded = names::current_oids(&client, &names, &tables).await?;
            let state = self
                .snapshot_if_needed(
                    &pg,
                    &params,
                    &tables,
                    &stopped,
                    (loaded, &names, &recorded),
                    &resnapshot,
                    &partitions,
                    slot_state.created,
                    (&identity, &history),
                    &mut publisher,
                    shutdown,
                )
                .await?;
            let Some(mut state) = state else {
                return Ok(()); // shut down during the snapshot
            };
            let mut oids = HashMap::new();
            for (table, oid) in &recorded {
                if let Some(t) = TableId::parse(table) {
                    oids.insert(*oid, t);
                }
            }
            if self.config.snapshot == SnapshotMode::Initial && state.oids != recorded {
                state.oids = recorded;
                publisher.write_state(&state_json(&state)?).await?;
            }
            if !names.renamed().is_empty() {
                info!(renamed = ?names.renamed(), "capturing renamed tables under their configured names");
            }
            let snapshot_lsn: HashMap<TableId, u64> = state
                .tables
                .iter()
                .filter_map(|(t, s)| match s {
                    TableState::Done { snapshot_lsn } => Some((TableId::parse(t)?, *snapshot_lsn)),
                    TableState::Started | TableState::Stopped { .. } => None,
                })
                .collect();
            info!(slot = %self.config.slot, start = %format_lsn(start), "starting replication");
            let publication = quote_ident(&self.config.publication);
            let mut options = vec![
                (
                    "proto_version",
                    if self.config.streaming { "2" } else { "1" },
                ),
                ("publication_names", publication.as_str()),
                ("messages", "true"),
            ];
            if self.config.streaming {
                options.push(("streaming", "on"));
            }
            // (Servers before 16 know no `origin` option; `any` is what they do.)
            if self.config.origin != OriginFilter::Any {
                // The server drops those changes before they reach capture, so they cannot be
                // counted here: say once that it does.
                info!(
                    origin = self.config.origin.option(),
                    "changes applied under a replication origin are left out by the server"
                );
                options.push(("origin", self.config.origin.option()));
            }
            repl.start_logical(&self.config.slot, 0, &options).await?;
            let mut stream = Stream {
                capture: self,
                oids,
                names,
                gone: HashMap::new(),
                client: &client,
                shutdown: shutdown.clone(),
                repl,
                publisher,
                acks,
                wanted: tables.into_iter().collect(),
                relations: HashMap::new(),
                catalog: Catalog::default(),
                snapshot_lsn,
                partitions: match self.config.snapshot {
                    SnapshotMode::Initial => state
                        .partitions
                        .iter()
                        .filter_map(|(t, p)| Some((TableId::parse(t)?, p.clone())))
                        .filter(|(t, _)| partitions.contains_key(t))
                        .collect(),
                    SnapshotMode::Never => partitions
                        .iter()
                        .map(|(t, p)| (t.clone(), p.keys().copied().collect()))
                        .collect(),
                },
                stopped,
                state: (self.config.snapshot == SnapshotMode::Initial).then_some(state),
                tx: None,
                standby,
                streamed: HashMap::new(),
                in_stream: None,
                budget: Budget::new(&self.name, &self.config.spill),
                in_progress: HashMap::new(),
                session: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                last_received: start,
                server_wal_end: start,
                last_committed: start,
                source_name: Arc::from(self.name.as_str()),
                rereads: Rereads::default(),
                dbname: Arc::from(params.dbname.as_str()),
            };
            stream.run(shutdown).await
        }
        .await;
        conn_task.abort();
        result
    }
}

struct Stream<'a> {
    capture: &'a PostgresCapture,
    client: &'a tokio_postgres::Client,
    shutdown: CancellationToken,
    repl: ReplicationConnection,
    publisher: Publisher,
    acks: AckHandle,
    wanted: HashSet<TableId>,
    relations: HashMap<u32, Relation>,
    catalog: Catalog,
    /// Per table: changes committed before this LSN are already in its snapshot.
    snapshot_lsn: HashMap<TableId, u64>,
    /// The OID of each captured table when streaming started: a Relation message with one
    /// of them under another name is a rename.
    oids: HashMap<u32, TableId>,
    /// The name each configured table has at the source now (renamed ones followed).
    names: Names,
    /// Captured tables found dropped, renamed or replaced by the catalog check, with the WAL
    /// position then and why: stopped once the stream has read past that position (their
    /// changes before it are still captured).
    gone: HashMap<TableId, (u64, String)>,
    /// The partitions of each captured partitioned table, as last checked.
    partitions: HashMap<TableId, std::collections::BTreeSet<u32>>,
    /// Tables whose changes capture no longer takes, and why.
    stopped: StoppedTables,
    /// The snapshot progress record (`None` with `snapshot = "never"`): a table that stops is
    /// marked in it, so that it is read again once fixed.
    state: Option<CaptureState>,
    tx: Option<Tx>,
    /// The source is a standby (read-only: no heartbeats).
    standby: bool,
    /// Transactions the server streams while they are in progress, by xid: their messages,
    /// held until they commit (dropped when they abort).
    streamed: HashMap<u32, Streamed>,
    /// The xid of the stream block being read (between a Stream Start and its Stop).
    in_stream: Option<u32>,
    /// The memory the held messages of streamed transactions share.
    budget: Budget,
    /// Local mode: streamed transactions handed to the routers as they come, by xid.
    in_progress: HashMap<u32, InProgressTx>,
    /// This run's number, in their headers: after a restart the server streams those
    /// transactions again from their start, and routers let the earlier run's go.
    session: u64,
    last_received: u64,
    server_wal_end: u64,
    last_committed: u64,
    source_name: Arc<str>,
    dbname: Arc<str>,
    /// Rows asked to be read again (`sluice verify --repair`), and the window open now.
    rereads: Rereads,
}

impl Stream<'_> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), CaptureError> {
        let source = self.capture.name.clone();
        let confirmed_gauge = metrics::gauge!(m::CONFIRMED_LSN, "source" => source.clone());
        let lag_gauge = metrics::gauge!(m::SLOT_LAG_BYTES, "source" => source.clone());
        let mut status = tokio::time::interval(Duration::from_millis(
            self.capture.config.status_interval_ms.max(50),
        ));
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat_ms = self.capture.config.heartbeat_interval_ms;
        let mut heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_ms.max(1)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeats_on = heartbeat_ms > 0 && !self.standby;
        let mut catalog_check = tokio::time::interval(CATALOG_CHECK_INTERVAL);
        catalog_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                res = &mut self.acks.task => {
                    return Err(match res {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => CaptureError::Kafka("acknowledgement task ended".into()),
                        Err(e) => CaptureError::Kafka(format!("acknowledgement task panicked: {e}")),
                    });
                }
                _ = heartbeat.tick(), if heartbeats_on => {
                    let sql = format!("SELECT pg_logical_emit_message(false, '{HEARTBEAT_PREFIX}', '')");
                    if let Err(e) = self.client.simple_query(&sql).await {
                        warn!(error = %e, "cannot write heartbeats (needs EXECUTE on pg_logical_emit_message); an idle source database may hold back WAL");
                        heartbeats_on = false;
                    }
                }
                _ = catalog_check.tick() => {
                    self.check_tables().await?;
                    if !self.partitions.is_empty() {
                        self.check_partitions().await?;
                    }
                }
                _ = status.tick() => {
                    let acked = *self.acks.acked.borrow();
                    confirmed_gauge.set(acked as f64);
                    lag_gauge.set(self.server_wal_end.saturating_sub(acked) as f64);
                    self.repl.send_status(self.last_received, acked, false).await?;
                }
                msg = self.repl.recv() => match msg? {
                    ReplicationMessage::XLogData { wal_start, wal_end, data } => {
                        self.last_received = self.last_received.max(wal_end);
                        self.server_wal_end = self.server_wal_end.max(wal_end);
                        match self.in_stream {
                            // A streamed transaction's change: held until it commits.
                            Some(xid) if data.first() != Some(&b'E') => {
                                if self.in_progress.contains_key(&xid) {
                                    self.in_progress_change(xid, wal_start, data.clone()).await?;
                                }
                                self.hold(xid, wal_start, data)?;
                            }
                            _ => {
                                let message = decoder::decode(data, false)?;
                                self.handle(message, wal_start).await?;
                            }
                        }
                    }
                    ReplicationMessage::Keepalive { wal_end, reply_requested } => {
                        self.server_wal_end = self.server_wal_end.max(wal_end);
                        // Between transactions, everything up to the server's sent position has
                        // been read: confirming it keeps an idle slot from holding back WAL.
                        if self.tx.is_none() && wal_end > self.publisher.last_checkpoint() {
                            self.publisher.checkpoint(wal_end).await?;
                        }
                        if reply_requested {
                            let acked = *self.acks.acked.borrow();
                            self.repl.send_status(self.last_received, acked, false).await?;
                        }
                    }
                }
            }
        }
        info!("draining: waiting for Kafka to acknowledge published events");
        let drained = self
            .publisher
            .drain(&mut self.acks.acked, self.capture.settings.drain_timeout)
            .await;
        let acked = *self.acks.acked.borrow();
        if !drained {
            warn!(confirmed = %format_lsn(acked), "not every event was acknowledged before shutdown; they will be re-sent");
        }
        self.repl
            .send_status(self.last_received, acked, false)
            .await?;
        info!(confirmed = %format_lsn(acked), "capture stopped cleanly");
        Ok(())
    }

    /// Holds a message of the streamed transaction `xid` (or of one of its subtransactions)
    /// until it commits. Type and logical-decoding messages are not needed and not kept.
    fn hold(&mut self, xid: u32, lsn: u64, data: bytes::Bytes) -> Result<(), CaptureError> {
        if matches!(data.first(), Some(b'Y' | b'M')) {
            return Ok(());
        }
        let subxid = decoder::stream_xid(&data).unwrap_or(xid);
        self.streamed(xid)
            .held
            .push(RawMessage { subxid, lsn, data })
    }

    /// The streamed transaction `xid`, known from its first Stream Start on (a transaction
    /// streamed with nothing capture takes in it still commits, as an empty one).
    fn streamed(&mut self, xid: u32) -> &mut Streamed {
        let budget = &self.budget;
        self.streamed.entry(xid).or_insert_with(|| Streamed {
            held: Held::new(budget),
            aborted: HashSet::new(),
        })
    }

    async fn handle(&mut self, message: PgOutput, lsn: u64) -> Result<(), CaptureError> {
        match message {
            PgOutput::StreamStart { xid, first } => {
                if first {
                    debug!(xid, "a transaction in progress is streamed");
                    if self.publisher.applies_in_progress() {
                        self.in_progress.insert(
                            xid,
                            InProgressTx {
                                failed: None,
                                topics: Default::default(),
                                tables: HashSet::new(),
                                seq: 0,
                                stopped_generation: self.stopped.generation(),
                                note: (0, Vec::new()),
                            },
                        );
                    }
                }
                self.streamed(xid);
                self.in_stream = Some(xid);
            }
            PgOutput::StreamStop => self.in_stream = None,
            PgOutput::StreamAbort { xid, subxid } => {
                self.in_progress_note(xid, subxid).await?;
                if xid == subxid {
                    // Dropped with everything held of it: none of it was published.
                    if self.streamed.remove(&xid).is_some() {
                        metrics::counter!(m::STREAMED_TRANSACTIONS_TOTAL, "source" => self.capture.name.clone(), "outcome" => "aborted").increment(1);
                    }
                } else if let Some(streamed) = self.streamed.get_mut(&xid) {
                    streamed.aborted.insert(subxid);
                }
            }
            PgOutput::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                if self.commit_in_progress(xid, commit_lsn).await? {
                    // Every sink committed it: nothing more to publish.
                    self.streamed.remove(&xid);
                    metrics::counter!(m::STREAMED_TRANSACTIONS_TOTAL, "source" => self.capture.name.clone(), "outcome" => "committed").increment(1);
                    return self.commit(commit_lsn, end_lsn).await;
                }
                let Some(Streamed { held, aborted }) = self.streamed.remove(&xid) else {
                    return Err(CaptureError::Decode(decoder::DecodeError(format!(
                        "commit of streamed transaction {xid}, which never started"
                    ))));
                };
                self.begin(xid, commit_lsn, commit_time);
                for raw in held.drain()? {
                    let raw = raw?;
                    if aborted.contains(&raw.subxid) {
                        continue;
                    }
                    let message = decoder::decode(raw.data, true)?;
                    self.handle_in_transaction(message, raw.lsn).await?;
                }
                metrics::counter!(m::STREAMED_TRANSACTIONS_TOTAL, "source" => self.capture.name.clone(), "outcome" => "committed").increment(1);
                self.commit(commit_lsn, end_lsn).await?;
            }
            PgOutput::Begin {
                final_lsn,
                commit_time,
                xid,
            } => self.begin(xid, final_lsn, commit_time),
            PgOutput::Commit {
                end_lsn,
                commit_lsn,
                ..
            } => self.commit(commit_lsn, end_lsn).await?,
            PgOutput::Message { prefix, content } => {
                // Our heartbeat, outside any transaction: everything before it has been read.
                if prefix == HEARTBEAT_PREFIX && self.tx.is_none() {
                    self.publisher.checkpoint(lsn).await?;
                } else if prefix == reread::SIGNAL_PREFIX {
                    self.signal(&content).await?;
                } else if prefix == reread::WATERMARK_PREFIX {
                    self.watermark(&content, lsn).await?;
                }
            }
            other => self.handle_in_transaction(other, lsn).await?,
        }
        Ok(())
    }

    /// Starts reading a committed transaction (sent after its commit, or streamed and now
    /// committed).
    fn begin(&mut self, xid: u32, commit_lsn: u64, commit_time: i64) {
        self.tx = Some(Tx {
            xid,
            id: Arc::from(format!("{xid}:{commit_lsn}")),
            commit_lsn,
            commit_time_us: pg_time_to_unix_us(commit_time),
            index: 0,
            per_table: HashMap::new(),
            origin: None,
            visible: false,
        });
    }

    /// Ends it: once Kafka has every change published so far, the slot may pass `end_lsn`.
    async fn commit(&mut self, commit_lsn: u64, end_lsn: u64) -> Result<(), CaptureError> {
        self.tx = None;
        self.last_committed = commit_lsn;
        metrics::counter!(m::TRANSACTIONS_TOTAL, "source" => self.capture.name.clone())
            .increment(1);
        self.publisher.checkpoint(end_lsn).await
    }

    /// A message inside a transaction: a relation's description, the origin, or a change.
    async fn handle_in_transaction(
        &mut self,
        message: PgOutput,
        lsn: u64,
    ) -> Result<(), CaptureError> {
        match message {
            PgOutput::Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            } => {
                let declared = (
                    namespace.clone(),
                    name.clone(),
                    replica_identity,
                    columns.clone(),
                );
                let named = TableId::new(namespace, name);
                // Which configured table this is: by OID for one captured since the stream
                // started (renamed or not), else by name, unless a captured table that had
                // that name was renamed and followed (this is then another table).
                let (table, another) = match self.oids.get(&id) {
                    Some(known) => (known.clone(), false),
                    None => (named.clone(), self.names.moved_away(&named)),
                };
                if !another && *self.names.now(&table) != named && self.wanted.contains(&table) {
                    // A captured table under a new name: everything before this message was
                    // read under the old one.
                    match self.capture.config.renames {
                        Renames::Stop => {
                            let reason = renamed_reason(&self.capture.name, &table, &named);
                            self.stop_table(&table, &reason).await?;
                        }
                        // Known by its OID: the catalog check follows the name.
                        Renames::Follow => {
                            debug!(%table, now = %named, "a captured table's changes under another name");
                        }
                    }
                }
                let mut relation = Relation {
                    declared,
                    codec: None,
                    stopped: self.stopped.contains(&table).then(|| table.clone()),
                };
                if self.wanted.contains(&table) && !another {
                    // The catalog is read below: not before it shows what this transaction
                    // did. (A table first seen in a transaction still in progress is
                    // described as at the last commit.)
                    if let Some(tx) = self.tx.as_mut().filter(|tx| !tx.visible) {
                        catalog::wait_visible(self.client, tx.xid, &self.shutdown).await?;
                        tx.visible = true;
                    }
                    let before = self
                        .relations
                        .get(&id)
                        .and_then(|r| r.codec.as_ref())
                        .map(|c| {
                            c.table
                                .key_columns()
                                .map(|k| k.name.clone())
                                .collect::<Vec<_>>()
                        });
                    let schema = self
                        .catalog
                        .stream_schema(
                            self.client,
                            table.clone(),
                            id,
                            &columns,
                            replica_identity,
                            || {
                                // Under REPLICA IDENTITY FULL every column is flagged.
                                match before.clone() {
                                    Some(key) => key,
                                    None if replica_identity == b'f' => Vec::new(),
                                    None => columns
                                        .iter()
                                        .filter(|c| c.key)
                                        .map(|c| c.name.clone())
                                        .collect(),
                                }
                            },
                        )
                        .await?;
                    let problem = if replica_identity == b'n' || !schema.has_key() {
                        let identity = (replica_identity as char).to_string();
                        slot::key_problem(&table, &identity, false, false)
                    } else {
                        None
                    };
                    match problem {
                        Some(reason) => {
                            self.stop_table(&table, &reason).await?;
                            relation.stopped = Some(table);
                        }
                        None => {
                            let key: Vec<String> =
                                schema.key_columns().map(|c| c.name.clone()).collect();
                            if before.as_ref() != Some(&key) {
                                // The first description of the table in this stream, or its
                                // key changed: said once (a relation is described again after
                                // every catalog change of it).
                                info!(table = %schema.id, ?key, was = ?before, identity = %(replica_identity as char), "captured table described by the stream");
                            }
                            debug!(table = %schema.id, columns = schema.columns.len(), "relation");
                            relation.codec = Some(Arc::new(EnvelopeCodec::new(
                                &self.capture.settings.topic_prefix,
                                &self.capture.name,
                                Connector::Postgres,
                                Arc::new(schema),
                            )?));
                        }
                    }
                }
                self.relations.insert(id, relation);
            }
            PgOutput::Origin { name, .. } => {
                if let Some(tx) = self.tx.as_mut() {
                    debug!(xid = tx.xid, origin = %name, "transaction from a replication origin");
                    tx.origin = Some(Arc::from(name.as_str()));
                }
            }
            PgOutput::Type { .. } => {}
            other => {
                for (codec, relation, op, before, after) in self.row_changes(other)? {
                    self.emit(&codec, relation, op, before, after, lsn).await?;
                }
            }
        }
        Ok(())
    }

    /// The row changes a change message makes (a key change is two: a delete of the old key
    /// and a create of the new one); none for another message.
    fn row_changes(&self, message: PgOutput) -> Result<Vec<RowChangeOf>, CaptureError> {
        let mut out = Vec::with_capacity(1);
        match message {
            PgOutput::Insert { relation, new } => {
                if let Some(codec) = self.codec(relation)? {
                    let after = self.row(&codec, &new)?;
                    out.push((codec, relation, Op::Create, None, Some(after)));
                }
            }
            PgOutput::Update { relation, old, new } => {
                if let Some(codec) = self.codec(relation)? {
                    let after = self.row(&codec, &new)?;
                    let before = match &old {
                        Some((_, tuple)) => Some(self.row(&codec, tuple)?),
                        None => None,
                    };
                    let key_changed = matches!(&old, Some((b'K', _)))
                        || before
                            .as_ref()
                            .is_some_and(|b| key_of(&codec, b) != key_of(&codec, &after));
                    if key_changed {
                        // The row moved to a new key: delete the old key, create the new one,
                        // as Debezium does, so keyed consumers see both.
                        out.push((codec.clone(), relation, Op::Delete, before, None));
                        out.push((codec, relation, Op::Create, None, Some(after)));
                    } else {
                        out.push((codec, relation, Op::Update, before, Some(after)));
                    }
                }
            }
            PgOutput::Delete {
                relation,
                old: (_, tuple),
            } => {
                if let Some(codec) = self.codec(relation)? {
                    let before = self.row(&codec, &tuple)?;
                    out.push((codec, relation, Op::Delete, Some(before), None));
                }
            }
            PgOutput::Truncate { relations, .. } => {
                for relation in relations {
                    if let Some(codec) = self.codec(relation)? {
                        out.push((codec, relation, Op::Truncate, None, None));
                    }
                }
            }
            // Relations, origins and types are handled by `handle_in_transaction`;
            // transaction boundaries, stream messages and logical-decoding messages by
            // `handle`.
            PgOutput::Relation { .. }
            | PgOutput::Origin { .. }
            | PgOutput::Type { .. }
            | PgOutput::Begin { .. }
            | PgOutput::Commit { .. }
            | PgOutput::Message { .. }
            | PgOutput::StreamStart { .. }
            | PgOutput::StreamStop
            | PgOutput::StreamCommit { .. }
            | PgOutput::StreamAbort { .. } => {}
        }
        Ok(out)
    }

    /// A message of a streamed transaction handed to the routers as it comes: its changes are
    /// published at once (with positions of their own until the commit's is known). What
    /// capture cannot hand over this way — a table's definition that changed inside it, a
    /// truncate, a value its schema cannot carry — only means it is published after its
    /// commit as usual.
    async fn in_progress_change(
        &mut self,
        xid: u32,
        lsn: u64,
        data: bytes::Bytes,
    ) -> Result<(), CaptureError> {
        if self
            .in_progress
            .get(&xid)
            .is_none_or(|t| t.failed.is_some())
            || matches!(data.first(), Some(b'Y' | b'M'))
        {
            return Ok(());
        }
        let subxid = decoder::stream_xid(&data).unwrap_or(xid);
        let message = match decoder::decode(data, true) {
            Ok(m) => m,
            Err(e) => {
                self.in_progress_fails(xid, format!("a message of it could not be decoded: {e}"));
                return Ok(());
            }
        };
        match message {
            PgOutput::Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            } => {
                let same = self.relations.get(&id).map(|r| {
                    r.declared.0 == namespace
                        && r.declared.1 == name
                        && r.declared.2 == replica_identity
                        && r.declared.3 == columns
                });
                match same {
                    Some(true) => {}
                    Some(false) => self.in_progress_fails(
                        xid,
                        format!("the definition of {namespace}.{name} changed inside it"),
                    ),
                    // A table first seen in it: described as at a commit.
                    None => {
                        let relation = PgOutput::Relation {
                            id,
                            namespace,
                            name,
                            replica_identity,
                            columns,
                        };
                        if let Err(e) = self.handle_in_transaction(relation, lsn).await {
                            self.in_progress_fails(
                                xid,
                                format!("a table of it could not be described: {e}"),
                            );
                        }
                    }
                }
            }
            PgOutput::Truncate { .. } => {
                self.in_progress_fails(xid, "it truncates a table".into());
            }
            other => {
                let changes = match self.row_changes(other) {
                    Ok(c) => c,
                    Err(e) => {
                        self.in_progress_fails(
                            xid,
                            format!("a change of it could not be read: {e}"),
                        );
                        return Ok(());
                    }
                };
                for (codec, _, op, before, after) in changes {
                    self.emit_in_progress(xid, subxid, &codec, op, before, after, lsn)
                        .await?;
                }
            }
        }
        Ok(())
    }

    fn in_progress_fails(&mut self, xid: u32, why: String) {
        if let Some(t) = self.in_progress.get_mut(&xid) {
            if t.failed.is_none() {
                info!(xid, reason = %why, "a streamed transaction is no longer handed to the routers as it comes; it is published at its commit");
                t.failed = Some(why);
            }
        }
    }

    /// Publishes one change of a transaction in progress.
    #[allow(clippy::too_many_arguments)]
    async fn emit_in_progress(
        &mut self,
        xid: u32,
        subxid: u32,
        codec: &EnvelopeCodec,
        op: Op,
        before: Option<Vec<Datum>>,
        after: Option<Vec<Datum>>,
        lsn: u64,
    ) -> Result<(), CaptureError> {
        if self.stopped.contains(&codec.table.id) {
            return Ok(());
        }
        let source = self.source_name.clone();
        let session = self.session;
        let Some(t) = self.in_progress.get_mut(&xid) else {
            return Ok(());
        };
        if t.failed.is_some() {
            return Ok(());
        }
        t.seq += 1;
        if t.note.0 != subxid || t.note.1.is_empty() {
            let note = sluice_connect::headers::InProgress {
                source: source.to_string(),
                session,
                xid,
                subxid,
                abort: false,
            };
            t.note = (
                subxid,
                serde_json::to_vec(&note).map_err(|e| CaptureError::Definite(e.to_string()))?,
            );
        }
        let event = ChangeEvent {
            row: sluice_schemas::RowChange {
                table: codec.table.clone(),
                op,
                before,
                after,
            },
            source: SourceInfo {
                name: source,
                db: self.dbname.clone(),
                // Known at the commit only (a scheme that reads it keeps the router from
                // applying the transaction before then).
                ts_us: 0,
                snapshot: false,
                tx_id: Some(i64::from(xid)),
                lsn: Some(lsn as i64),
                sequence: None,
                binlog: None,
            },
            transaction: None,
            position: Position::postgres(0, t.seq),
        };
        let note = std::mem::take(&mut t.note.1);
        let published = self
            .publisher
            .publish_in_progress(codec, &event, &note)
            .await;
        let t = self
            .in_progress
            .get_mut(&xid)
            .expect("only removed by its commit or abort");
        t.note.1 = note;
        match published {
            Ok(topic) => {
                if !t.topics.contains(topic) {
                    t.topics.insert(topic.to_string());
                    t.tables.insert(codec.table.id.clone());
                }
                Ok(())
            }
            Err(CaptureError::Avro(e @ sluice_schemas::AvroError::Value { .. })) => {
                // Its table is stopped when the change is published at the commit.
                self.in_progress_fails(xid, format!("a change could not be encoded: {e}"));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The header of the rollback of `subxid` (`xid` itself: the whole transaction).
    fn rollback_note(&self, xid: u32, subxid: u32) -> Result<Vec<u8>, CaptureError> {
        let note = sluice_connect::headers::InProgress {
            source: self.source_name.to_string(),
            session: self.session,
            xid,
            subxid,
            abort: true,
        };
        serde_json::to_vec(&note).map_err(|e| CaptureError::Definite(e.to_string()))
    }

    /// The source rolled back a transaction handed over while in progress, or a
    /// subtransaction of it: the routers are told, in order with its changes.
    async fn in_progress_note(&mut self, xid: u32, subxid: u32) -> Result<(), CaptureError> {
        let Some(t) = self.in_progress.get(&xid) else {
            return Ok(());
        };
        if !t.topics.is_empty() {
            self.publisher
                .publish_in_progress_note(&t.topics, &self.rollback_note(xid, subxid)?)
                .await?;
        }
        if xid == subxid {
            self.in_progress.remove(&xid);
        }
        Ok(())
    }

    /// A table of the streamed transaction `xid` under `REPLICA IDENTITY FULL` whose key the
    /// catalog, now that the transaction is visible, gives otherwise than its changes were
    /// written with. (The Relation messages of such a table flag every column, so a key
    /// dropped or changed inside the transaction, which the catalog could not show while it
    /// was in progress, says nothing there; under DEFAULT or USING INDEX the flags change and
    /// the transaction was already given up.)
    async fn full_identity_key_changed(
        &self,
        xid: u32,
        tables: &HashSet<TableId>,
    ) -> Result<Option<TableId>, CaptureError> {
        let full: Vec<(u32, &EnvelopeCodec)> = self
            .relations
            .iter()
            .filter(|(_, r)| r.declared.2 == b'f')
            .filter_map(|(oid, r)| Some((*oid, r.codec.as_deref()?)))
            .filter(|(_, codec)| tables.contains(&codec.table.id))
            .collect();
        if full.is_empty() {
            return Ok(None);
        }
        catalog::wait_visible(self.client, xid, &self.shutdown).await?;
        for (oid, codec) in full {
            let now = Catalog::key_columns(self.client, oid).await?;
            let then: Vec<&String> = codec.table.key_columns().map(|c| &c.name).collect();
            if now.len() != then.len() || !then.iter().all(|k| now.contains(k)) {
                return Ok(Some(codec.table.id.clone()));
            }
        }
        Ok(None)
    }

    /// A streamed transaction committed at `commit_lsn`: when its changes went to the routers
    /// as they came, and capture can vouch that they are the ones it would publish now, its
    /// commit markers go out and capture waits until every sink committed it. `false` when it
    /// must be published as usual instead (the routers were told to let theirs go, or could
    /// not hold it).
    async fn commit_in_progress(
        &mut self,
        xid: u32,
        commit_lsn: u64,
    ) -> Result<bool, CaptureError> {
        let Some(t) = self.in_progress.remove(&xid) else {
            return Ok(false);
        };
        let source = self.capture.name.clone();
        let after_commit = || {
            metrics::counter!(m::IN_PROGRESS_TRANSACTIONS_TOTAL, "source" => source.clone(), "outcome" => "after_commit").increment(1);
        };
        if t.topics.is_empty() {
            return Ok(false);
        }
        let doubt = if let Some(why) = &t.failed {
            Some(why.clone())
        } else if self.rereads.window.is_some() {
            Some("rows are being read again for a repair".to_string())
        } else if !self.gone.is_empty() || self.stopped.generation() != t.stopped_generation {
            Some("a table was stopped while it was in progress".to_string())
        } else if t.tables.iter().any(|table| {
            self.snapshot_lsn
                .get(table)
                .is_some_and(|l| commit_lsn < *l)
        }) {
            Some("a table of it was snapshotted after it".to_string())
        } else {
            self.full_identity_key_changed(xid, &t.tables)
                .await?
                .map(|table| format!("the key of {table} changed inside it"))
        };
        if let Some(why) = doubt {
            // The routers let theirs go before its changes come again.
            self.publisher
                .publish_in_progress_note(&t.topics, &self.rollback_note(xid, xid)?)
                .await?;
            debug!(xid, reason = %why, "a streamed transaction is published at its commit");
            after_commit();
            return Ok(false);
        }
        let marker = sluice_connect::headers::CommitMarker {
            source: self.source_name.to_string(),
            session: self.session,
            xid,
            topics: t.topics.iter().cloned().collect(),
        };
        let marker =
            serde_json::to_vec(&marker).map_err(|e| CaptureError::Definite(e.to_string()))?;
        let waits = self.publisher.publish_commit_markers(
            &t.topics,
            &Position::postgres(commit_lsn, u64::MAX),
            &marker,
        )?;
        // Until every sink committed it. The server hears from capture meanwhile; past the
        // limit capture publishes it as usual, which a sink that did commit it skips.
        let mut all = std::pin::pin!(futures::future::join_all(waits));
        let limit = tokio::time::sleep(IN_PROGRESS_COMMIT_WAIT);
        let mut limit = std::pin::pin!(limit);
        let mut status = tokio::time::interval(Duration::from_secs(5));
        let outcomes = loop {
            tokio::select! {
                outcomes = &mut all => break outcomes,
                _ = status.tick() => {
                    let acked = *self.acks.acked.borrow();
                    self.repl.send_status(self.last_received, acked, false).await?;
                }
                _ = &mut limit => {
                    warn!(xid, waited = ?IN_PROGRESS_COMMIT_WAIT, "the sinks did not commit a transaction applied while in progress in time; it is published as usual");
                    after_commit();
                    return Ok(false);
                }
            }
        };
        let refused = outcomes.into_iter().find_map(|o| match o {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(_) => Some("the router stopped".to_string()),
        });
        if let Some(why) = refused {
            info!(xid, reason = %why, "a sink did not hold a transaction applied while in progress; it is published as usual");
            after_commit();
            return Ok(false);
        }
        metrics::counter!(m::IN_PROGRESS_TRANSACTIONS_TOTAL, "source" => source, "outcome" => "applied").increment(1);
        Ok(true)
    }

    fn codec(&self, relation: u32) -> Result<Option<Arc<EnvelopeCodec>>, CaptureError> {
        match self.relations.get(&relation) {
            Some(r) => {
                if let Some(table) = &r.stopped {
                    self.stopped.skipped(table);
                }
                Ok(r.codec.clone())
            }
            None => Err(CaptureError::Decode(decoder::DecodeError(format!(
                "change for relation {relation} before its Relation message"
            )))),
        }
    }

    fn row(&self, codec: &EnvelopeCodec, tuple: &[TupleValue]) -> Result<Vec<Datum>, CaptureError> {
        let table = &codec.table;
        if tuple.len() != table.columns.len() {
            return Err(CaptureError::Decode(decoder::DecodeError(format!(
                "tuple of {} has {} values for {} columns",
                table.id,
                tuple.len(),
                table.columns.len()
            ))));
        }
        Ok(tuple
            .iter()
            .zip(&table.columns)
            .map(|(v, col)| match v {
                TupleValue::Null => Datum::Null,
                TupleValue::Unchanged => Datum::Unchanged,
                TupleValue::Text(bytes) => {
                    let text = String::from_utf8_lossy(bytes);
                    pgtext::parse(&col.sql_type, &text).unwrap_or_else(|e| {
                        // Never stop the stream for one value: carry NULL and say so loudly.
                        metrics::counter!(m::ERRORS_TOTAL, "source" => self.capture.name.clone(), "kind" => "value").increment(1);
                        error!(table = %table.id, column = %col.name, error = %e, "value could not be converted; sent as NULL");
                        Datum::Null
                    })
                }
            })
            .collect())
    }

    async fn emit(
        &mut self,
        codec: &EnvelopeCodec,
        relation: u32,
        op: Op,
        before: Option<Vec<Datum>>,
        after: Option<Vec<Datum>>,
        lsn: u64,
    ) -> Result<(), CaptureError> {
        if self.stopped.contains(&codec.table.id) {
            // Stopped by an earlier change of the same message (a key change is two events).
            self.stopped.skipped(&codec.table.id);
            return Ok(());
        }
        let Some(tx) = self.tx.as_mut() else {
            return Err(CaptureError::Decode(decoder::DecodeError(
                "change outside a transaction".into(),
            )));
        };
        if self
            .snapshot_lsn
            .get(&codec.table.id)
            .is_some_and(|lsn| tx.commit_lsn < *lsn)
        {
            // Already in the table's snapshot.
            metrics::counter!(m::SNAPSHOT_SKIPPED_CHANGES_TOTAL, "source" => self.capture.name.clone()).increment(1);
            return Ok(());
        }
        if self.rereads.window.is_some() {
            // A row being read again that this change touches is left to this change.
            match (op, after.as_ref().or(before.as_ref())) {
                (Op::Truncate, _) => self.rereads.truncated(&codec.table.id),
                (_, Some(row)) => {
                    self.rereads
                        .observe(&codec.table.id, &key_of(codec, row), tx.xid);
                }
                (_, None) => {}
            }
        }
        let index = tx.index;
        tx.index += 1;
        let per_table = tx.per_table.entry(relation).or_insert(0);
        *per_table += 1;
        let event = ChangeEvent {
            row: sluice_schemas::RowChange {
                table: codec.table.clone(),
                op,
                before,
                after,
            },
            source: SourceInfo {
                name: self.source_name.clone(),
                db: self.dbname.clone(),
                ts_us: tx.commit_time_us,
                snapshot: false,
                tx_id: Some(i64::from(tx.xid)),
                lsn: Some(lsn as i64),
                sequence: Some(format!("[\"{}\",\"{}\"]", self.last_committed, lsn)),
                binlog: None,
            },
            transaction: Some(TxInfo {
                id: tx.id.clone(),
                total_order: index as i64 + 1,
                data_collection_order: *per_table,
            }),
            position: Position::postgres(tx.commit_lsn, index),
        };
        match self.publisher.publish(codec, &event).await {
            // A value this table's schema cannot carry concerns this table alone.
            Err(CaptureError::Avro(e @ sluice_schemas::AvroError::Value { .. })) => {
                let table = codec.table.id.clone();
                self.stop_table(
                    &table,
                    &format!("a change of {table} could not be encoded: {e}; fix the row or the table's definition"),
                )
                .await
            }
            other => other,
        }
    }

    /// A signal (see [`reread`]): rows of a captured table to read again.
    async fn signal(&mut self, content: &[u8]) -> Result<(), CaptureError> {
        let source = self.capture.name.clone();
        let signal: Signal = match serde_json::from_slice(content) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "a signal that does not parse is ignored");
                metrics::counter!(m::ERRORS_TOTAL, "source" => source, "kind" => "signal")
                    .increment(1);
                return Ok(());
            }
        };
        if signal.slot != self.capture.config.slot {
            return Ok(()); // another capture's
        }
        let table = TableId::parse(&signal.table).filter(|t| self.wanted.contains(t));
        let (Some(table), "reread") = (table, signal.op.as_str()) else {
            warn!(table = %signal.table, op = %signal.op, "a signal for a table this capture does not take, or of an unknown kind, is ignored");
            metrics::counter!(m::REREAD_ROWS_TOTAL, "source" => source, "table" => signal.table.clone(), "outcome" => "refused").increment(signal.keys.len() as u64);
            return Ok(());
        };
        info!(%table, keys = signal.keys.len(), "reading rows again on request");
        self.rereads.push(table, signal);
        self.next_window().await
    }

    /// Opens the next window of queued re-reads, while none is open.
    async fn next_window(&mut self) -> Result<(), CaptureError> {
        while self.rereads.window.is_none() {
            let Some(chunk) = self.rereads.queue.pop_front() else {
                return Ok(());
            };
            let refused = |why: &str, chunk: &reread::Chunk| {
                warn!(table = %chunk.table, keys = chunk.keys.len(), "{why}; the rows are not read again");
                metrics::counter!(m::REREAD_ROWS_TOTAL, "source" => self.capture.name.clone(), "table" => chunk.table.to_string(), "outcome" => "refused").increment(chunk.keys.len() as u64);
            };
            if self.standby {
                refused("a standby cannot take the watermarks a re-read needs: capture from the primary to repair", &chunk);
                continue;
            }
            if !self.wanted.contains(&chunk.table) {
                refused("the table is no longer captured", &chunk);
                continue;
            }
            match self.read_window(&chunk).await? {
                Ok(window) => self.rereads.window = Some(window),
                Err(why) => refused(&why, &chunk),
            }
        }
        Ok(())
    }

    /// Writes the low watermark, reads the chunk's rows (and the transactions in progress
    /// then), writes the high watermark. The inner error is why the chunk cannot be read.
    async fn read_window(
        &mut self,
        chunk: &reread::Chunk,
    ) -> Result<Result<Window, String>, CaptureError> {
        let now = self.names.now(&chunk.table).clone();
        let publication = self.capture.config.publication.clone();
        let columns = Catalog::relation_columns(self.client, &now, Some(&publication)).await?;
        let mut schema = self
            .catalog
            .table_schema(self.client, now.clone(), &columns)
            .await?;
        schema.id = chunk.table.clone();
        let key: Vec<String> = schema.key_columns().map(|c| c.name.clone()).collect();
        if key != chunk.columns {
            return Ok(Err(format!(
                "the request names the key columns {:?}, the table's key is {key:?}",
                chunk.columns
            )));
        }
        let types: HashMap<String, String> = reread::column_types(self.client, &now, &key)
            .await?
            .into_iter()
            .collect();
        let key_types: Vec<(String, String)> = key
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    types.get(k).cloned().unwrap_or_else(|| "text".into()),
                )
            })
            .collect();
        let names: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
        let codec = Arc::new(EnvelopeCodec::new(
            &self.capture.settings.topic_prefix,
            &self.capture.name,
            Connector::Postgres,
            Arc::new(schema),
        )?);
        let id = format!("{}-{}", self.capture.config.slot, self.rereads.next_id());
        let mark = |mark: &str| {
            serde_json::to_string(&Watermark {
                id: id.clone(),
                mark: mark.into(),
            })
            .expect("a watermark serializes")
        };
        let emit = "SELECT pg_logical_emit_message(false, $1, $2::text)";
        // What the server refuses (a permission, a key that does not cast) refuses this
        // request alone: capture reads the signal again after a restart, so failing would
        // stop it over and over. A lost connection is capture's error as any other.
        let refused = |what: &str, e: tokio_postgres::Error| match e.as_db_error() {
            Some(db) => Ok(Err(format!("{what}: {}", db.message()))),
            None => Err(CaptureError::from(e)),
        };
        if let Err(e) = self
            .client
            .execute(emit, &[&reread::WATERMARK_PREFIX, &mark("low")])
            .await
        {
            return refused(
                "cannot write the watermark (the user needs EXECUTE on pg_logical_emit_message)",
                e,
            );
        }
        let sql = reread::select_sql(
            &format!("{}.{}", quote_ident(&now.namespace), quote_ident(&now.name)),
            &names,
            &key_types,
        );
        let params: Vec<Vec<String>> = (0..key.len())
            .map(|i| {
                chunk
                    .keys
                    .iter()
                    .map(|k| k.get(i).cloned().unwrap_or_default())
                    .collect()
            })
            .collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        self.client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {}",
                reread::TEXT_SETTINGS
            ))
            .await?;
        let read = async {
            let xip: Vec<i64> = self
                .client
                .query_one(
                    "SELECT ARRAY(SELECT x::text::bigint % 4294967296 \
                     FROM pg_snapshot_xip(pg_current_snapshot()) x)",
                    &[],
                )
                .await?
                .get(0);
            let rows = self.client.query(&sql, &params).await?;
            Ok::<_, tokio_postgres::Error>((xip, rows))
        }
        .await;
        let end = self
            .client
            .batch_execute(if read.is_ok() { "COMMIT" } else { "ROLLBACK" })
            .await;
        let (xip, rows) = match read {
            Ok(read) => read,
            Err(e) => {
                end?;
                return refused("cannot read the rows", e);
            }
        };
        end?;
        if let Err(e) = self
            .client
            .execute(emit, &[&reread::WATERMARK_PREFIX, &mark("high")])
            .await
        {
            return refused("cannot write the watermark", e);
        }
        let found: Vec<Vec<Option<String>>> = rows
            .iter()
            .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
            .collect();
        let in_progress = xip.into_iter().map(|x| x as u32).collect();
        Ok(Window::new(id, codec, in_progress, found, &chunk.keys))
    }

    /// A watermark: the window it opens, or the one it closes (published here, at its
    /// position), when it is this capture's open window.
    async fn watermark(&mut self, content: &[u8], lsn: u64) -> Result<(), CaptureError> {
        let Ok(mark) = serde_json::from_slice::<Watermark>(content) else {
            return Ok(());
        };
        // Another capture's, or one from before a restart (whose rows are gone).
        let Some(window) = self.rereads.window.as_mut().filter(|w| w.id == mark.id) else {
            let ours = mark.id.strip_prefix(self.capture.config.slot.as_str());
            // (`<slot>-<pid>-<n>`: another slot's name may start with this one's.)
            let numbered = |rest: &str| {
                rest.strip_prefix('-').is_some_and(|r| {
                    r.split('-').count() == 2 && r.split('-').all(|p| p.parse::<u64>().is_ok())
                })
            };
            if mark.mark == "high" && ours.is_some_and(numbered) {
                warn!(window = %mark.id, "rows read again before capture restarted were not published; sluice verify reports them still different (run --repair again)");
            }
            return Ok(());
        };
        if mark.mark == "low" {
            window.open = true;
            return Ok(());
        }
        let window = self.rereads.window.take().expect("checked above");
        self.publish_window(window, lsn).await?;
        self.next_window().await
    }

    /// Publishes what a window kept: its rows as reads, its absent keys as deletes, at the
    /// high watermark's position.
    async fn publish_window(&mut self, window: Window, lsn: u64) -> Result<(), CaptureError> {
        let table = window.codec.table.id.clone();
        let source = self.capture.name.clone();
        let count = |outcome: &'static str, n: usize| {
            metrics::counter!(m::REREAD_ROWS_TOTAL, "source" => source.clone(), "table" => table.to_string(), "outcome" => outcome).increment(n as u64);
        };
        if self.stopped.contains(&table) {
            count("refused", window.rows.len() + window.absent.len());
            return Ok(());
        }
        let info = SourceInfo {
            name: self.source_name.clone(),
            db: self.dbname.clone(),
            ts_us: sluice_schemas::event::unix_now_us(),
            snapshot: true,
            tx_id: None,
            lsn: Some(lsn as i64),
            sequence: None,
            binlog: None,
        };
        let reads = window
            .rows
            .iter()
            .map(|r| (Op::Read, None, Some(r.clone())));
        let deletes = window
            .absent
            .iter()
            .map(|k| (Op::Delete, Some(window.delete_image(k)), None));
        for (index, (op, before, after)) in reads.chain(deletes).enumerate() {
            let event = ChangeEvent {
                row: sluice_schemas::RowChange {
                    table: window.codec.table.clone(),
                    op,
                    before,
                    after,
                },
                source: info.clone(),
                transaction: None,
                position: Position::postgres(lsn, index as u64),
            };
            self.publisher.publish(&window.codec, &event).await?;
        }
        count("read", window.rows.len());
        count("deleted", window.absent.len());
        count("skipped", window.skipped as usize);
        info!(%table, read = window.rows.len(), deleted = window.absent.len(), skipped = window.skipped, "rows read again were published");
        if self.tx.is_none() {
            self.publisher.checkpoint(lsn).await?;
        }
        Ok(())
    }

    /// Compares the partitions of each captured partitioned table with those last seen. A
    /// partition created as one (`PARTITION OF`) only ever held rows the stream carries; one
    /// attached with rows of its own did not, so the table is read again: marked in the
    /// state record, then capture starts over (a transient error), which snapshots it.
    async fn check_partitions(&mut self) -> Result<(), CaptureError> {
        let tables: Vec<TableId> = self.partitions.keys().cloned().collect();
        let current =
            partitions_of(self.client, &self.names, &tables, &self.partitions, true).await?;
        for (table, parts) in current {
            let known = self.partitions.entry(table.clone()).or_default();
            if parts.keys().all(|oid| known.contains(oid)) && parts.len() == known.len() {
                continue;
            }
            let attached: Vec<u32> = parts
                .iter()
                .filter(|(oid, attached)| **attached && !known.contains(oid))
                .map(|(oid, _)| *oid)
                .collect();
            *known = parts.keys().copied().collect();
            let known = known.clone();
            info!(%table, partitions = known.len(), "the table's partitions changed");
            let Some(state) = &mut self.state else {
                if !attached.is_empty() {
                    metrics::counter!(m::ERRORS_TOTAL, "source" => self.capture.name.clone(), "kind" => "not_captured").increment(1);
                    error!(%table, ?attached, "a partition was attached with rows of its own; with snapshot = \"never\" those rows are not captured (their later changes are)");
                }
                continue;
            };
            state.partitions.insert(table.to_string(), known);
            if attached.is_empty() {
                let json = state_json(state)?;
                self.publisher.write_state(&json).await?;
                continue;
            }
            let reason = format!(
                "a partition (oid {attached:?}) was attached to {table} with rows of its own, \
                 which no change of {table} carried; reading the table again"
            );
            warn!(%table, "{reason}");
            self.mark_for_reread(&table, &reason).await?;
            return Err(CaptureError::Resnapshot(reason));
        }
        Ok(())
    }

    /// Compares each captured table's OID with the one it had when streaming started: a table
    /// dropped, renamed, or dropped and created again is stopped (with the reason and the fix)
    /// once the stream has read past the WAL position of the check, so that its changes
    /// before that are still captured.
    async fn check_tables(&mut self) -> Result<(), CaptureError> {
        let wal: u64 = {
            let row = self
                .client
                // (On a standby the catalog read is as of the WAL replayed.)
                .query_one(
                    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                     ELSE pg_current_wal_lsn() END - '0/0')::bigint",
                    &[],
                )
                .await?;
            row.get::<_, i64>(0) as u64
        };
        let known: Vec<(u32, TableId)> = self
            .oids
            .iter()
            .filter(|(_, t)| self.wanted.contains(*t) && !self.gone.contains_key(*t))
            .map(|(o, t)| (*o, t.clone()))
            .collect();
        if known.is_empty() {
            return Ok(());
        }
        // One round trip for every table, each under its name now.
        let now: Vec<&TableId> = known.iter().map(|(_, t)| self.names.now(t)).collect();
        let namespaces: Vec<&str> = now.iter().map(|t| t.namespace.as_str()).collect();
        let names: Vec<&str> = now.iter().map(|t| t.name.as_str()).collect();
        let rows = self
            .client
            .query(
                "SELECT to_regclass(format('%I.%I', n, t))::oid \
                 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(n, t, i) ORDER BY i",
                &[&namespaces, &names],
            )
            .await?;
        let current: Vec<Option<u32>> = rows.iter().map(|r| r.get(0)).collect();
        for ((oid, table), now) in known.into_iter().zip(current) {
            if now == Some(oid) {
                continue;
            }
            let renamed: Option<(String, String)> = self
                .client
                .query_opt(
                    "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::oid",
                    &[&oid],
                )
                .await?
                .map(|r| (r.get(0), r.get(1)));
            let source = &self.capture.name;
            let reason = match (renamed, now) {
                (Some((namespace, name)), _) => {
                    let now = TableId::new(namespace, name);
                    if self.capture.config.renames == Renames::Follow {
                        info!(%table, %now, "a captured table was renamed at the source; followed: its changes are published as {table}'s, as before");
                        metrics::counter!(m::TABLES_RENAMED_TOTAL, "source" => source.clone(), "table" => table.to_string()).increment(1);
                        self.names.follow(&table, now);
                        continue;
                    }
                    renamed_reason(source, &table, &now)
                }
                (None, Some(_)) => format!(
                    "{table} was dropped and created again; the new table is not in the \
                     publication yet: restart capture, which adds it and reads it anew"
                ),
                (None, None) => format!(
                    "{table} was dropped at the source: remove it from sources.{source}.tables \
                     (the sink keeps its rows)"
                ),
            };
            info!(%table, wal = %format_lsn(wal), "{reason}; its changes up to here are still captured");
            self.gone.insert(table, (wal, reason));
        }
        let read = self.last_received.max(self.publisher.last_checkpoint());
        let due: Vec<(TableId, String)> = self
            .gone
            .iter()
            .filter(|(t, (at, _))| read >= *at && self.wanted.contains(*t))
            .map(|(t, (_, r))| (t.clone(), r.clone()))
            .collect();
        for (table, reason) in due {
            self.stop_table(&table, &reason).await?;
        }
        Ok(())
    }

    /// Stops taking `table`'s changes (see [`StoppedTables`]), and marks it in the state
    /// record so that it is read again once capture restarts with the cause fixed.
    async fn stop_table(&mut self, table: &TableId, reason: &str) -> Result<(), CaptureError> {
        self.stopped.stop(table, reason);
        self.wanted.remove(table);
        for relation in self.relations.values_mut() {
            if relation
                .codec
                .as_ref()
                .is_some_and(|c| c.table.id == *table)
            {
                relation.codec = None;
                relation.stopped = Some(table.clone());
            }
        }
        if !self.mark_for_reread(table, reason).await? {
            warn!(%table, "with snapshot = \"never\" the changes missed while the table is stopped are not read again");
        }
        Ok(())
    }

    /// Marks `table` in the state record as to be snapshotted again (after a truncate) on the
    /// next start; `false` when there is no state record (`snapshot = "never"`).
    async fn mark_for_reread(
        &mut self,
        table: &TableId,
        reason: &str,
    ) -> Result<bool, CaptureError> {
        let Some(state) = &mut self.state else {
            return Ok(false);
        };
        state.tables.insert(
            table.to_string(),
            TableState::Stopped {
                reason: reason.to_string(),
            },
        );
        let json = state_json(state)?;
        self.publisher.write_state(&json).await?;
        Ok(true)
    }
}

/// The source's identity for its epoch (see [`crate::epoch`]): the cluster's system
/// identifier and the timeline (a new one after a failover or a point-in-time recovery).
async fn identify(repl: &mut ReplicationConnection) -> Result<String, CaptureError> {
    let rows = repl.simple_query("IDENTIFY_SYSTEM").await?;
    let row = rows
        .first()
        .ok_or_else(|| CaptureError::Definite("IDENTIFY_SYSTEM answered no row".into()))?;
    let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    Ok(format!(
        "postgres system {} timeline {}",
        field(0),
        field(1)
    ))
}

/// The system identifier and timeline of an identity ([`identify`]).
fn system_and_timeline(identity: &str) -> Option<(&str, u32)> {
    let (system, timeline) = identity
        .strip_prefix("postgres system ")?
        .split_once(" timeline ")?;
    Some((system, timeline.parse().ok()?))
}

/// The server's timeline history (`TIMELINE_HISTORY`): for each earlier timeline of its
/// lineage, the point where the next one branched off it. Empty on timeline 1.
async fn timeline_history(
    repl: &mut ReplicationConnection,
    identity: &str,
) -> Result<Vec<(u32, u64)>, CaptureError> {
    let Some((_, timeline)) = system_and_timeline(identity).filter(|(_, t)| *t > 1) else {
        return Ok(Vec::new());
    };
    let rows = repl
        .simple_query(&format!("TIMELINE_HISTORY {timeline}"))
        .await?;
    let content = rows
        .first()
        .and_then(|r| r.get(1).cloned().flatten())
        .unwrap_or_default();
    Ok(parse_history(&content))
}

/// The lines of a timeline history file: `<parent timeline> <switch point> <reason>`.
fn parse_history(content: &str) -> Vec<(u32, u64)> {
    content
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let parent = fields.next()?.parse().ok()?;
            let switch = super::replication::parse_lsn(fields.next()?)?;
            Some((parent, switch))
        })
        .collect()
}

/// When the source is the cluster capture last read (`stored`) promoted since to a later
/// timeline of the same lineage: where the timeline capture read ended, below which the WAL
/// is the same on both (see [`crate::epoch`]).
fn promotion_point(stored: Option<&str>, identity: &str, history: &[(u32, u64)]) -> Option<u64> {
    let (old_system, old_timeline) = system_and_timeline(stored?)?;
    let (system, timeline) = system_and_timeline(identity)?;
    if old_system != system || timeline <= old_timeline {
        return None;
    }
    history
        .iter()
        .find(|(parent, _)| *parent == old_timeline)
        .map(|(_, switch)| *switch)
}

/// [`Catalog::partitions`] of `tables` (configured), read under their names now and keyed by
/// the configured ones.
async fn partitions_of(
    client: &tokio_postgres::Client,
    names: &Names,
    tables: &[TableId],
    known: &HashMap<TableId, std::collections::BTreeSet<u32>>,
    probe: bool,
) -> Result<HashMap<TableId, HashMap<u32, bool>>, CaptureError> {
    let known_now: HashMap<TableId, std::collections::BTreeSet<u32>> = known
        .iter()
        .map(|(t, p)| (names.now(t).clone(), p.clone()))
        .collect();
    Ok(
        Catalog::partitions(client, &names.all_now(tables), &known_now, probe)
            .await?
            .into_iter()
            .map(|(t, p)| (names.configured(&t), p))
            .collect(),
    )
}

/// Why a renamed table stops, and the fix.
fn renamed_reason(source: &str, old: &TableId, new: &TableId) -> String {
    format!(
        "{old} was renamed to {new}: put `{new}` in place of `{old}` in sources.{source}.tables \
         and restart (its topic and sink table take the new name, and it is read anew)"
    )
}

fn state_json(state: &CaptureState) -> Result<String, CaptureError> {
    serde_json::to_string(state)
        .map_err(|e| CaptureError::Definite(format!("capture state does not serialize: {e}")))
}

fn key_of<'a>(codec: &'a EnvelopeCodec, row: &'a [Datum]) -> Vec<&'a Datum> {
    codec
        .table
        .columns
        .iter()
        .zip(row)
        .filter(|(c, _)| c.key)
        .map(|(_, d)| d)
        .collect()
}

/// How to connect to a source: the `tokio-postgres` config (with TLS) and our walsender's.
fn connect_params(
    name: &str,
    config: &PostgresSourceConfig,
    password: Option<&str>,
) -> Result<(PgConnector, ConnectParams), CaptureError> {
    let mut pg: tokio_postgres::Config = config.url.parse().map_err(|e| {
        CaptureError::Definite(format!(
            "sources.{name}.url is not a valid connection string: {e}"
        ))
    })?;
    if let Some(pw) = &password {
        pg.password(pw);
    }
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => {
            return Err(CaptureError::Definite(format!(
                "sources.{name}.url must name a TCP host (unix sockets are not supported yet)"
            )))
        }
    };
    let tls = config
        .tls
        .client_config(&format!("sources.{name}.tls"))
        .map_err(CaptureError::Definite)?;
    if tls.is_none() && pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(CaptureError::Definite(format!(
            "sources.{name}.url asks for sslmode=require; configure TLS in [sources.{name}.tls] instead \
             (mode = \"verify-full\" and ca_file), which applies to every connection capture makes"
        )));
    }
    let tls_name = match &tls {
        Some(_) => Some(
            crate::tls::server_name(&host)
                .map_err(|e| CaptureError::Definite(format!("sources.{name}.url: {e}")))?,
        ),
        None => None,
    };
    let params = ConnectParams {
        tls: tls.clone().zip(tls_name),
        host,
        port: pg.get_ports().first().copied().unwrap_or(5432),
        user: pg.get_user().unwrap_or("postgres").to_string(),
        password: pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        dbname: pg
            .get_dbname()
            .or(pg.get_user())
            .unwrap_or("postgres")
            .to_string(),
        application_name: format!("sluice-{name}"),
    };
    Ok((PgConnector { config: pg, tls }, params))
}

/// The current schema of each configured table, read from the source's catalog as capture
/// will describe them (for `sluice schemes generate` and `check`).
pub async fn describe(
    name: &str,
    config: &PostgresSourceConfig,
    password: Option<&str>,
) -> Result<Vec<TableSchema>, CaptureError> {
    let tables = config
        .table_ids()
        .map_err(|e| CaptureError::Definite(format!("sources.{name}.tables: {e}")))?;
    let (pg, _) = connect_params(name, config, password)?;
    let (client, conn_task) = pg.connect().await?;
    let mut catalog = Catalog::default();
    let mut out = Vec::with_capacity(tables.len());
    for id in tables {
        let columns = Catalog::relation_columns(&client, &id, Some(&config.publication)).await?;
        out.push(catalog.table_schema(&client, id, &columns).await?);
    }
    conn_task.abort();
    Ok(out)
}

impl crate::source::Source for PostgresSourceConfig {
    fn table_ids(&self) -> Result<Vec<TableId>, String> {
        PostgresSourceConfig::table_ids(self)
    }

    fn topic_prefix(&self) -> Option<&str> {
        self.topic_prefix.as_deref()
    }

    fn validate(&self, name: &str, problems: &mut Vec<String>) {
        if self.tables.is_empty() {
            problems.push(format!(
                "sources.{name}.tables must list at least one \"schema.table\""
            ));
        }
        if self.snapshot_parallelism == 0 {
            problems.push(format!("sources.{name}.snapshot_parallelism must be > 0"));
        }
        if let Err(e) = PostgresSourceConfig::table_ids(self) {
            problems.push(format!("sources.{name}.tables: {e}"));
        }
        if let Err(e) = self.tls.client_config(&format!("sources.{name}.tls")) {
            problems.push(e);
        }
        for (field, value) in [("slot", &self.slot), ("publication", &self.publication)] {
            if value.is_empty()
                || value.len() > 63
                || !value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                problems.push(format!(
                    "sources.{name}.{field} must be 1-63 characters of a-z, 0-9 and '_' (got \"{value}\")"
                ));
            }
        }
    }

    fn reset_state(&self, epoch: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "slot": self.slot,
            "tables": crate::source::tables_started(&self.tables),
            "epoch": epoch,
        })
    }

    async fn describe(
        &self,
        name: &str,
        password: Option<&str>,
    ) -> Result<Vec<TableSchema>, CaptureError> {
        describe(name, self, password).await
    }

    async fn run(
        capture: PostgresCapture,
        shutdown: CancellationToken,
    ) -> Result<(), CaptureError> {
        capture.run(shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_is_recognized_by_the_timeline_history_and_nothing_else_is() {
        let history = parse_history(
            "1\t0/3000158\tno recovery target specified\n2\t0/5000000\tbefore 2026\n",
        );
        assert_eq!(history, [(1, 0x300_0158), (2, 0x500_0000)]);
        let (one, three) = (
            "postgres system 7 timeline 1",
            "postgres system 7 timeline 3",
        );
        // Read on timeline 1, now on 3: shared up to where 1 ended.
        assert_eq!(
            promotion_point(Some(one), three, &history),
            Some(0x300_0158)
        );
        // Another cluster, the same timeline, an older timeline, nothing stored: no promotion.
        assert_eq!(
            promotion_point(Some("postgres system 8 timeline 1"), three, &history),
            None
        );
        assert_eq!(promotion_point(Some(three), three, &history), None);
        assert_eq!(promotion_point(Some(three), one, &[]), None);
        assert_eq!(promotion_point(None, three, &history), None);
        // A timeline not in the lineage (a sibling branch): no shared history is assumed.
        assert_eq!(
            promotion_point(
                Some("postgres system 7 timeline 4"),
                "postgres system 7 timeline 5",
                &history
            ),
            None
        );
    }
}
