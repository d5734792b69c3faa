//! The PostgreSQL capture loop: relation cache, change events, checkpoints and status updates.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;
use sluice_schemas::avro::Connector;
use sluice_schemas::{
    pgtext, ChangeEvent, Column, Datum, EnvelopeCodec, Op, Position, SourceInfo, SqlType, TableId,
    TableSchema, TxInfo,
};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::decoder::{self, PgOutput, RelationColumn, TupleValue};
use super::replication::{
    format_lsn, pg_time_to_unix_ms, quote_ident, ConnectParams, ReplicationConnection,
    ReplicationMessage,
};
use super::{slot, types};
use crate::metrics as m;
use crate::publisher::{AckHandle, Publisher, PublisherSettings};
use crate::CaptureError;

const DEFAULT_STATUS_INTERVAL_MS: u64 = 1_000;

fn default_status_interval_ms() -> u64 {
    DEFAULT_STATUS_INTERVAL_MS
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
    /// Replication slot name; created when missing. One capture process per slot.
    pub slot: String,
    /// Publication name; created (or extended with missing tables) at start.
    pub publication: String,
    /// How often to send a standby status update to the server, in milliseconds.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
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
    codec: Option<Arc<EnvelopeCodec>>,
}

struct Tx {
    xid: u32,
    commit_lsn: u64,
    commit_time_ms: i64,
    index: u64,
    per_table: HashMap<u32, i64>,
}

/// A running capture of one PostgreSQL source.
pub struct PostgresCapture {
    name: String,
    config: PostgresSourceConfig,
    kafka: ClientConfig,
    settings: PublisherSettings,
    password: Option<String>,
}

impl PostgresCapture {
    pub fn new(
        name: &str,
        config: PostgresSourceConfig,
        kafka: ClientConfig,
        settings: PublisherSettings,
        password: Option<String>,
    ) -> PostgresCapture {
        PostgresCapture {
            name: name.to_string(),
            config,
            kafka,
            settings,
            password,
        }
    }

    /// Runs until `shutdown`, reconnecting with backoff on transient errors. Returns the
    /// definite error that stopped it, if any.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CaptureError> {
        let span = info_span!("capture", source = %self.name);
        async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                match self.run_once(&shutdown).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                        metrics::counter!(m::ERRORS_TOTAL, "source" => self.name.clone(), "kind" => "transient").increment(1);
                        warn!(error = %e, retry_in = ?backoff, "capture interrupted; reconnecting");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                    Err(e) => {
                        metrics::counter!(m::ERRORS_TOTAL, "source" => self.name.clone(), "kind" => "definite").increment(1);
                        error!(error = %e, "capture stopped");
                        return Err(e);
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    fn connect_params(&self) -> Result<(tokio_postgres::Config, ConnectParams), CaptureError> {
        let mut pg: tokio_postgres::Config = self.config.url.parse().map_err(|e| {
            CaptureError::Definite(format!(
                "sources.{}.url is not a valid connection string: {e}",
                self.name
            ))
        })?;
        if let Some(pw) = &self.password {
            pg.password(pw.as_str());
        }
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => {
                return Err(CaptureError::Definite(format!(
                    "sources.{}.url must name a TCP host (unix sockets are not supported yet)",
                    self.name
                )))
            }
        };
        let params = ConnectParams {
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
            application_name: format!("sluice-{}", self.name),
        };
        Ok((pg, params))
    }

    async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), CaptureError> {
        let tables = self
            .config
            .table_ids()
            .map_err(|e| CaptureError::Definite(format!("sources.{}.tables: {e}", self.name)))?;
        let (pg, params) = self.connect_params()?;
        let (client, connection) = pg.connect(NoTls).await?;
        let conn_task = tokio::spawn(connection);
        let result = async {
            slot::preflight(&client, &tables).await?;
            slot::ensure_publication(&client, &self.config.publication, &tables).await?;
            let mut repl = ReplicationConnection::connect(&params).await?;
            let state = slot::ensure_slot(&client, &mut repl, &self.config.slot).await?;
            let start = state.confirmed_flush_lsn.unwrap_or(0);
            info!(slot = %self.config.slot, start = %format_lsn(start), "starting replication");
            let (mut publisher, acks) = Publisher::new(&self.kafka, self.settings.clone(), start)?;
            publisher.prepare().await?;
            let publication = quote_ident(&self.config.publication);
            repl.start_logical(
                &self.config.slot,
                0,
                &[("proto_version", "1"), ("publication_names", &publication)],
            )
            .await?;
            let mut stream = Stream {
                capture: self,
                client: &client,
                repl,
                publisher,
                acks,
                wanted: tables.into_iter().collect(),
                relations: HashMap::new(),
                type_names: HashMap::new(),
                tx: None,
                last_received: start,
                server_wal_end: start,
                last_committed: start,
                dbname: params.dbname.clone(),
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
    repl: ReplicationConnection,
    publisher: Publisher,
    acks: AckHandle,
    wanted: HashSet<TableId>,
    relations: HashMap<u32, Relation>,
    type_names: HashMap<(u32, i32), String>,
    tx: Option<Tx>,
    last_received: u64,
    server_wal_end: u64,
    last_committed: u64,
    dbname: String,
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
                        let message = decoder::decode(data)?;
                        self.handle(message, wal_start).await?;
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
            .drain(&mut self.acks.acked, Duration::from_secs(30))
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

    async fn handle(&mut self, message: PgOutput, lsn: u64) -> Result<(), CaptureError> {
        match message {
            PgOutput::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                self.tx = Some(Tx {
                    xid,
                    commit_lsn: final_lsn,
                    commit_time_ms: pg_time_to_unix_ms(commit_time),
                    index: 0,
                    per_table: HashMap::new(),
                });
            }
            PgOutput::Commit {
                end_lsn,
                commit_lsn,
                ..
            } => {
                self.tx = None;
                self.last_committed = commit_lsn;
                metrics::counter!(m::TRANSACTIONS_TOTAL, "source" => self.capture.name.clone())
                    .increment(1);
                self.publisher.checkpoint(end_lsn).await?;
            }
            PgOutput::Relation {
                id,
                namespace,
                name,
                columns,
                ..
            } => {
                let table = TableId::new(namespace, name);
                let codec = if self.wanted.contains(&table) {
                    let schema = Arc::new(self.table_schema(table, &columns).await?);
                    debug!(table = %schema.id, columns = schema.columns.len(), "relation");
                    Some(Arc::new(EnvelopeCodec::new(
                        &self.capture.settings.topic_prefix,
                        &self.capture.name,
                        Connector::Postgres,
                        schema,
                    )?))
                } else {
                    None
                };
                self.relations.insert(id, Relation { codec });
            }
            PgOutput::Type { .. } | PgOutput::Origin | PgOutput::Message { .. } => {}
            PgOutput::Insert { relation, new } => {
                if let Some(codec) = self.codec(relation)? {
                    let after = self.row(&codec, &new)?;
                    self.emit(&codec, relation, Op::Create, None, Some(after), lsn)
                        .await?;
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
                        self.emit(&codec, relation, Op::Delete, before, None, lsn)
                            .await?;
                        self.emit(&codec, relation, Op::Create, None, Some(after), lsn)
                            .await?;
                    } else {
                        self.emit(&codec, relation, Op::Update, before, Some(after), lsn)
                            .await?;
                    }
                }
            }
            PgOutput::Delete {
                relation,
                old: (_, tuple),
            } => {
                if let Some(codec) = self.codec(relation)? {
                    let before = self.row(&codec, &tuple)?;
                    self.emit(&codec, relation, Op::Delete, Some(before), None, lsn)
                        .await?;
                }
            }
            PgOutput::Truncate { relations, .. } => {
                for relation in relations {
                    if let Some(codec) = self.codec(relation)? {
                        self.emit(&codec, relation, Op::Truncate, None, None, lsn)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    fn codec(&self, relation: u32) -> Result<Option<Arc<EnvelopeCodec>>, CaptureError> {
        match self.relations.get(&relation) {
            Some(r) => Ok(r.codec.clone()),
            None => Err(CaptureError::Decode(decoder::DecodeError(format!(
                "change for relation {relation} before its Relation message"
            )))),
        }
    }

    async fn table_schema(
        &mut self,
        id: TableId,
        columns: &[RelationColumn],
    ) -> Result<TableSchema, CaptureError> {
        let mut out = Vec::with_capacity(columns.len());
        for c in columns {
            let sql_type = match types::sql_type(c.type_oid, c.type_modifier) {
                Some(t) => t,
                None => {
                    let key = (c.type_oid, c.type_modifier);
                    if !self.type_names.contains_key(&key) {
                        let row = self
                            .client
                            .query_one("SELECT format_type($1::oid, NULL)", &[&c.type_oid])
                            .await?;
                        let name: String = row.get(0);
                        warn!(table = %id, column = %c.name, r#type = %name, "type has no Avro mapping yet; carried as its text form");
                        self.type_names.insert(key, name);
                    }
                    SqlType::Other(self.type_names[&key].clone())
                }
            };
            out.push(Column {
                name: c.name.clone(),
                sql_type,
                key: c.key,
            });
        }
        Ok(TableSchema { id, columns: out })
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
        let Some(tx) = self.tx.as_mut() else {
            return Err(CaptureError::Decode(decoder::DecodeError(
                "change outside a transaction".into(),
            )));
        };
        let index = tx.index;
        tx.index += 1;
        let per_table = tx.per_table.entry(relation).or_insert(0);
        *per_table += 1;
        let event = ChangeEvent {
            table: codec.table.clone(),
            op,
            before,
            after,
            source: SourceInfo {
                name: self.capture.name.clone(),
                db: self.dbname.clone(),
                ts_ms: tx.commit_time_ms,
                snapshot: false,
                tx_id: Some(i64::from(tx.xid)),
                lsn: Some(lsn as i64),
                sequence: Some(format!("[\"{}\",\"{}\"]", self.last_committed, lsn)),
            },
            transaction: Some(TxInfo {
                id: format!("{}:{}", tx.xid, tx.commit_lsn),
                total_order: index as i64 + 1,
                data_collection_order: *per_table,
            }),
            position: Position::postgres(tx.commit_lsn, index),
        };
        self.publisher.publish(codec, &event).await
    }
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
