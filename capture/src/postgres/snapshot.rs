//! The initial snapshot: tables read with `COPY … TO STDOUT` inside an imported (exported)
//! snapshot, as `op = r` events, several tables at once within a limit.
//!
//! Snapshot events sort before every streamed change of their table: their position is
//! `(snapshot_lsn - 1, n)`, and the stream only emits transactions that committed at or after
//! `snapshot_lsn` (the exported snapshot's consistent point; records are 8-byte aligned, so no
//! commit record starts at `snapshot_lsn - 1`).

use std::sync::Arc;

use crate::tls::PgConnector;
use bytes::{Buf, BytesMut};
use futures::StreamExt;
use sluice_schemas::{pgtext, ChangeEvent, Datum, Op, Position, SourceInfo, TableId, TableSchema};
use tokio::sync::mpsc;
use tracing::{error, info};

use super::catalog::Catalog;
use super::replication::quote_ident;
use crate::metrics as m;
use crate::CaptureError;

/// One table to read.
#[derive(Debug, Clone)]
pub struct SnapshotJob {
    /// The configured table: what its events are published as.
    pub table: TableId,
    /// Its name at the source now (another than `table` once it was renamed and followed).
    pub source_name: TableId,
    /// Emit a truncate first: an earlier, interrupted snapshot may have published rows that
    /// have since been deleted.
    pub truncate_first: bool,
    /// The publication, whose published columns the snapshot reads.
    pub publication: String,
}

/// What readers tell the publishing loop.
pub enum SnapshotMessage {
    Started(TableId),
    Event(ChangeEvent),
    Finished { table: TableId, rows: u64 },
    Failed(CaptureError),
}

/// Reads one table in the exported snapshot and sends its rows.
pub async fn read_table(
    pg: PgConnector,
    snapshot_name: String,
    snapshot_lsn: u64,
    source: SourceInfo,
    job: SnapshotJob,
    tx: mpsc::Sender<SnapshotMessage>,
) {
    let table = job.table.clone();
    if let Err(e) = read_table_inner(pg, &snapshot_name, snapshot_lsn, source, job, &tx).await {
        error!(%table, error = %e, "snapshot of table failed");
        let _ = tx.send(SnapshotMessage::Failed(e)).await;
    }
}

async fn read_table_inner(
    pg: PgConnector,
    snapshot_name: &str,
    snapshot_lsn: u64,
    source: SourceInfo,
    job: SnapshotJob,
    tx: &mpsc::Sender<SnapshotMessage>,
) -> Result<(), CaptureError> {
    let (client, conn) = pg.connect().await?;
    let result = async {
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'; \
                 SET LOCAL DateStyle = 'ISO'; SET LOCAL TimeZone = 'UTC'; SET LOCAL extra_float_digits = 3; \
                 SET LOCAL bytea_output = 'hex'; SET LOCAL IntervalStyle = 'iso_8601'; \
                 SET LOCAL lc_monetary = 'C'",
                snapshot_name.replace('\'', "''")
            ))
            .await?;
        let columns =
            Catalog::relation_columns(&client, &job.source_name, Some(&job.publication)).await?;
        let mut schema = Catalog::default().table_schema(&client, job.source_name.clone(), &columns).await?;
        schema.id = job.table.clone();
        let schema = Arc::new(schema);
        if !schema.has_key() {
            return Err(CaptureError::Definite(format!(
                "table {} lost its key before its snapshot: add a primary key and restart capture",
                job.table
            )));
        }
        let send = |m: SnapshotMessage| async { tx.send(m).await.map_err(|_| CaptureError::Kafka("snapshot publisher stopped".into())) };
        send(SnapshotMessage::Started(job.table.clone())).await?;
        // reltuples is -1 until the table was first vacuumed or analyzed.
        let estimate: Option<f64> = client
            .query_opt(
                "SELECT c.reltuples::float8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&job.source_name.namespace, &job.source_name.name],
            )
            .await?
            .map(|r| r.get(0));
        m::snapshot_started(&source.name, &job.table.to_string(), estimate);
        info!(table = %job.table, "snapshotting table");
        let mut n: u64 = 0;
        let mut source = source.clone();
        source.snapshot = true;
        let event = |op: Op, after: Option<Vec<Datum>>, n: u64| ChangeEvent { row: sluice_schemas::RowChange { table: schema.clone(), op, before: None, after }, source: source.clone(), transaction: None, position: Position::postgres(snapshot_lsn.saturating_sub(1), n) };
        if job.truncate_first {
            send(SnapshotMessage::Event(event(Op::Truncate, None, n))).await?;
            n += 1;
        }
        let column_list: Vec<String> = schema.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let sql = format!(
            "COPY (SELECT {} FROM {}.{}) TO STDOUT",
            column_list.join(", "),
            quote_ident(&job.source_name.namespace),
            quote_ident(&job.source_name.name)
        );
        let stream = client.copy_out(&sql).await?;
        futures::pin_mut!(stream);
        let rows_counter = metrics::counter!(m::SNAPSHOT_ROWS_TOTAL, "source" => source.name.clone(), "table" => job.table.to_string());
        let mut buf = BytesMut::new();
        let mut rows = 0u64;
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(end + 1);
                let row = parse_copy_line(&line[..end], &schema)?;
                send(SnapshotMessage::Event(event(Op::Read, Some(row), n))).await?;
                n += 1;
                rows += 1;
                rows_counter.increment(1);
            }
        }
        if buf.has_remaining() {
            return Err(CaptureError::Decode(super::decoder::DecodeError("COPY output ended mid-row".into())));
        }
        client.batch_execute("COMMIT").await?;
        send(SnapshotMessage::Finished { table: job.table.clone(), rows }).await?;
        Ok(())
    }
    .await;
    conn.abort();
    result
}

/// Parses one line of COPY text format into the row's values.
fn parse_copy_line(line: &[u8], schema: &TableSchema) -> Result<Vec<Datum>, CaptureError> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b'\t').collect();
    if fields.len() != schema.columns.len() {
        return Err(CaptureError::Decode(super::decoder::DecodeError(format!(
            "COPY row of {} has {} fields for {} columns",
            schema.id,
            fields.len(),
            schema.columns.len()
        ))));
    }
    fields
        .into_iter()
        .zip(&schema.columns)
        .map(|(field, column)| {
            if field == b"\\N" {
                return Ok(Datum::Null);
            }
            let text = unescape_copy(field);
            Ok(pgtext::parse(&column.sql_type, &text).unwrap_or_else(|e| {
                metrics::counter!(m::ERRORS_TOTAL, "kind" => "value").increment(1);
                error!(table = %schema.id, column = %column.name, error = %e, "value could not be converted; sent as NULL");
                Datum::Null
            }))
        })
        .collect()
}

/// Undoes COPY text-format escaping (`\\`, `\t`, `\n`, `\r`, `\b`, `\f`, `\v`, octal, `\x` hex).
pub fn unescape_copy(field: &[u8]) -> String {
    if !field.contains(&b'\\') {
        return String::from_utf8_lossy(field).into_owned();
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = field[i + 1];
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(next - b'0');
                let mut digits = 1;
                while digits < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    digits += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut digits = 0;
                while digits < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    digits += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_escapes_are_undone() {
        assert_eq!(unescape_copy(b"plain"), "plain");
        assert_eq!(unescape_copy(b"a\\tb\\nc\\\\d"), "a\tb\nc\\d");
        assert_eq!(unescape_copy(b"\\x41\\101\\r"), "AA\r");
        assert_eq!(unescape_copy(b"\\\\x00ff"), "\\x00ff");
    }
}
