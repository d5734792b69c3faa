//! The MySQL/MariaDB sink: batched `INSERT … ON DUPLICATE KEY UPDATE` and row-constructor
//! deletes, in one InnoDB transaction with the offsets.
//!
//! MySQL commits implicitly before DDL, so a batch's target tables are created or altered
//! before its transaction begins (DDL is idempotent: `IF NOT EXISTS`, columns added when
//! missing); the rows and the offsets are then written in one transaction. The session runs in
//! strict SQL mode with UTC time: a value that does not fit its column is an error (and
//! dead-lettered), never silently truncated.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params, Pool, Transaction, TxOpts, Value};
use serde::Deserialize;
use sluice_connect::tls::TlsConfig;
use sluice_schemas::pgtext::{self, civil_from_days};
use sluice_schemas::{Datum, Position, SqlType, TableId, TableSchema};
use tracing::{debug, info, warn};

use crate::error::connect_error;
use crate::metrics as m;
use crate::plan::{self, Action, OlderKey, Plan};
use crate::skeleton::{self, InPieces, OffsetsRow};
use crate::TargetProblem;
use crate::{
    ApplyOutcome, Batch, ColumnTypes, DroppedColumns, Pieces, Sink, SinkError, StoredProgress,
};

/// Table holding consumed offsets and applied positions, in the url's database.
pub const OFFSETS_TABLE: &str = "sluice_offsets";

/// The columns Sluice made, with the source type each was made for (as for PostgreSQL
/// sinks): only those follow a type change or a drop.
pub const COLUMNS_TABLE: &str = "sluice_columns";
/// Per sink table, the source position of the newest table version whose type changes and
/// drops the sink followed (see the PostgreSQL sink's `sluice_tables`). DDL commits on its own
/// in MySQL, so the decisions are serialized by a named lock (`GET_LOCK`) instead of a row lock.
const TABLES_TABLE: &str = "sluice_tables";

fn default_true() -> bool {
    true
}

/// A MySQL/MariaDB sink (`[sinks.<name>]` with `kind = "mysql"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSinkConfig {
    /// `mysql://user@host:port/database`; the database holds `sluice_offsets` (and the tables,
    /// unless `database` says otherwise). The password may instead come from
    /// `SLUICE_SINKS_<NAME>_PASSWORD`.
    pub url: String,
    /// Write every table into this database instead of the source table's schema (PostgreSQL)
    /// or database (MySQL).
    #[serde(default)]
    pub database: Option<String>,
    /// Create missing target databases and tables (and add missing columns).
    #[serde(default = "default_true")]
    pub create_tables: bool,
    /// As for PostgreSQL sinks: `widen` (default), `alter` or `keep`.
    #[serde(default)]
    pub column_types: ColumnTypes,
    /// As for PostgreSQL sinks: `keep` (default) or `drop`.
    #[serde(default)]
    pub dropped_columns: DroppedColumns,
    /// TLS to the sink, as for PostgreSQL sinks (`[sinks.<name>.tls]`).
    #[serde(default)]
    pub tls: TlsConfig,
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// A string literal for the session's SQL mode (backslash escapes on).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// The column type a MySQL sink creates for a SQL type, or why none holds its values exactly.
/// Key columns need a bounded type (MySQL indexes at most 3072 bytes).
pub fn mysql_type(t: &SqlType, key: bool) -> Result<String, String> {
    Ok(match t {
        SqlType::Bool => "BOOLEAN".into(),
        SqlType::Int16 => "SMALLINT".into(),
        SqlType::Int32 => "INT".into(),
        SqlType::Int64 => "BIGINT".into(),
        SqlType::Float32 => "FLOAT".into(),
        SqlType::Float64 => "DOUBLE".into(),
        SqlType::Decimal { precision, scale } if *precision <= 65 && *scale <= 30 => {
            format!("DECIMAL({precision},{scale})")
        }
        SqlType::Decimal { precision, scale } => {
            return Err(format!(
                "decimal({precision},{scale}) does not fit MySQL's DECIMAL (at most 65 digits, 30 after the point)"
            ))
        }
        SqlType::Numeric => {
            return Err(
                "numeric without a precision can hold more digits than MySQL's DECIMAL (65, 30 after the point)"
                    .into(),
            )
        }
        SqlType::Money => "DECIMAL(19,2)".into(),
        SqlType::Bytes if key => "VARBINARY(3072)".into(),
        SqlType::Bytes => "LONGBLOB".into(),
        SqlType::Date => "DATE".into(),
        SqlType::Time | SqlType::TimeSpan => "TIME(6)".into(),
        SqlType::Timestamp | SqlType::TimestampTz => "DATETIME(6)".into(),
        SqlType::Uuid => "CHAR(36)".into(),
        SqlType::Json | SqlType::Jsonb | SqlType::Array(_) => "JSON".into(),
        SqlType::Text
        | SqlType::Interval
        | SqlType::TimeTz
        | SqlType::Enum(_)
        | SqlType::Other(_)
            if key =>
        {
            "VARCHAR(768)".into()
        }
        SqlType::Text | SqlType::Interval | SqlType::TimeTz | SqlType::Enum(_) | SqlType::Other(_) => {
            "LONGTEXT".into()
        }
    })
}

/// A value as MySQL's binary protocol carries it into a column of the type [`mysql_type`]
/// gives. A value no MySQL column of that type can hold is an error (the row is refused).
pub fn mysql_value(t: &SqlType, d: &Datum) -> Result<Value, String> {
    let date = |days: i64, micros_of_day: i64| -> Result<Value, String> {
        let (y, mo, da) = civil_from_days(days);
        if !(1000..=9999).contains(&y) {
            return Err(format!(
                "year {y} is outside MySQL's DATE/DATETIME range (1000–9999)"
            ));
        }
        let s = micros_of_day / 1_000_000;
        Ok(Value::Date(
            y as u16,
            mo as u8,
            da as u8,
            (s / 3600) as u8,
            (s / 60 % 60) as u8,
            (s % 60) as u8,
            (micros_of_day % 1_000_000) as u32,
        ))
    };
    Ok(match d {
        Datum::Null | Datum::Unchanged => Value::NULL,
        Datum::Bool(b) => Value::Int(i64::from(*b)),
        Datum::Int(i) => Value::Int(i64::from(*i)),
        Datum::Long(i) => Value::Int(*i),
        Datum::Float(f) if f.is_finite() => Value::Float(*f),
        Datum::Double(f) if f.is_finite() => Value::Double(*f),
        Datum::Float(_) | Datum::Double(_) => {
            return Err("MySQL has no NaN or infinity".into());
        }
        Datum::Decimal(text) | Datum::String(text) | Datum::Uuid(text) => {
            Value::Bytes(text.clone().into_bytes())
        }
        Datum::Bytes(b) => Value::Bytes(b.clone()),
        Datum::Date(days) => date(i64::from(*days), 0)?,
        Datum::TimestampMicros(us) => {
            date(us.div_euclid(86_400_000_000), us.rem_euclid(86_400_000_000))?
        }
        Datum::TimeMicros(us) => {
            let neg = *us < 0;
            let a = us.unsigned_abs();
            let secs = a / 1_000_000;
            Value::Time(
                neg,
                (secs / 86_400) as u32,
                (secs / 3600 % 24) as u8,
                (secs / 60 % 60) as u8,
                (secs % 60) as u8,
                (a % 1_000_000) as u32,
            )
        }
        Datum::Array(items) => {
            let SqlType::Array(elem) = t else {
                return Err("an array in a column that is not one".into());
            };
            let json: Vec<serde_json::Value> = items
                .iter()
                .map(|i| match i {
                    Datum::Null => serde_json::Value::Null,
                    Datum::Bool(b) => serde_json::Value::Bool(*b),
                    Datum::Int(v) => serde_json::Value::from(*v),
                    Datum::Long(v) => serde_json::Value::from(*v),
                    // Text keeps every other value exactly (decimals, dates, floats' digits).
                    other => pgtext::render(elem, other)
                        .map_or(serde_json::Value::Null, serde_json::Value::String),
                })
                .collect();
            Value::Bytes(serde_json::Value::Array(json).to_string().into_bytes())
        }
    })
}

/// A MySQL column's definition as `information_schema` gives it.
#[derive(Debug, Clone)]
struct SinkColumn {
    /// `COLUMN_TYPE`, lower case (`int(11)`, `varchar(20)`, `decimal(12,2)`).
    column_type: String,
}

/// Whether a MySQL column of `existing` type holds every value of `t` unchanged.
fn holds(existing: &str, t: &SqlType) -> bool {
    let base = existing.split('(').next().unwrap_or(existing).trim();
    let unsigned = existing.contains("unsigned");
    match t {
        SqlType::Bool => matches!(base, "tinyint" | "smallint" | "int" | "bigint"),
        SqlType::Int16 => !unsigned && matches!(base, "smallint" | "mediumint" | "int" | "bigint"),
        SqlType::Int32 => !unsigned && matches!(base, "int" | "bigint"),
        SqlType::Int64 => !unsigned && base == "bigint",
        SqlType::Float32 => matches!(base, "float" | "double"),
        SqlType::Float64 => base == "double",
        SqlType::Decimal { precision, scale } => {
            let Some((p, s)) = existing
                .strip_prefix("decimal(")
                .and_then(|r| r.split(')').next())
                .and_then(|r| r.split_once(','))
                .and_then(|(p, s)| {
                    Some((p.trim().parse::<u32>().ok()?, s.trim().parse::<u32>().ok()?))
                })
            else {
                return false;
            };
            !unsigned && s == *scale && p - s >= precision - scale
        }
        SqlType::Money => existing.starts_with("decimal(19,2)"),
        SqlType::Bytes => matches!(base, "longblob" | "blob" | "mediumblob" | "varbinary"),
        SqlType::Date => base == "date",
        SqlType::Time | SqlType::TimeSpan => existing == "time(6)",
        SqlType::Timestamp | SqlType::TimestampTz => existing == "datetime(6)",
        SqlType::Uuid => matches!(base, "char" | "varchar" | "uuid" | "text" | "longtext"),
        SqlType::Json | SqlType::Jsonb | SqlType::Array(_) => {
            matches!(base, "json" | "longtext")
        }
        _ => matches!(base, "longtext" | "text" | "mediumtext" | "varchar"),
    }
}

/// Whether a MySQL column of `existing` type takes every value of `t`, lengths included:
/// stricter than [`holds`] (which the sink uses to leave a column be, refusing only the values
/// that do not fit), for `sluice schemes check`.
fn holds_every_value(existing: &str, t: &SqlType, key: bool) -> bool {
    let length = |prefix: &str| -> Option<u32> {
        existing
            .strip_prefix(prefix)?
            .split(')')
            .next()?
            .parse()
            .ok()
    };
    let text = t.is_text_form() && !matches!(t, SqlType::Json | SqlType::Jsonb);
    if text {
        return existing == "longtext" || (key && length("varchar(").is_some_and(|n| n >= 768));
    }
    if *t == SqlType::Bytes {
        return existing == "longblob" || (key && length("varbinary(").is_some_and(|n| n >= 3072));
    }
    holds(existing, t)
}

/// Whether altering a column of `existing` type to [`mysql_type`]`(t)` keeps every value.
fn widens(existing: &str, t: &SqlType) -> bool {
    let base = existing.split('(').next().unwrap_or(existing).trim();
    match t {
        SqlType::Text => true,
        SqlType::Int32 => matches!(base, "tinyint" | "smallint" | "mediumint"),
        SqlType::Int64 => matches!(base, "tinyint" | "smallint" | "mediumint" | "int"),
        SqlType::Float64 => base == "float",
        _ => false,
    }
}

/// A target table.
#[derive(Debug, Clone)]
struct Target {
    /// `` `db`.`table` ``.
    qualified: String,
}

/// A connected MySQL/MariaDB sink.
pub struct MysqlSink {
    pool: Pool,
    name: String,
    group: String,
    config: MysqlSinkConfig,
    /// The url's database: where `sluice_offsets` lives.
    database: String,
    targets: HashMap<TableId, (Arc<TableSchema>, Target)>,
    kept_types: HashSet<(TableId, String, String)>,
    /// Per table, the position and key of the newest version the sink followed, as last read
    /// or written.
    followed: HashMap<TableId, (Vec<u8>, Vec<String>)>,
    /// The plan written last was under an older key (see [`OlderKey`]).
    older_key: Option<OlderKey>,
}

/// Strict SQL mode (a value that does not fit is an error, never truncated) and UTC.
const SESSION: [&str; 2] = [
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,\
     ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', time_zone = '+00:00'",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
];

impl MysqlSink {
    /// Connects and creates `sluice_offsets`.
    pub async fn connect(
        name: &str,
        group: &str,
        config: MysqlSinkConfig,
        password: Option<String>,
    ) -> Result<MysqlSink, SinkError> {
        let opts = Opts::from_url(&config.url).map_err(|e| {
            SinkError::Definite(format!("sinks.{name}.url is not a valid mysql:// url: {e}"))
        })?;
        let database = opts.db_name().map(str::to_string).ok_or_else(|| {
            SinkError::Definite(format!(
                "sinks.{name}.url names no database: write mysql://user@host:port/<database>; \
                 it holds sluice_offsets"
            ))
        })?;
        // (checked here so that a bad file is reported with its field, not as a handshake error)
        config
            .tls
            .client_config(&format!("sinks.{name}.tls"))
            .map_err(SinkError::Definite)?;
        let mut builder = OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .ssl_opts(config.tls.mysql_ssl_opts())
            .init(SESSION.to_vec());
        if let Some(pw) = password {
            builder = builder.pass(Some(pw));
        }
        let pool = Pool::new(builder);
        let mut conn = pool
            .get_conn()
            .await
            .map_err(|e| connect_error(name, e.into()))?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {}.{OFFSETS_TABLE} (\
               consumer_group VARCHAR(255) NOT NULL, topic VARCHAR(255) NOT NULL, \
               kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL, position VARBINARY(64), \
               updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
               PRIMARY KEY (consumer_group, topic, kafka_partition)) ENGINE=InnoDB",
            quote(&database)
        ))
        .await?;
        // The barrier a partition waits at (see the PostgreSQL sink); added to tables made
        // before it existed. (MySQL 8 has no ADD COLUMN IF NOT EXISTS.)
        let has_barrier: Option<i64> = conn
            .exec_first(
                "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? \
                 AND TABLE_NAME = ? AND COLUMN_NAME = 'barrier'",
                (&database, OFFSETS_TABLE),
            )
            .await?;
        if has_barrier.is_none() {
            conn.query_drop(format!(
                "ALTER TABLE {}.{OFFSETS_TABLE} ADD COLUMN barrier VARBINARY(64) NULL",
                quote(&database)
            ))
            .await?;
        }
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {}.{COLUMNS_TABLE} (\
               sink_table VARCHAR(255) NOT NULL, column_name VARCHAR(255) NOT NULL, \
               sluice_type TEXT NOT NULL, PRIMARY KEY (sink_table, column_name)) ENGINE=InnoDB",
            quote(&database)
        ))
        .await?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {}.{TABLES_TABLE} (\
               sink_table VARCHAR(255) NOT NULL PRIMARY KEY, \
               schema_position VARBINARY(64) NOT NULL, key_columns TEXT NULL) ENGINE=InnoDB",
            quote(&database)
        ))
        .await?;
        // (Made before key_columns was: MySQL has no ADD COLUMN IF NOT EXISTS.)
        let has_key: Option<i64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = 'key_columns'",
                (&database, TABLES_TABLE),
            )
            .await?;
        if has_key == Some(0) {
            conn.query_drop(format!(
                "ALTER TABLE {}.{TABLES_TABLE} ADD COLUMN key_columns TEXT NULL",
                quote(&database)
            ))
            .await?;
        }
        Ok(MysqlSink {
            pool,
            name: name.to_string(),
            group: group.to_string(),
            config,
            database,
            targets: HashMap::new(),
            kept_types: HashSet::new(),
            followed: HashMap::new(),
            older_key: None,
        })
    }

    fn offsets(&self) -> String {
        format!("{}.{OFFSETS_TABLE}", quote(&self.database))
    }

    /// Records that Sluice made a column of `table` for values of `t`.
    async fn record(&self, table: &TableId, column: &str, t: &SqlType) -> Result<(), SinkError> {
        let mut conn = self.pool.get_conn().await?;
        conn.exec_drop(
            format!(
                "INSERT INTO {}.{COLUMNS_TABLE} (sink_table, column_name, sluice_type) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE sluice_type = VALUES(sluice_type)",
                quote(&self.database)
            ),
            (table.to_string(), column, t.canonical()),
        )
        .await?;
        Ok(())
    }

    /// The columns of a sink table Sluice made, with their source types.
    async fn owned(&self, table: &TableId) -> Result<HashMap<String, String>, SinkError> {
        let mut conn = self.pool.get_conn().await?;
        let rows: Vec<(String, String)> = conn
            .exec(
                format!(
                    "SELECT column_name, sluice_type FROM {}.{COLUMNS_TABLE} WHERE sink_table = ?",
                    quote(&self.database)
                ),
                (table.to_string(),),
            )
            .await?;
        Ok(rows.into_iter().collect())
    }

    fn target_id(&self, id: &TableId) -> TableId {
        TableId::new(
            self.config
                .database
                .clone()
                .unwrap_or_else(|| id.namespace.clone()),
            id.name.clone(),
        )
    }

    fn table_error(&self, schema: &TableSchema, message: String) -> SinkError {
        SinkError::Table {
            table: schema.id.clone(),
            message: format!(
                "sink {}: {message}. Its changes wait; the other tables go on",
                self.name
            ),
        }
    }

    /// Runs DDL (outside any transaction: MySQL commits implicitly before DDL).
    async fn ddl(
        &self,
        schema: &TableSchema,
        what: &'static str,
        sql: &str,
    ) -> Result<(), SinkError> {
        let mut conn = self.pool.get_conn().await?;
        match conn.query_drop(sql).await {
            Ok(()) => {
                metrics::counter!(m::DDL_TOTAL, "sink" => self.name.clone(), "table" => schema.id.to_string(), "ddl" => what).increment(1);
                Ok(())
            }
            Err(e) => {
                let e = SinkError::from(e);
                if e.is_transient() {
                    return Err(e);
                }
                Err(self.table_error(
                    schema,
                    format!(
                        "{} of {} failed: {}",
                        what.replace('_', " "),
                        self.target_id(&schema.id),
                        e.detail()
                    ),
                ))
            }
        }
    }

    async fn columns(&self, id: &TableId) -> Result<HashMap<String, SinkColumn>, SinkError> {
        let mut conn = self.pool.get_conn().await?;
        let rows: Vec<(String, String)> = conn
            .exec(
                "SELECT COLUMN_NAME, LOWER(COLUMN_TYPE) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&id.namespace, &id.name),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(n, t)| (n, SinkColumn { column_type: t }))
            .collect())
    }

    /// What keeps the sink's table for `target` (a scheme's target, before the sink's own
    /// `database` override) from taking its rows: a type MySQL cannot hold exactly, a column
    /// that cannot hold the field's values, a NOT NULL column no field writes, another key.
    /// Only the first for a table that does not exist and that the sink creates.
    pub async fn check_target(
        &mut self,
        target: &TableSchema,
    ) -> Result<Vec<TargetProblem>, SinkError> {
        let id = self.target_id(&target.id);
        let qualified = format!("{}.{}", quote(&id.namespace), quote(&id.name));
        let mut problems = Vec::new();
        for c in &target.columns {
            if let Err(why) = mysql_type(&c.sql_type, c.key) {
                problems.push(TargetProblem {
                    at: c.name.clone(),
                    message: format!("MySQL cannot hold these values exactly: {why}"),
                    fix:
                        "give the field a \"sluice.type\" of text (exact), or a decimal(p,s) that \
                          fits (values that do not fit are then dead-lettered)"
                            .into(),
                });
            }
        }
        let mut conn = self.pool.get_conn().await?;
        let rows: Vec<(String, String, String, Option<String>, String, String)> = conn
            .exec(
                "SELECT COLUMN_NAME, LOWER(COLUMN_TYPE), IS_NULLABLE, COLUMN_DEFAULT, EXTRA, COLUMN_KEY                  FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?                  ORDER BY ORDINAL_POSITION",
                (&id.namespace, &id.name),
            )
            .await?;
        if rows.is_empty() {
            if !self.config.create_tables {
                problems.push(TargetProblem {
                    at: "table".into(),
                    message: format!("{id} does not exist in sink {}", self.name),
                    fix: format!(
                        "create it, or set sinks.{}.create_tables = true so Sluice creates it",
                        self.name
                    ),
                });
            }
            return Ok(problems);
        }
        for c in &target.columns {
            let Ok(wanted) = mysql_type(&c.sql_type, c.key) else {
                continue; // reported above
            };
            match rows.iter().find(|r| r.0 == c.name) {
                None if !self.config.create_tables => problems.push(TargetProblem {
                    at: c.name.clone(),
                    message: format!("{id} has no column `{}`", c.name),
                    fix: format!(
                        "add it (ALTER TABLE {qualified} ADD COLUMN {} {wanted}), or set sinks.{}.create_tables = true",
                        quote(&c.name),
                        self.name
                    ),
                }),
                None => {}
                Some(r) if !holds_every_value(&r.1, &c.sql_type, c.key) => problems.push(TargetProblem {
                    at: c.name.clone(),
                    message: format!(
                        "the sink column is {}, and the scheme writes {} ({wanted}) values into it",
                        r.1,
                        c.sql_type.canonical()
                    ),
                    fix: format!(
                        "ALTER TABLE {qualified} MODIFY {} {wanted}, or change the field's type to match",
                        quote(&c.name)
                    ),
                }),
                Some(_) => {}
            }
        }
        for (name, _, nullable, default, extra, _) in &rows {
            let generated = extra.contains("auto_increment") || extra.contains("generated");
            if nullable == "NO"
                && default.is_none()
                && !generated
                && !target.columns.iter().any(|c| &c.name == name)
            {
                problems.push(TargetProblem {
                    at: name.clone(),
                    message: format!(
                        "{id}.{name} is NOT NULL without a default, and no field of the scheme writes it"
                    ),
                    fix: "add a field for it, or give the column a default".into(),
                });
            }
        }
        let mut sink_key: Vec<&str> = rows
            .iter()
            .filter(|r| r.5 == "PRI")
            .map(|r| r.0.as_str())
            .collect();
        let mut scheme_key: Vec<&str> = target.key_columns().map(|c| c.name.as_str()).collect();
        sink_key.sort_unstable();
        scheme_key.sort_unstable();
        if sink_key != scheme_key {
            problems.push(TargetProblem {
                at: "table".into(),
                message: format!(
                    "{id}'s primary key is ({}), and the scheme's key is ({})",
                    sink_key.join(", "),
                    scheme_key.join(", ")
                ),
                fix: "upserts match rows by the primary key: make them the same (\"sluice.key\", or the table's PRIMARY KEY)".into(),
            });
        }
        Ok(problems)
    }

    /// Creates or evolves the target table of a table version (cached per version).
    /// The target table of a table version at `position`, made or changed to take it: under a
    /// named lock, so routers sharing the sink decide one at a time; a version older than the
    /// newest one followed never turns a type change or a drop back.
    async fn target(
        &mut self,
        schema: &Arc<TableSchema>,
        position: Option<&Position>,
    ) -> Result<Target, SinkError> {
        if let Some((cached, target)) = self.targets.get(&schema.id) {
            if Arc::ptr_eq(cached, schema) || **cached == **schema {
                return Ok(target.clone());
            }
        }
        let id = self.target_id(&schema.id);
        let lock = format!("sluice:{}:{id}", self.database);
        let mut conn = self.pool.get_conn().await?;
        let got: Option<Option<i64>> = conn.exec_first("SELECT GET_LOCK(?, 60)", (&lock,)).await?;
        if got.flatten() != Some(1) {
            // Another router holds it (its DDL is slow): the table waits and is tried again.
            return Err(self.table_error(
                schema,
                format!("could not take the lock {lock} on the sink's DDL of {id} within 60 s"),
            ));
        }
        let result = self.target_locked(&mut conn, schema, &id, position).await;
        let _ = conn.exec_drop("DO RELEASE_LOCK(?)", (&lock,)).await;
        result
    }

    async fn target_locked(
        &mut self,
        conn: &mut Conn,
        schema: &Arc<TableSchema>,
        id: &TableId,
        position: Option<&Position>,
    ) -> Result<Target, SinkError> {
        let id = id.clone();
        let tables = format!("{}.{TABLES_TABLE}", quote(&self.database));
        let row: Option<(Vec<u8>, Option<String>)> = conn
            .exec_first(
                format!("SELECT schema_position, key_columns FROM {tables} WHERE sink_table = ?"),
                (id.to_string(),),
            )
            .await?;
        let (followed, followed_key) = match row {
            Some((position, key)) => (
                Some(position),
                key.and_then(|k| serde_json::from_str::<Vec<String>>(&k).ok()),
            ),
            None => (None, None),
        };
        if let (Some(p), Some(k)) = (&followed, followed_key) {
            self.followed.insert(schema.id.clone(), (p.clone(), k));
        }
        let older = position.is_some_and(|p| followed.as_ref().is_some_and(|f| p.0 < *f));
        let qualified = format!("{}.{}", quote(&id.namespace), quote(&id.name));
        let mut types: Vec<(String, String)> = Vec::with_capacity(schema.columns.len());
        for c in &schema.columns {
            let ty = mysql_type(&c.sql_type, c.key).map_err(|why| {
                self.table_error(
                    schema,
                    format!(
                        "column {}.{} is {}, and {why}; map it with a scheme field whose \
                         \"sluice.type\" is text (exact) or a decimal(p,s) that fits (values that \
                         do not fit are dead-lettered)",
                        schema.id,
                        c.name,
                        c.sql_type.canonical()
                    ),
                )
            })?;
            types.push((c.name.clone(), ty));
        }
        let existing = self.columns(&id).await?;
        if existing.is_empty() {
            if !self.config.create_tables {
                return Err(self.table_error(
                    schema,
                    format!(
                        "target table {id} does not exist; create it, or set sinks.{}.create_tables = true",
                        self.name
                    ),
                ));
            }
            let cols: Vec<String> = schema
                .columns
                .iter()
                .zip(&types)
                .map(|(c, (_, ty))| {
                    format!(
                        "{} {ty}{}",
                        quote(&c.name),
                        if c.key { " NOT NULL" } else { " NULL" }
                    )
                })
                .collect();
            let key: Vec<String> = schema.key_columns().map(|c| quote(&c.name)).collect();
            let pk = if key.is_empty() {
                String::new()
            } else {
                format!(", PRIMARY KEY ({})", key.join(", "))
            };
            self.ddl(
                schema,
                "create",
                &format!("CREATE DATABASE IF NOT EXISTS {}", quote(&id.namespace)),
            )
            .await?;
            self.ddl(
                schema,
                "create",
                &format!(
                    "CREATE TABLE IF NOT EXISTS {qualified} ({}{pk}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
                    cols.join(", ")
                ),
            )
            .await?;
            for c in &schema.columns {
                self.record(&id, &c.name, &c.sql_type).await?;
            }
            info!(sink = %self.name, table = %id, "created target table");
        } else if self.config.create_tables {
            let owned = self.owned(&id).await?;
            for (c, (_, ty)) in schema.columns.iter().zip(&types) {
                match existing.get(&c.name) {
                    None => {
                        // Rows older than the column read `missing` at the source: the
                        // default gives it to the rows there now, in the same statement, and
                        // to an insert of the table's older version arriving later (from
                        // another partition, or a lagging router), which names only the
                        // older columns. Later versions write the column explicitly.
                        let default = match &c.missing {
                            Some(v) => format!(" DEFAULT {}", quote_literal(v)),
                            None => String::new(),
                        };
                        self.ddl(
                            schema,
                            "add_column",
                            &format!(
                                "ALTER TABLE {qualified} ADD COLUMN {} {ty} NULL{default}",
                                quote(&c.name)
                            ),
                        )
                        .await?;
                        self.record(&id, &c.name, &c.sql_type).await?;
                        info!(sink = %self.name, table = %id, column = %c.name, "added column");
                    }
                    Some(e) if !older && !holds(&e.column_type, &c.sql_type) => {
                        let recorded = owned.get(&c.name);
                        let alter = match (recorded, self.config.column_types) {
                            (None, _) | (_, ColumnTypes::Keep) => false,
                            (Some(r), _) if *r == c.sql_type.canonical() => false,
                            (Some(_), ColumnTypes::Widen) => widens(&e.column_type, &c.sql_type),
                            (Some(_), ColumnTypes::Alter) => true,
                        };
                        if alter {
                            self.ddl(
                                schema,
                                "alter_type",
                                &format!(
                                    "ALTER TABLE {qualified} MODIFY COLUMN {} {ty}{}",
                                    quote(&c.name),
                                    if c.key { " NOT NULL" } else { " NULL" }
                                ),
                            )
                            .await?;
                            self.record(&id, &c.name, &c.sql_type).await?;
                            info!(sink = %self.name, table = %id, column = %c.name, to = %ty, "altered column type");
                        } else if self.kept_types.insert((
                            schema.id.clone(),
                            c.name.clone(),
                            c.sql_type.canonical(),
                        )) {
                            warn!(sink = %self.name, table = %id, column = %c.name, sink_type = %e.column_type,
                                "the source column's type changed and the sink keeps its own; values that do not fit go to the dead-letter topic");
                        }
                    }
                    Some(_) => {}
                }
            }
            if self.config.dropped_columns == DroppedColumns::Drop && !older {
                for name in owned.keys() {
                    if schema.columns.iter().any(|c| &c.name == name)
                        || !existing.contains_key(name)
                    {
                        continue;
                    }
                    self.ddl(
                        schema,
                        "drop_column",
                        &format!("ALTER TABLE {qualified} DROP COLUMN {}", quote(name)),
                    )
                    .await?;
                    let mut conn = self.pool.get_conn().await?;
                    conn.exec_drop(
                        format!(
                            "DELETE FROM {}.{COLUMNS_TABLE} WHERE sink_table = ? AND column_name = ?",
                            quote(&self.database)
                        ),
                        (id.to_string(), name.as_str()),
                    )
                    .await?;
                    info!(sink = %self.name, table = %id, column = %name, "dropped column");
                }
            }
        } else if let Some(c) = schema
            .columns
            .iter()
            .find(|c| !existing.contains_key(&c.name))
        {
            return Err(self.table_error(
                schema,
                format!(
                    "target table {id} has no column `{}`; add it, or set sinks.{}.create_tables = true",
                    c.name, self.name
                ),
            ));
        }
        if schema.key_columns().next().is_none() {
            return Err(self.table_error(
                schema,
                format!(
                    "table {} has no key columns at the source, so its rows cannot be upserted or deleted; \
                     give it a primary key, or name one with a mapping scheme's \"sluice.key\"",
                    schema.id
                ),
            ));
        }
        // `ON DUPLICATE KEY UPDATE` matches a row by any unique key of the sink table: the
        // upsert is this row's only if the sink's primary key holds the source's key (a key
        // that took a column at the source, kept narrower at the sink, would merge rows).
        let sink_key: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE                  WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY'                  ORDER BY ORDINAL_POSITION",
                (&id.namespace, &id.name),
            )
            .await?;
        let source_key: Vec<&str> = schema.key_columns().map(|c| c.name.as_str()).collect();
        if !sink_key.is_empty() && source_key.iter().any(|k| !sink_key.iter().any(|s| s == k)) {
            let key = source_key
                .iter()
                .map(|k| quote(k))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(self.table_error(
                schema,
                format!(
                    "the source's key of {} is ({}) and target table {id}'s primary key is ({}), \
                     which lacks some of it: its upserts would merge rows the source keeps apart \
                     (the key changed at the source). Change the sink's key to match: ALTER TABLE \
                     {qualified} DROP PRIMARY KEY, ADD PRIMARY KEY ({key}) \
                     (a TEXT column in it must first become a VARCHAR)",
                    schema.id,
                    source_key.join(", "),
                    sink_key.join(", "),
                ),
            ));
        }
        if let Some(p) = position.filter(|_| !older) {
            let key: Vec<String> = schema.key_columns().map(|c| c.name.clone()).collect();
            let json =
                serde_json::to_string(&key).map_err(|e| SinkError::Definite(e.to_string()))?;
            conn.exec_drop(
                format!(
                    "INSERT INTO {tables} (sink_table, schema_position, key_columns) VALUES (?, ?, ?) \
                     ON DUPLICATE KEY UPDATE schema_position = VALUES(schema_position), \
                       key_columns = VALUES(key_columns)"
                ),
                (id.to_string(), p.0.clone(), json),
            )
            .await?;
            self.followed.insert(schema.id.clone(), (p.0.clone(), key));
        } else if older {
            debug!(sink = %self.name, table = %schema.id, "an older table version: its type changes and drops are not followed");
        }
        let target = Target { qualified };
        self.targets
            .insert(schema.id.clone(), (schema.clone(), target.clone()));
        Ok(target)
    }

    /// DDL, before the batch's transaction, for the table versions with changes not applied
    /// yet (by a read of the offsets without locks: the transaction decides for good, and it
    /// can only find fewer). An old version replayed from Kafka so never reaches DDL, and
    /// cannot undo a newer one.
    async fn prepare(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let mut stored = HashMap::new();
        for (topic, partition) in plan::partitions(batch) {
            let p = self
                .progress(&topic, partition)
                .await?
                .unwrap_or(StoredProgress {
                    offset: -1,
                    position: None,
                });
            stored.insert((topic, partition), p);
        }
        // (A barrier's truncate is in the plan only once complete, which this read cannot
        // tell: its table version is prepared either way.)
        let schemas: Vec<(Arc<TableSchema>, Option<Position>)> =
            plan::sort(batch, stored, Vec::new())
                .steps
                .into_iter()
                .map(|step| (step.schema, step.newest.cloned()))
                .chain(
                    batch
                        .changes
                        .iter()
                        .filter(|c| c.barrier.is_some())
                        .map(|c| (c.table.clone(), Some(c.position.clone()))),
                )
                .collect();
        for (schema, position) in schemas {
            self.target(&schema, position.as_ref()).await?;
        }
        Ok(())
    }
}

/// Values of the columns `cols` of `row`, for parameters.
fn values(schema: &TableSchema, row: &[Datum], cols: &[usize]) -> Result<Vec<Value>, SinkError> {
    cols.iter()
        .map(|&i| {
            mysql_value(&schema.columns[i].sql_type, &row[i]).map_err(|why| {
                SinkError::Value(format!(
                    "column {} of {}: {why}",
                    schema.columns[i].name, schema.id
                ))
            })
        })
        .collect()
}

/// Placeholders for a statement: at most this many per statement (MySQL allows 65,535).
const MAX_PARAMS: usize = 60_000;

async fn execute(
    tx: &mut Transaction<'_>,
    target: &Target,
    plan: Plan<'_>,
) -> Result<usize, SinkError> {
    let schema = &plan.schema;
    let q = &target.qualified;
    if plan.truncate {
        // TRUNCATE would commit implicitly; DELETE stays in the transaction.
        tx.query_drop(format!("DELETE FROM {q}")).await?;
    }
    let key_idx = schema.key_indices();
    let mut deletes: Vec<&[Datum]> = Vec::new();
    let mut full: Vec<&[Datum]> = Vec::new();
    let mut partial: Vec<&[Datum]> = Vec::new();
    for action in &plan.actions {
        match action {
            Action::Delete(row) => deletes.push(row),
            Action::Upsert(row) if row.contains(&Datum::Unchanged) => partial.push(row.as_ref()),
            Action::Upsert(row) => full.push(row.as_ref()),
        }
    }
    let key_names: Vec<String> = key_idx
        .iter()
        .map(|&i| quote(&schema.columns[i].name))
        .collect();
    let key_tuple = if key_names.len() == 1 {
        key_names[0].clone()
    } else {
        format!("({})", key_names.join(", "))
    };
    let one_key = format!("({})", vec!["?"; key_idx.len()].join(", "));
    for chunk in deletes.chunks((MAX_PARAMS / key_idx.len().max(1)).max(1)) {
        let mut params = Vec::with_capacity(chunk.len() * key_idx.len());
        for row in chunk {
            params.extend(values(schema, row, &key_idx)?);
        }
        let list = vec![one_key.as_str(); chunk.len()].join(", ");
        tx.exec_drop(
            format!("DELETE FROM {q} WHERE {key_tuple} IN ({list})"),
            Params::Positional(params),
        )
        .await?;
    }
    let all: Vec<usize> = (0..schema.columns.len()).collect();
    let names: Vec<String> = schema.columns.iter().map(|c| quote(&c.name)).collect();
    let updates: Vec<String> = schema
        .columns
        .iter()
        .filter(|c| !c.key)
        .map(|c| format!("{0} = VALUES({0})", quote(&c.name)))
        .collect();
    // With nothing but the key, a duplicate changes nothing: update the key to itself.
    let on_duplicate = if updates.is_empty() {
        format!("{0} = {0}", key_names[0])
    } else {
        updates.join(", ")
    };
    let one_row = format!("({})", vec!["?"; all.len()].join(", "));
    for chunk in full.chunks((MAX_PARAMS / all.len().max(1)).max(1)) {
        let mut params = Vec::with_capacity(chunk.len() * all.len());
        for row in chunk {
            params.extend(values(schema, row, &all)?);
        }
        let rows = vec![one_row.as_str(); chunk.len()].join(", ");
        tx.exec_drop(
            format!(
                "INSERT INTO {q} ({}) VALUES {rows} ON DUPLICATE KEY UPDATE {on_duplicate}",
                names.join(", ")
            ),
            Params::Positional(params),
        )
        .await?;
    }
    // Unchanged TOAST (PostgreSQL sources): update only what came, row by row.
    for row in partial {
        let set: Vec<usize> = (0..row.len())
            .filter(|&i| row[i] != Datum::Unchanged && !schema.columns[i].key)
            .collect();
        if set.is_empty() {
            continue;
        }
        let sets: Vec<String> = set
            .iter()
            .map(|&i| format!("{} = ?", quote(&schema.columns[i].name)))
            .collect();
        let wheres: Vec<String> = key_idx
            .iter()
            .map(|&i| format!("{} = ?", quote(&schema.columns[i].name)))
            .collect();
        let mut params = values(schema, row, &set)?;
        params.extend(values(schema, row, &key_idx)?);
        tx.exec_drop(
            format!(
                "UPDATE {q} SET {} WHERE {}",
                sets.join(", "),
                wheres.join(" AND ")
            ),
            Params::Positional(params),
        )
        .await?;
    }
    Ok(plan.counts.iter().sum::<u64>() as usize)
}

impl MysqlSink {
    /// See [`crate::postgres::PostgresSink::raise_position`].
    pub async fn raise_position(
        &mut self,
        topic: &str,
        partition: i32,
        position: &Position,
    ) -> Result<(), SinkError> {
        let mut conn = self.pool.get_conn().await?;
        conn.exec_drop(
            format!(
                "INSERT INTO {} (consumer_group, topic, kafka_partition, kafka_offset, position) \
                 VALUES (?, ?, ?, -1, ?) ON DUPLICATE KEY UPDATE \
                 position = IF(position IS NULL OR position < VALUES(position), VALUES(position), position)",
                self.offsets()
            ),
            (&self.group, topic, partition, &position.0),
        )
        .await?;
        Ok(())
    }
}

impl Sink for MysqlSink {
    async fn apply(&mut self, batch: &Batch) -> Result<ApplyOutcome, SinkError> {
        let started = Instant::now();
        self.prepare(batch).await?;
        let mut tx = self.pool.start_transaction(TxOpts::default()).await?;
        let (outcome, counts) = match skeleton::apply_in(self, &mut tx, batch).await {
            Ok(o) => o,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        tx.commit().await?;
        skeleton::committed(&self.name, started, batch, &outcome, counts);
        Ok(outcome)
    }

    async fn apply_in_pieces(&mut self, batch: &Batch) -> Result<Pieces, SinkError> {
        let started = Instant::now();
        self.prepare(batch).await?;
        let mut tx = self.pool.start_transaction(TxOpts::default()).await?;
        match skeleton::in_pieces(self, &mut tx, batch).await {
            Ok(InPieces::Applied {
                outcome,
                counts,
                pieces,
            }) => {
                tx.commit().await?;
                skeleton::split_applied(&self.name, started, batch, &outcome, counts, pieces);
                Ok(Pieces::Applied(outcome))
            }
            Ok(InPieces::Rejected {
                index,
                reason,
                missing_row,
            }) => {
                let _ = tx.rollback().await;
                Ok(Pieces::Rejected {
                    index,
                    reason,
                    missing_row,
                })
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn progress(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<StoredProgress>, SinkError> {
        let mut conn = self.pool.get_conn().await?;
        let row: Option<(i64, Option<Vec<u8>>)> = conn
            .exec_first(
                format!(
                    "SELECT kafka_offset, position FROM {} WHERE consumer_group = ? AND topic = ? AND kafka_partition = ?",
                    self.offsets()
                ),
                (&self.group, topic, partition),
            )
            .await?;
        Ok(row.map(|(offset, position)| StoredProgress {
            offset,
            position: position.map(Position),
        }))
    }
}

impl<'t> skeleton::Dialect<Transaction<'t>> for MysqlSink {
    fn sink_name(&self) -> &str {
        &self.name
    }

    async fn lock_topic(
        &mut self,
        tx: &mut Transaction<'t>,
        topic: &str,
    ) -> Result<Vec<(i32, Option<Vec<u8>>)>, SinkError> {
        Ok(tx
            .exec(
                format!(
                    "SELECT kafka_partition, barrier FROM {} \
                     WHERE consumer_group = ? AND topic = ? ORDER BY kafka_partition FOR UPDATE",
                    self.offsets()
                ),
                (&self.group, topic),
            )
            .await?)
    }

    async fn claim(
        &mut self,
        tx: &mut Transaction<'t>,
        topic: &str,
        partition: i32,
    ) -> Result<OffsetsRow, SinkError> {
        let offsets = self.offsets();
        tx.exec_drop(
            format!(
                "INSERT IGNORE INTO {offsets} (consumer_group, topic, kafka_partition, kafka_offset) VALUES (?, ?, ?, -1)"
            ),
            (&self.group, topic, partition),
        )
        .await?;
        let row: Option<OffsetsRow> = tx
            .exec_first(
                format!(
                    "SELECT kafka_offset, position, barrier FROM {offsets} \
                     WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? FOR UPDATE"
                ),
                (&self.group, topic, partition),
            )
            .await?;
        Ok(row.unwrap_or((-1, None, None)))
    }

    async fn write(
        &mut self,
        tx: &mut Transaction<'t>,
        plan: Plan<'_>,
    ) -> Result<usize, SinkError> {
        let target = self
            .targets
            .get(&plan.schema.id)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| SinkError::Definite(format!("no target for {}", plan.schema.id)))?;
        // Counted and warned of once committed (`Applied`).
        self.older_key = self
            .followed
            .get(&plan.schema.id)
            .filter(|(at, _)| plan.newest.is_some_and(|p| p.0 < *at))
            .and_then(|(_, newer)| {
                let key = plan.schema.key_columns().map(|c| c.name.clone()).collect();
                OlderKey::between(key, newer)
            });
        execute(tx, &target, plan).await
    }

    fn older_key(&mut self) -> Option<OlderKey> {
        self.older_key.take()
    }

    async fn record(
        &mut self,
        tx: &mut Transaction<'t>,
        topic: &str,
        partition: i32,
        progress: &StoredProgress,
        barrier: Option<&Position>,
    ) -> Result<(), SinkError> {
        tx.exec_drop(
            format!(
                "UPDATE {} SET kafka_offset = ?, position = ?, barrier = coalesce(?, barrier), \
                   updated_at = CURRENT_TIMESTAMP(6) \
                 WHERE consumer_group = ? AND topic = ? AND kafka_partition = ?",
                self.offsets()
            ),
            (
                progress.offset,
                progress.position.as_ref().map(|p| p.0.clone()),
                barrier.map(|p| p.0.clone()),
                &self.group,
                topic,
                partition,
            ),
        )
        .await?;
        Ok(())
    }

    async fn clear_barrier(
        &mut self,
        tx: &mut Transaction<'t>,
        topic: &str,
        barrier: &Position,
    ) -> Result<(), SinkError> {
        tx.exec_drop(
            format!(
                "UPDATE {} SET barrier = NULL \
                 WHERE consumer_group = ? AND topic = ? AND barrier = ?",
                self.offsets()
            ),
            (&self.group, topic, barrier.0.clone()),
        )
        .await?;
        Ok(())
    }

    async fn savepoint(
        &mut self,
        tx: &mut Transaction<'t>,
        what: skeleton::Savepoint,
    ) -> Result<(), SinkError> {
        Ok(tx.query_drop(what.sql()).await?)
    }
}
