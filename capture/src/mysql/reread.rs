//! Reading chosen rows again while the binlog streams: what `sluice verify --repair` asks of a
//! MySQL/MariaDB source's capture.
//!
//! MySQL and MariaDB have no logical-decoding messages, so a **signal** is a row of the
//! source's `signal_table` (see [`MysqlSourceConfig::signal_table`]), written and deleted in
//! one transaction: the table stays empty, and the binlog carries the row. Its `payload` is the
//! same JSON as a PostgreSQL signal's ([`Signal`]), addressed to a capture by its `server_id`.
//!
//! Capture acts on a signal when it reads the signal's commit. It reads the rows in a
//! consistent snapshot whose binlog position `P` it knows (MariaDB's `binlog_snapshot_file` /
//! `_position`, lock-free; MySQL's under a brief global read lock, as the initial snapshot).
//! The rows are the source's state at `P` exactly, so no watermarks are needed: capture
//! publishes them — `op = r` for the rows the source has, deletes for the keys it lacks — when
//! the stream reaches `P`, at `P`'s position. Changes before `P` are published before them,
//! changes after `P` after them, so the sink's exactly-once rules hold: a later change wins.
//! A request in flight when capture stops is not kept; `sluice verify` asks again.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use sluice_schemas::{pgtext, Datum, EnvelopeCodec, TableId, TableSchema};

use super::catalog::catalog_schema;
use super::config::MysqlSourceConfig;
use super::mysql_error;
use super::position::{pack, split_file};
use super::preflight::opts;
use super::snapshot::consistent_snapshot;
use super::types;
use crate::postgres::reread::Signal;
use crate::CaptureError;

/// The statement that makes a signal table (`sluice verify` runs it when the table is
/// missing).
pub fn signal_table_ddl(table: &TableId) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (id BIGINT AUTO_INCREMENT PRIMARY KEY, payload LONGTEXT NOT NULL)",
        quoted(table)
    )
}

/// Who a signal is for: the capture registered with the source under this `server_id` (unique
/// among the server's replicas, as a PostgreSQL slot's name is among its slots).
pub fn recipient(config: &MysqlSourceConfig) -> String {
    format!("server_id={}", config.server_id)
}

/// Writes `signal` into the source's signal table (made when missing), in a transaction that
/// deletes the row again: the binlog carries it to capture, the table stays empty.
pub async fn send_signal(
    name: &str,
    config: &MysqlSourceConfig,
    password: Option<&str>,
    signal: &Signal,
) -> Result<(), CaptureError> {
    let table = config.signal_table_id().ok_or_else(|| {
        CaptureError::Definite(format!(
            "sources.{name}.signal_table is not set: a MySQL/MariaDB source is signalled through a table (set it to \"<database>.sluice_signal\"; sluice verify creates the table)"
        ))
    })?;
    let payload =
        serde_json::to_string(signal).map_err(|e| CaptureError::Definite(e.to_string()))?;
    let mut conn = Conn::new(opts(name, config, password)?)
        .await
        .map_err(mysql_error)?;
    let result = async {
        let exists: Option<u64> = conn
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&table.namespace, &table.name),
            )
            .await
            .map_err(mysql_error)?;
        if exists.is_none() {
            let ddl = signal_table_ddl(&table);
            conn.query_drop(&ddl).await.map_err(|e| {
                CaptureError::Definite(format!(
                    "cannot make the signal table sources.{name}.signal_table ({e}): run `{ddl}` at the source, or grant the user CREATE on it"
                ))
            })?;
            tracing::info!(%table, "made the signal table a repair signals capture through");
        }
        let write = format!(
            "INSERT INTO {t} (payload) VALUES (?)",
            t = quoted(&table)
        );
        let mut tx = conn
            .start_transaction(mysql_async::TxOpts::default())
            .await
            .map_err(mysql_error)?;
        tx.exec_drop(&write, (payload,)).await.map_err(|e| {
            CaptureError::Definite(format!(
                "cannot write a signal into {table} ({e}): the user needs INSERT and DELETE on it"
            ))
        })?;
        let id = tx.last_insert_id();
        tx.exec_drop(
            format!("DELETE FROM {} WHERE id = ?", quoted(&table)),
            (id,),
        )
        .await
        .map_err(|e| {
            CaptureError::Definite(format!(
                "cannot delete the signal from {table} ({e}): the user needs INSERT and DELETE on it"
            ))
        })?;
        tx.commit().await.map_err(mysql_error)
    }
    .await;
    let _ = conn.disconnect().await;
    result
}

/// `database`.`table`, quoted.
fn quoted(table: &TableId) -> String {
    format!(
        "`{}`.`{}`",
        table.namespace.replace('`', "``"),
        table.name.replace('`', "``")
    )
}

/// Rows read again at a known binlog position, waiting for the stream to reach it.
pub(super) struct Pending {
    /// The snapshot's position, packed: the rows are the source's state there.
    pub at: u64,
    /// The binlog file it is in (for the events' source block).
    pub file: Arc<str>,
    pub codec: Arc<EnvelopeCodec>,
    /// Rows the source has.
    pub rows: Vec<Vec<Datum>>,
    /// Keys the source does not have, in key-column order.
    pub absent: Vec<Vec<Datum>>,
}

impl Pending {
    /// The before image of a delete of `key`: the key's values, NULL elsewhere.
    pub fn delete_image(&self, key: &[Datum]) -> Vec<Datum> {
        let table = &self.codec.table;
        let mut row = vec![Datum::Null; table.columns.len()];
        for (i, v) in table.key_indices().into_iter().zip(key) {
            row[i] = v.clone();
        }
        row
    }
}

/// How many times a read is taken again when its snapshot does not yet include the signal's
/// transaction (committed to the binlog, not yet in InnoDB), and the pause between.
const BEHIND_TRIES: u32 = 100;
const BEHIND_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads the rows of `keys` (texts of `columns`, the table's key) of `table` in a consistent
/// snapshot at or after the stream's position `here` (packed). The inner error is why the
/// request is refused (a key that does not parse, a key that is not the table's).
pub(super) async fn read(
    conn: &mut Conn,
    table: &TableId,
    columns: &[String],
    keys: &[Vec<String>],
    here: u64,
    codec: impl FnOnce(TableSchema) -> Result<Arc<EnvelopeCodec>, CaptureError>,
) -> Result<Result<Pending, String>, CaptureError> {
    conn.query_drop("SET SESSION time_zone = '+00:00'")
        .await
        .map_err(mysql_error)?;
    let (schema, selects) = catalog_schema(conn, table).await?;
    let key_names: Vec<String> = schema.key_columns().map(|c| c.name.clone()).collect();
    if key_names != columns {
        return Ok(Err(format!(
            "the request names the key columns {columns:?}, the table's key is {key_names:?}"
        )));
    }
    let (wanted, condition) = match key_condition(conn, &schema, keys).await? {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let sql = format!(
        "SELECT {} FROM {} WHERE {condition}",
        selects.join(", "),
        quoted(table),
    );
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(mysql_error)?;
    // A snapshot that includes everything the stream has read (the signal among it).
    let mut tries = 0;
    let (file, pos) = loop {
        let (file, pos) = consistent_snapshot(conn).await?;
        let seq = split_file(&file).map(|(_, s)| s).ok_or_else(|| {
            CaptureError::Definite(format!("unexpected binlog file name `{file}`"))
        })?;
        if pack(seq, pos) >= here {
            break (file, pos);
        }
        conn.query_drop("COMMIT").await.map_err(mysql_error)?;
        tries += 1;
        if tries >= BEHIND_TRIES {
            return Ok(Err(format!(
                "the source's snapshots stayed behind the binlog position the stream has read ({file}:{pos})"
            )));
        }
        tokio::time::sleep(BEHIND_PAUSE).await;
    };
    let found: Result<Vec<Row>, _> = conn.query(&sql).await;
    conn.query_drop("COMMIT").await.map_err(mysql_error)?;
    let found = match found {
        Ok(rows) => rows,
        Err(mysql_async::Error::Server(e)) => {
            return Ok(Err(format!("cannot read the rows: {}", e.message)))
        }
        Err(e) => return Err(mysql_error(e)),
    };
    let mut rows = Vec::with_capacity(found.len());
    for row in found {
        let values = row
            .unwrap()
            .into_iter()
            .zip(&schema.columns)
            .map(|(v, c)| {
                types::text_datum(&c.sql_type, v).map_err(|e| format!("{table}.{}: {e}", c.name))
            })
            .collect::<Result<Vec<Datum>, String>>();
        match values {
            Ok(v) => rows.push(v),
            Err(e) => return Ok(Err(e)),
        }
    }
    let key_indices = schema.key_indices();
    let absent = wanted
        .into_iter()
        .filter(|k| {
            !rows
                .iter()
                .any(|r: &Vec<Datum>| key_indices.iter().map(|i| &r[*i]).eq(k.iter()))
        })
        .collect();
    let seq = split_file(&file).map_or(0, |(_, s)| s);
    Ok(Ok(Pending {
        at: pack(seq, pos),
        file: Arc::from(file.as_str()),
        codec: codec(schema)?,
        rows,
        absent,
    }))
}

/// The key values of `keys` (texts of `schema`'s key columns) and the condition that finds
/// their rows: `(k1, k2) IN ((…), …)`, the values as literals escaped as the session's
/// `sql_mode` reads them (the text protocol: the converters read text). The inner error says
/// why a key cannot be looked up.
pub async fn key_condition(
    conn: &mut Conn,
    schema: &TableSchema,
    keys: &[Vec<String>],
) -> Result<Result<(Vec<Vec<Datum>>, String), String>, CaptureError> {
    let key_columns: Vec<&sluice_schemas::Column> = schema.key_columns().collect();
    let no_backslash_escapes = no_backslash_escapes(conn).await?;
    let mut wanted: Vec<Vec<Datum>> = Vec::with_capacity(keys.len());
    let mut tuples: Vec<String> = Vec::with_capacity(keys.len());
    for key in keys {
        if key.len() != key_columns.len() {
            return Ok(Err(format!(
                "key {key:?} does not have {} values",
                key_columns.len()
            )));
        }
        let mut values = Vec::with_capacity(key.len());
        let mut literals = Vec::with_capacity(key.len());
        for (text, c) in key.iter().zip(&key_columns) {
            let value = match pgtext::parse(&c.sql_type, text) {
                Ok(v) => v,
                Err(e) => return Ok(Err(format!("key {key:?}: {e}"))),
            };
            match literal(&value, no_backslash_escapes) {
                Some(l) => literals.push(l),
                None => {
                    return Ok(Err(format!(
                        "a key value of {}.{} cannot be looked up",
                        schema.id, c.name
                    )))
                }
            }
            values.push(value);
        }
        wanted.push(values);
        tuples.push(format!("({})", literals.join(", ")));
    }
    let names: Vec<String> = key_columns
        .iter()
        .map(|c| format!("`{}`", c.name.replace('`', "``")))
        .collect();
    let condition = if tuples.is_empty() {
        "FALSE".to_string()
    } else {
        format!("({}) IN ({})", names.join(", "), tuples.join(", "))
    };
    Ok(Ok((wanted, condition)))
}

/// Whether the session reads backslashes in string literals as themselves (`sql_mode` has
/// `NO_BACKSLASH_ESCAPES`).
pub async fn no_backslash_escapes(conn: &mut Conn) -> Result<bool, CaptureError> {
    let on: Option<u8> = conn
        .query_first("SELECT @@SESSION.sql_mode LIKE '%NO_BACKSLASH_ESCAPES%'")
        .await
        .map_err(mysql_error)?;
    Ok(on == Some(1))
}

/// A key value as an SQL literal the server compares as the column's type (`None`: a value no
/// key column holds). Dates and times go as the text the server reads back as the column's
/// type (the session is in UTC); bytes as a hex literal.
pub fn literal(v: &Datum, no_backslash_escapes: bool) -> Option<String> {
    const DAY_US: i64 = 86_400_000_000;
    let date = |days: i64| {
        let (y, m, d) = pgtext::civil_from_days(days);
        format!("{y:04}-{m:02}-{d:02}")
    };
    let time = |us: i64| {
        let (sign, us) = if us < 0 { ("-", -us) } else { ("", us) };
        let (s, frac) = (us / 1_000_000, us % 1_000_000);
        format!(
            "{sign}{:02}:{:02}:{:02}.{frac:06}",
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    };
    let text = |s: String| Value::Bytes(s.into_bytes()).as_sql(no_backslash_escapes);
    Some(match v {
        Datum::Bool(b) => i64::from(*b).to_string(),
        Datum::Int(i) => i.to_string(),
        Datum::Long(i) => i.to_string(),
        Datum::Float(f) => Value::Double(f64::from(*f)).as_sql(no_backslash_escapes),
        Datum::Double(f) => Value::Double(*f).as_sql(no_backslash_escapes),
        Datum::String(s) | Datum::Decimal(s) | Datum::Uuid(s) => text(s.clone()),
        Datum::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
            format!("X'{hex}'")
        }
        Datum::Date(d) => text(date(i64::from(*d))),
        Datum::TimeMicros(us) => text(time(*us)),
        Datum::TimestampMicros(us) => text(format!(
            "{} {}",
            date(us.div_euclid(DAY_US)),
            time(us.rem_euclid(DAY_US))
        )),
        Datum::Null | Datum::Unchanged | Datum::Array(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_become_literals_the_server_compares_as_the_column() {
        let l = |v: &Datum| literal(v, false).unwrap();
        assert_eq!(l(&Datum::Long(7)), "7");
        assert_eq!(l(&Datum::Date(1)), "'1970-01-02'");
        assert_eq!(
            l(&Datum::TimestampMicros(-1_500_000)),
            "'1969-12-31 23:59:58.500000'"
        );
        assert_eq!(
            l(&Datum::TimeMicros(-(839 * 3600 - 1) * 1_000_000)),
            "'-838:59:59.000000'"
        );
        assert_eq!(l(&Datum::Bytes(vec![0, 255])), "X'00FF'");
        assert_eq!(l(&Datum::String("it's \\".into())), "'it\\'s \\\\'");
        assert_eq!(
            literal(&Datum::String("it's".into()), true).unwrap(),
            "'it''s'"
        );
        assert_eq!(literal(&Datum::Null, false), None);
    }

    #[test]
    fn a_signal_table_is_made_quoted() {
        assert_eq!(
            signal_table_ddl(&TableId::new("ops", "sluice`signal")),
            "CREATE TABLE IF NOT EXISTS `ops`.`sluice``signal` (id BIGINT AUTO_INCREMENT PRIMARY KEY, payload LONGTEXT NOT NULL)"
        );
    }
}
