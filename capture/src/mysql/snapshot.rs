//! The consistent snapshot: without global locks on MariaDB (`START TRANSACTION WITH
//! CONSISTENT SNAPSHOT` and `binlog_snapshot_file/position`), a brief global read lock on
//! MySQL.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use sluice_schemas::avro::Connector;
use sluice_schemas::event::{unix_now_us, BinlogSource};
use sluice_schemas::{ChangeEvent, Datum, EnvelopeCodec, Op, Position, SourceInfo, TableId};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::catalog::catalog_schema;
use super::position::{pack, split_file, MysqlState};
use super::preflight::master_status;
use super::types::{self};
use crate::metrics as m;
use crate::publisher::Publisher;
use crate::state::TableState;
use crate::CaptureError;

use super::mysql_error;
use super::source::MysqlCapture;
use super::value_error;

/// Starts the snapshot transaction and returns the binlog position it is consistent with.
///
/// MariaDB reports that position for a `WITH CONSISTENT SNAPSHOT` transaction in
/// `binlog_snapshot_file/position`, taking no lock. MySQL has no such status: there the
/// position is read under a brief `FLUSH TABLES WITH READ LOCK` (writes wait for milliseconds,
/// while the transaction starts), which needs the RELOAD privilege. The MySQL path is not
/// verified live (no MySQL server on our machines).
pub(super) async fn consistent_snapshot(conn: &mut Conn) -> Result<(String, u64), CaptureError> {
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

pub(super) struct Snapshot<'a> {
    pub(super) capture: &'a MysqlCapture,
    pub(super) server_id: u32,
}

impl Snapshot<'_> {
    /// Reads `tables` in one consistent snapshot, positioned at the binlog point it matches.
    pub(super) async fn run(
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
                    row: sluice_schemas::RowChange {
                        table: schema.clone(),
                        op: Op::Truncate,
                        before: None,
                        after: None,
                    },
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
                    row: sluice_schemas::RowChange {
                        table: schema.clone(),
                        op: Op::Read,
                        before: None,
                        after: Some(after),
                    },
                    source: row_source.clone(),
                    transaction: None, // Below every streamed change (those end past `pos`), in read order.
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

    pub(super) fn source_info(&self, table: &TableId, file: &str, pos: u64) -> SourceInfo {
        read_source_info(
            Arc::from(self.capture.name.as_str()),
            table,
            Arc::from(file),
            pos,
            self.server_id,
        )
    }
}

/// The source block of rows read from the tables (not the binlog) at binlog position
/// `file:pos` of the server `server_id`: the snapshot's, and rows read again on request.
pub(super) fn read_source_info(
    name: Arc<str>,
    table: &TableId,
    file: Arc<str>,
    pos: u64,
    server_id: u32,
) -> SourceInfo {
    SourceInfo {
        name,
        db: Arc::from(table.namespace.as_str()),
        ts_us: unix_now_us(),
        snapshot: true,
        tx_id: None,
        lsn: None,
        sequence: None,
        binlog: Some(BinlogSource {
            server_id: i64::from(server_id),
            gtid: None,
            file,
            pos: pos as i64,
            row: 0,
        }),
    }
}
