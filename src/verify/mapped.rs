//! Comparing a table the router writes through a mapping scheme.
//!
//! The scheme runs in Sluice, not in SQL, so the comparison does too: verify reads the source
//! table's rows, maps each one through the scheme exactly as the router does (renames, drops,
//! defaults, computed and masked fields, the filter, a new key) and compares what comes out with
//! the sink table's rows, read with the target's types. Each side is hashed per bucket of key
//! hashes (a count and a hash sum), then the rows of the buckets that differ are read again; so
//! both tables travel once in full, and the differing buckets once more.
//!
//! Every target field is compared: masks are functions of the value. A field computed from the
//! event's operation or time (rather than the row) is computed here as for a read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use futures::{pin_mut, TryStreamExt};
use sluice_schemas::scheme::Mapping;
use sluice_schemas::{pgtext, Datum, Op, SqlType, TableId, TableSchema};

use super::settle::{Offsets, Pipeline, Watch};
use super::{differences, quote, Difference, Options, Repair, RepairReport, TableReport};

/// A key's text at one side and its row's hash.
#[derive(Debug, Clone)]
struct Kept {
    hash: u64,
    /// At a PostgreSQL source, the source row's `xmin` (see `settle.rs`).
    version: Option<String>,
    /// The text of each key column, as the rows at that side can be asked for again by it
    /// (at the source: the source key; at the sink: the target key).
    key: Vec<String>,
    /// The text of each target key column (at the sink, `key` again).
    target: Vec<String>,
}

/// Which rows a read keeps (by the bucket of their target key).
#[derive(Clone, Copy)]
enum Keep<'a> {
    Buckets(Option<&'a HashSet<u64>>),
    /// A read by key: every row it finds.
    All,
}

/// Which rows a read asks for.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// The whole table, keeping those of some buckets.
    All(Option<&'a HashSet<u64>>),
    /// The rows of these keys (each the texts of the side's key columns).
    Keys(&'a [Vec<String>]),
}

impl Rows<'_> {
    fn keep(&self) -> Keep<'_> {
        match self {
            Rows::All(buckets) => Keep::Buckets(*buckets),
            Rows::Keys(_) => Keep::All,
        }
    }
}

/// What a full read of one side gives.
#[derive(Default)]
struct Scan {
    rows: u64,
    buckets: HashMap<u64, (u64, u64)>,
    /// Rows of the buckets asked for, by the canonical text of their target key.
    kept: BTreeMap<String, Kept>,
    /// Source rows the scheme refuses (the router dead-letters them).
    refused: u64,
}

impl Scan {
    /// `key_texts` gives the side's key texts and the target key texts.
    fn add(
        &mut self,
        (key, row_hash, version): (String, u64, Option<String>),
        key_texts: impl FnOnce() -> (Vec<String>, Vec<String>),
        n: u64,
        keep: Keep<'_>,
    ) {
        let key_hash = hash(&key);
        let bucket = key_hash % n;
        self.rows += 1;
        let entry = self.buckets.entry(bucket).or_default();
        entry.0 += 1;
        entry.1 = entry.1.wrapping_add(hash(&(key_hash, row_hash)));
        let kept = match keep {
            Keep::Buckets(buckets) => buckets.is_some_and(|k| k.contains(&bucket)),
            Keep::All => true,
        };
        if kept {
            let (key_texts, target) = key_texts();
            self.kept.insert(
                key,
                Kept {
                    hash: row_hash,
                    version,
                    key: key_texts,
                    target,
                },
            );
        }
    }

    /// A read by key of `keys` (target keys) made: its rows replace what was kept for them.
    fn merge(&mut self, keys: &[String], read: Scan) {
        for k in keys {
            self.kept.remove(k);
        }
        self.kept.extend(read.kept);
    }
}

fn hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The texts of `row`'s values at `indices`, as `::text` writes them.
fn texts(table: &TableSchema, row: &[Datum], indices: &[usize]) -> Vec<String> {
    indices
        .iter()
        .map(|i| {
            pgtext::render(&table.columns[*i].sql_type, &row[*i]).unwrap_or_else(|| "NULL".into())
        })
        .collect()
}

/// A row's hash.
fn row_hash(row: &[Datum]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for value in row {
        hash_datum(value, &mut h);
    }
    h.finish()
}

/// Feeds a value to `h` (floats by their bits: `Datum` is not `Hash` because of them).
fn hash_datum(value: &Datum, h: &mut impl Hasher) {
    std::mem::discriminant(value).hash(h);
    match value {
        Datum::Null | Datum::Unchanged => {}
        Datum::Bool(v) => v.hash(h),
        Datum::Int(v) | Datum::Date(v) => v.hash(h),
        Datum::Long(v) | Datum::TimeMicros(v) | Datum::TimestampMicros(v) => v.hash(h),
        Datum::Float(v) => v.to_bits().hash(h),
        Datum::Double(v) => v.to_bits().hash(h),
        Datum::String(v) | Datum::Decimal(v) | Datum::Uuid(v) => v.hash(h),
        Datum::Bytes(v) => v.hash(h),
        Datum::Array(items) => {
            items.len().hash(h);
            for item in items {
                hash_datum(item, h);
            }
        }
    }
}

/// Parses a row read as text with `table`'s types.
fn parse(table: &TableSchema, row: &tokio_postgres::Row) -> anyhow::Result<Vec<Datum>> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| match row.get::<_, Option<String>>(i) {
            None => Ok(Datum::Null),
            Some(text) => pgtext::parse(&c.sql_type, &text)
                .map_err(|e| anyhow::anyhow!("{}.{}: {e}", table.id, c.name)),
        })
        .collect()
}

/// The columns as text, and with `version` the row's `xmin` after them; with `key` (each key
/// column and its type), only the rows whose key is among `$1`, `$2`, … (one text array per key
/// column, cast to the column's type so its index is used).
fn select(
    table: &TableId,
    columns: &[String],
    version: bool,
    key: Option<&[(String, String)]>,
) -> String {
    let list: Vec<String> = columns
        .iter()
        .map(|c| format!("t.{}::text", quote(c)))
        .collect();
    let condition = key.map_or_else(String::new, |key| {
        format!(" WHERE {}", sluice_capture::postgres::reread::key_in(key))
    });
    format!(
        "SELECT {}{} FROM {}.{} t{condition}",
        list.join(", "),
        if version { ", t.xmin::text" } else { "" },
        quote(&table.namespace),
        quote(&table.name)
    )
}

/// Each of `columns` with its type (`format_type`) in `table`.
async fn typed(
    client: &tokio_postgres::Client,
    table: &TableId,
    columns: &[String],
) -> anyhow::Result<Vec<(String, String)>> {
    let typed = sluice_capture::postgres::reread::column_types(client, table, columns).await?;
    anyhow::ensure!(
        typed.len() == columns.len(),
        "{table} lacks one of the key columns {columns:?}"
    );
    Ok(typed)
}

/// Key texts as one text array per key column (the parameters of [`select`]'s condition).
fn by_column(keys: &[Vec<String>], columns: usize) -> Vec<Vec<String>> {
    (0..columns)
        .map(|i| {
            keys.iter()
                .map(|k| k.get(i).cloned().unwrap_or_default())
                .collect()
        })
        .collect()
}

/// Keys read in one statement at most.
const KEYS_PER_READ: usize = 10_000;

/// Where the source's rows are read.
pub(super) enum Source<'a> {
    /// `table`: the configured table's name at the source now (it may have been renamed).
    Postgres {
        client: &'a tokio_postgres::Client,
        table: TableId,
    },
    /// Read as MySQL/MariaDB capture's snapshot reads them.
    Mysql {
        name: &'a str,
        config: &'a sluice_capture::mysql::MysqlSourceConfig,
        password: Option<&'a str>,
    },
}

/// Who takes a repair's request at the source.
enum Signaller<'a> {
    /// A PostgreSQL source's capture, by its slot (a logical-decoding message).
    Postgres(&'a tokio_postgres::Client, &'a str),
    /// A MySQL/MariaDB source's capture, through its signal table.
    Mysql {
        name: &'a str,
        config: &'a sluice_capture::mysql::MysqlSourceConfig,
        password: Option<&'a str>,
    },
}

impl Signaller<'_> {
    /// Asks capture to read the rows of `keys` (texts of `key_columns`) of `table` again and
    /// send them through the pipeline.
    async fn ask(
        &self,
        table: &TableId,
        key_columns: &[String],
        keys: &[Vec<String>],
    ) -> anyhow::Result<()> {
        match self {
            Signaller::Postgres(client, slot) => {
                super::signal(client, slot, table, key_columns, keys).await
            }
            Signaller::Mysql {
                name,
                config,
                password,
            } => {
                use sluice_capture::mysql::reread;
                for part in keys.chunks(10_000) {
                    let signal = sluice_capture::postgres::reread::Signal {
                        slot: reread::recipient(config),
                        op: "reread".into(),
                        table: table.to_string(),
                        columns: key_columns.to_vec(),
                        keys: part.to_vec(),
                    };
                    reread::send_signal(name, config, *password, &signal)
                        .await
                        .map_err(|e| anyhow::anyhow!("signalling capture at the source: {e}"))?;
                }
                tracing::info!(%table, rows = keys.len(), "repair: asked capture to send the differing rows again");
                Ok(())
            }
        }
    }
}

/// Where the sink's rows are read.
pub(super) enum Sink<'a> {
    Postgres(&'a tokio_postgres::Client),
    /// Read back as the MySQL sink wrote them ([`mysql_datum`]).
    Mysql(&'a mysql_async::Pool),
}

impl Sink<'_> {
    /// The sink table's column names (none when it does not exist).
    async fn columns(&self, table: &TableId) -> anyhow::Result<Vec<String>> {
        Ok(match self {
            Sink::Postgres(client) => super::columns(client, table).await?.0,
            Sink::Mysql(pool) => {
                use mysql_async::prelude::Queryable;
                let mut conn = pool.get_conn().await?;
                conn.exec(
                    "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                    (&table.namespace, &table.name),
                )
                .await?
            }
        })
    }

    async fn count(&self, table: &TableId) -> anyhow::Result<i64> {
        Ok(match self {
            Sink::Postgres(client) => client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {}.{}",
                        quote(&table.namespace),
                        quote(&table.name)
                    ),
                    &[],
                )
                .await?
                .get(0),
            Sink::Mysql(pool) => {
                use mysql_async::prelude::Queryable;
                let mut conn = pool.get_conn().await?;
                conn.query_first(format!("SELECT COUNT(*) FROM {}", mysql_name(table)))
                    .await?
                    .unwrap_or(0)
            }
        })
    }
}

fn mysql_name(table: &TableId) -> String {
    format!(
        "`{}`.`{}`",
        table.namespace.replace('`', "``"),
        table.name.replace('`', "``")
    )
}

/// A value read back as text from a MySQL/MariaDB sink column, as the value of `ty` the sink
/// wrote there (`sluice_sinks::mysql::mysql_value`): booleans as 0/1, times as `TIME(6)`,
/// timestamps in UTC, arrays as JSON arrays (numbers and booleans as such, other elements as
/// their PostgreSQL text). The rest reads as a MySQL/MariaDB source column of the type would.
pub(super) fn mysql_datum(ty: &SqlType, value: mysql_async::Value) -> anyhow::Result<Datum> {
    use sluice_capture::mysql::types::text_datum;
    let text = |v: &mysql_async::Value| match v {
        mysql_async::Value::Bytes(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        other => Err(anyhow::anyhow!("unexpected {other:?} in a text result")),
    };
    if value == mysql_async::Value::NULL {
        return Ok(Datum::Null);
    }
    Ok(match ty {
        SqlType::Bool => Datum::Bool(text(&value)? != "0"),
        SqlType::Time => text_datum(&SqlType::TimeSpan, value).map_err(anyhow::Error::msg)?,
        SqlType::Money => pgtext::parse(ty, &text(&value)?)?,
        SqlType::Array(elem) => {
            let json: serde_json::Value = serde_json::from_str(&text(&value)?)?;
            let items = json
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("an array column holds {json}"))?;
            Datum::Array(
                items
                    .iter()
                    .map(|item| {
                        Ok(match item {
                            serde_json::Value::Null => Datum::Null,
                            serde_json::Value::Bool(b) => Datum::Bool(*b),
                            serde_json::Value::Number(n) => match **elem {
                                SqlType::Int64 => Datum::Long(
                                    n.as_i64()
                                        .ok_or_else(|| anyhow::anyhow!("{n} is no bigint"))?,
                                ),
                                _ => Datum::Int(
                                    n.as_i64()
                                        .and_then(|v| i32::try_from(v).ok())
                                        .ok_or_else(|| anyhow::anyhow!("{n} is no int"))?,
                                ),
                            },
                            serde_json::Value::String(s) => pgtext::parse(elem, s)?,
                            other => anyhow::bail!("an array element {other}"),
                        })
                    })
                    .collect::<anyhow::Result<Vec<Datum>>>()?,
            )
        }
        _ => text_datum(ty, value).map_err(anyhow::Error::msg)?,
    })
}

/// What is compared, read from both sides.
pub(super) struct Mapped<'a> {
    pub src: Source<'a>,
    pub dst: Sink<'a>,
    pub table: &'a TableId,
    pub sink_table: &'a TableId,
    pub writer: &'a TableSchema,
    pub mapping: &'a Mapping,
    /// Rows read into Sluice from each side at most this fast.
    pub max_rows_per_second: Option<u64>,
    /// The table's line on a terminal.
    pub progress: &'a super::TableProgress,
}

/// Rows between two looks at the pace.
const PACE_EVERY: u64 = 1_000;

impl Mapped<'_> {
    /// Reads the source: the whole table, or the rows of some source keys.
    async fn scan_source(&self, n: u64, rows: Rows<'_>) -> anyhow::Result<Scan> {
        let mut scan = Scan::default();
        let mut pace = super::Pace::new(self.max_rows_per_second);
        let keys = (self.mapping.target.key_indices(), self.writer.key_indices());
        let keep = rows.keep();
        let chunks: Vec<Option<&[Vec<String>]>> = match rows {
            Rows::All(_) => vec![None],
            Rows::Keys(keys) => keys.chunks(KEYS_PER_READ).map(Some).collect(),
        };
        for chunk in chunks {
            match &self.src {
                Source::Postgres { client, table } => {
                    let names: Vec<String> =
                        self.writer.columns.iter().map(|c| c.name.clone()).collect();
                    let (sql, params) = match chunk {
                        None => (select(table, &names, true, None), Vec::new()),
                        Some(chunk) => {
                            let key: Vec<String> =
                                self.writer.key_columns().map(|c| c.name.clone()).collect();
                            let key = typed(client, table, &key).await?;
                            (
                                select(table, &names, true, Some(&key)),
                                by_column(chunk, key.len()),
                            )
                        }
                    };
                    let stream = client.query_raw(&sql, params).await?;
                    pin_mut!(stream);
                    let mut read = 0u64;
                    while let Some(row) = stream.try_next().await? {
                        let version = row.get::<_, String>(names.len());
                        self.add_source_row(
                            &mut scan,
                            (parse(self.writer, &row)?, Some(version)),
                            &keys,
                            (n, keep),
                        );
                        read += 1;
                        if read % PACE_EVERY == 0 {
                            self.progress.rows(PACE_EVERY);
                            pace.rows(PACE_EVERY).await;
                        }
                    }
                }
                Source::Mysql {
                    name,
                    config,
                    password,
                } => {
                    let mut read = 0u64;
                    let mut each = |_: &TableSchema, row: Vec<Datum>| {
                        self.add_source_row(&mut scan, (row, None), &keys, (n, keep));
                        read += 1;
                        Ok(if read % PACE_EVERY == 0 {
                            self.progress.rows(PACE_EVERY);
                            pace.pause(PACE_EVERY)
                        } else {
                            Duration::ZERO
                        })
                    };
                    match chunk {
                        None => {
                            sluice_capture::mysql::read_rows(
                                name, config, *password, self.table, &mut each,
                            )
                            .await
                        }
                        Some(chunk) => {
                            sluice_capture::mysql::read_rows_by_key(
                                name, config, *password, self.table, chunk, &mut each,
                            )
                            .await
                        }
                    }
                    .map_err(|e| anyhow::anyhow!("reading {} at the source: {e}", self.table))?;
                }
            }
        }
        Ok(scan)
    }

    /// Maps one source row through the scheme and adds what comes out; `keys` are the key
    /// columns' positions in the target and in the source.
    fn add_source_row(
        &self,
        scan: &mut Scan,
        (values, version): (Vec<Datum>, Option<String>),
        (target_key, source_key): &(Vec<usize>, Vec<usize>),
        (n, keep): (u64, Keep<'_>),
    ) {
        let target = &self.mapping.target;
        let Ok(changes) = self.mapping.apply(Op::Read, None, Some(&values), 0) else {
            scan.refused += 1;
            return;
        };
        for change in changes {
            let Some(after) = change.after else { continue };
            let target_texts = texts(target, &after, target_key);
            let key = format!("({})", target_texts.join(","));
            scan.add(
                (key, row_hash(&after), version.clone()),
                || (texts(self.writer, &values, source_key), target_texts),
                n,
                keep,
            );
        }
    }

    /// Reads the sink: the whole table, or the rows of some target keys.
    async fn scan_sink(&self, n: u64, rows: Rows<'_>) -> anyhow::Result<Scan> {
        let target = &self.mapping.target;
        let names: Vec<String> = target.columns.iter().map(|c| c.name.clone()).collect();
        let target_key = target.key_indices();
        let mut scan = Scan::default();
        let mut pace = super::Pace::new(self.max_rows_per_second);
        let keep = rows.keep();
        let mut add = |values: Vec<Datum>| {
            let key_texts = texts(target, &values, &target_key);
            let key = format!("({})", key_texts.join(","));
            scan.add(
                (key, row_hash(&values), None),
                || (key_texts.clone(), key_texts),
                n,
                keep,
            );
            scan.rows
        };
        let chunks: Vec<Option<&[Vec<String>]>> = match rows {
            Rows::All(_) => vec![None],
            Rows::Keys(keys) => keys.chunks(KEYS_PER_READ).map(Some).collect(),
        };
        let key_names: Vec<String> = target.key_columns().map(|c| c.name.clone()).collect();
        for chunk in chunks {
            match &self.dst {
                Sink::Postgres(client) => {
                    let (sql, params) = match chunk {
                        None => (select(self.sink_table, &names, false, None), Vec::new()),
                        Some(chunk) => {
                            let key = typed(client, self.sink_table, &key_names).await?;
                            (
                                select(self.sink_table, &names, false, Some(&key)),
                                by_column(chunk, key.len()),
                            )
                        }
                    };
                    let stream = client.query_raw(&sql, params).await?;
                    pin_mut!(stream);
                    while let Some(row) = stream.try_next().await? {
                        if add(parse(target, &row)?) % PACE_EVERY == 0 {
                            self.progress.rows(PACE_EVERY);
                            pace.rows(PACE_EVERY).await;
                        }
                    }
                }
                Sink::Mysql(pool) => {
                    use futures::StreamExt;
                    use mysql_async::prelude::Queryable;
                    let list: Vec<String> = names
                        .iter()
                        .map(|c| format!("`{}`", c.replace('`', "``")))
                        .collect();
                    let mut conn = pool.get_conn().await?;
                    let condition = match chunk {
                        None => "TRUE".to_string(),
                        // (The sink holds the values as the MySQL sink wrote them: booleans
                        // as 0/1, timestamps in UTC, uuids as text, as capture's literals.)
                        Some(chunk) => {
                            sluice_capture::mysql::reread::key_condition(&mut conn, target, chunk)
                                .await
                                .map_err(|e| anyhow::anyhow!("{e}"))?
                                .map_err(|e| {
                                    anyhow::anyhow!("{} at the sink: {e}", self.sink_table)
                                })?
                                .1
                        }
                    };
                    let sql = format!(
                        "SELECT {} FROM {} WHERE {condition}",
                        list.join(", "),
                        mysql_name(self.sink_table)
                    );
                    let mut result = conn.query_iter(sql).await?;
                    let mut stream = result
                        .stream::<mysql_async::Row>()
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("no result reading {}", self.sink_table))?;
                    while let Some(row) = stream.next().await {
                        let values = row?
                            .unwrap()
                            .into_iter()
                            .zip(&target.columns)
                            .map(|(v, c)| {
                                mysql_datum(&c.sql_type, v).map_err(|e| {
                                    anyhow::anyhow!(
                                        "{}.{} at the sink: {e}",
                                        self.sink_table,
                                        c.name
                                    )
                                })
                            })
                            .collect::<anyhow::Result<Vec<Datum>>>()?;
                        if add(values) % PACE_EVERY == 0 {
                            self.progress.rows(PACE_EVERY);
                            pace.rows(PACE_EVERY).await;
                        }
                    }
                }
            }
        }
        Ok(scan)
    }

    /// Where the suspected rows (`source` and `sink`, the differing buckets' rows) can be read
    /// again by key: when the target key is the source key, column for column and type for
    /// type (so a row's key reads the same at both sides, and every source row that could map
    /// to a target key is found by it). `None` otherwise: the buckets are scanned again.
    fn key_index(&self, source: &Scan, sink: &Scan) -> Option<KeyIndex> {
        let (target_key, source_key) =
            (self.mapping.target.key_indices(), self.writer.key_indices());
        let copied = target_key.len() == source_key.len()
            && target_key.iter().all(|t| {
                self.mapping.source_column(*t).is_some_and(|s| {
                    source_key.contains(&s)
                        && self.writer.columns[s].sql_type
                            == self.mapping.target.columns[*t].sql_type
                })
            });
        if !copied {
            return None;
        }
        let mut index = KeyIndex::new();
        for (k, kept) in &sink.kept {
            index.insert(
                k.clone(),
                (self.source_key_of(&kept.key)?, kept.target.clone()),
            );
        }
        for (k, kept) in &source.kept {
            index.insert(k.clone(), (kept.key.clone(), kept.target.clone()));
        }
        Some(index)
    }

    /// Reads the rows of the target keys `keys` again at the source (`at_source`) or the sink,
    /// by key.
    async fn read_again(
        &self,
        index: &KeyIndex,
        keys: &[String],
        at_source: bool,
    ) -> anyhow::Result<Scan> {
        let wanted: Vec<Vec<String>> = keys
            .iter()
            .filter_map(|k| index.get(k))
            .map(|(source, target)| {
                if at_source {
                    source.clone()
                } else {
                    target.clone()
                }
            })
            .collect();
        if at_source {
            self.scan_source(1, Rows::Keys(&wanted)).await
        } else {
            self.scan_sink(1, Rows::Keys(&wanted)).await
        }
    }

    async fn rows_in(&self, n: u64, buckets: &HashSet<u64>) -> anyhow::Result<(Scan, Scan)> {
        tokio::try_join!(
            self.scan_source(n, Rows::All(Some(buckets))),
            self.scan_sink(n, Rows::All(Some(buckets)))
        )
    }

    /// Reads the `differing` buckets again every second, keeping in `suspects` only what still
    /// differs, until none does or `wait` has passed; `last` is the last read.
    async fn settle(
        &self,
        (n, differing, index): (u64, &HashSet<u64>, Option<&KeyIndex>),
        suspects: &mut Vec<Difference>,
        wait: Duration,
        last: &mut (Scan, Scan),
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + wait;
        while !suspects.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            match index {
                Some(index) => {
                    let keys: Vec<String> = suspects.iter().map(|d| d.key().to_string()).collect();
                    let (source, sink) = tokio::try_join!(
                        self.read_again(index, &keys, true),
                        self.read_again(index, &keys, false)
                    )?;
                    last.0.merge(&keys, source);
                    last.1.merge(&keys, sink);
                }
                None => *last = self.rows_in(n, differing).await?,
            }
            let still: HashSet<String> = Mapped::differences(&last.0, &last.1)
                .into_iter()
                .map(|d| d.key().to_string())
                .collect();
            suspects.retain(|d| still.contains(d.key()));
        }
        Ok(())
    }

    /// The differences between what the source maps to and the sink, by target key.
    fn differences(source: &Scan, sink: &Scan) -> Vec<Difference> {
        let as_text = |s: &Scan| -> BTreeMap<String, String> {
            s.kept
                .iter()
                .map(|(k, v)| (k.clone(), v.hash.to_string()))
                .collect()
        };
        differences(&as_text(source), &as_text(sink))
    }

    /// The sink's target key text of a source key column, when the scheme copies that column
    /// into the target's key: the way back from a row only the sink has to its source key.
    fn source_key_of(&self, sink_key: &[String]) -> Option<Vec<String>> {
        let target_key = self.mapping.target.key_indices();
        self.writer
            .key_indices()
            .iter()
            .map(|s| {
                target_key
                    .iter()
                    .position(|t| self.mapping.source_column(*t) == Some(*s))
                    .map(|at| sink_key[at].clone())
            })
            .collect()
    }
}

/// The differing buckets read again, each side in full; the last reads are kept.
struct Buckets<'a, 'm> {
    mapped: &'a Mapped<'m>,
    n: u64,
    differing: &'a HashSet<u64>,
    at_source: Scan,
    at_sink: Scan,
    /// Where the rows can be read again by key (see [`Mapped::key_index`]); else each read
    /// scans the whole table for the differing buckets.
    index: Option<KeyIndex>,
}

/// For each suspected target key: the source key texts and the target key texts its rows are
/// read again by.
type KeyIndex = BTreeMap<String, (Vec<String>, Vec<String>)>;

impl Buckets<'_, '_> {
    /// The last source read's rows with their versions: the source row's `xmin` (a
    /// MySQL/MariaDB source's row: its hash).
    fn versions(&self) -> super::settle::SourceRows {
        self.at_source
            .kept
            .iter()
            .map(|(k, v)| {
                let hash = v.hash.to_string();
                let version = v.version.clone().unwrap_or_else(|| hash.clone());
                (k.clone(), (hash, version))
            })
            .collect()
    }
}

impl super::settle::Sides for Buckets<'_, '_> {
    async fn source(&mut self, keys: &[String]) -> anyhow::Result<super::settle::SourceRows> {
        match &self.index {
            Some(index) => {
                let read = self.mapped.read_again(index, keys, true).await?;
                self.at_source.merge(keys, read);
            }
            None => {
                self.at_source = self
                    .mapped
                    .scan_source(self.n, Rows::All(Some(self.differing)))
                    .await?;
            }
        }
        Ok(self.versions())
    }

    async fn sink(&mut self, keys: &[String]) -> anyhow::Result<super::settle::SinkRows> {
        match &self.index {
            Some(index) => {
                let read = self.mapped.read_again(index, keys, false).await?;
                self.at_sink.merge(keys, read);
            }
            None => {
                self.at_sink = self
                    .mapped
                    .scan_sink(self.n, Rows::All(Some(self.differing)))
                    .await?;
            }
        }
        Ok(self
            .at_sink
            .kept
            .iter()
            .map(|(k, v)| (k.clone(), v.hash.to_string()))
            .collect())
    }
}

/// Compares one schemed table (see the module's doc).
pub(super) async fn compare(
    mapped: Mapped<'_>,
    pipeline: &Pipeline,
    options: &Options,
) -> anyhow::Result<TableReport> {
    let missing: Vec<&str> = {
        let at_sink = mapped.dst.columns(mapped.sink_table).await?;
        anyhow::ensure!(
            !at_sink.is_empty(),
            "the sink has no table {}",
            mapped.sink_table
        );
        mapped
            .mapping
            .target
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .filter(|c| !at_sink.iter().any(|s| s == c))
            .collect()
    };
    anyhow::ensure!(
        missing.is_empty(),
        "the sink table {} lacks the scheme's fields {missing:?}",
        mapped.sink_table
    );
    // (The sink's count sizes the buckets: it is one query whatever the source's engine.)
    let estimate = mapped.dst.count(mapped.sink_table).await?;
    let n = (estimate as u64 / options.bucket_rows.max(1)).max(1);
    mapped.progress.phase("reading", estimate.max(0) as u64 * 2);
    let (source, sink) = tokio::try_join!(
        mapped.scan_source(n, Rows::All(None)),
        mapped.scan_sink(n, Rows::All(None))
    )?;
    if source.refused > 0 {
        // The router dead-letters these too, so the sink lacks them by design; say so.
        tracing::warn!(table = %mapped.table, rows = source.refused, "source rows the scheme refuses (the router sends such changes to the dead-letter topic) are not compared");
    }
    let differing: HashSet<u64> = source
        .buckets
        .keys()
        .chain(sink.buckets.keys())
        .copied()
        .filter(|b| source.buckets.get(b) != sink.buckets.get(b))
        .collect();
    let mut report = TableReport {
        source: String::new(),
        table: mapped.table.clone(),
        sink_table: String::new(),
        source_rows: source.rows,
        sink_rows: sink.rows,
        differences: Vec::new(),
        in_flight: Vec::new(),
        caught_up: 0,
        not_compared: None,
        repair: None,
    };
    if differing.is_empty() {
        return Ok(report);
    }
    // Rows still moving settle (`settle.rs`): the differing buckets are read again (each side
    // in full) until every row is settled or `settle` has passed.
    mapped.progress.phase("rows that differ", 0);
    let (at_source, at_sink) = mapped.rows_in(n, &differing).await?;
    let suspects = Mapped::differences(&at_source, &at_sink);
    let sink = || match &mapped.dst {
        Sink::Postgres(c) => Offsets::Postgres(c),
        Sink::Mysql(pool) => Offsets::Mysql(pool),
    };
    let watch = match &mapped.src {
        Source::Postgres { client, table } => Watch {
            pipeline,
            source: Some(*client),
            sink: sink(),
            relation: format!("{}.{}", quote(&table.namespace), quote(&table.name)),
            table: mapped.table,
        },
        Source::Mysql { .. } => Watch {
            pipeline,
            source: None,
            sink: sink(),
            relation: mapped.table.to_string(),
            table: mapped.table,
        },
    };
    mapped.progress.phase("settling", 0);
    let index = mapped.key_index(&at_source, &at_sink);
    let mut sides = Buckets {
        mapped: &mapped,
        n,
        differing: &differing,
        at_source,
        at_sink,
        index,
    };
    // (The read that found them is the first round's source read.)
    let first = sides.versions();
    let settled =
        super::settle::settle((suspects, Some(first)), options.settle, &watch, &mut sides).await?;
    let Buckets {
        at_source,
        at_sink,
        index,
        ..
    } = sides;
    let mut suspects = settled.differences;
    report.in_flight = settled.in_flight;
    report.caught_up = settled.caught_up;
    if options.repair == Repair::No || (suspects.is_empty() && report.in_flight.is_empty()) {
        report.differences = suspects;
        return Ok(report);
    }
    // Rows still in flight are sent again too (see `compare_table`).
    let differing_rows = suspects.len();
    suspects.extend(report.in_flight.iter().cloned());
    // The source keys to read again: a missing or differing row's from the source; a row only
    // the sink has, through the target key columns the scheme copies from the source's key.
    // (By the difference's key: a repair not arrived in time is asked for again.)
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut untraced = 0u64;
    for d in &suspects {
        match d {
            Difference::Extra(k) => match at_sink
                .kept
                .get(k)
                .and_then(|s| mapped.source_key_of(&s.key))
            {
                Some(key) => {
                    keys.insert(k.clone(), key);
                }
                None => untraced += 1,
            },
            Difference::Missing(k) | Difference::Differing(k) => {
                if let Some(s) = at_source.kept.get(k) {
                    keys.insert(k.clone(), s.key.clone());
                }
            }
        }
    }
    // Who takes the request: a PostgreSQL source's slot, or a MySQL/MariaDB source's capture
    // through its signal table (without one, the repair only reports what it would send).
    let signaller = match &mapped.src {
        Source::Postgres { client, .. } => pipeline
            .slot()
            .map(|slot| Signaller::Postgres(client, slot)),
        Source::Mysql {
            name,
            config,
            password,
        } => config.signal_table.is_some().then_some(Signaller::Mysql {
            name,
            config,
            password: *password,
        }),
    };
    let mut repair = RepairReport {
        dry_run: options.repair == Repair::DryRun || signaller.is_none(),
        reread: suspects
            .iter()
            .filter(|d| !matches!(d, Difference::Extra(_)))
            .count() as u64,
        delete: suspects
            .iter()
            .filter(|d| matches!(d, Difference::Extra(_)))
            .count() as u64,
        repaired: 0,
    };
    if untraced > 0 {
        tracing::warn!(table = %mapped.table, rows = untraced, "rows only the sink has whose source key the scheme does not copy into the target key cannot be deleted by a repair; delete them at the sink by hand");
    }
    let signaller = match (signaller, options.repair, &mapped.src) {
        (Some(s), Repair::Yes, _) => Some(s),
        (None, Repair::Yes, Source::Mysql { name, .. }) => {
            tracing::warn!(table = %mapped.table, "a MySQL/MariaDB source is repaired through a signal table: set sources.{name}.signal_table = \"<database>.sluice_signal\" (sluice verify makes the table); until then this only reports what it would send");
            None
        }
        _ => None,
    };
    if let Some(signaller) = signaller {
        let key_columns: Vec<String> = mapped
            .writer
            .key_columns()
            .map(|c| c.name.clone())
            .collect();
        let of = |suspects: &[Difference]| -> Vec<Vec<String>> {
            suspects
                .iter()
                .filter_map(|d| keys.get(d.key()).cloned())
                .collect()
        };
        signaller
            .ask(mapped.table, &key_columns, &of(&suspects))
            .await?;
        let total = suspects.len();
        let mut read = (at_source, at_sink);
        let first = super::resend_after(options.repair_wait);
        mapped
            .settle(
                (n, &differing, index.as_ref()),
                &mut suspects,
                first,
                &mut read,
            )
            .await?;
        if !suspects.is_empty() {
            // A capture that restarted meanwhile dropped the request: asked once more.
            tracing::info!(table = %mapped.table, rows = suspects.len(), "repair: rows not repaired yet; asking capture again");
            signaller
                .ask(mapped.table, &key_columns, &of(&suspects))
                .await?;
            mapped
                .settle(
                    (n, &differing, index.as_ref()),
                    &mut suspects,
                    options.repair_wait.saturating_sub(first),
                    &mut read,
                )
                .await?;
        }
        repair.repaired = (total - suspects.len()) as u64;
        report.in_flight.clear();
    } else {
        suspects.truncate(differing_rows);
    }
    report.repair = Some(repair);
    report.differences = suspects;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_sums_key_and_row_so_a_value_moved_between_keys_is_seen() {
        let (mut a, mut b) = (Scan::default(), Scan::default());
        a.add(
            ("(1)".into(), 10, None),
            || (Vec::new(), Vec::new()),
            1,
            Keep::Buckets(None),
        );
        a.add(
            ("(2)".into(), 20, None),
            || (Vec::new(), Vec::new()),
            1,
            Keep::Buckets(None),
        );
        b.add(
            ("(1)".into(), 20, None),
            || (Vec::new(), Vec::new()),
            1,
            Keep::Buckets(None),
        );
        b.add(
            ("(2)".into(), 10, None),
            || (Vec::new(), Vec::new()),
            1,
            Keep::Buckets(None),
        );
        assert_ne!(a.buckets, b.buckets);
        let mut c = Scan::default();
        c.add(
            ("(2)".into(), 20, None),
            || (Vec::new(), Vec::new()),
            1,
            Keep::Buckets(None),
        );
        c.add(
            ("(1)".into(), 10, None),
            || (Vec::new(), Vec::new()),
            1,
            Keep::Buckets(None),
        );
        assert_eq!(a.buckets, c.buckets);
    }
}
