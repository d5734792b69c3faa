//! The PostgreSQL sink: set-based upserts and deletes through `unnest` of one array per column
//! in a select list, read in lockstep without being materialized. Arrays are binary where the
//! column's type is the values' own, else text cast to the column's type (`encode`);
//! statements are prepared once per shape and run in one transaction with the offsets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use sluice_connect::tls::{MakeRustls, TlsConfig};
use sluice_schemas::{Datum, Position, SqlType, TableId, TableSchema};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement, Transaction};

use encode::{ColumnArray, Wire};

use crate::error::connect_error;
use tracing::{debug, info, warn};

mod check;
mod encode;
pub use check::pg_type_name;

use crate::metrics as m;
use crate::plan::{Action, OlderKey, Plan};
use crate::provisional::{self, Ended, Provisional, Step};
use crate::skeleton::{self, InPieces, OffsetsRow};
use crate::{
    ApplyOutcome, Batch, ColumnTypes, DroppedColumns, Pieces, Sink, SinkError, StoredProgress,
};

/// Table holding consumed offsets and applied positions, written in every batch transaction.
pub const OFFSETS_TABLE: &str = "public.sluice_offsets";

/// The source type (`sluice.type`) of every column the sink created or altered, by sink table:
/// the columns Sluice owns. Only those follow a source type change or drop; a column someone
/// else made (a table created by hand, a column added to it) is never altered or dropped.
pub const COLUMNS_TABLE: &str = "public.sluice_columns";
/// Per sink table, the source position of the newest table version whose type changes and
/// drops the sink followed: a version older than that (from a lagging partition or router)
/// never turns them back. Its row is locked while a version is looked up, so routers sharing
/// the sink decide one at a time.
pub const TABLES_TABLE: &str = "public.sluice_tables";

fn default_true() -> bool {
    true
}

/// A PostgreSQL sink (`[sinks.<name>]` with `kind = "postgres"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection string. The password may instead come from `SLUICE_SINKS_<NAME>_PASSWORD`.
    pub url: String,
    /// Write every table into this schema instead of the source table's own schema.
    #[serde(default)]
    pub schema: Option<String>,
    /// Create missing target tables (and add missing columns) from the source schema.
    #[serde(default = "default_true")]
    pub create_tables: bool,
    /// When a source column's type changes so the sink column can no longer hold its values:
    /// `widen` (default) alters the sink column when the new type holds every old value
    /// (`integer` → `bigint`, `numeric(10,2)` → `numeric(12,2)`, anything → `text`) and keeps it
    /// otherwise; `alter` always alters it (existing values converted by PostgreSQL's cast; a
    /// value that does not convert stops that table, with the reason); `keep` never alters. A
    /// kept column takes the values that fit; the others go to the dead-letter topic.
    #[serde(default)]
    pub column_types: ColumnTypes,
    /// When a column disappears at the source (dropped, or renamed): `keep` (default) leaves
    /// the sink column and its data, and new rows leave it null; `drop` drops it from the sink
    /// too. (Keep a renamed column's data with a mapping scheme whose field has the old name in
    /// `aliases`.)
    #[serde(default)]
    pub dropped_columns: DroppedColumns,
    /// TLS to the sink (`[sinks.<name>.tls]`): `mode` = `disable` (default), `require`,
    /// `verify-ca` or `verify-full`, with `ca_file` and an optional `cert_file`/`key_file`.
    #[serde(default)]
    pub tls: TlsConfig,
}

/// A column of a target table as the sink database declares it.
#[derive(Debug, Clone)]
struct SinkColumn {
    /// The type values are cast to: the column's type without its modifier, schema-qualified
    /// (`pg_catalog.varchar`, `public.mood`).
    cast: String,
    /// `format_type` with the modifier (`character varying(20)`).
    full: String,
}

/// A target table as the sink database declares it.
#[derive(Debug, Clone)]
struct Target {
    /// `"schema"."table"`.
    qualified: String,
    /// By column name.
    types: HashMap<String, SinkColumn>,
    /// The primary key's columns (none without one).
    primary_key: Vec<String>,
    /// The column sets of its unique indexes (the primary key's among them), to upsert by.
    unique: Vec<Vec<String>>,
    /// For a table version older than the newest the sink followed, whose key is not the
    /// newest's (the key changed at the source): both keys. Its changes reach the sink after
    /// changes under the newer key, and are counted and warned of (see `execute`).
    older_key: Option<OlderKey>,
}

impl Target {
    /// `qualified` with its columns `types`, and its keys read from the catalog.
    async fn read(
        txn: &Transaction<'_>,
        qualified: String,
        types: HashMap<String, SinkColumn>,
    ) -> Result<Target, SinkError> {
        let (primary_key, unique) = load_unique_keys(txn, &qualified).await?;
        Ok(Target {
            qualified,
            types,
            primary_key,
            unique,
            older_key: None,
        })
    }
}

/// A connected PostgreSQL sink.
pub struct PostgresSink {
    client: Client,
    conn_task: tokio::task::JoinHandle<()>,
    state: State,
    /// Kept to reconnect after the sink restarts.
    password: Option<String>,
}

/// Everything but the client, so a transaction can borrow the client while planning mutates
/// the cache.
struct State {
    name: String,
    group: String,
    config: PostgresSinkConfig,
    targets: HashMap<TableId, (Arc<TableSchema>, Target)>,
    /// Type changes already reported as kept.
    kept_types: std::collections::HashSet<(TableId, String, String)>,
    /// The set-based statements prepared on this connection, by their text: a batch of the
    /// same shape as an earlier one costs no prepare round trip and no new plan.
    statements: HashMap<String, Statement>,
    /// A provisional transaction's connection ([`crate::provisional`]): it writes into tables
    /// as they are and never takes `sluice_tables`' row lock (held to its commit, it would
    /// stop every other writer's lookup); a table that needs DDL first is written after the
    /// commit instead.
    provisional: bool,
    /// The plan written last was under an older key (see [`OlderKey`]).
    older_key: Option<OlderKey>,
}

/// Prepared statements kept per connection; past this many (a table with many partial-update
/// shapes, many tables) the cache starts over.
const MAX_PREPARED: usize = 256;

impl Drop for PostgresSink {
    fn drop(&mut self) {
        self.conn_task.abort();
    }
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The PostgreSQL type a new target column gets for a source type. Types known only by name
/// (enums, composites, extension types) keep their name where the sink has such a type, and
/// become `text` where it has not: their values travel in text form, which `text` keeps exactly.
async fn ddl_type(txn: &Transaction<'_>, t: &SqlType) -> Result<String, SinkError> {
    Ok(match t {
        SqlType::Array(elem) => format!("{}[]", Box::pin(ddl_type(txn, elem)).await?),
        SqlType::Enum(name) | SqlType::Other(name) => {
            if type_exists(txn, name).await? {
                name.clone()
            } else {
                info!(r#type = %name, "the sink has no such type; the column is created as text");
                "text".into()
            }
        }
        t => pg_type_name(t).unwrap_or_else(|| "text".into()),
    })
}

/// Whether `name` parses as a type name that exists in the sink. The name comes from an Avro
/// schema, so it is checked this way before it is ever written into DDL: a string that
/// `to_regtype` accepts whole is a type name and nothing else. A syntax error is rolled back
/// to a savepoint so the batch's transaction goes on.
async fn type_exists(txn: &Transaction<'_>, name: &str) -> Result<bool, SinkError> {
    txn.batch_execute("SAVEPOINT sluice_type_check").await?;
    match txn
        .query_one("SELECT to_regtype($1) IS NOT NULL", &[&name])
        .await
    {
        Ok(row) => {
            txn.batch_execute("RELEASE SAVEPOINT sluice_type_check")
                .await?;
            Ok(row.get(0))
        }
        Err(e) if e.as_db_error().is_some() => {
            txn.batch_execute("ROLLBACK TO SAVEPOINT sluice_type_check")
                .await?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

impl PostgresSink {
    /// Connects, sets the session up for Sluice's text formats, and creates `sluice_offsets`.
    pub async fn connect(
        name: &str,
        group: &str,
        config: PostgresSinkConfig,
        password: Option<String>,
    ) -> Result<PostgresSink, SinkError> {
        let mut pg: tokio_postgres::Config = config.url.parse().map_err(|e| {
            SinkError::Definite(format!(
                "sinks.{name}.url is not a valid connection string: {e}"
            ))
        })?;
        if let Some(pw) = &password {
            pg.password(pw);
        }
        pg.application_name(format!("sluice-sink-{name}"));
        let tls = config
            .tls
            .client_config(&format!("sinks.{name}.tls"))
            .map_err(SinkError::Definite)?;
        let sink_name = name.to_string();
        let closed = move |e: tokio_postgres::Error| {
            tracing::warn!(sink = %sink_name, error = %e, "sink connection closed");
        };
        let (client, conn_task) = match tls {
            None => {
                let (client, connection) = pg
                    .connect(NoTls)
                    .await
                    .map_err(|e| connect_error(name, e.into()))?;
                let task = tokio::spawn(async move { connection.await.unwrap_or_else(closed) });
                (client, task)
            }
            Some(tls) => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, connection) = pg
                    .connect(MakeRustls(tls))
                    .await
                    .map_err(|e| connect_error(name, e.into()))?;
                let task = tokio::spawn(async move { connection.await.unwrap_or_else(closed) });
                (client, task)
            }
        };
        client
            .batch_execute(&format!(
                "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 3; \
                 SET lc_monetary = 'C'; SET IntervalStyle = 'iso_8601'; \
                 CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} (\
                   consumer_group text NOT NULL, topic text NOT NULL, kafka_partition integer NOT NULL, \
                   kafka_offset bigint NOT NULL, position bytea, updated_at timestamptz NOT NULL DEFAULT now(), \
                   PRIMARY KEY (consumer_group, topic, kafka_partition)); \
                 ALTER TABLE {OFFSETS_TABLE} ADD COLUMN IF NOT EXISTS barrier bytea; \
                 CREATE TABLE IF NOT EXISTS {COLUMNS_TABLE} (\
                   sink_table text NOT NULL, column_name text NOT NULL, sluice_type text NOT NULL, \
                   PRIMARY KEY (sink_table, column_name)); \
                 CREATE TABLE IF NOT EXISTS {TABLES_TABLE} (\
                   sink_table text PRIMARY KEY, schema_position bytea NOT NULL); \
                 ALTER TABLE {TABLES_TABLE} ADD COLUMN IF NOT EXISTS key_columns text[]"
            ))
            .await?;
        Ok(PostgresSink {
            client,
            conn_task,
            state: State {
                name: name.to_string(),
                group: group.to_string(),
                config,
                targets: HashMap::new(),
                kept_types: std::collections::HashSet::new(),
                statements: HashMap::new(),
                provisional: false,
                older_key: None,
            },
            password,
        })
    }

    /// After the connection was lost (the sink restarted, a network cut), opens a new one; the
    /// router retries the failed batch on it. The table cache stays: it describes the sink's
    /// tables, not the connection.
    async fn ensure_connected(&mut self) -> Result<(), SinkError> {
        if !self.client.is_closed() {
            return Ok(());
        }
        info!(sink = %self.state.name, "reconnecting to the sink");
        let mut fresh = PostgresSink::connect(
            &self.state.name,
            &self.state.group,
            self.state.config.clone(),
            self.password.clone(),
        )
        .await?;
        // Dropping `fresh` aborts its connection task: swap the live client and task into
        // `self` first, so the dead ones are what is dropped.
        std::mem::swap(&mut self.client, &mut fresh.client);
        std::mem::swap(&mut self.conn_task, &mut fresh.conn_task);
        // Statements are the old connection's.
        self.state.statements.clear();
        Ok(())
    }
}

impl State {
    /// After a failed transaction: tables created or altered in it are gone again, so what
    /// the caches learnt in it (targets, statements planned against them) goes too.
    fn forget(&mut self) {
        self.targets.clear();
        self.statements.clear();
    }

    fn target_id(&self, source: &TableId) -> TableId {
        TableId::new(
            self.config
                .schema
                .clone()
                .unwrap_or_else(|| source.namespace.clone()),
            source.name.clone(),
        )
    }

    /// Looks the target table up (creating it, adding columns and following type changes and
    /// drops as the config allows); cached per source schema version. A failure that concerns
    /// only this table is [`SinkError::Table`].
    async fn target(
        &mut self,
        txn: &Transaction<'_>,
        schema: &Arc<TableSchema>,
        position: Option<&Position>,
    ) -> Result<Target, SinkError> {
        if let Some((cached, target)) = self.targets.get(&schema.id) {
            if Arc::ptr_eq(cached, schema) || **cached == **schema {
                return Ok(target.clone());
            }
        }
        let id = self.target_id(&schema.id);
        if self.provisional {
            let qualified = format!("{}.{}", quote(&id.namespace), quote(&id.name));
            let types = load_columns(txn, &qualified).await?;
            if let Some(c) = schema.columns.iter().find(|c| !types.contains_key(&c.name)) {
                return Err(SinkError::Definite(if types.is_empty() {
                    format!("target table {id} does not exist yet (it is created with the commit)")
                } else {
                    format!(
                        "target table {id} has no column \"{}\" yet (it is added with the commit)",
                        c.name
                    )
                }));
            }
            let target = Target::read(txn, qualified, types).await?;
            self.targets
                .insert(schema.id.clone(), (schema.clone(), target.clone()));
            return Ok(target);
        }
        // How new this version is against the newest the sink followed (row locked: routers
        // sharing the sink decide one at a time).
        txn.execute(
            &format!(
                "INSERT INTO {TABLES_TABLE} (sink_table, schema_position) VALUES ($1, '') \
                 ON CONFLICT DO NOTHING"
            ),
            &[&id.to_string()],
        )
        .await?;
        let row = txn
            .query_one(
                &format!(
                    "SELECT schema_position, key_columns FROM {TABLES_TABLE} \
                     WHERE sink_table = $1 FOR UPDATE"
                ),
                &[&id.to_string()],
            )
            .await?;
        let followed: Vec<u8> = row.get(0);
        let followed_key: Option<Vec<String>> = row.get(1);
        let older = position.is_some_and(|p| p.0 < followed);
        let key: Vec<String> = schema.key_columns().map(|c| c.name.clone()).collect();
        let older_key = followed_key
            .filter(|_| older)
            .and_then(|newer| OlderKey::between(key.clone(), &newer));
        let qualified = format!("{}.{}", quote(&id.namespace), quote(&id.name));
        let sink_name = self.name.clone();
        let table_error = |message: String| SinkError::Table {
            table: schema.id.clone(),
            message: format!("sink {sink_name}: {message}"),
        };
        let mut types = load_columns(txn, &qualified).await?;
        if types.is_empty() {
            if !self.config.create_tables {
                return Err(table_error(format!(
                    "target table {id} does not exist; create it, or set sinks.{}.create_tables = true",
                    self.name
                )));
            }
            let mut cols = Vec::with_capacity(schema.columns.len());
            for c in &schema.columns {
                cols.push(format!(
                    "{} {}{}",
                    quote(&c.name),
                    ddl_type(txn, &c.sql_type).await?,
                    if c.key { " NOT NULL" } else { "" }
                ));
            }
            let key: Vec<String> = schema.key_columns().map(|c| quote(&c.name)).collect();
            let pk = if key.is_empty() {
                String::new()
            } else {
                format!(", PRIMARY KEY ({})", key.join(", "))
            };
            self.ddl(
                txn,
                schema,
                "create",
                &format!(
                    "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {qualified} ({}{pk})",
                    quote(&id.namespace),
                    cols.join(", ")
                ),
                "check the sink user's CREATE privilege on the database and the schema",
            )
            .await?;
            info!(sink = %self.name, table = %id, "created target table");
            for c in &schema.columns {
                record(txn, &id, &c.name, &c.sql_type).await?;
            }
            types = load_columns(txn, &qualified).await?;
        } else if self.config.create_tables {
            for c in &schema.columns {
                if !types.contains_key(&c.name) {
                    let ty = ddl_type(txn, &c.sql_type).await?;
                    let column = quote(&c.name);
                    let ddl = match &c.missing {
                        // Rows that predate the column read this value at the source without
                        // any change being streamed: give them the same. The default stays:
                        // an insert of the table's older version (from another partition, or
                        // a lagging router) names only the older columns, and its row reads
                        // this value at the source too. Later versions write it explicitly.
                        Some(v) => format!(
                            "ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS {column} {ty} DEFAULT {}::{ty}",
                            quote_literal(v)
                        ),
                        None => format!("ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS {column} {ty}"),
                    };
                    self.ddl(
                        txn,
                        schema,
                        "add_column",
                        &ddl,
                        "check the sink user owns the table",
                    )
                    .await?;
                    record(txn, &id, &c.name, &c.sql_type).await?;
                    info!(sink = %self.name, table = %id, column = %c.name, "added column");
                }
            }
            if older {
                // An older version than one the sink followed: its columns are added if
                // missing, but types and drops are never turned back (its values are cast
                // into the newer types).
                debug!(sink = %self.name, table = %schema.id, "an older table version: its type changes and drops are not followed");
            } else {
                let owned = owned_columns(txn, &id).await?;
                self.follow_type_changes(txn, schema, &qualified, &types, &owned)
                    .await?;
                self.follow_drops(txn, schema, &qualified, &types, &owned)
                    .await?;
            }
            types = load_columns(txn, &qualified).await?;
        }
        if let Some(p) = position.filter(|_| !older) {
            txn.execute(
                &format!(
                    "UPDATE {TABLES_TABLE} SET schema_position = $2, key_columns = $3 \
                     WHERE sink_table = $1"
                ),
                &[&id.to_string(), &p.0, &key],
            )
            .await?;
        }
        for c in &schema.columns {
            if !types.contains_key(&c.name) {
                return Err(table_error(format!(
                    "target table {id} has no column \"{}\"; add it, or set sinks.{}.create_tables = true",
                    c.name, self.name
                )));
            }
        }
        let mut target = Target::read(txn, qualified, types).await?;
        target.older_key = older_key;
        self.targets
            .insert(schema.id.clone(), (schema.clone(), target.clone()));
        Ok(target)
    }

    /// Runs DDL for a table; a failure that retrying cannot fix is that table's.
    async fn ddl(
        &self,
        txn: &Transaction<'_>,
        schema: &TableSchema,
        what: &'static str,
        sql: &str,
        fix: &str,
    ) -> Result<(), SinkError> {
        match txn.batch_execute(sql).await {
            Ok(()) => {
                metrics::counter!(m::DDL_TOTAL, "sink" => self.name.clone(), "table" => schema.id.to_string(), "ddl" => what).increment(1);
                Ok(())
            }
            Err(e) => {
                let e = SinkError::from(e);
                if e.is_transient() {
                    return Err(e);
                }
                Err(SinkError::Table {
                    table: schema.id.clone(),
                    message: format!(
                        "sink {}: {} of {} failed: {}; {fix}. Its changes wait; the other tables go on",
                        self.name,
                        what.replace('_', " "),
                        self.target_id(&schema.id),
                        e.detail()
                    ),
                })
            }
        }
    }

    /// Follows a source type change of the columns Sluice owns (see [`COLUMNS_TABLE`]), as
    /// `column_types` allows. A column someone else made keeps its type: values that do not
    /// fit it are dead-lettered.
    async fn follow_type_changes(
        &mut self,
        txn: &Transaction<'_>,
        schema: &TableSchema,
        qualified: &str,
        types: &HashMap<String, SinkColumn>,
        owned: &HashMap<String, String>,
    ) -> Result<(), SinkError> {
        let id = self.target_id(&schema.id);
        for c in &schema.columns {
            let Some(existing) = types.get(&c.name) else {
                continue;
            };
            let canonical = c.sql_type.canonical();
            let recorded = owned.get(&c.name);
            if recorded == Some(&canonical) {
                continue;
            }
            let fits = check::holds(&existing.full, &c.sql_type);
            let alter = match (recorded, self.config.column_types) {
                (_, _) if fits => false,
                (None, _) | (_, ColumnTypes::Keep) => false,
                (Some(_), ColumnTypes::Widen) => check::widens(&existing.full, &c.sql_type),
                (Some(_), ColumnTypes::Alter) => true,
            };
            if fits {
                if recorded.is_some() {
                    record(txn, &id, &c.name, &c.sql_type).await?;
                }
                continue;
            }
            if !alter {
                if self
                    .kept_types
                    .insert((schema.id.clone(), c.name.clone(), canonical.clone()))
                {
                    let why = if recorded.is_none() {
                        "the column was not made by Sluice"
                    } else {
                        "sinks.<name>.column_types does not allow this change"
                    };
                    warn!(sink = %self.name, table = %schema.id, column = %c.name, sink_type = %existing.full,
                        source_type = %canonical,
                        "the sink column cannot hold every value of the source's type, and is kept ({why}); values that do not fit go to the dead-letter topic");
                }
                continue;
            }
            let wanted = ddl_type(txn, &c.sql_type).await?;
            let column = quote(&c.name);
            self.ddl(
                txn,
                schema,
                "alter_type",
                &format!("ALTER TABLE {qualified} ALTER COLUMN {column} TYPE {wanted} USING {column}::{wanted}"),
                &format!(
                    "convert or remove the values that do not convert, or set sinks.{}.column_types = \"keep\"",
                    self.name
                ),
            )
            .await?;
            record(txn, &id, &c.name, &c.sql_type).await?;
            info!(sink = %self.name, table = %schema.id, column = %c.name, from = %existing.full, to = %wanted, "altered column type");
        }
        Ok(())
    }

    /// Drops the columns Sluice owns that the table version no longer has, when
    /// `dropped_columns = "drop"`. (Only fresh changes reach here: an old version replayed
    /// from Kafka is skipped before it is planned, so it cannot drop a newer column.)
    async fn follow_drops(
        &mut self,
        txn: &Transaction<'_>,
        schema: &TableSchema,
        qualified: &str,
        types: &HashMap<String, SinkColumn>,
        owned: &HashMap<String, String>,
    ) -> Result<(), SinkError> {
        if self.config.dropped_columns != DroppedColumns::Drop {
            return Ok(());
        }
        let id = self.target_id(&schema.id);
        let key: Vec<&str> = schema.key_columns().map(|c| c.name.as_str()).collect();
        for name in owned.keys() {
            if schema.columns.iter().any(|c| &c.name == name)
                || !types.contains_key(name)
                || key.contains(&name.as_str())
            {
                continue;
            }
            self.ddl(
                txn,
                schema,
                "drop_column",
                &format!(
                    "ALTER TABLE {qualified} DROP COLUMN IF EXISTS {}",
                    quote(name)
                ),
                "check the sink user owns the table",
            )
            .await?;
            txn.execute(
                &format!("DELETE FROM {COLUMNS_TABLE} WHERE sink_table = $1 AND column_name = $2"),
                &[&id.to_string(), name],
            )
            .await?;
            info!(sink = %self.name, table = %schema.id, column = %name, "dropped column");
        }
        Ok(())
    }
}

/// Records that Sluice made a column for values of `t`.
async fn record(
    txn: &Transaction<'_>,
    table: &TableId,
    column: &str,
    t: &SqlType,
) -> Result<(), SinkError> {
    txn.execute(
        &format!(
            "INSERT INTO {COLUMNS_TABLE} (sink_table, column_name, sluice_type) VALUES ($1, $2, $3) \
             ON CONFLICT (sink_table, column_name) DO UPDATE SET sluice_type = EXCLUDED.sluice_type"
        ),
        &[&table.to_string(), &column, &t.canonical()],
    )
    .await?;
    Ok(())
}

/// The columns of a sink table Sluice made, with the source type each was made for.
async fn owned_columns(
    txn: &Transaction<'_>,
    table: &TableId,
) -> Result<HashMap<String, String>, SinkError> {
    let rows = txn
        .query(
            &format!("SELECT column_name, sluice_type FROM {COLUMNS_TABLE} WHERE sink_table = $1"),
            &[&table.to_string()],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The table's primary key columns in key order (none without one), and the column sets of
/// its unique indexes (non-partial, on columns only), the primary key's among them.
async fn load_unique_keys(
    txn: &Transaction<'_>,
    qualified: &str,
) -> Result<(Vec<String>, Vec<Vec<String>>), SinkError> {
    let rows = txn
        .query(
            "SELECT i.indisprimary, ARRAY(SELECT a.attname::text FROM pg_attribute a \
                 WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 ORDER BY array_position(i.indkey, a.attnum)) \
             FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisunique \
               AND i.indpred IS NULL AND i.indexprs IS NULL",
            &[&qualified],
        )
        .await?;
    let mut primary = Vec::new();
    let mut unique = Vec::with_capacity(rows.len());
    for r in &rows {
        let columns: Vec<String> = r.get(1);
        if r.get::<_, bool>(0) {
            primary = columns.clone();
        }
        unique.push(columns);
    }
    Ok((primary, unique))
}

async fn load_columns(
    txn: &Transaction<'_>,
    qualified: &str,
) -> Result<HashMap<String, SinkColumn>, SinkError> {
    let rows = txn
        .query(
            // The type without its modifier, by its catalog name: values are cast to it, and
            // the column's own assignment coercion then refuses what does not fit. An
            // explicit cast to varchar(5) silently truncates, and so does one to `character`,
            // which is what format_type calls bpchar without a length (`char(1)`).
            "SELECT a.attname::text, format('%I.%I', n.nspname, t.typname), \
                    format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&qualified],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                SinkColumn {
                    cast: r.get(1),
                    full: r.get(2),
                },
            )
        })
        .collect())
}

impl State {
    async fn execute(&mut self, txn: &Transaction<'_>, plan: Plan<'_>) -> Result<usize, SinkError> {
        let target = self.target(txn, &plan.schema, plan.newest).await?;
        let schema = &plan.schema;
        if plan.truncate {
            txn.batch_execute(&format!("TRUNCATE {}", target.qualified))
                .await?;
        }
        let cast = |name: &str| {
            target
                .types
                .get(name)
                .map_or_else(|| "text".into(), |c| c.cast.clone())
        };
        let key_idx = schema.key_indices();
        if key_idx.is_empty() && !plan.actions.is_empty() {
            return Err(SinkError::Table {
                table: schema.id.clone(),
                message: format!(
                    "sink {}: table {} has no key columns at the source, so its rows cannot be upserted or deleted; \
                     give it a primary key, or name one with a mapping scheme's \"sluice.key\"",
                    self.name, schema.id
                ),
            });
        }
        // Counted and warned of once committed (`Applied`).
        self.older_key = target.older_key.clone();
        let mut deletes: Vec<&[Datum]> = Vec::new();
        let mut full: Vec<&[Datum]> = Vec::new();
        let mut partial: HashMap<Vec<bool>, Vec<&[Datum]>> = HashMap::new();
        for action in &plan.actions {
            match action {
                Action::Delete(row) => deletes.push(row),
                Action::Upsert(row) if row.contains(&Datum::Unchanged) => {
                    let mask: Vec<bool> = row.iter().map(|d| *d != Datum::Unchanged).collect();
                    partial.entry(mask).or_default().push(row);
                }
                Action::Upsert(row) => full.push(row.as_ref()),
            }
        }
        let key_match = |alias_of: &dyn Fn(usize) -> String| -> String {
            key_idx
                .iter()
                .map(|&i| {
                    let name = &schema.columns[i].name;
                    format!("t.{} = {}::{}", quote(name), alias_of(i), cast(name))
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let arrays_of = |rows, cols: &[usize]| column_arrays(schema, rows, cols, &cast);
        if !deletes.is_empty() {
            let cols: Vec<usize> = key_idx.clone();
            let arrays = arrays_of(&deletes, &cols);
            let sql = format!(
                "DELETE FROM {} AS t USING {} WHERE {}",
                target.qualified,
                unnested(&arrays),
                key_match(&|i| format!("v.c{}", cols.iter().position(|c| *c == i).unwrap_or(0)))
            );
            self.run(txn, sql, &arrays).await?;
        }
        if !full.is_empty() {
            let cols: Vec<usize> = (0..schema.columns.len()).collect();
            let arrays = arrays_of(&full, &cols);
            let names: Vec<String> = schema.columns.iter().map(|c| quote(&c.name)).collect();
            let selects: Vec<String> = schema
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!("v.c{i}::{}", cast(&c.name)))
                .collect();
            // The upsert matches by the change's key where a unique index is on exactly it.
            // Otherwise by the sink's primary key when that holds the change's key and the row
            // has all its columns: a key that gained a column at the source and was followed
            // at the sink, where a change written under the older key is still this row's by
            // the wider one. Else by the change's key, which the database then refuses by
            // name (42P10, below).
            let change_key: Vec<&str> = key_idx
                .iter()
                .map(|&i| schema.columns[i].name.as_str())
                .collect();
            let indexed = target.unique.iter().any(|u| {
                u.len() == change_key.len() && u.iter().all(|c| change_key.contains(&c.as_str()))
            });
            let conflict_on: Vec<&str> = if !indexed
                && !target.primary_key.is_empty()
                && change_key
                    .iter()
                    .all(|k| target.primary_key.iter().any(|p| p == k))
                && target
                    .primary_key
                    .iter()
                    .all(|k| schema.columns.iter().any(|c| &c.name == k))
            {
                target.primary_key.iter().map(String::as_str).collect()
            } else {
                change_key
            };
            let keys: Vec<String> = conflict_on.iter().map(|k| quote(k)).collect();
            let updates: Vec<String> = schema
                .columns
                .iter()
                .filter(|c| !conflict_on.contains(&c.name.as_str()))
                .map(|c| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
                .collect();
            let conflict = if updates.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            let sql = format!(
                "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {conflict}",
                target.qualified,
                names.join(", "),
                selects.join(", "),
                unnested(&arrays),
                keys.join(", ")
            );
            match self.run(txn, sql, &arrays).await {
                // No unique index on the source's key: the key changed at the source (or the
                // table was made with another). Only this table can wait for the fix.
                Err(e) if e.sqlstate() == Some("42P10") => {
                    return Err(SinkError::Table {
                        table: schema.id.clone(),
                        message: format!(
                            "sink {}: target table {} has no primary key or unique index on \
                             ({}), the source's key of {} (did the key change at the source?): \
                             change the sink's key to match, e.g. ALTER TABLE {} DROP CONSTRAINT \
                             <its primary key>, ADD PRIMARY KEY ({}). Its changes wait; the other \
                             tables go on",
                            self.name,
                            target.qualified,
                            keys.join(", "),
                            schema.id,
                            target.qualified,
                            keys.join(", ")
                        ),
                    });
                }
                other => {
                    other?;
                }
            }
        }
        for (mask, rows) in &partial {
            let cols: Vec<usize> = (0..schema.columns.len()).filter(|&i| mask[i]).collect();
            let arrays = arrays_of(rows, &cols);
            let alias_of =
                |i: usize| format!("v.c{}", cols.iter().position(|c| *c == i).unwrap_or(0));
            let sets: Vec<String> = cols
                .iter()
                .filter(|&&i| !schema.columns[i].key)
                .map(|&i| {
                    let name = &schema.columns[i].name;
                    format!("{} = {}::{}", quote(name), alias_of(i), cast(name))
                })
                .collect();
            if sets.is_empty() {
                continue;
            }
            let sql = format!(
                "UPDATE {} AS t SET {} FROM {} WHERE {}",
                target.qualified,
                sets.join(", "),
                unnested(&arrays),
                key_match(&alias_of)
            );
            self.run(txn, sql, &arrays).await?;
        }
        Ok(plan.counts.iter().sum::<u64>() as usize)
    }
}

/// The column arrays as a relation `v(c0, c1, …)`:
/// `(SELECT unnest($1::pg_catalog.int8[]) AS c0, unnest($2::text[]) AS c1, …) AS v`.
/// Set-returning functions in a select list run in lockstep (ProjectSet), row by row; the
/// same arrays in `FROM unnest($1, $2, …)` are first copied into one tuplestore each, which
/// took PostgreSQL about a third longer per batch (BENCHMARKS.md).
fn unnested(arrays: &[ColumnArray<'_>]) -> String {
    let columns: Vec<String> = arrays
        .iter()
        .enumerate()
        .map(|(i, a)| format!("unnest(${}::{}) AS c{i}", i + 1, a.wire.array_type().0))
        .collect();
    format!("(SELECT {}) AS v", columns.join(", "))
}

/// The `cols` of `rows`, one array parameter each, binary where the sink column's type is the
/// values' own (see [`Wire::choose`]).
fn column_arrays<'a>(
    schema: &'a TableSchema,
    rows: &'a [&'a [Datum]],
    cols: &[usize],
    cast: &dyn Fn(&str) -> String,
) -> Vec<ColumnArray<'a>> {
    cols.iter()
        .map(|&i| {
            let column = &schema.columns[i];
            let sql_type = &column.sql_type;
            ColumnArray {
                rows,
                col: i,
                sql_type,
                wire: Wire::choose(sql_type, &cast(&column.name), rows, i),
            }
        })
        .collect()
}

impl State {
    /// Runs a set-based statement, prepared once per connection and shape.
    async fn run(
        &mut self,
        txn: &Transaction<'_>,
        sql: String,
        arrays: &[ColumnArray<'_>],
    ) -> Result<u64, SinkError> {
        let types: Vec<Type> = arrays.iter().map(|a| a.wire.array_type().1).collect();
        let stmt = self.prepared(txn, sql, &types).await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        Ok(txn.execute(&stmt, &params).await?)
    }
}

impl State {
    /// `sql` prepared on this connection (parameter types as given, or inferred where
    /// `types` is shorter), once: later uses cost no parse round trip and no new plan.
    async fn prepared(
        &mut self,
        txn: &Transaction<'_>,
        sql: String,
        types: &[Type],
    ) -> Result<Statement, SinkError> {
        if let Some(stmt) = self.statements.get(&sql) {
            return Ok(stmt.clone());
        }
        let stmt = txn.prepare_typed(&sql, types).await?;
        if self.statements.len() >= MAX_PREPARED {
            self.statements.clear();
        }
        self.statements.insert(sql, stmt.clone());
        Ok(stmt)
    }
}

/// Opens provisional transactions ([`crate::provisional`]) on connections of their own to
/// the same sink.
#[derive(Clone)]
pub struct Opener {
    name: String,
    group: String,
    config: PostgresSinkConfig,
    password: Option<String>,
}

/// How long a session may wait for a provisional transaction's row locks before it is rolled
/// back (so the router's own batches, another router's, or a user's statement go on; the
/// transaction is then applied after its commit).
const PROVISIONAL_BLOCKING_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Opener {
    /// Connects and begins a provisional transaction; its worker runs until the router drops
    /// the handle (rolled back) or it commits.
    pub async fn open(&self) -> Result<Provisional, SinkError> {
        let mut sink = PostgresSink::connect(
            &self.name,
            &self.group,
            self.config.clone(),
            self.password.clone(),
        )
        .await?;
        sink.state.provisional = true;
        let (steps_tx, steps) = tokio::sync::mpsc::channel(2);
        let failed = Arc::new(std::sync::Mutex::new(None));
        let worker_failed = failed.clone();
        tokio::spawn(async move { sink.provisional(steps, worker_failed).await });
        Ok(Provisional::new(steps_tx, failed))
    }
}

impl PostgresSink {
    /// What opens provisional transactions on this sink.
    pub fn opener(&self) -> Opener {
        Opener {
            name: self.state.name.clone(),
            group: self.state.group.clone(),
            config: self.state.config.clone(),
            password: self.password.clone(),
        }
    }

    /// A provisional transaction's worker (see [`crate::provisional`]).
    async fn provisional(
        mut self,
        mut steps: tokio::sync::mpsc::Receiver<Step>,
        failed: Arc<std::sync::Mutex<Option<String>>>,
    ) {
        if let Err(reason) = self.provisional_open(&mut steps).await {
            provisional::give_up(&failed, reason);
        }
        provisional::refuse_the_rest(&mut steps, &failed).await;
    }

    /// Runs the open transaction: `Ok` once it committed, was a replay, or the router let it
    /// go (rolled back); `Err` with why it had to be given up.
    async fn provisional_open(
        &mut self,
        steps: &mut tokio::sync::mpsc::Receiver<Step>,
    ) -> Result<(), String> {
        let sink = self.state.name.clone();
        let mut txn = self
            .client
            .transaction()
            .await
            .map_err(|e| format!("cannot begin a transaction: {e}"))?;
        // Per open savepoint: its subtransaction, and the counts and rows written before it.
        let mut savepoints: Vec<(u32, usize, usize)> = Vec::new();
        let mut counts = crate::plan::Applied::default();
        let mut rows = 0usize;
        let rows_counter = metrics::counter!(m::PROVISIONAL_ROWS_TOTAL, "sink" => sink.clone());
        let mut watchdog = tokio::time::interval(std::time::Duration::from_millis(250));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut blocking_since: Option<Instant> = None;
        loop {
            let step = tokio::select! {
                step = steps.recv() => step,
                _ = watchdog.tick() => {
                    // Sessions waiting for a lock this transaction holds: nothing releases it
                    // before the source commits, and the router's own next batch may be one of
                    // them (a sink-only unique index, a scheme that maps two source rows onto
                    // one sink row). pg_locks is read afresh each time (pg_stat_activity would
                    // be the transaction's snapshot).
                    let waiting: i64 = txn
                        .query_one(
                            "SELECT count(*) FROM pg_catalog.pg_locks w \
                             WHERE NOT w.granted AND pg_backend_pid() = ANY(pg_blocking_pids(w.pid))",
                            &[],
                        )
                        .await
                        .map_err(|e| format!("lost the sink connection: {e}"))?
                        .get(0);
                    if waiting == 0 {
                        blocking_since = None;
                    } else if blocking_since.get_or_insert_with(Instant::now).elapsed() >= PROVISIONAL_BLOCKING_LIMIT {
                        // Who, for the log (read once: this is the transaction's last query).
                        let who = txn
                            .query(
                                "SELECT coalesce(nullif(application_name, ''), usename::text, '?') || ': ' || left(query, 120) \
                                 FROM pg_catalog.pg_stat_activity \
                                 WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))",
                                &[],
                            )
                            .await
                            .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("; "))
                            .unwrap_or_default();
                        return Err(format!(
                            "{waiting} session(s) of the sink waited {PROVISIONAL_BLOCKING_LIMIT:?} for its locks ({who})"
                        ));
                    }
                    continue;
                }
            };
            // The router let it go (the source aborted it, or gave up): rolled back on drop.
            let Some(step) = step else { return Ok(()) };
            match step {
                Step::Apply(changes) => {
                    let batch = Batch {
                        changes,
                        consumed: Vec::new(),
                    };
                    let (written, c) = skeleton::write_only(&mut self.state, &mut txn, &batch)
                        .await
                        .map_err(|e| format!("the sink refused a change: {e}"))?;
                    counts.merge(c);
                    rows += written;
                    rows_counter.increment(written as u64);
                }
                Step::Savepoint(subxid) => {
                    txn.batch_execute(&format!("SAVEPOINT sluice_sub_{subxid}"))
                        .await
                        .map_err(|e| format!("cannot set a savepoint: {e}"))?;
                    savepoints.push((subxid, counts.len(), rows));
                }
                Step::RollBackTo(subxid) => {
                    // Gone already when an enclosing one was rolled back first.
                    if let Some(i) = savepoints.iter().position(|(s, _, _)| *s == subxid) {
                        txn.batch_execute(&format!("ROLLBACK TO SAVEPOINT sluice_sub_{subxid}"))
                            .await
                            .map_err(|e| format!("cannot roll back to a savepoint: {e}"))?;
                        let (_, mark, before) = savepoints[i];
                        counts.truncate(mark);
                        rows = before;
                        savepoints.truncate(i + 1);
                        // Tables created or altered since are gone again.
                        self.state.forget();
                    }
                }
                Step::Commit {
                    mut ends,
                    position,
                    reply,
                } => {
                    ends.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
                    let ended = async {
                        let mut replay = false;
                        let mut stored_offsets = Vec::with_capacity(ends.len());
                        for end in &ends {
                            let (offset, stored, _) = skeleton::Dialect::claim(
                                &mut self.state,
                                &mut txn,
                                &end.topic,
                                end.partition,
                            )
                            .await?;
                            replay |= stored.is_some_and(|p| p >= position.0);
                            stored_offsets.push(offset);
                        }
                        if replay {
                            return Ok(Ended::Replay);
                        }
                        for (end, stored) in ends.iter().zip(stored_offsets) {
                            let progress = StoredProgress {
                                offset: end.offset.max(stored),
                                position: Some(position.clone()),
                            };
                            skeleton::Dialect::record(
                                &mut self.state,
                                &mut txn,
                                &end.topic,
                                end.partition,
                                &progress,
                                None,
                            )
                            .await?;
                        }
                        Ok::<_, SinkError>(Ended::Committed { rows })
                    }
                    .await;
                    let ended = match ended {
                        Ok(Ended::Committed { rows }) => match txn.commit().await {
                            Ok(()) => {
                                counts.record(&sink);
                                Ok(Ended::Committed { rows })
                            }
                            Err(e) => Err(format!("its commit failed: {e}")),
                        },
                        Ok(Ended::Replay) => Ok(Ended::Replay),
                        Err(e) => Err(format!("recording its offsets failed: {e}")),
                    };
                    let _ = reply.send(ended);
                    return Ok(());
                }
            }
        }
    }
}

impl PostgresSink {
    /// Raises a partition's applied position to at least `position` (creating its offsets row,
    /// offset -1, when missing): changes at or below it are skipped as applied. For switching
    /// modes, where another transport's progress says what the sink has.
    pub async fn raise_position(
        &mut self,
        topic: &str,
        partition: i32,
        position: &Position,
    ) -> Result<(), SinkError> {
        self.ensure_connected().await?;
        self.client
            .execute(
                &format!(
                    "INSERT INTO {OFFSETS_TABLE} AS o (consumer_group, topic, kafka_partition, kafka_offset, position) \
                     VALUES ($1, $2, $3, -1, $4) ON CONFLICT (consumer_group, topic, kafka_partition) \
                     DO UPDATE SET position = EXCLUDED.position, updated_at = now() \
                     WHERE o.position IS NULL OR o.position < EXCLUDED.position"
                ),
                &[&self.state.group, &topic, &partition, &position.0],
            )
            .await?;
        Ok(())
    }
}

impl Sink for PostgresSink {
    async fn apply(&mut self, batch: &Batch) -> Result<ApplyOutcome, SinkError> {
        self.ensure_connected().await?;
        let started = Instant::now();
        let mut txn = self.client.transaction().await?;
        let applied = match skeleton::apply_in(&mut self.state, &mut txn, batch).await {
            Ok(done) => txn.commit().await.map(|()| done).map_err(SinkError::from),
            Err(e) => Err(e),
        };
        match applied {
            Ok((outcome, counts)) => {
                skeleton::committed(&self.state.name, started, batch, &outcome, counts);
                Ok(outcome)
            }
            Err(e) => {
                // Tables created or altered in the failed transaction are gone again: forget
                // what the cache learnt in it.
                self.state.forget();
                Err(e)
            }
        }
    }

    async fn apply_in_pieces(&mut self, batch: &Batch) -> Result<Pieces, SinkError> {
        self.ensure_connected().await?;
        let started = Instant::now();
        let mut txn = self.client.transaction().await?;
        let result = match skeleton::in_pieces(&mut self.state, &mut txn, batch).await {
            Ok(InPieces::Applied {
                outcome,
                counts,
                pieces,
            }) => txn
                .commit()
                .await
                .map(|()| (outcome, counts, pieces))
                .map_err(SinkError::from),
            Ok(InPieces::Rejected {
                index,
                reason,
                missing_row,
            }) => {
                drop(txn);
                self.state.forget();
                return Ok(Pieces::Rejected {
                    index,
                    reason,
                    missing_row,
                });
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((outcome, counts, pieces)) => {
                skeleton::split_applied(&self.state.name, started, batch, &outcome, counts, pieces);
                Ok(Pieces::Applied(outcome))
            }
            Err(e) => {
                self.state.forget();
                Err(e)
            }
        }
    }

    async fn progress(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<StoredProgress>, SinkError> {
        self.ensure_connected().await?;
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT kafka_offset, position FROM {OFFSETS_TABLE} \
                     WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3"
                ),
                &[&self.state.group, &topic, &partition],
            )
            .await?;
        Ok(row.map(|r| StoredProgress {
            offset: r.get(0),
            position: r.get::<_, Option<Vec<u8>>>(1).map(Position),
        }))
    }
}

impl<'t> skeleton::Dialect<Transaction<'t>> for State {
    fn sink_name(&self) -> &str {
        &self.name
    }

    async fn lock_topic(
        &mut self,
        txn: &mut Transaction<'t>,
        topic: &str,
    ) -> Result<Vec<(i32, Option<Vec<u8>>)>, SinkError> {
        let rows = txn
            .query(
                &format!(
                    "SELECT kafka_partition, barrier FROM {OFFSETS_TABLE} \
                     WHERE consumer_group = $1 AND topic = $2 ORDER BY kafka_partition FOR UPDATE"
                ),
                &[&self.group, &topic],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn claim(
        &mut self,
        txn: &mut Transaction<'t>,
        topic: &str,
        partition: i32,
    ) -> Result<OffsetsRow, SinkError> {
        let claim = self
            .prepared(
                txn,
                format!(
                    "INSERT INTO {OFFSETS_TABLE} (consumer_group, topic, kafka_partition, kafka_offset) \
                     VALUES ($1, $2, $3, -1) ON CONFLICT DO NOTHING"
                ),
                &[],
            )
            .await?;
        let lock = self
            .prepared(
                txn,
                format!(
                    "SELECT kafka_offset, position, barrier FROM {OFFSETS_TABLE} \
                     WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3 FOR UPDATE"
                ),
                &[],
            )
            .await?;
        let params: [&(dyn ToSql + Sync); 3] = [&self.group, &topic, &partition];
        // Sent together, in one round trip (tokio-postgres pipelines requests polled
        // concurrently): the row exists once the first has run, and the second locks it.
        let (_, row) =
            tokio::try_join!(txn.execute(&claim, &params), txn.query_one(&lock, &params))?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    async fn write(
        &mut self,
        txn: &mut Transaction<'t>,
        plan: Plan<'_>,
    ) -> Result<usize, SinkError> {
        self.older_key = None;
        self.execute(txn, plan).await
    }

    fn older_key(&mut self) -> Option<OlderKey> {
        self.older_key.take()
    }

    async fn record(
        &mut self,
        txn: &mut Transaction<'t>,
        topic: &str,
        partition: i32,
        progress: &StoredProgress,
        barrier: Option<&Position>,
    ) -> Result<(), SinkError> {
        let record = self
            .prepared(
                txn,
                format!(
                    "UPDATE {OFFSETS_TABLE} SET kafka_offset = $4, position = $5, \
                       barrier = coalesce($6, barrier), updated_at = now() \
                     WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3"
                ),
                &[],
            )
            .await?;
        txn.execute(
            &record,
            &[
                &self.group,
                &topic,
                &partition,
                &progress.offset,
                &progress.position.as_ref().map(|h| h.0.as_slice()),
                &barrier.map(|p| p.0.as_slice()),
            ],
        )
        .await?;
        Ok(())
    }

    async fn clear_barrier(
        &mut self,
        txn: &mut Transaction<'t>,
        topic: &str,
        barrier: &Position,
    ) -> Result<(), SinkError> {
        txn.execute(
            &format!(
                "UPDATE {OFFSETS_TABLE} SET barrier = NULL \
                 WHERE consumer_group = $1 AND topic = $2 AND barrier = $3"
            ),
            &[&self.group, &topic, &barrier.0],
        )
        .await?;
        Ok(())
    }

    async fn savepoint(
        &mut self,
        txn: &mut Transaction<'t>,
        what: skeleton::Savepoint,
    ) -> Result<(), SinkError> {
        Ok(txn.batch_execute(what.sql()).await?)
    }

    fn forget(&mut self) {
        State::forget(self);
    }
}
