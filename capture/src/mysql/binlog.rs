//! The binlog stream as a replica from the checkpoint, which advances only past events Kafka
//! has acknowledged. Row images are decoded with the table map that precedes them, which (with
//! `binlog_row_metadata = FULL`) names every column, its signedness, charset, ENUM/SET members
//! and the primary key: the binlog carries its own schema history, so rows before and after an
//! `ALTER TABLE` decode with the columns they were written with, also when capture restarts in
//! the middle of that history.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts, Value};
use sluice_schemas::avro::Connector;
use sluice_schemas::event::{unix_now_us, BinlogSource};
use sluice_schemas::{
    ChangeEvent, Datum, EnvelopeCodec, Op, Position, SourceInfo, TableId, TxInfo,
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::catalog::catalog_schema;
use super::position::{file_name, pack, split_file, unpack, MysqlState};
use super::reread::{self, Pending};
use super::rows::{Cell, Images, RowImages};
use super::types::{self, BinlogColumn, Collations};
use crate::metrics as m;
use crate::publisher::{AckHandle, Publisher};
use crate::spill::{Budget, Held};
use crate::state::TableState;
use crate::CaptureError;

use super::mysql_error;
use super::source::MysqlCapture;
use super::value_error;

pub(super) const STATE_INTERVAL: Duration = Duration::from_secs(1);
/// MariaDB's GTID event type (sent when `@mariadb_slave_capability = 4`).
pub(super) const MARIADB_GTID_EVENT: u8 = 162;
/// The heartbeat event's type.
const HEARTBEAT_EVENT: u8 = 27;

/// A table seen in a table map: its columns and the codec of that version.
pub(super) struct Mapped {
    pub(super) id: TableId,
    /// `database.table`, and the database as the envelope's `source.db`: made once per table
    /// map, shared by every event.
    pub(super) key: String,
    pub(super) db: Arc<str>,
    pub(super) columns: Vec<BinlogColumn>,
    pub(super) codec: Arc<EnvelopeCodec>,
}

/// The transaction being read.
#[derive(Default)]
pub(super) struct Tx {
    pub(super) gtid: Option<Arc<str>>,
    pub(super) id: Option<Arc<str>>,
    pub(super) index: i64,
    /// Events per table (by table-map id) so far, for `data_collection_order`.
    pub(super) per_table: HashMap<u64, i64>,
}

/// The changes of an XA transaction, held from `XA START` until `XA COMMIT` (published then,
/// at the commit's position) or `XA ROLLBACK` (dropped), in memory within the source's
/// `spill.memory_mb` and in a file past it. Checkpoints stay at or before `start` while it is
/// open or prepared, so a restart reads it again.
pub(super) struct XaTransaction {
    pub(super) xid: String,
    /// The checkpoint before its `XA START`.
    pub(super) start: u64,
    pub(super) events: Held,
}

/// The XA statements the binlog carries, with their xid (as the server writes it).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum XaStatement {
    Start(String),
    End(String),
    Commit { xid: String, one_phase: bool },
    Rollback(String),
}

/// The xid of a MariaDB GTID event that starts an XA transaction's prepared part
/// (`FL_PREPARED_XA`), written as the server writes it in `XA COMMIT` / `XA ROLLBACK`
/// queries: `X'<gtrid>',X'<bqual>',<formatID>`.
pub(super) fn mariadb_prepared_xa(data: &[u8]) -> Option<String> {
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
pub(super) fn xa_statement(query: &str) -> Option<XaStatement> {
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
pub(super) fn strip_word<'q>(query: &'q str, word: &str) -> Option<&'q str> {
    let query = query.trim_start();
    let head = query.get(..word.len())?;
    let rest = &query[word.len()..];
    (head.eq_ignore_ascii_case(word) && rest.starts_with(char::is_whitespace)).then(|| rest.trim())
}

/// Statements inside a transaction that do not end it.
pub(super) fn is_savepoint_statement(query: &str) -> bool {
    strip_word(query, "SAVEPOINT").is_some()
        || strip_word(query, "RELEASE").is_some()
        || strip_word(query, "ROLLBACK").is_some_and(|rest| {
            strip_word(rest, "TO").is_some()
                || strip_word(rest, "WORK").is_some_and(|r| strip_word(r, "TO").is_some())
        })
}

pub(super) struct Stream<'a> {
    pub(super) capture: &'a MysqlCapture,
    /// The source name, shared by every event.
    pub(super) name: Arc<str>,
    pub(super) collations: Collations,
    pub(super) state: MysqlState,
    pub(super) publisher: Publisher,
    pub(super) acks: AckHandle,
    pub(super) tables: HashSet<String>,
    /// Table maps by table id: the table's name and width, and how it is captured (None: a
    /// table not captured).
    pub(super) maps: HashMap<u64, (TableId, u64, Option<Mapped>)>,
    /// The XA transaction being read (between `XA START` and `XA END`): its changes wait
    /// until it commits.
    pub(super) xa: Option<XaTransaction>,
    /// XA transactions prepared and not yet committed or rolled back, by xid.
    pub(super) prepared: Vec<XaTransaction>,
    /// The memory the XA transactions' changes may hold, all together.
    pub(super) held: Budget,
    /// Codecs by table and column layout, so repeated table maps reuse them.
    pub(super) codecs: HashMap<(String, String), Arc<EnvelopeCodec>>,
    /// GTIDs of checkpoints not yet written, oldest first.
    pub(super) gtids: VecDeque<(u64, Arc<str>)>,
    /// The last checkpoint written to the state topic.
    pub(super) written: u64,
    /// For catalog lookups while the binlog connection streams (opened when first needed).
    pub(super) catalog: Option<Conn>,
    pub(super) opts: Opts,
    /// Repair requests (see [`super::reread`]): the signal table, the payloads of signals
    /// read in the transaction being read, and rows read again waiting for the stream to
    /// reach their position (in position order).
    pub(super) signal_table: Option<TableId>,
    pub(super) signals: Vec<Vec<u8>>,
    pub(super) rereads: VecDeque<Pending>,
    /// The position the last rows read again were published at, and the next index there
    /// (two reads at one position must not share event positions).
    pub(super) reread_next: (u64, u64),
    /// The source server's `server_id` (for the source block of rows read again).
    pub(super) source_server_id: u32,
}

impl Stream<'_> {
    pub(super) async fn run(
        &mut self,
        opts: Opts,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
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
                    None => return Err(CaptureError::StreamEnded("binlog")),
                    Some(event) => event.map_err(stream_error)?,
                },
            };
            let header = event.header();
            let log_pos = u64::from(header.log_pos());
            if header.timestamp() > 0 {
                lag.set((unix_now_us() / 1_000_000 - i64::from(header.timestamp())).max(0) as f64);
            }
            // Rows read again at a position this event ends past (so starts at or after):
            // published before it. (A heartbeat's position is the server's, not an event's.)
            let heartbeat = header.event_type_raw() == HEARTBEAT_EVENT;
            if log_pos > 0 && !heartbeat {
                self.publish_rereads(pack(seq, log_pos), false).await?;
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
                    if self.is_signal_table(rows.table_id()) {
                        self.read_signals(&rows, &binlog, &file, log_pos);
                        continue;
                    }
                    let at = (header.timestamp(), header.server_id());
                    let events =
                        self.row_events(&rows, &binlog, &file, seq, log_pos, &mut tx, at)?;
                    match &mut self.xa {
                        Some(xa) => {
                            for (codec, event) in events {
                                xa.events.push((codec, event))?;
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
                                row: sluice_schemas::RowChange {
                                    table: codec.table.clone(),
                                    op: Op::Truncate,
                                    before: None,
                                    after: None,
                                },
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
    pub(super) async fn column_catalog(
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
    pub(super) async fn catalog_codec(
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

    pub(super) fn last_codec(&self, table: &TableId) -> Option<Arc<EnvelopeCodec>> {
        self.maps
            .values()
            .filter_map(|(_, _, m)| m.as_ref())
            .find(|m| m.id == *table)
            .map(|m| m.codec.clone())
    }

    /// `at` is the event's (timestamp, server_id).
    pub(super) fn source_info(
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
    pub(super) fn row_events(
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
                row: sluice_schemas::RowChange {
                    table: schema.clone(),
                    op,
                    before,
                    after: if op == Op::Delete { None } else { after },
                },
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
    pub(super) async fn commit(
        &mut self,
        tx: &mut Tx,
        seq: u32,
        log_pos: u64,
    ) -> Result<(), CaptureError> {
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
            .await?;
        if !self.signals.is_empty() {
            self.take_signals(at).await?;
        }
        self.publish_rereads(at, true).await
    }

    /// Whether `table_id`'s table map is of the signal table.
    fn is_signal_table(&self, table_id: u64) -> bool {
        self.signal_table.as_ref().is_some_and(|signal| {
            self.maps
                .get(&table_id)
                .is_some_and(|(id, _, _)| id == signal)
        })
    }

    /// Keeps the payloads of the signal rows an insert into the signal table carries (acted
    /// on at its commit).
    fn read_signals(
        &mut self,
        rows: &RowsEventData<'_>,
        binlog: &mysql_async::BinlogStream,
        file: &str,
        log_pos: u64,
    ) {
        if !matches!(
            rows,
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_)
        ) {
            return; // the signal's delete
        }
        let Some(tme) = binlog.get_tme(rows.table_id()) else {
            tracing::warn!(at = %format!("{file}:{log_pos}"), "a signal-table row event without its table map is ignored; sluice verify asks again");
            metrics::counter!(m::ERRORS_TOTAL, "source" => self.capture.name.clone(), "kind" => "signal").increment(1);
            return;
        };
        for row in rows.rows(tme) {
            let payload = row.ok().and_then(|(_, after)| after).and_then(|after| {
                after.unwrap().into_iter().last().and_then(|v| match v {
                    BinlogValue::Value(Value::Bytes(b)) => Some(b),
                    _ => None,
                })
            });
            match payload {
                Some(p) => self.signals.push(p),
                None => {
                    tracing::warn!(at = %format!("{file}:{log_pos}"), "a row of the signal table without a payload is ignored (is it the table sluice verify makes?)");
                    metrics::counter!(m::ERRORS_TOTAL, "source" => self.capture.name.clone(), "kind" => "signal").increment(1);
                }
            }
        }
    }

    /// Acts on the signals of the transaction that committed at `here`: reads the rows each
    /// asks for (see [`reread`]).
    async fn take_signals(&mut self, here: u64) -> Result<(), CaptureError> {
        let source = self.capture.name.clone();
        let me = reread::recipient(&self.capture.config);
        for payload in std::mem::take(&mut self.signals) {
            let signal: crate::postgres::reread::Signal = match serde_json::from_slice(&payload) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "a signal that does not parse is ignored");
                    metrics::counter!(m::ERRORS_TOTAL, "source" => source.clone(), "kind" => "signal").increment(1);
                    continue;
                }
            };
            if signal.slot != me {
                continue; // another capture's
            }
            let table =
                TableId::parse(&signal.table).filter(|t| self.tables.contains(&t.to_string()));
            let refused = |table: &str, n: usize, why: &str| {
                tracing::warn!(%table, keys = n, "{why}; the rows are not read again");
                metrics::counter!(m::REREAD_ROWS_TOTAL, "source" => source.clone(), "table" => table.to_string(), "outcome" => "refused").increment(n as u64);
            };
            let (Some(table), "reread") = (table, signal.op.as_str()) else {
                refused(
                    &signal.table,
                    signal.keys.len(),
                    "a signal for a table this capture does not take, or of an unknown kind",
                );
                continue;
            };
            info!(%table, keys = signal.keys.len(), "reading rows again on request");
            for keys in signal.keys.chunks(crate::postgres::reread::CHUNK_KEYS) {
                if self.catalog.is_none() {
                    self.catalog = Some(Conn::new(self.opts.clone()).await.map_err(mysql_error)?);
                }
                let conn = self.catalog.as_mut().expect("opened above");
                let (prefix, name) = (&self.capture.settings.topic_prefix, source.as_str());
                let read = reread::read(conn, &table, &signal.columns, keys, here, |schema| {
                    Ok(Arc::new(EnvelopeCodec::new(
                        prefix,
                        name,
                        Connector::Mysql,
                        Arc::new(schema),
                    )?))
                })
                .await?;
                match read {
                    Ok(pending) => self.rereads.push_back(pending),
                    Err(why) => refused(&table.to_string(), keys.len(), &why),
                }
            }
        }
        Ok(())
    }

    /// Publishes the rows read again at a position up to `upto` (`inclusive`) or below it, at
    /// their position: `op = r` for the rows the source has, deletes for the keys it lacks.
    async fn publish_rereads(&mut self, upto: u64, inclusive: bool) -> Result<(), CaptureError> {
        while self
            .rereads
            .front()
            .is_some_and(|p| p.at < upto || (inclusive && p.at == upto))
        {
            let pending = self.rereads.pop_front().expect("checked above");
            let table = pending.codec.table.id.clone();
            let (seq, pos) = unpack(pending.at);
            let first = if self.reread_next.0 == pending.at {
                self.reread_next.1
            } else {
                0
            };
            let info = super::snapshot::read_source_info(
                self.name.clone(),
                &table,
                pending.file.clone(),
                pos,
                self.source_server_id,
            );
            let reads = pending
                .rows
                .iter()
                .map(|r| (Op::Read, None, Some(r.clone())));
            let deletes = pending
                .absent
                .iter()
                .map(|k| (Op::Delete, Some(pending.delete_image(k)), None));
            let mut index = first;
            for (op, before, after) in reads.chain(deletes) {
                let event = ChangeEvent {
                    row: sluice_schemas::RowChange {
                        table: pending.codec.table.clone(),
                        op,
                        before,
                        after,
                    },
                    source: info.clone(),
                    transaction: None,
                    position: Position::mysql(seq, pos, index),
                };
                self.publisher.publish(&pending.codec, &event).await?;
                index += 1;
            }
            self.reread_next = (pending.at, index);
            let source = self.capture.name.clone();
            let count = |outcome: &'static str, n: usize| {
                metrics::counter!(m::REREAD_ROWS_TOTAL, "source" => source.clone(), "table" => table.to_string(), "outcome" => outcome).increment(n as u64);
            };
            count("read", pending.rows.len());
            count("deleted", pending.absent.len());
            info!(%table, read = pending.rows.len(), deleted = pending.absent.len(), "rows read again were published");
        }
        Ok(())
    }

    /// An XA statement: `START` holds the changes that follow, `END` sets them aside as
    /// prepared, `COMMIT` publishes them (at the commit's position, in commit order) and
    /// `ROLLBACK` drops them; the last two end a transaction (`true`).
    pub(super) async fn xa_statement(
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
    pub(super) async fn write_progress(&mut self) -> Result<(), CaptureError> {
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
pub(super) fn mysql_gtid(sid: &[u8; 16], gno: u64) -> String {
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
pub(super) fn truncated_table(query: &str, default_db: &str) -> Option<TableId> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            mariadb_prepared_xa(&gtid).as_deref(),
            Some("X'676f6e65',X'',1")
        );
        gtid[12] = 8;
        assert_eq!(mariadb_prepared_xa(&gtid), None);
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
