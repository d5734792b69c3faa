//! The MySQL/MariaDB capture loop: preflight, a consistent snapshot without global locks
//! on MariaDB (`START TRANSACTION WITH CONSISTENT SNAPSHOT` and
//! `binlog_snapshot_file/position`; MySQL: a brief global read lock),
//! then the binlog as a replica from the checkpoint, which advances only past events Kafka has
//! acknowledged.
//!
//! Row images are decoded with the table map that precedes them, which (with
//! `binlog_row_metadata = FULL`) names every column, its signedness, charset, ENUM/SET members
//! and the primary key: the binlog carries its own schema history, so rows before and after an
//! `ALTER TABLE` decode with the columns they were written with, also when capture restarts in
//! the middle of that history.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts, OptsBuilder, Row, Value};
use serde::{Deserialize, Serialize};
use sluice_schemas::avro::Connector;
use sluice_schemas::event::{unix_now_us, BinlogSource};
use sluice_schemas::{
    ChangeEvent, Column, Datum, EnvelopeCodec, Op, Position, SourceInfo, TableId, TableSchema,
    TxInfo,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, Instrument};

use super::rows::{Cell, Images, RowImages};
use super::types::{self, BinlogColumn, Charset, Collations};
use crate::epoch::Epoch;
use crate::metrics as m;
use crate::postgres::state::{read_latest_state, TableState};
use crate::postgres::SnapshotMode;
use crate::publisher::{AckHandle, Publisher};
use crate::spill::{Budget, Held, SpillConfig};
use crate::tls::TlsConfig;
use crate::CaptureError;

const STATE_INTERVAL: Duration = Duration::from_secs(1);
/// MariaDB's GTID event type (sent when `@mariadb_slave_capability = 4`).
const MARIADB_GTID_EVENT: u8 = 162;

/// A MySQL/MariaDB source (`[sources.<name>]` with `kind = "mysql"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// `mysql://user@host:port`. The user needs REPLICATION SLAVE and REPLICATION CLIENT
    /// (MariaDB: BINLOG MONITOR) and SELECT on the tables. The password may instead come
    /// from `SLUICE_SOURCES_<NAME>_PASSWORD`.
    pub url: String,
    /// Tables to capture, as `database.table`.
    pub tables: Vec<String>,
    /// Prefix of this source's table topics (Debezium's `topic.prefix`): topics are
    /// `<topic_prefix>.<schema>.<table>` (MySQL: `<topic_prefix>.<database>.<table>`).
    /// Default: `<kafka.topic_prefix>.<source name>`, so two sources never share a topic.
    /// Set it to `kafka.topic_prefix`'s value to keep publishing to the topics of a
    /// deployment made before topic names carried the source (capture refuses to start
    /// without it while such topics exist).
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// The replica `server_id` Sluice registers with; unique among the server's replicas.
    pub server_id: u32,
    /// `initial` (default) or `never`.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// TLS to the source (`mode`, `ca_file`, `cert_file`, `key_file`), as for PostgreSQL.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Where the changes of XA transactions wait for their commit: memory, then a file.
    #[serde(default)]
    pub spill: SpillConfig,
}

impl MysqlSourceConfig {
    /// The configured tables, parsed; the error names the bad entry.
    pub fn table_ids(&self) -> Result<Vec<TableId>, String> {
        self.tables
            .iter()
            .map(|t| {
                TableId::parse(t).ok_or_else(|| format!("`{t}` is not of the form database.table"))
            })
            .collect()
    }
}

/// A binlog position as one totally ordered number: file sequence in the top 24 bits, offset
/// in the lower 40 (binlog files stay far below 1 TiB). It is what the publisher's checkpoints
/// carry.
fn pack(file_seq: u32, pos: u64) -> u64 {
    (u64::from(file_seq) << 40) | (pos & ((1 << 40) - 1))
}

fn unpack(packed: u64) -> (u32, u64) {
    ((packed >> 40) as u32, packed & ((1 << 40) - 1))
}

/// `binlog.000042` → (`binlog`, 42).
fn split_file(name: &str) -> Option<(&str, u32)> {
    let (base, seq) = name.rsplit_once('.')?;
    Some((base, seq.parse().ok()?))
}

fn file_name(base: &str, seq: u32) -> String {
    format!("{base}.{seq:06}")
}

/// What survives restarts, in the compacted state topic keyed by source name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MysqlState {
    /// Binlog file base name (`binlog` of `binlog.000042`).
    file_base: String,
    /// Where streaming resumes: a transaction boundary, packed (see [`pack`]).
    position: Option<u64>,
    /// The GTID of the last transaction before `position`, for operators.
    gtid: Option<String>,
    /// Snapshot progress by `database.table`; `snapshot_lsn` is the packed snapshot position.
    tables: BTreeMap<String, TableState>,
    /// The `kafka.topic_prefix` of the capture that wrote the record (absent in records
    /// written before it was kept). State is keyed by source name alone, so two deployments
    /// sharing a Kafka cluster and a source name would otherwise take each other's position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic_prefix: Option<String>,
    /// The source epoch capture publishes in (absent in records written before epochs were
    /// kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<Epoch>,
}

impl MysqlState {
    /// Refuses a state record another deployment wrote, then claims the record as this one's.
    fn claim(&mut self, source: &str, state_topic: &str, prefix: &str) -> Result<(), CaptureError> {
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

/// A running capture of one source of this kind.
pub type MysqlCapture = crate::Capture<MysqlSourceConfig>;

impl MysqlCapture {
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

    fn opts(&self) -> Result<Opts, CaptureError> {
        opts(&self.name, &self.config, self.password.as_deref())
    }

    async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), CaptureError> {
        let tables = self
            .config
            .table_ids()
            .map_err(|e| CaptureError::Definite(format!("sources.{}.tables: {e}", self.name)))?;
        let opts = self.opts()?;
        let mut conn = Conn::new(opts.clone()).await.map_err(mysql_error)?;
        let server_id = preflight(&mut conn, &tables, self.config.server_id).await?;
        let collations = load_collations(&mut conn).await?;
        // The state topic must exist before it is read.
        let (mut publisher, acks) = Publisher::new(&self.kafka, self.settings.clone(), 0)?;
        publisher.prepare().await?;
        publisher.refuse_legacy_topics(&tables).await?;
        let stored = read_latest_state(&self.kafka, &self.settings.state_topic, &self.name).await?;
        let existed = stored.is_some();
        let mut state = match stored {
            None => MysqlState::default(),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CaptureError::Definite(format!(
                    "the capture state of source {} is unreadable ({e}); delete that record to re-snapshot",
                    self.name
                ))
            })?,
        };
        state.claim(
            &self.name,
            &self.settings.state_topic,
            &self.settings.topic_prefix,
        )?;
        // The source epoch, decided and recorded before anything is published in it.
        let identity = identify(&mut conn).await?;
        let (epoch, changed) = Epoch::decide(&self.name, state.epoch.as_ref(), existed, &identity);
        publisher.set_epoch(&epoch);
        state.epoch = Some(epoch);
        if changed {
            publisher
                .write_state(&serde_json::to_string(&state).expect("state serializes"))
                .await?;
        }

        let pending: Vec<TableId> = tables
            .iter()
            .filter(|t| {
                !matches!(
                    state.tables.get(&t.to_string()),
                    Some(TableState::Done { .. })
                )
            })
            .cloned()
            .collect();
        let snapshot_wanted = self.config.snapshot == SnapshotMode::Initial && !pending.is_empty();
        if snapshot_wanted {
            let snapshot = Snapshot {
                capture: self,
                server_id,
            };
            snapshot
                .run(&mut conn, &pending, &mut state, &mut publisher, shutdown)
                .await?;
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
        if state.position.is_none() {
            // Never snapshotted (snapshot = "never"): start at the server's current position.
            let (file, pos) = master_status(&mut conn).await?;
            let (base, seq) = split_file(&file).ok_or_else(|| {
                CaptureError::Definite(format!("unexpected binlog file name `{file}`"))
            })?;
            state.file_base = base.to_string();
            state.position = Some(pack(seq, pos));
            publisher
                .write_state(&serde_json::to_string(&state).expect("state serializes"))
                .await?;
        }
        drop(conn);
        let mut stream = Stream {
            capture: self,
            collations,
            state,
            publisher,
            acks,
            tables: tables.iter().map(|t| t.to_string()).collect(),
            maps: HashMap::new(),
            codecs: HashMap::new(),
            xa: None,
            prepared: Vec::new(),
            held: Budget::new(&self.name, &self.config.spill),
            gtids: VecDeque::new(),
            written: 0,
            catalog: None,
            opts: opts.clone(),
            name: Arc::from(self.name.as_str()),
        };
        stream.run(opts, shutdown).await
    }
}

fn mysql_error(e: mysql_async::Error) -> CaptureError {
    CaptureError::Mysql(e)
}

/// Checks what binlog capture needs; returns the source's `server_id`.
async fn preflight(
    conn: &mut Conn,
    tables: &[TableId],
    replica_id: u32,
) -> Result<u32, CaptureError> {
    let row: Row = conn
        .query_first(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@server_id",
        )
        .await
        .map_err(mysql_error)?
        .ok_or_else(|| CaptureError::Definite("the server returned no settings".into()))?;
    let get = |i: usize| -> String {
        match row.as_ref(i) {
            Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::Int(v)) => v.to_string(),
            Some(Value::UInt(v)) => v.to_string(),
            _ => String::new(),
        }
    };
    let mut problems = Vec::new();
    if get(0) != "1" {
        problems.push(
            "the binary log is off: start the server with log_bin (e.g. log-bin=mysql-bin)"
                .to_string(),
        );
    }
    for (i, name, want) in [
        (1, "binlog_format", "ROW"),
        (2, "binlog_row_image", "FULL"),
        (3, "binlog_row_metadata", "FULL"),
    ] {
        if !get(i).eq_ignore_ascii_case(want) {
            problems.push(format!(
                "{name} is {} but must be {want}: SET GLOBAL {name} = '{want}' and put it in the server's config",
                get(i)
            ));
        }
    }
    let server_id: u32 = get(4).parse().unwrap_or(0);
    if server_id == replica_id {
        problems.push(format!(
            "server_id = {replica_id} is the source's own server_id; give Sluice a different one"
        ));
    }
    if let Err(e) = conn.query_drop("SHOW BINARY LOGS").await {
        problems.push(format!(
            "cannot list binary logs ({e}): GRANT REPLICATION CLIENT (MariaDB 10.5+: BINLOG MONITOR) and REPLICATION SLAVE ON *.* TO the user"
        ));
    }
    for t in tables {
        let key: Option<(u64, u64)> = conn
            .exec_first(
                "SELECT COUNT(*), SUM(COLUMN_KEY = 'PRI') FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&t.namespace, &t.name),
            )
            .await
            .map_err(mysql_error)?
            .map(|(n, k): (u64, Option<u64>)| (n, k.unwrap_or(0)));
        match key {
            None | Some((0, _)) => problems.push(format!(
                "table {t} does not exist (or the user cannot see it): check sources.*.tables"
            )),
            Some((_, 0)) => problems.push(format!(
                "table {t} has no primary key, so its rows cannot be told apart: add one"
            )),
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(server_id)
    } else {
        Err(CaptureError::Definite(format!(
            "the source is not ready for capture:\n  - {}",
            problems.join("\n  - ")
        )))
    }
}

async fn load_collations(conn: &mut Conn) -> Result<Collations, CaptureError> {
    // MariaDB lists some collations without an id or character set.
    let rows: Vec<(Option<u64>, Option<String>)> = conn
        .query("SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS")
        .await
        .map_err(mysql_error)?;
    Ok(Collations(
        rows.into_iter()
            .filter_map(|(id, cs)| Some((u16::try_from(id?).ok()?, Charset::from_name(&cs?))))
            .collect(),
    ))
}

/// The source's identity for its epoch (see [`crate::epoch`]): server id, UUID (MySQL; none
/// in MariaDB) and binlog base name — another server after a failover, or a rebuilt one.
async fn identify(conn: &mut Conn) -> Result<String, CaptureError> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
             ('server_id', 'server_uuid', 'log_bin_basename')",
        )
        .await
        .map_err(mysql_error)?;
    let mut parts: Vec<String> = rows.into_iter().map(|(k, v)| format!("{k} {v}")).collect();
    parts.sort();
    Ok(format!("mysql {}", parts.join(" ")))
}

async fn master_status(conn: &mut Conn) -> Result<(String, u64), CaptureError> {
    // MySQL 8.4 renamed it; MariaDB and older MySQL know only the first.
    let row: Row = match conn.query_first("SHOW MASTER STATUS").await {
        Ok(row) => row,
        Err(mysql_async::Error::Server(_)) => conn
            .query_first("SHOW BINARY LOG STATUS")
            .await
            .map_err(mysql_error)?,
        Err(e) => return Err(mysql_error(e)),
    }
    .ok_or_else(|| {
        CaptureError::Definite("SHOW MASTER STATUS returned nothing: is log_bin on?".into())
    })?;
    let file: String = row.get(0).unwrap_or_default();
    let pos: u64 = row.get(1).unwrap_or(4);
    Ok((file, pos))
}

/// Starts the snapshot transaction and returns the binlog position it is consistent with.
///
/// MariaDB reports that position for a `WITH CONSISTENT SNAPSHOT` transaction in
/// `binlog_snapshot_file/position`, taking no lock. MySQL has no such status: there the
/// position is read under a brief `FLUSH TABLES WITH READ LOCK` (writes wait for milliseconds,
/// while the transaction starts), which needs the RELOAD privilege. The MySQL path is not
/// verified live (no MySQL server on our machines).
async fn consistent_snapshot(conn: &mut Conn) -> Result<(String, u64), CaptureError> {
    let has_snapshot_status = !conn
        .query::<Row, _>("SHOW STATUS LIKE 'binlog_snapshot_file'")
        .await
        .map_err(mysql_error)?
        .is_empty();
    if !has_snapshot_status {
        conn.query_drop("FLUSH TABLES WITH READ LOCK")
            .await
            .map_err(|e| match e {
                mysql_async::Error::Server(s) if s.code == 1227 => CaptureError::Definite(format!(
                    "the snapshot needs a brief global read lock on MySQL: GRANT RELOAD ON *.* to the user ({})",
                    s.message
                )),
                other => mysql_error(other),
            })?;
        let started = async {
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                .await
                .map_err(mysql_error)?;
            master_status(conn).await
        }
        .await;
        conn.query_drop("UNLOCK TABLES")
            .await
            .map_err(mysql_error)?;
        return started;
    }
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .await
        .map_err(mysql_error)?;
    let status: Vec<(String, String)> = conn
        .query("SHOW STATUS WHERE Variable_name IN ('binlog_snapshot_file', 'binlog_snapshot_position')")
        .await
        .map_err(mysql_error)?;
    let status: HashMap<String, String> = status
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    match (
        status.get("binlog_snapshot_file"),
        status
            .get("binlog_snapshot_position")
            .and_then(|p| p.parse::<u64>().ok()),
    ) {
        (Some(f), Some(p)) if !f.is_empty() => Ok((f.clone(), p)),
        _ => Err(CaptureError::Definite(
            "the server reports no binlog_snapshot_file/position for the snapshot: is log_bin on?"
                .into(),
        )),
    }
}

/// The table schema from `information_schema`, as the table map will describe it.
async fn catalog_schema(
    conn: &mut Conn,
    id: &TableId,
) -> Result<(TableSchema, Vec<String>), CaptureError> {
    type ColumnRow = (
        String,
        String,
        String,
        Option<String>,
        Option<u64>,
        Option<u64>,
        String,
        Option<String>,
    );
    let rows: Vec<ColumnRow> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, NUMERIC_PRECISION, NUMERIC_SCALE, COLUMN_KEY, COLUMN_DEFAULT \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&id.namespace, &id.name),
        )
        .await
        .map_err(mysql_error)?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut selects = Vec::with_capacity(rows.len());
    for (name, data_type, column_type, charset, precision, scale, key, default) in rows {
        let sql_type = types::schema_sql_type(
            &data_type,
            &column_type,
            charset.as_deref(),
            precision,
            scale,
        );
        let quoted = format!("`{}`", name.replace('`', "``"));
        // Text forms the converter reads back exactly.
        selects.push(match data_type.as_str() {
            "float" => format!("CAST({quoted} AS DOUBLE)"),
            "bit" => {
                let bits = column_type.trim_start_matches("bit(").trim_end_matches(')');
                format!("LPAD(BIN({quoted}), {bits}, '0')")
            }
            "timestamp" => format!("DATE_FORMAT({quoted}, '%Y-%m-%d %H:%i:%s.%f')"),
            "datetime" => format!("DATE_FORMAT({quoted}, '%Y-%m-%d %H:%i:%s.%f')"),
            _ => quoted,
        });
        columns.push(Column {
            name,
            sql_type,
            key: key == "PRI",
            missing: types::default_literal(default.as_deref()),
        });
    }
    Ok((
        TableSchema {
            id: id.clone(),
            columns,
        },
        selects,
    ))
}

struct Snapshot<'a> {
    capture: &'a MysqlCapture,
    server_id: u32,
}

impl Snapshot<'_> {
    /// Reads `tables` in one consistent snapshot, positioned at the binlog point it matches.
    async fn run(
        &self,
        conn: &mut Conn,
        tables: &[TableId],
        state: &mut MysqlState,
        publisher: &mut Publisher,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
        let source = self.capture.name.clone();
        conn.query_drop("SET SESSION time_zone = '+00:00'")
            .await
            .map_err(mysql_error)?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(mysql_error)?;
        let (file, pos) = consistent_snapshot(conn).await?;
        let (base, seq) = split_file(&file).ok_or_else(|| {
            CaptureError::Definite(format!("unexpected binlog file name `{file}`"))
        })?;
        if state.file_base.is_empty() {
            state.file_base = base.to_string();
        }
        let snap = pack(seq, pos);
        info!(tables = tables.len(), file = %file, pos, "starting snapshot");
        let remaining = metrics::gauge!(m::SNAPSHOT_TABLES_REMAINING, "source" => source.clone());
        remaining.set(tables.len() as f64);
        for table in tables {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let key = table.to_string();
            let (schema, selects) = catalog_schema(conn, table).await?;
            let schema = Arc::new(schema);
            let codec = EnvelopeCodec::new(
                &self.capture.settings.topic_prefix,
                &source,
                Connector::Mysql,
                schema.clone(),
            )?;
            if matches!(
                state.tables.get(&key),
                Some(TableState::Started | TableState::Stopped { .. })
            ) {
                // Rows of an unfinished earlier attempt may be in the topic: clear them first.
                let event = ChangeEvent {
                    table: schema.clone(),
                    op: Op::Truncate,
                    before: None,
                    after: None,
                    source: self.source_info(table, &file, pos),
                    transaction: None,
                    position: Position::mysql(seq, pos, 0),
                };
                publisher.publish(&codec, &event).await?;
            }
            state.tables.insert(key.clone(), TableState::Started);
            publisher
                .write_state(&serde_json::to_string(&*state).expect("state serializes"))
                .await?;
            info!(%table, "snapshotting table");
            // InnoDB's estimate; NULL for views and some engines.
            let estimate: Option<Option<u64>> = conn
                .exec_first(
                    "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (table.namespace.as_str(), table.name.as_str()),
                )
                .await
                .map_err(mysql_error)?;
            m::snapshot_started(&source, &key, estimate.flatten().map(|r| r as f64));
            let rows_counter = metrics::counter!(m::SNAPSHOT_ROWS_TOTAL, "source" => source.clone(), "table" => key.clone());
            let sql = format!(
                "SELECT {} FROM `{}`.`{}`",
                selects.join(", "),
                table.namespace.replace('`', "``"),
                table.name.replace('`', "``")
            );
            // One source block per table: every row of the snapshot shares it.
            let row_source = self.source_info(table, &file, pos);
            let mut result = conn.query_iter(sql).await.map_err(mysql_error)?;
            let mut n: u64 = 0;
            let mut stream = result
                .stream::<Row>()
                .await
                .map_err(mysql_error)?
                .ok_or_else(|| CaptureError::Definite(format!("no result reading {table}")))?;
            while let Some(row) = stream.next().await {
                let row = row.map_err(mysql_error)?;
                let values = row.unwrap();
                let mut after = Vec::with_capacity(values.len());
                for (value, column) in values.into_iter().zip(&schema.columns) {
                    after.push(
                        types::text_datum(&column.sql_type, value).unwrap_or_else(|e| {
                            value_error(&source, table, &column.name, &e);
                            Datum::Null
                        }),
                    );
                }
                n += 1;
                let event = ChangeEvent {
                    table: schema.clone(),
                    op: Op::Read,
                    before: None,
                    after: Some(after),
                    source: row_source.clone(),
                    transaction: None,
                    // Below every streamed change (those end past `pos`), in read order.
                    position: Position::mysql(seq, pos, n),
                };
                publisher.publish(&codec, &event).await?;
                rows_counter.increment(1);
            }
            drop(stream);
            publisher.barrier().await?;
            state
                .tables
                .insert(key.clone(), TableState::Done { snapshot_lsn: snap });
            if state.position.is_none() {
                state.position = Some(snap);
            }
            publisher
                .write_state(&serde_json::to_string(&*state).expect("state serializes"))
                .await?;
            remaining.decrement(1.0);
            m::snapshot_finished(&source, &key, n);
            info!(%table, rows = n, "table snapshot finished");
        }
        conn.query_drop("COMMIT").await.map_err(mysql_error)?;
        info!("snapshot finished");
        Ok(())
    }

    fn source_info(&self, table: &TableId, file: &str, pos: u64) -> SourceInfo {
        SourceInfo {
            name: Arc::from(self.capture.name.as_str()),
            db: Arc::from(table.namespace.as_str()),
            ts_us: unix_now_us(),
            snapshot: true,
            tx_id: None,
            lsn: None,
            sequence: None,
            binlog: Some(BinlogSource {
                server_id: i64::from(self.server_id),
                gtid: None,
                file: Arc::from(file),
                pos: pos as i64,
                row: 0,
            }),
        }
    }
}

fn value_error(source: &str, table: &TableId, column: &str, error: &str) {
    metrics::counter!(m::ERRORS_TOTAL, "source" => source.to_string(), "kind" => "value")
        .increment(1);
    error!(%table, column, error, "value could not be converted; sent as NULL");
}

/// A table seen in a table map: its columns and the codec of that version.
struct Mapped {
    id: TableId,
    /// `database.table`, and the database as the envelope's `source.db`: made once per table
    /// map, shared by every event.
    key: String,
    db: Arc<str>,
    columns: Vec<BinlogColumn>,
    codec: Arc<EnvelopeCodec>,
}

/// The transaction being read.
#[derive(Default)]
struct Tx {
    gtid: Option<Arc<str>>,
    id: Option<Arc<str>>,
    index: i64,
    /// Events per table (by table-map id) so far, for `data_collection_order`.
    per_table: HashMap<u64, i64>,
}

/// The changes of an XA transaction, held from `XA START` until `XA COMMIT` (published then,
/// at the commit's position) or `XA ROLLBACK` (dropped), in memory within the source's
/// `spill.memory_mb` and in a file past it. Checkpoints stay at or before `start` while it is
/// open or prepared, so a restart reads it again.
struct XaTransaction {
    xid: String,
    /// The checkpoint before its `XA START`.
    start: u64,
    events: Held,
}

/// The XA statements the binlog carries, with their xid (as the server writes it).
#[derive(Debug, PartialEq, Eq)]
enum XaStatement {
    Start(String),
    End(String),
    Commit { xid: String, one_phase: bool },
    Rollback(String),
}

/// The xid of a MariaDB GTID event that starts an XA transaction's prepared part
/// (`FL_PREPARED_XA`), written as the server writes it in `XA COMMIT` / `XA ROLLBACK`
/// queries: `X'<gtrid>',X'<bqual>',<formatID>`.
fn mariadb_prepared_xa(data: &[u8]) -> Option<String> {
    const FL_GROUP_COMMIT_ID: u8 = 2;
    const FL_PREPARED_XA: u8 = 64;
    let flags = *data.get(12)?;
    if flags & FL_PREPARED_XA == 0 {
        return None;
    }
    let mut at = 13
        + if flags & FL_GROUP_COMMIT_ID != 0 {
            8
        } else {
            0
        };
    let format_id = i32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?);
    let gtrid_len = usize::from(*data.get(at + 4)?);
    let bqual_len = usize::from(*data.get(at + 5)?);
    at += 6;
    let gtrid = data.get(at..at + gtrid_len)?;
    let bqual = data.get(at + gtrid_len..at + gtrid_len + bqual_len)?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    Some(format!("X'{}',X'{}',{format_id}", hex(gtrid), hex(bqual)))
}

/// Parses `XA START|BEGIN|END|COMMIT|ROLLBACK xid [ONE PHASE]`.
fn xa_statement(query: &str) -> Option<XaStatement> {
    let rest = strip_word(query, "XA")?;
    let verb = rest.split_whitespace().next()?;
    let xid = rest[verb.len()..].trim();
    Some(match verb.to_ascii_uppercase().as_str() {
        "START" | "BEGIN" => XaStatement::Start(xid.to_string()),
        "END" => XaStatement::End(xid.trim_end_matches(" SUSPEND").to_string()),
        "COMMIT" => {
            let upper = xid.to_ascii_uppercase();
            let one_phase = upper.ends_with(" ONE PHASE");
            let xid = if one_phase {
                &xid[..xid.len() - " ONE PHASE".len()]
            } else {
                xid
            };
            XaStatement::Commit {
                xid: xid.trim().to_string(),
                one_phase,
            }
        }
        "ROLLBACK" => XaStatement::Rollback(xid.to_string()),
        _ => return None,
    })
}

/// `query` after its first word when that word is `word` (any case).
fn strip_word<'q>(query: &'q str, word: &str) -> Option<&'q str> {
    let query = query.trim_start();
    let head = query.get(..word.len())?;
    let rest = &query[word.len()..];
    (head.eq_ignore_ascii_case(word) && rest.starts_with(char::is_whitespace)).then(|| rest.trim())
}

/// Statements inside a transaction that do not end it.
fn is_savepoint_statement(query: &str) -> bool {
    strip_word(query, "SAVEPOINT").is_some()
        || strip_word(query, "RELEASE").is_some()
        || strip_word(query, "ROLLBACK").is_some_and(|rest| {
            strip_word(rest, "TO").is_some()
                || strip_word(rest, "WORK").is_some_and(|r| strip_word(r, "TO").is_some())
        })
}

struct Stream<'a> {
    capture: &'a MysqlCapture,
    /// The source name, shared by every event.
    name: Arc<str>,
    collations: Collations,
    state: MysqlState,
    publisher: Publisher,
    acks: AckHandle,
    tables: HashSet<String>,
    /// Table maps by table id: the table's name and width, and how it is captured (None: a
    /// table not captured).
    maps: HashMap<u64, (TableId, u64, Option<Mapped>)>,
    /// The XA transaction being read (between `XA START` and `XA END`): its changes wait
    /// until it commits.
    xa: Option<XaTransaction>,
    /// XA transactions prepared and not yet committed or rolled back, by xid.
    prepared: Vec<XaTransaction>,
    /// The memory the XA transactions' changes may hold, all together.
    held: Budget,
    /// Codecs by table and column layout, so repeated table maps reuse them.
    codecs: HashMap<(String, String), Arc<EnvelopeCodec>>,
    /// GTIDs of checkpoints not yet written, oldest first.
    gtids: VecDeque<(u64, Arc<str>)>,
    /// The last checkpoint written to the state topic.
    written: u64,
    /// For catalog lookups while the binlog connection streams (opened when first needed).
    catalog: Option<Conn>,
    opts: Opts,
}

impl Stream<'_> {
    async fn run(&mut self, opts: Opts, shutdown: &CancellationToken) -> Result<(), CaptureError> {
        let source = self.capture.name.clone();
        let start = self
            .state
            .position
            .expect("a start position is set before streaming");
        let (mut seq, pos) = unpack(start);
        self.written = start;
        let mut file: Arc<str> = Arc::from(file_name(&self.state.file_base, seq));
        let mut conn = Conn::new(opts).await.map_err(mysql_error)?;
        // Without this MariaDB replaces its GTID events by dummy queries.
        conn.query_drop("SET @mariadb_slave_capability = 4")
            .await
            .map_err(mysql_error)?;
        // A heartbeat every second while the server has nothing to send: lag then reads 0.
        conn.query_drop("SET @master_heartbeat_period = 1000000000")
            .await
            .map_err(mysql_error)?;
        info!(file = %file, pos, "starting binlog stream");
        let request = BinlogStreamRequest::new(self.capture.config.server_id)
            .with_filename(file.as_bytes())
            .with_pos(pos);
        // The server reports a purged start position when the dump starts or with its first
        // event.
        let resume_from = format!("{file}:{pos}");
        let stream_error = |e: mysql_async::Error| match e {
            mysql_async::Error::Server(s) if s.code == 1236 => CaptureError::Definite(format!(
                "the binlog position {resume_from} is no longer on the server ({}): it was purged \
                 (or the binlog reset) before capture read it. Run `sluice reset-state --config \
                 <file> --source {source}` to re-snapshot in a new source epoch, and keep binlogs \
                 longer (binlog_expire_logs_seconds)",
                s.message
            )),
            other => mysql_error(other),
        };
        let mut binlog = conn
            .get_binlog_stream(request)
            .await
            .map_err(stream_error)?;
        let lag = metrics::gauge!(m::BINLOG_LAG_SECONDS, "source" => source.clone());
        let transactions = metrics::counter!(m::TRANSACTIONS_TOTAL, "source" => source.clone());
        let mut tick = tokio::time::interval(STATE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tx = Tx::default();
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                res = &mut self.acks.task => {
                    return Err(match res {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => CaptureError::Kafka("the acknowledgement task ended".into()),
                        Err(e) => CaptureError::Kafka(format!("the acknowledgement task panicked: {e}")),
                    });
                }
                _ = tick.tick() => {
                    self.write_progress().await?;
                    continue;
                }
                event = binlog.next() => match event {
                    None => return Err(CaptureError::Replication(
                        crate::postgres::replication::ReplicationError::Io(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof, "the server ended the binlog stream")),
                    )),
                    Some(event) => event.map_err(stream_error)?,
                },
            };
            let header = event.header();
            let log_pos = u64::from(header.log_pos());
            if header.timestamp() > 0 {
                lag.set((unix_now_us() / 1_000_000 - i64::from(header.timestamp())).max(0) as f64);
            }
            if header.event_type_raw() == MARIADB_GTID_EVENT {
                let data = event.data();
                if data.len() >= 12 {
                    let seq_no = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
                    let domain = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
                    let gtid: Arc<str> =
                        Arc::from(format!("{domain}-{}-{seq_no}", header.server_id()));
                    // MariaDB starts an XA transaction's prepared part with a GTID event
                    // carrying its xid (no `XA START` query follows).
                    if let Some(xid) = mariadb_prepared_xa(data) {
                        self.xa = Some(XaTransaction {
                            xid,
                            start: self.publisher.last_checkpoint(),
                            events: Held::new(&self.held),
                        });
                    }
                    tx = Tx {
                        id: Some(gtid.clone()),
                        gtid: Some(gtid),
                        ..Tx::default()
                    };
                }
                continue;
            }
            let Some(data) = event.read_data().map_err(|e| {
                CaptureError::Definite(format!("undecodable binlog event at {file}:{log_pos}: {e}"))
            })?
            else {
                continue;
            };
            match data {
                EventData::RotateEvent(r) => {
                    let name = r.name().into_owned();
                    if let Some((base, s)) = split_file(&name) {
                        self.state.file_base = base.to_string();
                        seq = s;
                        file = Arc::from(name);
                    }
                }
                EventData::TableMapEvent(tme) => {
                    // A table map repeats before every transaction touching the table; the
                    // server gives a table a new id when its definition changes, so the same
                    // id (and name, and width) means the columns are already known.
                    // Compared by name for tables not captured too: after a server restart
                    // (in binlog written before and after it) an id names another table.
                    let known = self
                        .maps
                        .get(&tme.table_id())
                        .is_some_and(|(id, width, _)| {
                            id.namespace == tme.database_name()
                                && id.name == tme.table_name()
                                && *width == tme.columns_count()
                        });
                    if known {
                        continue;
                    }
                    let id = TableId::new(
                        tme.database_name().into_owned(),
                        tme.table_name().into_owned(),
                    );
                    let mapped = if self.tables.contains(&id.to_string()) {
                        let (columns, key) = types::table_map_columns(&tme, &self.collations)
                            .map_err(|e| CaptureError::Definite(e.to_string()))?;
                        // After a definition change that kept the columns (FLUSH, a new
                        // index), the codec is reused: the catalog is asked only when the
                        // columns change.
                        let bare = types::table_schema(id.clone(), &columns, &key, &HashMap::new());
                        let layout = format!("{:?}", bare.columns);
                        let codec = match self.codecs.get(&(id.to_string(), layout.clone())) {
                            Some(c) => c.clone(),
                            None => {
                                let catalog = self.column_catalog(&id).await?;
                                let schema =
                                    types::table_schema(id.clone(), &columns, &key, &catalog);
                                let c = Arc::new(EnvelopeCodec::new(
                                    &self.capture.settings.topic_prefix,
                                    &source,
                                    Connector::Mysql,
                                    Arc::new(schema),
                                )?);
                                self.codecs.insert((id.to_string(), layout), c.clone());
                                c
                            }
                        };
                        Some(Mapped {
                            key: id.to_string(),
                            db: Arc::from(id.namespace.as_str()),
                            id: id.clone(),
                            columns,
                            codec,
                        })
                    } else {
                        None
                    };
                    self.maps
                        .insert(tme.table_id(), (id, tme.columns_count(), mapped));
                }
                EventData::RowsEvent(rows) => {
                    let at = (header.timestamp(), header.server_id());
                    let events =
                        self.row_events(&rows, &binlog, &file, seq, log_pos, &mut tx, at)?;
                    match &mut self.xa {
                        Some(xa) => {
                            for (codec, event) in events {
                                xa.events.push(codec, event)?;
                            }
                        }
                        None => {
                            for (codec, event) in events {
                                self.publisher.publish(&codec, &event).await?;
                            }
                        }
                    }
                }
                EventData::HeartbeatEvent => lag.set(0.0),
                EventData::GtidEvent(g) => {
                    // MySQL: `source_uuid:transaction_number`.
                    let gtid: Arc<str> = Arc::from(mysql_gtid(&g.sid(), g.gno()));
                    tx = Tx {
                        id: Some(gtid.clone()),
                        gtid: Some(gtid),
                        ..Tx::default()
                    };
                }
                EventData::XaPrepareLogEvent(_) => {
                    // The prepared part is complete (MySQL's `XA END` moved it already);
                    // its changes wait for XA COMMIT.
                    if let Some(xa) = self.xa.take() {
                        self.prepared.push(xa);
                    }
                    self.commit(&mut tx, seq, log_pos).await?;
                }
                EventData::XidEvent(_) => {
                    self.commit(&mut tx, seq, log_pos).await?;
                    transactions.increment(1);
                }
                EventData::QueryEvent(q) => {
                    let query = q.query();
                    let trimmed = query.trim();
                    if trimmed.eq_ignore_ascii_case("COMMIT") {
                        self.commit(&mut tx, seq, log_pos).await?;
                        transactions.increment(1);
                    } else if is_savepoint_statement(trimmed) {
                        // Inside the transaction; InnoDB leaves rows rolled back to a
                        // savepoint out of the binlog.
                    } else if let Some(xa) = xa_statement(trimmed) {
                        if self.xa_statement(xa, &mut tx, seq, log_pos).await? {
                            transactions.increment(1);
                        }
                    } else if let Some(table) = truncated_table(trimmed, &q.schema()) {
                        // A captured table's truncate is published even when no table map of
                        // it was read since the stream (re)started: its current definition
                        // stands in for the columns (a truncate carries no row).
                        let codec = match self.last_codec(&table) {
                            Some(c) => Some(c),
                            None if self.tables.contains(&table.to_string()) => {
                                self.catalog_codec(&table, &source).await?
                            }
                            None => None,
                        };
                        if let Some(codec) = codec {
                            let event = ChangeEvent {
                                table: codec.table.clone(),
                                op: Op::Truncate,
                                before: None,
                                after: None,
                                source: self.source_info(
                                    &Arc::from(table.namespace.as_str()),
                                    &file,
                                    log_pos,
                                    0,
                                    (header.timestamp(), header.server_id()),
                                    &tx,
                                ),
                                transaction: None,
                                position: Position::mysql(seq, log_pos, 0),
                            };
                            self.publisher.publish(&codec, &event).await?;
                        }
                        // DDL commits implicitly.
                        self.commit(&mut tx, seq, log_pos).await?;
                    } else if !trimmed.eq_ignore_ascii_case("BEGIN") {
                        // Other DDL commits implicitly; table maps carry the new columns.
                        self.commit(&mut tx, seq, log_pos).await?;
                    }
                }
                _ => {}
            }
        }
        let _ = binlog.close().await;
        // Shutdown: confirm what Kafka acknowledged.
        info!("draining: waiting for Kafka to acknowledge published events");
        let drained = self
            .publisher
            .drain(&mut self.acks.acked, self.capture.settings.drain_timeout)
            .await;
        if !drained {
            tracing::warn!(
                "not every event was acknowledged before shutdown; they will be re-sent"
            );
        }
        // What was acknowledged becomes the checkpoint either way.
        self.write_progress().await?;
        info!("capture stopped cleanly");
        Ok(())
    }

    /// What the catalog says now about a table's columns that the binlog does not: data types
    /// it shows as binary strings, and defaults (the value rows older than an
    /// `ADD COLUMN … DEFAULT` read).
    async fn column_catalog(
        &mut self,
        id: &TableId,
    ) -> Result<HashMap<String, types::CatalogColumn>, CaptureError> {
        if self.catalog.is_none() {
            self.catalog = Some(Conn::new(self.opts.clone()).await.map_err(mysql_error)?);
        }
        let conn = self.catalog.as_mut().expect("opened above");
        let rows: Vec<(String, String, Option<String>)> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_DEFAULT FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&id.namespace, &id.name),
            )
            .await
            .map_err(mysql_error)?;
        Ok(rows
            .into_iter()
            .map(|(name, data_type, d)| {
                let default = types::default_literal(d.as_deref());
                (name, types::CatalogColumn { data_type, default })
            })
            .collect())
    }

    /// The codec of `table` as the catalog describes it now; `None` (logged and counted)
    /// when the table is gone from the catalog.
    async fn catalog_codec(
        &mut self,
        table: &TableId,
        source: &str,
    ) -> Result<Option<Arc<EnvelopeCodec>>, CaptureError> {
        if self.catalog.is_none() {
            self.catalog = Some(Conn::new(self.opts.clone()).await.map_err(mysql_error)?);
        }
        let conn = self.catalog.as_mut().expect("opened above");
        let (schema, _) = catalog_schema(conn, table).await?;
        if schema.columns.is_empty() {
            metrics::counter!(m::ERRORS_TOTAL, "source" => source.to_string(), "kind" => "not_captured")
                .increment(1);
            tracing::error!(%table, "a TRUNCATE of the table was read, but the table no longer exists at the source and no table map of it was seen: the truncate is not published; truncate the sink's table by hand");
            return Ok(None);
        }
        Ok(Some(Arc::new(EnvelopeCodec::new(
            &self.capture.settings.topic_prefix,
            source,
            Connector::Mysql,
            Arc::new(schema),
        )?)))
    }

    fn last_codec(&self, table: &TableId) -> Option<Arc<EnvelopeCodec>> {
        self.maps
            .values()
            .filter_map(|(_, _, m)| m.as_ref())
            .find(|m| m.id == *table)
            .map(|m| m.codec.clone())
    }

    /// `at` is the event's (timestamp, server_id).
    fn source_info(
        &self,
        db: &Arc<str>,
        file: &Arc<str>,
        pos: u64,
        row: i32,
        at: (u32, u32),
        tx: &Tx,
    ) -> SourceInfo {
        SourceInfo {
            name: self.name.clone(),
            db: db.clone(),
            ts_us: i64::from(at.0) * 1_000_000,
            snapshot: false,
            tx_id: None,
            lsn: None,
            sequence: None,
            binlog: Some(BinlogSource {
                server_id: i64::from(at.1),
                gtid: tx.gtid.clone(),
                file: file.clone(),
                pos: pos as i64,
                row,
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn row_events(
        &mut self,
        rows: &RowsEventData<'_>,
        binlog: &mysql_async::BinlogStream,
        file: &Arc<str>,
        seq: u32,
        log_pos: u64,
        tx: &mut Tx,
        at: (u32, u32),
    ) -> Result<Vec<(Arc<EnvelopeCodec>, ChangeEvent)>, CaptureError> {
        let table_id = rows.table_id();
        let Some((_, _, Some(mapped))) = self.maps.get(&table_id) else {
            return Ok(Vec::new());
        };
        let tme = binlog.get_tme(table_id).ok_or_else(|| {
            CaptureError::Definite(format!(
                "rows event at {file}:{log_pos} without its table map"
            ))
        })?;
        let op = match rows {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => Op::Create,
            RowsEventData::UpdateRowsEvent(_)
            | RowsEventData::UpdateRowsEventV1(_)
            | RowsEventData::PartialUpdateRowsEvent(_) => Op::Update,
            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => Op::Delete,
        };
        // Skip what the table's snapshot already holds.
        if let Some(TableState::Done { snapshot_lsn }) = self.state.tables.get(&mapped.key) {
            if pack(seq, log_pos) <= *snapshot_lsn {
                metrics::counter!(m::SNAPSHOT_SKIPPED_CHANGES_TOTAL, "source" => self.capture.name.clone()).increment(1);
                return Ok(Vec::new());
            }
        }
        let source = self.capture.name.clone();
        let schema = &mapped.codec.table;
        if mapped.columns.len() != schema.columns.len() {
            return Err(CaptureError::Definite(format!(
                "table map of {} has {} columns but its schema {}",
                mapped.id,
                mapped.columns.len(),
                schema.columns.len()
            )));
        }
        // Each value straight to its datum, as the image is read.
        let convert = |i: usize, v: Option<Cell<'_>>| -> Datum {
            let v = match v {
                Some(Cell::Binlog(BinlogValue::Value(Value::NULL))) => None,
                v => v,
            };
            let c = &mapped.columns[i];
            types::binlog_datum(c, &schema.columns[i].sql_type, v).unwrap_or_else(|e| {
                value_error(&source, &mapped.id, &c.name, &e);
                Datum::Null
            })
        };
        // Row images parsed directly with the table map's column types; mysql_async's own
        // parser for what that does not cover (MySQL 8's partial JSON updates).
        let images: Box<dyn Iterator<Item = RowImages<Datum>>> =
            match Images::new(rows, &mapped.columns, &convert) {
                Some(images) => Box::new(images),
                None => Box::new(rows.rows(tme).map(|r| {
                    r.map(|(b, a)| {
                        let image = |row: Option<mysql_async::binlog::row::BinlogRow>| {
                            row.map(|r| {
                                r.unwrap()
                                    .into_iter()
                                    .take(mapped.columns.len())
                                    .enumerate()
                                    .map(|(i, v)| convert(i, Some(Cell::Binlog(v))))
                                    .collect::<Vec<Datum>>()
                            })
                        };
                        (image(b), image(a))
                    })
                })),
            };
        let mut out = Vec::new();
        let mut per_table = tx.per_table.get(&table_id).copied().unwrap_or(0);
        for (row_index, row) in images.enumerate() {
            let (before, after) = row.map_err(|e| {
                CaptureError::Definite(format!("undecodable row at {file}:{log_pos}: {e}"))
            })?;
            tx.index += 1;
            per_table += 1;
            let event = ChangeEvent {
                table: schema.clone(),
                op,
                before,
                after: if op == Op::Delete { None } else { after },
                source: self.source_info(&mapped.db, file, log_pos, row_index as i32, at, tx),
                transaction: tx.id.clone().map(|id| TxInfo {
                    id,
                    total_order: tx.index,
                    data_collection_order: per_table,
                }),
                position: Position::mysql(seq, log_pos, row_index as u64),
            };
            out.push((mapped.codec.clone(), event));
        }
        tx.per_table.insert(table_id, per_table);
        Ok(out)
    }

    /// A transaction ended at `log_pos`: streaming may resume there once Kafka has everything
    /// before it.
    async fn commit(&mut self, tx: &mut Tx, seq: u32, log_pos: u64) -> Result<(), CaptureError> {
        let at = pack(seq, log_pos);
        if let Some(gtid) = tx.gtid.take() {
            self.gtids.push_back((at, gtid));
        }
        *tx = Tx::default();
        // Not past an XA transaction that has not committed yet: its changes are held in
        // memory, so a restart must read them again.
        let open = self.xa.iter().chain(&self.prepared).map(|x| x.start).min();
        self.publisher
            .checkpoint(open.map_or(at, |start| start.min(at)))
            .await
    }

    /// An XA statement: `START` holds the changes that follow, `END` sets them aside as
    /// prepared, `COMMIT` publishes them (at the commit's position, in commit order) and
    /// `ROLLBACK` drops them; the last two end a transaction (`true`).
    async fn xa_statement(
        &mut self,
        statement: XaStatement,
        tx: &mut Tx,
        seq: u32,
        log_pos: u64,
    ) -> Result<bool, CaptureError> {
        match statement {
            XaStatement::Start(xid) => {
                self.xa = Some(XaTransaction {
                    xid,
                    start: self.publisher.last_checkpoint(),
                    events: Held::new(&self.held),
                });
                return Ok(false);
            }
            XaStatement::End(xid) => {
                if let Some(xa) = self.xa.take() {
                    if xa.xid != xid {
                        tracing::warn!(started = %xa.xid, ended = %xid, "XA END names another transaction than XA START");
                    }
                    self.prepared.push(xa);
                }
                return Ok(false);
            }
            XaStatement::Commit { xid, one_phase } => {
                let held = match self.prepared.iter().position(|x| x.xid == xid) {
                    Some(i) => Some(self.prepared.remove(i)),
                    None if one_phase => self.xa.take(),
                    None => None,
                };
                match held {
                    Some(xa) => {
                        let (n, spilled) = (xa.events.len(), xa.events.spilled());
                        for (row, change) in xa.events.drain()?.enumerate() {
                            let (codec, mut event) = change?;
                            event.position = Position::mysql(seq, log_pos, row as u64);
                            self.publisher.publish(&codec, &event).await?;
                        }
                        tracing::debug!(%xid, changes = n, spilled, "XA transaction committed");
                    }
                    None => {
                        // Its prepared part lies before where capture started reading: it
                        // was prepared before the initial snapshot (which could not see its
                        // rows), or the position was set by hand. A checkpoint never passes
                        // an open XA transaction, so a restart alone cannot cause this.
                        metrics::counter!(m::ERRORS_TOTAL, "source" => self.capture.name.clone(), "kind" => "not_captured").increment(1);
                        tracing::error!(%xid, "XA COMMIT of a transaction prepared before capture's start position: its changes are not published; re-snapshot the tables it wrote");
                    }
                }
            }
            XaStatement::Rollback(xid) => {
                if let Some(i) = self.prepared.iter().position(|x| x.xid == xid) {
                    let xa = self.prepared.remove(i);
                    tracing::debug!(%xid, changes = xa.events.len(), "XA transaction rolled back; its changes are dropped");
                } else if self.xa.as_ref().is_some_and(|x| x.xid == xid) {
                    self.xa = None;
                }
            }
        }
        self.commit(tx, seq, log_pos).await?;
        Ok(true)
    }

    /// Writes the acknowledged checkpoint to the state topic when it moved.
    async fn write_progress(&mut self) -> Result<(), CaptureError> {
        let acked = *self.acks.acked.borrow();
        if acked <= self.written {
            return Ok(());
        }
        while let Some((at, gtid)) = self.gtids.front() {
            if *at > acked {
                break;
            }
            self.state.gtid = Some(gtid.to_string());
            self.gtids.pop_front();
        }
        self.state.position = Some(acked);
        self.publisher
            .write_state(&serde_json::to_string(&self.state).expect("state serializes"))
            .await?;
        self.written = acked;
        let (seq, pos) = unpack(acked);
        metrics::gauge!(m::BINLOG_CONFIRMED_POSITION, "source" => self.capture.name.clone())
            .set(pos as f64);
        metrics::gauge!(m::BINLOG_CONFIRMED_FILE, "source" => self.capture.name.clone())
            .set(f64::from(seq));
        tracing::debug!(file = %file_name(&self.state.file_base, seq), pos, "checkpoint written");
        Ok(())
    }
}

/// A MySQL GTID (`3e11fa47-71ca-11e1-9e33-c80aa9429562:23`) from its server uuid and number.
fn mysql_gtid(sid: &[u8; 16], gno: u64) -> String {
    let hex: String = sid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}:{gno}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The table a `TRUNCATE [TABLE] [db.]t` statement names.
fn truncated_table(query: &str, default_db: &str) -> Option<TableId> {
    let mut words = query.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("TRUNCATE") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("TABLE") {
        name = words.next()?;
    }
    let unquote = |s: &str| s.trim_matches('`').replace("``", "`");
    match name.split_once("`.`").or_else(|| name.split_once('.')) {
        Some((db, t)) => Some(TableId::new(unquote(db), unquote(t))),
        None => Some(TableId::new(default_db, unquote(name))),
    }
}

/// Connection options for a source, TLS included.
fn opts(
    name: &str,
    config: &MysqlSourceConfig,
    password: Option<&str>,
) -> Result<Opts, CaptureError> {
    let opts = Opts::from_url(&config.url).map_err(|e| {
        CaptureError::Definite(format!(
            "sources.{}.url is not a valid mysql:// url: {e}",
            name
        ))
    })?;
    let mut builder = OptsBuilder::from_opts(opts).prefer_socket(false);
    if let Some(pw) = &password {
        builder = builder.pass(Some(pw.to_string()));
    }
    // Checks the files (and fails with the field's name) before any connection.
    config
        .tls
        .client_config(&format!("sources.{name}.tls"))
        .map_err(CaptureError::Definite)?;
    Ok(builder.ssl_opts(config.tls.mysql_ssl_opts()).into())
}

/// The current schema of each configured table, read from the source's catalog (for
/// `sluice schemes generate` and `check`).
pub async fn describe(
    name: &str,
    config: &MysqlSourceConfig,
    password: Option<&str>,
) -> Result<Vec<TableSchema>, CaptureError> {
    let tables = config
        .table_ids()
        .map_err(|e| CaptureError::Definite(format!("sources.{name}.tables: {e}")))?;
    let mut conn = Conn::new(opts(name, config, password)?)
        .await
        .map_err(mysql_error)?;
    let mut out = Vec::with_capacity(tables.len());
    for id in &tables {
        let (schema, _) = catalog_schema(&mut conn, id).await?;
        if schema.columns.is_empty() {
            return Err(CaptureError::Definite(format!(
                "sources.{name}.tables: {id} does not exist at the source"
            )));
        }
        out.push(schema);
    }
    let _ = conn.disconnect().await;
    Ok(out)
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
    fn mysql_gtids_are_uuid_colon_number() {
        let sid = [
            0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42,
            0x95, 0x62,
        ];
        assert_eq!(
            mysql_gtid(&sid, 23),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:23"
        );
    }

    #[test]
    fn xa_and_savepoint_statements_are_told_apart_from_commits() {
        use super::{is_savepoint_statement, xa_statement, XaStatement};
        assert_eq!(
            xa_statement("XA START X'7831',X'',1"),
            Some(XaStatement::Start("X'7831',X'',1".into()))
        );
        assert_eq!(
            xa_statement("xa end X'7831',X'',1"),
            Some(XaStatement::End("X'7831',X'',1".into()))
        );
        assert_eq!(
            xa_statement("XA COMMIT X'7831',X'',1 ONE PHASE"),
            Some(XaStatement::Commit {
                xid: "X'7831',X'',1".into(),
                one_phase: true
            })
        );
        assert_eq!(
            xa_statement("XA ROLLBACK X'7831',X'',1"),
            Some(XaStatement::Rollback("X'7831',X'',1".into()))
        );
        assert_eq!(xa_statement("XACT"), None);
        // A MariaDB GTID event of a prepared XA part: seq_no, domain, flags, then the xid.
        let mut gtid = vec![3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64 | 8];
        gtid.extend_from_slice(&1i32.to_le_bytes());
        gtid.extend_from_slice(&[4, 0]);
        gtid.extend_from_slice(b"gone");
        assert_eq!(
            super::mariadb_prepared_xa(&gtid).as_deref(),
            Some("X'676f6e65',X'',1")
        );
        gtid[12] = 8;
        assert_eq!(super::mariadb_prepared_xa(&gtid), None);
        assert!(is_savepoint_statement("SAVEPOINT `a`"));
        assert!(is_savepoint_statement("ROLLBACK TO `a`"));
        assert!(is_savepoint_statement("ROLLBACK WORK TO SAVEPOINT a"));
        assert!(is_savepoint_statement("RELEASE SAVEPOINT a"));
        assert!(!is_savepoint_statement("ROLLBACK"));
        assert!(!is_savepoint_statement("COMMIT"));
    }

    #[test]
    fn truncate_statements_name_their_table() {
        assert_eq!(
            truncated_table("TRUNCATE TABLE `shop`.`orders`", "x"),
            Some(TableId::new("shop", "orders"))
        );
        assert_eq!(
            truncated_table("truncate orders", "shop"),
            Some(TableId::new("shop", "orders"))
        );
        assert_eq!(
            truncated_table("ALTER TABLE orders ADD c int", "shop"),
            None
        );
    }
}
