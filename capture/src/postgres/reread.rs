//! Reading chosen rows again while the stream runs: what `sluice verify --repair` asks for.
//!
//! A **signal** — a transactional logical-decoding message with prefix [`SIGNAL_PREFIX`],
//! written into the source by `sluice verify` — names a capture's slot, a table and the keys of
//! the rows to read again. Capture reads them between two **watermarks** it writes itself
//! (non-transactional messages with prefix [`WATERMARK_PREFIX`]) and publishes them when the
//! stream reaches the high watermark: `op = r` events for the rows the source has, deletes for
//! the keys it no longer has, at the high watermark's position. A key that a transaction
//! changed meanwhile is left out, since that transaction's own event carries the newer state —
//! DBLog's algorithm, as Debezium's incremental snapshots use it:
//!
//! - changes committed between the watermarks are in the stream between them;
//! - the rows are read in a snapshot taken after the low watermark, so a transaction committed
//!   before it is in the rows, except one still finishing its commit when the snapshot was
//!   taken: such transactions are the snapshot's in-progress list, and their changes count
//!   wherever they appear before the high watermark.
//!
//! The events carry source positions like any other, so the sink's exactly-once rules hold:
//! a replay is skipped, a later change wins. A request in flight when capture stops is not
//! kept; `sluice verify` finds those rows still different and says so.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_schemas::{pgtext, Datum, EnvelopeCodec, TableId};

/// Prefix of the signals capture takes (`pg_logical_emit_message(true, prefix, json)`).
pub const SIGNAL_PREFIX: &str = "sluice.signal";
/// Prefix of the watermarks capture writes around a re-read.
pub const WATERMARK_PREFIX: &str = "sluice.watermark";
/// Keys one read takes at most; a longer request is read in several windows.
pub const CHUNK_KEYS: usize = 1_000;

/// A signal's content (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// The slot of the capture it is for (several captures may read one database).
    pub slot: String,
    /// What to do: `reread`.
    pub op: String,
    /// The configured table (`schema.table`).
    pub table: String,
    /// The key columns the keys are given in, in the table's order.
    pub columns: Vec<String>,
    /// Each key: the text form of each key column (as `::text` gives it, with `DateStyle =
    /// ISO`, `TimeZone = UTC`, `extra_float_digits = 3`, `bytea_output = hex`, `IntervalStyle
    /// = iso_8601`).
    pub keys: Vec<Vec<String>>,
}

/// The session settings a re-read and its signal's key texts are written under (those of the
/// snapshot, so values parse as capture parses every other value).
pub const TEXT_SETTINGS: &str = "SET LOCAL DateStyle = 'ISO'; SET LOCAL TimeZone = 'UTC'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'; \
     SET LOCAL IntervalStyle = 'iso_8601'; SET LOCAL lc_monetary = 'C'";

/// A watermark's content (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub id: String,
    /// `low` or `high`.
    pub mark: String,
}

/// Part of a request, read in one window.
#[derive(Debug)]
pub struct Chunk {
    pub table: TableId,
    pub columns: Vec<String>,
    pub keys: Vec<Vec<String>>,
}

/// Requests waiting, and the window open now.
#[derive(Default)]
pub struct Rereads {
    pub queue: VecDeque<Chunk>,
    pub window: Option<Window>,
    next: u64,
}

impl Rereads {
    /// Queues a signal's keys, in chunks.
    pub fn push(&mut self, table: TableId, signal: Signal) {
        for keys in signal.keys.chunks(CHUNK_KEYS) {
            self.queue.push_back(Chunk {
                table: table.clone(),
                columns: signal.columns.clone(),
                keys: keys.to_vec(),
            });
        }
    }

    /// A new window id, unique within this process's life.
    pub fn next_id(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", std::process::id(), self.next)
    }

    /// A change of `table` keyed `key` by transaction `xid`, read from the stream.
    pub fn observe(&mut self, table: &TableId, key: &[&Datum], xid: u32) {
        if let Some(w) = self.window.as_mut() {
            w.observe(table, key, xid);
        }
    }

    /// A truncate of `table`: nothing read before it may be published after it.
    pub fn truncated(&mut self, table: &TableId) {
        if let Some(w) = self.window.as_mut().filter(|w| w.codec.table.id == *table) {
            w.skipped += w.rows.len() as u64;
            w.rows.clear();
        }
    }
}

/// The rows read between a low and a high watermark, waiting for the high one.
pub struct Window {
    pub id: String,
    pub codec: Arc<EnvelopeCodec>,
    /// The low watermark was read: every change from here on counts.
    pub open: bool,
    /// Transactions in progress when the rows were read (32-bit xids): their changes count
    /// before the low watermark too.
    pub in_progress: HashSet<u32>,
    /// Rows the source has: each row's values.
    pub rows: Vec<Vec<Datum>>,
    /// Keys the source does not have: each key's values, in key-column order.
    pub absent: Vec<Vec<Datum>>,
    /// Rows and keys left out because a change touched them meanwhile.
    pub skipped: u64,
    /// The positions of the table's key columns (looked at for every change in the window).
    key_indices: Vec<usize>,
}

impl Window {
    /// Builds the window from what was read: `found` are the rows' column texts (`None` for
    /// NULL) in the codec's column order, `requested` the keys asked for.
    pub fn new(
        id: String,
        codec: Arc<EnvelopeCodec>,
        in_progress: HashSet<u32>,
        found: Vec<Vec<Option<String>>>,
        requested: &[Vec<String>],
    ) -> Result<Window, String> {
        let table = codec.table.clone();
        let rows: Vec<Vec<Datum>> = found
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&table.columns)
                    .map(|(v, c)| match v {
                        None => Ok(Datum::Null),
                        Some(text) => pgtext::parse(&c.sql_type, text)
                            .map_err(|e| format!("{}.{}: {e}", table.id, c.name)),
                    })
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        let key_columns: Vec<_> = table.key_columns().collect();
        let key_indices = table.key_indices();
        let mut absent = Vec::new();
        for key in requested {
            let values: Vec<Datum> = key
                .iter()
                .zip(&key_columns)
                .map(|(text, c)| {
                    pgtext::parse(&c.sql_type, text).map_err(|e| format!("key {key:?}: {e}"))
                })
                .collect::<Result<_, _>>()?;
            let found = rows
                .iter()
                .any(|r| key_indices.iter().map(|i| &r[*i]).eq(values.iter()));
            if !found {
                absent.push(values);
            }
        }
        Ok(Window {
            id,
            codec,
            open: false,
            in_progress,
            rows,
            absent,
            skipped: 0,
            key_indices,
        })
    }

    fn observe(&mut self, table: &TableId, key: &[&Datum], xid: u32) {
        if self.codec.table.id != *table || !(self.open || self.in_progress.contains(&xid)) {
            return;
        }
        let before = self.rows.len() + self.absent.len();
        let indices = &self.key_indices;
        self.rows
            .retain(|r| !indices.iter().map(|i| &r[*i]).eq(key.iter().copied()));
        self.absent.retain(|k| !k.iter().eq(key.iter().copied()));
        self.skipped += (before - self.rows.len() - self.absent.len()) as u64;
    }

    /// The before image of a delete of `key`: the key's values, NULL elsewhere (as a delete
    /// under the default replica identity carries it).
    pub fn delete_image(&self, key: &[Datum]) -> Vec<Datum> {
        let mut row = vec![Datum::Null; self.codec.table.columns.len()];
        for (i, v) in self.key_indices.iter().copied().zip(key) {
            row[i] = v.clone();
        }
        row
    }
}

/// The SQL that reads the rows of `keys` (one text array per key column, as `$1`, `$2`, …,
/// cast to the column's type so its index is used): every column's text, in the table's order.
/// `key_columns` pairs each key column with its type (`format_type`).
pub fn select_sql(qualified: &str, columns: &[String], key_columns: &[(String, String)]) -> String {
    let values: Vec<String> = columns
        .iter()
        .map(|c| format!("t.{}::text", quote(c)))
        .collect();
    format!(
        "SELECT {} FROM {qualified} t WHERE {}",
        values.join(", "),
        key_in(key_columns)
    )
}

/// The condition that row `t`'s key is among `$1`, `$2`, … (one text array per key column,
/// cast to the column's type so its index is used): `key_columns` pairs each key column with
/// its type ([`column_types`]).
pub fn key_in(key_columns: &[(String, String)]) -> String {
    let keys: Vec<String> = key_columns
        .iter()
        .map(|(c, _)| format!("t.{}", quote(c)))
        .collect();
    let arrays: Vec<String> = key_columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::text[]::{ty}[]", i + 1))
        .collect();
    format!(
        "({}) IN (SELECT * FROM unnest({}))",
        keys.join(", "),
        arrays.join(", ")
    )
}

fn quote(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

/// Each of `columns` of `table` with its type (`format_type`, with modifiers); a column the
/// table lacks is left out.
pub async fn column_types(
    client: &tokio_postgres::Client,
    table: &TableId,
    columns: &[String],
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let types: std::collections::HashMap<String, String> = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = format('%I.%I', $1::text, $2::text)::regclass AND a.attname = ANY($3)",
            &[&table.namespace, &table.name, &columns],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(columns
        .iter()
        .filter_map(|c| types.get(c).map(|t| (c.clone(), t.clone())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_schemas::avro::Connector;
    use sluice_schemas::{Column, SqlType, TableSchema};

    fn codec() -> Arc<EnvelopeCodec> {
        let column = |name: &str, key: bool| Column {
            name: name.into(),
            sql_type: SqlType::Int64,
            key,
            missing: None,
        };
        let table = TableSchema {
            id: TableId::new("public", "t"),
            columns: vec![column("id", true), column("v", false)],
        };
        Arc::new(EnvelopeCodec::new("p", "s", Connector::Postgres, Arc::new(table)).unwrap())
    }

    fn window() -> Window {
        let found = vec![
            vec![Some("1".into()), Some("10".into())],
            vec![Some("2".into()), None],
        ];
        let requested = vec![vec!["1".into()], vec!["2".into()], vec!["3".into()]];
        Window::new("w".into(), codec(), [7].into(), found, &requested).unwrap()
    }

    #[test]
    fn keys_the_source_lacks_are_deletes_and_a_change_in_the_window_takes_the_row_out() {
        let table = TableId::new("public", "t");
        let mut w = window();
        assert_eq!(w.rows.len(), 2);
        assert_eq!(w.absent, vec![vec![Datum::Long(3)]]);
        assert_eq!(
            w.delete_image(&w.absent[0].clone()),
            vec![Datum::Long(3), Datum::Null]
        );
        // Before the low watermark only the transactions in progress at the read count.
        w.observe(&table, &[&Datum::Long(1)], 5);
        assert_eq!(w.rows.len(), 2);
        w.observe(&table, &[&Datum::Long(1)], 7);
        assert_eq!(w.rows.len(), 1);
        // After it, every change does; another table's never.
        w.open = true;
        w.observe(&TableId::new("public", "u"), &[&Datum::Long(2)], 5);
        assert_eq!(w.rows.len(), 1);
        w.observe(&table, &[&Datum::Long(3)], 5);
        assert!(w.absent.is_empty());
        assert_eq!(w.skipped, 2);
    }

    #[test]
    fn the_read_casts_each_key_array_to_its_column_type() {
        assert_eq!(
            select_sql(
                "\"public\".\"t\"",
                &["id".into(), "v".into()],
                &[("id".into(), "bigint".into()), ("at".into(), "timestamp with time zone".into())]
            ),
            "SELECT t.\"id\"::text, t.\"v\"::text FROM \"public\".\"t\" t WHERE (t.\"id\", t.\"at\") \
             IN (SELECT * FROM unnest($1::text[]::bigint[], $2::text[]::timestamp with time zone[]))"
        );
    }
}
