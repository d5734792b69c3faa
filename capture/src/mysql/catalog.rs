//! Table schemas from `information_schema`, as the table map will describe them.

use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use sluice_schemas::{Column, Datum, TableId, TableSchema};

use super::preflight::opts;
use super::types::{self};
use crate::CaptureError;

use super::config::MysqlSourceConfig;
use super::mysql_error;

/// The table schema from `information_schema`, as the table map will describe it.
pub(super) async fn catalog_schema(
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

/// Reads every row of `table` as capture's snapshot reads it (each value converted as capture
/// converts it), handing each to `row`; returns the table's schema (for `sluice verify`). A
/// value that does not convert is an error here, not a NULL. `row` returns how long to pause
/// before the next row (a paced reader; zero otherwise).
pub async fn read_rows(
    name: &str,
    config: &MysqlSourceConfig,
    password: Option<&str>,
    table: &TableId,
    row: impl FnMut(&TableSchema, Vec<Datum>) -> Result<std::time::Duration, String>,
) -> Result<TableSchema, CaptureError> {
    read_rows_where(name, config, password, table, None, row).await
}

/// [`read_rows`] for the rows of `keys` only: each key the texts of the table's key columns
/// (in the table's order, as `sluice verify` renders them).
pub async fn read_rows_by_key(
    name: &str,
    config: &MysqlSourceConfig,
    password: Option<&str>,
    table: &TableId,
    keys: &[Vec<String>],
    row: impl FnMut(&TableSchema, Vec<Datum>) -> Result<std::time::Duration, String>,
) -> Result<TableSchema, CaptureError> {
    read_rows_where(name, config, password, table, Some(keys), row).await
}

async fn read_rows_where(
    name: &str,
    config: &MysqlSourceConfig,
    password: Option<&str>,
    table: &TableId,
    keys: Option<&[Vec<String>]>,
    mut row: impl FnMut(&TableSchema, Vec<Datum>) -> Result<std::time::Duration, String>,
) -> Result<TableSchema, CaptureError> {
    let mut conn = Conn::new(opts(name, config, password)?)
        .await
        .map_err(mysql_error)?;
    let result = async {
        conn.query_drop("SET SESSION time_zone = '+00:00'")
            .await
            .map_err(mysql_error)?;
        let (schema, selects) = catalog_schema(&mut conn, table).await?;
        if schema.columns.is_empty() {
            return Err(CaptureError::Definite(format!(
                "{table} does not exist at the source"
            )));
        }
        let condition = match keys {
            None => "TRUE".to_string(),
            Some(keys) => {
                super::reread::key_condition(&mut conn, &schema, keys)
                    .await?
                    .map_err(CaptureError::Definite)?
                    .1
            }
        };
        let sql = format!(
            "SELECT {} FROM `{}`.`{}` WHERE {condition}",
            selects.join(", "),
            table.namespace.replace('`', "``"),
            table.name.replace('`', "``")
        );
        let mut result = conn.query_iter(sql).await.map_err(mysql_error)?;
        let mut stream = result
            .stream::<Row>()
            .await
            .map_err(mysql_error)?
            .ok_or_else(|| CaptureError::Definite(format!("no result reading {table}")))?;
        while let Some(r) = stream.next().await {
            let values = r.map_err(mysql_error)?.unwrap();
            let datums = values
                .into_iter()
                .zip(&schema.columns)
                .map(|(v, c)| {
                    types::text_datum(&c.sql_type, v)
                        .map_err(|e| format!("{table}.{}: {e}", c.name))
                })
                .collect::<Result<Vec<Datum>, String>>()
                .map_err(CaptureError::Definite)?;
            let pause = row(&schema, datums).map_err(CaptureError::Definite)?;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        drop(stream);
        drop(result);
        Ok(schema)
    }
    .await;
    let _ = conn.disconnect().await;
    result
}
